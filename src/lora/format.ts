/**
 * LoRA safetensors in the three layouts found on the Hub, normalised to one pair per module:
 * `{ modulePath, down: A, up: B, alpha, rank, scale }` with diffusers module paths
 * (`transformer_blocks.0.attn1.to_q`). Formats (methods/tgate_flash.md §2.7):
 *
 * - PEFT: `base_model.model.<path>.lora_A.weight` / `.lora_B.weight`, with `adapter_config.json`
 *   (`r`, `lora_alpha`, `rank_pattern`, `alpha_pattern`, `use_rslora`) beside the file.
 * - diffusers: `transformer.<path>` or `unet.<path>` + `.lora.down.weight` / `.lora.up.weight` or
 *   `.lora_A.weight` / `.lora_B.weight`, optional `<path>.alpha` tensors, the old attention-processor
 *   spelling `…processor.to_q_lora.down.weight`, and diffusers' `lora_adapter_metadata` header entry.
 * - kohya: `lora_unet_<path_with_underscores>.lora_down.weight` / `.lora_up.weight` / `.alpha`
 *   (also `lora_transformer_`, and ComfyUI's dotted `diffusion_model.<path>.lora_down.weight` with
 *   `text_encoders.clip_l.transformer.<path>` for CLIP); underscores are ambiguous, so paths are
 *   resolved against the model's parameter names. SDXL files name UNet modules as the original SGM
 *   UNet does (`lora_unet_input_blocks_4_1_…`): sgm-names.ts renames them for the UNet's levels first;
 *   FLUX files name them as BFL's transformer does (`lora_unet_double_blocks_0_img_attn_qkv`):
 *   flux-names.ts maps them, splitting fused projections.
 * - bfl: FLUX modules in BFL's naming with PEFT's tensors, `[diffusion_model.]<path>.lora_A.weight` /
 *   `.lora_B.weight` (fal's Kontext LoRAs: `base_model.model.<path>…` without a PEFT config).
 * - xlabs: XLabs' FLUX processors, `double_blocks.<i>.processor.qkv_lora1.down.weight` / `.up.weight`.
 *
 * Keys that apply to no module of the model are returned in `ignored` with the reason, as diffusers
 * warns about them; malformed files are FileFormatErrors naming the key, the file and the shapes.
 */
import { stat } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';

import { FileFormatError } from '../errors.js';
import { formatShape } from '../graph/shape.js';
import { readJsonFile } from '../io/diffusers.js';
import { errnoCode } from '../io/errno.js';
import { describeJson, isPlainObject } from '../io/json.js';
import { SafetensorsFile, type TensorInfo } from '../io/safetensors.js';
import { didYouMean } from '../io/suggest.js';
import type { FluxTargets } from './flux-names.js';
import { bflToDiffusers, isBflFluxName, isXlabsKey, xlabsToDiffusers } from './flux-names.js';
import type { SgmBlockMap } from './sgm-names.js';
import { isSgmName, sgmBlockMap, sgmToDiffusersName, unetLayoutOfModules } from './sgm-names.js';

export type LoraFormat = 'peft' | 'diffusers' | 'kohya' | 'bfl' | 'xlabs';

/**
 * The pipeline component a LoRA is loaded into: the denoiser (keys `unet.`/`transformer.`, kohya
 * `lora_unet_`/`lora_transformer_`/`diffusion_model.`) or a text encoder (`text_encoder.`/`text_encoder_2.`,
 * kohya `lora_te_`/`lora_te1_`/`text_encoders.clip_l.transformer.` and `lora_te2_`), as diffusers'
 * `load_lora_weights` routes them.
 */
export type LoraComponent = 'denoiser' | 'text_encoder' | 'text_encoder_2';

/**
 * A tensor of a LoRA file: its header entry (`name` is the key in the file) and the file's path. A
 * block of rows of a fused B (FLUX's qkv) is such an entry too, its offset, length and shape those of the rows.
 */
export type LoraTensorInfo = TensorInfo & { readonly path: string };

/** One low-rank update ΔW = scale·B·A of the module at `modulePath`. */
export interface LoraPair {
  /** diffusers module path, e.g. 'transformer_blocks.0.attn1.to_q'. */
  readonly modulePath: string;
  /** 'linear' (base weight [out, in]) or 'conv' (base weight [out, in, kh, kw]). */
  readonly kind: 'linear' | 'conv';
  /** A: [r, in] (a linear module may store [r, in, 1, 1]) or conv [r, in, kh, kw]. */
  readonly down: LoraTensorInfo;
  /** B: [out, r] (or [out, r, 1, 1]). */
  readonly up: LoraTensorInfo;
  /**
   * Set when B is not one range of the file: these row blocks of it stacked in order make B (FLUX's
   * final adaLN, whose shift and scale halves diffusers swaps); `up` is then the tensor in the file.
   */
  readonly upBlocks?: readonly LoraTensorInfo[];
  readonly rank: number;
  /** The alpha the file or config gives; undefined when it gives none (then alpha = rank). */
  readonly alpha: number | undefined;
  /** alpha / rank (alpha / √rank with rsLoRA): what B·A is multiplied by before adapter weights. */
  readonly scale: number;
}

