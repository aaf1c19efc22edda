/**
 * Euler steps on a rectified-flow ODE, x_σ = (1 − σ)·x_0 + σ·ε with the model predicting
 * v = ε − x_0 (Esser et al. 2024, "Scaling Rectified Flow Transformers", SD3; FLUX), as diffusers'
 * `FlowMatchEulerDiscreteScheduler`: timestep shifting by `shift` or by a resolution-dependent `mu`
 * (eq. 23 of the SD3 paper), optional terminal stretching and σ respacings.
 *
 * numpy keeps float32 arrays float32 when combined with Python scalars (numpy 1.24), so whether a
 * shift is computed in float32 or float64 depends on whether sigmas/timesteps were given as input;
 * `Levels` carries that choice.
 */
import { OptionError } from '../errors.js';
import { ConfigReader, type ConfigInput } from './config.js';
import { f32, linspace } from './numerics.js';
import {
  checkSetTimestepsOptions,
  checkTensor,
  mixPerItem,
  stepNoise,
  type Scheduler,
  type SchedulerTensor,
  type SetTimestepsOptions,
  type StepOptions,
  type StepOutput,
} from './scheduler.js';
import { readSigmaRespacing, respaceSigmas, type SigmaRespacing } from './sigma-schedules.js';
import { StepIndex, withShape } from './sigma-steps.js';

export interface FlowMatchEulerDiscreteSchedulerConfig {
  num_train_timesteps: number;
  shift: number;
  use_dynamic_shifting: boolean;
  base_shift: number | null;
  max_shift: number | null;
  base_image_seq_len: number;
  max_image_seq_len: number;
  invert_sigmas: boolean;
  shift_terminal: number | null;
  use_karras_sigmas: boolean;
  use_exponential_sigmas: boolean;
  use_beta_sigmas: boolean;
  time_shift_type: 'exponential' | 'linear';
  stochastic_sampling: boolean;
}

const CLASS_NAME = 'FlowMatchEulerDiscreteScheduler';

/**
 * The `mu` of dynamic shifting for an image of `imageSeqLen` latent tokens: linear in the sequence
 * length between (baseSeqLen, baseShift) and (maxSeqLen, maxShift), as diffusers' Flux and SD3
 * pipelines compute it (`calculate_shift`).
 */
export function calculateShift(
  imageSeqLen: number,
  baseSeqLen = 256,
  maxSeqLen = 4096,
  baseShift = 0.5,
  maxShift = 1.15,
): number {
  const slope = (maxShift - baseShift) / (maxSeqLen - baseSeqLen);
  const intercept = baseShift - slope * baseSeqLen;
  return imageSeqLen * slope + intercept;
}

/** Noise levels between steps of set_timesteps, with the numpy dtype they have at that point. */
interface Levels {
  readonly values: number[];
  readonly float32: boolean;
}

export class FlowMatchEulerDiscreteScheduler implements Scheduler {
  readonly config: Readonly<FlowMatchEulerDiscreteSchedulerConfig>;
  readonly order = 1;
  readonly timestepDtype = 'float32';
  readonly initNoiseSigma = 1;
  readonly #respacing: SigmaRespacing | null;
  #shift: number;
  readonly #sigmaMin: number;
  readonly #sigmaMax: number;
  #timesteps: number[];
  #sigmas: Float32Array;
  #numInferenceSteps: number | undefined;
  readonly #stepIndex = new StepIndex(CLASS_NAME);

