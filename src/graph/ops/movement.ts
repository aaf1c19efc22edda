import type { DType } from '../dtype.js';
import { ONNX_DTYPE_CODE } from '../dtype.js';
import type { Tensor, TensorType } from '../graph.js';
import { UNKNOWN_DIM } from '../graph.js';
import { attr } from '../onnx/model.js';
import type { LowerContext } from '../op.js';
import { apply, defineOp, fail } from '../op.js';
import type { Dim, Shape } from '../shape.js';
import {
  broadcastShapes,
  dimDiv,
  dimEquals,
  formatShape,
  normalizeAxis,
  normalizeDim,
  numel,
} from '../shape.js';
import { add, asTensor } from './elementwise.js';
import { sum, sumToShape } from './reduce.js';

// Each op's VJP sits in its definition. Their results must have their input's symbolic shape
// exactly (grad() checks it); where an op's `infer` had to invent a dim ('?'), the VJP restores the
// input's shape with reshapeUnchecked.

/** Zeros of t's dtype and shape. */
function zerosOf(t: Tensor): Tensor {
  return expand(asTensor(0, t), t.shape);
}

function sameShape(a: Shape, b: Shape): boolean {
  return a.length === b.length && a.every((d, i) => dimEquals(d, b[i]));
}

/** `g`, a cotangent with x's run-time shape, given x's symbolic shape. */
function withShapeOf(g: Tensor, x: Tensor): Tensor {
  return sameShape(g.shape, x.shape) ? g : reshapeUnchecked(g, x.shape);
}

/** The module path and op as apply() writes them, for errors raised in a VJP. */
function site(t: Tensor, op: string): string {
  const scope = t.graph.currentScope;
  return scope ? `${scope} (${op})` : op;
}

// ---------------------------------------------------------------- reshape

export const ReshapeOp = defineOp<{ shape: readonly Dim[]; unchecked?: boolean }>({
  name: 'reshape',
  infer([x], { shape, unchecked }) {
    const inferIndex = shape.indexOf(-1);
    if (shape.filter((d) => d === -1).length > 1) fail(`at most one -1 in ${formatShape(shape)}`, 'SHAPE');
    if (unchecked && inferIndex >= 0) fail(`an unchecked reshape takes no -1: ${formatShape(shape)}`, 'ATTR');
    const target = shape.map((d) => (d === -1 ? 1 : normalizeDim(d)));
    const total = numel(x.shape);
    if (unchecked) {
      // ONNX Reshape checks the element count when the graph runs.
    } else if (inferIndex >= 0) {
      const inferred = dimDiv(total, numel(target));
      if (inferred === undefined) {
        fail(
          `cannot infer -1: ${formatShape(x.shape)} has ${String(total)} elements, not a multiple of ${String(numel(target))}`,
          'SHAPE',
        );
      }
      target[inferIndex] = inferred;
    } else if (!dimEquals(numel(target), total)) {
      fail(
        `cannot reshape ${formatShape(x.shape)} (${String(total)} elements) to ${formatShape(shape)} (${String(numel(target))} elements)`,
        'SHAPE',
      );
    }
    return [{ dtype: x.dtype, shape: target }];
  },
  lower(ctx, node, [out]) {
    const x = node.inputs[0];
    const y = node.outputs[0];
    ctx.reshape(ctx.name(x), x.shape, y.shape, out);
  },
  vjp: ({ inputs: [x], attrs: { unchecked } }, [g]) => [
    unchecked ? reshapeUnchecked(g as Tensor, x.shape) : reshape(g as Tensor, x.shape),
  ],
});

/** Reshape to `shape` (numbers, named dims, or one -1 to infer). */
export function reshape(x: Tensor, shape: readonly Dim[]): Tensor {
  return apply(ReshapeOp, [x], { shape })[0];
}

/**
 * Reshape to `shape`, whose element count equals x's at run time though the shape algebra cannot
 * show it: the concat of the halves of a split of [B] is [2*_d7_0], which is [B] when the graph
 * runs. ONNX Reshape checks the count then. Use reshape() wherever it accepts the shapes.
 */
export function reshapeUnchecked(x: Tensor, shape: readonly Dim[]): Tensor {
  return apply(ReshapeOp, [x], { shape, unchecked: true })[0];
}

// ---------------------------------------------------------------- transpose

