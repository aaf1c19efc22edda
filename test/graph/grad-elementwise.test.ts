/**
 * Gradient checks (test/graph/gradcheck.ts: grad() against central finite differences) for every
 * elementwise op, with broadcasting operands, in float64 where ONNX Runtime has double kernels and
 * in float32 (the harness's stated tolerance) for erf and exact gelu, whose Erf has none.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import type { Tensor, TensorLike } from '../../src/graph/index.js';
import {
  abs,
  add,
  cast,
  cos,
  div,
  elu,
  eluPlusOne,
  erf,
  exp,
  gelu,
  getOp,
  Graph,
  grad,
  leakyRelu,
  log,
  maximum,
  minimum,
  mul,
  neg,
  pow,
  reciprocal,
  registeredOps,
  relu,
  rsqrt,
  sigmoid,
  silu,
  sin,
  sqrt,
  sub,
  sum,
  tanh,
  where,
} from '../../src/graph/index.js';
import { hostTensor } from '../../src/runtime/host-tensor.js';
import { assertBuildError } from '../reference/check.js';
import { assertExactlyEqual } from '../compare.js';
import { testRuntime } from '../helpers.js';
import type { GradInputSpec } from './gradcheck.js';
import { gradCheck } from './gradcheck.js';

/** Operand shapes: equal, broadcasting both ways with a missing leading dim, and a scalar. */
const SHAPES: readonly (readonly [number[], number[]])[] = [
  [
    [2, 3],
    [2, 3],
  ],
  [
    [2, 3, 4],
    [3, 1],
  ],
  [[4], [2, 1, 4]],
  [[2, 3], []],
];

interface BinaryCase {
  op: (a: TensorLike, b: TensorLike) => Tensor;
  a?: Partial<GradInputSpec>;
  b?: Partial<GradInputSpec>;
}

const BINARY: Record<string, BinaryCase> = {
  add: { op: add },
  sub: { op: sub },
  mul: { op: mul },
  div: { op: div, b: { range: [0.5, 2] } },
  pow: { op: pow, a: { range: [0.5, 2] }, b: { range: [-2, 2] } },
  maximum: { op: maximum },
  minimum: { op: minimum },
};

describe('gradients of binary elementwise ops (float64)', () => {
  for (const [name, c] of Object.entries(BINARY)) {
    it(`${name}, with broadcasting`, async () => {
      for (const [sa, sb] of SHAPES) {
        await gradCheck({
          what: `${name} ${JSON.stringify(sa)} ${JSON.stringify(sb)}`,
          inputs: { a: { shape: sa, ...c.a }, b: { shape: sb, ...c.b } },
          build: (_g, { a, b }) => c.op(a, b),
        });
      }
    });
  }

  it('with a number operand on either side', async () => {
    await gradCheck({
      what: 'number operands',
      inputs: { x: { shape: [3, 2], range: [0.5, 2] } },
      build: (_g, { x }) => add(sub(2, mul(x, 3)), add(div(1.5, x), pow(x, 2.5))),
    });
  });

  it('maximum and minimum share the cotangent equally on ties (torch)', async () => {
    const g = new Graph('ties');
    const x = g.input('x', 'float64', [3]);
    const y = g.input('y', 'float64', [3]);
    const [dx, dy] = grad(sum(add(maximum(x, y), mul(minimum(x, y), 3)), 0), [x, y]);
    g.output('dx', dx);
    g.output('dy', dy);
    const out = await (
      await testRuntime().compile(g)
    ).run({
      x: hostTensor('float64', [3], Float64Array.of(1, 2, 3)),
      y: hostTensor('float64', [3], Float64Array.of(1, 5, 0)),
    });
    assertExactlyEqual(out.dx.data as Float64Array, [2, 3, 1], 'dx');
    assertExactlyEqual(out.dy.data as Float64Array, [2, 1, 3], 'dy');
  });

  it('where: through both values, with a broadcast bool condition', async () => {
    await gradCheck({
      what: 'where',
      inputs: {
        condition: {
          shape: [2, 1, 4],
          dtype: 'bool',
          values: (random) => Uint8Array.from({ length: 8 }, () => (random() < 0.5 ? 1 : 0)),
        },
        a: { shape: [3, 4] },
        b: { shape: [2, 3, 1] },
      },
      build: (_g, { condition, a, b }) => where(condition, a, b),
    });
  });
});

