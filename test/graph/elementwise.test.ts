/**
 * Elementwise ops (arithmetic, comparisons, logic, where, unary math, activations) against float64
 * loops in test/reference/math.ts, over several broadcasting cases.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import type { Tensor, TensorLike } from '../../src/graph/index.js';
import {
  abs,
  add,
  and,
  cos,
  div,
  equal,
  erf,
  exp,
  gelu,
  Graph,
  greater,
  greaterEqual,
  less,
  lessEqual,
  log,
  maximum,
  minimum,
  mul,
  neg,
  not,
  or,
  pow,
  reciprocal,
  relu,
  elu,
  eluPlusOne,
  leakyRelu,
  rsqrt,
  sigmoid,
  silu,
  sin,
  sqrt,
  sub,
  tanh,
  where,
} from '../../src/graph/index.js';
import type { HostTensor } from '../../src/runtime/host-tensor.js';
import { hostTensor } from '../../src/runtime/host-tensor.js';
import { randomTensor } from '../helpers.js';
import { seededUniform } from '../random.js';
import {
  assertBuildError,
  assertMatches,
  randomBools,
  randomIntegers,
  runOp,
  toRef,
} from '../reference/check.js';
import * as ref from '../reference/math.js';

type BinaryOp = (a: TensorLike, b: TensorLike) => Tensor;

interface BinaryCase {
  name: string;
  op: BinaryOp;
  f: (x: number, y: number) => number;
  /** Ranges of the left and right operands (division and pow stay away from poles and NaNs). */
  left: [number, number];
  right: [number, number];
}

const ARITHMETIC: BinaryCase[] = [
  { name: 'add', op: add, f: (x, y) => x + y, left: [-2, 2], right: [-2, 2] },
  { name: 'sub', op: sub, f: (x, y) => x - y, left: [-2, 2], right: [-2, 2] },
  { name: 'mul', op: mul, f: (x, y) => x * y, left: [-2, 2], right: [-2, 2] },
  { name: 'div', op: div, f: (x, y) => x / y, left: [-2, 2], right: [0.5, 2] },
  { name: 'pow', op: pow, f: (x, y) => x ** y, left: [0.2, 2], right: [-2, 2] },
  { name: 'maximum', op: maximum, f: Math.max, left: [-2, 2], right: [-2, 2] },
  { name: 'minimum', op: minimum, f: Math.min, left: [-2, 2], right: [-2, 2] },
];

/** Operand shapes: equal, numpy broadcasting both ways, rank 0. */
const BROADCASTS: [number[], number[]][] = [
  [
    [2, 3],
    [2, 3],
  ],
  [
    [3, 1, 5],
    [4, 5],
  ],
  [[2, 3, 4], [4]],
  [[4], [2, 3, 4]],
  [
    [2, 1, 4],
    [1, 3, 1],
  ],
  [[], []],
  [[2, 3], []],
  [[], [3, 2]],
];

const shapeName = (shape: readonly number[]): string => `[${shape.join(', ')}]`;

