/**
 * Ancestral sampling with Euler steps (k-diffusion's `sample_euler_ancestral`, Karras et al. 2022
 * setting): each step goes down to σ_down deterministically and adds fresh noise of σ_up, where
 * σ_up² + σ_down² = σ_next². As diffusers' `EulerAncestralDiscreteScheduler`; it draws noise on every
 * step, the last included (where σ_up = 0), so a generator advances as in diffusers.
 */
import { OptionError } from '../errors.js';
import { alphasCumprodFromBetas, betasFromConfig, readBetaConfig, type BetaConfig } from './betas.js';
import { ConfigReader, type ConfigInput } from './config.js';
import { TIMESTEP_SPACINGS, type TimestepSpacing } from './ddim.js';
import { predOriginalFromV, scaleBySigma, spacedTimestepsFloat32 } from './euler-discrete.js';
import { f32, interpAtIntegers, linspace } from './numerics.js';
import {
  checkSetTimestepsOptions,
  checkStepCount,
  checkTensor,
  mixPerItem,
  stepNoise,
  type Scheduler,
  type SchedulerTensor,
  type SetTimestepsOptions,
  type StepOptions,
  type StepOutput,
} from './scheduler.js';
import { sigmasFromAlphasCumprod } from './sigma-schedules.js';
import { StepIndex, withShape } from './sigma-steps.js';

export interface EulerAncestralDiscreteSchedulerConfig extends BetaConfig {
  prediction_type: 'epsilon' | 'v_prediction';
  timestep_spacing: TimestepSpacing;
  steps_offset: number;
}

const CLASS_NAME = 'EulerAncestralDiscreteScheduler';

export class EulerAncestralDiscreteScheduler implements Scheduler {
  readonly config: Readonly<EulerAncestralDiscreteSchedulerConfig>;
  readonly order = 1;
  readonly timestepDtype = 'float32';
  readonly betas: Float32Array;
  readonly alphasCumprod: Float32Array;
  /** σ of every training timestep, in increasing t. */
  readonly #trainSigmas: Float32Array;
  #timesteps: number[];
  #sigmas: Float32Array;
  #numInferenceSteps: number | undefined;
  readonly #stepIndex = new StepIndex(CLASS_NAME);

  constructor(config: ConfigInput<EulerAncestralDiscreteSchedulerConfig> = {}) {
    const reader = new ConfigReader(CLASS_NAME, config);
    this.config = Object.freeze({
      ...readBetaConfig(reader, { beta_start: 0.0001, beta_end: 0.02, beta_schedule: 'linear' }),
      // diffusers accepts "sample" here but fails on the first step; it is rejected up front.
      prediction_type: reader.oneOf('prediction_type', ['epsilon', 'v_prediction'] as const, 'epsilon'),
      timestep_spacing: reader.oneOf('timestep_spacing', TIMESTEP_SPACINGS, 'linspace'),
      steps_offset: reader.integer('steps_offset', 0, 0),
    });
    this.betas = betasFromConfig(this.config);
    this.alphasCumprod = alphasCumprodFromBetas(this.betas);
    if (this.config.rescale_betas_zero_snr) this.alphasCumprod[this.alphasCumprod.length - 1] = 2 ** -24;
    this.#trainSigmas = sigmasFromAlphasCumprod(this.alphasCumprod);
    const trainSteps = this.config.num_train_timesteps;
    this.#timesteps = Array.from(linspace(0, trainSteps - 1, trainSteps)).reverse();
    this.#sigmas = Float32Array.of(...this.#trainSigmas.slice().reverse(), 0);
  }

  static fromConfig(
    config: ConfigInput<EulerAncestralDiscreteSchedulerConfig>,
    overrides: ConfigInput<EulerAncestralDiscreteSchedulerConfig> = {},
  ): EulerAncestralDiscreteScheduler {
    return new EulerAncestralDiscreteScheduler({ ...config, ...overrides });
  }

  get timesteps(): readonly number[] {
    return this.#timesteps;
  }

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

  setBeginIndex(beginIndex = 0): void {
    this.#stepIndex.begin = this.#stepIndex.checkBegin(beginIndex, this.#timesteps.length);
  }

  setTimesteps(numInferenceSteps?: number, options: SetTimestepsOptions = {}): void {
    checkSetTimestepsOptions(CLASS_NAME, options, []);
    const count = checkStepCount(CLASS_NAME, numInferenceSteps, this.config.num_train_timesteps);
    const timesteps = spacedTimestepsFloat32(
      this.config.timestep_spacing,
      this.config.num_train_timesteps,
      count,
      this.config.steps_offset,
    );
    this.#sigmas = Float32Array.of(...timesteps.map((t) => interpAtIntegers(t, this.#trainSigmas)), 0);
    this.#timesteps = timesteps;
    this.#numInferenceSteps = count;
    this.#stepIndex.reset();
  }

  scaleModelInput(sample: SchedulerTensor, timestep: number): SchedulerTensor {
    checkTensor(CLASS_NAME, 'sample', sample);
    return scaleBySigma(sample, this.#sigmas[this.#stepIndex.resolve(this.#timesteps, f32(timestep))]);
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
    const output = modelOutput.data;
    const sigma = this.#sigmas[index];
    const predOriginal =
      this.config.prediction_type === 'epsilon'
        ? x.map((v, i) => v - f32(sigma * output[i]))
        : predOriginalFromV(output, x, sigma);

    const sigmaTo = this.#sigmas[index + 1];
    const sigmaToSquared = f32(sigmaTo * sigmaTo);
    const sigmaFromSquared = f32(sigma * sigma);
    const sigmaUp = f32(
      Math.sqrt(f32(f32(sigmaToSquared * f32(sigmaFromSquared - sigmaToSquared)) / sigmaFromSquared)),
    );
    const sigmaDown = f32(Math.sqrt(f32(sigmaToSquared - f32(sigmaUp * sigmaUp))));
    const dt = f32(sigmaDown - sigma);
    const deterministic = x.map((v, i) => v + f32(f32(f32(v - predOriginal[i]) / sigma) * dt));
    const noise = stepNoise(CLASS_NAME, options, modelOutput.shape);
    const prevSample = deterministic.map((v, i) => v + f32(noise[i] * sigmaUp));
    this.#stepIndex.current = index + 1;
    return { prevSample: withShape(prevSample, sample), predOriginalSample: withShape(predOriginal, sample) };
  }

  addNoise(
    original: SchedulerTensor,
    noise: SchedulerTensor,
    timesteps: number | readonly number[],
  ): SchedulerTensor {
    checkTensor(CLASS_NAME, 'original', original);
    checkTensor(CLASS_NAME, 'noise', noise, original.shape);
    const floatTimesteps = typeof timesteps === 'number' ? f32(timesteps) : timesteps.map(f32);
    const indices = this.#stepIndex.forAddNoise(this.#timesteps, floatTimesteps, original.shape);
    return withShape(
      mixPerItem(
        original.data,
        noise.data,
        indices.length,
        indices.map((i): [number, number] => [1, this.#sigmas[i]]),
      ),
      original,
    );
  }
}
