/**
 * A tiny random "model" with two Linear modules and a Conv2d whose names carry underscores and
 * digits like PixArt's (`transformer_blocks.0.ff.net.0.proj`, `…attn1.to_out.0`, `pos_embed.proj`),
 * LoRA files for it in the PEFT, diffusers and kohya layouts, and a float64 reference forward.
 */
import { after } from 'node:test';
import { cp, mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { Graph } from '../../src/graph/graph.js';
import type { Tensor } from '../../src/graph/graph.js';
import { WeightStore } from '../../src/io/diffusers.js';
import { writeSafetensors, type TensorToWrite } from '../../src/io/safetensors.js';
import { Conv2d, Linear } from '../../src/nn/layers.js';
import type { LoraProvider } from '../../src/nn/params.js';
import { Params } from '../../src/nn/params.js';
import type { HostTensor } from '../../src/runtime/host-tensor.js';
import { hostTensor } from '../../src/runtime/host-tensor.js';
import { randomArray, randomTensor, readAllTensors } from '../helpers.js';

export const FF = 'transformer_blocks.0.ff.net.0.proj';
export const TO_OUT = 'transformer_blocks.0.attn1.to_out.0';
export const PATCH = 'pos_embed.proj';
/** In the model but built by no layer of the tiny graph. */
export const EMBEDDER = 'adaln_single.emb.timestep_embedder.linear_1';

/** Base weight shapes: torch layouts [out, in] and [out, in, kh, kw]. */
export const BASE_SHAPES: Readonly<Record<string, number[]>> = {
  [FF]: [6, 5],
  [TO_OUT]: [5, 6],
  [PATCH]: [4, 3, 3, 3],
  [EMBEDDER]: [5, 5],
};
const CONV = { stride: 2, padding: 1 };

export interface Weights {
  [module: string]: { weight: Float32Array; bias: Float32Array };
}

export async function tempDir(prefix = 'velodiff-lora-'): Promise<string> {
  return mkdtemp(join(tmpdir(), prefix));
}

/** A fresh temporary folder per call, all removed after the file's tests. */
export function tempDirsRemovedAfter(): (prefix?: string) => Promise<string> {
  const dirs: string[] = [];
  after(async () => {
    await Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true })));
  });
  return async (prefix) => {
    const dir = await tempDir(prefix);
    dirs.push(dir);
    return dir;
  };
}

const f32 = (shape: number[], data: Float32Array): TensorToWrite => ({ dtype: 'F32', shape, data });
const size = (shape: readonly number[]): number => shape.reduce((a, b) => a * b, 1);

/** Writes a random base checkpoint into `<dir>/base` and opens it. */
export async function writeBase(
  dir: string,
  random: () => number,
): Promise<{ store: WeightStore; weights: Weights }> {
  const weights: Weights = {};
  const tensors: Record<string, TensorToWrite> = {};
  for (const [module, shape] of Object.entries(BASE_SHAPES)) {
    weights[module] = { weight: randomArray(size(shape), random), bias: randomArray(shape[0], random) };
    tensors[`${module}.weight`] = f32(shape, weights[module].weight);
    tensors[`${module}.bias`] = f32([shape[0]], weights[module].bias);
  }
  await mkdir(join(dir, 'base'), { recursive: true });
  await writeSafetensors(join(dir, 'base', 'diffusion_pytorch_model.safetensors'), tensors);
  return { store: await WeightStore.open(join(dir, 'base')), weights };
}

/** The tiny graph: ff = FF(x), out = TO_OUT(h), patches = PATCH(img). */
export function buildTinyGraph(store: WeightStore, lora?: LoraProvider): Graph {
  const g = new Graph('tiny');
  const root = Params.of(g, store, lora ? { lora } : {});
  const x = g.input('x', 'float32', ['B', 3, 5]);
  const h = g.input('h', 'float32', ['B', 3, 6]);
  const img = g.input('img', 'float32', [1, 3, 5, 5]);
  const module = (path: string): Params => path.split('.').reduce((p, part) => p.child(part), root);
  g.output('ff', Linear(module(FF), x, 5, 6));
  g.output('out', Linear(module(TO_OUT), h, 6, 5));
  const patches: Tensor = Conv2d(module(PATCH), img, { inChannels: 3, outChannels: 4, kernel: 3, ...CONV });
  g.output('patches', patches);
  return g;
}

