/**
 * resizeBicubic against Pillow's bicubic `Image.resize`: the kernel and a 1-D stretch computed by
 * hand, Pillow 9.4's own output for a tiny RGB image (8-bit, up, down and mixed) and for a mode "F"
 * image, and a float64 evaluation of Pillow's documented algorithm (cubic convolution a = −0.5,
 * centres at i + 0.5, kernel stretched when shrinking, out-of-image taps dropped and the rest
 * renormalised) on fresh random images and sizes.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { OptionError } from '../../src/errors.js';
import { bicubicKernel, resizeBicubic } from '../../src/pipelines/pil-resize.js';
import { hostTensor } from '../../src/runtime/host-tensor.js';
import { assertMaxAbsError } from '../compare.js';
import { seededUniform, testSeed } from '../random.js';

/** The 3×5 RGB test image, pixel (x·71 + y·113 + c·29 + 7xy) mod 256, as [1, 3, 3, 5] in [0, 1]. */
function tinyImage(): Float32Array {
  const data = new Float32Array(3 * 3 * 5);
  for (let c = 0; c < 3; c++)
    for (let y = 0; y < 3; y++)
      for (let x = 0; x < 5; x++)
        data[(c * 3 + y) * 5 + x] = ((x * 71 + y * 113 + c * 29 + x * y * 7) % 256) / 255;
  return data;
}

/**
 * Pillow 9.4.0 (`Image.fromarray(a, 'RGB').resize((W, H))`, default filter BICUBIC) on tinyImage,
 * channel-major [c, y, x].
 */
const PIL_RGB: Record<string, { height: number; width: number; bytes: number[] }> = {
  'up ×2 (6×10)': {
    height: 6,
    width: 10,
    bytes: [
      0, 1, 38, 83, 131, 179, 226, 183, 57, 0, 17, 33, 78, 104, 108, 134, 182, 163, 84, 46, 73, 101, 163, 150,
      59, 38, 88, 123, 141, 149, 143, 154, 173, 141, 55, 38, 90, 127, 147, 157, 218, 183, 109, 79, 99, 135,
      189, 177, 103, 69, 253, 197, 78, 49, 119, 180, 236, 200, 82, 27, 13, 30, 67, 112, 160, 208, 255, 212,
      86, 27, 42, 62, 107, 133, 137, 163, 211, 192, 113, 75, 102, 130, 192, 179, 88, 67, 117, 152, 170, 178,
      169, 183, 202, 170, 84, 67, 119, 156, 176, 186, 235, 212, 138, 108, 128, 164, 218, 206, 132, 98, 255,
      226, 107, 78, 148, 209, 255, 229, 111, 56, 42, 59, 96, 147, 208, 174, 42, 4, 55, 79, 76, 96, 137, 167,
      180, 146, 65, 50, 98, 121, 149, 174, 225, 208, 119, 87, 112, 147, 190, 210, 140, 165, 219, 204, 118, 87,
      115, 152, 197, 219, 50, 73, 121, 156, 176, 147, 72, 64, 118, 145, 7, 29, 74, 133, 203, 175, 52, 22, 81,
      110,
    ],
  },
  'taller and narrower (7×4)': {
    height: 7,
    width: 4,
    bytes: [
      0, 95, 210, 58, 22, 100, 181, 76, 78, 113, 103, 122, 137, 120, 48, 158, 168, 103, 106, 135, 185, 81,
      187, 98, 194, 73, 218, 85, 27, 124, 239, 87, 51, 129, 210, 105, 107, 142, 132, 151, 166, 149, 77, 187,
      197, 132, 135, 164, 214, 110, 216, 127, 223, 102, 247, 114, 56, 169, 86, 48, 81, 171, 90, 78, 149, 176,
      99, 157, 195, 178, 106, 216, 135, 170, 102, 169, 56, 161, 96, 100, 25, 157, 94, 75,
    ],
  },
  'down (2×3)': {
    height: 2,
    width: 3,
    bytes: [68, 119, 118, 154, 111, 132, 97, 148, 147, 183, 140, 161, 137, 138, 106, 120, 137, 121],
  },
};

