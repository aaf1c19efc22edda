/**
 * LinFusion's distillation step (../shared/methods/clear_linfusion.md §2.3–2.4) for a PixArt teacher.
 * The student is the teacher with every self-attention (`transformer_blocks.i.attn1`) replaced by a
 * LinFusion module — generalized normalized linear attention with input MLPs for queries and keys
 * (attention/linfusion.ts) — and trains those modules only; everything else is the teacher's, frozen.
 * The loss is the authors' distill.py:
 *
 *   L = L_simple + 0.5·L_kd + 0.5·L_feat
 *   L_simple = mean((ε̂_student − target)²)     target ε, or v for a v-prediction teacher
 *   L_kd     = mean((ε̂_student − ε̂_teacher)²)
 *   L_feat   = mean over every self-attention of mean((A_student − A_teacher)²)
 *
 * with A a self-attention module's output (after to_out), on real images (their VAE latents), t
 * uniform. Module i is stored as the authors' file has it, `{i}.to_q.weight`, …, listed in the
 * config's `modules_list`; in the step its parameters are `student.linfusion.{i}.…`.
 *
 * Initialisation is the authors' original code (b3ec058, §2.3): the teacher's projections, the input
 * MLPs' last Linear zero so that at step 0 the module sees x itself, the first Linear at PyTorch's
 * default init, the LayerNorm at 1 and 0. PixArt's projections have biases, LinFusion's to_q/k/v none;
 * so that the initial module still projects exactly as the teacher, the q and k biases go into the
 * MLPs' last bias (W·c = b, solved), and v's bias into to_out.0's (W_o·b_v added: LinFusion's
 * attention weights of a query sum to 1 up to its 1e-4·N term, so a constant value passes through).
 */
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';

import { OptionError } from '../../errors.js';
import { writeFileAtomic } from '../../io/atomic.js';
import { writeSafetensors } from '../../io/safetensors.js';
import type { Tensor } from '../../graph/graph.js';
import { Graph } from '../../graph/graph.js';
import { add, mul, slice } from '../../graph/ops/index.js';
import { linfusionAttention } from '../../attention/linfusion.js';
import type { PixArtTransformerConfig } from '../../models/pixart-transformer.js';
import { Params } from '../../nn/params.js';
import type { ParameterInputs } from '../../nn/weights.js';
import type { TorchGenerator } from '../../random/torch-generator.js';
import { discoverParameterShapes } from '../parameters.js';
import type { StudentDType } from './student-file.js';
import { studentTensor } from './student-file.js';
import type { TrainStepSpec } from '../train-step.js';
import { STUDENT, TEACHER, declareInputs, distillForward, meanSquare } from './clear.js';

/** The loss weights of LinFusion's distill.py: simple 1, knowledge distillation 0.5, features 0.5. */
export const LINFUSION_LOSS_WEIGHTS = { simple: 1, kd: 0.5, feat: 0.5 } as const;

export type LinFusionLossWeights = { readonly [K in keyof typeof LINFUSION_LOSS_WEIGHTS]: number };

/** Where module i's parameters live in the step: `student.linfusion.{i}.…`. */
export const LINFUSION_PREFIX = `${STUDENT}.linfusion`;

export interface LinFusionDistillOptions {
  transformer: PixArtTransformerConfig;
  /** Side of the square latents. */
  latentSize: number;
  /** Caption tokens of the cached text encoder output. */
  textLength: number;
  /** Hidden width m of the input MLPs (`projection_mid_dim`). */
  midDim: number;
  weights?: LinFusionLossWeights;
}

/** One entry of the config's `modules_list`, as the released folders write it. */
export interface LinFusionModuleEntry {
  module_name: string;
  dim_n: number;
  heads: number;
  projection_mid_dim: number;
}

/** The `modules_list` of a PixArt student: one module per block's attn1. */
export function linfusionModulesList(t: PixArtTransformerConfig, midDim: number): LinFusionModuleEntry[] {
  return Array.from({ length: t.numLayers }, (_, i) => ({
    module_name: `transformer_blocks.${i}.attn1`,
    dim_n: t.innerDim,
    heads: t.numAttentionHeads,
    projection_mid_dim: midDim,
  }));
}

/**
 * The MLP width for a model of `dim` channels with LinFusion-XL's `--mid_dim_scale` (m = C/scale,
 * at least 1); scale 1 is LinFusion-1-5's m = C.
 */
export function linfusionMidDim(dim: number, scale: number): number {
  if (!Number.isInteger(scale) || scale < 1)
    throw new OptionError(
      `distill linfusion: midDimScale must be an integer ≥ 1, got ${scale}`,
      'DISTILL_OPTION',
    );
  return Math.max(1, Math.floor(dim / scale));
}

function check(o: LinFusionDistillOptions): void {
  const { innerDim, numAttentionHeads } = o.transformer;
  if (!Number.isInteger(o.midDim) || o.midDim < 1) {
    throw new OptionError(
      `distill linfusion: the MLP width must be an integer ≥ 1, got ${o.midDim}`,
      'DISTILL_OPTION',
    );
  }
  if (innerDim % numAttentionHeads !== 0) {
    throw new OptionError(
      `distill linfusion: ${numAttentionHeads} heads do not divide the width ${innerDim}`,
      'DISTILL_OPTION',
    );
  }
}

