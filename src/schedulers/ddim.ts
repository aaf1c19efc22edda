/**
 * DDIM (Song et al. 2021, "Denoising Diffusion Implicit Models"), as diffusers' `DDIMScheduler`.
 * Arithmetic follows diffusers' float32 tensor ops one by one (`f32` after each), so results match
 * it to the last bit or two.
 */
import { OptionError } from '../errors.js';
import { alphasCumprodFromBetas, betasFromConfig, readBetaConfig, type BetaConfig } from './betas.js';
import { ConfigReader, type ConfigInput } from './config.js';
import { arange, f32, linspace, roundHalfEven } from './numerics.js';
import {
  checkSetTimestepsOptions,
  checkStepCount,
  checkTensor,
  mixPerItem,
  notReady,
  stepNoise,
  timestepsPerItem,
  type Scheduler,
  type SchedulerTensor,
  type SetTimestepsOptions,
  type StepOptions,
  type StepOutput,
} from './scheduler.js';
import { thresholdSample } from './thresholding.js';

export const PREDICTION_TYPES = ['epsilon', 'sample', 'v_prediction'] as const;
export type PredictionType = (typeof PREDICTION_TYPES)[number];
export const TIMESTEP_SPACINGS = ['linspace', 'leading', 'trailing'] as const;
export type TimestepSpacing = (typeof TIMESTEP_SPACINGS)[number];

export interface DDIMSchedulerConfig extends BetaConfig {
  clip_sample: boolean;
  set_alpha_to_one: boolean;
  steps_offset: number;
  prediction_type: PredictionType;
  thresholding: boolean;
  dynamic_thresholding_ratio: number;
  clip_sample_range: number;
  sample_max_value: number;
  timestep_spacing: TimestepSpacing;
}

const CLASS_NAME = 'DDIMScheduler';

export class DDIMScheduler implements Scheduler {
  readonly config: Readonly<DDIMSchedulerConfig>;
  readonly order = 1;
  readonly timestepDtype = 'int64';
  readonly initNoiseSigma = 1;
  readonly betas: Float32Array;
  readonly alphasCumprod: Float32Array;
  /** ᾱ used after the last step: 1, or ᾱ_0 when `set_alpha_to_one` is false. */
  readonly finalAlphaCumprod: number;
  #timesteps: number[];
  #numInferenceSteps: number | undefined;

