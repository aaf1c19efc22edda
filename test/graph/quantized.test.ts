/**
 * int8Linear (ORT DynamicQuantizeMatMul) against a float64 loop that quantizes the activation as
 * ONNX DynamicQuantizeLinear specifies (uint8, per tensor, round half to even) and multiplies the
 * integers exactly; and quantizeInt8Rows against its definition.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { Graph, conv2d, grad, int8Conv2d, int8Linear, sum } from '../../src/graph/index.js';
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

/** x quantized per tensor as DynamicQuantizeLinear does: the integers minus the zero point, and the scale. */
function quantizeActivation(x: Float32Array): { xq: number[]; sx: number } {
  let lo = 0;
  let hi = 0;
  for (const v of x) {
    lo = Math.min(lo, v);
    hi = Math.max(hi, v);
  }
  const sx = Math.fround((hi - lo) / 255);
  const zp = Math.max(0, Math.min(255, roundHalfEven(-lo / sx)));
  return { xq: Array.from(x, (v) => Math.max(0, Math.min(255, roundHalfEven(v / sx) + zp)) - zp), sx };
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
  const { xq, sx } = quantizeActivation(x);
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

/**
 * The int8 convolution in float64: x quantized per tensor (padding zeros are exact zeros, whatever the
 * range), integer sums over Cin·kH·kW, then × sx·s[o] + b[o]. `conv` is the plain float64 convolution.
 */
function referenceConv(
  x: ArrayLike<number>,
  [n, cin, h, w]: readonly number[],
  weight: ArrayLike<number>,
  [cout, kh, kw]: readonly number[],
  [top, left, bottom, right]: readonly number[],
): { y: Float64Array; shape: number[] } {
  const ho = h + top + bottom - kh + 1;
  const wo = w + left + right - kw + 1;
  const y = new Float64Array(n * cout * ho * wo);
  for (let b = 0; b < n; b++)
    for (let o = 0; o < cout; o++)
      for (let r = 0; r < ho; r++)
        for (let c = 0; c < wo; c++) {
          let acc = 0;
          for (let i = 0; i < cin; i++)
            for (let u = 0; u < kh; u++)
              for (let v = 0; v < kw; v++) {
                const yy = r + u - top;
                const xx = c + v - left;
                if (yy < 0 || yy >= h || xx < 0 || xx >= w) continue;
                acc += x[((b * cin + i) * h + yy) * w + xx] * weight[((o * cin + i) * kh + u) * kw + v];
              }
          y[((b * cout + o) * ho + r) * wo + c] = acc;
        }
  return { y, shape: [n, cout, ho, wo] };
}

describe('int8Conv2d (kernel taps as MatMulInteger)', () => {
  const cases = [
    { x: [2, 8, 7, 9], cout: 6, kernel: [3, 3], pads: [1, 1, 1, 1], bias: true },
    { x: [1, 16, 5, 5], cout: 4, kernel: [1, 1], pads: [0, 0, 0, 0], bias: false },
    { x: [1, 5, 6, 4], cout: 3, kernel: [3, 2], pads: [2, 0, 1, 1], bias: true },
    { x: [2, 4, 8, 8], cout: 8, kernel: [3, 3], pads: [0, 0, 0, 0], bias: true },
  ];
  for (const c of cases) {
    it(`[${c.x.join(', ')}] · ${c.kernel.join('×')} → ${c.cout}, pads [${c.pads.join(', ')}] matches the float64 integer convolution`, async () => {
      const seed = testSeed(`int8Conv2d ${c.x.join('x')} ${c.kernel.join('x')} ${c.pads.join(',')}`);
      const random = seededUniform(seed);
      const [n, cin, h, w] = c.x;
      const [kh, kw] = c.kernel;
      const x = normalArray(n * cin * h * w, random);
      // Shifted inputs (not centred on 0), so the zero point is not trivially mid-range.
      for (let i = 0; i < x.length; i++) x[i] = Math.fround(x[i] + 0.7);
      const k = cin * kh * kw;
      const weight = normalArray(c.cout * k, random);
      const { q, scale } = quantizeInt8Rows(weight, c.cout, k, 'w');
      const bias = c.bias ? normalArray(c.cout, random) : undefined;

      const g = new Graph('int8_conv');
      const xIn = g.input('x', 'float32', c.x);
      const wq = g.weight('w', 'int8', [c.cout, cin, kh, kw], { kind: 'data', data: q, storedDType: 'int8' });
      const s = g.weight('s', 'float32', [c.cout], { kind: 'data', data: scale, storedDType: 'float32' });
      const b =
        bias && g.weight('b', 'float32', [c.cout], { kind: 'data', data: bias, storedDType: 'float32' });
      const pads = c.pads as [number, number, number, number];
      const y = int8Conv2d(xIn, wq, s, b, { padding: pads });
      const wf = g.weight('wf', 'float32', [c.cout, cin, kh, kw], {
        kind: 'data',
        data: weight,
        storedDType: 'float32',
      });
      g.output('y', y);
      g.output('float', conv2d(xIn, wf, b, { padding: pads }));
      const out = await (await testRuntime().compile(g)).run({ x: hostTensor('float32', c.x, x) });

      const { xq, sx } = quantizeActivation(x);
      const integer = referenceConv(xq, c.x, q, [c.cout, kh, kw], c.pads);
      assert.deepEqual(out.y.shape, integer.shape);
      const plane = integer.shape[2] * integer.shape[3];
      const expected = integer.y.map(
        (v, i) =>
          v * sx * scale[Math.floor(i / plane) % c.cout] + (bias ? bias[Math.floor(i / plane) % c.cout] : 0),
      );
      assertClose(out.y.data as Float32Array, expected, {
        atol: 1e-5,
        rtol: 1e-5,
        what: `int8Conv2d (seed ${seed})`,
      });
      // Against the float convolution: int8's error, about 1 % of the output's RMS.
      const exact = referenceConv(x, c.x, weight, [c.cout, kh, kw], c.pads).y.map(
        (v, i) => v + (bias ? bias[Math.floor(i / plane) % c.cout] : 0),
      );
      assertClose(out.float.data as Float32Array, exact, { atol: 1e-4, rtol: 1e-4, what: 'float conv2d' });
      const { maxAbsError } = compareValues(out.y.data as Float32Array, exact, 'int8 vs float');
      const norm = Math.sqrt(exact.reduce((a, v) => a + v * v, 0) / exact.length);
      assert.ok(maxAbsError / norm < 0.1, `int8 vs float: max error ${maxAbsError} for RMS ${norm}`);
    });
  }

  it('checks dtypes, shapes and padding, and has no gradient', () => {
    const g = new Graph('errors');
    const x = g.input('x', 'float32', [1, 4, 5, 5]);
    const q = g.weight('q', 'int8', [3, 4, 3, 3], {
      kind: 'data',
      data: new Int8Array(108),
      storedDType: 'int8',
    });
    const s = g.input('s', 'float32', [3]);
    assertBuildError(
      () => int8Conv2d(x, g.input('f', 'float32', [3, 4, 3, 3]), s),
      'weight must be int8, got float32',
    );
    assertBuildError(
      () => int8Conv2d(g.input('x3', 'float32', [1, 3, 5, 5]), q, s),
      'has 3 channels, the weight expects 4',
    );
    assertBuildError(() => int8Conv2d(x, q, g.input('s4', 'float32', [4])), 'scale must be float32 [3]');
    assertBuildError(() => int8Conv2d(x, q, s, undefined, { padding: -1 }), 'padding must be non-negative');
    assertBuildError(
      () => int8Conv2d(g.input('x2', 'float32', [1, 4, 2, 2]), q, s),
      'the window (3) is larger than the padded input (2)',
    );
    const y = int8Conv2d(x, q, s, undefined, { padding: 1 });
    assert.deepEqual(y.shape, [1, 3, 5, 5]);
    assert.throws(() => grad(sum(y, [0, 1, 2, 3]), [x]), /int8Conv2d/);
  });
});
