/**
 * CLEAR's distillation step (../shared/methods/clear_linfusion.md §1.8) for a PixArt teacher. The
 * student is the teacher with CLEAR attention in every self-attention; it trains what CLEAR trains —
 * each self-attention's `to_q`, `to_k`, `to_v`, `to_out.0` (weights and biases) and, with pooled
 * keys/values, the pooling weights `processor.spatial_weight` — and every other parameter is the
 * teacher's, frozen. The loss is CLEAR's, with all weights as the authors' script sets them:
 *
 *   L = L_denoise + 0.5·L_distill + 0.5·L_attention
 *   L_denoise   = mean((ε_student − ε)²)             the denoising loss against the noise drawn
 *                                                    (against v for a v-prediction teacher)
 *   L_distill   = mean((ε_student − ε_teacher)²)     the prediction loss against the teacher
 *   L_attention = mean over the feature layers of mean((A_student − A_teacher)²)
 *
 * PixArt predicts ε where FLUX predicts the flow velocity; the terms are the same with its target.
 * A is a self-attention module's output as the module returns it (after `to_out`; FLUX's single
 * blocks have no `to_out`, so the authors' A is also the module's output). The feature layers are the
 * blocks whose index is ≡ 0 mod 4, as the authors take FLUX's single blocks by global processor index
 * ≡ 0 mod 4. The teacher runs in the same graph without gradient work: no trained parameter feeds it.
 */
import { OptionError } from '../../errors.js';
import type { Tensor } from '../../graph/graph.js';
import { Graph } from '../../graph/graph.js';
import { add, mean, mul, slice, sub } from '../../graph/ops/index.js';
import { clearWindowProblem } from '../../attention/clear.js';
import type { PixArtExtras, PixArtTransformerConfig } from '../../models/pixart-transformer.js';
import type { AttentionChoice } from '../../attention/types.js';
import { pixArtPositionEmbedding, pixArtTransformer } from '../../models/pixart-transformer.js';
import type { LoraProvider } from '../../nn/params.js';
import { Params } from '../../nn/params.js';
import type { ParameterInputs, TensorSource } from '../../nn/weights.js';
import { discoverParameterShapes } from '../parameters.js';
import type { TrainStepSpec } from '../train-step.js';
import type { TorchGenerator } from '../../random/torch-generator.js';
import type { HostTensor } from '../../runtime/host-tensor.js';
import { hostTensor } from '../../runtime/host-tensor.js';
import { noisedLatents, uniformTimesteps, velocity } from '../noising.js';
import type { TeacherSamples } from './teacher-samples.js';

/** What the teacher predicts (its scheduler's `prediction_type`): the denoising term's target. */
export type DistillPredictionType = 'epsilon' | 'v_prediction';

/** The teacher's prediction type from its scheduler config; one distillation cannot learn from another. */
export function distillPredictionType(schedulerConfig: Record<string, unknown>): DistillPredictionType {
  const type = schedulerConfig.prediction_type ?? 'epsilon';
  if (type === 'epsilon' || type === 'v_prediction') return type;
  throw new OptionError(
    `distillation: the teacher's scheduler predicts "${String(type)}"; velodiff distils epsilon and v_prediction teachers`,
    'DISTILL_TEACHER',
  );
}

/** The frozen teacher's parameters are graph inputs under this prefix, the student's trained ones under STUDENT. */
export const TEACHER = 'teacher';
export const STUDENT = 'student';

/** The loss weights of CLEAR's distill.py: denoising 1, prediction 0.5, attention output 0.5. */
export const CLEAR_LOSS_WEIGHTS = { denoise: 1, distill: 0.5, attention: 0.5 } as const;

export type ClearLossWeights = { readonly [K in keyof typeof CLEAR_LOSS_WEIGHTS]: number };

/** What CLEAR trains, by the checkpoint name of a PixArt parameter: self-attention projections and pooling weights. */
export function isClearTrained(name: string): boolean {
  return /^transformer_blocks\.\d+\.attn1\.(?:(?:to_q|to_k|to_v|to_out\.0)\.(?:weight|bias)|processor\.spatial_weight)$/.test(
    name,
  );
}

/** The blocks whose self-attention output L_attention matches: index ≡ 0 mod 4. */
export function clearFeatureLayers(numLayers: number): number[] {
  return Array.from({ length: numLayers }, (_, i) => i).filter((i) => i % 4 === 0);
}

