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
export { discoverParameterShapes, initParameters } from './parameters.js';
export type { InitOptions, InitRule } from './parameters.js';
export { saveModelFolder, DIFFUSERS_VERSION, TRANSFORMERS_VERSION } from './save-model.js';
export type { SaveModelOptions, SavedDType } from './save-model.js';
export { TrainStep, buildTrainStepGraph, countFlops } from './train-step.js';
export type { TrainStepGraph, TrainStepResult, TrainStepSpec } from './train-step.js';
export { trainLoop } from './loop.js';
export type { BatchSource, StatefulGenerator, StepInfo, TrainLoopOptions, TrainLoopResult } from './loop.js';
export { crossEntropy, oneHot } from './losses.js';
export * from './eval/index.js';
export { minSnrWeights } from './min-snr.js';
export type { MinSnrPrediction } from './min-snr.js';
export { encodeDatasetLatents, hashModelFolder } from './latent-cache.js';
export type { DatasetLatents, EncodeDatasetOptions } from './latent-cache.js';
export {
  EMOJI_TEXT_TO_IMAGE_MODEL,
  PIXART_ALPHA_SCHEDULER_CONFIG,
  TEXT_TO_IMAGE_SAMPLE_DEFAULTS,
  textToImageTrainer,
  textToImageStepSpec,
  writePixArtPipelineFolder,
} from './trainers/text-to-image.js';
export type {
  SampleOptions,
  TextToImageBatch,
  TextToImageTrainer,
  TextToImageTrainerOptions,
} from './trainers/text-to-image.js';
export {
  DEFAULT_SAMPLE_PROMPTS,
  TRAIN_DEFAULTS,
  TRAIN_KINDS,
  TrainConfigError,
  optimizerFromConfig,
  parseTrainConfig,
  readTrainConfig,
  resumeIdentity,
  scheduleFromConfig,
  trainConfigJson,
} from './config.js';
export type {
  ClassifierModelConfig,
  DataConfig,
  LrScheduleConfig,
  OptimizerConfig,
  ParseTrainConfigOptions,
  SampleConfig,
  TextToImageModelConfig,
  TrainConfig,
  TrainKind,
  VaeModelConfig,
} from './config.js';
export { checkpointsIn, createRunTrainer, loadConfiguredDataset, RUN_FILES, runTraining } from './run.js';
export type { TrainRunEvents, TrainRunOptions, TrainRunResult } from './run.js';
export { classifierRun, fixedSampleIndices } from './run-trainers.js';
export type { RunTrainer } from './run-trainers.js';
export { METRICS_LOG, MetricsLog, readMetricsLog } from './metrics-log.js';
export type { MetricsRecord } from './metrics-log.js';
export { formatDuration, TrainingProgress } from './progress.js';
export type { ProgressOptions, ProgressReport } from './progress.js';
export {
  lossCurvePoints,
  lossCurveSpec,
  PLOT_PACKAGES,
  renderLossCurve,
  renderVegaLiteSvg,
  svgToPng,
} from './loss-curve.js';
export type { LossCurveOptions, LossPoint } from './loss-curve.js';
export { gridLabelsSvg, gridLayout, gridPixels, renderSampleGrid, tensorImages } from './sample-grid.js';
export type {
  GridCell,
  GridLayout,
  GridLayoutOptions,
  GridRow,
  RgbImage,
  SampleGrid,
} from './sample-grid.js';
export {
  CLEAR_LOSS_WEIGHTS,
  clearDistillBatch,
  clearDistillStepSpec,
  clearFeatureLayers,
  clearStudentInit,
  isClearTrained,
} from './distill/clear.js';
export type { ClearDistillOptions, ClearLossWeights, UnconditionalPrompt } from './distill/clear.js';
export { teacherSamples } from './distill/teacher-samples.js';
export type {
  TeacherSampleOptions,
  TeacherSampleSettings,
  TeacherSamples,
} from './distill/teacher-samples.js';