  constructor(config: ConfigInput<FlowMatchEulerDiscreteSchedulerConfig> = {}) {
    const reader = new ConfigReader(CLASS_NAME, config);
    const respacing = readSigmaRespacing(reader);
    this.config = Object.freeze({
      num_train_timesteps: reader.integer('num_train_timesteps', 1000, 1),
      shift: reader.positiveNumber('shift', 1.0),
      use_dynamic_shifting: reader.boolean('use_dynamic_shifting', false),
      base_shift: config['base_shift'] === null ? null : reader.number('base_shift', 0.5),
      max_shift: config['max_shift'] === null ? null : reader.number('max_shift', 1.15),
      base_image_seq_len: reader.integer('base_image_seq_len', 256, 1),
      max_image_seq_len: reader.integer('max_image_seq_len', 4096, 1),
      invert_sigmas: reader.boolean('invert_sigmas', false),
      shift_terminal: reader.nullableNumber('shift_terminal'),
      use_karras_sigmas: respacing.use_karras_sigmas,
      use_exponential_sigmas: respacing.use_exponential_sigmas,
      use_beta_sigmas: respacing.use_beta_sigmas,
      time_shift_type: reader.oneOf('time_shift_type', ['exponential', 'linear'] as const, 'exponential'),
      stochastic_sampling: reader.boolean('stochastic_sampling', false),
    });
    this.#respacing = respacing.respacing;
    this.#shift = this.config.shift;

    const trainSteps = this.config.num_train_timesteps;
    const trainTimesteps = Array.from(linspace(1, trainSteps, trainSteps), f32).reverse();
    let sigmas = Float32Array.from(trainTimesteps, (t) => t / trainSteps);
    if (!this.config.use_dynamic_shifting)
      sigmas = Float32Array.from(this.#shifted({ values: Array.from(sigmas), float32: true }).values);
    this.#sigmas = sigmas;
    this.#timesteps = Array.from(sigmas, (sigma) => f32(sigma * trainSteps));
    this.#sigmaMin = sigmas[sigmas.length - 1];
    this.#sigmaMax = sigmas[0];
  }

  static fromConfig(
    config: ConfigInput<FlowMatchEulerDiscreteSchedulerConfig>,
    overrides: ConfigInput<FlowMatchEulerDiscreteSchedulerConfig> = {},
  ): FlowMatchEulerDiscreteScheduler {
    return new FlowMatchEulerDiscreteScheduler({ ...config, ...overrides });
  }

  get timesteps(): readonly number[] {
    return this.#timesteps;
  }

  /** The noise level of each timestep, plus the final one (0, or 1 with invert_sigmas). */
  get sigmas(): Float32Array {
    return this.#sigmas;
  }

  get numInferenceSteps(): number | undefined {
    return this.#numInferenceSteps;
  }

  /** The static shift σ' = shift·σ / (1 + (shift − 1)·σ) used when dynamic shifting is off. */
  get shift(): number {
    return this.#shift;
  }

  setShift(shift: number): void {
    if (!(shift > 0) || !Number.isFinite(shift))
      throw new OptionError(`${CLASS_NAME}.setShift: ${shift} is not a finite number > 0.`);
    this.#shift = shift;
  }

  get stepIndex(): number | undefined {
    return this.#stepIndex.current;
  }

  get beginIndex(): number | undefined {
    return this.#stepIndex.begin;
  }

  setBeginIndex(beginIndex = 0): void {
    this.#stepIndex.begin = this.#stepIndex.checkBegin(beginIndex, this.#timesteps.length);
  }

  /** Rounds to float32 where numpy would hold the values in a float32 array. */
  #round(levels: Levels, value: number): number {
    return levels.float32 ? f32(value) : value;
  }

  #shifted(levels: Levels): Levels {
    const r = (v: number): number => this.#round(levels, v);
    const shift = r(this.#shift);
    const shiftMinusOne = r(this.#shift - 1);
    return { ...levels, values: levels.values.map((s) => r(r(shift * s) / r(1 + r(shiftMinusOne * s)))) };
  }

  /** The resolution-dependent shift: exp(μ)/(exp(μ) + (1/t − 1)) or μ/(μ + (1/t − 1)). */
  #timeShifted(levels: Levels, mu: number): Levels {
    const r = (v: number): number => this.#round(levels, v);
    const numerator = r(this.config.time_shift_type === 'exponential' ? Math.exp(mu) : mu);
    return { ...levels, values: levels.values.map((t) => r(numerator / r(numerator + r(r(1 / t) - 1)))) };
  }

