/**
 * Flash Diffusion's distillation step (../shared/methods/tgate_flash.md §2.2–2.3) for a PixArt teacher:
 * a LoRA student that learns to jump, in one evaluation, from a noised latent to where the teacher
 * lands after all the remaining steps of a 16-step DPM-Solver++ run with classifier-free guidance.
 *
 * Per batch (the teacher's rollout, x̃₀, is computed before the step: flash-trainer.ts):
 *
 *   x̂₀ = c_skip·x_t + c_out·x₀(student(x_t, t, cond))          LCM's boundary condition
 *   L = λ_distill·d(D(x̂₀), D(x̃₀)) + λ_DMD·L_DMD(x̂₀) + λ_adv·L_G(x̂₀) + L_D
 *
 * - d is LPIPS's form — every stage's activations unit-normalised over channels, squared
 *   differences summed over channels, averaged over positions, summed over stages — on velodiff's
 *   own emoji classifier (LPIPS' VGG weights cannot be had offline; the per-channel weights of
 *   LPIPS are 1 here). D is the teacher's VAE decoder, images clamped to [−1, 1]; gradients flow
 *   through both to the student.
 * - L_DMD, the distribution-matching term: x_τ = x̂₀ (detached) noised to a uniform τ; the real
 *   score is the teacher with guidance w′, the fake score the student itself;
 *   L_DMD = mean((x̂₀ − sg(x̂₀ − weight·(x₀_fake − x₀_real)))²), weight = 1/(mean|x̂₀ − x₀_real| + 1e-5).
 * - L_G, L_D: LSGAN on the frozen teacher's output at τ_g ∈ {10, 250, 500, 750}, fake x̂₀ and real
 *   data latents noised with the same noise, through a small convolutional discriminator.
 *   L_G = mean((σ(D(f_fake)) − 1)²) reaches the student only (the discriminator's weights are
 *   detached there); L_D = ½[mean((σ(D(f_real)) − 1)²) + mean(σ(D(sg f_fake))²)] reaches the
 *   discriminator only. One AdamW over both, at the authors' equal learning rates, is the authors'
 *   two optimisers (AdamW is elementwise).
 *
 * Deviations from the released code, each on purpose: the DMD and GAN noising uses τ as drawn (the
 * released code's scheduler falls back to an almost clean timestep, §2.6-a); one forward per batch
 * serves both the student and the discriminator (the authors run the batch twice, so their phase
 * counter counts two per batch); the distance is on the emoji classifier, not VGG; the
 * discriminator has as many stride-2 stages as halve the latent grid to 4×4 (the authors' five
 * stages take PixArt's 128×128 latents to 4×4).
 */
import { OptionError } from '../../errors.js';
import type { Tensor } from '../../graph/graph.js';
import { Graph } from '../../graph/graph.js';
import {
  abs,
  add,
  div,
  maximum,
  mean,
  minimum,
  mul,
  reshape,
  sigmoid,
  silu,
  slice,
  split,
  sqrt,
  stopGradient,
  sub,
  sum,
} from '../../graph/ops/index.js';
import type { AutoencoderKLConfig } from '../../models/autoencoder-kl.js';
import { decodeLatents } from '../../models/autoencoder-kl.js';
import type { EmojiClassifierConfig } from '../../models/emoji-classifier.js';
import { emojiClassifierForward } from '../../models/emoji-classifier.js';
import type { PixArtTransformerConfig } from '../../models/pixart-transformer.js';
import { Conv2d, GroupNorm } from '../../nn/layers.js';
import type { LoraProvider } from '../../nn/params.js';
import { Params } from '../../nn/params.js';
import type { ParameterInputs, TensorSource } from '../../nn/weights.js';
import { discoverParameterShapes } from '../parameters.js';
import type { TrainStepSpec } from '../train-step.js';
import type { DistillInputs } from './clear.js';
import { STUDENT, TEACHER, declareInputs, distillForward } from './clear.js';

/** One phase of the training schedule: the mode weights of the start timestep and the loss weights. */
export interface FlashPhase {
  /** Weights of the modes at schedule indices 0, K/4, K/2, 3K/4 (t ≈ 999, 749, 499, 249). */
  readonly modeProbs: readonly [number, number, number, number];
  readonly distill: number;
  readonly dmd: number;
  readonly adv: number;
}