export const TransposeOp = defineOp<{ perm: readonly number[] }>({
  name: 'transpose',
  infer([x], { perm }) {
    const r = x.shape.length;
    const sorted = [...perm].sort((a, b) => a - b);
    if (perm.length !== r || sorted.some((p, i) => p !== i)) {
      fail(
        `perm [${perm.join(', ')}] is not a permutation of the ${r} axes of ${formatShape(x.shape)}`,
        'ATTR',
      );
    }
    return [{ dtype: x.dtype, shape: perm.map((p) => x.shape[p]) }];
  },
  lower(ctx, node, [out]) {
    ctx.emit('Transpose', [ctx.name(node.inputs[0])], [out], { perm: attr.ints(node.attrs.perm) });
  },
  vjp: ({ attrs: { perm } }, [g]) => [transpose(g as Tensor, inversePermutation(perm))],
});

function inversePermutation(perm: readonly number[]): number[] {
  const inverse = new Array<number>(perm.length);
  perm.forEach((p, i) => (inverse[p] = i));
  return inverse;
}

/** Permute axes; without `perm`, reverse them. */
export function transpose(x: Tensor, perm?: readonly number[]): Tensor {
  const p = perm ?? x.shape.map((_, i) => x.shape.length - 1 - i);
  return apply(TransposeOp, [x], { perm: p })[0];
}

// ---------------------------------------------------------------- concat

function addDims(dims: Dim[]): Dim {
  if (dims.every((d) => typeof d === 'number')) return (dims as number[]).reduce((a, b) => a + b, 0);
  if (dims.every((d) => dimEquals(d, dims[0]))) return normalizeDim(`${dims.length}*${dims[0]}`);
  return UNKNOWN_DIM;
}

export const ConcatOp = defineOp<{ axis: number }>({
  name: 'concat',
  infer(inputs, { axis }) {
    const first = inputs[0];
    const ax = normalizeAxis(axis, first.shape.length, `input ${formatShape(first.shape)}`);
    for (const t of inputs) {
      if (t.dtype !== first.dtype) fail(`dtypes differ (${first.dtype} vs ${t.dtype})`, 'DTYPE');
      const ok =
        t.shape.length === first.shape.length &&
        t.shape.every((d, i) => i === ax || dimEquals(d, first.shape[i]));
      if (!ok) {
        fail(
          `shapes ${formatShape(first.shape)} and ${formatShape(t.shape)} differ outside axis ${ax}`,
          'SHAPE',
        );
      }
    }
    const shape = [...first.shape];
    shape[ax] = addDims(inputs.map((t) => t.shape[ax]));
    return [{ dtype: first.dtype, shape }];
  },
  lower(ctx, node, [out]) {
    const axis = normalizeAxis(node.attrs.axis, node.inputs[0].shape.length, 'concat');
    ctx.emit(
      'Concat',
      node.inputs.map((t) => ctx.name(t)),
      [out],
      { axis: attr.int(axis) },
    );
  },
  vjp({ inputs, attrs: { axis }, needsGrad }, [g]) {
    const ax = normalizeAxis(axis, inputs[0].rank, 'concat');
    const parts = split(
      g as Tensor,
      inputs.map((t) => t.shape[ax]),
      ax,
    );
    return parts.map((p, i) => (needsGrad[i] ? p : undefined));
  },
});

export function concat(tensors: readonly Tensor[], axis: number): Tensor {
  if (tensors.length === 1) return tensors[0];
  return apply(ConcatOp, tensors, { axis })[0];
}

// ---------------------------------------------------------------- split