describe('binary arithmetic with broadcasting', () => {
  ARITHMETIC.forEach(({ name, op, f, left, right }, opIndex) => {
    BROADCASTS.forEach(([aShape, bShape], caseIndex) => {
      it(`${name} ${shapeName(aShape)} ${shapeName(bShape)}`, async () => {
        const random = seededUniform(1000 + 50 * opIndex + caseIndex);
        const a = randomTensor(aShape, random, ...left);
        const b = randomTensor(bShape, random, ...right);
        const y = await runOp((t) => op(t.a, t.b), { a, b });
        assertMatches(y, ref.mapBinary(toRef(a), toRef(b), f), { what: name });
      });
    });

    it(`${name} with a number on either side`, async () => {
      const random = seededUniform(1040 + 50 * opIndex);
      const a = randomTensor([3, 4], random, ...left);
      const b = randomTensor([4, 3], random, ...right);
      const scalar = 1.5;
      const onRight = await runOp((t) => op(t.a, scalar), { a });
      assertMatches(
        onRight,
        ref.mapUnary(toRef(a), (x) => f(x, scalar)),
        { what: `${name}(x, ${scalar})` },
      );
      const onLeft = await runOp((t) => op(scalar, t.b), { b });
      assertMatches(
        onLeft,
        ref.mapUnary(toRef(b), (y) => f(scalar, y)),
        { what: `${name}(${scalar}, y)` },
      );
    });
  });

  for (const dtype of ['int32', 'int64'] as const) {
    it(`add, sub, mul, maximum, minimum of ${dtype} tensors are exact`, async () => {
      const random = seededUniform(dtype === 'int32' ? 1500 : 1501);
      const ints = (shape: number[]): HostTensor => {
        const values = Array.from({ length: ref.sizeOf(shape) }, () => Math.floor(random() * 2001) - 1000);
        return hostTensor(dtype, shape, values);
      };
      const a = ints([3, 1, 4]);
      const b = ints([2, 4]);
      const ops: [string, BinaryOp, (x: number, y: number) => number][] = [
        ['add', add, (x, y) => x + y],
        ['sub', sub, (x, y) => x - y],
        ['mul', mul, (x, y) => x * y],
        ['maximum', maximum, Math.max],
        ['minimum', minimum, Math.min],
      ];
      for (const [name, op, f] of ops) {
        const y = await runOp((t) => op(t.a, t.b), { a, b });
        assertMatches(y, ref.mapBinary(toRef(a), toRef(b), f), { dtype, what: `${dtype} ${name}` });
      }
      const plusSeven = await runOp((t) => add(t.a, 7), { a });
      assertMatches(
        plusSeven,
        ref.mapUnary(toRef(a), (x) => x + 7),
        { dtype, what: `${dtype} add(x, 7)` },
      );
      const belowTen = await runOp((t) => less(t.a, 10), { a });
      assertMatches(
        belowTen,
        ref.mapUnary(toRef(a), (x) => Number(x < 10)),
        { dtype: 'bool', what: `${dtype} less(x, 10)` },
      );
    });
  }
});

describe('comparisons give bool tensors', () => {
  const comparisons: [string, BinaryOp, (x: number, y: number) => boolean][] = [
    ['equal', equal, (x, y) => x === y],
    ['less', less, (x, y) => x < y],
    ['lessEqual', lessEqual, (x, y) => x <= y],
    ['greater', greater, (x, y) => x > y],
    ['greaterEqual', greaterEqual, (x, y) => x >= y],
  ];
  const shapes: [number[], number[]][] = [
    [
      [2, 5],
      [2, 5],
    ],
    [
      [3, 1, 5],
      [4, 5],
    ],
    [[], [2, 3]],
  ];
  comparisons.forEach(([name, op, f], opIndex) => {
    it(`${name} with broadcasting and a number operand`, async () => {
      for (const [caseIndex, [aShape, bShape]] of shapes.entries()) {
        // Small integers, so that equal operands are common.
        const random = seededUniform(2000 + 10 * opIndex + caseIndex);
        const a = randomIntegers(aShape, random, -2, 2);
        const b = randomIntegers(bShape, random, -2, 2);
        const y = await runOp((t) => op(t.a, t.b), { a, b });
        assert.ok(y.data instanceof Uint8Array, `${name}: bool data is a Uint8Array`);
        const expected = ref.mapBinary(toRef(a), toRef(b), (x, z) => Number(f(x, z)));
        assertMatches(y, expected, {
          dtype: 'bool',
          what: `${name} ${shapeName(aShape)} ${shapeName(bShape)}`,
        });
      }
      const x = randomIntegers([4, 4], seededUniform(2005 + 10 * opIndex), -2, 2);
      const y = await runOp((t) => op(t.x, 1), { x });
      assertMatches(
        y,
        ref.mapUnary(toRef(x), (v) => Number(f(v, 1))),
        { dtype: 'bool', what: `${name}(x, 1)` },
      );
    });
  });
});

describe('logical ops', () => {
  it('and, or with broadcasting; not', async () => {
    const random = seededUniform(2100);
    const a = randomBools([2, 3, 4], random);
    const b = randomBools([3, 1], random);
    const both = await runOp((t) => and(t.a, t.b), { a, b });
    assertMatches(
      both,
      ref.mapBinary(toRef(a), toRef(b), (x, y) => x & y),
      { dtype: 'bool', what: 'and' },
    );
    const either = await runOp((t) => or(t.a, t.b), { a, b });
    assertMatches(
      either,
      ref.mapBinary(toRef(a), toRef(b), (x, y) => x | y),
      { dtype: 'bool', what: 'or' },
    );
    const negated = await runOp((t) => not(t.a), { a });
    assertMatches(
      negated,
      ref.mapUnary(toRef(a), (x) => 1 - x),
      { dtype: 'bool', what: 'not' },
    );
  });
});

