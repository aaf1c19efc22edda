/**
 * Gradients of the data-movement ops (src/graph/ops/movement.ts). Every op's VJP is checked against
 * central finite differences through test/graph/gradcheck.ts in float64 (its tolerance, 1e-7 of
 * max(1, max|numeric|)): ONNX Runtime's CPU EP has double kernels for every op involved, Reshape
 * Transpose Concat Split Slice Gather Expand Pad Unsqueeze Squeeze, and ScatterND with
 * reduction=add. One gather is checked in float32 too (the harness's float32 tolerance, 2e-3).
 * The two adjoint ops the VJPs are built from, scatterAdd (gather's) and unslice (slice's), are
 * first compared with float64 loops.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import type { SliceSpec } from '../../src/graph/index.js';
import {
  Graph,
  add,
  cast,
  concat,
  expand,
  gather,
  grad,
  mul,
  pad,
  reshape,
  reshapeUnchecked,
  scatterAdd,
  slice,
  split,
  squeeze,
  sum,
  transpose,
  unslice,
  unsqueeze,
} from '../../src/graph/index.js';
import type { HostTensor } from '../../src/runtime/host-tensor.js';
import { hostTensor } from '../../src/runtime/host-tensor.js';
import { runGraph } from '../helpers.js';
import { seededUniform, testSeed } from '../random.js';
import type { RefArray } from '../reference/layout.js';
import {
  assertMatchesRef,
  offsetOf,
  pythonSliceIndices,
  refArray,
  sizeOf,
  unravel,
} from '../reference/layout.js';
import { gradCheck } from './gradcheck.js';

function randomF64(shape: readonly number[], random: () => number): HostTensor {
  return hostTensor(
    'float64',
    shape,
    Float64Array.from({ length: sizeOf(shape) }, () => 2 * random() - 1),
  );
}

const int64s = (...values: number[]): BigInt64Array => BigInt64Array.from(values, BigInt);

const asRef = (t: HostTensor): RefArray => refArray(t.shape, t.data as Float64Array);

// ---------------------------------------------------------------- the adjoint ops, against loops

/** base + updates added at indices along axis: the loop of gather's adjoint. */
function scatterAddRef(
  base: RefArray,
  indices: readonly number[],
  indicesShape: readonly number[],
  updates: RefArray,
  axis: number,
): RefArray {
  const out = refArray(base.shape, base.data);
  const q = indicesShape.length;
  for (let flat = 0; flat < updates.data.length; flat++) {
    const at = unravel(flat, updates.shape);
    const raw = indices[offsetOf(at.slice(axis, axis + q), indicesShape)];
    const i = raw < 0 ? raw + base.shape[axis] : raw;
    out.data[offsetOf([...at.slice(0, axis), i, ...at.slice(axis + q)], base.shape)] += updates.data[flat];
  }
  return out;
}

/** Zeros of `shape` with y at the positions Python's slicing takes. */
function unsliceRef(y: RefArray, specs: readonly SliceSpec[], shape: readonly number[]): RefArray {
  const positions = shape.map((d, axis) => {
    const s = specs.find((p) => (p.axis < 0 ? p.axis + shape.length : p.axis) === axis);
    return s ? pythonSliceIndices(d, s.start, s.end, s.step) : Array.from({ length: d }, (_, i) => i);
  });
  const out = refArray(shape);
  for (let flat = 0; flat < y.data.length; flat++) {
    const at = unravel(flat, y.shape);
    out.data[
      offsetOf(
        at.map((j, axis) => positions[axis][j]),
        shape,
      )
    ] = y.data[flat];
  }
  return out;
}