/** The authors' PixArt recipe (examples/configs, §2.3). */
export const FLASH_PIXART = {
  /** Steps of the teacher's DPM-Solver++ schedule (trailing). */
  teacherSteps: 16,
  /** The teacher's guidance w ~ U[min, max], one per batch. */
  guidance: [2, 9] as const,
  modeVariance: 0.5,
  phases: [
    { modeProbs: [0, 0, 0.5, 0.5], distill: 1, dmd: 0, adv: 0 },
    { modeProbs: [0.1, 0.3, 0.3, 0.3], distill: 1, dmd: 0.3, adv: 0.05 },
    { modeProbs: [0.25, 0.25, 0.25, 0.25], distill: 1, dmd: 0.5, adv: 0.1 },
    { modeProbs: [0.4, 0.2, 0.2, 0.2], distill: 1, dmd: 0.7, adv: 0.2 },
  ] as const satisfies readonly FlashPhase[],
  ganTimesteps: [10, 250, 500, 750] as const,
  /** PEFT target modules of flash-pixart: attention, FFN, patch embedding, caption projection, adaLN, embedders, final projection. */
  targetModules: [
    'to_q',
    'to_k',
    'to_v',
    'to_out.0',
    'proj_in',
    'proj_out',
    'ff.net.0.proj',
    'ff.net.2',
    'proj',
    'linear',
    'linear_1',
    'linear_2',
  ] as const,
  /** flash-pixart's LoRA: r = 64 at PEFT's default alpha 8 (scale 0.125). */
  loraRank: 64,
  loraAlpha: 8,
} as const;

/** The phase of update `step` (0-based) when each phase lasts `phaseSteps` updates; the last one continues. */
export function flashPhase(step: number, phaseSteps: number, phases = FLASH_PIXART.phases.length): number {
  return Math.min(phases - 1, Math.floor(step / phaseSteps));
}

/**
 * The start-index distribution over a K-step schedule: p(j) ∝ Σ_m π_m·exp(−(j − loc_m)²/var) with
 * loc_m = m·⌊K/4⌋ (the authors' `_get_timesteps`).
 */
export function flashIndexProbabilities(
  K: number,
  modeProbs: readonly number[],
  variance = FLASH_PIXART.modeVariance,
): Float64Array {
  const step = Math.floor(K / modeProbs.length);
  const p = new Float64Array(K);
  for (let j = 0; j < K; j++) {
    let s = 0;
    modeProbs.forEach((pi, m) => (s += pi * Math.exp(-((j - m * step) ** 2) / variance)));
    p[j] = s;
  }
  const total = p.reduce((a, b) => a + b, 0);
  if (!(total > 0))
    throw new OptionError(`flash: mode probabilities ${modeProbs.join(', ')} put no mass anywhere`);
  return p.map((v) => v / total);
}

/** The index a uniform draw u ∈ [0, 1) picks from `probs` (inverse CDF). */
export function pickIndex(probs: ArrayLike<number>, u: number): number {
  let acc = 0;
  for (let j = 0; j < probs.length; j++) {
    acc += probs[j];
    if (u < acc) return j;
  }
  return probs.length - 1;
}

/** Whether PEFT's `target_modules` (names matched at the end of a module path) select `modulePath`. */
export function isFlashTarget(
  modulePath: string,
  targets: readonly string[] = FLASH_PIXART.targetModules,
): boolean {
  return targets.some((t) => modulePath === t || modulePath.endsWith(`.${t}`));
}

/** A module the student's LoRA adapts: its base weight's shape says Linear [out, in] or Conv2d [out, in, kh, kw]. */
export interface FlashLoraModule {
  readonly path: string;
  readonly weightShape: readonly number[];
}

/** The targeted modules of a teacher, from its parameter shapes (checkpoint names). */
export function flashLoraModules(
  shapes: ReadonlyMap<string, readonly number[]>,
  targets: readonly string[] = FLASH_PIXART.targetModules,
): FlashLoraModule[] {
  const modules: FlashLoraModule[] = [];
  for (const [name, shape] of shapes) {
    if (!name.endsWith('.weight')) continue;
    const path = name.slice(0, -'.weight'.length);
    if ((shape.length === 2 || shape.length === 4) && isFlashTarget(path, targets))
      modules.push({ path, weightShape: shape });
  }
  return modules.sort((a, b) => a.path.localeCompare(b.path));
}

/** The step's names of a module's LoRA tensors (A = down, B = up) and their shapes. */
export function loraTensorShapes(m: FlashLoraModule, rank: number): { down: number[]; up: number[] } {
  const [out, inFeatures, kh, kw] = m.weightShape;
  return m.weightShape.length === 4
    ? { down: [rank, inFeatures, kh, kw], up: [out, rank, 1, 1] }
    : { down: [rank, inFeatures], up: [out, rank] };
}

