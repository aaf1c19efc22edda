import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { PNG } from 'pngjs';
import { encodePng, imagesToRgb } from '../../src/io/png.js';
import { seededUniform } from '../random.js';

describe('PNG', () => {
  it('encodes RGB and RGBA pixels that an independent decoder (pngjs) reads back exactly', () => {
    const random = seededUniform(3);
    for (const channels of [3, 4] as const) {
      const [w, h] = [7, 5];
      const pixels = Uint8Array.from({ length: w * h * channels }, () => Math.floor(random() * 256));
      const png = PNG.sync.read(Buffer.from(encodePng(pixels, w, h, channels)));
      assert.equal(png.width, w);
      assert.equal(png.height, h);
      for (let i = 0; i < w * h; i++) {
        for (let c = 0; c < 4; c++) {
          const expected = c < channels ? pixels[i * channels + c] : 255;
          assert.equal(png.data[i * 4 + c], expected, `pixel ${i} channel ${c}`);
        }
      }
    }
  });

  it('turns [B, 3, H, W] images in [0, 1] into RGB bytes with clamping and rounding', () => {
    const data = Float32Array.of(
      0,
      0.5,
      1,
      1.2,
      /* G */ -0.1,
      0.25,
      0.75,
      0.002,
      /* B */ 0.998,
      0.5,
      0.5,
      0.5,
    );
    const [rgb] = imagesToRgb(data, [1, 3, 2, 2]);
    // Pixel by pixel: R, G, B. 0.5·255 = 127.5 rounds half to even (numpy) → 128; 0.998 → 254.
    assert.deepEqual([...rgb], [0, 0, 254, 128, 64, 128, 255, 191, 128, 255, 1, 128]);
  });

  it('rounds halves to even as numpy does', () => {
    // In float32, as numpy computes it, x·255 is exactly 2.5 and 3.5 here: half to even gives 2 and 4.
    const [rgb] = imagesToRgb(Float32Array.of(2.5 / 255, 3.5 / 255, 0), [1, 3, 1, 1]);
    assert.deepEqual([...rgb], [2, 4, 0]);
  });

  it('rejects pixel arrays of the wrong size', () => {
    assert.throws(() => encodePng(new Uint8Array(10), 2, 2, 3), /needs 12 bytes, got 10/);
  });
});