export const SplitOp = defineOp<{ axis: number; sizes?: readonly Dim[]; parts?: number }>({
  name: 'split',
  infer([x], { axis, sizes, parts }) {
    const ax = normalizeAxis(axis, x.shape.length, `input ${formatShape(x.shape)}`);
    const d = x.shape[ax];
    const out = (dim: Dim): TensorType => ({
      dtype: x.dtype,
      shape: x.shape.map((s, i) => (i === ax ? dim : s)),
    });
    if (sizes) {
      if (sizes.some((s) => typeof s === 'number' && (!Number.isInteger(s) || s < 0)))
        fail(`sizes [${sizes.join(', ')}] must be ≥ 0`, 'ATTR');
      const dims = sizes.map((s) => normalizeDim(s));
      // Named sizes (a concat's VJP splitting [B + S] back into [B] and [S]) are checked at run time.
      if (typeof d === 'number' && dims.every((s) => typeof s === 'number')) {
        const total = (dims as number[]).reduce((a, b) => a + b, 0);
        if (total !== d) {
          fail(
            `sizes [${sizes.join(', ')}] sum to ${total}, but axis ${ax} of ${formatShape(x.shape)} is ${d}`,
            'SHAPE',
          );
        }
      }
      return dims.map((s) => out(s));
    }
    if (!parts || !Number.isInteger(parts) || parts < 1) fail(`parts must be a positive integer`, 'ATTR');
    const each = dimDiv(d, parts);
    if (each === undefined) {
      if (typeof d === 'number')
        fail(`axis ${ax} of ${formatShape(x.shape)} does not split into ${parts} equal parts`, 'SHAPE');
      // Equal parts of a named dim: one new dim shared by all of them.
      return Array.from({ length: parts }, () => out(`${UNKNOWN_DIM}part`));
    }
    return Array.from({ length: parts }, () => out(each));
  },
  lower(ctx, node, out) {
    const x = node.inputs[0];
    const axis = normalizeAxis(node.attrs.axis, x.shape.length, 'split');
    if (node.attrs.sizes) {
      ctx.emit('Split', [ctx.name(x), ctx.shapeOf(node.attrs.sizes)], out, { axis: attr.int(axis) });
    } else {
      ctx.emit('Split', [ctx.name(x)], out, { axis: attr.int(axis), num_outputs: attr.int(out.length) });
    }
  },
  vjp({ inputs: [x], outputs, attrs: { axis } }, grads) {
    // An output that does not reach the loss contributes zeros.
    const parts = outputs.map((y, i) => grads[i] ?? zerosOf(y));
    return [withShapeOf(concat(parts, axis), x)];
  },
});

/** Split along `axis` into pieces of the given sizes (numbers or named dims), or into `n` equal pieces. */
export function split(x: Tensor, sizesOrParts: readonly Dim[] | number, axis: number): Tensor[] {
  return typeof sizesOrParts === 'number'
    ? apply(SplitOp, [x], { axis, parts: sizesOrParts })
    : apply(SplitOp, [x], { axis, sizes: sizesOrParts });
}

// ---------------------------------------------------------------- slice

export interface SliceSpec {
  axis: number;
  start?: number;
  /** Exclusive; Infinity (default) means to the end. */
  end?: number;
  step?: number;
}

/** A spec's step, start and end with Python's defaults filled in. */
function sliceRange(s: SliceSpec): { start: number; end: number; step: number } {
  const step = s.step ?? 1;
  return { step, start: s.start ?? (step > 0 ? 0 : -1), end: s.end ?? (step > 0 ? Infinity : -Infinity) };
}

/** The positions Python's `range(dim)[start:end:step]` takes, in order. */
function slicePositions(dim: number, s: SliceSpec): number[] {
  const { start, end, step } = sliceRange(s);
  const clamp = (v: number, lo: number, hi: number): number => Math.min(Math.max(v, lo), hi);
  const [lo, hi] = step > 0 ? [0, dim] : [-1, dim - 1];
  const first = clamp(start < 0 ? start + dim : start, lo, hi);
  const last = clamp(end < 0 ? end + dim : end, lo, hi);
  const out: number[] = [];
  for (let i = first; step > 0 ? i < last : i > last; i += step) out.push(i);
  return out;
}

function sliceLength(dim: Dim, s: SliceSpec): Dim {
  // Python slicing semantics, as ONNX Slice clamps.
  if (typeof dim === 'number') return slicePositions(dim, s).length;
  if (isWholeAxis(s)) return dim;
  // Otherwise the length depends on the named dim's value (ONNX clamps to it): leave it to the run.
  return UNKNOWN_DIM;
}

function isWholeAxis(s: SliceSpec): boolean {
  const { start, end, step } = sliceRange(s);
  return step === 1 && start === 0 && end === Infinity;
}

const INT64_MAX = 9223372036854775807n;
const INT64_MIN = -9223372036854775808n;