export interface IgnoredLoraKey {
  readonly key: string;
  readonly reason: string;
  /** Set when the key is ignored only because it belongs to another component (a pipeline routes it there). */
  readonly component?: LoraComponent;
}

/** The parameters of the model a LoRA is for: a WeightStore or SafetensorsFile fits. */
export interface ModelParameters {
  names(): Iterable<string>;
  info(name: string): { readonly shape: readonly number[] };
}

/** The LoRA hyper-parameters of a PEFT `adapter_config.json` (PEFT's defaults where absent). */
export interface PeftLoraConfig {
  readonly r: number;
  readonly loraAlpha: number;
  readonly rankPattern: Readonly<Record<string, number>>;
  readonly alphaPattern: Readonly<Record<string, number>>;
  readonly useRslora: boolean;
  readonly targetModules: readonly string[] | string | undefined;
}

export interface LoraFileContents {
  /** Absolute path of the safetensors file. */
  readonly path: string;
  /** Where the PEFT config was read from, if any. */
  readonly configPath: string | undefined;
  readonly format: LoraFormat;
  readonly config: PeftLoraConfig | undefined;
  /** One per module, in the order the modules' keys first appear in the file. */
  readonly pairs: readonly LoraPair[];
  readonly ignored: readonly IgnoredLoraKey[];
}

const PEFT_WEIGHTS = 'adapter_model.safetensors';
const PEFT_CONFIG = 'adapter_config.json';
/** The `__metadata__` entry in which diffusers (≥ 0.35) saves the LoraConfig of each component. */
const DIFFUSERS_METADATA_KEY = 'lora_adapter_metadata';
const FLOAT_DTYPES: readonly string[] = ['F32', 'F16', 'BF16', 'F64'];

/**
 * Reads a LoRA: a `.safetensors` file, or a PEFT folder holding adapter_model.safetensors and
 * adapter_config.json. Only the header and the scalar alpha tensors are read; A and B stay in the
 * file, to be used in place by the graphs.
 */
export async function readLoraFile(
  path: string,
  model: ModelParameters,
  component: LoraComponent = 'denoiser',
): Promise<LoraFileContents> {
  const given = resolve(path);
  let filePath = given;
  let configPath: string | undefined;
  if (await isDirectory(given)) {
    filePath = join(given, PEFT_WEIGHTS);
    configPath = join(given, PEFT_CONFIG);
  } else if (basename(given) === PEFT_WEIGHTS && (await exists(join(dirname(given), PEFT_CONFIG)))) {
    configPath = join(dirname(given), PEFT_CONFIG);
  }
  const file = await SafetensorsFile.open(filePath);
  try {
    const keys = file.names();
    const format = detectFormat(keys, configPath !== undefined);
    let config: PeftLoraConfig | undefined;
    if (format === 'peft') {
      if (configPath === undefined) {
        throw new FileFormatError(
          `LoRA file ${filePath} has PEFT keys (base_model.model.…) but no ${PEFT_CONFIG} beside it, so its ` +
            `alpha and rank are unknown (PEFT scales by lora_alpha / r; assuming 1 would be wrong). Put the ` +
            `adapter's ${PEFT_CONFIG} next to the file, or pass the PEFT folder.`,
          'LORA_CONFIG_MISSING',
          filePath,
        );
      }
      config = parsePeftConfig(await readJsonFile(configPath, 'the PEFT adapter config'), configPath);
    } else {
      config = diffusersMetadataConfig(file.metadata, filePath, component);
    }
    const alphas = new Map<string, number>();
    for (const key of keys) {
      if (key.endsWith('.alpha')) alphas.set(key, await readScalar(file, key));
    }
    const tensors = new Map<string, LoraTensorInfo>();
    for (const key of keys) tensors.set(key, { ...file.info(key), path: file.path });
    return {
      path: file.path,
      configPath: format === 'peft' ? configPath : undefined,
      format,
      config,
      ...pairLoraTensors(tensors, alphas, format, config, model, file.path, component),
    };
  } finally {
    await file.close();
  }
}

/**
 * The components whose keys a LoRA file (or PEFT folder) holds, for a pipeline to route it: keys
 * without a component prefix, and PEFT folders (made for one model), count as the denoiser's.
 */
export async function loraFileComponents(path: string): Promise<Set<LoraComponent>> {
  const given = resolve(path);
  const directory = await isDirectory(given);
  const file = await SafetensorsFile.open(directory ? join(given, PEFT_WEIGHTS) : given);
  try {
    const keys = file.names();
    const format = detectFormat(keys, directory);
    const found = new Set<LoraComponent>();
    if (format === 'peft') return new Set(['denoiser']);
    const prefixes = format === 'kohya' ? KOHYA_PREFIXES : DIFFUSERS_PREFIXES;
    for (const key of keys) found.add(splitComponent(key, prefixes).component ?? 'denoiser');
    return found;
  } finally {
    await file.close();
  }
}

