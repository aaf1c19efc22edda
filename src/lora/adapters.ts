/**
 * Named LoRA adapters of one model, and the terms its graph builders apply (DESIGN.md: "LoRA: merged
 * into weights before building, or applied as low-rank side branches when it must stay switchable").
 *
 * - An unfused adapter is a side branch y += s·B(A(x)) in every module it targets, with s read from
 *   the graph input `lora_scale.<name>` ([1], float32): `setAdapters` changes only what is fed, so
 *   the compiled session is reused.
 * - A fused adapter adds s·B·A to the weight with constant ops, which ONNX Runtime folds into one
 *   initializer when the session is created: no per-step cost, but fusing or unfusing changes the
 *   graph (a new session).
 *
 * In both, s = adapter weight × alpha/r of the module (× loraScale when fusing). A and B are graph
 * weights that point into the LoRA file in place. Use it as the `lora` of `Params.of`; feed
 * `scaleFeeds(compiled.inputs)` with every run; key compiled graphs by `graphKey`.
 */
import { FileFormatError, OptionError } from '../errors.js';
import type { DType } from '../graph/dtype.js';
import type { Graph, Tensor } from '../graph/graph.js';
import { cast, concat, mul, reshape } from '../graph/ops/index.js';
import { didYouMean } from '../io/suggest.js';
import type { LoraModuleTerms, LoraProvider } from '../nn/params.js';
import { weightFromFile } from '../nn/weights.js';
import type { HostTensor } from '../runtime/host-tensor.js';
import { hostTensor } from '../runtime/host-tensor.js';
import type {
  IgnoredLoraKey,
  LoraComponent,
  LoraFileContents,
  LoraFormat,
  LoraPair,
  LoraTensorInfo,
  ModelParameters,
} from './format.js';
import { readLoraFile } from './format.js';

export interface LoadLoraOptions {
  /** Default `default_<n>`, as diffusers names unnamed adapters. */
  adapterName?: string;
  /** The parameters of the model the LoRA is for (its WeightStore): resolves and checks every module. */
  modelParameters: ModelParameters;
  /** Which component's keys of the file apply (default the denoiser); the others are reported ignored. */
  component?: LoraComponent;
}

/** What `load` found: the modules an adapter changes and the keys it could not apply. */
export interface LoadedLora {
  readonly adapterName: string;
  readonly path: string;
  readonly format: LoraFormat;
  readonly modules: readonly string[];
  /** The distinct alpha/r of its modules, e.g. [0.125] for Flash PixArt (α 8, r 64). */
  readonly alphaOverRank: readonly number[];
  readonly ignored: readonly IgnoredLoraKey[];
}

/** One low-rank term of a module, as data (no graph): for inspection. */
export interface LoraTerm {
  readonly adapterName: string;
  readonly pair: LoraPair;
  /** The factor of B·A now: weight × alpha/r (× loraScale if fused); 0 for an inactive adapter. */
  readonly scale: number;
  readonly fused: boolean;
}

interface Adapter {
  readonly name: string;
  readonly contents: LoraFileContents;
  readonly byModule: ReadonlyMap<string, LoraPair>;
  weight: number;
  active: boolean;
  /** weight × loraScale frozen by `fuse`; undefined while the adapter is a side branch. */
  fusedScale: number | undefined;
}

/** Per graph: the tensors made for it, so a module built twice reuses them, and the modules served. */
interface GraphState {
  readonly tensors: Map<string, Tensor>;
  readonly applied: Set<string>;
}

const ADAPTER_NAME = /^[A-Za-z0-9_.-]+$/;

/** The graph input that carries adapter `name`'s weight in unfused graphs. */
export function loraScaleInputName(adapterName: string): string {
  return `lora_scale.${adapterName}`;
}

/**
 * `setAdapters`' arguments as a list of names and one weight per name: a single name or weight
 * stands for a list, and the weights default to 1 each.
 */
export function adapterWeights(
  names: string | readonly string[],
  weights?: number | readonly number[],
): { list: string[]; values: number[] } {
  const list = typeof names === 'string' ? [names] : [...names];
  const values =
    weights === undefined
      ? list.map(() => 1)
      : typeof weights === 'number'
        ? list.map(() => weights)
        : [...weights];
  if (values.length !== list.length) {
    throw new OptionError(
      `setAdapters: ${list.length} adapter names but ${values.length} weights; pass one weight per adapter`,
      'ADAPTER_WEIGHTS',
    );
  }
  return { list, values };
}

