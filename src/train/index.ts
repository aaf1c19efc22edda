// train/: optimizers, schedules, gradient clipping and accumulation, EMA, checkpoints, data sets.
export { AdamW, ADAMW_DEFAULTS } from './adamw.js';
export type { AdamWOptions } from './adamw.js';
export { Prodigy, PRODIGY_GLOBAL_DEFAULTS, PRODIGY_GROUP_DEFAULTS } from './prodigy.js';
export type {
  ProdigyEstimate,
  ProdigyGlobalOptions,
  ProdigyGroupOptions,
  ProdigyOptions,
} from './prodigy.js';
export { isBiasOrNorm, resolveGroups, weightDecayGroups } from './optimizer.js';
export type { Optimizer, OptimizerState, ParameterGroup, ResolvedGroup } from './optimizer.js';
export { constantWithWarmup, warmupCosine } from './lr-schedule.js';
export type { LrSchedule, WarmupCosineOptions, WarmupOptions } from './lr-schedule.js';
export { clipGradNorm, globalGradNorm, NonFiniteGradientError } from './grad-clip.js';
export type { ClipResult, NonFinitePolicy } from './grad-clip.js';
export { GradientAccumulator } from './grad-accumulation.js';
export type { AccumulationReduction } from './grad-accumulation.js';
export { EmaModel, EMA_DEFAULTS } from './ema.js';
export type { EmaOptions, EmaState, EmaWarmup } from './ema.js';
export { CheckpointManager } from './checkpoint.js';
export type {
  CheckpointEntry,
  CheckpointOptions,
  LoadedSnapshot,
  ResumeResult,
  SkippedCheckpoint,
  TrainingSnapshot,
} from './checkpoint.js';
export { StopRequest } from './stop-signal.js';
export type { StopSignalName } from './stop-signal.js';
export type { NamedArrays } from './named-arrays.js';
export type { JsonObject, JsonValue } from './json-value.js';
export * from './data/index.js';
