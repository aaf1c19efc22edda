import type { Tensor, TensorType } from '../graph.js';
import { UNKNOWN_DIM } from '../graph.js';
import { attr } from '../onnx/model.js';
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

// ---------------------------------------------------------------- reshape

export const ReshapeOp = defineOp<{ shape: readonly Dim[] }>({
  name: 'reshape',
  infer([x], { shape }) {
    const inferIndex = shape.indexOf(-1);
    if (shape.filter((d) => d === -1).length > 1) fail(`at most one -1 in ${formatShape(shape)}`, 'SHAPE');
    const target = shape.map((d) => (d === -1 ? 1 : normalizeDim(d)));
    const total = numel(x.shape);
    if (inferIndex >= 0) {
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
});

/** Reshape to `shape` (numbers, named dims, or one -1 to infer). */
export function reshape(x: Tensor, shape: readonly Dim[]): Tensor {
  return apply(ReshapeOp, [x], { shape })[0];
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
});

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
});

export function concat(tensors: readonly Tensor[], axis: number): Tensor {
  if (tensors.length === 1) return tensors[0];
  return apply(ConcatOp, tensors, { axis })[0];
}

// ---------------------------------------------------------------- split

export const SplitOp = defineOp<{ axis: number; sizes?: readonly number[]; parts?: number }>({
  name: 'split',
  infer([x], { axis, sizes, parts }) {
    const ax = normalizeAxis(axis, x.shape.length, `input ${formatShape(x.shape)}`);
    const d = x.shape[ax];
    const out = (dim: Dim): TensorType => ({
      dtype: x.dtype,
      shape: x.shape.map((s, i) => (i === ax ? dim : s)),
    });
    if (sizes) {
      if (sizes.some((s) => !Number.isInteger(s) || s < 0))
        fail(`sizes [${sizes.join(', ')}] must be ≥ 0`, 'ATTR');
      const total = sizes.reduce((a, b) => a + b, 0);
      if (typeof d === 'number' && total !== d) {
        fail(
          `sizes [${sizes.join(', ')}] sum to ${total}, but axis ${ax} of ${formatShape(x.shape)} is ${d}`,
          'SHAPE',
        );
      }
      return sizes.map((s) => out(s));
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
      ctx.emit('Split', [ctx.name(x), ctx.int64s(node.attrs.sizes)], out, { axis: attr.int(axis) });
    } else {
      ctx.emit('Split', [ctx.name(x)], out, { axis: attr.int(axis), num_outputs: attr.int(out.length) });
    }
  },
});

/** Split along `axis` into pieces of the given sizes, or into `n` equal pieces. */
export function split(x: Tensor, sizesOrParts: readonly number[] | number, axis: number): Tensor[] {
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

function sliceLength(dim: Dim, start: number, end: number, step: number): Dim {
  if (typeof dim === 'number') {
    // Python slicing semantics, as ONNX Slice clamps.
    const clamp = (v: number, lo: number, hi: number): number => Math.min(Math.max(v, lo), hi);
    if (step > 0) {
      const s = clamp(start < 0 ? start + dim : start, 0, dim);
      const e = clamp(end < 0 ? end + dim : end, 0, dim);
      return Math.max(0, Math.ceil((e - s) / step));
    }
    const s = clamp(start < 0 ? start + dim : start, -1, dim - 1);
    const e = clamp(end < 0 ? end + dim : end, -1, dim - 1);
    return Math.max(0, Math.ceil((s - e) / -step));
  }
  if (step === 1 && start === 0 && end === Infinity) return dim;
  // Otherwise the length depends on the named dim's value (ONNX clamps to it): leave it to the run.
  return UNKNOWN_DIM;
}

const INT64_MAX = 9223372036854775807n;
const INT64_MIN = -9223372036854775808n;

export const SliceOp = defineOp<{ specs: readonly SliceSpec[] }>({
  name: 'slice',
  infer([x], { specs }) {
    const shape = [...x.shape];
    const seen = new Set<number>();
    for (const s of specs) {
      const ax = normalizeAxis(s.axis, x.shape.length, `input ${formatShape(x.shape)}`);
      if (seen.has(ax)) fail(`axis ${s.axis} is sliced twice`, 'ATTR');
      seen.add(ax);
      const step = s.step ?? 1;
      if (!Number.isInteger(step) || step === 0) fail(`step must be a non-zero integer, got ${step}`, 'ATTR');
      const start = s.start ?? (step > 0 ? 0 : -1);
      const end = s.end ?? (step > 0 ? Infinity : -Infinity);
      if (!Number.isInteger(start) || !(Number.isInteger(end) || Math.abs(end) === Infinity)) {
        fail(`start and end must be integers, got ${start} and ${end}`, 'ATTR');
      }
      shape[ax] = sliceLength(x.shape[ax], start, end, step);
    }
    return [{ dtype: x.dtype, shape }];
  },
  lower(ctx, node, [out]) {
    const x = node.inputs[0];
    const toI64 = (v: number): bigint =>
      v === Infinity ? INT64_MAX : v === -Infinity ? INT64_MIN : BigInt(v);
    const specs = node.attrs.specs;
    const steps = specs.map((s) => s.step ?? 1);
    const bounds = specs.map((s, i): [number, number] => {
      const start = s.start ?? (steps[i] > 0 ? 0 : -1);
      const end = s.end ?? (steps[i] > 0 ? Infinity : -Infinity);
      // Stepping back from before the first element: Python takes nothing, while ONNX clamps the
      // start to 0 and takes element 0; ask ONNX for the empty range [0, 0) instead.
      const dim = x.shape[normalizeAxis(s.axis, x.shape.length, 'slice')];
      return steps[i] < 0 && typeof dim === 'number' && start < -dim ? [0, 0] : [start, end];
    });
    ctx.emit(
      'Slice',
      [
        ctx.name(x),
        ctx.int64s(bounds.map(([start]) => toI64(start))),
        ctx.int64s(bounds.map(([, end]) => toI64(end))),
        ctx.int64s(specs.map((s) => normalizeAxis(s.axis, x.shape.length, 'slice'))),
        ctx.int64s(steps),
      ],
      [out],
    );
  },
});

/** Python-style slices along one or more axes. */
export function slice(x: Tensor, specs: SliceSpec | readonly SliceSpec[]): Tensor {
  return apply(SliceOp, [x], { specs: Array.isArray(specs) ? specs : [specs as SliceSpec] })[0];
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
});

/** Take entries of `x` along `axis` at `indices` (negative indices count from the end). */
export function gather(x: Tensor, indices: Tensor, axis = 0): Tensor {
  return apply(GatherOp, [x, indices], { axis })[0];
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
  },
);

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
});

export function squeeze(x: Tensor, axes: number | readonly number[]): Tensor {
  return apply(SqueezeOp, [x], { axes: typeof axes === 'number' ? [axes] : axes })[0];
}

export type { Shape };
