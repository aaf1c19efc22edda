/**
 * Training a small diffusers `AutoencoderKL` from scratch: the shipped model's VAE, trained first, on
 * the same 64×64 images as the denoiser.
 *
 *   loss = mean |decode(z) − x|  +  klWeight · mean_b KL(q(z|x_b) ‖ N(0, I)),   z = μ + σ·ε
 *
 * Reconstruction is L1, as the Stable Diffusion autoencoder's (Rombach et al. 2022, App. G: L1 +
 * LPIPS + a patch GAN): without the perceptual and adversarial terms, L2 averages plausible edges into
 * blur, while L1's median-like optimum keeps the flat colours and hard outlines emoji are made of. The
 * KL is diffusers' DiagonalGaussianDistribution.kl() (summed over latent elements) averaged over the
 * batch, as in diffusers' train_autoencoderkl.py; its small weight (1e-6 by default) keeps the latents
 * near a Gaussian's scale without blurring them, and the latents' actual scale is normalised
 * afterwards by `scaling_factor` (computeScalingFactor). The posterior sample's noise ε is a graph
 * input drawn by a TorchGenerator on the host, so a resumed run draws the same ε.
 */
import { OptionError } from '../../errors.js';
import type { Graph } from '../../graph/graph.js';
import { abs, add, exp, mean, mul, sub, sum } from '../../graph/ops/index.js';
import { buildAutoencoderKLGraph, decodeLatents, encodeImage } from '../../models/autoencoder-kl.js';
import type { AutoencoderKLConfig } from '../../models/vae/config.js';
import { parseAutoencoderKLConfig } from '../../models/vae/config.js';
import { Params } from '../../nn/params.js';
import { ParameterInputs } from '../../nn/weights.js';
import { TorchGenerator, type NoiseGenerator } from '../../random/torch-generator.js';
import type { HostTensor } from '../../runtime/host-tensor.js';
import { hostTensor } from '../../runtime/host-tensor.js';
import type { Runtime } from '../../runtime/runtime.js';
import type { WarningHandler } from '../../warnings.js';
import { datasetImage, splitIndices, type ImageTextDataset } from '../data/dataset.js';
import type { Batch } from '../data/loader.js';
import { fixedSampleIndices, type RunTrainer } from '../run-trainers.js';
import type { RgbImage } from '../sample-grid.js';
import { discoverParameterShapes, initParameters } from '../parameters.js';
import { saveModelFolder, type SavedDType } from '../save-model.js';
import type { TrainStepSpec } from '../train-step.js';

/**
 * The shipped emoji VAE: 64×64 RGB → 4×16×16 latents (two downsamplings), 0.95 M parameters (1.9 MB
 * in fp16). Three levels of 32, 64, 64 channels with one ResNet per encoder level (two per decoder
 * level, diffusers' layers_per_block + 1) and the mid-block attention on the 16×16 grid: 1.7 GFLOP per
 * image forward, 5.1 GFLOP per training image (11 images/s on two cores, BENCHMARKS.md "train"),
 * where [64, 128, 128] would cost 4× the FLOPs and 7.6 MB of the package's 30 MB. GroupNorm in
 * 16 groups: 2 channels per group at the first level, where 32 groups would normalise every channel on
 * its own.
 */
export const EMOJI_VAE_CONFIG: Readonly<Record<string, unknown>> = {
  in_channels: 3,
  out_channels: 3,
  down_block_types: ['DownEncoderBlock2D', 'DownEncoderBlock2D', 'DownEncoderBlock2D'],
  up_block_types: ['UpDecoderBlock2D', 'UpDecoderBlock2D', 'UpDecoderBlock2D'],
  block_out_channels: [32, 64, 64],
  layers_per_block: 1,
  act_fn: 'silu',
  latent_channels: 4,
  norm_num_groups: 16,
  sample_size: 64,
  scaling_factor: 1.0,
  shift_factor: null,
  latents_mean: null,
  latents_std: null,
  force_upcast: false,
  use_quant_conv: true,
  use_post_quant_conv: true,
  mid_block_add_attention: true,
};

export const VAE_KL_WEIGHT = 1e-6;

/** Images per run of the reconstruction and scaling-factor graphs. */
const EVAL_CHUNK = 16;

export interface VaeTrainerOptions {
  /** AutoencoderKL config.json keys over EMOJI_VAE_CONFIG (a `_class_name` is ignored). */
  vae?: Readonly<Record<string, unknown>>;
  /** Weight of the KL term (default 1e-6). */
  klWeight?: number;
  /** Image height and width (default the data set's size, else the config's sample_size). */
  imageSize?: number;
  /** Seed of the posterior-noise generator makeBatch draws from (default 0). */
  seed?: number;
  /** The training images: the sample grid shows its first validation images, and saveModel computes
   * scaling_factor on its training images. */
  dataset?: ImageTextDataset;
  /** Runs the sample grid's and the scaling factor's graphs. */
  runtime?: Runtime;
  /** Images in the sample grid (default 8). */
  sampleCount?: number;
  /** Training images the scaling factor is computed on (default 512, spread over the split). */
  scalingSamples?: number;
  /** Weights' dtype of saveModel's folder (default float32). */
  saveDtype?: SavedDType;
  onWarning?: WarningHandler;
}