/**
 * PEFT when a config is given; kohya for `lora_unet_`-style keys and ComfyUI's `diffusion_model.…lora_down`;
 * XLabs for `double_blocks.<i>.processor.…`; BFL for other FLUX module names in BFL's spelling; PEFT
 * for other `base_model.model.` keys; else diffusers. kohya, XLabs, BFL is the order in which
 * diffusers' FluxLoraLoaderMixin tries them.
 */
export function detectFormat(keys: readonly string[], hasPeftConfig: boolean): LoraFormat {
  if (hasPeftConfig) return 'peft';
  if (keys.some((key) => /^lora_(unet|transformer|te\d*)_/.test(key))) return 'kohya';
  if (
    keys.some((key) => /^(diffusion_model|text_encoders)\./.test(key)) &&
    keys.some((key) => key.endsWith('.lora_down.weight'))
  )
    return 'kohya';
  if (keys.some(isXlabsKey)) return 'xlabs';
  if (keys.some((key) => isBflFluxName(stripBflPrefix(key)))) return 'bfl';
  if (keys.some((key) => key.startsWith('base_model.model.'))) return 'peft';
  return 'diffusers';
}

/** A key of a BFL-named file without its `diffusion_model.` (ComfyUI) or `base_model.model.` (fal) prefix. */
function stripBflPrefix(key: string): string {
  return key.replace(/^(diffusion_model|base_model\.model)\./, '');
}

/** What one key of a LoRA file is. */
type KeyRole =
  | { kind: 'part'; module: string; role: 'down' | 'up' | 'alpha' }
  | { kind: 'unsupported'; module: string; reason: string }
  | { kind: 'ignored'; reason: string; component?: LoraComponent };

/** A module's keys as found in the file, before it is resolved to a model module. */
interface KeyGroup {
  down?: string;
  up?: string;
  alpha?: string;
  unsupported?: string;
  readonly keys: string[];
}

/**
 * Pairs the A/B (and alpha) tensors of a file, resolves their modules against `model`, and checks
 * every shape. Pure: `alphas` holds the values of the file's `.alpha` tensors.
 */
export function pairLoraTensors(
  tensors: ReadonlyMap<string, LoraTensorInfo>,
  alphas: ReadonlyMap<string, number>,
  format: LoraFormat,
  config: PeftLoraConfig | undefined,
  model: ModelParameters,
  filePath: string,
  component: LoraComponent = 'denoiser',
): { pairs: LoraPair[]; ignored: IgnoredLoraKey[] } {
  const ignored: IgnoredLoraKey[] = [];
  const groups = new Map<string, KeyGroup>();
  for (const key of tensors.keys()) {
    const role = classifyKey(key, format, component);
    if (role.kind === 'ignored') {
      ignored.push({ key, reason: role.reason, ...(role.component ? { component: role.component } : {}) });
      continue;
    }
    let group = groups.get(role.module);
    if (!group) {
      group = { keys: [] };
      groups.set(role.module, group);
    }
    group.keys.push(key);
    if (role.kind === 'unsupported') group.unsupported ??= role.reason;
    else if (group[role.role] !== undefined) {
      throw new FileFormatError(
        `LoRA file ${filePath}: '${key}' and '${group[role.role] as string}' are both the ${role.role} ` +
          `tensor of module '${role.module}'; expected one.`,
        'LORA_DUPLICATE',
        filePath,
      );
    } else group[role.role] = key;
  }

  const modules = new ModuleIndex(model);
  const pairs: LoraPair[] = [];
  /** The module of the file each diffusers module took its LoRA from. */
  const owners = new Map<string, string>();
  for (const [moduleId, group] of groups) {
    const ignoreAll = (reason: string): void => {
      for (const key of group.keys) ignored.push({ key, reason });
    };
    if (group.unsupported !== undefined) {
      ignoreAll(group.unsupported);
      continue;
    }
    if (group.down === undefined && group.up === undefined) {
      ignoreAll(`an alpha without LoRA tensors (no down/up or lora_A/lora_B for '${moduleId}')`);
      continue;
    }
    if (group.down === undefined || group.up === undefined) {
      const have = (group.down ?? group.up) as string;
      const missing = group.down === undefined ? 'down (A)' : 'up (B)';
      throw new FileFormatError(
        `LoRA file ${filePath}: '${have}' has no matching ${missing} tensor for module '${moduleId}'; ` +
          'every LoRA module needs both A (down) and B (up). The file is incomplete or not a LoRA.',
        'LORA_UNPAIRED',
        filePath,
      );
    }
    const targets = modules.resolveTargets(moduleId, format);
    if ('reason' in targets) {
      ignoreAll(targets.reason);
      continue;
    }
    const down = tensors.get(group.down) as LoraTensorInfo;
    const parts = dealRows(moduleId, targets, tensors.get(group.up) as LoraTensorInfo, modules, filePath);
    // Two modules of one file can name the same diffusers module (kohya's qkv beside a to_q of its own).
    const taken = parts.find((part) => owners.has(part.modulePath));
    if (taken !== undefined) {
      ignoreAll(
        `module '${taken.modulePath}' already takes this file's LoRA '${owners.get(taken.modulePath) as string}'; ` +
          'a module takes one LoRA per file',
      );
      continue;
    }
    const kinds = parts.map((part) => {
      const base = modules.weightShape(part.modulePath);
      return { base, kind: checkShapes(part.modulePath, base, down, part.up, filePath) };
    });
    const other = kinds.findIndex(({ kind }) => kind === undefined);
    if (other >= 0) {
      ignoreAll(
        `module '${parts[other].modulePath}' has weight ${formatShape(kinds[other].base)}, neither Linear ` +
          '[out, in] nor Conv2d [out, in, kh, kw]; velodiff applies LoRA to those only',
      );
      continue;
    }
    const rank = down.shape[0];
    const fileAlpha = group.alpha === undefined ? undefined : alphas.get(group.alpha);
    parts.forEach((part, i) => {
      owners.set(part.modulePath, moduleId);
      pairs.push({
        ...part,
        kind: kinds[i].kind as 'linear' | 'conv',
        down,
        rank,
        // diffusers folds alpha/r of the fused module into each part: r is the file's rank for all.
        ...loraScale(part.modulePath, rank, fileAlpha, config, filePath),
      });
    });
  }
  return { pairs, ignored };
}

