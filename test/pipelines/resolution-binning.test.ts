/**
 * Resolution binning (src/pipelines/resolution-binning.ts) against diffusers 0.40's
 * `classify_height_width_bin` (bins worked out by hand from the tables below each case) and
 * `resize_and_crop_tensor` (a float64 bilinear loop with torch's align_corners=False rule).
 */
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { OptionError } from '../../src/errors.js';
import type { AutoencoderKL } from '../../src/models/autoencoder-kl.js';
import { DiffusionPipeline } from '../../src/pipelines/index.js';
import {
  ASPECT_RATIO_1024_BIN,
  ASPECT_RATIO_2048_BIN,
  ASPECT_RATIO_256_BIN,
  ASPECT_RATIO_512_BIN,
  aspectRatioBinsFor,
  classifyHeightWidthBin,
  resizeAndCropPlan,
  resizeAndCropTensor,
} from '../../src/pipelines/resolution-binning.js';
import type { HostTensor } from '../../src/runtime/host-tensor.js';
import { hostTensor } from '../../src/runtime/host-tensor.js';
import { Runtime } from '../../src/runtime/runtime.js';
import { tinyPixArtPipeline } from '../fixtures/tiny-pixart-pipeline.js';
import { assertClose, compareValues } from '../compare.js';
import { randomTensor, readAllTensors } from '../helpers.js';
import { seededUniform, testSeed } from '../random.js';

const GOLDEN_CASE = fileURLToPath(
  new URL('../golden/pipelines/pipeline_pixart_alpha_ddim/', import.meta.url),
);
const runtime = new Runtime({ worker: false, threads: 1 });
after(() => runtime.dispose());

/** A fresh seed per run, printed and named in failure messages; VELODIFF_TEST_SEED replays it. */
const SEED = testSeed('resolution binning inputs');

describe('classifyHeightWidthBin', () => {
  const cases: {
    what: string;
    size: [number, number];
    bins: typeof ASPECT_RATIO_1024_BIN;
    bin: [number, number];
  }[] = [
    // 1.0 is a key: exact.
    { what: '1024² in the 1024 table', size: [1024, 1024], bins: ASPECT_RATIO_1024_BIN, bin: [1024, 1024] },
    // 1000/600 = 1.667: |1.67 − 1.667| = 0.003 beats 1.75 (0.083) and 1.46 (0.207).
    { what: '1000×600 → "1.67"', size: [1000, 600], bins: ASPECT_RATIO_1024_BIN, bin: [1280, 768] },
    // 768/1024 = 0.75 is 0.030000000000000027 from both 0.72 and 0.78 in float64; Python's min keeps the first.
    {
      what: '768×1024: a tie goes to "0.72"',
      size: [768, 1024],
      bins: ASPECT_RATIO_1024_BIN,
      bin: [832, 1152],
    },
    // 1280/1024 = 1.25 ties 1.21 and 1.29 (0.040000000000000036 each) → the first, 1.21.
    {
      what: '1280×1024: a tie goes to "1.21"',
      size: [1280, 1024],
      bins: ASPECT_RATIO_1024_BIN,
      bin: [1088, 896],
    },
    // 2890/1000 = 2.89: no such key in the 1024 table, 3.0 (0.11) beats 2.5 (0.39).
    {
      what: '2890×1000 in the 1024 table → "3.0"',
      size: [2890, 1000],
      bins: ASPECT_RATIO_1024_BIN,
      bin: [1728, 576],
    },
    // ... while the 2048 table has "2.89" itself.
    {
      what: '2890×1000 in the 2048 table → "2.89"',
      size: [2890, 1000],
      bins: ASPECT_RATIO_2048_BIN,
      bin: [3328, 1152],
    },
    // 1080/1920 = 0.5625: 0.57 (0.0075) beats 0.52 (0.0425).
    {
      what: '1080×1920 in the 2048 table → "0.57"',
      size: [1080, 1920],
      bins: ASPECT_RATIO_2048_BIN,
      bin: [1536, 2688],
    },
    // 300/1200 = 0.25 exactly.
    {
      what: '300×1200 in the 512 table → "0.25"',
      size: [300, 1200],
      bins: ASPECT_RATIO_512_BIN,
      bin: [256, 1024],
    },
    // 100/10000 = 0.01, beyond the table: the nearest end, 0.25.
    {
      what: '100×10000 in the 256 table → "0.25"',
      size: [100, 10000],
      bins: ASPECT_RATIO_256_BIN,
      bin: [128, 512],
    },
    // 20000/100 = 200 → "4.0".
    {
      what: '20000×100 in the 256 table → "4.0"',
      size: [20000, 100],
      bins: ASPECT_RATIO_256_BIN,
      bin: [512, 128],
    },
    // 61/41 = 1.488: 1.46 (0.028) beats 1.67 (0.18).
    { what: '61×41 in the 256 table → "1.46"', size: [61, 41], bins: ASPECT_RATIO_256_BIN, bin: [304, 208] },
  ];
  for (const c of cases) {
    it(c.what, () => {
      assert.deepEqual(classifyHeightWidthBin(c.size[0], c.size[1], c.bins), c.bin);
    });
  }

  it('tables hold what diffusers holds: sizes per ratio and key order', () => {
    assert.equal(Object.keys(ASPECT_RATIO_256_BIN).length, 33);
    assert.equal(Object.keys(ASPECT_RATIO_2048_BIN).length, 40);
    // The 256/512/1024 tables are one table scaled by 1/4, 1/2, 1.
    for (const [ratio, [h, w]] of Object.entries(ASPECT_RATIO_1024_BIN)) {
      assert.deepEqual(ASPECT_RATIO_512_BIN[ratio], [h / 2, w / 2], ratio);
      assert.deepEqual(ASPECT_RATIO_256_BIN[ratio], [h / 4, w / 4], ratio);
    }
    for (const table of [ASPECT_RATIO_1024_BIN, ASPECT_RATIO_2048_BIN]) {
      const ratios = Object.keys(table).map(Number);
      assert.deepEqual(
        ratios,
        [...ratios].sort((a, b) => a - b),
        'keys ascend as in diffusers',
      );
    }
  });
});