/** Pillow 9.4.0 on channel 0 of tinyImage as a mode "F" image (float32 v / 255) resized to 7×4. */
const PIL_FLOAT_7X4 = [
  -0.009925861842930317, 0.37002167105674744, 0.8226755261421204, 0.22650350630283356, 0.08334997296333313,
  0.3889426290988922, 0.707456648349762, 0.29719823598861694, 0.3036348223686218, 0.44153398275375366,
  0.4028021991252899, 0.48009249567985535, 0.5370821952819824, 0.4709853529930115, 0.1881360113620758,
  0.6209356784820557, 0.660724401473999, 0.40346112847328186, 0.41661712527275085, 0.5279749035835266,
  0.727281928062439, 0.32028666138648987, 0.7323688864707947, 0.38354355096817017, 0.7622296214103699,
  0.28769451379776, 0.852548360824585, 0.33004239201545715,
];

/**
 * Pillow's weight of input pixel `x` for output pixel `i` on an axis of inSize → outSize, in float64
 * from the documented algorithm: kernel a|t|³ − 5a|t|² + 8a|t| − 4a (1 ≤ |t| < 2) and
 * (a + 2)|t|³ − (a + 3)|t|² + 1 (|t| < 1), a = −0.5, at t = (x + 0.5 − centre) / max(1, in/out),
 * centre = (i + 0.5)·in/out; taps within round(centre ± support) and inside the image, normalised.
 */
function pilWeight(inSize: number, outSize: number, i: number, x: number): number {
  const a = -0.5;
  const cubic = (t: number): number => {
    const u = Math.abs(t);
    if (u < 1) return (a + 2) * u ** 3 - (a + 3) * u ** 2 + 1;
    if (u < 2) return a * u ** 3 - 5 * a * u ** 2 + 8 * a * u - 4 * a;
    return 0;
  };
  const ratio = inSize / outSize;
  const stretch = Math.max(1, ratio);
  const centre = (i + 0.5) * ratio;
  const lo = Math.max(0, Math.trunc(centre - 2 * stretch + 0.5));
  const hi = Math.min(inSize, Math.trunc(centre + 2 * stretch + 0.5));
  if (x < lo || x >= hi) return 0;
  let total = 0;
  for (let j = lo; j < hi; j++) total += cubic((j + 0.5 - centre) / stretch);
  return cubic((x + 0.5 - centre) / stretch) / total;
}

