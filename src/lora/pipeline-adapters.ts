/**
 * diffusers' pipeline-level LoRA verbs (`load_lora_weights`, `set_adapters`, `fuse_lora`,
 * `unfuse_lora`, `unload_lora_weights`) over the AdapterSets of a pipeline's components: one file's
 * `unet.`/`text_encoder.`/`text_encoder_2.` keys (kohya: `lora_unet_`/`lora_te_`/`lora_te1_`/`lora_te2_`)
 * go to the component they name, under one adapter name.
 */
import { FileFormatError, OptionError } from '../errors.js';
import { didYouMean } from '../io/suggest.js';
import type { AdapterSet, LoadedLora } from './adapters.js';
import { adapterWeights } from './adapters.js';
import type { IgnoredLoraKey, LoraComponent, ModelParameters } from './format.js';
import { loraFileComponents, readLoraFile } from './format.js';

/** One component of a pipeline that takes LoRA: its adapters and the parameters they resolve against. */
export interface LoraTarget {
  readonly component: LoraComponent;
  readonly adapters: AdapterSet;
  readonly modelParameters: ModelParameters;
}

/** What a pipeline's loadLoraWeights loaded: modules of text encoders are prefixed by the component. */
export interface PipelineLoadedLora extends LoadedLora {
  /** The components the adapter was loaded into. */
  readonly components: readonly LoraComponent[];
}

export class PipelineAdapters {
  constructor(private readonly targets: readonly LoraTarget[]) {}

  /**
   * Loads the components' keys of `path` into each component that has some, as one adapter. Keys
   * that apply to no module of their component, or name a component the pipeline lacks, are in
   * `ignored`; a file of which nothing applies is an error, and a failure loads nothing.
   */
  async load(path: string, options: { adapterName?: string } = {}): Promise<PipelineLoadedLora> {
    const adapterName = options.adapterName ?? this.unusedName();
    const present = await loraFileComponents(path);
    const loaded: { target: LoraTarget; lora: LoadedLora }[] = [];
    const ignored = new Map<string, IgnoredLoraKey>();
    // Each component lists the others' keys as routed; the reason from the key's own component wins.
    const note = (entry: IgnoredLoraKey): void => {
      const seen = ignored.get(entry.key);
      if (seen === undefined || (seen.component !== undefined && entry.component === undefined))
        ignored.set(entry.key, entry);
    };
    try {
      for (const target of this.targets) {
        if (!present.has(target.component)) continue;
        try {
          const lora = await target.adapters.load(path, {
            adapterName,
            modelParameters: target.modelParameters,
            component: target.component,
          });
          loaded.push({ target, lora });
          for (const entry of lora.ignored) note(entry);
        } catch (error) {
          if (!(error instanceof FileFormatError) || error.code !== 'LORA_NO_MATCH') throw error;
          // Nothing of this component applies: its keys are reported, the others may still load.
          const contents = await readLoraFile(path, target.modelParameters, target.component);
          for (const entry of contents.ignored) note(entry);
        }
      }
    } catch (error) {
      for (const { target } of loaded) target.adapters.unload(adapterName);
      throw error;
    }
    const routed = new Set(loaded.map(({ target }) => target.component));
    // A key for a component that took the adapter was routed there, not ignored.
    const reported = [...ignored.values()].filter(
      (entry) => entry.component === undefined || !routed.has(entry.component),
    );
    if (loaded.length === 0) {
      const shown = reported.slice(0, 3).map((i) => `'${i.key}': ${i.reason}`);
      throw new FileFormatError(
        `LoRA file ${path}: none of its keys applies to a component of the pipeline ` +
          `(${this.targets.map((t) => t.component).join(', ')})` +
          (shown.length > 0 ? `: ${shown.join('; ')}${reported.length > 3 ? '; …' : ''}` : '') +
          '. Is it a LoRA for another model?',
        'LORA_NO_MATCH',
        path,
      );
    }
    const first = loaded[0].lora;
    return {
      adapterName,
      path: first.path,
      format: first.format,
      components: loaded.map(({ target }) => target.component),
      modules: loaded.flatMap(({ target, lora }) =>
        target.component === 'denoiser' ? lora.modules : lora.modules.map((m) => `${target.component}.${m}`),
      ),
      alphaOverRank: [...new Set(loaded.flatMap(({ lora }) => lora.alphaOverRank))],
      ignored: reported,
    };
  }

  /** diffusers' set_adapters: in each component, the named adapters it has are active, the others not. */
  setAdapters(names: string | readonly string[], weights?: number | readonly number[]): void {
    const { list, values } = adapterWeights(names, weights);
    this.checkKnown(list, 'setAdapters');
    for (const { adapters } of this.targets) {
      const mine = list
        .map((name, i) => [name, values[i]] as const)
        .filter(([n]) => adapters.loaded.includes(n));
      adapters.setAdapters(
        mine.map(([n]) => n),
        mine.map(([, w]) => w),
      );
    }
  }