/** One diffusers module's share of a file module's B. */
interface UpPart {
  readonly modulePath: string;
  readonly up: LoraTensorInfo;
  readonly upBlocks?: readonly LoraTensorInfo[];
}

/**
 * Deals B out to the modules `targets` names: whole, cut into the stacked modules' output rows (each
 * part its own range of the file, A shared), or with its halves swapped. A B whose rows do not add up
 * to the modules' outputs is a FileFormatError naming the key and both sizes.
 */
function dealRows(
  moduleId: string,
  targets: FluxTargets,
  up: LoraTensorInfo,
  modules: ModuleIndex,
  filePath: string,
): UpPart[] {
  // Malformed tensors are left whole, for checkShapes to name.
  if (targets.rows === 'whole' || up.shape.length < 2)
    return targets.modules.map((m) => ({ modulePath: m, up }));
  if (targets.rows === 'halves-swapped') {
    const [modulePath] = targets.modules;
    const rows = up.shape[0];
    if (rows !== modules.weightShape(modulePath)[0] || rows % 2 !== 0) return [{ modulePath, up }];
    return [{ modulePath, up, upBlocks: [rowsOf(up, rows / 2, rows), rowsOf(up, 0, rows / 2)] }];
  }
  const outputs = targets.modules.map((m) => modules.weightShape(m)[0]);
  const total = outputs.reduce((a, b) => a + b, 0);
  if (up.shape[0] !== total) {
    throw new FileFormatError(
      `LoRA file ${filePath}: '${up.name}' is ${formatShape(up.shape)}, but the B (up) tensor of the fused ` +
        `module '${moduleId}' must stack the outputs of ${targets.modules.map((m, i) => `'${m}' (${outputs[i]})`).join(', ')}: ` +
        `${total} rows. The LoRA was made for another model.`,
      'LORA_SHAPE',
      filePath,
    );
  }
  let begin = 0;
  return targets.modules.map((modulePath, i) => {
    const part = { modulePath, up: rowsOf(up, begin, begin + outputs[i]) };
    begin += outputs[i];
    return part;
  });
}

/** Rows [begin, end) of a tensor of the file, itself a range of the file (rows are contiguous). */
function rowsOf(info: LoraTensorInfo, begin: number, end: number): LoraTensorInfo {
  const rowBytes = info.byteLength / info.shape[0];
  return {
    ...info,
    shape: [end - begin, ...info.shape.slice(1)],
    fileOffset: info.fileOffset + begin * rowBytes,
    byteLength: (end - begin) * rowBytes,
  };
}

/** diffusers' component prefixes of a LoRA file's keys. */
const DIFFUSERS_PREFIXES: readonly (readonly [RegExp, LoraComponent])[] = [
  [/^(unet|transformer)\./, 'denoiser'],
  [/^(text_encoder_2|te2)\./, 'text_encoder_2'],
  [/^(text_encoder|te1?)\./, 'text_encoder'],
];
/**
 * kohya's: `lora_unet_…`, `lora_te_…` (SD 1.x/2.x), `lora_te1_…` / `lora_te2_…` (SDXL); ComfyUI's dotted
 * `diffusion_model.…` and `text_encoders.clip_l.transformer.…`, which diffusers reads as kohya's.
 */
const KOHYA_PREFIXES: readonly (readonly [RegExp, LoraComponent])[] = [
  [/^lora_(unet|transformer)_/, 'denoiser'],
  [/^lora_te2_/, 'text_encoder_2'],
  [/^lora_te1?_/, 'text_encoder'],
  [/^diffusion_model\./, 'denoiser'],
  [/^text_encoders\.clip_l\.transformer\./, 'text_encoder'],
];

/** The key's component (undefined when it names none) and the key without the component prefix. */
function splitComponent(
  key: string,
  prefixes: readonly (readonly [RegExp, LoraComponent])[],
): { component: LoraComponent | undefined; rest: string } {
  for (const [pattern, component] of prefixes) {
    const match = pattern.exec(key);
    if (match) return { component, rest: key.slice(match[0].length) };
  }
  return { component: undefined, rest: key };
}