/** The starts, ends, axes and steps inputs of an ONNX Slice taking `specs` from a tensor of `shape`. */
function onnxSliceInputs(ctx: LowerContext, shape: Shape, specs: readonly SliceSpec[]): string[] {
  const toI64 = (v: number): bigint => (v === Infinity ? INT64_MAX : v === -Infinity ? INT64_MIN : BigInt(v));
  const ranges = specs.map((s) => sliceRange(s));
  const bounds = specs.map((s, i): [number, number] => {
    const { start, end, step } = ranges[i];
    // Stepping back from before the first element: Python takes nothing, while ONNX clamps the
    // start to 0 and takes element 0; ask ONNX for the empty range [0, 0) instead.
    const dim = shape[normalizeAxis(s.axis, shape.length, 'slice')];
    return step < 0 && typeof dim === 'number' && start < -dim ? [0, 0] : [start, end];
  });
  return [
    ctx.int64s(bounds.map(([start]) => toI64(start))),
    ctx.int64s(bounds.map(([, end]) => toI64(end))),
    ctx.int64s(specs.map((s) => normalizeAxis(s.axis, shape.length, 'slice'))),
    ctx.int64s(ranges.map((r) => r.step)),
  ];
}

/** The shape of `specs` taken from `shape`, checking the specs. */
function slicedShape(shape: Shape, specs: readonly SliceSpec[]): Dim[] {
  const out = [...shape];
  const seen = new Set<number>();
  for (const s of specs) {
    const ax = normalizeAxis(s.axis, shape.length, `input ${formatShape(shape)}`);
    if (seen.has(ax)) fail(`axis ${s.axis} is sliced twice`, 'ATTR');
    seen.add(ax);
    const { start, end, step } = sliceRange(s);
    if (!Number.isInteger(step) || step === 0) fail(`step must be a non-zero integer, got ${step}`, 'ATTR');
    if (!Number.isInteger(start) || !(Number.isInteger(end) || Math.abs(end) === Infinity)) {
      fail(`start and end must be integers, got ${start} and ${end}`, 'ATTR');
    }
    out[ax] = sliceLength(shape[ax], s);
  }
  return out;
}

export const SliceOp = defineOp<{ specs: readonly SliceSpec[] }>({
  name: 'slice',
  infer([x], { specs }) {
    return [{ dtype: x.dtype, shape: slicedShape(x.shape, specs) }];
  },
  lower(ctx, node, [out]) {
    const x = node.inputs[0];
    ctx.emit('Slice', [ctx.name(x), ...onnxSliceInputs(ctx, x.shape, node.attrs.specs)], [out]);
  },
  vjp: ({ inputs: [x], attrs: { specs } }, [g]) => [unslice(g as Tensor, specs, x.shape)],
});

/** Python-style slices along one or more axes. */
export function slice(x: Tensor, specs: SliceSpec | readonly SliceSpec[]): Tensor {
  return apply(SliceOp, [x], { specs: Array.isArray(specs) ? specs : [specs as SliceSpec] })[0];
}

// ---------------------------------------------------------------- unslice

/**
 * The adjoint of slice: zeros of `shape` with `y` at the positions `slice(·, specs)` takes, so that
 * slice(unslice(y, specs, shape), specs) is y (torch.slice_scatter into zeros). Slice's VJP.
 */
export const UnsliceOp = defineOp<{ specs: readonly SliceSpec[]; shape: readonly Dim[] }>({
  name: 'unslice',
  infer([y], { specs, shape }) {
    const target = shape.map((d) => normalizeDim(d));
    const expected = slicedShape(target, specs);
    // A sliced named dim has a length known only at run time ('?'), so it matches any.
    const ok =
      y.shape.length === expected.length &&
      expected.every((d, i) => d === UNKNOWN_DIM || dimEquals(d, y.shape[i]));
    if (!ok) {
      fail(
        `${formatShape(y.shape)} is not what slicing ${formatShape(target)} gives, ${formatShape(expected)}`,
        'SHAPE',
      );
    }
    return [{ dtype: y.dtype, shape: target }];
  },
  lower(ctx, node, [out]) {
    const y = node.inputs[0];
    const target = node.outputs[0].shape;
    const moves = node.attrs.specs.filter((s) => !isWholeAxis(s));
    if (moves.length === 0) {
      ctx.emit('Identity', [ctx.name(y)], [out]);
      return;
    }
    // One axis at a time: each step puts the values into zeros along one more axis.
    let current = ctx.name(y);
    const shape = [...y.shape];
    moves.forEach((s, k) => {
      const axis = normalizeAxis(s.axis, shape.length, 'unslice');
      const dim = target[axis];
      const into = k === moves.length - 1 ? out : ctx.fresh('unslice');
      shape[axis] = dim;
      if (typeof dim === 'number') {
        const positions = slicePositions(dim, s);
        if (sliceRange(s).step === 1 || positions.length <= 1) {
          // Contiguous: zeros before and after.
          const first = positions[0] ?? 0;
          const pads = new Array<number>(2 * shape.length).fill(0);
          pads[axis] = first;
          pads[shape.length + axis] = dim - first - positions.length;
          ctx.emit('Pad', [current, ctx.int64s(pads), ctx.scalar(0, y.dtype)], [into], {
            mode: attr.string('constant'),
          });
        } else {
          emitScatterAdd(ctx, {
            base: undefined,
            baseShape: shape,
            dtype: y.dtype,
            axis,
            indices: ctx.int64s(positions),
            indicesRank: 1,
            updates: current,
            out: into,
          });
        }
      } else {
        // A named dim: the positions are the slice of 0..dim-1 that the forward Slice takes.
        const count = ctx.fresh('count');
        ctx.emit('Squeeze', [ctx.shapeOf([dim]), ctx.int64s([0])], [count]);
        const all = ctx.fresh('positions');
        ctx.emit('Range', [ctx.scalar(0, 'int64'), count, ctx.scalar(1, 'int64')], [all]);
        const positions = ctx.fresh('positions');
        ctx.emit('Slice', [all, ...onnxSliceInputs(ctx, [dim], [{ ...s, axis: 0 }])], [positions]);
        emitScatterAdd(ctx, {
          base: undefined,
          baseShape: shape,
          dtype: y.dtype,
          axis,
          indices: positions,
          indicesRank: 1,
          updates: current,
          out: into,
        });
      }
      current = into;
    });
  },
  vjp: ({ inputs: [y], attrs: { specs } }, [g]) => [withShapeOf(slice(g as Tensor, specs), y)],
});

