/**
 * What runTraining needs of a kind's trainer (RunTrainer: vaeTrainer and textToImageTrainer are
 * RunTrainers themselves), the images a grid shows where it shows data, and the classifier trainer
 * wrapped as one: its grid shows validation images with their predicted labels.
 */
import { OptionError } from '../errors.js';
import type { ModelConfig } from '../io/diffusers.js';
import { EMOJI_CLASSIFIER_CLASS, VelodiffEmojiClassifier } from '../models/emoji-classifier.js';
import type { HostTensor } from '../runtime/host-tensor.js';
import type { Runtime } from '../runtime/runtime.js';
import type { TrainConfig } from './config.js';
import { datasetImage, splitIndices, type ImageTextDataset } from './data/dataset.js';
import type { Batch } from './data/loader.js';
import { argmaxRows } from './eval/accuracy.js';
import { classifierTrainer } from './eval/classifier-trainer.js';
import { datasetClassifierInput } from './eval/images.js';
import type { StatefulGenerator } from './loop.js';
import type { SampleGrid } from './sample-grid.js';
import type { TrainStepSpec } from './train-step.js';

/** What runTraining needs of a kind's trainer. */
export interface RunTrainer {
  /** The config.json of what is trained, for the checkpoints' model folders. */
  readonly modelConfig: ModelConfig;
  /** PyTorch's default initialisation of every parameter, by seed. */
  initialParameters(seed: number): Map<string, Float32Array>;
  /** The step for micro-batches of `batchSize` images. */
  stepSpec(batchSize: number): TrainStepSpec;
  /** A loader batch of update `step` (0-based) → the step's inputs. */
  makeBatch(batch: Batch, step: number): Record<string, HostTensor> | Promise<Record<string, HostTensor>>;
  /** Generators makeBatch draws from, saved in checkpoints. */
  readonly generators?: Readonly<Record<string, StatefulGenerator>>;
  /** The grid to show after update `step`, made with `weights` (every parameter, EMA where kept). */
  sampleGrid(weights: ReadonlyMap<string, Float32Array>, step: number): Promise<SampleGrid>;
  /** Writes the trained model folder. */
  saveModel(dir: string, weights: ReadonlyMap<string, Float32Array>): Promise<void>;
  /**
   * Every parameter of a model folder saveModel wrote, checked to be this run's model (config
   * `init.pipeline`); absent where a kind cannot start from one.
   */
  readPipeline?(dir: string): Promise<Map<string, Float32Array>>;
  /**
   * A distillation's trained tensors from a student folder of its method, as saveModel writes it
   * (`init.student`); absent where a kind cannot start from one. What the folder does not hold keeps
   * initialParameters' value.
   */
  readStudent?(dir: string): Promise<Map<string, Float32Array>>;
  /** Releases what the trainer keeps open for its batches (a teacher pipeline); called once, at the end. */
  close?(): Promise<void>;
}

/** The first `count` validation images (training images where the split has none): the same every time. */
export function fixedSampleIndices(dataset: ImageTextDataset, count: number): number[] {
  const validation = splitIndices(dataset, 'validation');
  return (validation.length > 0 ? validation : splitIndices(dataset, 'train')).slice(0, count);
}

/** The classifier trainer (src/train/eval/) as a run drives it: its grid shows validation images with predictions. */
export function classifierRun(
  config: Extract<TrainConfig, { kind: 'classifier' }>,
  dataset: ImageTextDataset,
  runtime: Runtime,
): RunTrainer {
  if (dataset.labelNames === undefined) {
    throw new OptionError(
      "train: a classifier learns the emoji data set's labels (category, subcategory, style); this data " +
        'set has none: use "data": "emoji"',
      'CLASSIFIER_LABELS',
    );
  }
  const trainer = classifierTrainer({
    classifier: config.model.classifier,
    labels: config.model.labels,
    labelNames: dataset.labelNames,
    maxShift: config.model.maxShift,
    seed: config.seed,
    configPath: `${config.output}/config.json (model.classifier)`,
  });
  const shown = fixedSampleIndices(dataset, config.sample.count);
  const head = trainer.config.heads[0];
  return {
    modelConfig: { _class_name: EMOJI_CLASSIFIER_CLASS, ...trainer.config.raw },
    initialParameters: (seed) => trainer.initialParameters(seed),
    stepSpec: (batchSize) => trainer.stepSpec(batchSize),
    makeBatch: (batch) => trainer.makeBatch(batch),
    async sampleGrid(weights, step) {
      const { accuracy, count } = await trainer.evaluate(runtime, weights, dataset);
      const classifier = VelodiffEmojiClassifier.fromParameters(
        trainer.config,
        weights,
        trainer.shapes,
        runtime,
      );
      const { logits } = await classifier.classify(
        await datasetClassifierInput(dataset, shown, trainer.config.sampleSize),
      );
      const predicted = argmaxRows(logits[head.label], head.classes.length);
      const scores = Object.entries(accuracy).map(([label, value]) => `${label} ${value.toFixed(3)}`);
      return {
        title: [
          `step ${step}: validation accuracy ${scores.join(', ')} (${count} images)`,
          `under each image: its predicted ${head.label}, ✓ right, ✗ wrong`,
        ],
        rows: [
          {
            cells: shown.map((index, i) => {
              const truth = dataset.items[index].labels?.[head.label as 'category'];
              const mark = truth === predicted[i] ? '✓' : '✗';
              return {
                image: { width: dataset.size, height: dataset.size, data: datasetImage(dataset, index) },
                caption: `${mark} ${head.classes[predicted[i]]}`,
              };
            }),
          },
        ],
      };
    },
    // The shipped classifier's dtype (2.5 MB), converted back to float32 at load.
    saveModel: (dir, weights) => trainer.saveFolder(dir, weights, { dtype: 'float16' }),
  };
}