export interface VaeTrainer extends Omit<RunTrainer, 'makeBatch'> {
  /** The config.json keys (without _class_name), scaling_factor as last computed. */
  readonly rawConfig: Readonly<Record<string, unknown>>;
  readonly config: AutoencoderKLConfig;
  readonly klWeight: number;
  readonly imageSize: number;
  /** [latent_channels, imageSize / f, imageSize / f]. */
  readonly latentShape: readonly [number, number, number];
  /** Every parameter of the model, by checkpoint name. */
  readonly shapes: ReadonlyMap<string, readonly number[]>;
  /** makeBatch's posterior-noise generator, saved in checkpoints. */
  readonly generators: Readonly<{ noise: TorchGenerator }>;
  /**
   * The step graph for micro-batches of `batchSize`: inputs `images` [B, 3, S, S] in [−1, 1] and
   * `noise` [B, 4, s, s]; metrics `reconstruction` (L1), `kl`, `mse`.
   */
  stepSpec(batchSize: number): TrainStepSpec;
  /** The step's feeds for a loader batch, the posterior noise drawn from `noise` (default the trainer's generator). */
  makeBatch(batch: Batch, noise?: NoiseGenerator): Record<string, HostTensor>;
  /**
   * 1 / std of posterior samples of `images` [N, 3, S, S] (diffusers' recipe for `scaling_factor`:
   * the Stable Diffusion VAE's 0.18215 is 1/std of a batch of its latents), in float64 with torch's
   * unbiased std.
   */
  computeScalingFactor(
    runtime: Runtime,
    params: ReadonlyMap<string, Float32Array>,
    images: Float32Array,
    noise: NoiseGenerator,
  ): Promise<number>;
  /** Reconstructions (decode of the posterior mean, diffusers' forward) of `images` [N, 3, S, S], clamped to [−1, 1]. */
  reconstruct(
    runtime: Runtime,
    params: ReadonlyMap<string, Float32Array>,
    images: Float32Array,
  ): Promise<Float32Array>;
  /** Writes the diffusers folder (config.json with `scalingFactor` when given, weights in `dtype`). */
  save(
    dir: string,
    params: ReadonlyMap<string, Float32Array>,
    options?: { dtype?: SavedDType; scalingFactor?: number },
  ): Promise<void>;
}

/** Images [N, 3, S, S] in [−1, 1] from a data set's RGB bytes, as the DataLoader makes them. */
export function datasetImages(dataset: ImageTextDataset, indices: readonly number[]): Float32Array {
  const { size } = dataset;
  const plane = size * size;
  const images = new Float32Array(indices.length * 3 * plane);
  indices.forEach((index, b) => {
    const pixels = datasetImage(dataset, index);
    for (let i = 0; i < plane; i++)
      for (let c = 0; c < 3; c++) images[(b * 3 + c) * plane + i] = pixels[i * 3 + c] / 127.5 - 1;
  });
  return images;
}

/** Image `index` of [N, 3, S, S] floats in [−1, 1] as RGB bytes. */
function rgbImage(images: Float32Array, index: number, size: number): RgbImage {
  const plane = size * size;
  const data = new Uint8Array(plane * 3);
  for (let i = 0; i < plane; i++)
    for (let c = 0; c < 3; c++) {
      const v = images[(index * 3 + c) * plane + i];
      data[i * 3 + c] = Math.round((Math.min(1, Math.max(-1, v)) + 1) * 127.5);
    }
  return { width: size, height: size, data };
}

/** `count` indices spread evenly over `indices`. */
function spread(indices: readonly number[], count: number): number[] {
  if (indices.length <= count) return [...indices];
  return Array.from({ length: count }, (_, i) => indices[Math.floor((i * indices.length) / count)]);
}

/** Seed of the scaling factor's posterior noise: fixed, so the factor of given weights is reproducible. */
const SCALING_NOISE_SEED = 0x5ca1e;