export function tinyInputs(random: () => number): Record<string, HostTensor> {
  return {
    x: randomTensor([2, 3, 5], random),
    h: randomTensor([2, 3, 6], random),
    img: randomTensor([1, 3, 5, 5], random),
  };
}

/** A LoRA: per module A [r, in(, kh, kw)] and B [out, r(, 1, 1)]. */
export interface LoraWeights {
  [module: string]: { a: Float32Array; aShape: number[]; b: Float32Array; bShape: number[] };
}

export function randomLora(random: () => number, ranks: Readonly<Record<string, number>>): LoraWeights {
  const lora: LoraWeights = {};
  for (const [module, rank] of Object.entries(ranks)) {
    const base = BASE_SHAPES[module];
    const aShape = base.length === 4 ? [rank, base[1], base[2], base[3]] : [rank, base[1]];
    const bShape = base.length === 4 ? [base[0], rank, 1, 1] : [base[0], rank];
    lora[module] = {
      a: randomArray(size(aShape), random),
      aShape,
      b: randomArray(size(bShape), random),
      bShape,
    };
  }
  return lora;
}

/** A PEFT folder: adapter_model.safetensors (base_model.model.<path>.lora_A/B.weight) + adapter_config.json. */
export async function writePeft(
  dir: string,
  lora: LoraWeights,
  config: Record<string, unknown>,
  extra: Record<string, TensorToWrite> = {},
): Promise<string> {
  await mkdir(dir, { recursive: true });
  const tensors: Record<string, TensorToWrite> = { ...extra };
  for (const [module, t] of Object.entries(lora)) {
    tensors[`base_model.model.${module}.lora_A.weight`] = f32(t.aShape, t.a);
    tensors[`base_model.model.${module}.lora_B.weight`] = f32(t.bShape, t.b);
  }
  await writeSafetensors(join(dir, 'adapter_model.safetensors'), tensors);
  await writeFile(join(dir, 'adapter_config.json'), JSON.stringify({ peft_type: 'LORA', ...config }));
  return dir;
}

/** A diffusers file: `<prefix>.<path>.lora_A/B.weight` or `.lora.down/up.weight`, optional `<path>.alpha`. */
export async function writeDiffusers(
  path: string,
  lora: LoraWeights,
  options: { prefix?: string; spelling?: 'lora_AB' | 'lora.down'; alphas?: Record<string, number> } = {},
  extra: Record<string, TensorToWrite> = {},
): Promise<string> {
  const prefix = options.prefix ?? 'transformer';
  const [downName, upName] =
    options.spelling === 'lora.down' ? ['lora.down', 'lora.up'] : ['lora_A', 'lora_B'];
  const tensors: Record<string, TensorToWrite> = { ...extra };
  for (const [module, t] of Object.entries(lora)) {
    tensors[`${prefix}.${module}.${downName}.weight`] = f32(t.aShape, t.a);
    tensors[`${prefix}.${module}.${upName}.weight`] = f32(t.bShape, t.b);
    const alpha = options.alphas?.[module];
    if (alpha !== undefined) tensors[`${prefix}.${module}.alpha`] = f32([], Float32Array.of(alpha));
  }
  await writeSafetensors(path, tensors);
  return path;
}

