/**
 * A data set encoded once by a frozen VAE: every image's latent posterior (mean and std of the
 * diagonal Gaussian, unscaled), so that latent-diffusion training never runs the encoder. Trainers
 * draw z = mean + std·ε per step, as diffusers' `latent_dist.sample()` does, which keeps the
 * posterior's noise as augmentation where caching one sample per image would not.
 *
 * Cached on disk as safetensors under a SHA-256 of the VAE folder's files (config and weights) and
 * the data set's key: retraining the VAE or changing the data is a new entry, never a stale read.
 */
import { createHash } from 'node:crypto';
import { mkdir, readdir, readFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';

import { OptionError } from '../errors.js';
import { errnoCode } from '../io/errno.js';
import { SafetensorsFile, writeSafetensors } from '../io/safetensors.js';
import { AutoencoderKL } from '../models/autoencoder-kl.js';
import { hostTensor } from '../runtime/host-tensor.js';
import type { Runtime } from '../runtime/runtime.js';
import type { WarningHandler } from '../warnings.js';
import type { ImageTextDataset } from './data/dataset.js';

/** Bumped when the cached layout or the encoding changes. */
const LATENT_CACHE_VERSION = 1;

export interface DatasetLatents {
  /** [N, latent_channels, h, w] per data set item, in data set order; unscaled (before scaling_factor). */
  readonly mean: Float32Array;
  readonly std: Float32Array;
  readonly shape: readonly [number, number, number, number];
  /** The VAE's scaling_factor: what a pipeline divides latents by before decoding. */
  readonly scalingFactor: number;
  /** SHA-256 of the VAE folder's config and weights. */
  readonly vaeHash: string;
  /** The cache file, or undefined when caching was off. */
  readonly cacheFile: string | undefined;
  readonly fromCache: boolean;
}

export interface EncodeDatasetOptions {
  runtime: Runtime;
  /** Where entries are kept (a `latents/` folder is made in it); false: encode in memory only. */
  cacheDir: string | false;
  /** Images per encoder run (default 32). */
  batchSize?: number;
  onProgress?: (done: number, total: number) => void;
  onWarning?: WarningHandler;
}

/** SHA-256 of a model folder's config.json and *.safetensors files (names and bytes, in name order). */
export async function hashModelFolder(dir: string): Promise<string> {
  const files = (await readdir(dir)).filter((f) => f === 'config.json' || f.endsWith('.safetensors')).sort();
  if (!files.some((f) => f.endsWith('.safetensors'))) {
    throw new OptionError(
      `${dir} holds no .safetensors weights: expected a model folder (config.json and its weights)`,
      'MODEL_WEIGHTS_MISSING',
    );
  }
  const hash = createHash('sha256');
  for (const file of files) {
    hash.update(`${file}\0`);
    hash.update(await readFile(join(dir, file)));
  }
  return hash.digest('hex');
}

/** Encode every image of `dataset` with the VAE in `vaeDir`, or read the encoding from the cache. */
export async function encodeDatasetLatents(
  dataset: ImageTextDataset,
  vaeDir: string,
  options: EncodeDatasetOptions,
): Promise<DatasetLatents> {
  const dir = resolve(vaeDir);
  const vaeHash = await hashModelFolder(dir);
  const key = createHash('sha256')
    .update(JSON.stringify({ version: LATENT_CACHE_VERSION, vae: vaeHash, dataset: dataset.key }))
    .digest('hex');
  const cacheFile =
    options.cacheDir === false
      ? undefined
      : join(options.cacheDir, 'latents', `${key.slice(0, 24)}.safetensors`);
  const vae = await AutoencoderKL.fromPretrained(dir, {
    runtime: options.runtime,
    onWarning: options.onWarning,
  });
  try {
    const { latentChannels, scalingFactor } = vae.config;
    const side = dataset.size / vae.vaeScaleFactor;
    if (!Number.isInteger(side)) {
      throw new OptionError(
        `images of ${dataset.size} px are not a multiple of the VAE's factor ${vae.vaeScaleFactor} (${dir})`,
        'VAE_SIZE',
      );
    }
    const shape = [dataset.items.length, latentChannels, side, side] as const;
    const count = shape.reduce((a, b) => a * b, 1);
    if (cacheFile !== undefined) {
      const cached = await readCachedLatents(cacheFile, key, count);
      if (cached) return { ...cached, shape, scalingFactor, vaeHash, cacheFile, fromCache: true };
    }
    const mean = new Float32Array(count);
    const std = new Float32Array(count);
    const batchSize = options.batchSize ?? 32;
    const plane = dataset.size * dataset.size;
    const latentItem = count / dataset.items.length;
    for (let start = 0; start < dataset.items.length; start += batchSize) {
      const n = Math.min(batchSize, dataset.items.length - start);
      // HWC bytes → CHW floats in [-1, 1], as the loader prepares them.
      const images = new Float32Array(n * 3 * plane);
      for (let b = 0; b < n; b++) {
        const source = (start + b) * plane * 3;
        for (let i = 0; i < plane; i++) {
          for (let c = 0; c < 3; c++)
            images[(b * 3 + c) * plane + i] = dataset.pixels[source + i * 3 + c] / 127.5 - 1;
        }
      }
      const encoding = await vae.encode(hostTensor('float32', [n, 3, dataset.size, dataset.size], images));
      mean.set(encoding.latentMean.data as Float32Array, start * latentItem);
      std.set(encoding.latentStd.data as Float32Array, start * latentItem);
      options.onProgress?.(start + n, dataset.items.length);
    }
    if (cacheFile !== undefined) {
      await mkdir(join(cacheFile, '..'), { recursive: true });
      await writeSafetensors(
        cacheFile,
        {
          mean: { dtype: 'F32', shape: [...shape], data: mean },
          std: { dtype: 'F32', shape: [...shape], data: std },
        },
        { format: 'velodiff-latents', key, vae: dir },
      );
    }
    return { mean, std, shape, scalingFactor, vaeHash, cacheFile, fromCache: false };
  } finally {
    await vae.close();
  }
}

/** The cached mean and std, or undefined when the file is absent, of another key, or of another size. */
async function readCachedLatents(
  path: string,
  key: string,
  count: number,
): Promise<{ mean: Float32Array; std: Float32Array } | undefined> {
  let file: SafetensorsFile;
  try {
    file = await SafetensorsFile.open(path);
  } catch (error) {
    if (errnoCode(error) === 'ENOENT' || (error as { code?: string }).code === 'FILE_MISSING')
      return undefined;
    throw error;
  }
  if (file.metadata.key !== key || !file.has('mean') || !file.has('std')) return undefined;
  const read = async (name: string): Promise<Float32Array | undefined> => {
    const bytes = await file.readBytes(name);
    if (file.info(name).dtype !== 'F32' || bytes.byteLength !== 4 * count) return undefined;
    return new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength));
  };
  const mean = await read('mean');
  const std = await read('std');
  return mean && std ? { mean, std } : undefined;
}