interface UnaryCase {
  op: (x: Tensor) => Tensor;
  range?: readonly [number, number];
  /** Kinks the random inputs stay away from. */
  awayFrom?: readonly number[];
  /** float32 where ORT has no double kernel. */
  dtype?: 'float32';
}

const UNARY: Record<string, UnaryCase> = {
  neg: { op: neg },
  abs: { op: abs, awayFrom: [0] },
  exp: { op: exp },
  log: { op: log, range: [0.2, 2] },
  sqrt: { op: sqrt, range: [0.2, 2] },
  reciprocal: { op: reciprocal, range: [0.5, 2] },
  sin: { op: sin, range: [-3, 3] },
  cos: { op: cos, range: [-3, 3] },
  tanh: { op: tanh, range: [-2, 2] },
  sigmoid: { op: sigmoid, range: [-3, 3] },
  relu: { op: relu, awayFrom: [0] },
  elu: { op: (x) => elu(x, 0.7), range: [-2, 2], awayFrom: [0] },
  eluPlusOne: { op: eluPlusOne, range: [-2, 2], awayFrom: [0] },
  leakyRelu: { op: (x) => leakyRelu(x, 0.1), awayFrom: [0] },
  'gelu tanh': { op: (x) => gelu(x, 'tanh'), range: [-3, 3] },
  erf: { op: erf, range: [-2, 2], dtype: 'float32' },
  'gelu exact': { op: (x) => gelu(x), range: [-3, 3], dtype: 'float32' },
  // Composites of the ops above.
  rsqrt: { op: rsqrt, range: [0.5, 2] },
  silu: { op: silu, range: [-3, 3] },
};

describe('gradients of unary elementwise ops', () => {
  for (const [name, c] of Object.entries(UNARY)) {
    it(`${name} (${c.dtype ?? 'float64'})`, async () => {
      await gradCheck({
        what: name,
        dtype: c.dtype ?? 'float64',
        inputs: { x: { shape: [3, 5], range: c.range ?? [-1, 1], awayFrom: c.awayFrom } },
        build: (_g, { x }) => c.op(x),
      });
    });
  }

  it('erf and exact gelu refuse float64, which ORT has no Erf kernel for', () => {
    const g = new Graph('f64');
    const x = g.input('x', 'float64', [2]);
    assertBuildError(() => erf(x), 'erf', 'no float64 kernel');
    assertBuildError(() => gelu(x), 'gelu', 'no float64 kernel');
  });

  it('cast between float types casts the cotangent back', async () => {
    await gradCheck({
      what: 'cast float32 → float64',
      dtype: 'float32',
      inputs: { x: { shape: [2, 3] } },
      build: (_g, { x }) => mul(cast(x, 'float64'), cast(x, 'float64')),
    });
    await gradCheck({
      what: 'cast float64 → float32',
      dtype: 'float32',
      inputs: { x: { shape: [2, 3], dtype: 'float64' } },
      build: (_g, { x }) => tanh(cast(x, 'float32')),
    });
  });
});

describe('the gradient registry of elementwise, matmul and reduce ops', () => {
  // Their outputs are bool, which stops gradients: they need no VJP.
  const NON_DIFFERENTIABLE = ['and', 'equal', 'greater', 'greaterEqual', 'less', 'lessEqual', 'not', 'or'];
  const OWN = [
    ...['add', 'sub', 'mul', 'div', 'pow', 'maximum', 'minimum', 'where', 'cast'],
    ...['neg', 'abs', 'exp', 'log', 'sqrt', 'reciprocal', 'sin', 'cos', 'tanh', 'erf', 'sigmoid', 'relu'],
    ...['elu', 'eluPlusOne', 'leakyRelu', 'gelu', 'matmul', 'sum', 'mean', 'max', 'cumsum'],
    ...['sumToRuntimeOnes'],
  ];

  it('has a VJP for every float op and none for the comparisons and logic', () => {
    const ops = new Set(registeredOps());
    for (const name of [...OWN, ...NON_DIFFERENTIABLE]) assert.ok(ops.has(name), `op ${name} is registered`);
    assert.deepEqual(
      OWN.filter((name) => getOp(name).vjp === undefined),
      [],
    );
    assert.deepEqual(
      NON_DIFFERENTIABLE.filter((name) => getOp(name).vjp !== undefined),
      [],
    );
  });
});