function otherComponent(component: LoraComponent, loadingInto: LoraComponent): KeyRole {
  const what =
    component === 'denoiser' ? 'a denoiser (UNet/transformer) LoRA' : `a text-encoder LoRA (${component})`;
  return {
    kind: 'ignored',
    reason: `${what}, not for the ${loadingInto} it was loaded into; a pipeline's loadLoraWeights routes it there`,
    component,
  };
}

function classifyKey(key: string, format: LoraFormat, loadingInto: LoraComponent): KeyRole {
  if (format === 'kohya') return classifyKohyaKey(key, loadingInto);
  if (format === 'xlabs') return classifyXlabsKey(key);
  let rest = key;
  if (format === 'peft') {
    // A PEFT folder is for one model: the one it is loaded into.
    if (rest.startsWith('base_model.model.')) rest = rest.slice('base_model.model.'.length);
  } else if (format === 'bfl') {
    // BFL-named files are for the FLUX transformer alone.
    rest = stripBflPrefix(rest);
    if (/\.(query_norm|key_norm)\.scale$/.test(rest)) {
      return {
        kind: 'ignored',
        reason:
          "a FLUX Control LoRA's RMSNorm scale (diffusers replaces the model's norm weight with it); " +
          'Control LoRAs, which also widen x_embedder for the control image, are not supported',
      };
    }
  } else {
    const split = splitComponent(rest, DIFFUSERS_PREFIXES);
    // Keys without a component prefix belong to the model they are loaded into.
    if (split.component !== undefined && split.component !== loadingInto)
      return otherComponent(split.component, loadingInto);
    rest = split.rest;
    // diffusers' old attention-processor spelling: …attn1.processor.to_q_lora.down.weight.
    rest = rest.replace(
      /\.processor\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$/,
      (_match, projection: string, role: string) =>
        `.${projection === 'to_out' ? 'to_out.0' : projection}.lora.${role}.weight`,
    );
    // Its text-encoder spellings: …self_attn.to_q_lora.down.weight and …q_proj.lora_linear_layer.down.weight.
    rest = rest.replace(
      /\.self_attn\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$/,
      (_match, projection: string, role: string) =>
        `.self_attn.${{ to_q: 'q_proj', to_k: 'k_proj', to_v: 'v_proj', to_out: 'out_proj' }[projection]}.lora.${role}.weight`,
    );
    rest = rest.replace(/\.lora_linear_layer\.(down|up)\.weight$/, '.lora.$1.weight');
  }
  const dora = /^(.+)\.(lora_magnitude_vector(\.weight)?|dora_scale)$/.exec(rest);
  if (dora)
    return {
      kind: 'unsupported',
      module: dora[1],
      reason: 'a DoRA adapter (magnitude vector); not supported',
    };
  const embedding = /^(.+)\.lora_embedding_[AB](\.weight)?$/.exec(rest);
  if (embedding) {
    return {
      kind: 'unsupported',
      module: embedding[1],
      reason: 'an embedding LoRA; velodiff applies LoRA to Linear and Conv2d only',
    };
  }
  const bias = /^(.+)\.(lora_[AB]|lora\.(down|up))\.bias$/.exec(rest);
  if (bias)
    return {
      kind: 'unsupported',
      module: bias[1],
      reason: 'a LoRA with a bias on B (lora_bias); not supported',
    };
  const down = /^(.+)\.(lora_A|lora\.down|lora_down)\.weight$/.exec(rest);
  if (down) return { kind: 'part', module: down[1], role: 'down' };
  const up = /^(.+)\.(lora_B|lora\.up|lora_up)\.weight$/.exec(rest);
  if (up) return { kind: 'part', module: up[1], role: 'up' };
  const alpha = /^(.+?)(\.lora)?\.alpha$/.exec(rest);
  if (alpha) return { kind: 'part', module: alpha[1], role: 'alpha' };
  return {
    kind: 'ignored',
    reason:
      format === 'peft'
        ? 'not a LoRA tensor (modules_to_save and full weights are not applied)'
        : 'not a LoRA tensor (expected …lora_A/lora_B.weight, …lora.down/lora.up.weight or …alpha)',
  };
}

function classifyKohyaKey(key: string, loadingInto: LoraComponent): KeyRole {
  const split = splitComponent(key, KOHYA_PREFIXES);
  if (split.component !== undefined && split.component !== loadingInto)
    return otherComponent(split.component, loadingInto);
  if (split.component === undefined) {
    const t5 = /^(lora_te3_|text_encoders\.t5xxl\.)/.exec(key);
    return {
      kind: 'ignored',
      reason: t5
        ? `a T5 text-encoder LoRA (${t5[1]}…); velodiff's pipelines, as diffusers', apply LoRA to CLIP encoders only`
        : 'not a kohya LoRA key (expected lora_unet_<module>.lora_down.weight, lora_te_… …)',
    };
  }
  const match = kohyaModule(split.rest, /^(diffusion_model|text_encoders)\./.test(key));
  if (!match)
    return {
      kind: 'ignored',
      reason: 'not a kohya LoRA key (expected lora_unet_<module>.lora_down.weight, lora_te_… …)',
    };
  const [module, suffix] = match;
  // diffusers' FLUX loader drops these bias differences and applies the module's LoRA all the same.
  if (suffix === 'diff_b')
    return {
      kind: 'ignored',
      reason: "a bias difference (diff_b); not applied, as diffusers' loaders drop it",
    };
  if (suffix === 'lora_down.weight') return { kind: 'part', module, role: 'down' };
  if (suffix === 'lora_up.weight') return { kind: 'part', module, role: 'up' };
  if (suffix === 'alpha') return { kind: 'part', module, role: 'alpha' };
  return {
    kind: 'unsupported',
    module,
    reason: `'.${suffix}' is a LyCORIS/DoRA tensor (LoCon mid, LoHa, LoKr, DoRA, diff); only plain LoRA is supported`,
  };
}

