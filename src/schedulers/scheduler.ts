/**
 * What every scheduler offers a pipeline, mirroring diffusers' scheduler API in camelCase:
 *
 * ```ts
 * scheduler.setTimesteps(steps);
 * let latents = { data: noise.map((x) => x * scheduler.initNoiseSigma), shape };
 * for (const t of scheduler.timesteps) {
 *   const modelInput = scheduler.scaleModelInput(latents, t);
 *   const modelOutput = denoiser(modelInput, t);
 *   latents = scheduler.step(modelOutput, t, latents, { generator }).prevSample;
 * }
 * ```
 *
 * Tensors are {@link SchedulerTensor}s: float32 data, row-major, with a shape — the `data` and `shape`
 * of a float32 HostTensor, and results wrap back with `hostTensor('float32', t.shape, t.data)`. Inputs
 * are never modified (schedulers without input scaling return the sample itself from scaleModelInput).
 */
import { OptionError } from '../errors.js';
import type { NoiseGenerator } from '../random/torch-generator.js';

export type { NoiseGenerator } from '../random/torch-generator.js';

/** A scheduler's view of a tensor: float32 values in row-major order and the shape they have. */
export interface SchedulerTensor {
  readonly data: Float32Array;
  readonly shape: readonly number[];
}

/** The dtype diffusers gives `timesteps`: the model's timestep input should use it too. */
export type TimestepDtype = 'int64' | 'float32';

/** What `setTimesteps` takes besides the step count; each scheduler accepts the ones its diffusers class does. */
export interface SetTimestepsOptions {
  /** Custom descending timesteps instead of a step count (DDIM excepted). */
  readonly timesteps?: readonly number[];
  /** Custom noise levels (EulerDiscrete: including the final one; FlowMatch: one per step). */
  readonly sigmas?: readonly number[];
  /** The exponent of the dynamic shift (FlowMatch / DPM with `use_dynamic_shifting`); see `calculateShift`. */
  readonly mu?: number;
  /** LCM: the number of steps of the distillation schedule (default `original_inference_steps`). */
  readonly originalInferenceSteps?: number;
  /** LCM: the fraction of the schedule to run, for image-to-image. */
  readonly strength?: number;
}

/**
 * Options of `step`. A scheduler ignores the ones it does not use, as diffusers pipelines pass a
 * scheduler only the step kwargs it accepts.
 */
export interface StepOptions {
  /** Explicit standard-normal noise for a stochastic step (diffusers' `variance_noise`), shaped as the sample. */
  readonly noise?: SchedulerTensor | Float32Array;
  /** Draws the noise when `noise` is not given; needed by every stochastic step without it. */
  readonly generator?: NoiseGenerator;
  /** DDIM: weight of the added noise, 0 = DDIM (deterministic), 1 = DDPM. */
  readonly eta?: number;
  /** DDIM: recompute ε from the clipped x̂0. */
  readonly useClippedModelOutput?: boolean;
  /** EulerDiscrete / FlowMatch: stochastic churn (Karras et al. 2022, Algorithm 2). */
  readonly sChurn?: number;
  readonly sTmin?: number;
  readonly sTmax?: number;
  readonly sNoise?: number;
}

export interface StepOutput {
  /** x_{t−1}, the next sample. */
  readonly prevSample: SchedulerTensor;
  /**
   * The model's estimate of the clean sample x̂0 at this step: diffusers' `pred_original_sample`,
   * DPM-Solver's converted model output and LCM's `denoised`.
   */
  readonly predOriginalSample: SchedulerTensor;
}

export interface Scheduler {
  /** The resolved config, with diffusers' snake_case keys and defaults. */
  readonly config: Readonly<object>;
  /** Model evaluations per entry of `timesteps` (diffusers' `order`). */
  readonly order: number;
  readonly timesteps: readonly number[];
  readonly timestepDtype: TimestepDtype;
  /** The standard deviation of the initial noise: latents start as noise × initNoiseSigma. */
  readonly initNoiseSigma: number;
  readonly numInferenceSteps: number | undefined;
  setTimesteps(numInferenceSteps?: number, options?: SetTimestepsOptions): void;
  scaleModelInput(sample: SchedulerTensor, timestep: number): SchedulerTensor;
  step(
    modelOutput: SchedulerTensor,
    timestep: number,
    sample: SchedulerTensor,
    options?: StepOptions,
  ): StepOutput;
  /** The forward process: `original` noised to the level of `timesteps` (one value, or one per batch item). */
  addNoise(
    original: SchedulerTensor,
    noise: SchedulerTensor,
    timesteps: number | readonly number[],
  ): SchedulerTensor;
}

// ---------------------------------------------------------------------------------------------
// Helpers the scheduler classes share.

