/**
 * The config.json of a diffusers `UNet2DConditionModel` (unets/unet_2d_condition.py, diffusers 0.40),
 * checked and expanded into per-level settings the graph builder reads directly. Defaults are
 * diffusers' constructor defaults; every key it takes is read, and a value that changes the model in
 * a way velodiff does not build is an error naming the key, the value and the file.
 */
import { FileFormatError } from '../../errors.js';
import { describeJson } from '../../io/json.js';
import type { Activation } from '../../nn/activations.js';
import { ACTIVATIONS, isActivation } from '../../nn/activations.js';
import type { WarningHandler } from '../../warnings.js';
import { ConfigReader } from '../config.js';

export const DOWN_BLOCK_TYPES = ['CrossAttnDownBlock2D', 'DownBlock2D'] as const;
export const UP_BLOCK_TYPES = ['CrossAttnUpBlock2D', 'UpBlock2D'] as const;
export const MID_BLOCK_TYPES = ['UNetMidBlock2DCrossAttn', 'UNetMidBlock2D'] as const;
export type DownBlockType = (typeof DOWN_BLOCK_TYPES)[number];
export type UpBlockType = (typeof UP_BLOCK_TYPES)[number];
export type MidBlockType = (typeof MID_BLOCK_TYPES)[number];

/** The spatial transformers (Transformer2DModel) of one block. */
export interface UNetAttentionSettings {
  /** Heads of every attention (diffusers' `num_attention_heads` of the level, see `parseUNetConfig`). */
  heads: number;
  /** Per-head width: the block's channels ÷ heads, rounded down as diffusers does. */
  dimHead: number;
  crossAttentionDim: number;
  /** attn1 attends to the text instead of the image (`only_cross_attention`). */
  onlyCrossAttention: boolean;
  /** BasicTransformerBlocks in the transformer after each resnet: one entry per resnet. */
  transformerLayers: readonly number[];
}

export interface UNetDownLevel {
  type: DownBlockType;
  inChannels: number;
  outChannels: number;
  /** Resnets (and transformers, for cross-attention blocks). */
  layers: number;
  addDownsample: boolean;
  /** Present for CrossAttnDownBlock2D. */
  attention?: UNetAttentionSettings;
}

export interface UNetUpLevel {
  type: UpBlockType;
  /** The skip connection's channels of the last resnet (`in_channels`). */
  inChannels: number;
  outChannels: number;
  /** Channels coming up from the level below (`prev_output_channel`). */
  prevOutputChannels: number;
  /** layers_per_block of the mirrored down level + 1. */
  layers: number;
  addUpsample: boolean;
  attention?: UNetAttentionSettings;
}

export interface UNetMidLevel {
  type: MidBlockType;
  channels: number;
  /** `mid_block_scale_factor`: the mid-block resnets' output_scale_factor. */
  outputScaleFactor: number;
  /** Present for UNetMidBlock2DCrossAttn (one transformer between two resnets). */
  attention?: UNetAttentionSettings;
}

export interface UNet2DConditionConfig {
  /** The int8 Linear modules of a folder in velodiff's int8 format (`quantization_config`). */
  readonly int8Modules?: ReadonlySet<string>;
  readonly inChannels: number;
  readonly outChannels: number;
  readonly sampleSize: number | readonly [number, number] | null;
  /** sample ← 2·sample − 1 first (`center_input_sample`). */
  readonly centerInputSample: boolean;
  readonly flipSinToCos: boolean;
  readonly freqShift: number;
  readonly blockOutChannels: readonly number[];
  readonly down: readonly UNetDownLevel[];
  readonly mid: UNetMidLevel | null;
  readonly up: readonly UNetUpLevel[];
  readonly downsamplePadding: number;
  readonly actFn: Activation;
  readonly normNumGroups: number;
  readonly normEps: number;
  readonly useLinearProjection: boolean;
  /** Width of `encoder_hidden_states` (every cross-attention level's `cross_attention_dim`). */
  readonly encoderHiddenSize: number;
  /** Width of the sinusoidal timestep features (block_out_channels[0]). */
  readonly timestepInputDim: number;
  /** Width of the time embedding every resnet receives. */
  readonly timeEmbedDim: number;
  /** LCM's `time_cond_proj_dim`: width of `timestep_cond`; null without cond_proj. */
  readonly timeCondProjDim: number | null;
  /** SDXL's `addition_embed_type: 'text_time'`; null when the UNet has no added embedding. */
  readonly textTime: {
    /** Sinusoidal width per time id (`addition_time_embed_dim`). */
    readonly timeEmbedDim: number;
    /** add_embedding's input width: text_embeds width + time ids × timeEmbedDim. */
    readonly projectionInputDim: number;
  } | null;
  readonly convInKernel: number;
  readonly convOutKernel: number;
  /** The parsed file as it is. */
  readonly raw: Readonly<Record<string, unknown>>;
}

