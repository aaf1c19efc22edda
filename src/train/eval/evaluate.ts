/**
 * `velodiff eval`: how well a text-to-image model draws emoji, measured with velodiff's emoji
 * classifier on held-out emoji (held-out.ts):
 *
 * - FED: the Fréchet distance between the classifier features of generated images and of the
 *   reference half of the held-out emoji (fed.ts). It is not ImageNet FID: another network, another
 *   feature space, another scale; compare it only with FED from the same classifier.
 * - alignment: how often the classifier recovers the category (and the subcategory) of the emoji
 *   whose caption was the prompt, from the generated image alone.
 * - ms per image: wall time of generation (text encoding, denoising, VAE decode) per image, after one
 *   untimed 1-step warm-up per batch shape so that session compilation is not counted.
 * - the real ceiling: the same figures for the real images of the prompts (what a generator that drew
 *   the held-out emoji exactly would score).
 */
import { OptionError } from '../../errors.js';
import type { EmojiClassification, VelodiffEmojiClassifier } from '../../models/emoji-classifier.js';
import { imagesToRgb } from '../../io/png.js';
import type { PixArtHighResStage, PixArtPipeline, PixArtRunOptions } from '../../pipelines/pixart.js';
import { TorchGenerator } from '../../random/torch-generator.js';
import type { HostTensor } from '../../runtime/host-tensor.js';
import { hostTensor } from '../../runtime/host-tensor.js';
import type { ImageTextDataset, ItemLabels } from '../data/dataset.js';
import { accuracy, accuracyByClass, headIndexOf } from './accuracy.js';
import { featureStatistics, frechetDistance } from './fed.js';
import type { FeatureStatistics } from './fed.js';
import { heldOutSet, promptItems } from './held-out.js';
import { classifierInput, datasetClassifierInput } from './images.js';

/** One batch to draw: a prompt and a seed per image (image i is what seed i alone would give). */
export interface GenerationRequest {
  readonly prompts: readonly string[];
  readonly seeds: readonly number[];
  /** Denoising steps; the warm-up asks for `warmupSteps` (1 by default). */
  readonly steps: number;
  /** True for the untimed calls that compile the sessions before the measured ones; their images are not scored. */
  readonly warmUp?: boolean;
}

/** Draws a batch: images [B, 3, H, W] in [0, 1], as pipelines return them. */
export type ImageGenerator = (request: GenerationRequest) => Promise<HostTensor>;

/**
 * A PixArt pipeline as an ImageGenerator. Each image's initial latents are drawn from its own
 * TorchGenerator(seed), so image i is the image `velodiff generate "<prompt>" --seed <seed>` draws,
 * whatever the batch. (A stochastic sampler — DDIM with eta > 0, Euler ancestral — also draws noise
 * during the steps, from a generator seeded with the batch's first seed: its images then depend on
 * the batch.) `runOptions` passes accelerations (attention, T-GATE) through.
 */
export function pipelineGenerator(
  pipeline: PixArtPipeline,
  options: {
    guidance: number;
    runOptions?: Partial<PixArtRunOptions>;
    /**
     * Side of the generated images (default the model's); a multiple of `outputSize`, to which they
     * are reduced by averaging factor × factor pixel blocks (a box filter), as the classifier sees
     * the model's size.
     */
    size?: number;
    outputSize?: number;
    /**
     * With `size` above `outputSize`, the staged recipe instead of zero-shot: the base image at
     * `outputSize` from `runOptions`, then this refine stage (SDEdit) at `size`, one ×factor stage.
     */
    highres?: Omit<PixArtHighResStage, 'scale'>;
    /** Called with each measured call's images at `size`, before they are reduced (not the warm-up's). */
    onImages?: (images: HostTensor) => void;
  },
): ImageGenerator {
  const outputSize = options.outputSize ?? pipeline.defaultSize;
  const size = options.size ?? outputSize;
  const factor = size / outputSize;
  if (!Number.isInteger(factor) || factor < 1) {
    throw new OptionError(
      `eval: the image size ${size} must be a whole multiple of ${outputSize}, the size the classifier sees`,
      'EVAL_OPTION',
    );
  }
  if (options.highres && factor === 1) {
    throw new OptionError(
      `eval: the staged high-resolution recipe needs a size above ${outputSize} (its base image's), got ${size}`,
      'EVAL_OPTION',
    );
  }
  // The staged recipe starts from noise at the base size; zero-shot at the full size.
  const side = options.highres ? outputSize : size;
  return async ({ prompts, seeds, steps, warmUp }) => {
    const shape = [
      1,
      pipeline.transformer.config.inChannels,
      side / pipeline.vaeScaleFactor,
      side / pipeline.vaeScaleFactor,
    ];
    const perImage = shape.reduce((a, b) => a * b, 1);
    const latents = new Float32Array(prompts.length * perImage);
    seeds.forEach((seed, i) => latents.set(new TorchGenerator(seed).randn(shape), i * perImage));
    const output = await pipeline.run({
      ...options.runOptions,
      prompt: [...prompts],
      numInferenceSteps: steps,
      guidanceScale: options.guidance,
      latents: hostTensor('float32', [prompts.length, ...shape.slice(1)], latents),
      seed: seeds[0],
      width: side,
      height: side,
      useResolutionBinning: false,
      ...(options.highres ? { highres: { ...options.highres, scale: factor } } : {}),
    });
    if (output.images === undefined)
      throw new OptionError('the pipeline returned no images', 'EVAL_GENERATION');
    if (warmUp !== true) options.onImages?.(output.images);
    return factor === 1 ? output.images : boxReduce(output.images, factor);
  };
}