export interface ClearDistillOptions {
  transformer: PixArtTransformerConfig;
  /** Window radius in latent tokens. */
  radius: number;
  /** Side of the pooling cells of the down-sampled keys/values; 1 (default): none. */
  downFactor?: number;
  /** Side of the square latents. */
  latentSize: number;
  /** Caption tokens of the cached text encoder output. */
  textLength: number;
  /** Blocks whose self-attention outputs are matched; default clearFeatureLayers. */
  featureLayers?: readonly number[];
  weights?: ClearLossWeights;
}

/** The shape of a self-attention's pooling weights, as CLEAR stores `processor.spatial_weight`. */
export function spatialWeightShape(downFactor: number): number[] {
  return [1, 1, 1, downFactor, 1, downFactor, 1];
}

/**
 * A TensorSource that serves the student: its trained parameters under STUDENT, every other one the
 * teacher's (the same graph input), so the frozen part is fed once.
 */
function studentSource(params: TensorSource): TensorSource {
  const alias = (name: string): string => {
    const local = name.slice(STUDENT.length + 1);
    return isClearTrained(local) ? name : `${TEACHER}.${local}`;
  };
  return {
    has: (name) => params.has(alias(name)),
    info: (name, expectedShape) => params.info(alias(name), expectedShape),
    ...(params.tensor
      ? { tensor: (graph, name, dtype, shape) => params.tensor?.(graph, alias(name), dtype, shape) as Tensor }
      : {}),
  };
}

export interface DistillInputs {
  hiddenStates: Tensor;
  timestep: Tensor;
  encoderHiddenStates: Tensor;
  encoderAttentionMask: Tensor;
  /** PixArt's pos_embed for the latent grid, one constant shared by the teacher and the student. */
  posEmbed: Tensor;
}

export function declareInputs(
  g: Graph,
  o: Pick<ClearDistillOptions, 'transformer' | 'latentSize' | 'textLength'>,
): DistillInputs {
  const { transformer: t, latentSize: side, textLength } = o;
  const grid = side / t.patchSize;
  const pos = pixArtPositionEmbedding(t, grid, grid);
  return {
    posEmbed: g.constant(pos.data as Float32Array, 'float32', pos.shape),
    hiddenStates: g.input('hidden_states', 'float32', ['B', t.inChannels, side, side]),
    timestep: g.input('timestep', 'float32', ['B']),
    encoderHiddenStates: g.input('encoder_hidden_states', 'float32', ['B', textLength, t.captionChannels]),
    encoderAttentionMask: g.input('encoder_attention_mask', 'float32', ['B', textLength]),
  };
}

/**
 * One PixArt forward in `g` from `source` under `prefix`, with its self-attention outputs collected:
 * with `attention` as every self-attention's kernel, or `selfAttentionOverride` building them.
 */
export function distillForward(
  g: Graph,
  source: TensorSource,
  prefix: string,
  o: Pick<ClearDistillOptions, 'transformer' | 'latentSize'>,
  inputs: DistillInputs,
  attention: AttentionChoice,
  selfAttentionOverride?: PixArtExtras['selfAttentionOverride'],
  lora?: LoraProvider,
): { prediction: Tensor; features: Map<number, Tensor> } {
  const features = new Map<number, Tensor>();
  const prediction = pixArtTransformer(
    Params.of(g, source, { prefix, ...(lora ? { lora } : {}) }),
    o.transformer,
    inputs,
    { height: o.latentSize, width: o.latentSize, attention },
    {
      onAttention: (block, role, output) => {
        if (role === 'attn1') features.set(block, output);
      },
      ...(selfAttentionOverride ? { selfAttentionOverride } : {}),
    },
  );
  return { prediction, features };
}

function forward(
  g: Graph,
  source: TensorSource,
  prefix: string,
  o: ClearDistillOptions,
  inputs: DistillInputs,
  student: boolean,
): { prediction: Tensor; features: Map<number, Tensor> } {
  return distillForward(
    g,
    source,
    prefix,
    o,
    inputs,
    student
      ? { kind: 'clear', radius: o.radius, ...(o.downFactor ? { downFactor: o.downFactor } : {}) }
      : { kind: 'full' },
  );
}

/** The mean of (a − b)² over every element. */
export function meanSquare(a: Tensor, b: Tensor): Tensor {
  const d = sub(a, b);
  return mean(
    mul(d, d),
    a.shape.map((_, i) => i),
  );
}