/** Zeros of `shape` with `y` where `slice(·, specs)` takes its values: the adjoint of slice. */
export function unslice(y: Tensor, specs: SliceSpec | readonly SliceSpec[], shape: readonly Dim[]): Tensor {
  return apply(UnsliceOp, [y], { specs: Array.isArray(specs) ? specs : [specs as SliceSpec], shape })[0];
}

// ---------------------------------------------------------------- gather

export const GatherOp = defineOp<{ axis: number }>({
  name: 'gather',
  infer([x, indices], { axis }) {
    if (indices.dtype !== 'int64' && indices.dtype !== 'int32') {
      fail(`indices must be int64 or int32, got ${indices.dtype}`, 'DTYPE');
    }
    const ax = normalizeAxis(axis, x.shape.length, `input ${formatShape(x.shape)}`);
    return [{ dtype: x.dtype, shape: [...x.shape.slice(0, ax), ...indices.shape, ...x.shape.slice(ax + 1)] }];
  },
  lower(ctx, node, [out]) {
    const axis = normalizeAxis(node.attrs.axis, node.inputs[0].shape.length, 'gather');
    ctx.emit('Gather', [ctx.name(node.inputs[0]), ctx.name(node.inputs[1])], [out], { axis: attr.int(axis) });
  },
  // An entry taken twice gets both cotangents: the scatter adds.
  vjp: ({ inputs: [x, indices], attrs: { axis } }, [g]) => [
    scatterAdd(zerosOf(x), indices, g as Tensor, axis),
    undefined,
  ],
});

/** Take entries of `x` along `axis` at `indices` (negative indices count from the end). */
export function gather(x: Tensor, indices: Tensor, axis = 0): Tensor {
  return apply(GatherOp, [x, indices], { axis })[0];
}

// ---------------------------------------------------------------- scatterAdd

/**
 * The adjoint of gather: `base` plus `updates` added at `indices` along `axis`, where `updates` has
 * the shape gather(base, indices, axis) has. Entries named twice get both updates.
 */
