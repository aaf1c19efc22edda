/** PSNR against its definition; mean SSIM (ssim.js, 'original') on known cases. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import type { RgbImage } from '../../../src/train/eval/image-similarity.js';
import { meanSsim, psnr } from '../../../src/train/eval/image-similarity.js';
import { seededUniform, testSeed } from '../../random.js';

function randomImage(random: () => number, size = 32): RgbImage {
  // Smooth structure (a gradient and a disc) so that SSIM's windows see contrast.
  const data = new Uint8Array(size * size * 3);
  for (let y = 0; y < size; y++)
    for (let x = 0; x < size; x++)
      for (let c = 0; c < 3; c++) {
        const disc = (x - size / 2) ** 2 + (y - size / 2) ** 2 < (size / 4) ** 2 ? 120 : 0;
        data[3 * (y * size + x) + c] = Math.min(255, Math.round(4 * x + disc + 20 * random()));
      }
  return { width: size, height: size, data };
}

function withNoise(img: RgbImage, random: () => number, amplitude: number): RgbImage {
  const data = Uint8Array.from(img.data, (v) =>
    Math.max(0, Math.min(255, Math.round(v + amplitude * (random() - 0.5)))),
  );
  return { ...img, data };
}

describe('psnr and meanSsim', () => {
  it('PSNR is 10·log10(255² / MSE), Infinity for identical images', () => {
    const a: RgbImage = { width: 2, height: 1, data: Uint8Array.from([10, 20, 30, 40, 50, 60]) };
    const b: RgbImage = { width: 2, height: 1, data: Uint8Array.from([12, 20, 30, 40, 50, 56]) };
    // MSE = (4 + 16) / 6
    assert.ok(Math.abs(psnr(a, b) - 10 * Math.log10((255 * 255 * 6) / 20)) < 1e-12);
    assert.equal(psnr(a, a), Infinity);
  });

  it('SSIM is 1 for identical images and falls as noise grows; PSNR falls with it', () => {
    const random = seededUniform(testSeed('ssim noise'));
    const img = randomImage(random);
    assert.ok(Math.abs(meanSsim(img, img) - 1) < 1e-12);
    const light = withNoise(img, random, 8);
    const heavy = withNoise(img, random, 80);
    const [s1, s2] = [meanSsim(img, light), meanSsim(img, heavy)];
    assert.ok(s1 < 1 && s2 < s1 && s2 > 0, `ssim ${s1}, ${s2}`);
    assert.ok(psnr(img, light) > psnr(img, heavy));
  });

  it('rejects images of different sizes', () => {
    const random = seededUniform(1);
    assert.throws(
      () => psnr(randomImage(random, 8), randomImage(random, 16)),
      /differ in size: 8×8 and 16×16/,
    );
  });
});