/**
 * A kohya key's module (dots as underscores) and tensor suffix, the key without its component prefix.
 * kohya's own module names have no dots; ComfyUI's dotted ones end where a kohya or LyCORIS tensor
 * name begins (`….qkv.lora_down.weight`, `….qkv.alpha`, `….qkv.diff_b`).
 */
function kohyaModule(rest: string, dotted: boolean): [string, string] | undefined {
  const match = dotted
    ? /^(.+?)\.((?:lora_|hada_|lokr_|oft_|dora_scale|diff|alpha|w_norm|b_norm).*)$/.exec(rest)
    : /^([^.]+)\.(.+)$/.exec(rest);
  return match ? [match[1].replace(/\./g, '_'), match[2]] : undefined;
}

/** An XLabs key: `[diffusion_model.]<block>.<i>.processor.<name>.down.weight` / `.up.weight`. */
function classifyXlabsKey(key: string): KeyRole {
  const match = /^(?:diffusion_model\.)?(.+\.processor\.[^.]+)\.(down|up)\.weight$/.exec(key);
  if (!match) {
    return {
      kind: 'ignored',
      reason:
        'not an XLabs LoRA tensor (expected double_blocks.<i>.processor.<name>.down.weight or .up.weight)',
    };
  }
  return { kind: 'part', module: match[1], role: match[2] as 'down' | 'up' };
}

/** The model's modules (parameter names ending in `.weight`), for resolving LoRA module names. */
class ModuleIndex {
  private readonly weights = new Set<string>();
  private underscored: Map<string, string[]> | undefined;
  /** The UNet's SGM block numbering; null when the model is not a diffusers UNet. */
  private sgmBlocks: SgmBlockMap | null | undefined;

  constructor(private readonly model: ModelParameters) {
    for (const name of model.names()) if (name.endsWith('.weight')) this.weights.add(name.slice(0, -7));
  }

  weightShape(modulePath: string): readonly number[] {
    return this.model.info(`${modulePath}.weight`).shape;
  }

  /**
   * The diffusers modules a module of a file in `format` is: FLUX's BFL and XLabs names through
   * flux-names.ts, kohya's flattened names through `resolveKohya`, the others as paths.
   */
  resolveTargets(moduleId: string, format: LoraFormat): FluxTargets | { reason: string } {
    if (format === 'xlabs') return this.present(moduleId, xlabsToDiffusers(moduleId), 'XLabs');
    if (format === 'bfl' || (format === 'kohya' && isBflFluxName(moduleId)))
      return this.present(moduleId, bflToDiffusers(moduleId), 'BFL');
    const path = format === 'kohya' ? this.resolveKohya(moduleId) : this.resolvePath(moduleId);
    return typeof path === 'string' ? { modules: [path], rows: 'whole' } : path;
  }

  /** `targets` if the model has each of its modules, else the reason naming the one it lacks. */
  private present(
    name: string,
    targets: FluxTargets | { reason: string },
    naming: string,
  ): FluxTargets | { reason: string } {
    if ('reason' in targets) return targets;
    const missing = targets.modules.find((m) => !this.weights.has(m));
    if (missing === undefined) return targets;
    return {
      reason:
        `${naming} FLUX module '${name}' is diffusers' ${targets.modules.map((m) => `'${m}'`).join(', ')}, ` +
        `but the model has no module '${missing}'.${didYouMean(missing, this.weights)}`,
    };
  }

  resolvePath(modulePath: string): string | { reason: string } {
    if (this.weights.has(modulePath)) return modulePath;
    return { reason: `no module '${modulePath}' in the model.${didYouMean(modulePath, this.weights)}` };
  }

  /**
   * kohya writes `transformer_blocks_0_ff_net_0_proj`; the model knows `transformer_blocks.0.ff.net.0.proj`.
   * On a UNet, SGM names (`input_blocks_4_1_…`) are renamed to diffusers' first.
   */
  resolveKohya(name: string): string | { reason: string } {
    if (this.sgmBlocks === undefined) {
      const layout = unetLayoutOfModules(this.weights);
      this.sgmBlocks = layout === undefined ? null : sgmBlockMap(layout);
    }
    if (this.sgmBlocks === null || !isSgmName(name)) return this.resolveUnderscored(name);
    const renamed = sgmToDiffusersName(name, this.sgmBlocks);
    if (typeof renamed !== 'string') return renamed;
    const resolved = this.resolveUnderscored(renamed);
    return typeof resolved === 'string'
      ? resolved
      : { reason: `SGM name '${name}' is diffusers' '${renamed}', but ${resolved.reason}` };
  }