export const ScatterAddOp = defineOp<{ axis: number }>({
  name: 'scatterAdd',
  infer([base, indices, updates], { axis }) {
    if (indices.dtype !== 'int64' && indices.dtype !== 'int32') {
      fail(`indices must be int64 or int32, got ${indices.dtype}`, 'DTYPE');
    }
    if (updates.dtype !== base.dtype) fail(`dtypes differ (${base.dtype} vs ${updates.dtype})`, 'DTYPE');
    const ax = normalizeAxis(axis, base.shape.length, `base ${formatShape(base.shape)}`);
    const expected = [...base.shape.slice(0, ax), ...indices.shape, ...base.shape.slice(ax + 1)];
    if (!sameShape(updates.shape, expected)) {
      fail(
        `updates ${formatShape(updates.shape)} must have the shape gather(base, indices, ${axis}) has, ${formatShape(expected)}`,
        'SHAPE',
      );
    }
    return [{ dtype: base.dtype, shape: base.shape }];
  },
  lower(ctx, node, [out]) {
    const [base, indices, updates] = node.inputs;
    const axis = normalizeAxis(node.attrs.axis, base.rank, 'scatterAdd');
    let index = ctx.name(indices);
    if (indices.dtype === 'int32') {
      index = ctx.fresh('indices');
      ctx.emit('Cast', [ctx.name(indices)], [index], { to: attr.int(ONNX_DTYPE_CODE.int64) });
    }
    // Negative indices count from the end, as in Gather; ScatterND takes them only in range.
    const dim = ctx.fresh('dim');
    ctx.emit('Squeeze', [ctx.shapeOf([base.shape[axis]]), ctx.int64s([0])], [dim]);
    const negative = ctx.fresh('negative');
    ctx.emit('Less', [index, ctx.scalar(0, 'int64')], [negative]);
    const wrapped = ctx.fresh('wrapped');
    ctx.emit('Add', [index, dim], [wrapped]);
    const inRange = ctx.fresh('indices');
    ctx.emit('Where', [negative, wrapped, index], [inRange]);
    emitScatterAdd(ctx, {
      base: ctx.name(base),
      baseShape: base.shape,
      dtype: base.dtype,
      axis,
      indices: inRange,
      indicesRank: indices.rank,
      updates: ctx.name(updates),
      out,
    });
  },
  vjp: ({ inputs: [, indices], attrs: { axis }, needsGrad }, [g]) => [
    needsGrad[0] ? g : undefined,
    undefined,
    needsGrad[2] ? gather(g as Tensor, indices, axis) : undefined,
  ],
});

/** `base` plus `updates` added at `indices` (int64 or int32, negative from the end) along `axis`. */
export function scatterAdd(base: Tensor, indices: Tensor, updates: Tensor, axis = 0): Tensor {
  return apply(ScatterAddOp, [base, indices, updates], { axis })[0];
}

/**
 * Emit gather's adjoint with ONNX ScatterND (reduction=add, opset 16), which scatters along the
 * leading axis: `axis` is moved to the front of base, and the index dims to the front of updates.
 * `indices` must be int64 and in range.
 */
function emitScatterAdd(
  ctx: LowerContext,
  v: {
    /** undefined: zeros. */
    base: string | undefined;
    baseShape: Shape;
    dtype: DType;
    axis: number;
    indices: string;
    indicesRank: number;
    updates: string;
    out: string;
  },
): void {
  const rank = v.baseShape.length;
  const q = v.indicesRank;
  // ORT's CPU ScatterND adds no float16 (nor bfloat16): accumulate in float32, which is also
  // what many repeated indices need.
  const half = v.dtype === 'float16' || v.dtype === 'bfloat16';
  const cast = (name: string, to: DType, into = ctx.fresh('cast')): string => {
    ctx.emit('Cast', [name], [into], { to: attr.int(ONNX_DTYPE_CODE[to]) });
    return into;
  };
  const sumType = half ? 'float32' : v.dtype;
  let base: string;
  if (v.base === undefined) {
    base = ctx.fresh('zeros');
    ctx.emit('Expand', [ctx.scalar(0, sumType), ctx.shapeOf(v.baseShape)], [base]);
  } else base = half ? cast(v.base, 'float32') : v.base;
  let updates = half ? cast(v.updates, 'float32') : v.updates;
  const result = half ? ctx.fresh('scattered') : v.out;

  const keyed = ctx.fresh('indices');
  ctx.emit('Unsqueeze', [v.indices, ctx.int64s([q])], [keyed]);
  const reduction = { reduction: attr.string('add') };
  if (v.axis === 0) {
    ctx.emit('ScatterND', [base, keyed, updates], [result], reduction);
  } else {
    const range = (from: number, to: number): number[] =>
      Array.from({ length: to - from }, (_, i) => from + i);
    const basePerm = [v.axis, ...range(0, v.axis), ...range(v.axis + 1, rank)];
    const updatesPerm = [
      ...range(v.axis, v.axis + q),
      ...range(0, v.axis),
      ...range(v.axis + q, rank - 1 + q),
    ];
    const movedBase = ctx.fresh('base');
    ctx.emit('Transpose', [base], [movedBase], { perm: attr.ints(basePerm) });
    base = movedBase;
    const movedUpdates = ctx.fresh('updates');
    ctx.emit('Transpose', [updates], [movedUpdates], { perm: attr.ints(updatesPerm) });
    updates = movedUpdates;
    const scattered = ctx.fresh('scattered');
    ctx.emit('ScatterND', [base, keyed, updates], [scattered], reduction);
    ctx.emit('Transpose', [scattered], [result], { perm: attr.ints(inversePermutation(basePerm)) });
  }
  if (half) cast(result, v.dtype, v.out);
}