describe('scatterAdd (float64, against a loop)', () => {
  const cases: {
    what: string;
    base: number[];
    indices: number[];
    indicesShape: number[];
    axis: number;
    dtype: 'int64' | 'int32';
  }[] = [
    {
      what: 'axis 0, repeated indices',
      base: [4, 3],
      indices: [1, 3, 1, 1, 0],
      indicesShape: [5],
      axis: 0,
      dtype: 'int64',
    },
    {
      what: 'middle axis, [2, 3] indices with negatives and repeats, int32',
      base: [2, 5, 3],
      indices: [-1, 0, 4, 2, -1, 0],
      indicesShape: [2, 3],
      axis: 1,
      dtype: 'int32',
    },
    {
      what: 'last axis as -1, scalar index',
      base: [3, 4],
      indices: [-2],
      indicesShape: [],
      axis: -1,
      dtype: 'int64',
    },
  ];
  for (const c of cases) {
    it(c.what, async () => {
      const random = seededUniform(testSeed(`scatterAdd ${c.what}`));
      const axis = c.axis < 0 ? c.axis + c.base.length : c.axis;
      const updatesShape = [...c.base.slice(0, axis), ...c.indicesShape, ...c.base.slice(axis + 1)];
      const base = randomF64(c.base, random);
      const updates = randomF64(updatesShape, random);
      const indices =
        c.dtype === 'int64'
          ? hostTensor('int64', c.indicesShape, BigInt64Array.from(c.indices, BigInt))
          : hostTensor('int32', c.indicesShape, Int32Array.from(c.indices));
      const out = await runGraph((_g, t) => ({ y: scatterAdd(t.base, t.indices, t.updates, c.axis) }), {
        base,
        indices,
        updates,
      });
      const expected = scatterAddRef(asRef(base), c.indices, c.indicesShape, asRef(updates), axis);
      assertMatchesRef(out.y, expected, c.what, { atol: 1e-15, rtol: 1e-15 });
    });
  }

  it('float16 and bfloat16: accumulated in float32, as ORT has no half ScatterND add', async () => {
    // Quarters in [-4, 4]: every sum here is exact in float16 and bfloat16.
    const random = seededUniform(testSeed('scatterAdd half'));
    const quarters = (shape: number[]): HostTensor =>
      hostTensor(
        'float32',
        shape,
        Float32Array.from({ length: sizeOf(shape) }, () => Math.round(32 * random() - 16) / 4),
      );
    const base = quarters([3, 4]);
    const updates = quarters([3, 5]);
    const ids = [0, 2, 0, 0, -1];
    for (const dtype of ['float16', 'bfloat16'] as const) {
      const out = await runGraph(
        (g, t) => ({
          y: cast(
            scatterAdd(
              cast(t.base, dtype),
              g.constant(int64s(...ids), 'int64', [5]),
              cast(t.updates, dtype),
              1,
            ),
            'float32',
          ),
        }),
        { base, updates },
      );
      const expected = scatterAddRef(
        refArray([3, 4], base.data as Float32Array),
        ids,
        [5],
        refArray([3, 5], updates.data as Float32Array),
        1,
      );
      assertMatchesRef(out.y, expected, `${dtype} scatterAdd`);
    }
  });

  it('rejects updates of the wrong shape, naming both', () => {
    const g = new Graph('scatter-shape');
    const base = g.input('base', 'float64', [2, 3]);
    const updates = g.input('updates', 'float64', [2, 3]);
    assert.throws(
      () => scatterAdd(base, g.constant(int64s(0, 1), 'int64', [2]), updates, 1),
      /^GraphBuildError: scatterAdd: updates \[2, 3\] must have the shape gather\(base, indices, 1\) has, \[2, 2\]$/,
    );
  });
});