/**
 * The distillation step: batch inputs `hidden_states` (x_t) and `target` [B, C, h, w], `timestep` [B],
 * `encoder_hidden_states` [B, L, caption_channels] and `encoder_attention_mask` [B, L]. Parameters: the
 * teacher's under `teacher.`, the LinFusion modules under `student.linfusion.{i}.`; metrics: each
 * term of the loss.
 */
export function linfusionDistillStepSpec(o: LinFusionDistillOptions): TrainStepSpec & {
  shapes: Map<string, number[]>;
} {
  check(o);
  const weights = o.weights ?? LINFUSION_LOSS_WEIGHTS;
  const t = o.transformer;
  const shape = { dim: t.innerDim, heads: t.numAttentionHeads, midDim: o.midDim };
  const studentForward = (g: Graph, params: ParameterInputs | Parameters<typeof Params.of>[1]) => {
    const inputs = declareInputs(g, o);
    const modules = Params.of(g, params, { prefix: LINFUSION_PREFIX });
    return {
      inputs,
      run: () =>
        distillForward(g, params, TEACHER, o, inputs, { kind: 'full' }, (block, layer) =>
          linfusionAttention(modules.child(block), layer.x, shape),
        ),
    };
  };
  const shapes = discoverParameterShapes((source) => {
    const g = new Graph('linfusion-distill-shapes');
    const student = studentForward(g, source);
    distillForward(g, source, TEACHER, o, student.inputs, { kind: 'full' });
    student.run();
  });
  const channels = t.inChannels;
  const layers = Array.from({ length: t.numLayers }, (_, i) => i);
  return {
    shapes,
    trainable: [...shapes.keys()].filter((name) => name.startsWith(`${LINFUSION_PREFIX}.`)),
    build(g: Graph, params: ParameterInputs) {
      const student = studentForward(g, params);
      const target = g.input('target', 'float32', ['B', channels, o.latentSize, o.latentSize]);
      const teacher = distillForward(g, params, TEACHER, o, student.inputs, { kind: 'full' });
      const s = student.run();
      const prediction = (p: Tensor): Tensor =>
        t.outChannels === channels ? p : slice(p, { axis: 1, end: channels });
      const simple = meanSquare(prediction(s.prediction), target);
      const kd = meanSquare(prediction(s.prediction), prediction(teacher.prediction));
      let feat: Tensor | undefined;
      for (const i of layers) {
        const term = meanSquare(s.features.get(i) as Tensor, teacher.features.get(i) as Tensor);
        feat = feat ? add(feat, term) : term;
      }
      const featMean = mul(feat as Tensor, 1 / layers.length);
      const loss = add(add(mul(simple, weights.simple), mul(kd, weights.kd)), mul(featMean, weights.feat));
      return { loss, metrics: { simple, kd, feat: featMean } };
    },
  };
}

/** c with W·c = b for a square W [n, n] (row-major, y = W·x), by Gaussian elimination with partial pivoting; undefined when W is singular. */
export function solveLinear(w: Float32Array | Float64Array, b: ArrayLike<number>): Float64Array | undefined {
  const n = b.length;
  if (w.length !== n * n) throw new OptionError(`solveLinear: W has ${w.length} entries, not ${n}×${n}`);
  const a = Float64Array.from(w);
  const x = Float64Array.from(b);
  let scale = 0;
  for (const v of a) scale = Math.max(scale, Math.abs(v));
  for (let col = 0; col < n; col++) {
    let pivot = col;
    for (let r = col + 1; r < n; r++) if (Math.abs(a[r * n + col]) > Math.abs(a[pivot * n + col])) pivot = r;
    if (Math.abs(a[pivot * n + col]) <= 1e-12 * scale || scale === 0) return undefined;
    if (pivot !== col) {
      for (let k = 0; k < n; k++) [a[col * n + k], a[pivot * n + k]] = [a[pivot * n + k], a[col * n + k]];
      [x[col], x[pivot]] = [x[pivot], x[col]];
    }
    const d = a[col * n + col];
    for (let r = col + 1; r < n; r++) {
      const f = a[r * n + col] / d;
      if (f === 0) continue;
      for (let k = col; k < n; k++) a[r * n + k] -= f * a[col * n + k];
      x[r] -= f * x[col];
    }
  }
  for (let r = n - 1; r >= 0; r--) {
    let sum = x[r];
    for (let k = r + 1; k < n; k++) sum -= a[r * n + k] * x[k];
    x[r] = sum / a[r * n + r];
  }
  return x;
}

/**
 * The student's starting values (see the file comment), keys as the step spec names them; the
 * teacher's tensors by checkpoint name. `unfolded` lists the q/k biases that could not be folded
 * (a singular projection: the bias is dropped there).
 */