/** Images [N, C, H, W] reduced by `factor` in each direction, each output pixel the mean of its block. */
export function boxReduce(images: HostTensor, factor: number): HostTensor {
  const [n, c, h, w] = images.shape as number[];
  const oh = h / factor;
  const ow = w / factor;
  if (!Number.isInteger(oh) || !Number.isInteger(ow))
    throw new OptionError(`boxReduce: ${h}×${w} is not a multiple of ${factor}`, 'EVAL_OPTION');
  const src = images.data as Float32Array;
  const out = new Float32Array(n * c * oh * ow);
  for (let p = 0; p < n * c; p++)
    for (let y = 0; y < oh; y++)
      for (let x = 0; x < ow; x++) {
        let sum = 0;
        for (let dy = 0; dy < factor; dy++)
          for (let dx = 0; dx < factor; dx++) sum += src[(p * h + y * factor + dy) * w + x * factor + dx];
        out[(p * oh + y) * ow + x] = sum / (factor * factor);
      }
  return hostTensor('float32', [n, c, oh, ow], out);
}

export interface EvalOptions {
  /** The emoji data set, with the split the generator and the classifier were trained with. */
  readonly dataset: ImageTextDataset;
  readonly classifier: VelodiffEmojiClassifier;
  readonly generate: ImageGenerator;
  /** Generated images, at least 2 (default: one per prompt of the held-out set's prompt half, ≈ 190). */
  readonly samples?: number;
  readonly steps: number;
  /** Seed of image 0; image i uses seed + i. */
  readonly seed: number;
  /** Images per generation call (default 8). */
  readonly batchSize?: number;
  /** Steps of the untimed warm-up run (default 1; a staged run needs enough for its refine to run one). */
  readonly warmupSteps?: number;
  readonly onProgress?: (event: EvalProgress) => void;
}

export interface EvalProgress {
  readonly stage: 'real images' | 'warm-up' | 'generating' | 'classifying';
  readonly done: number;
  readonly total: number;
}

/** Alignment and FED of one image set. */
export interface ImageSetScores {
  readonly fed: number;
  /** Category accuracy. */
  readonly alignment: number;
  readonly subcategoryAlignment: number;
}

/** Category alignment of the prompts of one category: where the model draws the category and where not. */
export interface CategoryAlignment {
  readonly category: string;
  /** Prompts of this category among the samples. */
  readonly prompts: number;
  readonly generated: number;
  readonly real: number;
}

export interface EvalResult {
  readonly generated: ImageSetScores;
  readonly real: ImageSetScores;
  /** Category alignment per category of the prompt's emoji, in the classifier's class order. */
  readonly byCategory: readonly CategoryAlignment[];
  readonly msPerImage: number;
  readonly samples: number;
  /** Size of the reference half and of the prompt half of the held-out set. */
  readonly referenceImages: number;
  readonly promptPool: number;
  /** The ε FED added to the covariances' diagonals (0: none; see fed.ts). */
  readonly fedEpsilon: number;
  /** The first prompts, for the report. */
  readonly prompts: readonly string[];
}

/** The labels eval scores: each must be a head of the classifier. */
const SCORED_LABELS = ['category', 'subcategory'] as const;