  private resolveUnderscored(name: string): string | { reason: string } {
    if (this.underscored === undefined) {
      this.underscored = new Map();
      for (const path of this.weights) {
        const flat = path.replace(/\./g, '_');
        const list = this.underscored.get(flat);
        if (list) list.push(path);
        else this.underscored.set(flat, [path]);
      }
    }
    const candidates = this.underscored.get(name) ?? [];
    if (candidates.length === 1) return candidates[0];
    if (candidates.length > 1) {
      return {
        reason: `'${name}' is ambiguous: modules ${candidates.map((c) => `'${c}'`).join(' and ')} both read so with dots as underscores`,
      };
    }
    return {
      reason: `no module of the model reads '${name}' with dots as underscores.${didYouMean(name, this.underscored.keys())}`,
    };
  }
}

/** Checks A and B against each other and the base weight; the module kind, or undefined if neither. */
function checkShapes(
  modulePath: string,
  base: readonly number[],
  down: LoraTensorInfo,
  up: LoraTensorInfo,
  filePath: string,
): 'linear' | 'conv' | undefined {
  for (const t of [down, up]) {
    if (!FLOAT_DTYPES.includes(t.dtype)) {
      throw new FileFormatError(
        `LoRA file ${filePath}: '${t.name}' has dtype ${t.dtype}; expected a float type (${FLOAT_DTYPES.join(', ')}).`,
        'LORA_DTYPE',
        filePath,
      );
    }
    if (t.shape.length !== 2 && t.shape.length !== 4) {
      throw new FileFormatError(
        `LoRA file ${filePath}: '${t.name}' is ${formatShape(t.shape)}; expected a matrix [r, in] / [out, r] or a ` +
          'conv kernel [r, in, kh, kw] / [out, r, 1, 1].',
        'LORA_SHAPE',
        filePath,
      );
    }
  }
  const rank = down.shape[0];
  if (up.shape[1] !== rank) {
    throw new FileFormatError(
      `LoRA file ${filePath}: the ranks of '${down.name}' ${formatShape(down.shape)} and '${up.name}' ` +
        `${formatShape(up.shape)} differ (${rank} vs ${up.shape[1]}); expected A [r, in] and B [out, r] with the same r.`,
      'LORA_RANK',
      filePath,
    );
  }
  let kind: 'linear' | 'conv';
  let expectDown: number[];
  let expectUp: number[];
  if (base.length === 2) {
    kind = 'linear';
    const [out, inFeatures] = base;
    // A linear module may carry conv-shaped 1×1 LoRA tensors (a kohya file for a model whose proj_in is a 1×1 conv).
    expectDown = down.shape.length === 4 ? [rank, inFeatures, 1, 1] : [rank, inFeatures];
    expectUp = up.shape.length === 4 ? [out, rank, 1, 1] : [out, rank];
  } else if (base.length === 4) {
    kind = 'conv';
    const [out, inChannels, kh, kw] = base;
    expectDown = [rank, inChannels, kh, kw];
    expectUp = [out, rank, 1, 1];
  } else return undefined;
  for (const [t, expected, role] of [
    [down, expectDown, 'A (down)'],
    [up, expectUp, 'B (up)'],
  ] as const) {
    if (t.shape.length !== expected.length || t.shape.some((d, i) => d !== expected[i])) {
      throw new FileFormatError(
        `LoRA file ${filePath}: '${t.name}' is ${formatShape(t.shape)}, but the ${role} tensor of module ` +
          `'${modulePath}' must be ${formatShape(expected)} for its base weight '${modulePath}.weight' ` +
          `${formatShape(base)}. The LoRA was made for another model.`,
        'LORA_SHAPE',
        filePath,
      );
    }
  }
  return kind;
}

/** alpha and alpha/r for one module: the config's (PEFT patterns) or the file's alpha tensor. */
function loraScale(
  modulePath: string,
  rank: number,
  fileAlpha: number | undefined,
  config: PeftLoraConfig | undefined,
  filePath: string,
): { alpha: number | undefined; scale: number } {
  if (fileAlpha !== undefined) return { alpha: fileAlpha, scale: fileAlpha / rank };
  if (config === undefined) return { alpha: undefined, scale: 1 };
  const configRank = patternValue(config.rankPattern, modulePath) ?? config.r;
  if (configRank !== rank) {
    throw new FileFormatError(
      `LoRA file ${filePath}: module '${modulePath}' has rank ${rank} in the file, but its config says r = ` +
        `${configRank}; the config and the weights are from different adapters.`,
      'LORA_RANK',
      filePath,
    );
  }
  const alpha = patternValue(config.alphaPattern, modulePath) ?? config.loraAlpha;
  // PEFT LoraLayer.update_layer: scaling = lora_alpha / r, or lora_alpha / √r with use_rslora.
  return { alpha, scale: config.useRslora ? alpha / Math.sqrt(rank) : alpha / rank };
}

