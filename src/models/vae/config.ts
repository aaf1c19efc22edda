/**
 * The config.json of a diffusers `AutoencoderKL`, checked and camel-cased. Defaults are diffusers'
 * (0.40) constructor defaults; every key diffusers' AutoencoderKL takes is read, and other keys are
 * kept in `raw` and reported to `onWarning` (ConfigReader's rules, shared by every model class).
 */
import { FileFormatError } from '../../errors.js';
import type { ModelConfig } from '../../io/diffusers.js';
import { describeJson } from '../../io/json.js';
import type { Activation } from '../../nn/activations.js';
import { ACTIVATIONS } from '../../nn/activations.js';
import type { WarningHandler } from '../../warnings.js';
import { ConfigReader } from '../config.js';

/** Activations diffusers' `get_activation` knows. */
export const VAE_ACTIVATIONS = ACTIVATIONS;
export type VaeActivation = Activation;

export interface AutoencoderKLConfig {
  readonly inChannels: number;
  readonly outChannels: number;
  readonly downBlockTypes: readonly string[];
  readonly upBlockTypes: readonly string[];
  readonly blockOutChannels: readonly number[];
  readonly layersPerBlock: number;
  readonly actFn: VaeActivation;
  readonly latentChannels: number;
  readonly normNumGroups: number;
  readonly sampleSize: number | readonly [number, number];
  /** Latents are multiplied by it before the denoiser and divided by it before `decode` (by pipelines). */
  readonly scalingFactor: number;
  /** SD3/FLUX: subtracted before scaling, added back after unscaling (by pipelines); null when unused. */
  readonly shiftFactor: number | null;
  /** Per-channel latent statistics some checkpoints carry (SDXL-style pipelines); null when absent. */
  readonly latentsMean: readonly number[] | null;
  readonly latentsStd: readonly number[] | null;
  readonly forceUpcast: boolean;
  readonly useQuantConv: boolean;
  readonly usePostQuantConv: boolean;
  readonly midBlockAddAttention: boolean;
  /** The parsed file as it is. */
  readonly raw: Readonly<ModelConfig>;
}

const DOWN_BLOCK = 'DownEncoderBlock2D';
const UP_BLOCK = 'UpDecoderBlock2D';

function isPositiveInt(value: unknown): value is number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value >= 1;
}

function isListOf<T>(value: unknown, isItem: (item: unknown) => item is T): value is T[] {
  return Array.isArray(value) && value.every((item: unknown) => isItem(item));
}

