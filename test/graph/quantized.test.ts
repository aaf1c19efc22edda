/**
 * int8Linear (ORT DynamicQuantizeMatMul) against a float64 loop that quantizes the activation as
 * ONNX DynamicQuantizeLinear specifies (uint8, per tensor, round half to even) and multiplies the
 * integers exactly; and quantizeInt8Rows against its definition.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { Graph, grad, int8Linear, sum } from '../../src/graph/index.js';
import { quantizeInt8Rows } from '../../src/io/quantize.js';
import { hostTensor } from '../../src/runtime/host-tensor.js';
import { assertClose, compareValues } from '../compare.js';
import { testRuntime } from '../helpers.js';
import { normalArray, seededUniform, testSeed } from '../random.js';
import { assertBuildError } from '../reference/check.js';

/** Round half to even, as ONNX's QuantizeLinear rounds. */
function roundHalfEven(v: number): number {
  const r = Math.round(v);
  return Math.abs(v % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** y = dequant(quant_u8(x)) · (s ⊙ q)ᵀ + b in float64, x quantized per tensor as DynamicQuantizeLinear does. */
function referenceInt8Linear(
  x: Float32Array,
  rows: number,
  q: Int8Array,
  scale: Float32Array,
  bias: Float32Array | undefined,
  inF: number,
  outF: number,
): Float64Array {
  let lo = 0;
  let hi = 0;
  for (const v of x) {
    lo = Math.min(lo, v);
    hi = Math.max(hi, v);
  }
  const sx = Math.fround((hi - lo) / 255);
  const zp = Math.max(0, Math.min(255, roundHalfEven(-lo / sx)));
  const xq = Array.from(x, (v) => Math.max(0, Math.min(255, roundHalfEven(v / sx) + zp)) - zp);
  const y = new Float64Array(rows * outF);
  for (let r = 0; r < rows; r++) {
    for (let o = 0; o < outF; o++) {
      let acc = 0;
      for (let i = 0; i < inF; i++) acc += xq[r * inF + i] * q[o * inF + i];
      y[r * outF + o] = acc * sx * scale[o] + (bias ? bias[o] : 0);
    }
  }
  return y;
}

describe('quantizeInt8Rows', () => {
  it('symmetric per-row scales max|w|/127, q = round(w/scale) in [-127, 127]; a zero row gets scale 1', () => {
    const w = Float32Array.from([0.5, -1, 0.25, 0, 0, 0, 3, 1.5, -2.9]);
    const { q, scale } = quantizeInt8Rows(w, 3, 3, 'w');
    assert.deepEqual([...scale], [Math.fround(1 / 127), 1, Math.fround(3 / 127)]);
    assert.deepEqual([...q], [64, -127, 32, 0, 0, 0, 127, 64, -123]);
  });

  it('rejects NaN and infinity, naming the tensor and the place', () => {
    assert.throws(
      () => quantizeInt8Rows(Float32Array.from([1, 2, 3, Number.NaN]), 2, 2, 'blocks.0.to_q.weight'),
      /tensor 'blocks\.0\.to_q\.weight' holds NaN at \[1, 1\]/,
    );
    assert.throws(
      () => quantizeInt8Rows(Float32Array.from([Infinity]), 1, 1, 'w'),
      /holds Infinity at \[0, 0\]/,
    );
    assert.throws(() => quantizeInt8Rows(new Float32Array(5), 2, 2, 'w'), /5 values for \[2, 2\]/);
  });
});

describe('int8Linear (DynamicQuantizeMatMul)', () => {
  const cases = [
    { batch: [3], inF: 16, outF: 8, bias: true },
    { batch: [2, 5], inF: 64, outF: 24, bias: false },
    { batch: [1, 7], inF: 33, outF: 5, bias: true },
  ];
  for (const c of cases) {
    it(`[${[...c.batch, c.inF].join(', ')}] → ${c.outF}${c.bias ? ' with bias' : ''} matches the float64 integer product`, async () => {
      const seed = testSeed(`int8Linear ${c.batch.join('x')} ${c.inF} ${c.outF}`);
      const random = seededUniform(seed);
      const rows = c.batch.reduce((a, b) => a * b, 1);
      const x = normalArray(rows * c.inF, random);
      const w = normalArray(c.outF * c.inF, random);
      const { q, scale } = quantizeInt8Rows(w, c.outF, c.inF, 'w');
      const b = c.bias ? normalArray(c.outF, random) : undefined;

      const g = new Graph('int8_linear');
      const xIn = g.input('x', 'float32', [...c.batch, c.inF]);
      const weight = g.weight('w', 'int8', [c.outF, c.inF], { kind: 'data', data: q, storedDType: 'int8' });
      const s = g.weight('s', 'float32', [c.outF], { kind: 'data', data: scale, storedDType: 'float32' });
      const bias = b && g.weight('b', 'float32', [c.outF], { kind: 'data', data: b, storedDType: 'float32' });
      const y = int8Linear(xIn, weight, s, bias);
      assert.deepEqual(y.shape, [...c.batch, c.outF]);
      g.output('y', y);
      const out = await (
        await testRuntime().compile(g)
      ).run({ x: hostTensor('float32', [...c.batch, c.inF], x) });
      const expected = referenceInt8Linear(x, rows, q, scale, b, c.inF, c.outF);
      // The integer product is exact in both; what differs is float32 rounding of the scales and sums.
      const result = assertClose(out.y.data as Float32Array, expected, {
        atol: 1e-5,
        rtol: 1e-5,
        what: `int8Linear (seed ${seed})`,
      });
      assert.ok(result.maxAbsError < 1e-5);

      // And the quantization error against the float product stays at int8's scale (about 1 %).
      const exact = new Float64Array(rows * c.outF);
      for (let r = 0; r < rows; r++)
        for (let o = 0; o < c.outF; o++) {
          let acc = b ? b[o] : 0;
          for (let i = 0; i < c.inF; i++) acc += x[r * c.inF + i] * w[o * c.inF + i];
          exact[r * c.outF + o] = acc;
        }
      const { maxAbsError } = compareValues(out.y.data as Float32Array, exact, 'int8 vs float');
      const norm = Math.sqrt(exact.reduce((a, v) => a + v * v, 0) / exact.length);
      assert.ok(maxAbsError / norm < 0.1, `int8 vs float: max error ${maxAbsError} for RMS ${norm}`);
    });
  }

  it('checks dtypes and shapes, and has no gradient', () => {
    const g = new Graph('errors');
    const x = g.input('x', 'float32', [2, 4]);
    const q = g.weight('q', 'int8', [3, 4], { kind: 'data', data: new Int8Array(12), storedDType: 'int8' });
    const f = g.input('f', 'float32', [3, 4]);
    const s = g.input('s', 'float32', [3]);
    assertBuildError(() => int8Linear(x, f, s), 'weight must be int8, got float32');
    assertBuildError(
      () => int8Linear(g.input('x5', 'float32', [2, 5]), q, s),
      'expected input [*, 4], got [2, 5]',
    );
    assertBuildError(() => int8Linear(x, q, g.input('s4', 'float32', [4])), 'scale must be float32 [3]');
    assertBuildError(() => int8Linear(x, q, s, g.input('b2', 'float32', [2])), 'bias must be float32 [3]');
    const y = int8Linear(x, q, s);
    assert.throws(() => grad(sum(y, [0, 1]), [x]), /int8Linear/);
  });
});