/** PEFT's `get_pattern_key`: the first pattern that matches the path's tail, `(.*\.)?(pattern)$`. */
function patternValue(patterns: Readonly<Record<string, number>>, modulePath: string): number | undefined {
  for (const [pattern, value] of Object.entries(patterns)) {
    let matches: boolean;
    try {
      matches = new RegExp(`^(.*\\.)?(${pattern})$`).test(modulePath);
    } catch {
      matches = modulePath === pattern || modulePath.endsWith(`.${pattern}`);
    }
    if (matches) return value;
  }
  return undefined;
}

/** Reads adapter_config.json (or a diffusers metadata config) with PEFT's defaults r = 8, lora_alpha = 8. */
export function parsePeftConfig(raw: unknown, path: string): PeftLoraConfig {
  if (!isPlainObject(raw)) {
    throw new FileFormatError(
      `Expected ${path} to hold a JSON object, found ${describeJson(raw)}.`,
      'LORA_CONFIG',
      path,
    );
  }
  const bad = (key: string, expected: string): FileFormatError =>
    new FileFormatError(
      `${path}: "${key}" is ${describeJson(raw[key])}; expected ${expected}.`,
      'LORA_CONFIG',
      path,
    );
  const peftType = raw['peft_type'];
  if (peftType !== undefined && peftType !== null && peftType !== 'LORA') {
    throw new FileFormatError(
      `${path}: peft_type is ${describeJson(peftType)}; velodiff loads LORA adapters only.`,
      'LORA_UNSUPPORTED',
      path,
    );
  }
  if (raw['use_dora'] === true) {
    throw new FileFormatError(
      `${path}: use_dora is true; DoRA adapters are not supported.`,
      'LORA_UNSUPPORTED',
      path,
    );
  }
  const positive = (key: string, fallback: number): number => {
    const value = raw[key] ?? fallback;
    if (typeof value !== 'number' || !Number.isFinite(value) || value <= 0)
      throw bad(key, 'a positive number');
    return value;
  };
  const pattern = (key: string): Record<string, number> => {
    const value = raw[key] ?? {};
    if (
      !isPlainObject(value) ||
      !Object.values(value).every((v) => typeof v === 'number' && Number.isFinite(v))
    ) {
      throw bad(key, 'an object of module patterns to numbers');
    }
    return value as Record<string, number>;
  };
  const useRslora = raw['use_rslora'] ?? false;
  if (typeof useRslora !== 'boolean') throw bad('use_rslora', 'true or false');
  const targets = raw['target_modules'];
  return {
    r: positive('r', 8),
    loraAlpha: positive('lora_alpha', 8),
    rankPattern: pattern('rank_pattern'),
    alphaPattern: pattern('alpha_pattern'),
    useRslora,
    targetModules:
      typeof targets === 'string' || (Array.isArray(targets) && targets.every((t) => typeof t === 'string'))
        ? (targets as string[] | string)
        : undefined,
  };
}

/**
 * diffusers (≥ 0.35) saves each component's LoraConfig as JSON in `__metadata__.lora_adapter_metadata`,
 * its keys prefixed by the component (`transformer.lora_alpha`); used when the file has no alpha tensors.
 */
function diffusersMetadataConfig(
  metadata: Record<string, string>,
  path: string,
  component: LoraComponent,
): PeftLoraConfig | undefined {
  const text = metadata[DIFFUSERS_METADATA_KEY];
  if (text === undefined) return undefined;
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (error) {
    throw new FileFormatError(
      `${path}: __metadata__.${DIFFUSERS_METADATA_KEY} is not JSON: ${(error as Error).message}.`,
      'LORA_CONFIG',
      path,
    );
  }
  if (!isPlainObject(raw)) return undefined;
  const config: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(raw)) {
    const split = splitComponent(key, DIFFUSERS_PREFIXES);
    if (split.component === component) config[split.rest] = value;
    else if (split.component === undefined) config[key] ??= value;
  }
  return Object.keys(config).length === 0
    ? undefined
    : parsePeftConfig(config, `${path} (__metadata__.${DIFFUSERS_METADATA_KEY})`);
}

async function readScalar(file: SafetensorsFile, key: string): Promise<number> {
  const info = file.info(key);
  const count = info.shape.reduce((a, b) => a * b, 1);
  if (count !== 1 || !FLOAT_DTYPES.includes(info.dtype)) {
    throw new FileFormatError(
      `LoRA file ${file.path}: '${key}' is ${info.dtype}${formatShape(info.shape)}; expected a scalar float alpha.`,
      'LORA_ALPHA',
      file.path,
    );
  }
  const value = (await file.readFloat32(key))[0];
  if (!Number.isFinite(value)) {
    throw new FileFormatError(`LoRA file ${file.path}: alpha '${key}' is ${value}.`, 'LORA_ALPHA', file.path);
  }
  return value;
}

async function isDirectory(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isDirectory();
  } catch (error) {
    if (errnoCode(error) === 'ENOENT') {
      throw new FileFormatError(`LoRA file or PEFT folder not found: ${path}.`, 'FILE_MISSING', path);
    }
    throw error;
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}