// ---------------------------------------------------------------- expand

export const ExpandOp = defineOp<{ shape: readonly Dim[] }>({
  name: 'expand',
  infer([x], { shape }) {
    const target = shape.map((d) => normalizeDim(d));
    const out = broadcastShapes(x.shape, target);
    if (!out) fail(`cannot expand ${formatShape(x.shape)} to ${formatShape(shape)}`, 'SHAPE');
    return [{ dtype: x.dtype, shape: out }];
  },
  lower(ctx, node, [out]) {
    ctx.emit('Expand', [ctx.name(node.inputs[0]), ctx.shapeOf(node.attrs.shape)], [out]);
  },
  vjp: ({ inputs: [x] }, [g]) => [sumToShape(g as Tensor, x.shape)],
});

/** Broadcast `x` to `shape` (numpy rules). */
export function expand(x: Tensor, shape: readonly Dim[]): Tensor {
  return apply(ExpandOp, [x], { shape })[0];
}

// ---------------------------------------------------------------- pad

export type PadMode = 'constant' | 'reflect' | 'edge';

export const PadOp = defineOp<{ pads: readonly (readonly [number, number])[]; mode: PadMode; value: number }>(
  {
    name: 'pad',
    infer([x], { pads, mode }) {
      if (pads.length !== x.shape.length) {
        fail(
          `pads has ${pads.length} [before, after] pairs, expected one per axis of ${formatShape(x.shape)}`,
          'ATTR',
        );
      }
      if (!['constant', 'reflect', 'edge'].includes(mode)) fail(`unknown mode "${mode}"`, 'ATTR');
      const shape = x.shape.map((d, i) => {
        const [b, a] = pads[i];
        if (!Number.isInteger(b) || !Number.isInteger(a)) fail(`pads must be integers`, 'ATTR');
        if (b === 0 && a === 0) return d;
        if (typeof d !== 'number') return UNKNOWN_DIM;
        if (mode === 'reflect' && (b >= d || a >= d))
          fail(`reflect padding ${b},${a} must be smaller than dim ${d}`, 'ATTR');
        const r = d + b + a;
        if (r < 0) fail(`padding makes axis ${i} negative`, 'ATTR');
        return r;
      });
      return [{ dtype: x.dtype, shape }];
    },
    lower(ctx, node, [out]) {
      const x = node.inputs[0];
      const { pads, mode, value } = node.attrs;
      const inputs = [ctx.name(x), ctx.int64s([...pads.map((p) => p[0]), ...pads.map((p) => p[1])])];
      if (mode === 'constant') inputs.push(ctx.scalar(value, x.dtype));
      ctx.emit('Pad', inputs, [out], { mode: attr.string(mode) });
    },
    vjp({ inputs: [x], attrs: { pads, mode } }, [g]) {
      if (mode === 'constant') {
        // Constant padding and cropping are adjoint: crop what was padded, pad zeros where it cropped.
        const unpadded = pad(
          g as Tensor,
          pads.map(([before, after]): [number, number] => [-before, -after]),
        );
        return [withShapeOf(unpadded, x)];
      }
      return [foldPadding(g as Tensor, x, pads, mode)];
    },
  },
);

/**
 * The VJP of reflect and edge padding: the cotangent of each padded entry is added to the entry
 * it copies. One axis at a time (ONNX pads the axes independently), on static dims.
 */
