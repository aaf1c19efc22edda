/**
 * The references themselves, against published values and hand-worked examples, so that a graph
 * test failing means the graph is wrong rather than the loop it is compared with.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { f32ToF16 } from '../../src/io/dtypes.js';
import { seededUniform } from '../random.js';
import { float16Value, roundToFloat16 } from './float16.js';
import { erf, geluExact, groupNorm, layerNorm, matmul, reduce, refTensor } from './math.js';

describe('reference erf', () => {
  // Abramowitz & Stegun table 7.1 / high-precision values.
  const table: [number, number][] = [
    [0.1, 0.1124629160182849],
    [0.5, 0.5204998778130465],
    [1, 0.8427007929497149],
    [-1.5, -0.9661051464753108],
    [2, 0.9953222650189527],
    [3, 0.9999779095030014],
    [4.5, 0.9999999998033839],
  ];
  for (const [x, expected] of table) {
    it(`erf(${x})`, () => assert.ok(Math.abs(erf(x) - expected) < 2e-16 * 4, `${erf(x)} vs ${expected}`));
  }
  it('gelu(1) is Φ(1)', () => assert.ok(Math.abs(geluExact(1) - 0.8413447460685429) < 1e-15));
});

describe('reference float16', () => {
  it('decodes known bit patterns', () => {
    assert.equal(float16Value(0x3c00), 1);
    assert.equal(float16Value(0xc000), -2);
    assert.equal(float16Value(0x7bff), 65504);
    assert.equal(float16Value(0x0400), 2 ** -14);
    assert.equal(float16Value(0x0001), 2 ** -24);
    assert.equal(float16Value(0x3555), 0.333251953125);
    assert.equal(float16Value(0xfc00), -Infinity);
    assert.ok(Number.isNaN(float16Value(0x7e00)));
    assert.ok(Object.is(float16Value(0x8000), -0));
  });

  it('rounds to nearest, ties to even, with overflow and underflow', () => {
    assert.equal(roundToFloat16(1 + 2 ** -11), 1);
    assert.equal(roundToFloat16(1 + 3 * 2 ** -11), 1 + 2 ** -9);
    assert.equal(roundToFloat16(0.1), 0.0999755859375);
    assert.equal(roundToFloat16(65519), 65504);
    assert.equal(roundToFloat16(65520), Infinity);
    assert.equal(roundToFloat16(-1e6), -Infinity);
    assert.equal(roundToFloat16(2 ** -25), 0);
    assert.equal(roundToFloat16(3 * 2 ** -25), 2 ** -23);
    assert.ok(Object.is(roundToFloat16(-(2 ** -26)), -0));
  });

  it('agrees with src/io f32ToF16 on random float32 values (cross-check)', () => {
    const random = seededUniform(7001);
    const values = Float32Array.from({ length: 4096 }, () => (random() - 0.5) * 2 ** (40 * random() - 26));
    const bits = f32ToF16(values);
    values.forEach((v, i) => assert.equal(float16Value(bits[i]), roundToFloat16(v), `f32ToF16(${v})`));
  });
});

describe('reference tensor math', () => {
  it('matmul of 2×2 matrices', () => {
    const c = matmul(refTensor([2, 2], [1, 2, 3, 4]), refTensor([2, 2], [5, 6, 7, 8]));
    assert.deepEqual([...c.data], [19, 22, 43, 50]);
  });

  it('sum, mean and max over axis 1', () => {
    const x = refTensor([2, 3], [1, 5, 3, -4, -2, -9]);
    assert.deepEqual([...reduce(x, 'sum', [1], false).data], [9, -15]);
    assert.deepEqual([...reduce(x, 'mean', [-1], true).data], [3, -5]);
    assert.deepEqual([...reduce(x, 'max', [0], false).data], [1, 5, 3]);
  });

  it('layer norm of [1, 2, 3] and group norm with one group agree', () => {
    const y = layerNorm(refTensor([3], [1, 2, 3]), -1, undefined, undefined, 0);
    const s = Math.sqrt(1.5);
    [-s, 0, s].forEach((v, i) => assert.ok(Math.abs(y.data[i] - v) < 1e-15));
    const x = refTensor([1, 2, 2], [1, 4, -2, 7]);
    const ones = refTensor([2], [1, 1]);
    const zeros = refTensor([2], [0, 0]);
    assert.deepEqual(
      groupNorm(x, 1, ones, zeros, 1e-5).data,
      layerNorm(x, 1, undefined, undefined, 1e-5).data,
    );
  });
});