const CLASS_NAME = 'UNet2DConditionModel';

/** diffusers' get_down_block / get_up_block strip a leading "UNetRes" from block names. */
function blockName(type: string): string {
  return type.startsWith('UNetRes') ? type.slice('UNetRes'.length) : type;
}

/** Reads and checks `raw` (from `path`) and fills in diffusers' defaults. */
export function parseUNetConfig(
  raw: Record<string, unknown>,
  path: string,
  onWarning?: WarningHandler,
): UNet2DConditionConfig {
  const c = new ConfigReader(raw, path, CLASS_NAME);
  const invalid = (key: string, expected: string): never => {
    throw new FileFormatError(
      `${path}: "${key}" is ${describeJson(raw[key])}; expected ${expected} for ${CLASS_NAME}`,
      'CONFIG_VALUE',
      path,
    );
  };
  if (raw._class_name !== undefined && raw._class_name !== CLASS_NAME) {
    throw new FileFormatError(
      `${path}: _class_name is ${JSON.stringify(raw._class_name)}, expected ${CLASS_NAME}; load this folder with the class it names`,
      'CONFIG_CLASS',
      path,
    );
  }

  // --- what velodiff does not build: rejected before anything is derived from it ----------------
  // diffusers itself refuses num_attention_heads (its issue 2011): attention_head_dim is the head count.
  c.supported('num_attention_heads', [], 'diffusers raises for it too; attention_head_dim gives the heads');
  c.supported('dual_cross_attention', [false], 'DualTransformer2DModel is not built');
  c.supported('class_embed_type', [], 'UNets with class embeddings are not built');
  c.supported('num_class_embeds', [], 'UNets with class embeddings are not built');
  c.supported('class_embeddings_concat', [false], 'UNets with class embeddings are not built');
  c.supported('addition_embed_type', ['text_time'], "the SDXL added embedding; others are Kandinsky's");
  c.supported('encoder_hid_dim_type', [], 'no encoder_hid_proj is built');
  c.supported('encoder_hid_dim', [], 'no encoder_hid_proj is built');
  c.supported('time_embedding_type', ['positional'], 'Fourier time features are not built');
  c.supported('timestep_post_act', [], 'no activation after the time embedding is built');
  c.supported('time_embedding_act_fn', [], 'no activation after the time embedding is built');
  c.supported('resnet_time_scale_shift', ['default'], "'scale_shift' and 'spatial' resnets are not built");
  c.supported('attention_type', ['default'], 'GLIGEN gated attention is not built');
  if (raw.norm_num_groups === null) {
    // diffusers skips only conv_norm_out then; its resnets and transformers cannot be built without groups.
    c.unsupported(
      'norm_num_groups',
      'a positive integer (diffusers builds no UNet2DConditionModel with null)',
    );
  }

  // --- scalars -----------------------------------------------------------------------------------
  const inChannels = c.integer('in_channels', 4, 1);
  const outChannels = c.integer('out_channels', 4, 1);
  const normNumGroups = c.integer('norm_num_groups', 32, 1);
  const normEps = c.number('norm_eps', 1e-5);
  const actFnRaw = c.get('act_fn') ?? 'silu';
  if (!isActivation(actFnRaw)) invalid('act_fn', `one of ${ACTIVATIONS.map((a) => `"${a}"`).join(', ')}`);
  const actFn = actFnRaw as Activation;
  const convInKernel = c.integer('conv_in_kernel', 3, 1);
  const convOutKernel = c.integer('conv_out_kernel', 3, 1);
  for (const [key, k] of [
    ['conv_in_kernel', convInKernel],
    ['conv_out_kernel', convOutKernel],
  ] as const) {
    // (k − 1) / 2 padding keeps the size only for odd kernels.
    if (k % 2 === 0) invalid(key, 'an odd integer');
  }
  const sampleSizeRaw = c.get('sample_size');
  let sampleSize: number | readonly [number, number] | null = null;
  if (typeof sampleSizeRaw === 'number') sampleSize = sampleSizeRaw;
  else if (Array.isArray(sampleSizeRaw) && sampleSizeRaw.length === 2)
    sampleSize = [Number(sampleSizeRaw[0]), Number(sampleSizeRaw[1])];
  else if (sampleSizeRaw !== undefined && sampleSizeRaw !== null)
    invalid('sample_size', 'an integer, [height, width] or null');

  // --- blocks --------------------------------------------------------------------------------------
  const blockOutChannels = c.numbers('block_out_channels', [320, 640, 1280, 1280]);
  if (blockOutChannels.length === 0 || blockOutChannels.some((n) => !Number.isInteger(n) || n < 1))
    invalid('block_out_channels', 'a non-empty list of positive integers');
  const levels = blockOutChannels.length;
  const blockTypes = <T extends string>(key: string, fallback: string[], allowed: readonly T[]): T[] => {
    const types = c.strings(key, fallback).map(blockName);
    types.forEach((type, i) => {
      if (!allowed.includes(type as T)) {
        c.unsupported(key, `${allowed.join(', ')} (${key}[${i}] is "${type}")`);
      }
    });
    if (types.length !== levels) {
      throw new FileFormatError(
        `${path}: "${key}" lists ${types.length} blocks but "block_out_channels" has ${levels}; diffusers needs one block per entry`,
        'CONFIG_VALUE',
        path,
      );
    }
    return types as T[];
  };
  const downTypes = blockTypes(
    'down_block_types',
    ['CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'DownBlock2D'],
    DOWN_BLOCK_TYPES,
  );
  const upTypes = blockTypes(
    'up_block_types',
    ['UpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D'],
    UP_BLOCK_TYPES,
  );
  const midRaw = raw.mid_block_type === undefined ? 'UNetMidBlock2DCrossAttn' : c.get('mid_block_type');
  c.accept('mid_block_type');
  if (midRaw !== null && !(MID_BLOCK_TYPES as readonly unknown[]).includes(midRaw)) {
    c.unsupported('mid_block_type', `${MID_BLOCK_TYPES.join(', ')} or null`);
  }
  const midType = midRaw as MidBlockType | null;

  /** An int or a list with one entry per level, as diffusers' _check_config wants it. */
  const perLevel = <T>(key: string, fallback: unknown, isItem: (v: unknown) => v is T, what: string): T[] => {
    const v = raw[key] === undefined || raw[key] === null ? fallback : c.get(key);
    c.accept(key);
    // A list is always per level (transformer_layers_per_block's items may themselves be lists).
    if (!Array.isArray(v) && isItem(v)) return Array.from({ length: levels }, () => v);
    if (!Array.isArray(v) || v.length !== levels || !v.every(isItem))
      invalid(key, `${what}, or a list of ${levels} of them (one per down block)`);
    return [...(v as T[])];
  };
  const isPositiveInt = (v: unknown): v is number => typeof v === 'number' && Number.isInteger(v) && v >= 1;
  const isBool = (v: unknown): v is boolean => typeof v === 'boolean';
  const isLayerCounts = (v: unknown): v is number | number[] =>
    isPositiveInt(v) || (Array.isArray(v) && v.length > 0 && v.every(isPositiveInt));

  const layersPerBlock = perLevel('layers_per_block', 2, isPositiveInt, 'a positive integer');
  // `num_attention_heads = num_attention_heads or attention_head_dim` (diffusers): the checkpoints'
  // attention_head_dim is the number of heads; each head is channels ÷ heads wide.
  const heads = perLevel('attention_head_dim', 8, isPositiveInt, 'a positive integer');
  const crossAttentionDims = perLevel('cross_attention_dim', 1280, isPositiveInt, 'a positive integer');
  const onlyCrossAttention = perLevel('only_cross_attention', false, isBool, 'true or false');
  const transformerLayers = perLevel(
    'transformer_layers_per_block',
    1,
    isLayerCounts,
    'a positive integer or a list of them (one per resnet)',
  );
  const reverseRaw = c.get('reverse_transformer_layers_per_block');
  let reverseTransformerLayers: (number | number[])[] | undefined;
  if (reverseRaw !== undefined && reverseRaw !== null) {
    if (!Array.isArray(reverseRaw) || reverseRaw.length !== levels || !reverseRaw.every(isLayerCounts))
      invalid('reverse_transformer_layers_per_block', `null or a list of ${levels} layer counts`);
    reverseTransformerLayers = reverseRaw as (number | number[])[];
  } else if (transformerLayers.some((t) => Array.isArray(t))) {
    // diffusers' _check_config: asymmetric UNets must say what the up path has.
    invalid(
      'transformer_layers_per_block',
      'integers per level unless reverse_transformer_layers_per_block gives the up path',
    );
  }
  const downsamplePadding = c.integer('downsample_padding', 1, 0);
  const midBlockScaleFactor = c.number('mid_block_scale_factor', 1);
  const useLinearProjection = c.boolean('use_linear_projection', false);

  /** Per-resnet transformer layer counts of a block with `layers` resnets. */
  const expandLayers = (key: string, counts: number | number[], layers: number): number[] => {
    if (typeof counts === 'number') return Array.from({ length: layers }, () => counts);
    if (counts.length < layers) invalid(key, `a list of at least ${layers} layer counts per block`);
    return counts.slice(0, layers);
  };
  const attentionOf = (
    level: number,
    channels: number,
    layers: number,
    counts: number[],
    only: boolean,
  ): UNetAttentionSettings => {
    const h = heads[level];
    if (h > channels) {
      invalid('attention_head_dim', `at most the block's ${channels} channels (it is the number of heads)`);
    }
    return {
      heads: h,
      dimHead: Math.floor(channels / h),
      crossAttentionDim: crossAttentionDims[level],
      onlyCrossAttention: only,
      transformerLayers: counts.slice(0, layers),
    };
  };

  const down: UNetDownLevel[] = [];
  let output = blockOutChannels[0];
  downTypes.forEach((type, i) => {
    const input = output;
    output = blockOutChannels[i];
    const layers = layersPerBlock[i];
    const level: UNetDownLevel = {
      type,
      inChannels: input,
      outChannels: output,
      layers,
      addDownsample: i < levels - 1,
    };
    if (type === 'CrossAttnDownBlock2D') {
      const counts = expandLayers('transformer_layers_per_block', transformerLayers[i], layers);
      level.attention = attentionOf(i, output, layers, counts, onlyCrossAttention[i]);
    }
    down.push(level);
  });

  let mid: UNetMidLevel | null = null;
  if (midType !== null) {
    const channels = blockOutChannels[levels - 1];
    mid = { type: midType, channels, outputScaleFactor: midBlockScaleFactor };
    if (midType === 'UNetMidBlock2DCrossAttn') {
      const last = transformerLayers[levels - 1];
      const counts = [typeof last === 'number' ? last : last[0]];
      // UNetMidBlock2DCrossAttn takes no only_cross_attention (mid_block_only_cross_attention is
      // for UNetMidBlock2DSimpleCrossAttn).
      mid.attention = attentionOf(levels - 1, channels, 1, counts, false);
    }
  }

  const reversedChannels = [...blockOutChannels].reverse();
  const up: UNetUpLevel[] = [];
  output = reversedChannels[0];
  upTypes.forEach((type, i) => {
    const mirrored = levels - 1 - i;
    const prev = output;
    output = reversedChannels[i];
    const input = reversedChannels[Math.min(i + 1, levels - 1)];
    const layers = layersPerBlock[mirrored] + 1;
    const level: UNetUpLevel = {
      type,
      inChannels: input,
      outChannels: output,
      prevOutputChannels: prev,
      layers,
      addUpsample: i < levels - 1,
    };
    if (type === 'CrossAttnUpBlock2D') {
      const key = reverseTransformerLayers
        ? 'reverse_transformer_layers_per_block'
        : 'transformer_layers_per_block';
      const counts = expandLayers(
        key,
        (reverseTransformerLayers ?? [...transformerLayers].reverse())[i],
        layers,
      );
      level.attention = attentionOf(mirrored, output, layers, counts, onlyCrossAttention[mirrored]);
    }
    up.push(level);
  });

  const crossLevels = [...down, ...up, ...(mid ? [mid] : [])]
    .map((l) => l.attention?.crossAttentionDim)
    .filter((d): d is number => d !== undefined);
  if (new Set(crossLevels).size > 1) {
    invalid(
      'cross_attention_dim',
      'the same width for every cross-attention block (one encoder_hidden_states feeds them all)',
    );
  }

  // --- embeddings ------------------------------------------------------------------------------
  const flipSinToCos = c.boolean('flip_sin_to_cos', true);
  const freqShift = c.number('freq_shift', 0);
  const timeEmbedDim = c.optionalNumber('time_embedding_dim') ?? blockOutChannels[0] * 4;
  if (!Number.isInteger(timeEmbedDim) || timeEmbedDim < 1)
    invalid('time_embedding_dim', 'a positive integer or null');
  const timeCondProjDim = c.optionalNumber('time_cond_proj_dim') ?? null;
  if (timeCondProjDim !== null && (!Number.isInteger(timeCondProjDim) || timeCondProjDim < 1))
    invalid('time_cond_proj_dim', 'a positive integer or null');
  let textTime: UNet2DConditionConfig['textTime'] = null;
  const additionTimeEmbedDim = c.optionalNumber('addition_time_embed_dim');
  const projectionInputDim = c.optionalNumber('projection_class_embeddings_input_dim');
  if (raw.addition_embed_type === 'text_time') {
    if (
      additionTimeEmbedDim === undefined ||
      !Number.isInteger(additionTimeEmbedDim) ||
      additionTimeEmbedDim < 1
    )
      invalid('addition_time_embed_dim', "a positive integer with addition_embed_type 'text_time'");
    if (projectionInputDim === undefined || !Number.isInteger(projectionInputDim) || projectionInputDim < 1)
      invalid(
        'projection_class_embeddings_input_dim',
        "a positive integer with addition_embed_type 'text_time'",
      );
    textTime = {
      timeEmbedDim: additionTimeEmbedDim as number,
      projectionInputDim: projectionInputDim as number,
    };
  }

  // --- keys that do not change this model ------------------------------------------------------
  const centerInputSample = c.boolean('center_input_sample', false);
  // Upcasting changes only half-precision runs; velodiff computes attention in float32.
  c.boolean('upcast_attention', false);
  c.number('dropout', 0);
  // Read only by blocks velodiff rejects above (ResnetDownsampleBlock2D, SimpleCrossAttn*,
  // UNetMidBlock2DSimpleCrossAttn, TextTimeEmbedding): no effect on the blocks it builds.
  c.accept(
    'resnet_skip_time_act',
    'resnet_out_scale_factor',
    'cross_attention_norm',
    'mid_block_only_cross_attention',
    'addition_embed_type_num_heads',
  );
  const int8Modules = c.int8Modules();
  c.finish(onWarning);

  return Object.freeze({
    ...(int8Modules ? { int8Modules } : {}),
    inChannels,
    outChannels,
    sampleSize,
    centerInputSample,
    flipSinToCos,
    freqShift,
    blockOutChannels: Object.freeze([...blockOutChannels]),
    down: Object.freeze(down),
    mid,
    up: Object.freeze(up),
    downsamplePadding,
    actFn,
    normNumGroups,
    normEps,
    useLinearProjection,
    encoderHiddenSize: crossLevels[0] ?? crossAttentionDims[0],
    timestepInputDim: blockOutChannels[0],
    timeEmbedDim,
    timeCondProjDim,
    textTime,
    convInKernel,
    convOutKernel,
    raw: Object.freeze({ ...raw }),
  });
}