function foldPadding(
  g: Tensor,
  x: Tensor,
  pads: readonly (readonly [number, number])[],
  mode: 'reflect' | 'edge',
): Tensor {
  let folded = g;
  pads.forEach(([before, after], axis) => {
    if (before === 0 && after === 0) return;
    const n = x.shape[axis];
    if (typeof n !== 'number' || before < 0 || after < 0) {
      fail(
        `${site(g, 'pad')}: no gradient for ${mode} padding by [${before}, ${after}] on axis ${axis} of ${formatShape(x.shape)}: ` +
          `it needs a static dim and no cropping; crop with slice() and pad a static axis instead`,
        'NO_VJP',
      );
    }
    const take = (start: number, end: number): Tensor => slice(folded, { axis, start, end });
    const reversed = (t: Tensor): Tensor => slice(t, { axis, step: -1 });
    const place = (t: Tensor, at: number): Tensor => {
      const length = t.shape[axis] as number;
      return pad(
        t,
        x.shape.map((_, i) => (i === axis ? [at, n - at - length] : [0, 0])),
      );
    };
    let inner = take(before, before + n);
    if (before > 0) {
      // Entry j < before copies x[before - j] (reflect) or x[0] (edge).
      const left = take(0, before);
      inner = add(inner, mode === 'edge' ? place(sum(left, axis, true), 0) : place(reversed(left), 1));
    }
    if (after > 0) {
      // Entry before + n + j copies x[n - 2 - j] (reflect) or x[n - 1] (edge).
      const right = take(before + n, before + n + after);
      inner = add(
        inner,
        mode === 'edge' ? place(sum(right, axis, true), n - 1) : place(reversed(right), n - 1 - after),
      );
    }
    folded = inner;
  });
  return folded;
}

/** Pad each axis by [before, after] (negative values crop). */
export function pad(
  x: Tensor,
  pads: readonly (readonly [number, number])[],
  options: { mode?: PadMode; value?: number } = {},
): Tensor {
  return apply(PadOp, [x], { pads, mode: options.mode ?? 'constant', value: options.value ?? 0 })[0];
}

// ---------------------------------------------------------------- unsqueeze / squeeze

export const UnsqueezeOp = defineOp<{ axes: readonly number[] }>({
  name: 'unsqueeze',
  infer([x], { axes }) {
    const rank = x.shape.length + axes.length;
    const norm = axes.map((a) =>
      normalizeAxis(a, rank, `unsqueezing ${formatShape(x.shape)} to rank ${rank}`),
    );
    if (new Set(norm).size !== norm.length) fail(`repeated axis in [${axes.join(', ')}]`, 'ATTR');
    const shape: Dim[] = [];
    let k = 0;
    for (let i = 0; i < rank; i++) shape.push(norm.includes(i) ? 1 : x.shape[k++]);
    return [{ dtype: x.dtype, shape }];
  },
  lower(ctx, node, [out]) {
    const rank = node.outputs[0].shape.length;
    const axes = node.attrs.axes.map((a) => normalizeAxis(a, rank, 'unsqueeze'));
    ctx.emit('Unsqueeze', [ctx.name(node.inputs[0]), ctx.int64s(axes)], [out]);
  },
  vjp: ({ outputs: [y], attrs: { axes } }, [g]) => [
    squeeze(
      g as Tensor,
      axes.map((a) => normalizeAxis(a, y.rank, 'unsqueeze')),
    ),
  ],
});

export function unsqueeze(x: Tensor, axes: number | readonly number[]): Tensor {
  return apply(UnsqueezeOp, [x], { axes: typeof axes === 'number' ? [axes] : axes })[0];
}

export const SqueezeOp = defineOp<{ axes: readonly number[] }>({
  name: 'squeeze',
  infer([x], { axes }) {
    const norm = axes.map((a) => normalizeAxis(a, x.shape.length, `input ${formatShape(x.shape)}`));
    for (const a of norm) {
      if (x.shape[a] !== 1) fail(`axis ${a} of ${formatShape(x.shape)} is not 1`, 'SHAPE');
    }
    return [{ dtype: x.dtype, shape: x.shape.filter((_, i) => !norm.includes(i)) }];
  },
  lower(ctx, node, [out]) {
    const axes = node.attrs.axes.map((a) => normalizeAxis(a, node.inputs[0].shape.length, 'squeeze'));
    // ONNX Squeeze with an empty axes list removes every unit dim; here it removes none.
    if (axes.length === 0) ctx.emit('Identity', [ctx.name(node.inputs[0])], [out]);
    else ctx.emit('Squeeze', [ctx.name(node.inputs[0]), ctx.int64s(axes)], [out]);
  },
  vjp({ inputs: [x], attrs: { axes } }, [g]) {
    const removed = axes.map((a) => normalizeAxis(a, x.rank, 'squeeze'));
    return [removed.length === 0 ? g : unsqueeze(g as Tensor, removed)];
  },
});

export function squeeze(x: Tensor, axes: number | readonly number[]): Tensor {
  return apply(SqueezeOp, [x], { axes: typeof axes === 'number' ? [axes] : axes })[0];
}

export type { Shape };