describe('unslice (float64, against a loop)', () => {
  const cases: { what: string; shape: number[]; specs: SliceSpec[]; dims?: (number | string)[] }[] = [
    {
      what: 'contiguous on two axes (Pad)',
      shape: [4, 6],
      specs: [
        { axis: 0, start: 1, end: 3 },
        { axis: -1, start: -4 },
      ],
    },
    {
      what: 'step 2 and step -1 (ScatterND)',
      shape: [5, 7],
      specs: [
        { axis: 1, start: 1, step: 2 },
        { axis: 0, step: -1 },
      ],
    },
    {
      what: 'step -3 from the end, and an empty slice',
      shape: [3, 8, 2],
      specs: [
        { axis: 1, start: -2, step: -3 },
        { axis: 2, start: 2 },
      ],
    },
    {
      what: 'named dims: S[1:-1:2], T[-3:] (positions from Range and Slice)',
      shape: [2, 7, 5],
      specs: [
        { axis: 1, start: 1, end: -1, step: 2 },
        { axis: 2, start: -3 },
      ],
      dims: ['B', 'S', 'T'],
    },
  ];
  for (const c of cases) {
    it(c.what, async () => {
      const random = seededUniform(testSeed(`unslice ${c.what}`));
      const sliced = c.shape.map((d, axis) => {
        const s = c.specs.find((p) => (p.axis < 0 ? p.axis + c.shape.length : p.axis) === axis);
        return s ? pythonSliceIndices(d, s.start, s.end, s.step).length : d;
      });
      // The target shape is x's (named where `dims` says); y's sliced dims get names of their own.
      const x = randomF64(c.shape, random);
      const y = randomF64(sliced, random);
      const yDims = c.dims?.map((d, i) => (sliced[i] === c.shape[i] ? d : `Y${i}`));
      const out = await runGraph(
        (_g, t) => ({ out: unslice(t.y, c.specs, t.x.shape), x: t.x }),
        { x, y },
        {
          ...(c.dims ? { x: c.dims, y: yDims ?? [] } : {}),
        },
      );
      assertMatchesRef(out.out, unsliceRef(asRef(y), c.specs, c.shape), c.what);
    });
  }
});

// ---------------------------------------------------------------- gradient checks, op by op

