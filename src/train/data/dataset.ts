/**
 * A prepared image–text data set in memory: square uint8 RGB images, their caption variants, their
 * labels (emoji) and their side of the train/validation split. Both sources — the emoji packages and
 * a user's image folder — produce this, through the cache; the loader reads only this.
 */
import { OptionError } from '../../errors.js';
import type { BadFile } from './errors.js';
import type { SplitName } from './split.js';

/** Class indices of one image, into `LabelNames`' lists. */
export interface ItemLabels {
  readonly category: number;
  readonly subcategory: number;
  /** The set's style: 0 noto, 1 twemoji (`LabelNames.style`). */
  readonly style: number;
}

/** The label vocabularies: what the classifier predicts and the alignment metric groups by. */
export interface LabelNames {
  readonly category: readonly string[];
  readonly subcategory: readonly string[];
  readonly style: readonly string[];
}

export interface DatasetItem {
  /** Stable name of the image: 'noto/2764-FE0F', or the file_name of an image folder. */
  readonly id: string;
  /** Caption variants, the canonical one first; at least one. */
  readonly captions: readonly string[];
  /** What the split keeps on one side: the base emoji, or the file_name. */
  readonly group: string;
  /** Emoji only. */
  readonly labels?: ItemLabels;
}

export interface ImageTextDataset {
  /** Side of the square images in pixels. */
  readonly size: number;
  /** items.length·size·size·3 bytes: image i's RGB rows (row-major, interleaved) at i·size·size·3. */
  readonly pixels: Uint8Array;
  readonly items: readonly DatasetItem[];
  /** Label vocabularies, where the items have labels. */
  readonly labelNames: LabelNames | undefined;
  /** Each item's side of the split. */
  readonly split: readonly SplitName[];
  /** Entries of an image folder that were skipped (onBadFile: 'skip'); empty otherwise. */
  readonly badFiles: readonly BadFile[];
  /**
   * SHA-256 (hex) of the inputs and options the pixels, captions and labels were made from: the cache
   * key, and what a checkpoint can keep to refuse resuming on other data (the split is not in it).
   */
  readonly key: string;
  /** The cache entry's folder, or undefined when caching was off. */
  readonly cacheEntry: string | undefined;
  /** Whether the pixels came from the cache rather than from decoding. */
  readonly fromCache: boolean;
}

/** Checks a training image size once, for every source: an integer side in [8, 4096]. */
export function checkImageSize(size: number): void {
  if (!Number.isInteger(size) || size < 8 || size > 4096) {
    throw new OptionError(
      `size must be an integer number of pixels in [8, 4096], found ${size}`,
      'INVALID_IMAGE_SIZE',
    );
  }
}

/** Image `index` as a view of the data set's pixels: size·size·3 bytes of RGB rows. */
export function datasetImage(dataset: ImageTextDataset, index: number): Uint8Array {
  const bytes = dataset.size * dataset.size * 3;
  if (!Number.isInteger(index) || index < 0 || index >= dataset.items.length) {
    throw new RangeError(`image ${index} of a data set of ${dataset.items.length}`);
  }
  return dataset.pixels.subarray(index * bytes, (index + 1) * bytes);
}

/** Indices of the items on one side of the split (or all of them), in data set order. */
export function splitIndices(dataset: ImageTextDataset, which: SplitName | 'all'): number[] {
  const indices: number[] = [];
  for (let i = 0; i < dataset.items.length; i++) {
    if (which === 'all' || dataset.split[i] === which) indices.push(i);
  }
  return indices;
}

/**
 * `work` over every input with at most `concurrency` calls in flight (decoding runs on libuv's
 * threads, so a few in flight keep two cores busy), results in input order.
 */
export async function mapConcurrently<T, R>(
  inputs: readonly T[],
  concurrency: number,
  work: (input: T, index: number) => Promise<R>,
  onProgress?: (done: number, total: number) => void,
): Promise<R[]> {
  if (!Number.isInteger(concurrency) || concurrency < 1) {
    throw new OptionError(
      `concurrency must be a positive integer, found ${concurrency}`,
      'INVALID_CONCURRENCY',
    );
  }
  const results = new Array<R>(inputs.length);
  let next = 0;
  let done = 0;
  const worker = async (): Promise<void> => {
    while (next < inputs.length) {
      const index = next++;
      results[index] = await work(inputs[index], index);
      onProgress?.(++done, inputs.length);
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, inputs.length) }, worker));
  return results;
}