describe("resizeBicubic (Pillow's Image.resize, BICUBIC)", () => {
  it('the kernel at hand-computed points: a = −0.5, four taps summing to 1', () => {
    // (1.5t − 2.5)t² + 1 below 1; −0.5((t − 5)t + 8)t + 2 from 1 to 2.
    const values = [0, 0.25, 0.75, 1, 1.25, 1.75, 2, 2.5].map((t) => bicubicKernel(t) + 0);
    assert.deepEqual(values, [1, 0.8671875, 0.2265625, 0, -0.0703125, -0.0234375, 0, 0]);
    assert.equal(bicubicKernel(-0.75), 0.2265625);
    assert.equal(0.8671875 + 0.2265625 - 0.0703125 - 0.0234375, 1);
  });

  it('a row [0, 1] stretched to 4: the taps outside the image dropped, the rest renormalised', () => {
    // Output 0 (centre 0.25) reads pixel 0 at distance 0.25 and pixel 1 at 1.25: (−0.0703125) /
    // (0.8671875 − 0.0703125) = −3/34; output 1 (centre 0.75): 0.2265625 / 1.09375 = 29/140. An
    // edge clamp would fold the dropped taps onto pixel 0 and give −0.0703125 at output 0.
    const row = hostTensor('float32', [1, 1, 1, 2], Float32Array.from([0, 1]));
    const float = resizeBicubic(row, { height: 1, width: 4 }, { precision: 'float32' });
    const expected = [-3 / 34, 29 / 140, 111 / 140, 37 / 34];
    assert.deepEqual([...(float.data as Float32Array)], expected.map(Math.fround));
    // 8 bits: 255·29/140 = 52.8 with 22-bit weights and rounding → 53; 202.2 → 202; −22.5 → 0.
    const bytes = resizeBicubic(row, { height: 1, width: 4 });
    assert.deepEqual(
      [...(bytes.data as Float32Array)],
      [0, 53, 202, 255].map((b) => Math.fround(b / 255)),
    );
  });

  for (const [name, { height, width, bytes }] of Object.entries(PIL_RGB)) {
    it(`Pillow 9.4's bytes for a 3×5 RGB image, ${name}`, () => {
      const image = hostTensor('float32', [1, 3, 3, 5], tinyImage());
      const out = resizeBicubic(image, { height, width });
      assert.deepEqual(out.shape, [1, 3, height, width]);
      // Read back as pil_to_numpy does: the byte / 255 in float32.
      assert.deepEqual(
        [...(out.data as Float32Array)],
        bytes.map((b) => Math.fround(b / 255)),
      );
    });
  }

  it('Pillow 9.4\'s mode "F" output (float32 passes), 3×5 → 7×4', () => {
    const channel = tinyImage().subarray(0, 15);
    const out = resizeBicubic(
      hostTensor('float32', [1, 1, 3, 5], channel),
      { height: 7, width: 4 },
      {
        precision: 'float32',
      },
    );
    assert.deepEqual([...(out.data as Float32Array)], PIL_FLOAT_7X4.map(Math.fround));
  });

  it('float32 precision: the float64 algorithm on fresh images, sizes up, down and mixed, batch 2', () => {
    const random = seededUniform(testSeed('resizeBicubic float64'));
    for (let trial = 0; trial < 6; trial++) {
      const [inH, inW] = [1 + Math.floor(random() * 9), 1 + Math.floor(random() * 9)];
      const [outH, outW] = [1 + Math.floor(random() * 19), 1 + Math.floor(random() * 19)];
      const planes = 2 * 2;
      const data = Float32Array.from({ length: planes * inH * inW }, () => random());
      const out = resizeBicubic(
        hostTensor('float32', [2, 2, inH, inW], data),
        { height: outH, width: outW },
        {
          precision: 'float32',
        },
      );
      const expected = new Float64Array(planes * outH * outW);
      for (let p = 0; p < planes; p++)
        for (let i = 0; i < outH; i++)
          for (let j = 0; j < outW; j++) {
            let sum = 0;
            for (let y = 0; y < inH; y++)
              for (let x = 0; x < inW; x++)
                sum +=
                  pilWeight(inH, outH, i, y) * pilWeight(inW, outW, j, x) * data[(p * inH + y) * inW + x];
            expected[(p * outH + i) * outW + j] = sum;
          }
      // Pillow rounds to float32 between the passes; the weights' |sum| stays below 1.3.
      assertMaxAbsError(out.data as Float32Array, expected, 3e-7, `${inH}×${inW} → ${outH}×${outW}`);
    }
  });

  it('the same size: no pass, the 8-bit quantization only (values outside [0, 1] clamped)', () => {
    const data = Float32Array.from([0.5, 0.2, -0.3, 1.7, 0.4 / 255, 1]);
    const out = resizeBicubic(hostTensor('float32', [1, 1, 2, 3], data), { height: 2, width: 3 });
    // numpy's round(v·255) (127.5 → 128), then / 255.
    assert.deepEqual(
      [...(out.data as Float32Array)],
      [128, 51, 0, 255, 0, 255].map((b) => Math.fround(b / 255)),
    );
    const same = resizeBicubic(
      hostTensor('float32', [1, 1, 2, 3], data),
      { height: 2, width: 3 },
      {
        precision: 'float32',
      },
    );
    assert.deepEqual([...(same.data as Float32Array)], [...data]);
  });

  it('errors: sizes that are not integers ≥ 1, images that are not [N, C, H, W]', () => {
    const image = hostTensor('float32', [1, 3, 2, 2], new Float32Array(12));
    for (const size of [
      { height: 0, width: 2 },
      { height: 2, width: 2.5 },
    ]) {
      assert.throws(
        () => resizeBicubic(image, size),
        (e: unknown) => e instanceof OptionError && /must be an integer ≥ 1, got/.test(e.message),
      );
    }
    assert.throws(
      () => resizeBicubic(hostTensor('float32', [3, 2, 2], new Float32Array(12)), { height: 4, width: 4 }),
      (e: unknown) =>
        e instanceof OptionError && /expected images \[N, C, H, W\], got \[3, 2, 2\]/.test(e.message),
    );
  });
});