describe('where', () => {
  const cases: [number[], number[], number[]][] = [
    [
      [2, 1, 4],
      [3, 4],
      [2, 3, 1],
    ],
    [[4], [2, 4], [2, 4]],
    [[], [2, 3], [2, 3]],
    [[3, 1], [], [1, 5]],
  ];
  cases.forEach(([condShape, aShape, bShape], caseIndex) => {
    it(`condition ${shapeName(condShape)}, values ${shapeName(aShape)} and ${shapeName(bShape)}`, async () => {
      const random = seededUniform(2200 + caseIndex);
      const c = randomBools(condShape, random);
      const a = randomTensor(aShape, random);
      const b = randomTensor(bShape, random);
      const y = await runOp((t) => where(t.c, t.a, t.b), { c, a, b });
      assertMatches(y, ref.select(toRef(c), toRef(a), toRef(b)), { what: 'where' });
    });
  });

  it('takes a number for either value', async () => {
    const random = seededUniform(2210);
    const c = randomBools([3, 4], random);
    const x = randomTensor([3, 4], random);
    const zeroElse = await runOp((t) => where(t.c, t.x, 0), { c, x });
    assertMatches(zeroElse, ref.select(toRef(c), toRef(x), ref.refTensor([], [0])), {
      what: 'where(c, x, 0)',
    });
    const constantThen = await runOp((t) => where(t.c, -1.5, t.x), { c, x });
    assertMatches(constantThen, ref.select(toRef(c), ref.refTensor([], [-1.5]), toRef(x)), {
      what: 'where(c, -1.5, x)',
    });
  });
});

interface UnaryCase {
  name: string;
  op: (x: Tensor) => Tensor;
  f: (x: number) => number;
  range: [number, number];
  tol?: number;
}

const UNARY: UnaryCase[] = [
  { name: 'neg', op: neg, f: (x) => -x, range: [-4, 4] },
  { name: 'abs', op: abs, f: Math.abs, range: [-4, 4] },
  { name: 'exp', op: exp, f: Math.exp, range: [-4, 4] },
  { name: 'log', op: log, f: Math.log, range: [0.05, 8] },
  { name: 'sqrt', op: sqrt, f: Math.sqrt, range: [0, 8] },
  { name: 'rsqrt', op: rsqrt, f: (x) => 1 / Math.sqrt(x), range: [0.05, 8] },
  { name: 'reciprocal', op: reciprocal, f: (x) => 1 / x, range: [0.25, 4] },
  { name: 'sin', op: sin, f: Math.sin, range: [-6, 6] },
  { name: 'cos', op: cos, f: Math.cos, range: [-6, 6] },
  { name: 'tanh', op: tanh, f: Math.tanh, range: [-4, 4] },
  { name: 'erf', op: erf, f: ref.erf, range: [-3.5, 3.5] },
  { name: 'sigmoid', op: sigmoid, f: ref.sigmoid, range: [-8, 8] },
  { name: 'relu', op: relu, f: (x) => Math.max(x, 0), range: [-2, 2] },
  { name: 'gelu (exact)', op: (x) => gelu(x), f: ref.geluExact, range: [-5, 5] },
  { name: 'gelu (tanh)', op: (x) => gelu(x, 'tanh'), f: ref.geluTanh, range: [-5, 5] },
  { name: 'silu', op: silu, f: ref.silu, range: [-6, 6] },
  // Appended last so the seeds of the cases above stay as they were.
  { name: 'elu (α 1)', op: (x) => elu(x), f: (x) => (x > 0 ? x : Math.expm1(x)), range: [-6, 4] },
  {
    name: 'elu (α 0.5)',
    op: (x) => elu(x, 0.5),
    f: (x) => (x > 0 ? x : 0.5 * Math.expm1(x)),
    range: [-6, 4],
  },
  { name: 'leakyRelu (0.01)', op: (x) => leakyRelu(x), f: (x) => (x >= 0 ? x : 0.01 * x), range: [-4, 4] },
  { name: 'leakyRelu (0.2)', op: (x) => leakyRelu(x, 0.2), f: (x) => (x >= 0 ? x : 0.2 * x), range: [-4, 4] },
  { name: 'eluPlusOne', op: eluPlusOne, f: (x) => (x > 0 ? x + 1 : Math.exp(x)), range: [-6, 4] },
];