export function linfusionStudentInit(
  teacher: ReadonlyMap<string, Float32Array>,
  spec: { shapes: ReadonlyMap<string, readonly number[]> },
  generator: TorchGenerator,
): { values: Map<string, Float32Array>; unfolded: string[] } {
  const values = new Map<string, Float32Array>();
  const unfolded: string[] = [];
  const get = (name: string): Float32Array => {
    const v = teacher.get(name);
    if (!v) throw new OptionError(`distill linfusion: the teacher has no '${name}'`, 'DISTILL_TEACHER');
    return v;
  };
  // Teacher tensors first, then each module's, in the spec's (sorted) order so draws are fixed.
  const names = [...spec.shapes.keys()].sort();
  for (const name of names) {
    if (name.startsWith(`${TEACHER}.`)) values.set(name, get(name.slice(TEACHER.length + 1)));
  }
  const count = (shape: readonly number[]): number => shape.reduce((a, b) => a * b, 1);
  for (const name of names) {
    if (!name.startsWith(`${LINFUSION_PREFIX}.`)) continue;
    const m = /^(\d+)\.(.+)$/.exec(name.slice(LINFUSION_PREFIX.length + 1));
    if (!m) throw new OptionError(`distill linfusion: unexpected student parameter '${name}'`);
    const [, block, local] = m;
    const attn = `transformer_blocks.${block}.attn1`;
    const shape = spec.shapes.get(name) as readonly number[];
    const n = count(shape);
    let value: Float32Array;
    switch (local) {
      case 'to_q.weight':
      case 'to_k.weight':
      case 'to_v.weight':
      case 'to_out.0.weight':
        value = Float32Array.from(get(`${attn}.${local}`));
        break;
      case 'to_out.0.bias': {
        // b_o + W_o·b_v.
        const wo = get(`${attn}.to_out.0.weight`);
        const bo = get(`${attn}.to_out.0.bias`);
        const bv = teacher.get(`${attn}.to_v.bias`);
        value = Float32Array.from(bo);
        if (bv) {
          const c = bv.length;
          for (let r = 0; r < bo.length; r++) {
            let sum = bo[r];
            for (let k = 0; k < c; k++) sum += wo[r * c + k] * bv[k];
            value[r] = sum;
          }
        }
        break;
      }
      case 'to_q_.1.weight':
      case 'to_k_.1.weight':
        value = new Float32Array(n).fill(1);
        break;
      case 'to_q_.1.bias':
      case 'to_k_.1.bias':
      case 'to_q_.3.weight':
      case 'to_k_.3.weight':
        value = new Float32Array(n);
        break;
      case 'to_q_.3.bias':
      case 'to_k_.3.bias': {
        const proj = local.startsWith('to_q') ? 'to_q' : 'to_k';
        const bias = teacher.get(`${attn}.${proj}.bias`);
        value = new Float32Array(n);
        if (bias) {
          const c = solveLinear(get(`${attn}.${proj}.weight`), bias);
          if (c) value = Float32Array.from(c);
          else unfolded.push(`${attn}.${proj}.bias`);
        }
        break;
      }
      case 'to_q_.0.weight':
      case 'to_k_.0.weight':
      case 'to_q_.0.bias':
      case 'to_k_.0.bias': {
        // PyTorch's Linear default: U(−1/√fan_in, 1/√fan_in) for weight and bias.
        const fanIn = spec.shapes.get(name.replace(/bias$/, 'weight'))?.[1] as number;
        const bound = 1 / Math.sqrt(fanIn);
        value = Float32Array.from(generator.rand([n]), (u) => (2 * u - 1) * bound);
        break;
      }
      default:
        throw new OptionError(`distill linfusion: no initialisation for '${name}'`);
    }
    if (value.length !== n) {
      throw new OptionError(
        `distill linfusion: '${name}' has ${n} values in the step but ${value.length} from the teacher`,
        'DISTILL_TEACHER',
      );
    }
    values.set(name, value);
  }
  return { values, unfolded };
}

/**
 * Writes a student as the authors' released folders are laid out: `config.json` (`_class_name:
 * "LinFusion"`, `modules_list`) and `diffusion_pytorch_model.safetensors` with module i's tensors under
 * `{i}.`, from the step's `student.linfusion.{i}.…` values.
 */
export async function writeLinFusionFolder(
  dir: string,
  values: ReadonlyMap<string, Float32Array>,
  shapes: ReadonlyMap<string, readonly number[]>,
  modules: readonly LinFusionModuleEntry[],
  dtype: StudentDType = 'F16',
): Promise<void> {
  await mkdir(dir, { recursive: true });
  const tensors: Parameters<typeof writeSafetensors>[1] = {};
  for (const [name, data] of values) {
    if (!name.startsWith(`${LINFUSION_PREFIX}.`)) continue;
    const shape = shapes.get(name);
    if (!shape) throw new OptionError(`distill linfusion: no shape for '${name}'`);
    tensors[name.slice(LINFUSION_PREFIX.length + 1)] = studentTensor(data, shape, dtype);
  }
  await writeSafetensors(join(dir, 'diffusion_pytorch_model.safetensors'), tensors);
  await writeFileAtomic(
    join(dir, 'config.json'),
    `${JSON.stringify({ _class_name: 'LinFusion', modules_list: modules }, null, 2)}\n`,
  );
}