/** Checks `raw` (read from `path`) and fills in diffusers' defaults. */
export function parseAutoencoderKLConfig(
  raw: ModelConfig,
  path: string,
  onWarning?: WarningHandler,
): AutoencoderKLConfig {
  // Tracks which keys are read; the values are checked here, with this parser's own messages.
  const c = new ConfigReader(raw, path, 'AutoencoderKL');
  const invalid = (key: string, expected: string, found: unknown): never => {
    throw new FileFormatError(
      `Expected "${key}" in ${path} to be ${expected}, found ${describeJson(found)}.`,
      'CONFIG_INVALID',
      path,
    );
  };
  const value = (key: string): unknown => c.get(key);
  const has = (key: string): boolean => c.get(key) !== undefined;

  const positiveInt = (key: string, fallback: number): number => {
    const v = has(key) ? value(key) : fallback;
    return typeof v === 'number' && Number.isSafeInteger(v) && v >= 1
      ? v
      : invalid(key, 'a positive integer', v);
  };
  const bool = (key: string, fallback: boolean): boolean => {
    const v = has(key) ? value(key) : fallback;
    return typeof v === 'boolean' ? v : invalid(key, 'true or false', v);
  };
  const finite = (key: string, fallback: number): number => {
    const v = has(key) ? value(key) : fallback;
    return typeof v === 'number' && Number.isFinite(v) ? v : invalid(key, 'a finite number', v);
  };
  const numbersOrNull = (key: string): readonly number[] | null => {
    const v = value(key);
    if (v === undefined || v === null) return null;
    if (isListOf(v, (x): x is number => typeof x === 'number' && Number.isFinite(x)))
      return Object.freeze([...v]);
    return invalid(key, 'a list of numbers or null', v);
  };
  const blockTypes = (key: string, allowed: string): readonly string[] => {
    const v = has(key) ? value(key) : [allowed];
    if (!isListOf(v, (x): x is string => typeof x === 'string') || v.length === 0) {
      return invalid(key, `a non-empty list of block type names`, v);
    }
    v.forEach((type, i) => {
      if (type !== allowed) {
        throw new FileFormatError(
          `${key}[${i}] in ${path} is "${type}", but AutoencoderKL supports only "${allowed}" blocks ` +
            `(as diffusers' Encoder/Decoder use them); this checkpoint needs another VAE class.`,
          'CONFIG_UNSUPPORTED',
          path,
        );
      }
    });
    return Object.freeze([...v]);
  };

  const className = value('_class_name');
  if (className !== 'AutoencoderKL') {
    throw new FileFormatError(
      `Expected "_class_name" in ${path} to be "AutoencoderKL", found ${describeJson(className)}. ` +
        'Load this folder with the model class it names.',
      className === undefined ? 'CONFIG_INVALID' : 'CONFIG_CLASS_MISMATCH',
      path,
    );
  }

  const blockOutChannelsRaw = has('block_out_channels') ? value('block_out_channels') : [64];
  if (!isListOf(blockOutChannelsRaw, isPositiveInt) || blockOutChannelsRaw.length === 0) {
    return invalid('block_out_channels', 'a non-empty list of positive integers', blockOutChannelsRaw);
  }
  const blockOutChannels = Object.freeze([...blockOutChannelsRaw]);
  const downBlockTypes = blockTypes('down_block_types', DOWN_BLOCK);
  const upBlockTypes = blockTypes('up_block_types', UP_BLOCK);
  for (const [key, types] of [
    ['down_block_types', downBlockTypes],
    ['up_block_types', upBlockTypes],
  ] as const) {
    // diffusers decides which block is final by the length of block_out_channels.
    if (types.length !== blockOutChannels.length) {
      throw new FileFormatError(
        `"${key}" in ${path} lists ${types.length} blocks but "block_out_channels" has ` +
          `${blockOutChannels.length} entries; they must have the same length.`,
        'CONFIG_INVALID',
        path,
      );
    }
  }

  const normNumGroups = positiveInt('norm_num_groups', 32);
  const notDivisible = blockOutChannels.find((c) => c % normNumGroups !== 0);
  if (notDivisible !== undefined) {
    throw new FileFormatError(
      `"norm_num_groups" (${normNumGroups}) in ${path} must divide every entry of "block_out_channels" ` +
        `[${blockOutChannels.join(', ')}], but not ${notDivisible}: GroupNorm splits channels into equal groups.`,
      'CONFIG_INVALID',
      path,
    );
  }

  const actFn = has('act_fn') ? value('act_fn') : 'silu';
  if (typeof actFn !== 'string' || !(VAE_ACTIVATIONS as readonly string[]).includes(actFn)) {
    return invalid('act_fn', `one of ${VAE_ACTIVATIONS.map((a) => `"${a}"`).join(', ')}`, actFn);
  }

  const sampleSizeRaw = has('sample_size') ? value('sample_size') : 32;
  let sampleSize: number | readonly [number, number];
  if (isPositiveInt(sampleSizeRaw)) sampleSize = sampleSizeRaw;
  else if (Array.isArray(sampleSizeRaw) && sampleSizeRaw.length === 2 && sampleSizeRaw.every(isPositiveInt)) {
    sampleSize = Object.freeze([sampleSizeRaw[0], sampleSizeRaw[1]] as [number, number]);
  } else return invalid('sample_size', 'a positive integer or [height, width]', sampleSizeRaw);

  const shiftFactorRaw = value('shift_factor');
  const shiftFactor =
    shiftFactorRaw === undefined || shiftFactorRaw === null ? null : finite('shift_factor', 0);

  // diffusers annotates force_upcast as a float but uses it as a flag.
  const forceUpcastRaw = has('force_upcast') ? value('force_upcast') : true;
  if (typeof forceUpcastRaw !== 'boolean' && typeof forceUpcastRaw !== 'number') {
    return invalid('force_upcast', 'true or false', forceUpcastRaw);
  }

  const latentChannels = positiveInt('latent_channels', 4);
  const latentsMean = numbersOrNull('latents_mean');
  const latentsStd = numbersOrNull('latents_std');
  for (const [key, stats] of [
    ['latents_mean', latentsMean],
    ['latents_std', latentsStd],
  ] as const) {
    if (stats !== null && stats.length !== latentChannels) {
      invalid(key, `null or a list of ${latentChannels} numbers (one per latent channel)`, stats);
    }
  }

  const config = Object.freeze({
    inChannels: positiveInt('in_channels', 3),
    outChannels: positiveInt('out_channels', 3),
    downBlockTypes,
    upBlockTypes,
    blockOutChannels,
    layersPerBlock: positiveInt('layers_per_block', 1),
    actFn: actFn as VaeActivation,
    latentChannels,
    normNumGroups,
    sampleSize,
    scalingFactor: finite('scaling_factor', 0.18215),
    shiftFactor,
    latentsMean,
    latentsStd,
    forceUpcast: Boolean(forceUpcastRaw),
    useQuantConv: bool('use_quant_conv', true),
    usePostQuantConv: bool('use_post_quant_conv', true),
    midBlockAddAttention: bool('mid_block_add_attention', true),
    raw: Object.freeze({ ...raw }),
  });
  c.finish(onWarning);
  return config;
}
