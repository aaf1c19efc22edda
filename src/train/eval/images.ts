/**
 * Images as the classifier sees them. Real and generated images take the same path: 8-bit RGB (what
 * a PNG of a generated image holds), fitted to the classifier's square with the data set's own
 * resampling (`fitToSquare`: Lanczos-3, no-op at the right size), then bytes → [-1, 1] as the
 * training loader maps them. Generated images of another size (a 16×16 test pipeline, a 128×128
 * model) are thus compared with real emoji after exactly the preparation training images get.
 */
import type { ImageTextDataset } from '../data/dataset.js';
import { datasetImage } from '../data/dataset.js';
import { fitToSquare } from '../data/image.js';
import type { HostTensor } from '../../runtime/host-tensor.js';
import { hostTensor } from '../../runtime/host-tensor.js';

/** Interleaved RGB bytes of size×size images → [N, 3, size, size] float32 in [-1, 1] (byte / 127.5 − 1). */
function rgbToPlanes(images: readonly Uint8Array[], size: number): HostTensor {
  const plane = size * size;
  const out = new Float32Array(images.length * 3 * plane);
  images.forEach((rgb, n) => {
    for (let p = 0; p < plane; p++) {
      for (let c = 0; c < 3; c++) out[(n * 3 + c) * plane + p] = rgb[p * 3 + c] / 127.5 - 1;
    }
  });
  return hostTensor('float32', [images.length, 3, size, size], out);
}

/** RGB images (width×height, interleaved bytes) → the classifier's input at `size`. */
export async function classifierInput(
  images: readonly Uint8Array[],
  width: number,
  height: number,
  size: number,
): Promise<HostTensor> {
  const fitted: Uint8Array[] = [];
  for (const rgb of images) fitted.push(await fitToSquare(rgb, width, height, size));
  return rgbToPlanes(fitted, size);
}

/** Data set images (by index) → the classifier's input at `size`. */
export function datasetClassifierInput(
  dataset: ImageTextDataset,
  indices: readonly number[],
  size: number,
): Promise<HostTensor> {
  return classifierInput(
    indices.map((i) => datasetImage(dataset, i)),
    dataset.size,
    dataset.size,
    size,
  );
}
