import { ssim } from 'ssim.js';

import { OptionError } from '../../errors.js';
import type { RgbImage } from '../sample-grid.js';

export type { RgbImage };

function checkPair(a: RgbImage, b: RgbImage): void {
  if (a.width !== b.width || a.height !== b.height || a.data.length !== b.data.length)
    throw new OptionError(`images differ in size: ${a.width}×${a.height} and ${b.width}×${b.height}`);
  if (a.data.length !== a.width * a.height * 3)
    throw new OptionError(
      `an RGB image of ${a.width}×${a.height} needs ${a.width * a.height * 3} bytes, got ${a.data.length}`,
    );
}

/** Peak signal-to-noise ratio in dB over the RGB channels (peak 255); Infinity for identical images. */
export function psnr(a: RgbImage, b: RgbImage): number {
  checkPair(a, b);
  let sum = 0;
  for (let i = 0; i < a.data.length; i++) sum += (a.data[i] - b.data[i]) ** 2;
  const mse = sum / a.data.length;
  return mse === 0 ? Infinity : 10 * Math.log10((255 * 255) / mse);
}

/**
 * Mean SSIM (Wang et al. 2004: 11×11 Gaussian window σ = 1.5, K1 = 0.01, K2 = 0.03) on luma, as the
 * ssim.js package computes it in its 'original' mode; 1 for identical images.
 */
export function meanSsim(a: RgbImage, b: RgbImage): number {
  checkPair(a, b);
  const rgba = (img: RgbImage): { width: number; height: number; data: Uint8ClampedArray } => {
    const data = new Uint8ClampedArray(img.width * img.height * 4);
    for (let p = 0; p < img.width * img.height; p++) {
      data[4 * p] = img.data[3 * p];
      data[4 * p + 1] = img.data[3 * p + 1];
      data[4 * p + 2] = img.data[3 * p + 2];
      data[4 * p + 3] = 255;
    }
    return { width: img.width, height: img.height, data };
  };
  return ssim(rgba(a), rgba(b), { ssim: 'original', downsample: false }).mssim;
}