describe('VJPs of the movement ops (float64 gradient checks)', () => {
  it('reshape: static with -1, and named dims split into heads then merged', async () => {
    await gradCheck({
      what: 'reshape [2, 3, 4] → [4, -1]',
      inputs: { x: { shape: [2, 3, 4] } },
      build: (_g, { x }) => reshape(x, [4, -1]),
    });
    await gradCheck({
      what: 'reshape [B, S, 6] → [B, S, 2, 3] → [-1, 3]',
      inputs: { x: { shape: [2, 3, 6], dims: ['B', 'S', 6] } },
      build: (_g, { x }) => reshape(reshape(x, ['B', 'S', 2, 3]), [-1, 3]),
    });
  });

  it('transpose: a 3-axis permutation, and the default reversal over a named batch', async () => {
    await gradCheck({
      what: 'transpose [2, 0, 1]',
      inputs: { x: { shape: [2, 3, 4] } },
      build: (_g, { x }) => transpose(x, [2, 0, 1]),
    });
    await gradCheck({
      what: 'transpose [B, 3, 2] reversed',
      inputs: { x: { shape: [3, 3, 2], dims: ['B', 3, 2] } },
      build: (_g, { x }) => transpose(x),
    });
  });

  it('concat: three inputs on axis -2 (one not differentiated), and two different named dims', async () => {
    await gradCheck({
      what: 'concat on axis -2',
      inputs: { a: { shape: [2, 1, 3] }, b: { shape: [2, 4, 3] }, c: { shape: [2, 2, 3], grad: false } },
      build: (_g, { a, b, c }) => concat([a, b, c], -2),
    });
    await gradCheck({
      what: 'concat [B, 3] and [S, 3] on axis 0',
      inputs: { a: { shape: [2, 3], dims: ['B', 3] }, b: { shape: [3, 3], dims: ['S', 3] } },
      build: (_g, { a, b }) => concat([a, b], 0),
    });
  });

  it('split: an unused output gets zeros; parts of a named dim; sizes of a named dim', async () => {
    await gradCheck({
      what: 'split [1, 3, 2] on axis 1, middle part unused',
      inputs: { x: { shape: [2, 6] } },
      build: (_g, { x }) => {
        const [p, , r] = split(x, [1, 3, 2], 1);
        return concat([r, mul(p, p)], -1);
      },
    });
    await gradCheck({
      what: 'split [B, 3] into 2 parts on axis 0, second unused',
      inputs: { x: { shape: [4, 3], dims: ['B', 3] } },
      build: (_g, { x }) => mul(split(x, 2, 0)[0], 3),
    });
    await gradCheck({
      what: 'split [2, S] into sizes [2, 3] on axis -1',
      inputs: { x: { shape: [2, 5], dims: [2, 'S'] } },
      build: (_g, { x }) => {
        const [p, q] = split(x, [2, 3], -1);
        return concat([q, mul(p, p)], 1);
      },
    });
  });

  it('slice: steps, negative starts and axes, an empty slice; named dims', async () => {
    await gradCheck({
      what: 'slice [5, 7, 3] with steps 2 and -1, and a negative start on axis -1',
      inputs: { x: { shape: [5, 7, 3] } },
      build: (_g, { x }) =>
        slice(x, [
          { axis: 1, start: 1, step: 2 },
          { axis: 0, step: -1 },
          { axis: -1, start: -2 },
        ]),
    });
    await gradCheck({
      what: 'slice [4, 6]: step -3 from the end, and an empty slice concatenated',
      inputs: { x: { shape: [4, 6] } },
      build: (_g, { x }) =>
        concat([slice(x, { axis: 1, start: -1, step: -3 }), slice(x, { axis: 1, start: 4, end: 2 })], 1),
    });
    await gradCheck({
      what: 'slice [B, S, 4]: S[1:-1:2], and axis -1 reversed from -2',
      inputs: { x: { shape: [2, 7, 4], dims: ['B', 'S', 4] } },
      build: (_g, { x }) =>
        slice(x, [
          { axis: 1, start: 1, end: -1, step: 2 },
          { axis: -1, start: -2, step: -1 },
        ]),
    });
  });

  it('unslice: its own VJP is slice, static and named', async () => {
    await gradCheck({
      what: 'unslice into [5, 6]',
      inputs: { y: { shape: [3, 2] } },
      build: (_g, { y }) =>
        unslice(
          y,
          [
            { axis: 0, start: -1, step: -2 },
            { axis: 1, start: 1, end: 3 },
          ],
          [5, 6],
        ),
    });
    await gradCheck({
      what: 'unslice into [B, S] along S',
      inputs: {
        y: { shape: [3, 2], dims: ['B', 2] },
        like: { shape: [3, 5], dims: ['B', 'S'], grad: false },
      },
      build: (_g, { y, like }) => add(unslice(y, { axis: 1, start: -3, end: -1 }, like.shape), like),
    });
  });

  it('gather: repeated and negative indices accumulate, on axis 0, a middle axis, and a named batch', async () => {
    await gradCheck({
      what: 'gather rows [1, 3, 1, 1, -4] of [4, 3]',
      inputs: {
        table: { shape: [4, 3] },
        ids: { shape: [5], dtype: 'int64', values: int64s(1, 3, 1, 1, -4) },
      },
      build: (_g, { table, ids }) => gather(table, ids, 0),
    });
    await gradCheck({
      what: 'gather [2, 3] int32 indices on axis 1 of [B, 5, 2]',
      inputs: {
        x: { shape: [3, 5, 2], dims: ['B', 5, 2] },
        ids: { shape: [2, 3], dtype: 'int32', values: Int32Array.of(-1, 0, 4, 2, -1, -1) },
      },
      build: (_g, { x, ids }) => gather(x, ids, -2),
    });
    await gradCheck({
      what: 'gather a scalar index on axis -1',
      inputs: { x: { shape: [3, 4] }, ids: { shape: [], dtype: 'int64', values: int64s(2) } },
      build: (_g, { x, ids }) => gather(x, ids, -1),
    });
  });

  it('gather in float32 (an embedding table)', async () => {
    await gradCheck({
      what: 'float32 gather rows [2, 0, 2]',
      dtype: 'float32',
      inputs: { table: { shape: [3, 4] }, ids: { shape: [3], dtype: 'int64', values: int64s(2, 0, 2) } },
      build: (_g, { table, ids }) => mul(gather(table, ids, 0), gather(table, ids, 0)),
    });
  });

  it('scatterAdd: gradients of the base and of the updates', async () => {
    await gradCheck({
      what: 'scatterAdd on axis 1 with repeats',
      inputs: {
        base: { shape: [2, 4] },
        ids: { shape: [3], dtype: 'int64', values: int64s(3, -1, 0) },
        updates: { shape: [2, 3] },
      },
      build: (_g, { base, ids, updates }) => {
        const y = scatterAdd(base, ids, updates, 1);
        return mul(y, y);
      },
    });
  });

  it('expand: two-way broadcasting, and a named batch', async () => {
    await gradCheck({
      what: 'expand [3, 1] to [2, 1, 4]',
      inputs: { x: { shape: [3, 1] } },
      build: (_g, { x }) => expand(x, [2, 1, 4]),
    });
    await gradCheck({
      what: 'expand [1, 4] to [B, 4]',
      inputs: { x: { shape: [1, 4] }, z: { shape: [3, 4], dims: ['B', 4] } },
      build: (_g, { x, z }) => mul(expand(x, z.shape), z),
    });
  });

  it('pad: constant (padding, cropping, a fill value), reflect and edge on two axes, a named dim', async () => {
    await gradCheck({
      what: 'constant pad [[1, -1], [0, 2]] with value 0.5',
      inputs: { x: { shape: [3, 4] } },
      build: (_g, { x }) =>
        pad(
          x,
          [
            [1, -1],
            [0, 2],
          ],
          { value: 0.5 },
        ),
    });
    for (const mode of ['reflect', 'edge'] as const) {
      await gradCheck({
        what: `${mode} pad [[2, 1], [0, 0], [1, 2]]`,
        inputs: { x: { shape: [3, 2, 4] } },
        build: (_g, { x }) =>
          pad(
            x,
            [
              [2, 1],
              [0, 0],
              [1, 2],
            ],
            { mode },
          ),
      });
    }
    await gradCheck({
      what: 'constant pad [B, S] by [2, -1] on S',
      inputs: { x: { shape: [2, 4], dims: ['B', 'S'] } },
      build: (_g, { x }) =>
        pad(x, [
          [0, 0],
          [2, -1],
        ]),
    });
  });

  it('pad: reflect on a named dim has no gradient, and says so', () => {
    const g = new Graph('pad-reflect');
    const x = g.input('x', 'float64', ['B', 'S']);
    const y = pad(
      x,
      [
        [0, 0],
        [1, 1],
      ],
      { mode: 'reflect' },
    );
    assert.throws(
      () => grad(sum(y, [0, 1]), [x]),
      /\(pad\): no gradient for reflect padding by \[1, 1\] on axis 1 of \[B, S\]: it needs a static dim/,
    );
  });

  it('squeeze and unsqueeze: negative axes, a named batch', async () => {
    await gradCheck({
      what: 'unsqueeze [-1, 1] then squeeze [0]',
      inputs: { x: { shape: [1, 3, 2], dims: [1, 'B', 2] } },
      build: (_g, { x }) => squeeze(unsqueeze(x, [-1, 1]), [0]),
    });
    await gradCheck({
      what: 'squeeze [-1] of [2, 3, 1]',
      inputs: { x: { shape: [2, 3, 1] } },
      build: (_g, { x }) => squeeze(x, -1),
    });
  });

  it('reshapeUnchecked: the halves of a split of B, concatenated, are [B] again', async () => {
    await gradCheck({
      what: 'reshapeUnchecked [2*_d, 3] to [B, 3]',
      inputs: { x: { shape: [4, 3], dims: ['B', 3] } },
      build: (_g, { x }) => {
        const [a, b] = split(x, 2, 0);
        return reshapeUnchecked(concat([b, mul(a, a)], 0), x.shape);
      },
    });
  });
});
