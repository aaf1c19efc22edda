/**
 * Training the emoji classifier that `velodiff eval` measures with: what `velodiff train` needs for a
 * config of kind 'classifier' — the parameters and their initialisation, the step's loss (the sum of
 * each head's cross-entropy), batches with light augmentation, the folder writer, and accuracy on the
 * validation split.
 *
 * Augmentation is a random shift of up to `maxShift` pixels each way, filled with white (the emoji
 * background): generated emoji are not always centred. No mirroring: emoji are not mirror-symmetric
 * (text, arrows, flags, hands), so a mirrored emoji is a wrong example of its class.
 */
import { OptionError } from '../../errors.js';
import type { Graph } from '../../graph/graph.js';
import { add, cast, equal, max, mean, mul, sum } from '../../graph/ops/index.js';
import type { Tensor } from '../../graph/graph.js';
import {
  EMOJI_CLASSIFIER_CLASS,
  VelodiffEmojiClassifier,
  buildEmojiClassifierGraph,
  emojiClassifierConfigJson,
  emojiClassifierForward,
  parseEmojiClassifierConfig,
} from '../../models/emoji-classifier.js';
import type { EmojiClassifierConfig } from '../../models/emoji-classifier.js';
import { Params } from '../../nn/params.js';
import type { ParameterInputs } from '../../nn/weights.js';
import { Mt19937 } from '../../random/mt19937.js';
import type { HostTensor } from '../../runtime/host-tensor.js';
import { hostTensor } from '../../runtime/host-tensor.js';
import type { Runtime } from '../../runtime/runtime.js';
import type { ImageTextDataset, LabelNames } from '../data/dataset.js';
import { splitIndices } from '../data/dataset.js';
import type { Batch } from '../data/loader.js';
import type { SplitName } from '../data/split.js';
import { crossEntropy, oneHot } from '../losses.js';
import { discoverParameterShapes, initParameters } from '../parameters.js';
import { saveModelFolder } from '../save-model.js';
import type { SavedDType } from '../save-model.js';
import type { TrainStepSpec } from '../train-step.js';
import { accuracy } from './accuracy.js';
import { datasetClassifierInput } from './images.js';

export type ClassifierLabel = keyof LabelNames;

export interface ClassifierTrainerOptions {
  /** The classifier's config keys (architecture); its `heads` are made from `labels` and the data's names. */
  readonly classifier: Readonly<Record<string, unknown>>;
  /** The labels it predicts, one head each. */
  readonly labels: readonly ClassifierLabel[];
  /** The data set's label vocabularies (`dataset.labelNames`). */
  readonly labelNames: LabelNames;
  /** Largest shift in pixels, each way (default 4 of 64; 0: none). */
  readonly maxShift?: number;
  /** Seed of the shifts (default 0); each image's shift is a function of (seed, epoch, image). */
  readonly seed?: number;
  /** Where the config came from, for messages. */
  readonly configPath?: string;
}

/** Accuracy per head on a split, and how many images it was measured on. */
export interface ClassifierEvaluation {
  readonly count: number;
  readonly accuracy: Readonly<Record<string, number>>;
}

export interface ClassifierTrainer {
  readonly className: string;
  readonly config: EmojiClassifierConfig;
  /** Every parameter's shape, by checkpoint name. */
  readonly shapes: ReadonlyMap<string, readonly number[]>;
  /** PyTorch's default initialisation of each layer, by seed. */
  initialParameters(seed: number): Map<string, Float32Array>;
  /** The training step for micro-batches of `batchSize` images: loss = Σ heads' cross-entropy. */
  stepSpec(batchSize: number): TrainStepSpec;
  /** A loader batch → the step's inputs (shifted images, labels per head). */
  makeBatch(batch: Batch): Record<string, HostTensor>;
  /** Writes the classifier folder (config.json with `heads`, weights in `dtype`, default float32). */
  saveFolder(
    dir: string,
    params: ReadonlyMap<string, Float32Array>,
    options?: { dtype?: SavedDType },
  ): Promise<void>;
  /** Accuracy of each head on one split of `dataset` (default validation). */
  evaluate(
    runtime: Runtime,
    params: ReadonlyMap<string, Float32Array>,
    dataset: ImageTextDataset,
    options?: { split?: SplitName },
  ): Promise<ClassifierEvaluation>;
}

/** Graph input names of a training step. */
export const CLASSIFIER_STEP_INPUTS = {
  pixels: 'pixel_values',
  labels: (label: string): string => `${label}_labels`,
} as const;

const DEFAULT_MAX_SHIFT = 4;