describe('aspectRatioBinsFor', () => {
  it('selects tables by transformer sample_size as each diffusers pipeline does', () => {
    assert.equal(aspectRatioBinsFor('PixArtAlphaPipeline', 128, undefined), ASPECT_RATIO_1024_BIN);
    assert.equal(aspectRatioBinsFor('PixArtAlphaPipeline', 64, true), ASPECT_RATIO_512_BIN);
    assert.equal(aspectRatioBinsFor('PixArtAlphaPipeline', 32, undefined), ASPECT_RATIO_256_BIN);
    assert.equal(aspectRatioBinsFor('PixArtSigmaPipeline', 256, undefined), ASPECT_RATIO_2048_BIN);
    assert.equal(aspectRatioBinsFor('PixArtSigmaPipeline', 128, true), ASPECT_RATIO_1024_BIN);
    assert.equal(aspectRatioBinsFor('PixArtSigmaPipeline', 128, false), undefined);
  });

  it('unset with no table: no binning; true with no table: an OptionError as diffusers raises', () => {
    assert.equal(aspectRatioBinsFor('PixArtAlphaPipeline', 8, undefined), undefined);
    // PixArt-α has no 2048 table: only Σ does.
    assert.equal(aspectRatioBinsFor('PixArtAlphaPipeline', 256, undefined), undefined);
    assert.throws(
      () => aspectRatioBinsFor('PixArtAlphaPipeline', 256, true),
      (e: unknown) =>
        e instanceof OptionError &&
        /sample_size 32, 64, 128 only/.test(e.message) &&
        /sample_size 256/.test(e.message) &&
        /useResolutionBinning: false/.test(e.message),
    );
  });
});

describe('resizeAndCropPlan', () => {
  it('scales to cover the target, truncates, crops the center', () => {
    // ratio = max(1000/1280, 600/768) = 0.78125 on both axes: exact, no crop.
    assert.deepEqual(resizeAndCropPlan(1280, 768, 1000, 600), {
      resizedHeight: 1000,
      resizedWidth: 600,
      top: 0,
      left: 0,
    });
    // ratio = max(21/128, 203/512) = 0.396484375; 128 · ratio = 50.75 → 50; top = (50 − 21) // 2 = 14.
    assert.deepEqual(resizeAndCropPlan(128, 512, 21, 203), {
      resizedHeight: 50,
      resizedWidth: 203,
      top: 14,
      left: 0,
    });
    assert.equal(resizeAndCropPlan(256, 256, 256, 256), undefined);
  });

  it('keeps a side the float product leaves one short (diffusers would crop it to 1 pixel)', () => {
    // 1856 · (248 / 1856) = 247.99999999999997 in float64.
    assert.equal(1856 * (248 / 1856) < 248, true);
    assert.deepEqual(resizeAndCropPlan(512, 1856, 68, 248), {
      resizedHeight: 68,
      resizedWidth: 248,
      top: 0,
      left: 0,
    });
  });
});