/** A kohya file: `lora_unet_<path with underscores>.lora_down/lora_up.weight` and `.alpha` scalars. */
export async function writeKohya(
  path: string,
  lora: LoraWeights,
  alphas: Record<string, number> = {},
  extra: Record<string, TensorToWrite> = {},
): Promise<string> {
  const tensors: Record<string, TensorToWrite> = { ...extra };
  for (const [module, t] of Object.entries(lora)) {
    const name = `lora_unet_${module.replace(/\./g, '_')}`;
    tensors[`${name}.lora_down.weight`] = f32(t.aShape, t.a);
    tensors[`${name}.lora_up.weight`] = f32(t.bShape, t.b);
    if (alphas[module] !== undefined) tensors[`${name}.alpha`] = f32([], Float32Array.of(alphas[module]));
  }
  await writeSafetensors(path, tensors);
  return path;
}

/** One low-rank term of the reference: ΔW = scale·B·A. */
export interface ReferenceTerm {
  lora: LoraWeights;
  scale: number;
}

/** W + Σ scale·B·A in float64, with A flattened to [r, in·kh·kw] for convs. */
function effectiveWeight(module: string, base: Weights, terms: readonly ReferenceTerm[]): Float64Array {
  const shape = BASE_SHAPES[module];
  const out = shape[0];
  const cols = size(shape) / out;
  const w = Float64Array.from(base[module].weight);
  for (const { lora, scale } of terms) {
    const t = lora[module];
    if (!t || scale === 0) continue;
    const rank = t.aShape[0];
    for (let o = 0; o < out; o++) {
      for (let c = 0; c < cols; c++) {
        let sum = 0;
        for (let k = 0; k < rank; k++) sum += t.b[o * rank + k] * t.a[k * cols + c];
        w[o * cols + c] += scale * sum;
      }
    }
  }
  return w;
}

/** y = x·(W + Σ s·B·A)ᵀ + b over the last axis. */
function linear64(
  x: HostTensor,
  module: string,
  base: Weights,
  terms: readonly ReferenceTerm[],
): Float64Array {
  const [out, inFeatures] = BASE_SHAPES[module];
  const w = effectiveWeight(module, base, terms);
  const rows = x.data.length / inFeatures;
  const y = new Float64Array(rows * out);
  for (let r = 0; r < rows; r++) {
    for (let o = 0; o < out; o++) {
      let sum = base[module].bias[o];
      for (let i = 0; i < inFeatures; i++) sum += Number(x.data[r * inFeatures + i]) * w[o * inFeatures + i];
      y[r * out + o] = sum;
    }
  }
  return y;
}

/** NCHW convolution with zero padding, stride CONV.stride, padding CONV.padding. */
function conv64(
  img: HostTensor,
  module: string,
  base: Weights,
  terms: readonly ReferenceTerm[],
): Float64Array {
  const [out, channels, kh, kw] = BASE_SHAPES[module];
  const [, , height, width] = img.shape;
  const w = effectiveWeight(module, base, terms);
  const { stride, padding } = CONV;
  const oh = Math.floor((height + 2 * padding - kh) / stride) + 1;
  const ow = Math.floor((width + 2 * padding - kw) / stride) + 1;
  const y = new Float64Array(out * oh * ow);
  for (let o = 0; o < out; o++) {
    for (let oy = 0; oy < oh; oy++) {
      for (let ox = 0; ox < ow; ox++) {
        let sum = base[module].bias[o];
        for (let c = 0; c < channels; c++) {
          for (let ky = 0; ky < kh; ky++) {
            for (let kx = 0; kx < kw; kx++) {
              const iy = oy * stride + ky - padding;
              const ix = ox * stride + kx - padding;
              if (iy < 0 || ix < 0 || iy >= height || ix >= width) continue;
              sum +=
                Number(img.data[(c * height + iy) * width + ix]) *
                w[((o * channels + c) * kh + ky) * kw + kx];
            }
          }
        }
        y[(o * oh + oy) * ow + ox] = sum;
      }
    }
  }
  return y;
}

/** The tiny graph's outputs in float64 for base weights plus `terms`. */
export function reference(
  inputs: Record<string, HostTensor>,
  base: Weights,
  terms: readonly ReferenceTerm[],
): Record<'ff' | 'out' | 'patches', Float64Array> {
  return {
    ff: linear64(inputs.x, FF, base, terms),
    out: linear64(inputs.h, TO_OUT, base, terms),
    patches: conv64(inputs.img, PATCH, base, terms),
  };
}