export function elementCount(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/** Checks that a tensor's data fits its shape and, when given, that it has `shape`. */
export function checkTensor(
  className: string,
  what: string,
  tensor: SchedulerTensor,
  shape?: readonly number[],
): void {
  if (!(tensor.data instanceof Float32Array)) {
    throw new OptionError(`${className}: ${what} must hold a Float32Array.`, 'SHAPE');
  }
  if (tensor.data.length !== elementCount(tensor.shape)) {
    throw new OptionError(
      `${className}: ${what} has shape [${tensor.shape.join(', ')}] (${elementCount(tensor.shape)} values) ` +
        `but ${tensor.data.length} values.`,
      'SHAPE',
    );
  }
  if (
    shape !== undefined &&
    (shape.length !== tensor.shape.length || shape.some((d, i) => d !== tensor.shape[i]))
  ) {
    throw new OptionError(
      `${className}: ${what} has shape [${tensor.shape.join(', ')}], expected [${shape.join(', ')}] as the sample.`,
      'SHAPE',
    );
  }
}

/** Rejects setTimesteps options this scheduler does not take, naming the ones it does. */
export function checkSetTimestepsOptions(
  className: string,
  options: SetTimestepsOptions,
  accepted: readonly (keyof SetTimestepsOptions)[],
): void {
  for (const [key, value] of Object.entries(options)) {
    if (value !== undefined && !(accepted as readonly string[]).includes(key)) {
      throw new OptionError(
        `${className}.setTimesteps does not take the option "${key}"; it takes ` +
          (accepted.length === 0 ? 'none.' : `${accepted.map((k) => `"${k}"`).join(', ')}.`),
      );
    }
  }
}

export function checkStepCount(className: string, value: number | undefined, maximum: number): number {
  if (value === undefined || !Number.isSafeInteger(value) || value < 1 || value > maximum) {
    throw new OptionError(
      `${className}.setTimesteps: numInferenceSteps is ${String(value)}; expected an integer in [1, ${maximum}] ` +
        '(at most num_train_timesteps).',
    );
  }
  return value;
}

/**
 * The noise a stochastic step adds, shaped as `shape`: `options.noise` if given, else drawn from
 * `options.generator`. Throws when neither (or both) is given.
 */
export function stepNoise(className: string, options: StepOptions, shape: readonly number[]): Float32Array {
  const { noise, generator } = options;
  if (noise !== undefined && generator !== undefined) {
    throw new OptionError(`${className}.step: pass either noise or generator, not both.`);
  }
  if (noise !== undefined) {
    const tensor = noise instanceof Float32Array ? { data: noise, shape } : noise;
    checkTensor(className, 'noise', tensor, shape);
    return tensor.data;
  }
  if (generator === undefined) {
    throw new OptionError(
      `${className}.step adds noise at this step: pass { noise } (a standard-normal tensor shaped ` +
        `[${shape.join(', ')}]) or { generator } (e.g. a TorchGenerator).`,
      'NOISE_REQUIRED',
    );
  }
  const drawn = generator.randn(shape);
  if (drawn.length !== elementCount(shape)) {
    throw new OptionError(
      `${className}.step: the generator returned ${drawn.length} values for shape [${shape.join(', ')}].`,
      'SHAPE',
    );
  }
  return drawn;
}

/**
 * Where `timestep` is in `schedule`: its first occurrence, or the second when it occurs more than
 * once, so that a schedule starting in the middle (image-to-image) does not skip a sigma (diffusers'
 * `index_for_timestep`). `undefined` when absent.
 */
export function indexForTimestep(schedule: readonly number[], timestep: number): number | undefined {
  const first = schedule.indexOf(timestep);
  if (first < 0) return undefined;
  const second = schedule.indexOf(timestep, first + 1);
  return second < 0 ? first : second;
}

export function timestepNotFound(
  className: string,
  timestep: number,
  schedule: readonly number[],
): OptionError {
  return new OptionError(
    `${className}: timestep ${timestep} is not in the schedule [${schedule.slice(0, 8).join(', ')}` +
      `${schedule.length > 8 ? ', …' : ''}]; pass one of scheduler.timesteps.`,
  );
}

export function notReady(className: string): OptionError {
  return new OptionError(
    `${className}: call setTimesteps(numInferenceSteps) before step().`,
    'SCHEDULER_NOT_READY',
  );
}

/** The per-batch-item values of `timesteps` for a tensor of `shape` (one value broadcasts). */
export function timestepsPerItem(
  className: string,
  timesteps: number | readonly number[],
  shape: readonly number[],
): number[] {
  const list = typeof timesteps === 'number' ? [timesteps] : [...timesteps];
  const batch = shape.length === 0 ? 1 : shape[0];
  if (list.length === 1) return new Array<number>(batch).fill(list[0]);
  if (list.length !== batch) {
    throw new OptionError(
      `${className}.addNoise: ${list.length} timesteps for a batch of ${batch}; pass one, or one per batch item.`,
      'SHAPE',
    );
  }
  return list;
}

/** out[i] = a[i]·x + b[i]·n per batch item, each product and the sum rounded to float32 as torch does. */
export function mixPerItem(
  x: Float32Array,
  n: Float32Array,
  batch: number,
  coefficients: readonly (readonly [number, number])[],
): Float32Array {
  const out = new Float32Array(x.length);
  const itemSize = x.length / batch;
  for (let item = 0; item < batch; item++) {
    const [a, b] = coefficients[item];
    for (let i = item * itemSize; i < (item + 1) * itemSize; i++)
      out[i] = Math.fround(a * x[i]) + Math.fround(b * n[i]);
  }
  return out;
}