export const LORA_PREFIX = `${STUDENT}.lora`;
export const DISCRIMINATOR = 'discriminator';
export const VAE = 'vae';
export const CLASSIFIER = 'classifier';

export function loraNames(path: string): { down: string; up: string } {
  return { down: `${LORA_PREFIX}.${path}.lora_A.weight`, up: `${LORA_PREFIX}.${path}.lora_B.weight` };
}

/** LoRA side branches y += (alpha/r)·B(A(x)) on the targeted modules of the teacher, read from `source`. */
export function trainingLora(
  source: TensorSource,
  modules: readonly FlashLoraModule[],
  rank: number,
  scale: number,
): LoraProvider {
  const byPath = new Map(modules.map((m) => [m.path, m]));
  return {
    termsFor(graph: Graph, modulePath: string) {
      const local = modulePath.startsWith(`${TEACHER}.`) ? modulePath.slice(TEACHER.length + 1) : modulePath;
      const m = byPath.get(local);
      if (!m) return undefined;
      const shapes = loraTensorShapes(m, rank);
      const names = loraNames(local);
      const tensor = (name: string, shape: number[]): Tensor => {
        source.info(name, shape);
        const t = source.tensor?.(graph, name, 'float32', shape);
        if (!t) throw new OptionError(`flash: the parameters give no tensor '${name}'`);
        return t;
      };
      return {
        fused: [],
        switchable: [
          {
            down: tensor(names.down, shapes.down),
            up: tensor(names.up, shapes.up),
            scale: graph.constant(Float32Array.of(scale), 'float32', [1]),
          },
        ],
      };
    },
  };
}

/** A TensorSource whose tensors are detached: the same graph inputs, behind stopGradient. */
function detachedSource(source: TensorSource): TensorSource {
  return {
    has: (name) => source.has(name),
    info: (name, shape) => source.info(name, shape),
    tensor: (graph, name, dtype, shape) => {
      const t = source.tensor?.(graph, name, dtype, shape);
      if (!t) throw new OptionError(`flash: the parameters give no tensor '${name}'`);
      return stopGradient(t);
    },
  };
}

/**
 * The discriminator head on teacher outputs [B, C, s, s]: stride-2 4×4 convolutions (64, 128, …
 * channels, each followed by GroupNorm(4) and SiLU) until the map is 4×4, then a 4×4 convolution to
 * one logit; convolutions without bias, as the authors'. Returns the logits [B, 1].
 */
export function flashDiscriminator(p: Params, x: Tensor, channels: number, side: number): Tensor {
  const stages = discriminatorStages(side);
  let h = x;
  let c = channels;
  for (let i = 0; i < stages; i++) {
    const out = 64 * 2 ** i;
    const s = p.child('blocks').child(i);
    h = Conv2d(s.child('conv'), h, {
      inChannels: c,
      outChannels: out,
      kernel: 4,
      stride: 2,
      padding: 1,
      bias: false,
    });
    h = silu(GroupNorm(s.child('norm'), h, 4, out, 1e-5));
    c = out;
  }
  h = Conv2d(p.child('out'), h, { inChannels: c, outChannels: 1, kernel: 4, bias: false });
  return reshape(h, [x.shape[0], 1]);
}

/** Stride-2 stages that take a side-`side` map to 4×4. */
export function discriminatorStages(side: number): number {
  const stages = Math.log2(side / 4);
  if (!Number.isInteger(stages) || stages < 0) {
    throw new OptionError(
      `flash: the discriminator halves the ${side}×${side} latent grid down to 4×4, which needs a side of 4·2^n`,
      'DISTILL_OPTION',
    );
  }
  return stages;
}

/** LPIPS's distance with unit per-channel weights on the classifier's stage activations: [B]. */
function featureDistance(classifier: Params, config: EmojiClassifierConfig, a: Tensor, b: Tensor): Tensor {
  const stagesOf = (x: Tensor): Tensor[] => {
    const stages: Tensor[] = [];
    emojiClassifierForward(classifier, x, config, (_, h) => stages.push(h));
    return stages;
  };
  const sa = stagesOf(a);
  const sb = stagesOf(b);
  const unit = (h: Tensor): Tensor => div(h, add(sqrt(sum(mul(h, h), 1, true)), 1e-10));
  let total: Tensor | undefined;
  sa.forEach((ha, i) => {
    const d = sub(unit(ha), unit(sb[i]));
    const perSample = mean(sum(mul(d, d), 1), [1, 2]);
    total = total ? add(total, perSample) : perSample;
  });
  return total as Tensor;
}