/**
 * A random LoRA of rank `rank` for `modules` of a checkpoint (its tensors by name, e.g. from
 * readAllTensors): A [r, in(, kh, kw)], B [out, r(, 1, 1)], values uniform in [−range, range).
 */
export function randomLoraFor(
  base: Readonly<Record<string, HostTensor>>,
  modules: readonly string[],
  rank: number,
  random: () => number,
  range = 0.25,
): LoraWeights {
  const lora: LoraWeights = {};
  for (const module of modules) {
    const weight = base[`${module}.weight`];
    if (!weight) throw new Error(`randomLoraFor: the checkpoint has no ${module}.weight`);
    const shape = weight.shape;
    const aShape = shape.length === 4 ? [rank, shape[1], shape[2], shape[3]] : [rank, shape[1]];
    const bShape = shape.length === 4 ? [shape[0], rank, 1, 1] : [shape[0], rank];
    lora[module] = {
      a: randomArray(size(aShape), random, -range, range),
      aShape,
      b: randomArray(size(bShape), random, -range, range),
      bShape,
    };
  }
  return lora;
}

/** The one safetensors file of a model folder. */
export async function safetensorsIn(dir: string): Promise<string> {
  const name = (await readdir(dir)).find((f) => f.endsWith('.safetensors'));
  if (!name) throw new Error(`no safetensors file in ${dir}`);
  return join(dir, name);
}

/**
 * Copies the model folder `dir` (one float32 safetensors file) to `out`, with W + scale·B·A (float64
 * sums, A flattened to [r, in·kh·kw] for convs) in place of each W the LoRA targets.
 */
export async function writeMergedCopy(
  dir: string,
  out: string,
  lora: LoraWeights,
  scale: number,
): Promise<string> {
  const base = await readAllTensors(await safetensorsIn(dir));
  await cp(dir, out, { recursive: true });
  const tensors: Record<string, TensorToWrite> = {};
  for (const [name, t] of Object.entries(base)) {
    if (t.dtype !== 'float32') throw new Error(`writeMergedCopy: ${name} is ${t.dtype}, expected float32`);
    tensors[name] = f32([...t.shape], t.data as Float32Array);
  }
  for (const [module, { a, b, aShape }] of Object.entries(lora)) {
    const w = base[`${module}.weight`];
    const rows = w.shape[0];
    const cols = w.data.length / rows;
    const rank = aShape[0];
    const merged = Float64Array.from(w.data as Float32Array);
    for (let o = 0; o < rows; o++) {
      for (let c = 0; c < cols; c++) {
        let sum = 0;
        for (let k = 0; k < rank; k++) sum += b[o * rank + k] * a[k * cols + c];
        merged[o * cols + c] += scale * sum;
      }
    }
    tensors[`${module}.weight`] = f32([...w.shape], Float32Array.from(merged));
  }
  await writeSafetensors(await safetensorsIn(out), tensors);
  return out;
}

/**
 * Inputs for the golden tiny FLUX transformer: the golden call's ids (a 4×6 packed grid, 7 text
 * tokens) and fresh values for the rest, drawn from `random`.
 */
export async function tinyFluxInputs(random: () => number): Promise<Record<string, HostTensor>> {
  const golden = await readAllTensors(
    fileURLToPath(new URL('../golden/models/flux_transformer_tiny/inputs.safetensors', import.meta.url)),
  );
  return {
    hidden_states: randomTensor([1, 24, 16], random),
    encoder_hidden_states: randomTensor([1, 7, 24], random),
    pooled_projections: randomTensor([1, 20], random),
    timestep: hostTensor('float32', [1], Float32Array.of(random())),
    guidance: hostTensor('float32', [1], Float32Array.of(3.5)),
    img_ids: golden.img_ids,
    txt_ids: golden.txt_ids,
  };
}
