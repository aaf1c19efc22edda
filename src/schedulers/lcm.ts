/**
 * Latent consistency model sampling (Luo et al. 2023, "Latent Consistency Models", Algorithm 3;
 * LCM-LoRA): each step maps x_t to a clean estimate with the consistency boundary condition
 * c_skip·x_t + c_out·x̂0 and re-noises it to the next timestep. As diffusers' `LCMScheduler`.
 */
import { OptionError } from '../errors.js';
import { alphasCumprodFromBetas, betasFromConfig, readBetaConfig, type BetaConfig } from './betas.js';
import { ConfigReader, type ConfigInput } from './config.js';
import {
  addNoiseWithAlphasCumprod,
  PREDICTION_TYPES,
  TIMESTEP_SPACINGS,
  type PredictionType,
  type TimestepSpacing,
} from './ddim.js';
import { f32, linspace } from './numerics.js';
import {
  checkSetTimestepsOptions,
  checkTensor,
  mixPerItem,
  notReady,
  stepNoise,
  type Scheduler,
  type SchedulerTensor,
  type SetTimestepsOptions,
  type StepOptions,
  type StepOutput,
} from './scheduler.js';
import { StepIndex, withShape } from './sigma-steps.js';
import { thresholdSample } from './thresholding.js';

export interface LCMSchedulerConfig extends BetaConfig {
  original_inference_steps: number;
  clip_sample: boolean;
  clip_sample_range: number;
  set_alpha_to_one: boolean;
  /** Kept for config compatibility; LCM's timesteps do not use it. */
  steps_offset: number;
  prediction_type: PredictionType;
  thresholding: boolean;
  dynamic_thresholding_ratio: number;
  sample_max_value: number;
  /** Kept for config compatibility; LCM's timesteps do not use it. */
  timestep_spacing: TimestepSpacing;
  timestep_scaling: number;
}

const CLASS_NAME = 'LCMScheduler';

/** σ_data of the consistency parameterisation (LCM §4.1). */
const SIGMA_DATA = 0.5;

export class LCMScheduler implements Scheduler {
  readonly config: Readonly<LCMSchedulerConfig>;
  readonly order = 1;
  readonly timestepDtype = 'int64';
  readonly initNoiseSigma = 1;
  readonly betas: Float32Array;
  readonly alphasCumprod: Float32Array;
  readonly finalAlphaCumprod: number;
  #timesteps: number[];
  #numInferenceSteps: number | undefined;
  #customTimesteps = false;
  readonly #stepIndex = new StepIndex(CLASS_NAME);

  constructor(config: ConfigInput<LCMSchedulerConfig> = {}) {
    const reader = new ConfigReader(CLASS_NAME, config);
    this.config = Object.freeze({
      ...readBetaConfig(reader, { beta_start: 0.00085, beta_end: 0.012, beta_schedule: 'scaled_linear' }),
      original_inference_steps: reader.integer('original_inference_steps', 50, 1),
      clip_sample: reader.boolean('clip_sample', false),
      clip_sample_range: reader.number('clip_sample_range', 1.0),
      set_alpha_to_one: reader.boolean('set_alpha_to_one', true),
      steps_offset: reader.integer('steps_offset', 0, 0),
      prediction_type: reader.oneOf('prediction_type', PREDICTION_TYPES, 'epsilon'),
      thresholding: reader.boolean('thresholding', false),
      dynamic_thresholding_ratio: reader.number('dynamic_thresholding_ratio', 0.995),
      sample_max_value: reader.number('sample_max_value', 1.0),
      timestep_spacing: reader.oneOf('timestep_spacing', TIMESTEP_SPACINGS, 'leading'),
      timestep_scaling: reader.number('timestep_scaling', 10.0),
    });
    this.betas = betasFromConfig(this.config);
    this.alphasCumprod = alphasCumprodFromBetas(this.betas);
    this.finalAlphaCumprod = this.config.set_alpha_to_one ? 1 : this.alphasCumprod[0];
    const trainSteps = this.config.num_train_timesteps;
    this.#timesteps = Array.from({ length: trainSteps }, (_, i) => trainSteps - 1 - i);
  }

