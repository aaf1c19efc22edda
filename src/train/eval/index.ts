// Evaluation: FED, prompt alignment and speed of text-to-image models, and the emoji classifier they use.
export { FED_EPSILON, featureStatistics, frechetDistance } from './fed.js';
export type { FeatureStatistics, FrechetDistance } from './fed.js';
export { symmetricEigen } from './symmetric-eigen.js';
export type { SymmetricEigen } from './symmetric-eigen.js';
export { accuracy, argmaxRows, headIndexOf } from './accuracy.js';
export { classifierInput, datasetClassifierInput } from './images.js';
export { heldOutSet, promptItems } from './held-out.js';
export type { HeldOutSet } from './held-out.js';
export { CLASSIFIER_STEP_INPUTS, classifierTrainer } from './classifier-trainer.js';
export type {
  ClassifierEvaluation,
  ClassifierLabel,
  ClassifierTrainer,
  ClassifierTrainerOptions,
} from './classifier-trainer.js';
export { evalJson, evaluateTextToImage, pipelineGenerator } from './evaluate.js';
export type {
  EvalOptions,
  EvalProgress,
  EvalResult,
  GenerationRequest,
  ImageGenerator,
  ImageSetScores,
} from './evaluate.js';
export { SHIPPED_CLASSIFIER_PATH, shippedClassifierDir } from './shipped-classifier.js';