  /** diffusers' fuse_lora: merges the adapters (default the active unfused ones) in `components` (default all). */
  fuse(
    options: {
      loraScale?: number;
      adapterNames?: readonly string[];
      components?: readonly LoraComponent[];
    } = {},
  ): void {
    if (options.adapterNames) this.checkKnown(options.adapterNames, 'fuseLora');
    let fused = 0;
    for (const { component, adapters } of this.targets) {
      if (options.components && !options.components.includes(component)) continue;
      const names = options.adapterNames
        ? options.adapterNames.filter((n) => adapters.loaded.includes(n))
        : adapters.active.filter((n) => !adapters.fused.includes(n));
      if (names.length === 0) continue;
      adapters.fuse({ loraScale: options.loraScale, adapterNames: names });
      fused += names.length;
    }
    if (fused === 0) {
      throw new OptionError(
        `fuseLora: no adapter to fuse (loaded: ${this.describe()}); load one, or activate it with setAdapters`,
        'LORA_NOTHING_TO_FUSE',
      );
    }
  }

  unfuse(options: { components?: readonly LoraComponent[] } = {}): void {
    for (const { component, adapters } of this.targets) {
      if (!options.components || options.components.includes(component)) adapters.unfuse();
    }
  }

  /** Removes adapters (default all) from every component. */
  unload(names?: string | readonly string[]): void {
    const list = names === undefined ? undefined : typeof names === 'string' ? [names] : [...names];
    if (list) this.checkKnown(list, 'unloadLoraWeights');
    for (const { adapters } of this.targets) {
      const mine = list ? list.filter((n) => adapters.loaded.includes(n)) : adapters.loaded;
      if (mine.length > 0) adapters.unload(mine);
    }
  }

  /** Adapter names loaded in any component, in load order. */
  get loaded(): string[] {
    return [...new Set(this.targets.flatMap((t) => t.adapters.loaded))];
  }

  private checkKnown(names: readonly string[], where: string): void {
    const known = this.loaded;
    for (const name of names) {
      if (!known.includes(name)) {
        throw new OptionError(
          `${where}: no adapter named '${name}' (loaded: ${this.describe()}).${didYouMean(name, known)}`,
          'ADAPTER_UNKNOWN',
        );
      }
    }
  }

  private unusedName(): string {
    const known = new Set(this.loaded);
    let i = 0;
    while (known.has(`default_${i}`)) i++;
    return `default_${i}`;
  }

  private describe(): string {
    const known = this.loaded;
    return known.length === 0 ? 'none' : known.map((n) => `'${n}'`).join(', ');
  }
}

/**
 * The LoRA verbs of diffusers' pipelines (load_lora_weights, set_adapters, fuse_lora, unfuse_lora,
 * unload_lora_weights) over the components a pipeline lists in `loraTargets`. The UNet pipelines
 * (SD 1.x/2.x, SDXL), SD3 and FLUX extend it; PixArt's pipeline passes its calls to its transformer.
 */
export abstract class LoraPipeline {
  /** The denoiser and the text encoders LoRA keys can reach, by the component name their keys carry. */
  protected abstract loraTargets(): LoraTarget[];

  private loraAdapters(): PipelineAdapters {
    return new PipelineAdapters(this.loraTargets());
  }

  /**
   * Load a LoRA (diffusers/PEFT file or folder, or kohya file): its denoiser keys (`unet.` or
   * `transformer.`, or all keys of a PEFT folder) onto the denoiser, `text_encoder.` /
   * `text_encoder_2.` keys onto the text encoders `loraTargets` lists (kohya: `lora_unet_`,
   * `lora_te_`, `lora_te1_`, `lora_te2_`, alpha/r from its `.alpha` tensors; FLUX files in BFL's or
   * XLabs' names are mapped to diffusers' modules by flux-names.ts). Active with weight 1,
   * unfused; keys that match no module are reported in `ignored`, as diffusers warns, and a file of
   * which nothing applies is an error.
   */
  loadLoraWeights(path: string, options: { adapterName?: string } = {}): Promise<PipelineLoadedLora> {
    return this.loraAdapters().load(path, options);
  }

  /** Activate adapters with weights (default 1 each) in every component; switching needs no recompilation. */
  setAdapters(names: string | string[], weights?: number | number[]): void {
    this.loraAdapters().setAdapters(names, weights);
  }

  /** Merge the active adapters into the weights (ORT folds W + s·B·A once; no per-step cost). */
  fuseLora(
    options: { loraScale?: number; adapterNames?: string[]; components?: LoraComponent[] } = {},
  ): void {
    this.loraAdapters().fuse(options);
  }

  unfuseLora(options: { components?: LoraComponent[] } = {}): void {
    this.loraAdapters().unfuse(options);
  }

  unloadLoraWeights(names?: string | string[]): void {
    this.loraAdapters().unload(names);
  }
}
