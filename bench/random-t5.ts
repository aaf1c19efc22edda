/**
 * A random-weight `T5EncoderModel` transformers folder with T5 v1.1's tensor names (gated-GELU
 * feed-forward, untied `shared` embedding), for benchmarks. The weights are streamed to the file one
 * tensor at a time, so a T5-XXL-wide folder of a few layers (gigabytes) is written without holding it.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

import type { TensorToStream } from '../src/io/safetensors.js';
import { writeSafetensorsStreaming } from '../src/io/safetensors.js';

export interface T5Shape {
  layers: number;
  dModel: number;
  dFf: number;
  numHeads: number;
  dKv: number;
  vocabSize: number;
}

/** google/t5-v1_1-xxl's encoder, PixArt-α's text encoder: 24 layers of these widths, 4.8 G parameters. */
export const T5_XXL_WIDTH: Omit<T5Shape, 'layers'> = {
  dModel: 4096,
  dFf: 10240,
  numHeads: 64,
  dKv: 64,
  vocabSize: 32128,
};

/** T5's relative attention buckets and distance (T5Config defaults, as the v1.1 checkpoints keep them). */
const BUCKETS = 32;
const MAX_DISTANCE = 128;

/** Parameters of one encoder block, and of everything outside the blocks (embedding, final norm). */
export function t5ParameterCounts(s: Omit<T5Shape, 'layers'>): { perLayer: number; outside: number } {
  const inner = s.numHeads * s.dKv;
  return {
    // q, k, v, o; wi_0, wi_1, wo; two RMSNorm weights.
    perLayer: 4 * s.dModel * inner + 3 * s.dModel * s.dFf + 2 * s.dModel,
    // The shared embedding, the first block's relative attention bias, the final RMSNorm.
    outside: s.vocabSize * s.dModel + BUCKETS * s.numHeads + s.dModel,
  };
}

/** The folder's size in bytes: float32 weights, the header aside. */
export function t5FolderBytes(s: T5Shape): number {
  const { perLayer, outside } = t5ParameterCounts(s);
  return 4 * (s.layers * perLayer + outside);
}

/** The tensors' values: uniform, scaled by 1/√fan-in for projections so activations stay O(1); norms 1. */
function uniformTensor(name: string, shape: number[], scale: number, seed: number): TensorToStream {
  return {
    name,
    dtype: 'F32',
    shape,
    data: () => {
      const n = shape.reduce((a, b) => a * b, 1);
      const values = new Float32Array(n);
      // A generator per tensor, seeded by its name, so the values do not depend on the write order.
      let state = seed >>> 0;
      for (let i = 0; i < name.length; i++)
        state = (Math.imul(state ^ name.charCodeAt(i), 16777619) + 1) >>> 0;
      for (let i = 0; i < n; i++) {
        state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
        values[i] = (state / 4294967296 - 0.5) * scale;
      }
      return values;
    },
  };
}

function onesTensor(name: string, length: number): TensorToStream {
  return { name, dtype: 'F32', shape: [length], data: () => new Float32Array(length).fill(1) };
}

/** Writes config.json and model.safetensors of a random T5 encoder into `dir` (which must exist). */
export async function writeRandomT5(dir: string, s: T5Shape, seed = 1): Promise<void> {
  const inner = s.numHeads * s.dKv;
  const projection = (name: string, outF: number, inF: number): TensorToStream =>
    uniformTensor(name, [outF, inF], 2 / Math.sqrt(inF), seed);
  const tensors: TensorToStream[] = [
    uniformTensor('shared.weight', [s.vocabSize, s.dModel], 2, seed),
    uniformTensor(
      'encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight',
      [BUCKETS, s.numHeads],
      1,
      seed,
    ),
    onesTensor('encoder.final_layer_norm.weight', s.dModel),
  ];
  for (let i = 0; i < s.layers; i++) {
    const block = `encoder.block.${i}.layer`;
    for (const p of ['q', 'k', 'v'])
      tensors.push(projection(`${block}.0.SelfAttention.${p}.weight`, inner, s.dModel));
    tensors.push(projection(`${block}.0.SelfAttention.o.weight`, s.dModel, inner));
    tensors.push(onesTensor(`${block}.0.layer_norm.weight`, s.dModel));
    for (const p of ['wi_0', 'wi_1'])
      tensors.push(projection(`${block}.1.DenseReluDense.${p}.weight`, s.dFf, s.dModel));
    tensors.push(projection(`${block}.1.DenseReluDense.wo.weight`, s.dModel, s.dFf));
    tensors.push(onesTensor(`${block}.1.layer_norm.weight`, s.dModel));
  }
  await writeSafetensorsStreaming(join(dir, 'model.safetensors'), tensors);
  const config = {
    architectures: ['T5EncoderModel'],
    model_type: 't5',
    d_model: s.dModel,
    d_ff: s.dFf,
    d_kv: s.dKv,
    num_heads: s.numHeads,
    num_layers: s.layers,
    vocab_size: s.vocabSize,
    feed_forward_proj: 'gated-gelu',
    relative_attention_num_buckets: BUCKETS,
    relative_attention_max_distance: MAX_DISTANCE,
    layer_norm_epsilon: 1e-6,
    tie_word_embeddings: false,
  };
  writeFileSync(join(dir, 'config.json'), JSON.stringify(config, null, 2));
}