export interface FlashDistillOptions {
  transformer: PixArtTransformerConfig;
  vae: AutoencoderKLConfig;
  classifier: EmojiClassifierConfig;
  /** Side of the square latents. */
  latentSize: number;
  textLength: number;
  loraRank: number;
  loraAlpha: number;
  /** The teacher's parameter shapes (checkpoint names), for the targeted modules. */
  teacherShapes: ReadonlyMap<string, readonly number[]>;
  targetModules?: readonly string[];
}

/**
 * The step. Batch inputs (B images; [B] vectors are per image):
 * - `hidden_states` x_t, `timestep` t, `encoder_hidden_states`/`encoder_attention_mask` (the
 *   captions), `negative_encoder_hidden_states`/`negative_encoder_attention_mask` (the empty prompt);
 * - `teacher_x0` x̃₀ (the rollout), `real_latents` (the data), all [B, C, h, w];
 * - `c_skip`, `c_out` and `x0_a`, `x0_b` (x₀ = a·x + b·output at t, for ε or v prediction);
 * - DMD: `dmd_timestep`, `dmd_noise`, `dmd_alpha` (√ᾱ_τ), `dmd_sigma` (√(1 − ᾱ_τ)), `dmd_x0_a`,
 *   `dmd_x0_b`, `dmd_guidance`; GAN: `gan_timestep`, `gan_noise`, `gan_alpha`, `gan_sigma`;
 * - `loss_weights` [3]: λ_distill, λ_DMD, λ_adv of the phase.
 * Parameters: the teacher under `teacher.`, its VAE under `vae.`, the classifier under `classifier.`
 * (all frozen), the LoRA under `student.lora.<module>.lora_{A,B}.weight` and the discriminator under
 * `discriminator.` (trained). Metrics: distill, dmd, gan_g, gan_d.
 */
