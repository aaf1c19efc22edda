import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { TensorToWrite } from '../src/io/safetensors.js';
import { writeSafetensors } from '../src/io/safetensors.js';

export interface PixArtShape {
  layers: number;
  heads: number;
  headDim: number;
  captionChannels: number;
  inChannels: number;
  patchSize: number;
  sampleSize: number;
}

/** PixArt-α 1024 widths: hidden 1152 = 16 × 72, T5-XXL captions of 4096 channels. */
export const PIXART_ALPHA_WIDTH: Omit<PixArtShape, 'layers'> = {
  heads: 16,
  headDim: 72,
  captionChannels: 4096,
  inChannels: 4,
  patchSize: 2,
  sampleSize: 128,
};

/**
 * A diffusers transformer folder with PixArt-α's tensor names and random weights (uniform,
 * scaled by 1/√fan-in so activations stay O(1)), for benchmarks.
 */
export async function writeRandomPixArt(dir: string, s: PixArtShape, seed = 1): Promise<void> {
  mkdirSync(dir, { recursive: true });
  const dim = s.heads * s.headDim;
  const outChannels = 2 * s.inChannels;
  let state = seed >>> 0;
  const random = (): number => {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    return state / 4294967296 - 0.5;
  };
  const tensors: Record<string, TensorToWrite> = {};
  const add = (name: string, shape: number[]): void => {
    const n = shape.reduce((a, b) => a * b, 1);
    const fanIn = shape.length > 1 ? n / shape[0] : 1;
    const scale = 2 / Math.sqrt(fanIn);
    tensors[name] = { dtype: 'F32', shape, data: Float32Array.from({ length: n }, () => random() * scale) };
  };
  const linear = (name: string, inF: number, outF: number): void => {
    add(`${name}.weight`, [outF, inF]);
    add(`${name}.bias`, [outF]);
  };
  add('pos_embed.proj.weight', [dim, s.inChannels, s.patchSize, s.patchSize]);
  add('pos_embed.proj.bias', [dim]);
  linear('adaln_single.emb.timestep_embedder.linear_1', 256, dim);
  linear('adaln_single.emb.timestep_embedder.linear_2', dim, dim);
  const sizeDim = Math.floor(dim / 3);
  for (const e of ['resolution_embedder', 'aspect_ratio_embedder']) {
    linear(`adaln_single.emb.${e}.linear_1`, 256, sizeDim);
    linear(`adaln_single.emb.${e}.linear_2`, sizeDim, sizeDim);
  }
  linear('adaln_single.linear', dim, 6 * dim);
  linear('caption_projection.linear_1', s.captionChannels, dim);
  linear('caption_projection.linear_2', dim, dim);
  for (let i = 0; i < s.layers; i++) {
    const b = `transformer_blocks.${i}`;
    add(`${b}.scale_shift_table`, [6, dim]);
    for (const a of ['attn1', 'attn2']) {
      for (const proj of ['to_q', 'to_k', 'to_v', 'to_out.0']) linear(`${b}.${a}.${proj}`, dim, dim);
    }
    linear(`${b}.ff.net.0.proj`, dim, 4 * dim);
    linear(`${b}.ff.net.2`, 4 * dim, dim);
  }
  add('scale_shift_table', [2, dim]);
  linear('proj_out', dim, s.patchSize * s.patchSize * outChannels);
  await writeSafetensors(join(dir, 'diffusion_pytorch_model.safetensors'), tensors);
  const config = {
    _class_name: 'PixArtTransformer2DModel',
    activation_fn: 'gelu-approximate',
    attention_bias: true,
    attention_head_dim: s.headDim,
    caption_channels: s.captionChannels,
    cross_attention_dim: dim,
    in_channels: s.inChannels,
    norm_elementwise_affine: false,
    norm_eps: 1e-6,
    norm_type: 'ada_norm_single',
    num_attention_heads: s.heads,
    num_layers: s.layers,
    out_channels: outChannels,
    patch_size: s.patchSize,
    sample_size: s.sampleSize,
  };
  writeFileSync(join(dir, 'config.json'), JSON.stringify(config, null, 2));
}

/**
 * Multiply-add FLOPs (2 per MAC) of one PixArt forward: N image tokens, L caption tokens, batch B.
 * Elementwise ops, norms and softmax are not counted (they are O(N·D), small against the MatMuls).
 */
export function pixArtFlops(s: PixArtShape, tokens: number, captionLength: number, batch: number): number {
  const D = s.heads * s.headDim;
  const N = tokens;
  const L = captionLength;
  const perLayer =
    2 * N * D * D * 4 + // self-attention q, k, v, out
    2 * 2 * N * N * D + // scores and weighted sum
    2 * N * D * D * 2 + // cross-attention q, out
    2 * L * D * D * 2 + // cross-attention k, v
    2 * 2 * N * L * D + // cross scores and weighted sum
    2 * N * D * 4 * D * 2; // feed-forward
  const embed =
    2 * N * s.inChannels * s.patchSize ** 2 * D + // patch conv
    2 * L * (s.captionChannels * D + D * D) + // caption projection
    2 * (256 * D + D * D + D * 6 * D) + // timestep embedding and adaLN
    2 * N * D * s.patchSize ** 2 * 2 * s.inChannels; // proj_out
  return batch * (s.layers * perLayer + embed);
}