function checkOptions(o: ClearDistillOptions): { downFactor: number; layers: number[] } {
  const problem = clearWindowProblem({ radius: o.radius, downFactor: o.downFactor });
  if (problem) throw new OptionError(`distill clear: ${problem}`, 'DISTILL_OPTION');
  const downFactor = o.downFactor ?? 1;
  const grid = o.latentSize / o.transformer.patchSize;
  if (!Number.isInteger(grid)) {
    throw new OptionError(
      `distill clear: patch_size ${o.transformer.patchSize} does not divide the ${o.latentSize}×${o.latentSize} latents`,
      'DISTILL_OPTION',
    );
  }
  if (grid % downFactor !== 0) {
    throw new OptionError(
      `distill clear: the down factor ${downFactor} does not divide the ${grid}×${grid} token grid`,
      'DISTILL_OPTION',
    );
  }
  const n = o.transformer.numLayers;
  const layers = [...(o.featureLayers ?? clearFeatureLayers(n))];
  const bad = layers.filter((i) => !Number.isInteger(i) || i < 0 || i >= n);
  if (bad.length > 0) {
    throw new OptionError(
      `distill clear: feature layers ${bad.join(', ')} are not blocks of this ${n}-block transformer (0–${n - 1})`,
      'DISTILL_OPTION',
    );
  }
  return { downFactor, layers };
}

/**
 * The distillation step: batch inputs `hidden_states` (x_t) and `target` (ε) [B, C, h, w], `timestep`
 * [B], `encoder_hidden_states` [B, L, caption_channels] and `encoder_attention_mask` [B, L] (the
 * frozen text encoder's output, computed once per caption). Parameters: the teacher's under
 * `teacher.`, the trained ones under `student.` (see isClearTrained); metrics: each term of the loss.
 */
export function clearDistillStepSpec(o: ClearDistillOptions): TrainStepSpec & {
  shapes: Map<string, number[]>;
} {
  const { downFactor, layers } = checkOptions(o);
  const weights = o.weights ?? CLEAR_LOSS_WEIGHTS;
  const teacherShapes = discoverParameterShapes((source) => {
    const g = new Graph('clear-distill-shapes');
    forward(g, source, TEACHER, o, declareInputs(g, o), false);
  });
  const shapes = new Map(teacherShapes);
  for (const [name, shape] of teacherShapes) {
    const local = name.slice(TEACHER.length + 1);
    if (isClearTrained(local)) shapes.set(`${STUDENT}.${local}`, shape);
  }
  if (downFactor > 1) {
    for (let i = 0; i < o.transformer.numLayers; i++)
      shapes.set(
        `${STUDENT}.transformer_blocks.${i}.attn1.processor.spatial_weight`,
        spatialWeightShape(downFactor),
      );
  }
  const channels = o.transformer.inChannels;
  return {
    shapes,
    trainable: [...shapes.keys()].filter((name) => name.startsWith(`${STUDENT}.`)),
    build(g: Graph, params: ParameterInputs) {
      const inputs = declareInputs(g, o);
      const target = g.input('target', 'float32', ['B', channels, o.latentSize, o.latentSize]);
      const teacher = forward(g, params, TEACHER, o, inputs, false);
      const student = forward(g, studentSource(params), STUDENT, o, inputs, true);
      // ε is the first in_channels of the output (the rest, with learned σ, is the variance).
      const epsilon = (prediction: Tensor): Tensor =>
        o.transformer.outChannels === channels ? prediction : slice(prediction, { axis: 1, end: channels });
      const denoise = meanSquare(epsilon(student.prediction), target);
      const distill = meanSquare(epsilon(student.prediction), epsilon(teacher.prediction));
      let attention: Tensor | undefined;
      for (const i of layers) {
        const term = meanSquare(student.features.get(i) as Tensor, teacher.features.get(i) as Tensor);
        attention = attention ? add(attention, term) : term;
      }
      const attentionMean = mul(attention as Tensor, 1 / layers.length);
      const loss = add(
        add(mul(denoise, weights.denoise), mul(distill, weights.distill)),
        mul(attentionMean, weights.attention),
      );
      return { loss, metrics: { denoise, distill, attention: attentionMean } };
    },
  };
}

/**
 * The student's starting values: the teacher's self-attention projections (CLEAR starts from the
 * base model) and, with pooled keys/values, pooling weights of 1/df² (average pooling, the
 * authors' initialisation); keys as the step spec names them.
 */
export function clearStudentInit(
  teacher: ReadonlyMap<string, Float32Array>,
  spec: { shapes: ReadonlyMap<string, readonly number[]> },
): Map<string, Float32Array> {
  const out = new Map<string, Float32Array>();
  for (const [name, shape] of spec.shapes) {
    if (name.startsWith(`${TEACHER}.`)) {
      const local = name.slice(TEACHER.length + 1);
      const value = teacher.get(local);
      if (!value) throw new OptionError(`distill clear: the teacher has no '${local}'`, 'DISTILL_TEACHER');
      out.set(name, value);
    } else {
      const local = name.slice(STUDENT.length + 1);
      const value = teacher.get(local);
      if (value) out.set(name, Float32Array.from(value));
      else {
        const df = shape[3];
        out.set(name, new Float32Array(shape.reduce((a, b) => a * b, 1)).fill(1 / (df * df)));
      }
    }
  }
  return out;
}

