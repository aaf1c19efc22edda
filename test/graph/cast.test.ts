/**
 * cast between float32 and int32 / int64 / bool / float16. Integer casts truncate toward zero (ONNX
 * Cast); float16 casts are compared bit for bit with an exact float64 rounding (test/reference/float16.ts).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { cast, Graph } from '../../src/graph/index.js';
import { hostTensor } from '../../src/runtime/host-tensor.js';
import { randomArray } from '../helpers.js';
import { seededUniform } from '../random.js';
import { assertMatches, runOp, toRef } from '../reference/check.js';
import { FLOAT16_MAX, float16Value, roundToFloat16 } from '../reference/float16.js';
import { mapUnary, refTensor } from '../reference/math.js';

/** Exact equality that tells −0 from +0 and accepts NaN for NaN. */
function assertSameValues(actual: ArrayLike<number>, expected: ArrayLike<number>, what: string): void {
  assert.equal(actual.length, expected.length, `${what}: length`);
  for (let i = 0; i < expected.length; i++) {
    if (!Object.is(actual[i], expected[i]))
      assert.fail(`${what}[${i}]: ${actual[i]} vs expected ${expected[i]}`);
  }
}

/** Random float32 values in ±`magnitude` with some exact integers, halves and signed zeros mixed in. */
function castInputs(seed: number, magnitude: number): Float32Array {
  const random = seededUniform(seed);
  const values = Array.from(randomArray(40, random, -magnitude, magnitude));
  values.push(0, -0, 0.5, -0.5, 1.5, -1.5, 2.5, -2.7, 2.7, 7, -7, 0.999, -0.999);
  return Float32Array.from(values);
}

describe('cast from float32', () => {
  for (const to of ['int32', 'int64'] as const) {
    it(`to ${to} truncates toward zero`, async () => {
      const values = castInputs(to === 'int32' ? 4000 : 4001, 1000);
      const x = hostTensor('float32', [values.length], values);
      const y = await runOp((t) => cast(t.x, to), { x });
      assert.ok(to === 'int32' ? y.data instanceof Int32Array : y.data instanceof BigInt64Array);
      // Object.is would tell −0 from 0, which an integer cannot hold; compare with +0.
      assertMatches(
        y,
        mapUnary(toRef(x), (v) => Math.trunc(v) + 0),
        { dtype: to, what: `cast to ${to}` },
      );
    });
  }

  it('to bool is "not zero"', async () => {
    const values = castInputs(4002, 3);
    const x = hostTensor('float32', [values.length], values);
    const y = await runOp((t) => cast(t.x, 'bool'), { x });
    assertMatches(
      y,
      mapUnary(toRef(x), (v) => Number(v !== 0)),
      { dtype: 'bool', what: 'cast to bool' },
    );
  });

  it('to float16 rounds to nearest even at every tie, with overflow and underflow', async () => {
    // Every finite half, the midpoint to the next one (an exact tie), and points a quarter and three
    // quarters of the way, with both signs; a quarter-step needs 13 significant bits, so all are exact
    // float32 values.
    const values: number[] = [];
    for (let bits = 0; bits < 0x7c00; bits++) {
      const v = float16Value(bits);
      const next = bits === 0x7bff ? 2 * FLOAT16_MAX - float16Value(0x7bfe) : float16Value(bits + 1);
      const step = next - v;
      for (const p of [v, v + step / 4, v + step / 2, v + (3 * step) / 4]) values.push(p, -p);
    }
    values.push(
      65519.99609375,
      65520,
      1e5,
      2 ** 127,
      2 ** -26,
      2 ** -25,
      1.5 * 2 ** -25,
      2 ** -100,
      Infinity,
      -Infinity,
    );
    const input = Float32Array.from(values);
    input.forEach((v, i) => assert.ok(Object.is(v, values[i]), `input ${values[i]} is not a float32`));
    const x = hostTensor('float32', [input.length], input);
    const y = await runOp((t) => cast(t.x, 'float16'), { x });
    assert.equal(y.dtype, 'float16');
    assert.ok(y.data instanceof Uint16Array);
    assertSameValues(Array.from(y.data, float16Value), values.map(roundToFloat16), 'cast to float16');
  });

  it('to float16 keeps NaN a NaN', async () => {
    const x = hostTensor('float32', [2], [NaN, -NaN]);
    const y = await runOp((t) => cast(t.x, 'float16'), { x });
    for (const bits of y.data as Uint16Array) assert.ok(Number.isNaN(float16Value(bits)), `bits ${bits}`);
  });
});

describe('cast to float32', () => {
  it('from every float16 bit pattern is exact', async () => {
    const bits = Uint16Array.from({ length: 0x10000 }, (_, i) => i);
    const x = hostTensor('float16', [bits.length], bits);
    const y = await runOp((t) => cast(t.x, 'float32'), { x });
    assertSameValues(y.data as Float32Array, Array.from(bits, float16Value), 'cast from float16');
  });

  it('from int32 rounds to nearest float32', async () => {
    const random = seededUniform(4010);
    const ints = Array.from({ length: 30 }, () => Math.floor((random() - 0.5) * 2 ** 31));
    ints.push(0, 1, -1, 16777216, 16777217, 16777219, -16777217, 2147483647, -2147483648);
    const x = hostTensor('int32', [ints.length], ints);
    const y = await runOp((t) => cast(t.x, 'float32'), { x });
    assertSameValues(y.data as Float32Array, ints.map(Math.fround), 'cast from int32');
  });

  it('from int64 rounds to nearest float32', async () => {
    const random = seededUniform(4011);
    // Below 2^53, Number(bigint) is exact, so Math.fround rounds once, as the cast must.
    const ints = Array.from({ length: 30 }, () => Math.floor((random() - 0.5) * 2 ** 52));
    ints.push(0, -1, 2 ** 40 + 1, 2 ** 24 + 1);
    const x = hostTensor('int64', [ints.length], ints);
    const y = await runOp((t) => cast(t.x, 'float32'), { x });
    assertSameValues(y.data as Float32Array, ints.map(Math.fround), 'cast from int64');
  });

  it('from bool gives 0 and 1', async () => {
    const x = hostTensor('bool', [2, 3], [1, 0, 0, 1, 1, 0]);
    const y = await runOp((t) => cast(t.x, 'float32'), { x });
    assertMatches(y, refTensor([2, 3], [1, 0, 0, 1, 1, 0]), { what: 'cast from bool' });
  });

  it('to the same dtype is the tensor itself (no node)', () => {
    const g = new Graph('cast');
    const x = g.input('x', 'float32', [2]);
    assert.equal(cast(x, 'float32'), x);
    assert.equal(g.nodes.length, 0);
  });
});
