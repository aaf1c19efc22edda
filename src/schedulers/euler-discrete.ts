/**
 * Euler's method on the probability-flow ODE in σ (Karras et al. 2022, "Elucidating the Design
 * Space of Diffusion-Based Generative Models", Algorithm 2 with optional churn), as diffusers'
 * `EulerDiscreteScheduler`. Float32 steps are rounded one by one as torch computes them.
 */
import { OptionError } from '../errors.js';
import { alphasCumprodFromBetas, betasFromConfig, readBetaConfig, type BetaConfig } from './betas.js';
import { ConfigReader, type ConfigInput } from './config.js';
import { TIMESTEP_SPACINGS, type TimestepSpacing } from './ddim.js';
import {
  arange,
  f32,
  interpAtIntegers,
  linspace,
  roundHalfEven,
  torchExpFloat32,
  torchLinspaceFloat32,
} from './numerics.js';
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
import {
  logFloat32,
  readSigmaRespacing,
  respaceSigmas,
  sigmasFromAlphasCumprod,
  sigmaToT,
  type SigmaRespacing,
} from './sigma-schedules.js';
import { StepIndex, withShape } from './sigma-steps.js';

export const EULER_PREDICTION_TYPES = ['epsilon', 'v_prediction', 'sample', 'original_sample'] as const;
export const FINAL_SIGMAS_TYPES = ['zero', 'sigma_min'] as const;
export type FinalSigmasType = (typeof FINAL_SIGMAS_TYPES)[number];

export interface EulerDiscreteSchedulerConfig extends BetaConfig {
  prediction_type: (typeof EULER_PREDICTION_TYPES)[number];
  interpolation_type: 'linear' | 'log_linear';
  use_karras_sigmas: boolean;
  use_exponential_sigmas: boolean;
  use_beta_sigmas: boolean;
  sigma_min: number | null;
  sigma_max: number | null;
  timestep_spacing: TimestepSpacing;
  timestep_type: 'discrete' | 'continuous';
  steps_offset: number;
  final_sigmas_type: FinalSigmasType;
}

const CLASS_NAME = 'EulerDiscreteScheduler';

/**
 * Training-grid timesteps for `count` inference steps with the spacings of Lin et al. 2023 (Table 2),
 * as float32 values (the Euler schedulers keep float timesteps).
 */
export function spacedTimestepsFloat32(
  spacing: TimestepSpacing,
  trainSteps: number,
  count: number,
  stepsOffset: number,
): number[] {
  if (spacing === 'linspace') return Array.from(linspace(0, trainSteps - 1, count), f32).reverse();
  if (spacing === 'leading') {
    const stepRatio = Math.floor(trainSteps / count);
    return Array.from({ length: count }, (_, i) => f32((count - 1 - i) * stepRatio + stepsOffset));
  }
  return Array.from(arange(trainSteps, 0, -trainSteps / count), (t) => f32(roundHalfEven(t) - 1));
}

/** sample / sqrt(σ² + 1): the input scaling of the variance-exploding parameterisation. */
export function scaleBySigma(sample: SchedulerTensor, sigma: number): SchedulerTensor {
  const scale = f32(Math.sqrt(f32(f32(sigma * sigma) + 1)));
  return withShape(
    sample.data.map((v) => v / scale),
    sample,
  );
}

/** x̂0 from a v-prediction: v·(−σ/sqrt(σ² + 1)) + x/(σ² + 1). */
export function predOriginalFromV(output: Float32Array, x: Float32Array, sigma: number): Float32Array {
  const sigmaSquaredPlusOne = f32(f32(sigma * sigma) + 1);
  const outputScale = f32(-sigma / f32(Math.sqrt(sigmaSquaredPlusOne)));
  return output.map((v, i) => f32(v * outputScale) + f32(x[i] / sigmaSquaredPlusOne));
}

export class EulerDiscreteScheduler implements Scheduler {
  readonly config: Readonly<EulerDiscreteSchedulerConfig>;
  readonly order = 1;
  readonly timestepDtype = 'float32';
  readonly betas: Float32Array;
  readonly alphasCumprod: Float32Array;
  readonly #respacing: SigmaRespacing | null;
  /** σ of every training timestep, in increasing t. */
  readonly #trainSigmas: Float32Array;
  #timesteps: number[];
  #sigmas: Float32Array;
  #numInferenceSteps: number | undefined;
  readonly #stepIndex = new StepIndex(CLASS_NAME);