  static fromConfig(
    config: ConfigInput<LCMSchedulerConfig>,
    overrides: ConfigInput<LCMSchedulerConfig> = {},
  ): LCMScheduler {
    return new LCMScheduler({ ...config, ...overrides });
  }

  get timesteps(): readonly number[] {
    return this.#timesteps;
  }

  get numInferenceSteps(): number | undefined {
    return this.#numInferenceSteps;
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

  /**
   * The distillation schedule has `originalInferenceSteps` timesteps k−1, 2k−1, …; inference takes
   * `numInferenceSteps` of them evenly from the top (or the given `timesteps`). `strength` < 1 keeps
   * only the lower part, for image-to-image.
   */
  setTimesteps(numInferenceSteps?: number, options: SetTimestepsOptions = {}): void {
    checkSetTimestepsOptions(CLASS_NAME, options, ['timesteps', 'originalInferenceSteps', 'strength']);
    const { timesteps: customTimesteps, strength = 1 } = options;
    if ((numInferenceSteps === undefined) === (customTimesteps === undefined)) {
      throw new OptionError(
        `${CLASS_NAME}.setTimesteps: pass exactly one of numInferenceSteps or timesteps.`,
      );
    }
    const trainSteps = this.config.num_train_timesteps;
    const originalSteps = options.originalInferenceSteps ?? this.config.original_inference_steps;
    if (!Number.isSafeInteger(originalSteps) || originalSteps < 1 || originalSteps > trainSteps) {
      throw new OptionError(
        `${CLASS_NAME}.setTimesteps: originalInferenceSteps is ${originalSteps}; expected an integer in [1, ${trainSteps}].`,
      );
    }
    if (!(strength > 0 && strength <= 1)) {
      throw new OptionError(
        `${CLASS_NAME}.setTimesteps: strength is ${strength}; expected a number in (0, 1].`,
      );
    }
    const k = Math.floor(trainSteps / originalSteps);
    const originSteps = Math.trunc(originalSteps * strength);
    const lcmOriginTimesteps = Array.from({ length: originSteps }, (_, i) => (i + 1) * k - 1);

    let timesteps: number[];
    if (customTimesteps !== undefined) {
      for (let i = 1; i < customTimesteps.length; i++) {
        if (customTimesteps[i] >= customTimesteps[i - 1]) {
          throw new OptionError(`${CLASS_NAME}.setTimesteps: custom timesteps must be in descending order.`);
        }
      }
      if (
        customTimesteps.length === 0 ||
        !customTimesteps.every(Number.isSafeInteger) ||
        customTimesteps[0] >= trainSteps ||
        customTimesteps[customTimesteps.length - 1] < 0
      ) {
        throw new OptionError(
          `${CLASS_NAME}.setTimesteps: custom timesteps must be integers in [0, ${trainSteps}).`,
        );
      }
      const count = customTimesteps.length;
      const initTimestep = Math.min(Math.trunc(count * strength), count);
      timesteps = customTimesteps.slice(Math.max(count - initTimestep, 0));
      this.#numInferenceSteps = count;
      this.#customTimesteps = true;
    } else {
      const count = numInferenceSteps as number;
      if (!Number.isSafeInteger(count) || count < 1 || count > trainSteps) {
        throw new OptionError(
          `${CLASS_NAME}.setTimesteps: numInferenceSteps is ${count}; expected an integer in [1, ${trainSteps}].`,
        );
      }
      if (Math.floor(originSteps / count) < 1) {
        throw new OptionError(
          `${CLASS_NAME}.setTimesteps: originalInferenceSteps × strength = ${originalSteps} × ${strength} is smaller ` +
            `than numInferenceSteps = ${count}; use fewer steps or a larger strength.`,
        );
      }
      if (count > originalSteps) {
        throw new OptionError(
          `${CLASS_NAME}.setTimesteps: numInferenceSteps = ${count} exceeds originalInferenceSteps = ${originalSteps}.`,
        );
      }
      const descending = lcmOriginTimesteps.reverse();
      timesteps = Array.from(linspace(0, descending.length, count, false), (i) => descending[Math.floor(i)]);
      this.#numInferenceSteps = count;
      this.#customTimesteps = false;
    }
    this.#timesteps = timesteps;
    this.#stepIndex.reset();
  }

  /** LCM does not scale the model input. */
  scaleModelInput(sample: SchedulerTensor, _timestep?: number): SchedulerTensor {
    return sample;
  }

  /** c_skip and c_out of the consistency boundary condition at `timestep` (LCM eq. 9). */
  boundaryConditionScalings(timestep: number): { cSkip: number; cOut: number } {
    const scaled = f32(timestep * f32(this.config.timestep_scaling));
    const denominator = f32(f32(scaled * scaled) + SIGMA_DATA ** 2);
    return { cSkip: f32(SIGMA_DATA ** 2 / denominator), cOut: f32(scaled / f32(Math.sqrt(denominator))) };
  }

  step(
    modelOutput: SchedulerTensor,
    timestep: number,
    sample: SchedulerTensor,
    options: StepOptions = {},
  ): StepOutput {
    if (this.#numInferenceSteps === undefined) throw notReady(CLASS_NAME);
    checkTensor(CLASS_NAME, 'sample', sample);
    checkTensor(CLASS_NAME, 'modelOutput', modelOutput, sample.shape);
    const trainSteps = this.config.num_train_timesteps;
    if (!Number.isSafeInteger(timestep) || timestep < 0 || timestep >= trainSteps) {
      throw new OptionError(
        `${CLASS_NAME}.step: timestep ${timestep} is not an integer in [0, ${trainSteps}).`,
      );
    }
    const index = this.#stepIndex.resolve(this.#timesteps, timestep);
    const prevTimestep = index + 1 < this.#timesteps.length ? this.#timesteps[index + 1] : timestep;
    const alphaProd = this.alphasCumprod[timestep];
    const alphaProdPrev = prevTimestep >= 0 ? this.alphasCumprod[prevTimestep] : this.finalAlphaCumprod;
    const sqrtAlpha = f32(Math.sqrt(alphaProd));
    const sqrtBeta = f32(Math.sqrt(f32(1 - alphaProd)));
    const { cSkip, cOut } = this.boundaryConditionScalings(timestep);

    const x = sample.data;
    const output = modelOutput.data;
    let predOriginal: Float32Array;
    const prediction = this.config.prediction_type;
    if (prediction === 'epsilon')
      predOriginal = x.map((v, i) => f32(v - f32(sqrtBeta * output[i])) / sqrtAlpha);
    else if (prediction === 'sample') predOriginal = output.slice();
    else predOriginal = x.map((v, i) => f32(sqrtAlpha * v) - f32(sqrtBeta * output[i]));
    if (this.config.thresholding) {
      const batch = sample.shape.length > 0 ? sample.shape[0] : 1;
      predOriginal = thresholdSample(
        predOriginal,
        batch,
        this.config.dynamic_thresholding_ratio,
        this.config.sample_max_value,
      );
    } else if (this.config.clip_sample) {
      const range = this.config.clip_sample_range;
      predOriginal = predOriginal.map((v) => Math.min(Math.max(v, -range), range));
    }

    const denoised = mixPerItem(predOriginal, x, 1, [[cOut, cSkip]]);
    let prevSample = denoised;
    // Every step but the last re-noises the estimate to the next timestep (multistep consistency sampling).
    if (index !== (this.#numInferenceSteps as number) - 1) {
      const noise = stepNoise(CLASS_NAME, options, modelOutput.shape);
      const sqrtAlphaPrev = f32(Math.sqrt(alphaProdPrev));
      const sqrtBetaPrev = f32(Math.sqrt(f32(1 - alphaProdPrev)));
      prevSample = mixPerItem(denoised, noise, 1, [[sqrtAlphaPrev, sqrtBetaPrev]]);
    }
    this.#stepIndex.current = index + 1;
    return { prevSample: withShape(prevSample, sample), predOriginalSample: withShape(denoised, sample) };
  }

  /** q(x_t | x_0) = sqrt(ᾱ_t)·x_0 + sqrt(1 − ᾱ_t)·ε. */
  addNoise(
    original: SchedulerTensor,
    noise: SchedulerTensor,
    timesteps: number | readonly number[],
  ): SchedulerTensor {
    return addNoiseWithAlphasCumprod(CLASS_NAME, this.alphasCumprod, original, noise, timesteps);
  }

  /** Whether the last setTimesteps used custom timesteps. */
  get customTimesteps(): boolean {
    return this.#customTimesteps;
  }
}