/** torch's bilinear source index and weight along one axis (align_corners=False, size given). */
function sourceTaps(inSize: number, outSize: number): { i0: number; i1: number; lambda: number }[] {
  const scale = inSize / outSize;
  return Array.from({ length: outSize }, (_, o) => {
    const src = Math.max(0, scale * (o + 0.5) - 0.5);
    const i0 = Math.floor(src);
    return { i0, i1: Math.min(i0 + 1, inSize - 1), lambda: src - i0 };
  });
}

/** diffusers' resize_and_crop_tensor in float64: F.interpolate(bilinear) then the center slice. */
function resizeAndCropRef(x: HostTensor, newWidth: number, newHeight: number): Float64Array {
  const [n, c, h, w] = x.shape;
  const ratio = Math.max(newHeight / h, newWidth / w);
  const resizedHeight = Math.trunc(h * ratio);
  const resizedWidth = Math.trunc(w * ratio);
  const top = Math.floor((resizedHeight - newHeight) / 2);
  const left = Math.floor((resizedWidth - newWidth) / 2);
  const rows = sourceTaps(h, resizedHeight);
  const cols = sourceTaps(w, resizedWidth);
  const data = x.data as Float32Array;
  const out = new Float64Array(n * c * newHeight * newWidth);
  let k = 0;
  for (let plane = 0; plane < n * c; plane++) {
    const at = (y: number, xx: number): number => data[plane * h * w + y * w + xx];
    for (let oy = top; oy < top + newHeight; oy++) {
      const r = rows[oy];
      for (let ox = left; ox < left + newWidth; ox++) {
        const q = cols[ox];
        const upper = (1 - q.lambda) * at(r.i0, q.i0) + q.lambda * at(r.i0, q.i1);
        const lower = (1 - q.lambda) * at(r.i1, q.i0) + q.lambda * at(r.i1, q.i1);
        out[k++] = (1 - r.lambda) * upper + r.lambda * lower;
      }
    }
  }
  return out;
}

/**
 * ORT (like torch) computes source coordinates in float32, so a bilinear weight may be off by a few
 * ulps of the largest coordinate; the output by that times the spread of the values.
 */
function resizeTolerance(inHeight: number, inWidth: number, valueSpan: number): number {
  return 4 * 2 ** -23 * Math.max(inHeight, inWidth) * valueSpan + 1e-6;
}

describe('resizeAndCropTensor (ORT graph) vs a float64 reference', () => {
  const cases: { what: string; shape: number[]; newWidth: number; newHeight: number }[] = [
    // ratio = max(9/7, 4/5) = 9/7: 9 × trunc(6.43) = 6, crop 1 column on the left.
    { what: 'up, crop width', shape: [2, 3, 7, 5], newWidth: 4, newHeight: 9 },
    // ratio = max(8/6, 4/6): 8 × 8, crop 2 columns on the left.
    { what: 'up, square to tall', shape: [1, 3, 6, 6], newWidth: 4, newHeight: 8 },
    // ratio = max(2/8, 5/12) = 0.4167: trunc(3.33) = 3 × 5, crop rows [0, 2).
    { what: 'down, crop height', shape: [1, 3, 8, 12], newWidth: 5, newHeight: 2 },
    // A 256-table bin back to a requested size: 128×512 → 50×203 → rows [14, 35).
    { what: 'bin 128×512 → 21×203', shape: [1, 3, 128, 512], newWidth: 203, newHeight: 21 },
    // ratio = max(3/3, 5/4) = 1.25: trunc(3.75) = 3 rows (resampled at scale 1, i.e. copied), 5 columns.
    { what: 'only the width changes', shape: [1, 2, 3, 4], newWidth: 5, newHeight: 3 },
  ];
  cases.forEach((c, i) => {
    it(`${c.what}: [${c.shape.join(', ')}] → ${c.newHeight}×${c.newWidth}`, async () => {
      const x = randomTensor(c.shape, seededUniform(SEED + i), -1.5, 1.5);
      const out = await resizeAndCropTensor(runtime, x, c.newWidth, c.newHeight);
      assert.deepEqual(out.shape, [c.shape[0], c.shape[1], c.newHeight, c.newWidth]);
      assertClose(out.data as Float32Array, resizeAndCropRef(x, c.newWidth, c.newHeight), {
        atol: resizeTolerance(c.shape[2], c.shape[3], 3),
        rtol: 0,
        what: `${c.what} (seed ${SEED}, case ${i})`,
      });
    });
  });

  it('returns the images unchanged at the target size', async () => {
    const x = randomTensor([1, 3, 4, 6], seededUniform(SEED));
    assert.equal(await resizeAndCropTensor(runtime, x, 6, 4), x);
  });
});

