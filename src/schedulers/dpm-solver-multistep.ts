/**
 * Multistep DPM-Solver (Lu et al. 2022, "DPM-Solver: A Fast ODE Solver…", and "DPM-Solver++: Fast
 * Solver for Guided Sampling…") of order 1–3, with the SDE variants, as diffusers'
 * `DPMSolverMultistepScheduler`. Each update is diffusers' formula term by term, with every float32
 * tensor operation rounded (`f32`) as torch computes it.
 */
import { OptionError } from '../errors.js';
import { alphasCumprodFromBetas, betasFromConfig, readBetaConfig, type BetaConfig } from './betas.js';
import { ConfigReader, type ConfigInput } from './config.js';
import { TIMESTEP_SPACINGS, type TimestepSpacing } from './ddim.js';
import { FINAL_SIGMAS_TYPES, type FinalSigmasType } from './euler-discrete.js';
import {
  arange,
  f32,
  interpAtIntegers,
  linspace,
  roundHalfEven,
  searchSortedLeft,
  torchExpFloat32,
} from './numerics.js';
import {
  checkSetTimestepsOptions,
  checkTensor,
  notReady,
  stepNoise,
  type Scheduler,
  type SchedulerTensor,
  type SetTimestepsOptions,
  type StepOptions,
  type StepOutput,
} from './scheduler.js';
import {
  logFloat32,
  luLambdas,
  readSigmaRespacing,
  respaceSigmas,
  sigmasFromAlphasCumprod,
  sigmaToT,
  type SigmaRespacing,
} from './sigma-schedules.js';
import { StepIndex, withShape } from './sigma-steps.js';
import { thresholdSample } from './thresholding.js';

export const DPM_ALGORITHM_TYPES = ['dpmsolver', 'dpmsolver++', 'sde-dpmsolver', 'sde-dpmsolver++'] as const;
export type DPMAlgorithmType = (typeof DPM_ALGORITHM_TYPES)[number];
export const DPM_PREDICTION_TYPES = ['epsilon', 'sample', 'v_prediction', 'flow_prediction'] as const;

export interface DPMSolverMultistepSchedulerConfig extends BetaConfig {
  solver_order: number;
  prediction_type: (typeof DPM_PREDICTION_TYPES)[number];
  thresholding: boolean;
  dynamic_thresholding_ratio: number;
  sample_max_value: number;
  algorithm_type: DPMAlgorithmType;
  solver_type: 'midpoint' | 'heun';
  lower_order_final: boolean;
  euler_at_final: boolean;
  use_karras_sigmas: boolean;
  use_exponential_sigmas: boolean;
  use_beta_sigmas: boolean;
  use_lu_lambdas: boolean;
  use_flow_sigmas: boolean;
  flow_shift: number;
  final_sigmas_type: FinalSigmasType;
  lambda_min_clipped: number;
  variance_type: 'learned' | 'learned_range' | null;
  timestep_spacing: TimestepSpacing;
  steps_offset: number;
  use_dynamic_shifting: boolean;
  time_shift_type: 'exponential';
}

const CLASS_NAME = 'DPMSolverMultistepScheduler';

/** Σ c_k·x_k evaluated left to right, each product and partial sum rounded to float32, as torch evaluates `c0 * x0 + c1 * x1 + …`. */
function combine(terms: readonly (readonly [number, Float32Array])[]): Float32Array {
  const [[c0, x0], ...rest] = terms;
  const out = x0.map((v) => c0 * v);
  for (const [c, x] of rest) for (let i = 0; i < out.length; i++) out[i] += f32(c * x[i]);
  return out;
}

/** c·(a − b) elementwise in float32: the divided differences D1 of the multistep updates. */
function scaledDifference(c: number, a: Float32Array, b: Float32Array): Float32Array {
  return a.map((v, i) => c * f32(v - b[i]));
}

/** (α_t, σ_t) of a noise level σ: VP (α = 1/sqrt(σ² + 1), σ_t = σ·α) or flow matching (α = 1 − σ, σ_t = σ). */
interface AlphaSigma {
  readonly alpha: number;
  readonly sigma: number;
  /** λ = log α − log σ, the half log-SNR the solver steps in. */
  readonly lambda: number;
}