  constructor(config: ConfigInput<EulerDiscreteSchedulerConfig> = {}) {
    const reader = new ConfigReader(CLASS_NAME, config);
    const respacing = readSigmaRespacing(reader);
    this.config = Object.freeze({
      ...readBetaConfig(reader, { beta_start: 0.0001, beta_end: 0.02, beta_schedule: 'linear' }),
      prediction_type: reader.oneOf('prediction_type', EULER_PREDICTION_TYPES, 'epsilon'),
      interpolation_type: reader.oneOf('interpolation_type', ['linear', 'log_linear'] as const, 'linear'),
      use_karras_sigmas: respacing.use_karras_sigmas,
      use_exponential_sigmas: respacing.use_exponential_sigmas,
      use_beta_sigmas: respacing.use_beta_sigmas,
      sigma_min: reader.nullableNumber('sigma_min'),
      sigma_max: reader.nullableNumber('sigma_max'),
      timestep_spacing: reader.oneOf('timestep_spacing', TIMESTEP_SPACINGS, 'linspace'),
      timestep_type: reader.oneOf('timestep_type', ['discrete', 'continuous'] as const, 'discrete'),
      steps_offset: reader.integer('steps_offset', 0, 0),
      final_sigmas_type: reader.oneOf('final_sigmas_type', FINAL_SIGMAS_TYPES, 'zero'),
    });
    this.#respacing = respacing.respacing;
    this.betas = betasFromConfig(this.config);
    this.alphasCumprod = alphasCumprodFromBetas(this.betas);
    // With zero terminal SNR ᾱ_T = 0 would make σ_T infinite; diffusers uses 2^-24 instead.
    if (this.config.rescale_betas_zero_snr) this.alphasCumprod[this.alphasCumprod.length - 1] = 2 ** -24;
    this.#trainSigmas = sigmasFromAlphasCumprod(this.alphasCumprod);

    const trainSteps = this.config.num_train_timesteps;
    const descendingSigmas = this.#trainSigmas.slice().reverse();
    this.#timesteps =
      this.#continuousTimesteps(descendingSigmas) ??
      Array.from(linspace(0, trainSteps - 1, trainSteps), f32).reverse();
    this.#sigmas = Float32Array.of(...descendingSigmas, 0);
  }

  static fromConfig(
    config: ConfigInput<EulerDiscreteSchedulerConfig>,
    overrides: ConfigInput<EulerDiscreteSchedulerConfig> = {},
  ): EulerDiscreteScheduler {
    return new EulerDiscreteScheduler({ ...config, ...overrides });
  }

  get timesteps(): readonly number[] {
    return this.#timesteps;
  }

  /** The noise level of each timestep, plus the final one (0, or σ_min). */
  get sigmas(): Float32Array {
    return this.#sigmas;
  }

  get numInferenceSteps(): number | undefined {
    return this.#numInferenceSteps;
  }

  get initNoiseSigma(): number {
    const maxSigma = this.#sigmas.reduce((a, b) => Math.max(a, b), -Infinity);
    if (this.config.timestep_spacing === 'linspace' || this.config.timestep_spacing === 'trailing')
      return maxSigma;
    return f32(Math.sqrt(f32(f32(maxSigma * maxSigma) + 1)));
  }

  get stepIndex(): number | undefined {
    return this.#stepIndex.current;
  }

  get beginIndex(): number | undefined {
    return this.#stepIndex.begin;
  }

  /** Start sampling at `timesteps[beginIndex]` (image-to-image); call after setTimesteps. */
  setBeginIndex(beginIndex = 0): void {
    this.#stepIndex.begin = this.#stepIndex.checkBegin(beginIndex, this.#timesteps.length);
  }