describe('PixArtPipeline.run with resolution binning (tiny pipeline, sample_size 32 → 256 table)', () => {
  /** The tiny pipeline with its transformer's sample_size set to 32, the smallest size with a table. */
  async function tinyPipelineWithSampleSize32(): Promise<string> {
    const dir = await tinyPixArtPipeline();
    const config = join(dir, 'transformer', 'config.json');
    const raw = JSON.parse(await readFile(config, 'utf8')) as Record<string, unknown>;
    await writeFile(config, JSON.stringify({ ...raw, sample_size: 32 }));
    return dir;
  }

  it('generates at the bin, decodes, then resizes and crops to the requested size before [0, 1]', async () => {
    const pipe = await DiffusionPipeline.fromPretrained(await tinyPipelineWithSampleSize32(), { runtime });
    const inputs = await readAllTensors(`${GOLDEN_CASE}inputs.safetensors`);
    // 21/203 = 0.103 → "0.25": [128, 512]; the VAE factor is 2, so latents are 64 × 256. Neither 21
    // nor 203 is a multiple of 4 (VAE factor × patch size): binning makes them valid.
    const latentShape = [1, 4, 64, 256];
    const latents = randomTensor(latentShape, seededUniform(SEED), -2, 2);
    const out = await pipe.run({
      promptEmbeds: inputs.prompt_embeds,
      promptAttentionMask: inputs.prompt_attention_mask,
      latents,
      numInferenceSteps: 1,
      guidanceScale: 1,
      height: 21,
      width: 203,
    });
    assert.deepEqual(out.latents.shape, latentShape);
    assert.ok(out.images);
    assert.deepEqual(out.images.shape, [1, 3, 21, 203]);
    const scale = (pipe.vae as AutoencoderKL).config.scalingFactor;
    const z = hostTensor(
      'float32',
      latentShape,
      (out.latents.data as Float32Array).map((v) => Math.fround(v / scale)),
    );
    const decoded = (await (pipe.vae as AutoencoderKL).decode(z)).sample;
    assert.deepEqual(decoded.shape, [1, 3, 128, 512]);
    const toUnit = (v: number): number => Math.min(1, Math.max(0, v / 2 + 0.5));
    const expected = resizeAndCropRef(decoded, 203, 21).map(toUnit);
    const values = decoded.data as Float32Array;
    const span =
      values.reduce((m, v) => Math.max(m, v), -Infinity) - values.reduce((m, v) => Math.min(m, v), Infinity);
    const atol = resizeTolerance(128, 512, span / 2);
    assertClose(out.images.data as Float32Array, expected, { atol, rtol: 0, what: `image (seed ${SEED})` });
    // The order matters where the decoder leaves [-1, 1]: clamping before the resize differs.
    const clampedFirst = resizeAndCropRef(hostTensor('float32', decoded.shape, values.map(toUnit)), 203, 21);
    const orderGap = compareValues(clampedFirst, expected, 'clamp-then-resize').maxAbsError;
    assert.ok(
      orderGap > 10 * atol,
      `clamp-then-resize differs by only ${orderGap}: the check cannot see the order`,
    );

    // Off: the size is used as given, so it must fit the VAE and patch grid.
    await assert.rejects(
      pipe.run({
        promptEmbeds: inputs.prompt_embeds,
        guidanceScale: 1,
        height: 21,
        width: 203,
        useResolutionBinning: false,
      }),
      (e: unknown) => e instanceof OptionError && /height 21 must be a multiple of 4/.test(e.message),
    );
    await pipe.close();
  });

  it('sample_size 8 (no table): unset runs unbinned; true is an OptionError naming the way out', async () => {
    const pipe = await DiffusionPipeline.fromPretrained(await tinyPixArtPipeline(), { runtime });
    const inputs = await readAllTensors(`${GOLDEN_CASE}inputs.safetensors`);
    const base = {
      promptEmbeds: inputs.prompt_embeds,
      guidanceScale: 1,
      numInferenceSteps: 1,
      height: 8,
      width: 12,
    };
    const out = await pipe.run({ ...base, outputType: 'latent' });
    assert.deepEqual(out.latents.shape, [1, 4, 4, 6]);
    await assert.rejects(
      pipe.run({ ...base, useResolutionBinning: true }),
      (e: unknown) =>
        e instanceof OptionError &&
        /transformer's config has sample_size 8/.test(e.message) &&
        /useResolutionBinning: false/.test(e.message),
    );
    await pipe.close();
  });
});