export function classifierTrainer(options: ClassifierTrainerOptions): ClassifierTrainer {
  if (options.labels.length === 0) {
    throw new OptionError('classifierTrainer: give at least one label to predict', 'CLASSIFIER_LABELS');
  }
  const maxShift = options.maxShift ?? DEFAULT_MAX_SHIFT;
  if (!Number.isInteger(maxShift) || maxShift < 0) {
    throw new OptionError(
      `classifierTrainer: maxShift must be an integer ≥ 0, found ${maxShift}`,
      'CLASSIFIER_SHIFT',
    );
  }
  const seed = options.seed ?? 0;
  const heads = Object.fromEntries(options.labels.map((label) => [label, [...options.labelNames[label]]]));
  const config = parseEmojiClassifierConfig(
    { ...options.classifier, heads },
    options.configPath ?? 'the classifier config',
  );
  const shapes = discoverParameterShapes((source) => buildEmojiClassifierGraph(config, source, 1));
  const size = config.sampleSize;

  const stepSpec = (batchSize: number): TrainStepSpec => ({
    shapes,
    trainable: [...shapes.keys()],
    build(g: Graph, params: ParameterInputs) {
      const pixels = g.input(CLASSIFIER_STEP_INPUTS.pixels, 'float32', [
        batchSize,
        config.inChannels,
        size,
        size,
      ]);
      const { logits } = emojiClassifierForward(Params.of(g, params), pixels, config);
      const metrics: Record<string, Tensor> = {};
      let loss: Tensor | undefined;
      for (const head of config.heads) {
        const labels = g.input(CLASSIFIER_STEP_INPUTS.labels(head.label), 'int32', [batchSize]);
        const headLoss = crossEntropy(logits[head.label], labels);
        loss = loss === undefined ? headLoss : add(loss, headLoss);
        metrics[`${head.label}_loss`] = headLoss;
        metrics[`${head.label}_accuracy`] = batchAccuracy(logits[head.label], labels);
      }
      return { loss: loss as Tensor, metrics };
    },
  });

  const makeBatch = (batch: Batch): Record<string, HostTensor> => {
    const [count, channels, height, width] = batch.shape;
    if (height !== size || width !== size || channels !== config.inChannels) {
      throw new OptionError(
        `the classifier takes ${config.inChannels}×${size}×${size} images, but the data set's are ` +
          `${channels}×${height}×${width}: prepare the data at size ${size}`,
        'CLASSIFIER_IMAGE_SIZE',
      );
    }
    if (batch.labels === undefined) {
      throw new OptionError(
        'the classifier trains on labelled images (the emoji data set); this data set has no labels',
        'CLASSIFIER_LABELS',
      );
    }
    const images = maxShift === 0 ? batch.images : shifted(batch, maxShift, seed);
    const feeds: Record<string, HostTensor> = {
      [CLASSIFIER_STEP_INPUTS.pixels]: hostTensor('float32', [count, channels, height, width], images),
    };
    for (const head of config.heads) {
      const labels = batch.labels[head.label as ClassifierLabel];
      feeds[CLASSIFIER_STEP_INPUTS.labels(head.label)] = hostTensor(
        'int32',
        [count],
        Int32Array.from(labels),
      );
    }
    return feeds;
  };

  return {
    className: EMOJI_CLASSIFIER_CLASS,
    config,
    shapes,
    initialParameters: (initSeed) => initParameters(shapes, { seed: initSeed }),
    stepSpec,
    makeBatch,
    async saveFolder(dir, params, saveOptions = {}) {
      const json = emojiClassifierConfigJson(config);
      await saveModelFolder(dir, {
        className: EMOJI_CLASSIFIER_CLASS,
        config: json,
        params,
        shapes,
        dtype: saveOptions.dtype,
      });
    },
    async evaluate(runtime, params, dataset, evalOptions = {}) {
      const indices = splitIndices(dataset, evalOptions.split ?? 'validation');
      const classifier = VelodiffEmojiClassifier.fromParameters(config, params, shapes, runtime);
      const result = await classifier.classify(await datasetClassifierInput(dataset, indices, size));
      const scores: Record<string, number> = {};
      for (const head of config.heads) {
        const labels = Int32Array.from(indices, (i) => {
          const itemLabels = dataset.items[i].labels;
          if (itemLabels === undefined) {
            throw new OptionError(`image '${dataset.items[i].id}' has no labels`, 'CLASSIFIER_LABELS');
          }
          return itemLabels[head.label as ClassifierLabel];
        });
        scores[head.label] = accuracy(result.logits[head.label], head.classes.length, labels);
      }
      return { count: indices.length, accuracy: scores };
    },
  };
}

/** Share of a batch whose label's logit is the row's largest (ties count as hits): a metric of the step. */
function batchAccuracy(logits: Tensor, labels: Tensor): Tensor {
  const labelLogit = sum(mul(oneHot(labels, logits.shape[1] as number, logits.dtype), logits), 1);
  return mean(cast(equal(labelLogit, max(logits, 1)), logits.dtype), 0);
}

/** A uint32 from (seed, epoch, image): per-image draws that a resumed run repeats exactly. */
function drawSeed(seed: number, epoch: number, image: number): number {
  let h = (seed ^ 0x9e3779b9) >>> 0;
  for (const word of [epoch, image]) {
    h = Math.imul(h ^ word, 0x85ebca6b) >>> 0;
    h = (h ^ (h >>> 13)) >>> 0;
    h = Math.imul(h, 0xc2b2ae35) >>> 0;
    h = (h ^ (h >>> 16)) >>> 0;
  }
  return h;
}

/** The batch's images, each moved by (dx, dy) ∈ [−maxShift, maxShift]², uncovered pixels white (1). */
function shifted(batch: Batch, maxShift: number, seed: number): Float32Array {
  const [count, channels, height, width] = batch.shape;
  const out = new Float32Array(batch.images.length).fill(1);
  const plane = height * width;
  for (let n = 0; n < count; n++) {
    const generator = new Mt19937(drawSeed(seed, batch.epoch, batch.indices[n]));
    const span = 2 * maxShift + 1;
    const dx = (generator.nextUint32() % span) - maxShift;
    const dy = (generator.nextUint32() % span) - maxShift;
    for (let c = 0; c < channels; c++) {
      const base = (n * channels + c) * plane;
      for (let y = Math.max(0, dy); y < Math.min(height, height + dy); y++) {
        const from = base + (y - dy) * width;
        const to = base + y * width;
        for (let x = Math.max(0, dx); x < Math.min(width, width + dx); x++)
          out[to + x] = batch.images[from + x - dx];
      }
    }
  }
  return out;
}