export function vaeTrainer(options: VaeTrainerOptions = {}): VaeTrainer {
  const rawConfig: Record<string, unknown> = { ...EMOJI_VAE_CONFIG };
  for (const [key, value] of Object.entries(options.vae ?? {})) {
    if (key !== '_class_name' && key !== '_diffusers_version') rawConfig[key] = value;
  }
  const config = parseAutoencoderKLConfig(
    { _class_name: 'AutoencoderKL', ...rawConfig },
    'the VAE training config',
    options.onWarning,
  );
  const klWeight = options.klWeight ?? VAE_KL_WEIGHT;
  const factor = 2 ** (config.blockOutChannels.length - 1);
  const sampleSize = typeof config.sampleSize === 'number' ? config.sampleSize : config.sampleSize[0];
  const imageSize = options.imageSize ?? options.dataset?.size ?? sampleSize;
  if (!(klWeight >= 0))
    throw new OptionError(`vaeTrainer: klWeight must be ≥ 0, found ${klWeight}`, 'VAE_TRAINER');
  if (imageSize % factor !== 0) {
    throw new OptionError(
      `vaeTrainer: the image size ${imageSize} must be a multiple of ${factor}, the VAE's downsampling`,
      'VAE_TRAINER',
    );
  }
  if (options.dataset !== undefined && options.dataset.size !== imageSize) {
    throw new OptionError(
      `vaeTrainer: the data set's images are ${options.dataset.size}×${options.dataset.size}, not ${imageSize}×${imageSize}`,
      'VAE_TRAINER',
    );
  }
  const latentShape = [config.latentChannels, imageSize / factor, imageSize / factor] as const;
  const channels = config.inChannels;
  const shapes = discoverParameterShapes((source) => {
    buildAutoencoderKLGraph(config, source, 'encode', [1, channels, factor, factor]);
    buildAutoencoderKLGraph(config, source, 'decode', [1, config.latentChannels, 1, 1]);
  });
  const imageElements = channels * imageSize * imageSize;
  const noiseGenerator = new TorchGenerator(options.seed ?? 0);

  /** Runs `graph` (built with parameters as inputs from `source`) with `params` and `feeds`. */
  const runWith = async (
    runtime: Runtime,
    graph: Graph,
    source: ParameterInputs,
    params: ReadonlyMap<string, Float32Array>,
    feeds: Record<string, HostTensor>,
  ): Promise<Record<string, HostTensor>> => {
    const all: Record<string, HostTensor> = { ...feeds };
    for (const name of Object.keys(source.inputsOf(graph))) {
      all[name] = hostTensor(
        'float32',
        shapes.get(name) as readonly number[],
        params.get(name) as Float32Array,
      );
    }
    return (await runtime.compile(graph)).run(all);
  };

  /** Calls `each` on chunks of up to EVAL_CHUNK images of `images`. */
  const inChunks = async (
    images: Float32Array,
    each: (chunk: HostTensor, start: number) => Promise<void>,
  ): Promise<void> => {
    const count = images.length / imageElements;
    if (!Number.isInteger(count) || count < 1) {
      throw new OptionError(
        `vaeTrainer: expected images [N, ${channels}, ${imageSize}, ${imageSize}], found ${images.length} values`,
        'VAE_TRAINER',
      );
    }
    for (let start = 0; start < count; start += EVAL_CHUNK) {
      const n = Math.min(EVAL_CHUNK, count - start);
      const data = images.subarray(start * imageElements, (start + n) * imageElements);
      await each(hostTensor('float32', [n, channels, imageSize, imageSize], data), start);
    }
  };

  const requireData = (what: string): { dataset: ImageTextDataset; runtime: Runtime } => {
    if (options.dataset === undefined || options.runtime === undefined) {
      throw new OptionError(`vaeTrainer: ${what} needs the dataset and runtime options`, 'VAE_TRAINER');
    }
    return { dataset: options.dataset, runtime: options.runtime };
  };

  const trainer: VaeTrainer = {
    get modelConfig() {
      return { _class_name: 'AutoencoderKL', ...rawConfig };
    },
    rawConfig,
    config,
    klWeight,
    imageSize,
    latentShape,
    shapes,
    generators: { noise: noiseGenerator },
    initialParameters: (seed) => initParameters(shapes, { seed }),

    stepSpec: (batchSize) => {
      if (!Number.isSafeInteger(batchSize) || batchSize < 1) {
        throw new OptionError(
          `vaeTrainer: batchSize must be an integer ≥ 1, found ${batchSize}`,
          'VAE_TRAINER',
        );
      }
      return {
        shapes,
        trainable: [...shapes.keys()],
        build(g, source) {
          const params = Params.of(g, source);
          const images = g.input('images', 'float32', [batchSize, channels, imageSize, imageSize]);
          const noise = g.input('noise', 'float32', [batchSize, ...latentShape]);
          const posterior = encodeImage(params, images, config);
          const z = g.scope('sample', () => add(posterior.mean, mul(posterior.std, noise)));
          const decoded = decodeLatents(params, z, config);
          return g.scope('loss', () => {
            const error = sub(decoded, images);
            const reconstruction = mean(abs(error), [0, 1, 2, 3]);
            // DiagonalGaussianDistribution.kl(): ½ Σ (μ² + σ² − 1 − log σ²) over C, H, W; then the batch mean.
            const { mean: mu, logvar } = posterior;
            const klTerms = sub(sub(add(mul(mu, mu), exp(logvar)), 1), logvar);
            const kl = mul(mean(sum(klTerms, [1, 2, 3]), 0), 0.5);
            const loss = add(reconstruction, mul(kl, klWeight));
            return { loss, metrics: { reconstruction, kl, mse: mean(mul(error, error), [0, 1, 2, 3]) } };
          });
        },
      };
    },

    makeBatch(batch, noise = noiseGenerator) {
      const [b, c, h, w] = batch.shape;
      if (c !== channels || h !== imageSize || w !== imageSize) {
        throw new OptionError(
          `vaeTrainer: a batch of [${batch.shape.join(', ')}] does not fit the VAE's [B, ${channels}, ${imageSize}, ${imageSize}]`,
          'VAE_TRAINER',
        );
      }
      return {
        images: hostTensor('float32', batch.shape, batch.images),
        noise: hostTensor('float32', [b, ...latentShape], noise.randn([b, ...latentShape])),
      };
    },

    async sampleGrid(weights, step) {
      const { dataset, runtime } = requireData('sampleGrid');
      const shown = fixedSampleIndices(dataset, options.sampleCount ?? 8);
      const originals = datasetImages(dataset, shown);
      const reconstructed = await trainer.reconstruct(runtime, weights, originals);
      let l1 = 0;
      for (let i = 0; i < originals.length; i++)
        l1 += Math.abs(reconstructed[i] - originals[i]) / originals.length;
      return {
        title: [
          `step ${step}: originals above their reconstructions (mean |error| ${l1.toFixed(4)} in [−1, 1])`,
        ],
        rows: [
          { label: 'original', cells: shown.map((_, i) => ({ image: rgbImage(originals, i, imageSize) })) },
          {
            label: 'reconstruction',
            cells: shown.map((_, i) => ({ image: rgbImage(reconstructed, i, imageSize) })),
          },
        ],
      };
    },

    async saveModel(dir, weights) {
      let scalingFactor: number | undefined;
      if (options.dataset !== undefined && options.runtime !== undefined) {
        const indices = spread(splitIndices(options.dataset, 'train'), options.scalingSamples ?? 512);
        scalingFactor = await trainer.computeScalingFactor(
          options.runtime,
          weights,
          datasetImages(options.dataset, indices),
          new TorchGenerator(SCALING_NOISE_SEED),
        );
      }
      await trainer.save(dir, weights, { dtype: options.saveDtype, scalingFactor });
    },

    async computeScalingFactor(runtime, params, images, noise) {
      let count = 0;
      let total = 0;
      let squares = 0;
      const samples: Float32Array[] = [];
      await inChunks(images, async (chunk) => {
        const source = ParameterInputs.fromShapes(Object.fromEntries(shapes));
        const graph = buildAutoencoderKLGraph(config, source, 'encode', chunk.shape);
        const out = await runWith(runtime, graph, source, params, { sample: chunk });
        const mu = out['latent_mean'].data as Float32Array;
        const std = out['latent_std'].data as Float32Array;
        const eps = noise.randn([chunk.shape[0], ...latentShape]);
        const z = Float32Array.from(mu, (m, i) => m + std[i] * eps[i]);
        for (const v of z) total += v;
        count += z.length;
        samples.push(z);
      });
      const average = total / count;
      for (const z of samples) for (const v of z) squares += (v - average) ** 2;
      return 1 / Math.sqrt(squares / (count - 1));
    },

    async reconstruct(runtime, params, images) {
      const out = new Float32Array(images.length);
      await inChunks(images, async (chunk, start) => {
        const source = ParameterInputs.fromShapes(Object.fromEntries(shapes));
        const graph = buildAutoencoderKLGraph(config, source, 'forward', chunk.shape);
        const sample = (await runWith(runtime, graph, source, params, { x: chunk }))['sample']
          .data as Float32Array;
        out.set(
          sample.map((v) => Math.min(1, Math.max(-1, v))),
          start * imageElements,
        );
      });
      return out;
    },

    async save(dir, params, saveOptions = {}) {
      const scaling = saveOptions.scalingFactor;
      if (scaling !== undefined) {
        if (!(scaling > 0 && Number.isFinite(scaling))) {
          throw new OptionError(
            `vaeTrainer.save: scalingFactor must be a finite number > 0, found ${scaling}`,
            'VAE_TRAINER',
          );
        }
        rawConfig['scaling_factor'] = scaling;
      }
      await saveModelFolder(dir, {
        className: 'AutoencoderKL',
        config: rawConfig,
        params,
        shapes,
        dtype: saveOptions.dtype,
      });
    },
  };
  return trainer;
}