export function flashDistillStepSpec(o: FlashDistillOptions): TrainStepSpec & {
  shapes: Map<string, number[]>;
  loraModules: FlashLoraModule[];
} {
  const t = o.transformer;
  const C = t.inChannels;
  const side = o.latentSize;
  if (!Number.isInteger(o.loraRank) || o.loraRank < 1)
    throw new OptionError(`flash: the LoRA rank must be an integer ≥ 1, got ${o.loraRank}`, 'DISTILL_OPTION');
  if (!(o.loraAlpha > 0))
    throw new OptionError(`flash: the LoRA alpha must be > 0, got ${o.loraAlpha}`, 'DISTILL_OPTION');
  discriminatorStages(side);
  const loraModules = flashLoraModules(o.teacherShapes, o.targetModules);
  if (loraModules.length === 0)
    throw new OptionError(
      'flash: no module of the teacher matches the LoRA target modules',
      'DISTILL_OPTION',
    );
  const scale = o.loraAlpha / o.loraRank;
  const latent = (g: Graph, name: string): Tensor => g.input(name, 'float32', ['B', C, side, side]);
  const vector = (g: Graph, name: string): Tensor => g.input(name, 'float32', ['B']);
  const column = (v: Tensor): Tensor => reshape(v, ['B', 1, 1, 1]);
  const firstChannels = (p: Tensor): Tensor => (t.outChannels === C ? p : slice(p, { axis: 1, end: C }));

  function build(g: Graph, params: TensorSource): { loss: Tensor; metrics: Record<string, Tensor> } {
    const base = declareInputs(g, o);
    const negText = g.input('negative_encoder_hidden_states', 'float32', [
      'B',
      o.textLength,
      t.captionChannels,
    ]);
    const negMask = g.input('negative_encoder_attention_mask', 'float32', ['B', o.textLength]);
    const teacherX0 = latent(g, 'teacher_x0');
    const real = latent(g, 'real_latents');
    const [cSkip, cOut, x0a, x0b] = ['c_skip', 'c_out', 'x0_a', 'x0_b'].map((n) => column(vector(g, n)));
    const dmdT = vector(g, 'dmd_timestep');
    const dmdNoise = latent(g, 'dmd_noise');
    const [dmdAlpha, dmdSigma, dmdA, dmdB, dmdW] = [
      'dmd_alpha',
      'dmd_sigma',
      'dmd_x0_a',
      'dmd_x0_b',
      'dmd_guidance',
    ].map((n) => column(vector(g, n)));
    const ganT = vector(g, 'gan_timestep');
    const ganNoise = latent(g, 'gan_noise');
    const [ganAlpha, ganSigma] = ['gan_alpha', 'gan_sigma'].map((n) => column(vector(g, n)));
    const weights = g.input('loss_weights', 'float32', [3]);
    const [wDistill, wDmd, wAdv] = split(weights, 3, 0);

    const lora = trainingLora(params, loraModules, o.loraRank, scale);
    const at = (
      x: Tensor,
      timestep: Tensor,
      text = base.encoderHiddenStates,
      mask = base.encoderAttentionMask,
    ): DistillInputs => ({
      hiddenStates: x,
      timestep,
      encoderHiddenStates: text,
      encoderAttentionMask: mask,
      posEmbed: base.posEmbed,
    });
    const teacher = (inputs: DistillInputs): Tensor =>
      firstChannels(distillForward(g, params, TEACHER, o, inputs, { kind: 'full' }).prediction);
    const student = (inputs: DistillInputs): Tensor =>
      firstChannels(
        distillForward(g, params, TEACHER, o, inputs, { kind: 'full' }, undefined, lora).prediction,
      );

    // The student's one-step estimate.
    const xt = base.hiddenStates;
    const x0Student = add(mul(x0a, xt), mul(x0b, student(at(xt, base.timestep))));
    const x0Hat = add(mul(cSkip, xt), mul(cOut, x0Student));

    // L_distill: LPIPS-form distance of the decoded images on the classifier.
    const vae = Params.of(g, params, { prefix: VAE });
    const decode = (z: Tensor): Tensor =>
      minimum(maximum(decodeLatents(vae, mul(z, 1 / o.vae.scalingFactor), o.vae), -1), 1);
    const classifier = Params.of(g, params, { prefix: CLASSIFIER });
    const distill = mean(featureDistance(classifier, o.classifier, decode(x0Hat), decode(teacherX0)), 0);

    // L_DMD.
    const held = stopGradient(x0Hat);
    const xTau = add(mul(dmdAlpha, held), mul(dmdSigma, dmdNoise));
    // Two forwards of B rather than one of 2B: the graph's token reshapes are in terms of B.
    const uncond = teacher(at(xTau, dmdT, negText, negMask));
    const cond = teacher(at(xTau, dmdT));
    const realOut = add(uncond, mul(dmdW, sub(cond, uncond)));
    const x0Real = add(mul(dmdA, xTau), mul(dmdB, realOut));
    const x0Fake = stopGradient(add(mul(dmdA, xTau), mul(dmdB, student(at(xTau, dmdT)))));
    const weight = div(1, add(mean(abs(sub(held, x0Real)), [1, 2, 3], true), 1e-5));
    const target = sub(held, mul(weight, sub(x0Fake, x0Real)));
    const dmdDiff = sub(x0Hat, target);
    const dmd = mean(mul(dmdDiff, dmdDiff), [0, 1, 2, 3]);

    // L_G and L_D.
    const featsFake = teacher(at(add(mul(ganAlpha, x0Hat), mul(ganSigma, ganNoise)), ganT));
    const featsReal = teacher(at(add(mul(ganAlpha, real), mul(ganSigma, ganNoise)), ganT));
    const disc = (source: TensorSource, x: Tensor): Tensor =>
      sigmoid(flashDiscriminator(Params.of(g, source, { prefix: DISCRIMINATOR }), x, C, side));
    const gFake = sub(disc(detachedSource(params), featsFake), 1);
    const ganG = mean(mul(gFake, gFake), [0, 1]);
    const dReal = sub(disc(params, stopGradient(featsReal)), 1);
    const dFake = disc(params, stopGradient(featsFake));
    const ganD = mul(add(mean(mul(dReal, dReal), [0, 1]), mean(mul(dFake, dFake), [0, 1])), 0.5);

    const studentLoss = add(add(mul(distill, wDistill), mul(dmd, wDmd)), mul(ganG, wAdv));
    const loss = add(reshape(studentLoss, []), ganD);
    return { loss, metrics: { distill, dmd, gan_g: ganG, gan_d: ganD } };
  }

  const shapes = discoverParameterShapes((source) => build(new Graph('flash-distill-shapes'), source));
  const trainable = [...shapes.keys()].filter(
    (name) => name.startsWith(`${LORA_PREFIX}.`) || name.startsWith(`${DISCRIMINATOR}.`),
  );
  return { shapes, loraModules, trainable, build: (g, p: ParameterInputs) => build(g, p) };
}
