/**
 * A random-weight `FluxTransformer2DModel` diffusers folder of FLUX.1-dev's shape (or narrower, for
 * tests), in bf16 as black-forest-labs ship it, for memory benchmarks (`bench flux-memory`). The
 * weights are streamed to the file one tensor at a time: the largest transient is one tensor in
 * float32 and bf16 (FLUX.1-dev's norm1.linear, 56.6 M values: 340 MB), never the model.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { OptionError } from '../src/errors.js';
import { f32ToBf16 } from '../src/io/dtypes.js';
import type { TensorToStream } from '../src/io/safetensors.js';
import { safetensorsFileBytes, writeSafetensorsStreaming } from '../src/io/safetensors.js';

export interface FluxShape {
  /** Double-stream blocks (`num_layers`). */
  doubleLayers: number;
  /** Single-stream blocks (`num_single_layers`). */
  singleLayers: number;
  heads: number;
  headDim: number;
  /** Packed latent channels (16 latent channels × 2×2 patches). */
  inChannels: number;
  /** T5-XXL's width. */
  jointAttentionDim: number;
  /** CLIP ViT-L's pooled width. */
  pooledProjectionDim: number;
  guidanceEmbeds: boolean;
  axesDimsRope: number[];
}

/** black-forest-labs/FLUX.1-dev transformer/config.json: 19 double + 38 single blocks, 3072 wide. */
export const FLUX_DEV_SHAPE: FluxShape = {
  doubleLayers: 19,
  singleLayers: 38,
  heads: 24,
  headDim: 128,
  inChannels: 64,
  jointAttentionDim: 4096,
  pooledProjectionDim: 768,
  guidanceEmbeds: true,
  axesDimsRope: [16, 56, 56],
};

/**
 * FLUX.1-dev's shape with `layers` double and single blocks and, optionally, `heads` × `headDim`
 * wide: RoPE's axes keep FLUX's split of a head (1/8 for the index axis, 7/16 for each spatial axis),
 * which needs headDim a multiple of 32.
 */
export function fluxDevShape(
  layers: { double: number; single: number },
  width: { heads?: number; headDim?: number } = {},
): FluxShape {
  const heads = width.heads ?? FLUX_DEV_SHAPE.heads;
  const headDim = width.headDim ?? FLUX_DEV_SHAPE.headDim;
  for (const [what, n] of [
    ['double blocks', layers.double],
    ['single blocks', layers.single],
  ] as const) {
    if (!Number.isInteger(n) || n < 0)
      throw new OptionError(`random FLUX: ${what} must be an integer ≥ 0, got ${n}`);
  }
  if (!Number.isInteger(heads) || heads < 1)
    throw new OptionError(`random FLUX: heads must be an integer ≥ 1, got ${heads}`);
  if (!Number.isInteger(headDim) || headDim < 32 || headDim % 32 !== 0) {
    throw new OptionError(
      `random FLUX: the head width must be a multiple of 32 (FLUX.1 splits a head 16 + 56 + 56 of 128 for RoPE), got ${headDim}`,
    );
  }
  return {
    ...FLUX_DEV_SHAPE,
    doubleLayers: layers.double,
    singleLayers: layers.single,
    heads,
    headDim,
    axesDimsRope: [headDim / 8, (7 * headDim) / 16, (7 * headDim) / 16],
  };
}

/** The diffusers config.json of a folder of this shape. */
export function fluxConfig(s: FluxShape): Record<string, unknown> {
  return {
    _class_name: 'FluxTransformer2DModel',
    _diffusers_version: '0.40.0',
    attention_head_dim: s.headDim,
    axes_dims_rope: s.axesDimsRope,
    guidance_embeds: s.guidanceEmbeds,
    in_channels: s.inChannels,
    joint_attention_dim: s.jointAttentionDim,
    num_attention_heads: s.heads,
    num_layers: s.doubleLayers,
    num_single_layers: s.singleLayers,
    out_channels: null,
    patch_size: 1,
    pooled_projection_dim: s.pooledProjectionDim,
  };
}