  get #usesContinuousTimesteps(): boolean {
    return this.config.timestep_type === 'continuous' && this.config.prediction_type === 'v_prediction';
  }

  /** With continuous v-prediction timesteps the model is conditioned on 0.25·log σ. */
  #continuousTimesteps(sigmas: Float32Array): number[] | undefined {
    if (!this.#usesContinuousTimesteps) return undefined;
    return Array.from(sigmas, (sigma) => f32(0.25 * f32(Math.log(sigma))));
  }

  setTimesteps(numInferenceSteps?: number, options: SetTimestepsOptions = {}): void {
    checkSetTimestepsOptions(CLASS_NAME, options, ['timesteps', 'sigmas']);
    const { timesteps: customTimesteps, sigmas: customSigmas } = options;
    const given = [numInferenceSteps, customTimesteps, customSigmas].filter((v) => v !== undefined).length;
    if (given !== 1) {
      throw new OptionError(
        `${CLASS_NAME}.setTimesteps: pass exactly one of numInferenceSteps, timesteps or sigmas.`,
      );
    }
    if (customTimesteps !== undefined && this.#respacing !== null) {
      throw new OptionError(
        `${CLASS_NAME}.setTimesteps: custom timesteps cannot be used with use_${this.#respacing}_sigmas.`,
      );
    }
    if (customTimesteps !== undefined && this.#usesContinuousTimesteps) {
      throw new OptionError(
        `${CLASS_NAME}.setTimesteps: custom timesteps cannot be used with timestep_type "continuous" and v_prediction.`,
      );
    }
    const count =
      numInferenceSteps ?? customTimesteps?.length ?? (customSigmas as readonly number[]).length - 1;
    if (!Number.isSafeInteger(count) || count < 1) {
      throw new OptionError(`${CLASS_NAME}.setTimesteps: expected at least one step, got ${count}.`);
    }
    const logSigmas = logFloat32(this.#trainSigmas);

    let timesteps: number[];
    let sigmas: Float32Array;
    if (customSigmas !== undefined) {
      sigmas = Float32Array.from(customSigmas);
      timesteps = Array.from(sigmas.subarray(0, -1), (sigma) => sigmaToT(sigma, logSigmas));
    } else {
      timesteps =
        customTimesteps !== undefined
          ? customTimesteps.map(f32)
          : spacedTimestepsFloat32(
              this.config.timestep_spacing,
              this.config.num_train_timesteps,
              count,
              this.config.steps_offset,
            );
      let levels: ArrayLike<number> =
        this.config.interpolation_type === 'linear'
          ? timesteps.map((t) => interpAtIntegers(t, this.#trainSigmas))
          : // diffusers' log-linear branch yields count + 1 levels before the final one is appended.
            torchLinspaceFloat32(logSigmas[logSigmas.length - 1], logSigmas[0], count + 1).map(
              torchExpFloat32,
            );
      if (this.#respacing !== null) {
        const sigmaMin = this.config.sigma_min ?? levels[levels.length - 1];
        const sigmaMax = this.config.sigma_max ?? levels[0];
        levels = respaceSigmas(this.#respacing, sigmaMin, sigmaMax, count);
        timesteps = Array.from(levels, (sigma) => sigmaToT(sigma, logSigmas));
      }
      sigmas = Float32Array.of(...Array.from(levels), this.#finalSigma());
    }
    this.#sigmas = sigmas;
    this.#timesteps = this.#continuousTimesteps(sigmas.subarray(0, -1)) ?? timesteps.map(f32);
    this.#numInferenceSteps = count;
    this.#stepIndex.reset();
  }

  #finalSigma(): number {
    if (this.config.final_sigmas_type === 'zero') return 0;
    const alphaBar = this.alphasCumprod[0];
    return f32(Math.sqrt(f32(f32(1 - alphaBar) / alphaBar)));
  }

  /** Scales the sample to unit variance for the model: x / sqrt(σ² + 1). */
  scaleModelInput(sample: SchedulerTensor, timestep: number): SchedulerTensor {
    checkTensor(CLASS_NAME, 'sample', sample);
    const index = this.#stepIndex.resolve(this.#timesteps, f32(timestep));
    return scaleBySigma(sample, this.#sigmas[index]);
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
    const { sChurn = 0, sTmin = 0, sTmax = Infinity, sNoise = 1 } = options;
    let x = sample.data;
    const output = modelOutput.data;
    const sigma = this.#sigmas[index];

    const gamma =
      sTmin <= sigma && sigma <= sTmax ? Math.min(sChurn / (this.#sigmas.length - 1), Math.SQRT2 - 1) : 0;
    const sigmaHat = f32(sigma * (gamma + 1));
    if (gamma > 0) {
      const noise = stepNoise(CLASS_NAME, options, modelOutput.shape);
      const churn = f32(Math.sqrt(f32(f32(sigmaHat * sigmaHat) - f32(sigma * sigma))));
      const churned = x;
      x = churned.map((v, i) => v + f32(f32(noise[i] * sNoise) * churn));
    }

    let predOriginal: Float32Array;
    const prediction = this.config.prediction_type;
    if (prediction === 'epsilon') predOriginal = x.map((v, i) => v - f32(sigmaHat * output[i]));
    else if (prediction === 'v_prediction') predOriginal = predOriginalFromV(output, x, sigma);
    else predOriginal = output.slice();

    // Euler step along dx/dσ = (x − x̂0)/σ.
    const dt = f32(this.#sigmas[index + 1] - sigmaHat);
    const prevSample = x.map((v, i) => v + f32(f32(f32(v - predOriginal[i]) / sigmaHat) * dt));
    this.#stepIndex.current = index + 1;
    return { prevSample: withShape(prevSample, sample), predOriginalSample: withShape(predOriginal, sample) };
  }

  /** x + σ·ε at the noise level of each timestep. */
  addNoise(
    original: SchedulerTensor,
    noise: SchedulerTensor,
    timesteps: number | readonly number[],
  ): SchedulerTensor {
    checkTensor(CLASS_NAME, 'original', original);
    checkTensor(CLASS_NAME, 'noise', noise, original.shape);
    const floatTimesteps = typeof timesteps === 'number' ? f32(timesteps) : timesteps.map(f32);
    const indices = this.#stepIndex.forAddNoise(this.#timesteps, floatTimesteps, original.shape);
    const coefficients = indices.map((i): [number, number] => [1, this.#sigmas[i]]);
    return withShape(mixPerItem(original.data, noise.data, indices.length, coefficients), original);
  }
}