/**
 * The step's batch inputs for samples `indices` of the teacher's samples: x_t = √ᾱ_t·x₀ + √(1 − ᾱ_t)·ε
 * with x₀ the teacher's latent, ε ~ N(0, I) and t uniform over the training timesteps (CLEAR draws
 * t uniformly, weighting scheme "none"), target ε (or v = √ᾱ_t·ε − √(1 − ᾱ_t)·x₀ for a v-prediction
 * teacher), and the samples' caption encodings. Draw order
 * fixed (noise, then timesteps), so a restored generator repeats a run.
 *
 * `dropped` (the loader's captionDropout draws) gives rows whose caption encoding is replaced by
 * `unconditional`, the teacher's encoding of "": those rows train the prediction that classifier-free
 * guidance's unconditional branch makes. The authors' scripts drop no caption (CLEAR's FLUX-dev runs
 * without CFG); a student of a CFG teacher that is sampled with CFG needs both branches trained.
 */
export function clearDistillBatch(
  samples: Pick<TeacherSamples, 'latents' | 'promptEmbeds' | 'promptAttentionMask'>,
  indices: readonly number[],
  generator: TorchGenerator,
  alphasCumprod: Float32Array,
  predictionType: DistillPredictionType = 'epsilon',
  drop?: { readonly dropped: readonly boolean[]; readonly unconditional: UnconditionalPrompt },
): Record<string, HostTensor> {
  const [count, channels, h, w] = samples.latents.shape as number[];
  const [, length, width] = samples.promptEmbeds.shape as number[];
  const bad = indices.filter((i) => !Number.isInteger(i) || i < 0 || i >= count);
  if (bad.length > 0) {
    throw new OptionError(
      `distill clear: sample indices ${bad.join(', ')} are outside the ${count} teacher samples`,
      'DISTILL_OPTION',
    );
  }
  const n = indices.length;
  if (drop !== undefined) checkDrop(drop, n, length, width);
  const shape = [n, channels, h, w];
  const per = channels * h * w;
  const noise = generator.randn(shape);
  const uniform = generator.rand([n]);
  const timesteps = uniformTimesteps(uniform, alphasCumprod);
  const gather = (source: HostTensor, size: number): Float32Array => {
    const data = source.data as Float32Array;
    const out = new Float32Array(n * size);
    indices.forEach((index, b) => out.set(data.subarray(index * size, (index + 1) * size), b * size));
    return out;
  };
  const x0 = gather(samples.latents, per);
  const noisy = noisedLatents(x0, noise, shape, timesteps, alphasCumprod);
  const target =
    predictionType === 'v_prediction' ? velocity(x0, noise, shape, timesteps, alphasCumprod) : noise;
  const embeds = gather(samples.promptEmbeds, length * width);
  const mask = gather(samples.promptAttentionMask, length);
  drop?.dropped.forEach((dropped, b) => {
    if (!dropped) return;
    embeds.set(drop.unconditional.embeds, b * length * width);
    mask.set(drop.unconditional.mask, b * length);
  });
  return {
    hidden_states: hostTensor('float32', shape, noisy),
    target: hostTensor('float32', shape, target),
    timestep: hostTensor('float32', [n], Float32Array.from(timesteps)),
    encoder_hidden_states: hostTensor('float32', [n, length, width], embeds),
    encoder_attention_mask: hostTensor('float32', [n, length], mask),
  };
}

/** The teacher's encoding of "": CFG's unconditional prompt, and a dropped caption's. [length, width] and [length]. */
export interface UnconditionalPrompt {
  readonly embeds: Float32Array;
  readonly mask: Float32Array;
}

function checkDrop(
  drop: { readonly dropped: readonly boolean[]; readonly unconditional: UnconditionalPrompt },
  n: number,
  length: number,
  width: number,
): void {
  const problems: string[] = [];
  if (drop.dropped.length !== n)
    problems.push(`${drop.dropped.length} dropped-caption flags for a batch of ${n}`);
  if (drop.unconditional.embeds.length !== length * width)
    problems.push(
      `an unconditional encoding of ${drop.unconditional.embeds.length} values, expected ${length}×${width}`,
    );
  if (drop.unconditional.mask.length !== length)
    problems.push(`an unconditional mask of ${drop.unconditional.mask.length} values, expected ${length}`);
  if (problems.length > 0)
    throw new OptionError(`distill: caption dropout got ${problems.join('; ')}`, 'DISTILL_OPTION');
}
