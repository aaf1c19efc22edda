import assert from 'node:assert/strict';
import { dirname, join } from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

import { OptionError } from '../../src/errors.js';
import { SafetensorsFile } from '../../src/io/safetensors.js';
import { Mt19937 } from '../../src/random/mt19937.js';
import {
  TORCH_CPU_STATE_BYTES,
  TorchGenerator,
  type NoiseGenerator,
} from '../../src/random/torch-generator.js';
import { assertMaxAbsError } from '../compare.js';
import { seededUniform } from '../random.js';

const LCM_FIXTURE = join(
  dirname(fileURLToPath(import.meta.url)),
  '..',
  'golden',
  'schedulers',
  'sched_lcm_sd15',
  'inputs.safetensors',
);

/** Index and float32 bit patterns of the first element whose bits differ, or undefined. */
function firstBitDifference(actual: Float32Array, expected: Float32Array): string | undefined {
  assert.equal(actual.length, expected.length, 'length');
  const actualBits = new Uint32Array(actual.buffer, actual.byteOffset, actual.length);
  const expectedBits = new Uint32Array(Float32Array.from(expected).buffer);
  for (let i = 0; i < actual.length; i++) {
    if (actualBits[i] !== expectedBits[i]) return `element ${i}: ${actual[i]} vs ${expected[i]}`;
  }
  return undefined;
}

/** Against values torch prints to 4 decimals (rounding: 5e-5), within 1e-4. */
function assertClose4(actual: Float32Array, published: number[]): void {
  assertMaxAbsError(actual, published, 1e-4, 'torch-printed values');
}

describe('TorchGenerator against torch', () => {
  it('draws the LCM golden noises bit for bit (randn [2,4,8,8], seeds 500..503)', async () => {
    // Golden meta.json: step i draws inputs.noises[i] with Generator().manual_seed(500 + i).
    const file = await SafetensorsFile.open(LCM_FIXTURE);
    try {
      const [steps, ...shape] = file.info('noises').shape;
      assert.deepEqual(shape, [2, 4, 8, 8]);
      const noises = await file.readFloat32('noises');
      const perStep = noises.length / steps;
      for (let step = 0; step < steps; step++) {
        const drawn = new TorchGenerator(500 + step).randn(shape);
        const expected = noises.subarray(step * perStep, (step + 1) * perStep);
        assert.equal(firstBitDifference(drawn, expected), undefined, `step ${step}`);
      }
    } finally {
      await file.close();
    }
  });

  it('matches published torch values below 16 elements (scalar Box–Muller path)', () => {
    // torch.manual_seed(0); torch.randn(2, 3) and torch.randn(3, 5); torch.manual_seed(42); torch.randn(2, 3)
    assertClose4(new TorchGenerator(0).randn([2, 3]), [1.541, -0.2934, -2.1788, 0.5684, -1.0845, -1.3986]);
    assertClose4(
      new TorchGenerator(0).randn([3, 5]),
      [
        1.541, -0.2934, -2.1788, 0.5684, -1.0845, -1.3986, 0.4033, 0.838, -0.7193, -0.4033, -0.5966, 0.182,
        -0.8567, 1.1006, -1.0712,
      ],
    );
    assertClose4(new TorchGenerator(42).randn([2, 3]), [0.3367, 0.1288, 0.2345, 0.2303, -1.1229, -0.1863]);
  });

  it('matches published torch values at 16 elements (vectorised path)', () => {
    // torch.manual_seed(0); torch.randn(4, 4)
    assertClose4(
      new TorchGenerator(0).randn([4, 4]),
      [
        -1.1258, -1.1524, -0.2506, -0.4339, 0.8487, 0.692, -0.316, -2.1152, 0.3223, -1.2633, 0.35, 0.3081,
        0.1198, 1.2377, 1.1168, -0.2473,
      ],
    );
  });

  it('matches published torch.rand values', () => {
    assertClose4(new TorchGenerator(0).rand([3]), [0.4963, 0.7682, 0.0885]);
    assertClose4(new TorchGenerator(0).rand([2, 3]), [0.4963, 0.7682, 0.0885, 0.132, 0.3074, 0.6341]);
    assertClose4(new TorchGenerator(42).rand([3]), [0.8823, 0.915, 0.3829]);
  });
});