  constructor(config: ConfigInput<DDIMSchedulerConfig> = {}) {
    const reader = new ConfigReader(CLASS_NAME, config);
    this.config = Object.freeze({
      ...readBetaConfig(reader, { beta_start: 0.0001, beta_end: 0.02, beta_schedule: 'linear' }),
      clip_sample: reader.boolean('clip_sample', true),
      set_alpha_to_one: reader.boolean('set_alpha_to_one', true),
      steps_offset: reader.integer('steps_offset', 0, 0),
      prediction_type: reader.oneOf('prediction_type', PREDICTION_TYPES, 'epsilon'),
      thresholding: reader.boolean('thresholding', false),
      dynamic_thresholding_ratio: reader.number('dynamic_thresholding_ratio', 0.995),
      clip_sample_range: reader.number('clip_sample_range', 1.0),
      sample_max_value: reader.number('sample_max_value', 1.0),
      timestep_spacing: reader.oneOf('timestep_spacing', TIMESTEP_SPACINGS, 'leading'),
    });
    this.betas = betasFromConfig(this.config);
    this.alphasCumprod = alphasCumprodFromBetas(this.betas);
    this.finalAlphaCumprod = this.config.set_alpha_to_one ? 1 : this.alphasCumprod[0];
    this.#timesteps = Array.from(
      { length: this.config.num_train_timesteps },
      (_, i) => this.config.num_train_timesteps - 1 - i,
    );
  }

  static fromConfig(
    config: ConfigInput<DDIMSchedulerConfig>,
    overrides: ConfigInput<DDIMSchedulerConfig> = {},
  ): DDIMScheduler {
    return new DDIMScheduler({ ...config, ...overrides });
  }

  get timesteps(): readonly number[] {
    return this.#timesteps;
  }

  get numInferenceSteps(): number | undefined {
    return this.#numInferenceSteps;
  }

  setTimesteps(numInferenceSteps?: number, options: SetTimestepsOptions = {}): void {
    checkSetTimestepsOptions(CLASS_NAME, options, []);
    const trainSteps = this.config.num_train_timesteps;
    const count = checkStepCount(CLASS_NAME, numInferenceSteps, trainSteps);
    let timesteps: number[];
    // The spacings of Lin et al. 2023, Table 2.
    if (this.config.timestep_spacing === 'linspace') {
      timesteps = Array.from(linspace(0, trainSteps - 1, count), roundHalfEven).reverse();
    } else if (this.config.timestep_spacing === 'leading') {
      const stepRatio = Math.floor(trainSteps / count);
      timesteps = Array.from(
        { length: count },
        (_, i) => (count - 1 - i) * stepRatio + this.config.steps_offset,
      );
    } else {
      timesteps = Array.from(arange(trainSteps, 0, -trainSteps / count), (t) => roundHalfEven(t) - 1);
    }
    this.#timesteps = timesteps;
    this.#numInferenceSteps = count;
  }

  /** DDIM does not scale the model input. */
  scaleModelInput(sample: SchedulerTensor, _timestep?: number): SchedulerTensor {
    return sample;
  }

  #alphaCumprodAt(timestep: number): number {
    return timestep >= 0 ? this.alphasCumprod[timestep] : this.finalAlphaCumprod;
  }

  /** σ_t(η)² / η² = (1 − ᾱ_prev)/(1 − ᾱ_t) · (1 − ᾱ_t/ᾱ_prev), DDIM eq. 16. */
  #variance(timestep: number, prevTimestep: number): number {
    const alphaProd = this.alphasCumprod[timestep];
    const alphaProdPrev = this.#alphaCumprodAt(prevTimestep);
    return f32(f32(f32(1 - alphaProdPrev) / f32(1 - alphaProd)) * f32(1 - f32(alphaProd / alphaProdPrev)));
  }

  step(
    modelOutput: SchedulerTensor,
    timestep: number,
    sample: SchedulerTensor,
    options: StepOptions = {},
  ): StepOutput {
    const count = this.#numInferenceSteps;
    if (count === undefined) throw notReady(CLASS_NAME);
    checkTensor(CLASS_NAME, 'sample', sample);
    checkTensor(CLASS_NAME, 'modelOutput', modelOutput, sample.shape);
    const trainSteps = this.config.num_train_timesteps;
    if (!Number.isSafeInteger(timestep) || timestep < 0 || timestep >= trainSteps) {
      throw new OptionError(
        `${CLASS_NAME}.step: timestep ${timestep} is not an integer in [0, ${trainSteps}).`,
      );
    }
    const eta = options.eta ?? 0;
    const x = sample.data;
    const output = modelOutput.data;
    const n = x.length;

    // DDIM eq. 12; `prevTimestep` may be negative on the last step.
    const prevTimestep = timestep - Math.floor(trainSteps / count);
    const alphaProd = this.alphasCumprod[timestep];
    const alphaProdPrev = this.#alphaCumprodAt(prevTimestep);
    const betaProd = f32(1 - alphaProd);
    const sqrtAlpha = f32(Math.sqrt(alphaProd));
    const sqrtBeta = f32(Math.sqrt(betaProd));

    let predOriginal: Float32Array = new Float32Array(n);
    let predEpsilon: Float32Array = new Float32Array(n);
    const prediction = this.config.prediction_type;
    for (let i = 0; i < n; i++) {
      if (prediction === 'epsilon') {
        predOriginal[i] = f32(x[i] - f32(sqrtBeta * output[i])) / sqrtAlpha;
        predEpsilon[i] = output[i];
      } else if (prediction === 'sample') {
        predOriginal[i] = output[i];
        predEpsilon[i] = f32(x[i] - f32(sqrtAlpha * output[i])) / sqrtBeta;
      } else {
        predOriginal[i] = f32(sqrtAlpha * x[i]) - f32(sqrtBeta * output[i]);
        predEpsilon[i] = f32(sqrtAlpha * output[i]) + f32(sqrtBeta * x[i]);
      }
    }

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

    const stdDev = f32(eta * f32(Math.sqrt(this.#variance(timestep, prevTimestep))));
    if (options.useClippedModelOutput === true) {
      // Glide re-derives ε from the clipped x̂0.
      predEpsilon = predEpsilon.map((_, i) => f32(x[i] - f32(sqrtAlpha * predOriginal[i])) / sqrtBeta);
    }
    const directionScale = f32(Math.sqrt(f32(f32(1 - alphaProdPrev) - f32(stdDev * stdDev))));
    const sqrtAlphaPrev = f32(Math.sqrt(alphaProdPrev));
    let prevSample: Float32Array = mixPerItem(predOriginal, predEpsilon, 1, [
      [sqrtAlphaPrev, directionScale],
    ]);
    if (eta > 0) {
      const noise = stepNoise(CLASS_NAME, options, modelOutput.shape);
      prevSample = prevSample.map((v, i) => v + f32(stdDev * noise[i]));
    }
    return {
      prevSample: { data: prevSample, shape: [...sample.shape] },
      predOriginalSample: { data: predOriginal, shape: [...sample.shape] },
    };
  }

  addNoise(
    original: SchedulerTensor,
    noise: SchedulerTensor,
    timesteps: number | readonly number[],
  ): SchedulerTensor {
    return addNoiseWithAlphasCumprod(CLASS_NAME, this.alphasCumprod, original, noise, timesteps);
  }
}

/** q(x_t | x_0) = sqrt(ᾱ_t)·x_0 + sqrt(1 − ᾱ_t)·ε, with integer training timesteps (DDPM eq. 4). */
export function addNoiseWithAlphasCumprod(
  className: string,
  alphasCumprod: Float32Array,
  original: SchedulerTensor,
  noise: SchedulerTensor,
  timesteps: number | readonly number[],
): SchedulerTensor {
  checkTensor(className, 'original', original);
  checkTensor(className, 'noise', noise, original.shape);
  const perItem = timestepsPerItem(className, timesteps, original.shape);
  const coefficients = perItem.map((t): [number, number] => {
    if (!Number.isSafeInteger(t) || t < 0 || t >= alphasCumprod.length) {
      throw new OptionError(
        `${className}.addNoise: timestep ${t} is not an integer in [0, ${alphasCumprod.length}).`,
      );
    }
    const alphaBar = alphasCumprod[t];
    return [f32(Math.sqrt(alphaBar)), f32(Math.sqrt(f32(1 - alphaBar)))];
  });
  return {
    data: mixPerItem(original.data, noise.data, perItem.length, coefficients),
    shape: [...original.shape],
  };
}