/** One checkpoint tensor: its name and shape, and what its values are. */
export interface FluxTensor {
  name: string;
  shape: number[];
  /** A Linear's weight (uniform, ±1/√fan-in), a bias (uniform, ±0.02), or a qk RMSNorm weight (ones). */
  kind: 'weight' | 'bias' | 'norm';
}

/** Where a tensor belongs: a double block, a single block, or outside the blocks (embedders, norm_out, proj_out). */
export type FluxTensorPart = 'double' | 'single' | 'outside';

/** The tensors of one double block, named from `prefix` (`transformer_blocks.0`). */
function doubleBlockTensors(prefix: string, s: FluxShape): FluxTensor[] {
  const dim = s.heads * s.headDim;
  return [
    ...linear(`${prefix}.norm1.linear`, dim, 6 * dim),
    ...linear(`${prefix}.norm1_context.linear`, dim, 6 * dim),
    ...['to_q', 'to_k', 'to_v', 'add_q_proj', 'add_k_proj', 'add_v_proj', 'to_out.0', 'to_add_out'].flatMap(
      (p) => linear(`${prefix}.attn.${p}`, dim, dim),
    ),
    ...['norm_q', 'norm_k', 'norm_added_q', 'norm_added_k'].map((n) =>
      norm(`${prefix}.attn.${n}`, s.headDim),
    ),
    ...['ff', 'ff_context'].flatMap((ff) => [
      ...linear(`${prefix}.${ff}.net.0.proj`, dim, 4 * dim),
      ...linear(`${prefix}.${ff}.net.2`, 4 * dim, dim),
    ]),
  ];
}

/** The tensors of one single block, named from `prefix` (`single_transformer_blocks.0`). */
function singleBlockTensors(prefix: string, s: FluxShape): FluxTensor[] {
  const dim = s.heads * s.headDim;
  return [
    ...linear(`${prefix}.norm.linear`, dim, 3 * dim),
    ...linear(`${prefix}.proj_mlp`, dim, 4 * dim),
    ...['to_q', 'to_k', 'to_v'].flatMap((p) => linear(`${prefix}.attn.${p}`, dim, dim)),
    ...['norm_q', 'norm_k'].map((n) => norm(`${prefix}.attn.${n}`, s.headDim)),
    ...linear(`${prefix}.proj_out`, 5 * dim, dim),
  ];
}

/** The tensors outside the blocks. */
function outsideTensors(s: FluxShape): FluxTensor[] {
  const dim = s.heads * s.headDim;
  const embedder = (name: string, inF: number): FluxTensor[] => [
    ...linear(`${name}.linear_1`, inF, dim),
    ...linear(`${name}.linear_2`, dim, dim),
  ];
  return [
    ...linear('x_embedder', s.inChannels, dim),
    ...linear('context_embedder', s.jointAttentionDim, dim),
    ...embedder('time_text_embed.timestep_embedder', 256),
    ...(s.guidanceEmbeds ? embedder('time_text_embed.guidance_embedder', 256) : []),
    ...embedder('time_text_embed.text_embedder', s.pooledProjectionDim),
    ...linear('norm_out.linear', dim, 2 * dim),
    // patch_size 1, out_channels = in_channels.
    ...linear('proj_out', dim, s.inChannels),
  ];
}

function linear(name: string, inF: number, outF: number): FluxTensor[] {
  return [
    { name: `${name}.weight`, shape: [outF, inF], kind: 'weight' },
    { name: `${name}.bias`, shape: [outF], kind: 'bias' },
  ];
}

function norm(name: string, width: number): FluxTensor {
  return { name: `${name}.weight`, shape: [width], kind: 'norm' };
}