describe('unary math and activations', () => {
  UNARY.forEach(({ name, op, f, range, tol = 1e-6 }, opIndex) => {
    it(name, async () => {
      const x = randomTensor([3, 41], seededUniform(3000 + opIndex), ...range);
      const y = await runOp((t) => op(t.x), { x });
      assertMatches(y, ref.mapUnary(toRef(x), f), { atol: tol, rtol: tol, what: name });
    });
  });

  it('gelu exact and tanh forms differ (the test can tell them apart)', () => {
    assert.ok(Math.abs(ref.geluExact(1.5) - ref.geluTanh(1.5)) > 1e-4);
  });

  it('neg, abs and relu of int32 are exact', async () => {
    const random = seededUniform(3100);
    const x = hostTensor(
      'int32',
      [2, 6],
      Array.from({ length: 12 }, () => Math.floor(random() * 41) - 20),
    );
    for (const [name, op, f] of [
      ['neg', neg, (v: number) => -v],
      ['abs', abs, Math.abs],
      ['relu', relu, (v: number) => Math.max(v, 0)],
    ] as const) {
      const y = await runOp((t) => op(t.x), { x });
      assertMatches(y, ref.mapUnary(toRef(x), f), { dtype: 'int32', what: `int32 ${name}` });
    }
  });
});

describe('elementwise build errors', () => {
  const graph = (): Graph => new Graph('errors');

  it('shapes that do not broadcast name the op and both shapes', () => {
    const g = graph();
    const a = g.input('a', 'float32', [3, 4]);
    const b = g.input('b', 'float32', [2, 4]);
    assertBuildError(() => add(a, b), 'add', '[3, 4]', '[2, 4]', 'broadcast');
    assertBuildError(() => maximum(b, a), 'maximum', '[2, 4]', '[3, 4]');
  });

  it('different dtypes name the op and both dtypes', () => {
    const g = graph();
    const a = g.input('a', 'float32', [3]);
    const b = g.input('b', 'int64', [3]);
    assertBuildError(() => add(a, b), 'add', 'float32', 'int64');
    assertBuildError(() => less(a, b), 'less', 'float32', 'int64');
    assertBuildError(() => where(g.input('c', 'bool', [3]), a, b), 'where', 'float32', 'int64');
  });

  it('an error inside a scope names the module path', () => {
    const g = graph();
    const a = g.input('a', 'float32', [3, 4]);
    const b = g.input('b', 'float32', [5]);
    assertBuildError(() => g.scope('blocks.0', () => mul(a, b)), 'blocks.0', 'mul', '[3, 4]', '[5]');
  });

  it('a fractional or out-of-range number for an integer tensor is an error, not a truncation', () => {
    const g = graph();
    const ints = g.input('i', 'int32', [3]);
    const longs = g.input('l', 'int64', [3]);
    // Truncated, less(ints, 0.5) would compute ints < 0 and be wrong for 0.
    assertBuildError(() => less(ints, 0.5), 'less', '0.5', 'int32', '[3]');
    assertBuildError(() => add(2.5, longs), 'add', '2.5', 'int64');
    assertBuildError(() => add(ints, 2 ** 31), 'add', '2147483648', 'int32');
    assertBuildError(() => where(g.input('c', 'bool', [3]), ints, NaN), 'where', 'NaN', 'int32');
    assertBuildError(() => g.scope('blocks.0', () => mul(ints, 0.5)), 'blocks.0', 'mul', '0.5');
  });

  it('dtype domains: float-only, bool-only, numeric-only ops', () => {
    const g = graph();
    const ints = g.input('i', 'int32', [3]);
    const bools = g.input('b', 'bool', [3]);
    const floats = g.input('f', 'float32', [3]);
    assertBuildError(() => exp(ints), 'exp', 'int32');
    assertBuildError(() => gelu(ints), 'gelu', 'int32');
    assertBuildError(() => and(floats, floats), 'and', 'float32');
    assertBuildError(() => not(floats), 'not', 'float32');
    assertBuildError(() => add(bools, bools), 'add', 'bool');
    assertBuildError(() => where(floats, floats, floats), 'where', 'bool', 'float32');
    assertBuildError(() => add(1, 2), 'add', 'tensor');
  });
});
