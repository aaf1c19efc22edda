/**
 * Flash Diffusion's SD3 sampler (methods/tgate_flash.md §2.5, "SD3 sampler"): the
 * `FlashFlowMatchEulerDiscreteScheduler` of the initml/diffusers fork, which jasperai/flash-sd3 is
 * sampled with. The fork subclasses FlowMatchEulerDiscreteScheduler of its time, so the timesteps
 * are that class's without dynamic shifting — σ from linspace(σmax·T, σmin·T, n)/T shifted again by
 * `shift` (σmax, σmin being the ends of the already shifted training table), t = σ·T — and only the
 * step differs: x̂0 = x − σ_i·v, re-noised to the next level with fresh noise, LCM-style, and x̂0
 * itself at the last step.
 */
import { ConfigReader, type ConfigInput } from './config.js';
import { FlowMatchEulerDiscreteScheduler } from './flow-match-euler-discrete.js';
import { f32 } from './numerics.js';
import {
  checkSetTimestepsOptions,
  checkStepCount,
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

/**
 * The keys the fork's class takes. Other keys of an SD3 scheduler config (use_dynamic_shifting,
 * use_karras_sigmas, …) are ignored, as diffusers' from_config ignores keys a class does not know:
 * the fork's class was copied before they existed.
 */
export interface FlashFlowMatchEulerDiscreteSchedulerConfig {
  num_train_timesteps: number;
  shift: number;
}

const CLASS_NAME = 'FlashFlowMatchEulerDiscreteScheduler';

export class FlashFlowMatchEulerDiscreteScheduler implements Scheduler {
  readonly config: Readonly<FlashFlowMatchEulerDiscreteSchedulerConfig>;
  readonly order = 1;
  readonly timestepDtype = 'float32';
  readonly initNoiseSigma = 1;
  /** The σ schedule: the base class's, with only the keys the fork's class reads. */
  readonly #schedule: FlowMatchEulerDiscreteScheduler;
  readonly #stepIndex = new StepIndex(CLASS_NAME);

  constructor(config: ConfigInput<FlashFlowMatchEulerDiscreteSchedulerConfig> = {}) {
    const reader = new ConfigReader(CLASS_NAME, config);
    this.config = Object.freeze({
      num_train_timesteps: reader.integer('num_train_timesteps', 1000, 1),
      shift: reader.positiveNumber('shift', 1.0),
    });
    this.#schedule = new FlowMatchEulerDiscreteScheduler({ ...this.config });
  }

  static fromConfig(
    config: ConfigInput<FlashFlowMatchEulerDiscreteSchedulerConfig>,
    overrides: ConfigInput<FlashFlowMatchEulerDiscreteSchedulerConfig> = {},
  ): FlashFlowMatchEulerDiscreteScheduler {
    return new FlashFlowMatchEulerDiscreteScheduler({ ...config, ...overrides });
  }

  get timesteps(): readonly number[] {
    return this.#schedule.timesteps;
  }

  /** The noise level of each timestep, plus the final 0. */
  get sigmas(): Float32Array {
    return this.#schedule.sigmas;
  }

  get numInferenceSteps(): number | undefined {
    return this.#schedule.numInferenceSteps;
  }

  get stepIndex(): number | undefined {
    return this.#stepIndex.current;
  }

  setBeginIndex(beginIndex = 0): void {
    this.#stepIndex.begin = this.#stepIndex.checkBegin(beginIndex, this.timesteps.length);
    this.#schedule.setBeginIndex(beginIndex);
  }

  /** n steps of the fork's schedule; it takes no custom sigmas, timesteps or mu. */
  setTimesteps(numInferenceSteps?: number, options: SetTimestepsOptions = {}): void {
    checkSetTimestepsOptions(CLASS_NAME, options, []);
    const count = checkStepCount(CLASS_NAME, numInferenceSteps, this.config.num_train_timesteps);
    this.#schedule.setTimesteps(count);
    this.#stepIndex.reset();
  }

  /** Flow matching does not scale the model input. */
  scaleModelInput(sample: SchedulerTensor, _timestep?: number): SchedulerTensor {
    return sample;
  }

  /**
   * x̂0 = x − σ_i·v; then σ_{i+1}·ε + (1 − σ_{i+1})·x̂0 with fresh noise ε (`noise`, or drawn from
   * `generator`) before the last step, x̂0 at it (§2.5). Products and sums in float32, as torch.
   */
  step(
    modelOutput: SchedulerTensor,
    timestep: number,
    sample: SchedulerTensor,
    options: StepOptions = {},
  ): StepOutput {
    const count = this.numInferenceSteps;
    if (count === undefined) throw notReady(CLASS_NAME);
    checkTensor(CLASS_NAME, 'sample', sample);
    checkTensor(CLASS_NAME, 'modelOutput', modelOutput, sample.shape);
    const index = this.#stepIndex.resolve(this.timesteps, f32(timestep));
    const sigmas = this.sigmas;
    const sigma = sigmas[index];
    const velocity = modelOutput.data;
    const denoised = sample.data.map((x, i) => x - f32(velocity[i] * sigma));
    let prevSample: Float32Array = denoised;
    if (index + 1 < count) {
      const sigmaNext = sigmas[index + 1];
      const noise = stepNoise(CLASS_NAME, options, sample.shape);
      prevSample = mixPerItem(noise, denoised, 1, [[sigmaNext, f32(1 - sigmaNext)]]);
    }
    this.#stepIndex.current = index + 1;
    return { prevSample: withShape(prevSample, sample), predOriginalSample: withShape(denoised, sample) };
  }

  /** The forward process σ·ε + (1 − σ)·x_0 at each timestep's σ, as the base class's `scale_noise`. */
  addNoise(
    original: SchedulerTensor,
    noise: SchedulerTensor,
    timesteps: number | readonly number[],
  ): SchedulerTensor {
    return this.#schedule.addNoise(original, noise, timesteps);
  }
}
