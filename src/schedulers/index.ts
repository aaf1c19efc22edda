// Schedulers: plain TypeScript on Float32Array, configured from diffusers' scheduler_config.json.
export type {
  NoiseGenerator,
  Scheduler,
  SchedulerTensor,
  SetTimestepsOptions,
  StepOptions,
  StepOutput,
  TimestepDtype,
} from './scheduler.js';
export type { ConfigInput, SchedulerConfigInput } from './config.js';
export { parsePythonJson } from './config.js';
export {
  DDIMScheduler,
  type DDIMSchedulerConfig,
  type PredictionType,
  type TimestepSpacing,
} from './ddim.js';
export {
  EulerDiscreteScheduler,
  type EulerDiscreteSchedulerConfig,
  type FinalSigmasType,
} from './euler-discrete.js';
export {
  EulerAncestralDiscreteScheduler,
  type EulerAncestralDiscreteSchedulerConfig,
} from './euler-ancestral-discrete.js';
export {
  DPMSolverMultistepScheduler,
  type DPMAlgorithmType,
  type DPMSolverMultistepSchedulerConfig,
} from './dpm-solver-multistep.js';
export {
  calculateShift,
  FlowMatchEulerDiscreteScheduler,
  type FlowMatchEulerDiscreteSchedulerConfig,
} from './flow-match-euler-discrete.js';
export {
  FlashFlowMatchEulerDiscreteScheduler,
  type FlashFlowMatchEulerDiscreteSchedulerConfig,
} from './flash-flow-match-euler-discrete.js';
export { LCMScheduler, type LCMSchedulerConfig } from './lcm.js';
export {
  schedulerFromConfig,
  SCHEDULER_CLASSES,
  SCHEDULER_NAMES,
  type AnyScheduler,
  type SchedulerClassName,
} from './from-config.js';
export type { BetaSchedule } from './betas.js';