export class DPMSolverMultistepScheduler implements Scheduler {
  readonly config: Readonly<DPMSolverMultistepSchedulerConfig>;
  /** Diffusers' class attribute: one model evaluation per timestep. */
  readonly order = 1;
  readonly timestepDtype = 'int64';
  readonly initNoiseSigma = 1;
  readonly betas: Float32Array;
  readonly alphasCumprod: Float32Array;
  readonly #respacing: SigmaRespacing | null;
  /** λ_t of every training timestep, float32. */
  readonly #trainLambdas: Float32Array;
  readonly #trainSigmas: Float32Array;
  #flowShift: number;
  #timesteps: number[];
  #sigmas: Float32Array;
  #numInferenceSteps: number | undefined;
  readonly #stepIndex = new StepIndex(CLASS_NAME, 'last');
  /** The last `solver_order` converted model outputs, oldest first. */
  #modelOutputs: (Float32Array | undefined)[];
  #lowerOrderNums = 0;

  constructor(config: ConfigInput<DPMSolverMultistepSchedulerConfig> = {}) {
    const reader = new ConfigReader(CLASS_NAME, config);
    const respacing = readSigmaRespacing(reader);
    this.config = Object.freeze({
      ...readBetaConfig(reader, { beta_start: 0.0001, beta_end: 0.02, beta_schedule: 'linear' }),
      solver_order: reader.integer('solver_order', 2, 1),
      prediction_type: reader.oneOf('prediction_type', DPM_PREDICTION_TYPES, 'epsilon'),
      thresholding: reader.boolean('thresholding', false),
      dynamic_thresholding_ratio: reader.number('dynamic_thresholding_ratio', 0.995),
      sample_max_value: reader.number('sample_max_value', 1.0),
      // diffusers rewrites DEIS and UniPC names to their DPM-Solver equivalents.
      algorithm_type: reader.oneOf('algorithm_type', DPM_ALGORITHM_TYPES, 'dpmsolver++', {
        deis: 'dpmsolver++',
      }),
      solver_type: reader.oneOf('solver_type', ['midpoint', 'heun'] as const, 'midpoint', {
        logrho: 'midpoint',
        bh1: 'midpoint',
        bh2: 'midpoint',
      }),
      lower_order_final: reader.boolean('lower_order_final', true),
      euler_at_final: reader.boolean('euler_at_final', false),
      use_karras_sigmas: respacing.use_karras_sigmas,
      use_exponential_sigmas: respacing.use_exponential_sigmas,
      use_beta_sigmas: respacing.use_beta_sigmas,
      use_lu_lambdas: reader.boolean('use_lu_lambdas', false),
      use_flow_sigmas: reader.boolean('use_flow_sigmas', false),
      flow_shift: reader.positiveNumber('flow_shift', 1.0),
      final_sigmas_type: reader.oneOf('final_sigmas_type', FINAL_SIGMAS_TYPES, 'zero'),
      lambda_min_clipped: reader.number('lambda_min_clipped', -Infinity),
      variance_type: reader.nullableOneOf('variance_type', ['learned', 'learned_range'] as const),
      timestep_spacing: reader.oneOf('timestep_spacing', TIMESTEP_SPACINGS, 'linspace'),
      steps_offset: reader.integer('steps_offset', 0, 0),
      use_dynamic_shifting: reader.boolean('use_dynamic_shifting', false),
      time_shift_type: reader.oneOf('time_shift_type', ['exponential'] as const, 'exponential'),
    });
    const { algorithm_type: algorithm, final_sigmas_type: finalSigmas } = this.config;
    if (!algorithm.endsWith('++') && finalSigmas === 'zero') {
      throw reader.invalid(
        'final_sigmas_type',
        finalSigmas,
        `"sigma_min" with algorithm_type "${algorithm}"`,
      );
    }
    if (!algorithm.endsWith('++') && this.config.prediction_type === 'flow_prediction') {
      throw reader.invalid(
        'prediction_type',
        'flow_prediction',
        `"epsilon", "sample" or "v_prediction" with algorithm_type "${algorithm}"`,
      );
    }
    if (algorithm === 'sde-dpmsolver' && this.config.solver_order > 2) {
      throw reader.invalid(
        'solver_order',
        this.config.solver_order,
        '1 or 2 with algorithm_type "sde-dpmsolver" (diffusers has no third-order update for it)',
      );
    }
    this.#respacing = respacing.respacing;
    this.#flowShift = this.config.flow_shift;

    this.betas = betasFromConfig(this.config);
    this.alphasCumprod = alphasCumprodFromBetas(this.betas);
    // With zero terminal SNR ᾱ_T = 0 would make σ_T infinite; diffusers uses 2^-24 instead.
    if (this.config.rescale_betas_zero_snr) this.alphasCumprod[this.alphasCumprod.length - 1] = 2 ** -24;
    this.#trainLambdas = this.alphasCumprod.map((alphaBar) => {
      const alpha = f32(Math.sqrt(alphaBar));
      const sigma = f32(Math.sqrt(f32(1 - alphaBar)));
      return f32(Math.log(alpha)) - f32(Math.log(sigma));
    });
    this.#trainSigmas = sigmasFromAlphasCumprod(this.alphasCumprod);
    const trainSteps = this.config.num_train_timesteps;
    this.#timesteps = Array.from(linspace(0, trainSteps - 1, trainSteps), f32).reverse();
    this.#sigmas = this.#trainSigmas.slice();
    this.#modelOutputs = new Array<undefined>(this.config.solver_order).fill(undefined);
  }

  static fromConfig(
    config: ConfigInput<DPMSolverMultistepSchedulerConfig>,
    overrides: ConfigInput<DPMSolverMultistepSchedulerConfig> = {},
  ): DPMSolverMultistepScheduler {
    return new DPMSolverMultistepScheduler({ ...config, ...overrides });
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
    checkSetTimestepsOptions(CLASS_NAME, options, ['timesteps', 'mu']);
    const { timesteps: customTimesteps, mu } = options;
    if (mu !== undefined) {
      if (!this.config.use_dynamic_shifting) {
        throw new OptionError(
          `${CLASS_NAME}.setTimesteps: mu needs use_dynamic_shifting = true in the config.`,
        );
      }
      this.#flowShift = Math.exp(mu);
    }
    if ((numInferenceSteps === undefined) === (customTimesteps === undefined)) {
      throw new OptionError(
        `${CLASS_NAME}.setTimesteps: pass exactly one of numInferenceSteps or timesteps.`,
      );
    }
    const respacing = this.#respacing ?? (this.config.use_lu_lambdas ? 'lu_lambdas' : null);
    if (customTimesteps !== undefined && respacing !== null) {
      throw new OptionError(
        `${CLASS_NAME}.setTimesteps: custom timesteps cannot be used with use_${respacing}.`,
      );
    }
    const trainSteps = this.config.num_train_timesteps;
    const count = numInferenceSteps ?? (customTimesteps as readonly number[]).length;
    if (!Number.isSafeInteger(count) || count < 1 || count > trainSteps) {
      throw new OptionError(`${CLASS_NAME}.setTimesteps: expected 1 to ${trainSteps} steps, got ${count}.`);
    }

    let timesteps: number[];
    if (customTimesteps !== undefined) {
      timesteps = customTimesteps.map(Math.trunc);
    } else {
      // Timesteps whose λ is below lambda_min_clipped are left out (a cosine schedule's last steps).
      const clipped = searchSortedLeft(this.#trainLambdas.slice().reverse(), this.config.lambda_min_clipped);
      const lastTimestep = trainSteps - clipped;
      const spacing = this.config.timestep_spacing;
      if (spacing === 'linspace') {
        timesteps = Array.from(linspace(0, lastTimestep - 1, count + 1), roundHalfEven)
          .reverse()
          .slice(0, -1);
      } else if (spacing === 'leading') {
        const stepRatio = Math.floor(lastTimestep / (count + 1));
        timesteps = Array.from(
          { length: count },
          (_, i) => (count - i) * stepRatio + this.config.steps_offset,
        );
      } else {
        timesteps = Array.from(arange(lastTimestep, 0, -trainSteps / count), (t) => roundHalfEven(t) - 1);
      }
    }

    const logSigmas = logFloat32(this.#trainSigmas);
    // Respaced schedules map their σ back to training timesteps; diffusers rounds them except for
    // the exponential and beta respacings and the cosine schedule, whose timesteps it truncates.
    const roundT = (sigma: number): number => {
      const t = sigmaToT(sigma, logSigmas);
      return this.config.beta_schedule === 'squaredcos_cap_v2' ? t : roundHalfEven(t);
    };
    let levels: ArrayLike<number>;
    if (this.#respacing !== null && customTimesteps === undefined) {
      const sigmaMin = this.#trainSigmas[0];
      const sigmaMax = this.#trainSigmas[this.#trainSigmas.length - 1];
      levels = respaceSigmas(this.#respacing, sigmaMin, sigmaMax, count);
      timesteps = Array.from(
        levels,
        this.#respacing === 'karras' ? roundT : (s: number) => sigmaToT(s, logSigmas),
      );
    } else if (this.config.use_lu_lambdas) {
      levels = luLambdas(logSigmas[0], logSigmas[logSigmas.length - 1], count).map(Math.exp);
      timesteps = Array.from(levels, roundT);
    } else if (this.config.use_flow_sigmas) {
      const shift = this.#flowShift;
      const flowSigmas = linspace(1, 1 / trainSteps, count + 1)
        .map((alpha) => 1 - alpha)
        .map((sigma) => (shift * sigma) / (1 + (shift - 1) * sigma))
        .reverse()
        .slice(0, -1);
      levels = flowSigmas;
      timesteps = Array.from(flowSigmas, (sigma) => sigma * trainSteps);
    } else {
      levels = timesteps.map((t) => interpAtIntegers(t, this.#trainSigmas));
    }

    this.#sigmas = Float32Array.of(...Array.from(levels), this.#finalSigma());
    // torch's .to(int64) truncates toward zero.
    this.#timesteps = timesteps.map(Math.trunc);
    this.#numInferenceSteps = this.#timesteps.length;
    this.#modelOutputs = new Array<undefined>(this.config.solver_order).fill(undefined);
    this.#lowerOrderNums = 0;
    this.#stepIndex.reset();
  }

  #finalSigma(): number {
    if (this.config.final_sigmas_type === 'zero') return 0;
    const alphaBar = this.alphasCumprod[0];
    return f32(Math.sqrt(f32(f32(1 - alphaBar) / alphaBar)));
  }

  #alphaSigma(sigma: number): AlphaSigma {
    let alpha: number;
    let sigmaT: number;
    if (this.config.use_flow_sigmas) {
      alpha = f32(1 - sigma);
      sigmaT = sigma;
    } else {
      alpha = f32(1 / f32(Math.sqrt(f32(f32(sigma * sigma) + 1))));
      sigmaT = f32(sigma * alpha);
    }
    return { alpha, sigma: sigmaT, lambda: f32(f32(Math.log(alpha)) - f32(Math.log(sigmaT))) };
  }

  /** DPM-Solver has no input scaling. */
  scaleModelInput(sample: SchedulerTensor, _timestep?: number): SchedulerTensor {
    return sample;
  }

  /**
   * The model output in the form the algorithm integrates: x̂0 for DPM-Solver++ (data prediction),
   * ε for DPM-Solver (noise prediction); optionally thresholded.
   */
  #convertModelOutput(output: Float32Array, x: Float32Array, batch: number, index: number): Float32Array {
    const { prediction_type: prediction, thresholding } = this.config;
    const { alpha, sigma } = this.#alphaSigma(this.#sigmas[index]);
    const threshold = (x0: Float32Array): Float32Array =>
      thresholdSample(x0, batch, this.config.dynamic_thresholding_ratio, this.config.sample_max_value);
    if (this.config.algorithm_type.endsWith('++')) {
      let x0: Float32Array;
      if (prediction === 'epsilon') x0 = x.map((v, i) => f32(v - f32(sigma * output[i])) / alpha);
      else if (prediction === 'sample') x0 = output.slice();
      else if (prediction === 'v_prediction') x0 = x.map((v, i) => f32(alpha * v) - f32(sigma * output[i]));
      else x0 = x.map((v, i) => v - f32(this.#sigmas[index] * output[i]));
      return thresholding ? threshold(x0) : x0;
    }
    let epsilon: Float32Array;
    if (prediction === 'epsilon') epsilon = output.slice();
    else if (prediction === 'sample') epsilon = x.map((v, i) => f32(v - f32(alpha * output[i])) / sigma);
    else epsilon = output.map((v, i) => f32(alpha * v) + f32(sigma * x[i]));
    if (!thresholding) return epsilon;
    const x0 = threshold(x.map((v, i) => f32(v - f32(sigma * epsilon[i])) / alpha));
    return x.map((v, i) => f32(v - f32(alpha * x0[i])) / sigma);
  }

  step(
    modelOutput: SchedulerTensor,
    timestep: number,
    sample: SchedulerTensor,
    options: StepOptions = {},
  ): StepOutput {
    if (this.#numInferenceSteps === undefined) throw notReady(CLASS_NAME);
    checkTensor(CLASS_NAME, 'sample', sample);
    const output = this.#epsilonChannels(modelOutput, sample);
    const index = this.#stepIndex.resolve(this.#timesteps, timestep);
    const stepCount = this.#timesteps.length;
    if (index >= stepCount)
      throw new OptionError(`${CLASS_NAME}.step: all ${stepCount} steps are done; call setTimesteps again.`);
    const { solver_order: solverOrder, lower_order_final: lowerOrderFinalConfig } = this.config;
    // Few-step schedules finish with lower orders, which is more stable (DPM-Solver++ §5).
    const lowerOrderFinal =
      index === stepCount - 1 &&
      (this.config.euler_at_final ||
        (lowerOrderFinalConfig && stepCount < 15) ||
        this.config.final_sigmas_type === 'zero');
    const lowerOrderSecond = index === stepCount - 2 && lowerOrderFinalConfig && stepCount < 15;

    const batch = sample.shape.length > 0 ? sample.shape[0] : 1;
    const converted = this.#convertModelOutput(output, sample.data, batch, index);
    this.#modelOutputs.shift();
    this.#modelOutputs.push(converted);
    const noise = this.config.algorithm_type.startsWith('sde-')
      ? stepNoise(CLASS_NAME, options, sample.shape)
      : undefined;

    let prevSample: Float32Array;
    if (solverOrder === 1 || this.#lowerOrderNums < 1 || lowerOrderFinal) {
      prevSample = this.#firstOrderUpdate(converted, sample.data, index, noise);
    } else if (solverOrder === 2 || this.#lowerOrderNums < 2 || lowerOrderSecond) {
      prevSample = this.#secondOrderUpdate(sample.data, index, noise);
    } else {
      prevSample = this.#thirdOrderUpdate(sample.data, index, noise);
    }
    if (this.#lowerOrderNums < solverOrder) this.#lowerOrderNums += 1;
    this.#stepIndex.current = index + 1;
    return {
      prevSample: withShape(prevSample, sample),
      predOriginalSample: withShape(this.#predOriginal(converted, sample.data, index), sample),
    };
  }

  /** The model output to use: with a learned variance, diffusers keeps only the first 3 channels (ε). */
  #epsilonChannels(modelOutput: SchedulerTensor, sample: SchedulerTensor): Float32Array {
    const learned = this.config.variance_type !== null && this.config.prediction_type === 'epsilon';
    if (!learned) {
      checkTensor(CLASS_NAME, 'modelOutput', modelOutput, sample.shape);
      return modelOutput.data;
    }
    checkTensor(CLASS_NAME, 'modelOutput', modelOutput);
    const [batch, channels, ...rest] = modelOutput.shape;
    const kept = [batch, Math.min(channels, 3), ...rest];
    const planeSize = rest.reduce((a, b) => a * b, 1);
    const data = new Float32Array(batch * kept[1] * planeSize);
    for (let b = 0; b < batch; b++) {
      const from = b * channels * planeSize;
      data.set(modelOutput.data.subarray(from, from + kept[1] * planeSize), b * kept[1] * planeSize);
    }
    checkTensor(
      CLASS_NAME,
      'modelOutput (first 3 channels, learned variance)',
      { data, shape: kept },
      sample.shape,
    );
    return data;
  }

  /** x̂0 of this step: the converted output for DPM-Solver++, recovered from ε for DPM-Solver. */
  #predOriginal(converted: Float32Array, x: Float32Array, index: number): Float32Array {
    if (this.config.algorithm_type.endsWith('++')) return converted.slice();
    const { alpha, sigma } = this.#alphaSigma(this.#sigmas[index]);
    return x.map((v, i) => f32(v - f32(sigma * converted[i])) / alpha);
  }

  #firstOrderUpdate(
    output: Float32Array,
    x: Float32Array,
    index: number,
    noise: Float32Array | undefined,
  ): Float32Array {
    const t = this.#alphaSigma(this.#sigmas[index + 1]);
    const s = this.#alphaSigma(this.#sigmas[index]);
    const h = f32(t.lambda - s.lambda);
    const expMinusH = torchExpFloat32(-h);
    const expH = torchExpFloat32(h);
    switch (this.config.algorithm_type) {
      case 'dpmsolver++':
        return combine([
          [f32(t.sigma / s.sigma), x],
          [-f32(t.alpha * f32(expMinusH - 1)), output],
        ]);
      case 'dpmsolver':
        return combine([
          [f32(t.alpha / s.alpha), x],
          [-f32(t.sigma * f32(expH - 1)), output],
        ]);
      case 'sde-dpmsolver++': {
        const expMinus2H = torchExpFloat32(f32(-2 * h));
        return combine([
          [f32(f32(t.sigma / s.sigma) * expMinusH), x],
          [f32(t.alpha * f32(1 - expMinus2H)), output],
          [f32(t.sigma * f32(Math.sqrt(f32(1 - expMinus2H)))), noise as Float32Array],
        ]);
      }
      case 'sde-dpmsolver':
        return combine([
          [f32(t.alpha / s.alpha), x],
          [-2 * f32(t.sigma * f32(expH - 1)), output],
          [f32(t.sigma * f32(Math.sqrt(f32(torchExpFloat32(f32(2 * h)) - 1)))), noise as Float32Array],
        ]);
    }
  }

  #secondOrderUpdate(x: Float32Array, index: number, noise: Float32Array | undefined): Float32Array {
    const t = this.#alphaSigma(this.#sigmas[index + 1]);
    const s0 = this.#alphaSigma(this.#sigmas[index]);
    const s1 = this.#alphaSigma(this.#sigmas[index - 1]);
    const [m1, m0] = this.#modelOutputs.slice(-2) as Float32Array[];
    const h = f32(t.lambda - s0.lambda);
    const h0 = f32(s0.lambda - s1.lambda);
    const r0 = f32(h0 / h);
    const d0 = m0;
    const d1 = scaledDifference(f32(1 / r0), m0, m1);
    const heun = this.config.solver_type === 'heun';
    const expMinusH = torchExpFloat32(-h);
    const expH = torchExpFloat32(h);
    switch (this.config.algorithm_type) {
      case 'dpmsolver++': {
        const c = f32(t.alpha * f32(expMinusH - 1));
        return combine([
          [f32(t.sigma / s0.sigma), x],
          [-c, d0],
          heun ? [f32(t.alpha * f32(f32(f32(expMinusH - 1) / h) + 1)), d1] : [-f32(0.5 * c), d1],
        ]);
      }
      case 'dpmsolver': {
        const c = f32(t.sigma * f32(expH - 1));
        return combine([
          [f32(t.alpha / s0.alpha), x],
          [-c, d0],
          heun ? [-f32(t.sigma * f32(f32(f32(expH - 1) / h) - 1)), d1] : [-f32(0.5 * c), d1],
        ]);
      }
      case 'sde-dpmsolver++': {
        const expMinus2H = torchExpFloat32(f32(-2 * h));
        const c = f32(t.alpha * f32(1 - expMinus2H));
        return combine([
          [f32(f32(t.sigma / s0.sigma) * expMinusH), x],
          [c, d0],
          heun ? [f32(t.alpha * f32(f32(f32(1 - expMinus2H) / f32(-2 * h)) + 1)), d1] : [f32(0.5 * c), d1],
          [f32(t.sigma * f32(Math.sqrt(f32(1 - expMinus2H)))), noise as Float32Array],
        ]);
      }
      case 'sde-dpmsolver': {
        const c = f32(t.sigma * f32(expH - 1));
        return combine([
          [f32(t.alpha / s0.alpha), x],
          [-2 * c, d0],
          heun ? [-2 * f32(t.sigma * f32(f32(f32(expH - 1) / h) - 1)), d1] : [-c, d1],
          [f32(t.sigma * f32(Math.sqrt(f32(torchExpFloat32(f32(2 * h)) - 1)))), noise as Float32Array],
        ]);
      }
    }
  }

  #thirdOrderUpdate(x: Float32Array, index: number, noise: Float32Array | undefined): Float32Array {
    const t = this.#alphaSigma(this.#sigmas[index + 1]);
    const s0 = this.#alphaSigma(this.#sigmas[index]);
    const s1 = this.#alphaSigma(this.#sigmas[index - 1]);
    const s2 = this.#alphaSigma(this.#sigmas[index - 2]);
    const [m2, m1, m0] = this.#modelOutputs.slice(-3) as Float32Array[];
    const h = f32(t.lambda - s0.lambda);
    const h0 = f32(s0.lambda - s1.lambda);
    const h1 = f32(s1.lambda - s2.lambda);
    const r0 = f32(h0 / h);
    const r1 = f32(h1 / h);
    const d1First = scaledDifference(f32(1 / r0), m0, m1);
    const d1Second = scaledDifference(f32(1 / r1), m1, m2);
    const rSum = f32(r0 + r1);
    const d1 = combine([
      [1, d1First],
      [f32(r0 / rSum), d1First.map((v, i) => v - d1Second[i])],
    ]);
    const d2 = scaledDifference(f32(1 / rSum), d1First, d1Second);
    const hSquared = f32(h * h);
    switch (this.config.algorithm_type) {
      case 'dpmsolver++': {
        const expMinusHMinusOne = f32(torchExpFloat32(-h) - 1);
        return combine([
          [f32(t.sigma / s0.sigma), x],
          [-f32(t.alpha * expMinusHMinusOne), m0],
          [f32(t.alpha * f32(f32(expMinusHMinusOne / h) + 1)), d1],
          [-f32(t.alpha * f32(f32(f32(expMinusHMinusOne + h) / hSquared) - 0.5)), d2],
        ]);
      }
      case 'dpmsolver': {
        const expHMinusOne = f32(torchExpFloat32(h) - 1);
        return combine([
          [f32(t.alpha / s0.alpha), x],
          [-f32(t.sigma * expHMinusOne), m0],
          [-f32(t.sigma * f32(f32(expHMinusOne / h) - 1)), d1],
          [-f32(t.sigma * f32(f32(f32(expHMinusOne - h) / hSquared) - 0.5)), d2],
        ]);
      }
      case 'sde-dpmsolver++': {
        const oneMinusExpMinus2H = f32(1 - torchExpFloat32(f32(-2 * h)));
        const twoH = f32(2 * h);
        return combine([
          [f32(f32(t.sigma / s0.sigma) * torchExpFloat32(-h)), x],
          [f32(t.alpha * oneMinusExpMinus2H), m0],
          [f32(t.alpha * f32(f32(oneMinusExpMinus2H / -twoH) + 1)), d1],
          [f32(t.alpha * f32(f32(f32(oneMinusExpMinus2H - twoH) / f32(twoH * twoH)) - 0.5)), d2],
          [f32(t.sigma * f32(Math.sqrt(oneMinusExpMinus2H))), noise as Float32Array],
        ]);
      }
      case 'sde-dpmsolver':
        throw new OptionError(`${CLASS_NAME}: sde-dpmsolver has no third-order update.`);
    }
  }

  /** α_t·x_0 + σ_t·ε at the noise level of each timestep. */
  addNoise(
    original: SchedulerTensor,
    noise: SchedulerTensor,
    timesteps: number | readonly number[],
  ): SchedulerTensor {
    checkTensor(CLASS_NAME, 'original', original);
    checkTensor(CLASS_NAME, 'noise', noise, original.shape);
    const indices = this.#stepIndex.forAddNoise(this.#timesteps, timesteps, original.shape);
    const out = new Float32Array(original.data.length);
    const itemSize = out.length / indices.length;
    indices.forEach((sigmaIndex, item) => {
      const { alpha, sigma } = this.#alphaSigma(this.#sigmas[sigmaIndex]);
      for (let i = item * itemSize; i < (item + 1) * itemSize; i++) {
        out[i] = f32(alpha * original.data[i]) + f32(sigma * noise.data[i]);
      }
    });
    return withShape(out, original);
  }
}