/** Every tensor FluxTransformer2DModel reads for this shape, with the part it belongs to. */
export function fluxTensors(s: FluxShape): (FluxTensor & { part: FluxTensorPart })[] {
  const tensors: (FluxTensor & { part: FluxTensorPart })[] = outsideTensors(s).map((t) => ({
    ...t,
    part: 'outside',
  }));
  for (let i = 0; i < s.doubleLayers; i++)
    tensors.push(
      ...doubleBlockTensors(`transformer_blocks.${i}`, s).map((t) => ({ ...t, part: 'double' as const })),
    );
  for (let i = 0; i < s.singleLayers; i++) {
    tensors.push(
      ...singleBlockTensors(`single_transformer_blocks.${i}`, s).map((t) => ({
        ...t,
        part: 'single' as const,
      })),
    );
  }
  return tensors;
}

function elements(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/** Parameters of one double block, one single block, everything outside the blocks, and the whole model. */
export function fluxParameterCounts(s: FluxShape): {
  perDouble: number;
  perSingle: number;
  outside: number;
  total: number;
} {
  const count = (tensors: FluxTensor[]): number => tensors.reduce((sum, t) => sum + elements(t.shape), 0);
  const perDouble = count(doubleBlockTensors('d', s));
  const perSingle = count(singleBlockTensors('s', s));
  const outside = count(outsideTensors(s));
  return {
    perDouble,
    perSingle,
    outside,
    total: outside + s.doubleLayers * perDouble + s.singleLayers * perSingle,
  };
}

/** The weights file's exact size in bytes: every tensor in bf16, and the safetensors header. */
export function fluxFolderBytes(s: FluxShape): number {
  return safetensorsFileBytes(
    fluxTensors(s).map((t) => ({ name: t.name, dtype: 'BF16' as const, shape: t.shape })),
  );
}

/** A tensor's values in bf16, from a generator seeded by its name (independent of the write order). */
function randomBf16(t: FluxTensor, seed: number): Uint16Array {
  const n = elements(t.shape);
  if (t.kind === 'norm') return f32ToBf16(new Float32Array(n).fill(1));
  const scale = t.kind === 'weight' ? 2 / Math.sqrt(t.shape[1]) : 0.04;
  let state = seed >>> 0;
  for (let i = 0; i < t.name.length; i++)
    state = (Math.imul(state ^ t.name.charCodeAt(i), 16777619) + 1) >>> 0;
  const values = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    values[i] = (state / 4294967296 - 0.5) * scale;
  }
  return f32ToBf16(values);
}

/**
 * Writes config.json and diffusion_pytorch_model.safetensors (bf16) of a random FLUX transformer into
 * `dir` (which must exist), one tensor at a time.
 */
export async function writeRandomFlux(dir: string, s: FluxShape, seed = 1): Promise<void> {
  const tensors: TensorToStream[] = fluxTensors(s).map((t) => ({
    name: t.name,
    dtype: 'BF16',
    shape: t.shape,
    data: () => randomBf16(t, seed),
  }));
  await writeSafetensorsStreaming(join(dir, 'diffusion_pytorch_model.safetensors'), tensors);
  writeFileSync(join(dir, 'config.json'), `${JSON.stringify(fluxConfig(s), null, 2)}\n`);
}

/**
 * Multiply-add FLOPs (2 per MAC) of one double and one single block at `imageTokens` N and
 * `textTokens` L, batch 1: the token Linears and the two attention products (norms, RoPE and the
 * [1, C] modulations are small against them).
 */
export function fluxBlockFlops(
  s: FluxShape,
  imageTokens: number,
  textTokens: number,
): { perDouble: number; perSingle: number } {
  const dim = s.heads * s.headDim;
  const tokens = imageTokens + textTokens;
  const attention = 2 * 2 * tokens * tokens * dim;
  return {
    // Per stream: q, k, v, out (4 D²) and the feed-forward (8 D²).
    perDouble: 2 * tokens * 12 * dim * dim + attention,
    // q, k, v (3 D²), proj_mlp (4 D²), proj_out (5 D²).
    perSingle: 2 * tokens * 12 * dim * dim + attention,
  };
}
