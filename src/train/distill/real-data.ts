/**
 * What the distillations that learn from real images (LinFusion, Flash Diffusion) share: the teacher
 * loaded once — its transformer's tensors, its scheduler's ᾱ and prediction type — and the data set's
 * training images as the teacher's VAE encodes them (the latent cache) with their first caption as
 * its frozen text encoder encodes it (once, at the start).
 */
import { join, resolve } from 'node:path';

import { OptionError } from '../../errors.js';
import { WeightStore } from '../../io/diffusers.js';
import { PixArtPipeline } from '../../pipelines/pixart.js';
import type { TorchGenerator } from '../../random/torch-generator.js';
import type { Runtime } from '../../runtime/runtime.js';
import { DPMSolverMultistepScheduler } from '../../schedulers/dpm-solver-multistep.js';
import { defaultCacheDir } from '../data/cache.js';
import type { ImageTextDataset } from '../data/dataset.js';
import { splitIndices } from '../data/dataset.js';
import type { DatasetLatents } from '../latent-cache.js';
import { encodeDatasetLatents } from '../latent-cache.js';
import type { DistillPredictionType, UnconditionalPrompt } from './clear.js';
import { distillPredictionType } from './clear.js';

export interface RealDistillData {
  readonly teacherDir: string;
  /** The teacher pipeline (open: the caller closes it). */
  readonly pipeline: PixArtPipeline;
  /** The teacher transformer's tensors by checkpoint name, and their shapes. */
  readonly teacher: Map<string, Float32Array>;
  readonly teacherShapes: Map<string, number[]>;
  readonly schedulerConfig: Record<string, unknown>;
  readonly alphasCumprod: Float32Array;
  readonly predictionType: DistillPredictionType;
  readonly latents: DatasetLatents;
  /** Latent channels and side. */
  readonly channels: number;
  readonly side: number;
  /** Caption tokens and width of the encodings. */
  readonly length: number;
  readonly width: number;
  /** The encodings of the training images' first captions, [train, length, width] and [train, length]. */
  readonly embeds: Float32Array;
  readonly mask: Float32Array;
  /** Data set index → row of `embeds`. */
  readonly rowOf: ReadonlyMap<number, number>;
  /** The encoding of "": CFG's unconditional prompt, and a dropped caption's. */
  readonly empty: UnconditionalPrompt;
}

/** Loads the teacher and prepares the training images' latents and captions. `what` names the method in errors. */
export async function realDistillData(o: {
  what: string;
  teacher: string;
  dataset: ImageTextDataset;
  runtime: Runtime;
  cacheDir?: string | false;
  onEncodeProgress?: (done: number, total: number) => void;
}): Promise<RealDistillData> {
  const teacherDir = resolve(o.teacher);
  const pipeline = await PixArtPipeline.fromPretrained(teacherDir, { runtime: o.runtime });
  try {
    const transformer = pipeline.transformer.config;
    const encoder = pipeline.promptEncoder;
    if (!encoder) {
      throw new OptionError(
        `${o.what}: the teacher (${teacherDir}) has no text encoder, which the captions need`,
        'DISTILL_TEACHER',
      );
    }
    const store = await WeightStore.open(join(teacherDir, 'transformer'));
    const teacher = new Map<string, Float32Array>();
    const teacherShapes = new Map<string, number[]>();
    try {
      for (const name of store.names()) {
        teacher.set(name, await store.readFloat32(name));
        teacherShapes.set(name, [...store.info(name).shape]);
      }
    } finally {
      await store.close();
    }
    const train = splitIndices(o.dataset, 'train');
    if (train.length === 0)
      throw new OptionError(`${o.what}: the data set has no training images`, 'TRAIN_CONFIG');
    const latents = await encodeDatasetLatents(o.dataset, join(teacherDir, 'vae'), {
      runtime: o.runtime,
      cacheDir: o.cacheDir === false ? false : (o.cacheDir ?? defaultCacheDir()),
      onProgress: o.onEncodeProgress,
    });
    const [, channels, side] = latents.shape;
    if (channels !== transformer.inChannels) {
      throw new OptionError(
        `${o.what}: the teacher's VAE gives ${channels}-channel latents, its transformer takes ${transformer.inChannels}`,
        'DISTILL_TEACHER',
      );
    }
    const length = pipeline.defaultMaxSequenceLength;
    const width = transformer.captionChannels;
    const embeds = new Float32Array(train.length * length * width);
    const mask = new Float32Array(train.length * length);
    for (let start = 0; start < train.length; start += 64) {
      const prompts = train.slice(start, start + 64).map((i) => o.dataset.items[i].captions[0]);
      const encoded = await encoder.encode(prompts, length);
      embeds.set(encoded.embeds.data as Float32Array, start * length * width);
      mask.set(encoded.mask.data as Float32Array, start * length);
    }
    const empty = await encoder.encode([''], length);
    // The pipeline's parsed config: diffusers writes Python's -Infinity into scheduler configs.
    const schedulerConfig = { ...pipeline.scheduler.config } as Record<string, unknown>;
    return {
      teacherDir,
      pipeline,
      teacher,
      teacherShapes,
      schedulerConfig,
      alphasCumprod: new DPMSolverMultistepScheduler(schedulerConfig).alphasCumprod,
      predictionType: distillPredictionType(schedulerConfig),
      latents,
      channels,
      side,
      length,
      width,
      embeds,
      mask,
      rowOf: new Map(train.map((index, k) => [index, k])),
      empty: { embeds: empty.embeds.data as Float32Array, mask: empty.mask.data as Float32Array },
    };
  } catch (error) {
    await pipeline.close();
    throw error;
  }
}

/** The rows of `embeds` for data set images `indices`; an error names an image outside the training split. */
export function captionRows(data: RealDistillData, indices: readonly number[], what: string): number[] {
  return indices.map((i) => {
    const k = data.rowOf.get(i);
    if (k === undefined)
      throw new OptionError(
        `${what}: image ${i} of the data set is not in the training split`,
        'TRAIN_CONFIG',
      );
    return k;
  });
}

/** Rows `rows` of a [count, size] array, gathered. */
export function gatherRows(source: Float32Array, rows: readonly number[], size: number): Float32Array {
  const out = new Float32Array(rows.length * size);
  rows.forEach((k, b) => out.set(source.subarray(k * size, (k + 1) * size), b * size));
  return out;
}

/** x₀ of data set images `items`: one posterior sample each (drawn now), times the VAE's scaling factor. */
export function posteriorLatents(
  data: RealDistillData,
  items: readonly number[],
  generator: TorchGenerator,
): Float32Array {
  const { channels, side, latents } = data;
  const per = channels * side * side;
  const posterior = generator.randn([items.length, channels, side, side]);
  const x0 = new Float32Array(items.length * per);
  items.forEach((item, b) => {
    const from = item * per;
    for (let i = 0; i < per; i++) {
      const sample = latents.mean[from + i] + Math.fround(latents.std[from + i] * posterior[b * per + i]);
      x0[b * per + i] = Math.fround(sample * latents.scalingFactor);
    }
  });
  return x0;
}