export class AdapterSet implements LoraProvider {
  readonly #adapters = new Map<string, Adapter>();
  readonly #graphs = new WeakMap<Graph, GraphState>();
  #unnamed = 0;

  /**
   * Reads a LoRA file (or PEFT folder) and adds it as an active adapter with weight 1, unfused.
   * Throws FileFormatError for malformed files and when no key applies to the model.
   */
  async load(path: string, options: LoadLoraOptions): Promise<LoadedLora> {
    let name = options.adapterName;
    if (name === undefined) {
      do name = `default_${this.#unnamed++}`;
      while (this.#adapters.has(name));
    }
    if (!ADAPTER_NAME.test(name)) {
      throw new OptionError(
        `adapter name ${JSON.stringify(name)}: use letters, digits, '_', '.' and '-' only`,
        'ADAPTER_NAME',
      );
    }
    if (this.#adapters.has(name)) {
      throw new OptionError(
        `an adapter named '${name}' is already loaded (from ${this.#adapters.get(name)?.contents.path}); ` +
          'pass another adapterName or unload it first',
        'ADAPTER_EXISTS',
      );
    }
    const contents = await readLoraFile(path, options.modelParameters, options.component);
    if (contents.pairs.length === 0) {
      const shown = contents.ignored.slice(0, 3).map((i) => `'${i.key}': ${i.reason}`);
      throw new FileFormatError(
        `LoRA file ${contents.path}: none of its ${contents.ignored.length} keys applies to a module of the model` +
          (shown.length > 0 ? ` (${shown.join('; ')}${contents.ignored.length > 3 ? '; …' : ''})` : '') +
          '. Is it a LoRA for another model?',
        'LORA_NO_MATCH',
        contents.path,
      );
    }
    const byModule = new Map(contents.pairs.map((pair) => [pair.modulePath, pair]));
    this.#adapters.set(name, { name, contents, byModule, weight: 1, active: true, fusedScale: undefined });
    return {
      adapterName: name,
      path: contents.path,
      format: contents.format,
      modules: [...byModule.keys()],
      alphaOverRank: [...new Set(contents.pairs.map((pair) => pair.scale))],
      ignored: contents.ignored,
    };
  }

  /**
   * Activates `names` with `weights` (default 1 each) and deactivates the other unfused adapters, as
   * diffusers' `set_adapters`. Fused adapters are part of the weights: unfuse before changing them.
   */
  setAdapters(names: string | readonly string[], weights?: number | readonly number[]): void {
    const { list, values } = adapterWeights(names, weights);
    if (new Set(list).size !== list.length) {
      throw new OptionError(
        `setAdapters: an adapter is named twice in [${list.join(', ')}]`,
        'ADAPTER_WEIGHTS',
      );
    }
    list.forEach((name, i) => {
      const adapter = this.#get(name, 'setAdapters');
      if (adapter.fusedScale !== undefined) {
        throw new OptionError(
          `setAdapters: adapter '${name}' is fused into the weights; call unfuse() before changing its weight`,
          'ADAPTER_FUSED',
        );
      }
      if (!Number.isFinite(values[i])) {
        throw new OptionError(
          `setAdapters: the weight of '${name}' is ${values[i]}; expected a finite number`,
          'ADAPTER_WEIGHTS',
        );
      }
    });
    for (const adapter of this.#adapters.values()) {
      if (adapter.fusedScale !== undefined) continue;
      const i = list.indexOf(adapter.name);
      adapter.active = i >= 0;
      if (i >= 0) adapter.weight = values[i];
    }
  }

  /**
   * Merges adapters into the weights (default: the active unfused ones) with scale
   * weight × loraScale × alpha/r; graphs built afterwards fold them into their initializers.
   */
  fuse(options: { loraScale?: number; adapterNames?: readonly string[] } = {}): void {
    const loraScale = options.loraScale ?? 1;
    if (!Number.isFinite(loraScale)) {
      throw new OptionError(`fuse: loraScale is ${loraScale}; expected a finite number`, 'LORA_SCALE');
    }
    const targets =
      options.adapterNames === undefined
        ? [...this.#adapters.values()].filter((a) => a.active && a.fusedScale === undefined)
        : options.adapterNames.map((name) => this.#get(name, 'fuse'));
    if (targets.length === 0) {
      throw new OptionError(
        `fuse: no adapter to fuse (loaded: ${this.#describe()}); load one, or activate it with setAdapters`,
        'LORA_NOTHING_TO_FUSE',
      );
    }
    for (const adapter of targets) {
      if (adapter.fusedScale !== undefined) {
        throw new OptionError(
          `fuse: adapter '${adapter.name}' is already fused; call unfuse() first`,
          'ADAPTER_FUSED',
        );
      }
    }
    for (const adapter of targets) adapter.fusedScale = adapter.weight * loraScale;
  }

  /** Turns every fused adapter back into a side branch with its weight; the base weights are exact again. */
  unfuse(): void {
    for (const adapter of this.#adapters.values()) adapter.fusedScale = undefined;
  }

  /**
   * Removes adapters (default all), fused or not. Unlike diffusers, a fused adapter's effect goes with
   * it: fusing keeps no copy of the weights, so there is nothing to save by unloading after fusing.
   */
  unload(names?: string | readonly string[]): void {
    const list =
      names === undefined ? [...this.#adapters.keys()] : typeof names === 'string' ? [names] : names;
    const adapters = list.map((name) => this.#get(name, 'unload'));
    for (const adapter of adapters) this.#adapters.delete(adapter.name);
  }

  /** Loaded adapter names, in load order. */
  get loaded(): string[] {
    return [...this.#adapters.keys()];
  }

  /** Adapters whose update is in the output: fused ones and active side branches. */
  get active(): string[] {
    return [...this.#adapters.values()]
      .filter((a) => a.fusedScale !== undefined || a.active)
      .map((a) => a.name);
  }

  get fused(): string[] {
    return [...this.#adapters.values()].filter((a) => a.fusedScale !== undefined).map((a) => a.name);
  }

  /** The weight setAdapters gave adapter `name` (1 after load). */
  weightOf(name: string): number {
    return this.#get(name, 'weightOf').weight;
  }

  /** What was loaded as adapter `name`. */
  contentsOf(name: string): LoraFileContents {
    return this.#get(name, 'contentsOf').contents;
  }

  /** The terms of the module at `modulePath`, one per adapter that targets it. */
  termsOf(modulePath: string): LoraTerm[] {
    const terms: LoraTerm[] = [];
    for (const adapter of this.#adapters.values()) {
      const pair = adapter.byModule.get(modulePath);
      if (!pair) continue;
      const fused = adapter.fusedScale !== undefined;
      const factor = fused ? (adapter.fusedScale as number) : adapter.active ? adapter.weight : 0;
      terms.push({ adapterName: adapter.name, pair, scale: factor * pair.scale, fused });
    }
    return terms;
  }

  /**
   * Everything that decides the graph: which adapters are loaded, in what order, and which are fused
   * at what scale. Changes with load / unload / fuse / unfuse, never with setAdapters.
   */
  get graphKey(): string {
    return JSON.stringify(
      [...this.#adapters.values()].map((a) => [a.name, a.contents.path, a.fusedScale ?? null]),
    );
  }

  /**
   * The `lora_scale.<name>` feeds of the unfused adapters: the weight if active, else 0, times
   * `loraScale`. Given the compiled graph's inputs, only those it takes.
   */
  scaleFeeds(
    inputs?: Iterable<string | { readonly name: string }>,
    options: { loraScale?: number } = {},
  ): Record<string, HostTensor> {
    const wanted =
      inputs === undefined
        ? undefined
        : new Set([...inputs].map((i) => (typeof i === 'string' ? i : i.name)));
    const loraScale = options.loraScale ?? 1;
    const feeds: Record<string, HostTensor> = {};
    for (const adapter of this.#adapters.values()) {
      if (adapter.fusedScale !== undefined) continue;
      const name = loraScaleInputName(adapter.name);
      if (wanted !== undefined && !wanted.has(name)) continue;
      feeds[name] = hostTensor(
        'float32',
        [1],
        Float32Array.of((adapter.active ? adapter.weight : 0) * loraScale),
      );
    }
    return feeds;
  }

  /** LoraProvider: the terms of `modulePath` as tensors of `graph` (called by Linear and Conv2d). */
  termsFor(graph: Graph, modulePath: string, dtype: DType): LoraModuleTerms | undefined {
    const fused: { down: Tensor; up: Tensor; scale: number }[] = [];
    const switchable: { down: Tensor; up: Tensor; scale: Tensor }[] = [];
    for (const adapter of this.#adapters.values()) {
      const pair = adapter.byModule.get(modulePath);
      if (!pair) continue;
      const state = this.#state(graph);
      state.applied.add(`${adapter.name}\0${modulePath}`);
      const down = this.#loraWeight(graph, state, adapter, pair, 'down', dtype);
      const up = this.#loraWeight(graph, state, adapter, pair, 'up', dtype);
      if (adapter.fusedScale !== undefined) fused.push({ down, up, scale: adapter.fusedScale * pair.scale });
      else
        switchable.push({
          down,
          up,
          scale: this.#scaleTensor(graph, state, adapter.name, pair.scale, dtype),
        });
    }
    return fused.length === 0 && switchable.length === 0 ? undefined : { fused, switchable };
  }

  /**
   * Modules with LoRA terms that no Linear or Conv2d of `graph` asked for (`adapter: module`): a model
   * that builds such a module with raw ops drops the update. Empty when every term was applied.
   */
  unappliedModules(graph: Graph): string[] {
    const applied = this.#graphs.get(graph)?.applied ?? new Set<string>();
    const missing: string[] = [];
    for (const adapter of this.#adapters.values()) {
      for (const modulePath of adapter.byModule.keys()) {
        if (!applied.has(`${adapter.name}\0${modulePath}`)) missing.push(`${adapter.name}: ${modulePath}`);
      }
    }
    return missing;
  }

  #state(graph: Graph): GraphState {
    let state = this.#graphs.get(graph);
    if (!state) {
      state = { tensors: new Map(), applied: new Set() };
      this.#graphs.set(graph, state);
    }
    return state;
  }

  /** A or B as a graph weight pointing into the LoRA file; linear modules get it as a matrix. */
  #loraWeight(
    graph: Graph,
    state: GraphState,
    adapter: Adapter,
    pair: LoraPair,
    role: 'down' | 'up',
    dtype: DType,
  ): Tensor {
    const name = `lora.${adapter.name}.${pair.modulePath}.${role === 'down' ? 'lora_A' : 'lora_B'}`;
    let tensor = state.tensors.get(name);
    if (tensor) return tensor;
    const info = pair[role];
    const fromFile = (weightName: string, part: LoraTensorInfo): Tensor =>
      weightFromFile(graph, { has: (n) => n === weightName, info: () => part }, weightName, { dtype });
    const blocks = role === 'up' ? pair.upBlocks : undefined;
    // B stacked from row blocks of the file (FLUX's final adaLN with its halves swapped).
    tensor = blocks
      ? concat(
          blocks.map((block, i) => fromFile(`${name}.${i}`, block)),
          0,
        )
      : fromFile(name, info);
    if (pair.kind === 'linear' && info.shape.length === 4) tensor = reshape(tensor, info.shape.slice(0, 2));
    state.tensors.set(name, tensor);
    return tensor;
  }

  /** lora_scale.<adapter> × alpha/r, shared by the modules with the same alpha/r. */
  #scaleTensor(
    graph: Graph,
    state: GraphState,
    adapterName: string,
    alphaOverRank: number,
    dtype: DType,
  ): Tensor {
    const key = `scale\0${adapterName}\0${alphaOverRank}\0${dtype}`;
    const cached = state.tensors.get(key);
    if (cached) return cached;
    // One float32 input per adapter and graph, cast once to the graph's dtype.
    const inputKey = `input\0${adapterName}`;
    let input = state.tensors.get(inputKey);
    if (!input) {
      input = graph.input(loraScaleInputName(adapterName), 'float32', [1]);
      state.tensors.set(inputKey, input);
    }
    const castKey = `${inputKey}\0${dtype}`;
    let typed = state.tensors.get(castKey);
    if (!typed) {
      typed = dtype === 'float32' ? input : cast(input, dtype);
      state.tensors.set(castKey, typed);
    }
    const tensor = alphaOverRank === 1 ? typed : mul(typed, alphaOverRank);
    state.tensors.set(key, tensor);
    return tensor;
  }

  #get(name: string, where: string): Adapter {
    const adapter = this.#adapters.get(name);
    if (!adapter) {
      throw new OptionError(
        `${where}: no adapter named '${name}' (loaded: ${this.#describe()}).${didYouMean(name, this.#adapters.keys())}`,
        'ADAPTER_UNKNOWN',
      );
    }
    return adapter;
  }

  #describe(): string {
    return this.#adapters.size === 0 ? 'none' : [...this.#adapters.keys()].map((n) => `'${n}'`).join(', ');
  }
}