  /** Stretches the schedule so that its last σ is `shift_terminal`. */
  #stretchedToTerminal(levels: Levels, shiftTerminal: number): Levels {
    const r = (v: number): number => this.#round(levels, v);
    const oneMinus = levels.values.map((t) => r(1 - t));
    const scaleFactor = r(oneMinus[oneMinus.length - 1] / (1 - shiftTerminal));
    return { ...levels, values: oneMinus.map((v) => r(1 - r(v / scaleFactor))) };
  }

  setTimesteps(numInferenceSteps?: number, options: SetTimestepsOptions = {}): void {
    checkSetTimestepsOptions(CLASS_NAME, options, ['sigmas', 'mu', 'timesteps']);
    const { sigmas: customSigmas, timesteps: customTimesteps, mu } = options;
    if (this.config.use_dynamic_shifting && mu === undefined) {
      throw new OptionError(
        `${CLASS_NAME}.setTimesteps: use_dynamic_shifting is on, so pass { mu } (see calculateShift).`,
      );
    }
    if (
      customSigmas !== undefined &&
      customTimesteps !== undefined &&
      customSigmas.length !== customTimesteps.length
    ) {
      throw new OptionError(`${CLASS_NAME}.setTimesteps: sigmas and timesteps must have the same length.`);
    }
    const givenLength = customSigmas?.length ?? customTimesteps?.length;
    if (numInferenceSteps !== undefined && givenLength !== undefined && givenLength !== numInferenceSteps) {
      throw new OptionError(
        `${CLASS_NAME}.setTimesteps: ${givenLength} sigmas/timesteps given for ${numInferenceSteps} steps; they must match.`,
      );
    }
    const count = numInferenceSteps ?? givenLength;
    if (count === undefined || !Number.isSafeInteger(count) || count < 1) {
      throw new OptionError(`${CLASS_NAME}.setTimesteps: pass numInferenceSteps ≥ 1, sigmas or timesteps.`);
    }
    const trainSteps = this.config.num_train_timesteps;

    let levels: Levels;
    if (customSigmas !== undefined) levels = { values: customSigmas.map(f32), float32: true };
    else if (customTimesteps !== undefined)
      levels = { values: customTimesteps.map((t) => f32(f32(t) / trainSteps)), float32: true };
    else {
      const timesteps = linspace(this.#sigmaMax * trainSteps, this.#sigmaMin * trainSteps, count);
      levels = { values: Array.from(timesteps, (t) => t / trainSteps), float32: false };
    }
    levels = this.config.use_dynamic_shifting
      ? this.#timeShifted(levels, mu as number)
      : this.#shifted(levels);
    if (this.config.shift_terminal) levels = this.#stretchedToTerminal(levels, this.config.shift_terminal);
    if (this.#respacing !== null) {
      const values = levels.values;
      levels = {
        values: Array.from(respaceSigmas(this.#respacing, values[values.length - 1], values[0], count)),
        float32: false,
      };
    }

    let sigmas = Float32Array.from(levels.values);
    if (this.config.invert_sigmas) sigmas = sigmas.map((sigma) => 1 - sigma);
    this.#timesteps = Array.from(sigmas, (sigma) => f32(sigma * trainSteps));
    this.#sigmas = Float32Array.of(...sigmas, this.config.invert_sigmas ? 1 : 0);
    this.#numInferenceSteps = count;
    this.#stepIndex.reset();
  }

  /** Flow matching does not scale the model input (diffusers' class has no scale_model_input; this returns the sample). */
  scaleModelInput(sample: SchedulerTensor, _timestep?: number): SchedulerTensor {
    return sample;
  }

  step(
    modelOutput: SchedulerTensor,
    timestep: number,
    sample: SchedulerTensor,
    options: StepOptions = {},
  ): StepOutput {
    checkTensor(CLASS_NAME, 'sample', sample);
    checkTensor(CLASS_NAME, 'modelOutput', modelOutput, sample.shape);
    const index = this.#stepIndex.resolve(this.#timesteps, f32(timestep));
    if (index + 1 >= this.#sigmas.length)
      throw new OptionError(`${CLASS_NAME}.step: the schedule has no step ${index}.`);
    const x = sample.data;
    const velocity = modelOutput.data;
    const sigma = this.#sigmas[index];
    const sigmaNext = this.#sigmas[index + 1];
    const predOriginal = x.map((v, i) => v - f32(sigma * velocity[i]));
    let prevSample: Float32Array;
    if (this.config.stochastic_sampling) {
      // Re-noise x̂0 to the next level with fresh noise instead of following the ODE.
      const noise = stepNoise(CLASS_NAME, options, sample.shape);
      prevSample = mixPerItem(predOriginal, noise, 1, [[f32(1 - sigmaNext), sigmaNext]]);
    } else {
      const dt = f32(sigmaNext - sigma);
      prevSample = x.map((v, i) => v + f32(dt * velocity[i]));
    }
    this.#stepIndex.current = index + 1;
    return { prevSample: withShape(prevSample, sample), predOriginalSample: withShape(predOriginal, sample) };
  }

  /** The forward process σ·ε + (1 − σ)·x_0 at each timestep's σ (diffusers' `scale_noise`). */
  scaleNoise(
    sample: SchedulerTensor,
    timesteps: number | readonly number[],
    noise: SchedulerTensor,
  ): SchedulerTensor {
    checkTensor(CLASS_NAME, 'sample', sample);
    checkTensor(CLASS_NAME, 'noise', noise, sample.shape);
    const floatTimesteps = typeof timesteps === 'number' ? f32(timesteps) : timesteps.map(f32);
    const indices = this.#stepIndex.forAddNoise(this.#timesteps, floatTimesteps, sample.shape);
    const coefficients = indices.map((i): [number, number] => [f32(1 - this.#sigmas[i]), this.#sigmas[i]]);
    return withShape(mixPerItem(sample.data, noise.data, indices.length, coefficients), sample);
  }

  /** `scaleNoise` with the argument order of the other schedulers' addNoise. */
  addNoise(
    original: SchedulerTensor,
    noise: SchedulerTensor,
    timesteps: number | readonly number[],
  ): SchedulerTensor {
    return this.scaleNoise(original, timesteps, noise);
  }
}