describe('TorchGenerator stream semantics', () => {
  it('draws rand from the low 24 bits of one output per element', () => {
    const seed = Math.floor(seededUniform(1)() * 2 ** 32);
    const engine = new Mt19937(seed);
    const drawn = new TorchGenerator(seed).rand([5, 7]);
    for (const value of drawn) assert.equal(value, (engine.nextUint32() & 0xffffff) / 2 ** 24);
  });

  it('continues the scalar stream across calls through the cached second normal', () => {
    const whole = new TorchGenerator(0).randn([6]);
    const generator = new TorchGenerator(0);
    const parts = [...generator.randn([3]), ...generator.randn([1]), ...generator.randn([2])];
    assert.deepEqual(parts, Array.from(whole));
  });

  it('keeps the cached normal across a vectorised draw, and drops it on manualSeed', () => {
    const pair = new TorchGenerator(3).randn([2]);
    const generator = new TorchGenerator(3);
    assert.equal(generator.randn([1])[0], pair[0]);
    generator.randn([40]); // normal_fill neither reads nor clears the cache
    assert.equal(generator.randn([1])[0], pair[1]);

    generator.manualSeed(0).randn([1]);
    generator.manualSeed(0);
    assertClose4(generator.randn([2, 3]), [1.541, -0.2934, -2.1788, 0.5684, -1.0845, -1.3986]);
  });

  it('consumes n outputs for randn of n ≥ 16, plus 16 more when 16 does not divide n', () => {
    const random = seededUniform(11);
    for (const size of [16, 17, 31, 32, 100, 512]) {
      const seed = Math.floor(random() * 2 ** 32);
      const generator = new TorchGenerator(seed);
      generator.randn([size]);
      const engine = new Mt19937(seed);
      for (let i = 0; i < size + (size % 16 === 0 ? 0 : 16); i++) engine.nextUint32();
      assert.equal(generator.rand([1])[0], (engine.nextUint32() & 0xffffff) / 2 ** 24, `size ${size}`);
    }
  });

  it('recomputes the last 16 values from fresh uniforms when 16 does not divide the size', async () => {
    const file = await SafetensorsFile.open(LCM_FIXTURE);
    const reference = (await file.readFloat32('noises')).subarray(0, 512); // seed 500, 512 values
    await file.close();
    const drawn = new TorchGenerator(500).randn([500]);
    // Blocks 0..30 are the golden ones; the tail rewrites elements 484..499 ...
    assert.equal(firstBitDifference(drawn.subarray(0, 484), reference.subarray(0, 484)), undefined);
    // ... with one block made from the 16 uniforms after the first 500.
    const shifted = new TorchGenerator(500);
    shifted.rand([500]);
    assert.equal(firstBitDifference(drawn.subarray(484), shifted.randn([16])), undefined);
  });

  it('returns an empty array for an empty shape and draws nothing', () => {
    const generator = new TorchGenerator(9);
    assert.equal(generator.randn([2, 0, 3]).length, 0);
    assert.deepEqual(generator.randn([]), new TorchGenerator(9).randn([1]));
  });

  it('serves as a NoiseGenerator', () => {
    const noise: NoiseGenerator = new TorchGenerator(500);
    assert.equal(noise.randn([2, 4, 8, 8]).length, 512);
  });

  it('without fused multiply-adds differs from the default by at most 2 ulps', () => {
    const fused = new TorchGenerator(500).randn([2, 4, 8, 8]);
    const unfused = new TorchGenerator(500, { fusedMultiplyAdd: false }).randn([2, 4, 8, 8]);
    assert.notEqual(firstBitDifference(unfused, fused), undefined);
    const fusedBits = new Int32Array(fused.buffer);
    const unfusedBits = new Int32Array(unfused.buffer);
    for (let i = 0; i < fused.length; i++) assert.ok(Math.abs(fusedBits[i] - unfusedBits[i]) <= 2);
  });

  it('rejects invalid shapes', () => {
    for (const shape of [[-1], [1.5], [Number.NaN], [2 ** 40, 2 ** 40]]) {
      assert.throws(
        () => new TorchGenerator(0).randn(shape),
        (error: unknown) => error instanceof OptionError,
      );
    }
  });
});

describe('TorchGenerator state', () => {
  it("lays out a fresh state as torch's CPUGeneratorImplState", () => {
    const seed = 2n ** 40n + 5n;
    const view = new DataView(new TorchGenerator(seed).getState().buffer);
    assert.equal(view.byteLength, TORCH_CPU_STATE_BYTES);
    assert.equal(view.getBigUint64(0, true), seed); // the_initial_seed
    assert.equal(view.getInt32(8, true), 1); // left
    assert.equal(view.getInt32(12, true), 1); // seeded
    assert.equal(view.getBigUint64(16, true), 0n); // next
    assert.equal(view.getBigUint64(24, true), 5n); // state[0]: the low 32 bits of the seed
    assert.equal(view.getBigUint64(32, true), BigInt((Math.imul(1812433253, 5 ^ 0) + 1) >>> 0)); // state[1]
    assert.equal(view.getInt32(5040, true), 0); // normal_is_valid
    assert.equal(view.getUint8(5052), 0); // is_next_float_normal_sample_valid
  });

  it('restores the stream and the cached normal', () => {
    const random = seededUniform(5);
    const generator = new TorchGenerator(Math.floor(random() * 2 ** 32));
    generator.randn([3]); // leaves a cached normal
    generator.randn([37]);
    const state = generator.getState();
    assert.equal(new DataView(state.buffer).getInt32(5040, true), 1);
    const expected = [generator.randn([1]), generator.randn([700]), generator.rand([5])];

    const restored = new TorchGenerator(0);
    restored.setState(state);
    assert.deepEqual([restored.randn([1]), restored.randn([700]), restored.rand([5])], expected);
    assert.equal(restored.initialSeed, generator.initialSeed);
  });

  it('rejects states of the wrong size or with corrupt fields', () => {
    const generator = new TorchGenerator(0);
    const isOptionError = (error: unknown): boolean => error instanceof OptionError;
    assert.throws(() => generator.setState(new Uint8Array(100)), isOptionError);
    const corrupt = (offset: number, value: number): Uint8Array => {
      const state = new TorchGenerator(1).getState();
      new DataView(state.buffer).setInt32(offset, value, true);
      return state;
    };
    assert.throws(() => generator.setState(corrupt(8, 0)), isOptionError); // left
    assert.throws(() => generator.setState(corrupt(12, 0)), isOptionError); // seeded
    assert.throws(() => generator.setState(corrupt(16, 625)), isOptionError); // next
  });
});