export async function evaluateTextToImage(options: EvalOptions): Promise<EvalResult> {
  const { dataset, classifier, steps, seed } = options;
  const set = heldOutSet(dataset);
  const samples = options.samples ?? set.prompts.length;
  const batchSize = options.batchSize ?? 8;
  for (const [name, value, min] of [
    ['samples', samples, 2],
    ['steps', steps, 1],
    ['batch size', batchSize, 1],
  ] as const) {
    if (!Number.isInteger(value) || value < min) {
      throw new OptionError(`eval: ${name} must be an integer ≥ ${min}, got ${value}`, 'EVAL_OPTION');
    }
  }
  const labelNames = dataset.labelNames;
  if (labelNames === undefined) {
    throw new OptionError(
      'eval: the data set has no labels; eval measures against the emoji data set',
      'EVAL_DATASET',
    );
  }
  const heads = SCORED_LABELS.map((label) => {
    const head = classifier.config.heads.find((h) => h.label === label);
    if (head === undefined) {
      throw new OptionError(
        `eval: the classifier (${classifier.dir}) has no "${label}" head; it has ${classifier.config.heads.map((h) => h.label).join(', ')}`,
        'CLASSIFIER_LABELS',
      );
    }
    return { label, head, toHead: headIndexOf(head, labelNames[label]) };
  });
  const size = classifier.config.sampleSize;
  const progress = options.onProgress ?? (() => undefined);

  const items = promptItems(set, samples);
  const prompts = items.map((i) => dataset.items[i].captions[0]);
  const labelsOf = (i: number): ItemLabels => {
    const labels = dataset.items[i].labels;
    if (labels === undefined)
      throw new OptionError(`eval: image '${dataset.items[i].id}' has no labels`, 'EVAL_DATASET');
    return labels;
  };
  const headLabels = heads.map(({ label, toHead }) =>
    Int32Array.from(items, (i) => toHead[labelsOf(i)[label]]),
  );
  const score = (
    result: EmojiClassification,
    reference: FeatureStatistics,
  ): ImageSetScores & { epsilon: number; byCategory: Map<number, { count: number; hits: number }> } => {
    const fed = frechetDistance(
      featureStatistics(result.features, result.count, classifier.config.featureDim),
      reference,
    );
    const [category, subcategory] = heads.map(({ head }, k) =>
      accuracy(result.logits[head.label], head.classes.length, headLabels[k]),
    );
    return {
      fed: fed.distance,
      alignment: category,
      subcategoryAlignment: subcategory,
      epsilon: fed.epsilon,
      byCategory: accuracyByClass(
        result.logits[heads[0].head.label],
        heads[0].head.classes.length,
        headLabels[0],
      ),
    };
  };

  const realTotal = set.reference.length + items.length;
  progress({ stage: 'real images', done: 0, total: realTotal });
  const referenceFeatures = await classifier.classify(
    await datasetClassifierInput(dataset, set.reference, size),
  );
  const reference = featureStatistics(
    referenceFeatures.features,
    referenceFeatures.count,
    classifier.config.featureDim,
  );
  progress({ stage: 'real images', done: set.reference.length, total: realTotal });
  const real = score(
    await classifier.classify(await datasetClassifierInput(dataset, items, size)),
    reference,
  );
  progress({ stage: 'real images', done: realTotal, total: realTotal });

  // One untimed short run per batch shape compiles the sessions the timed runs use.
  const shapes = [...new Set([Math.min(batchSize, samples), samples % batchSize].filter((n) => n > 0))];
  for (const [k, n] of shapes.entries()) {
    progress({ stage: 'warm-up', done: k, total: shapes.length });
    await options.generate({
      prompts: prompts.slice(0, n),
      seeds: Array.from({ length: n }, (_, i) => seed + i),
      steps: options.warmupSteps ?? 1,
      warmUp: true,
    });
  }

  const rgb: Uint8Array[] = [];
  let width = 0;
  let height = 0;
  let generationMs = 0;
  progress({ stage: 'generating', done: 0, total: samples });
  for (let start = 0; start < samples; start += batchSize) {
    const n = Math.min(batchSize, samples - start);
    const started = performance.now();
    const images = await options.generate({
      prompts: prompts.slice(start, start + n),
      seeds: Array.from({ length: n }, (_, i) => seed + start + i),
      steps,
    });
    generationMs += performance.now() - started;
    const [count, channels, h, w] = images.shape;
    if (count !== n || channels !== 3 || images.dtype !== 'float32') {
      throw new OptionError(
        `eval: the generator returned ${images.dtype}[${images.shape.join(', ')}] for ${n} prompts; expected float32 [${n}, 3, H, W]`,
        'EVAL_GENERATION',
      );
    }
    [width, height] = [w, h];
    rgb.push(...imagesToRgb(images.data as Float32Array, images.shape));
    progress({ stage: 'generating', done: start + n, total: samples });
  }
  progress({ stage: 'classifying', done: 0, total: samples });
  const generated = score(
    await classifier.classify(await classifierInput(rgb, width, height, size)),
    reference,
  );
  progress({ stage: 'classifying', done: samples, total: samples });

  return {
    generated: {
      fed: generated.fed,
      alignment: generated.alignment,
      subcategoryAlignment: generated.subcategoryAlignment,
    },
    real: { fed: real.fed, alignment: real.alignment, subcategoryAlignment: real.subcategoryAlignment },
    byCategory: heads[0].head.classes.flatMap((category, k) => {
      const g = generated.byCategory.get(k);
      const r = real.byCategory.get(k);
      return g === undefined || r === undefined
        ? []
        : [{ category, prompts: g.count, generated: g.hits / g.count, real: r.hits / r.count }];
    }),
    msPerImage: generationMs / samples,
    samples,
    referenceImages: set.reference.length,
    promptPool: set.prompts.length,
    fedEpsilon: Math.max(generated.epsilon, real.epsilon),
    prompts: prompts.slice(0, Math.min(samples, set.prompts.length)),
  };
}

/** The JSON line of `velodiff eval --json`: the contract's keys first, then the extras. */
export function evalJson(result: EvalResult): Record<string, number> {
  return {
    fed: result.generated.fed,
    alignment: result.generated.alignment,
    ms_per_image: result.msPerImage,
    real_fed: result.real.fed,
    real_alignment: result.real.alignment,
    subcategory_alignment: result.generated.subcategoryAlignment,
    real_subcategory_alignment: result.real.subcategoryAlignment,
    samples: result.samples,
    reference_images: result.referenceImages,
  };
}
