import type { Tensor } from '../graph.js';
import { attr } from '../onnx/model.js';
import type { OpDef, Vjp } from '../op.js';
import { apply, defineOp, fail } from '../op.js';
import type { Dim, Shape } from '../shape.js';
import { dimEquals, formatShape, normalizeAxis } from '../shape.js';
import { asTensor, cast, div, equal, mul } from './elementwise.js';
import { expand, unsqueeze } from './movement.js';

export interface ReduceAttrs {
  axes: readonly number[];
  keepDims: boolean;
}

function reduceOp(name: string, onnxOp: string, vjp: Vjp<ReduceAttrs>): OpDef<ReduceAttrs> {
  return defineOp<ReduceAttrs>({
    name,
    vjp,
    infer([x], { axes, keepDims }) {
      if (x.dtype === 'bool') fail('cannot reduce a bool tensor', 'DTYPE');
      if (axes.length === 0) fail('axes must not be empty', 'ATTR');
      const norm = axes.map((a) => normalizeAxis(a, x.shape.length, `axes [${axes.join(', ')}]`));
      if (new Set(norm).size !== norm.length) fail(`repeated axis in [${axes.join(', ')}]`, 'ATTR');
      const shape: Dim[] = [];
      x.shape.forEach((d, i) => {
        if (!norm.includes(i)) shape.push(d);
        else if (keepDims) shape.push(1);
      });
      return [{ dtype: x.dtype, shape }];
    },
    lower(ctx, node, [out]) {
      const x = node.inputs[0];
      const axes = node.attrs.axes.map((a) => normalizeAxis(a, x.shape.length, name));
      ctx.emit(onnxOp, [ctx.name(x), ctx.int64s(axes)], [out], {
        keepdims: attr.int(node.attrs.keepDims ? 1 : 0),
      });
    },
  });
}

/** The reduced axes of a reduce node, normalised. */
function reducedAxes(x: Tensor, attrs: ReduceAttrs): number[] {
  return attrs.axes.map((a) => normalizeAxis(a, x.rank, 'reduce'));
}

/** A reduce's output (or its cotangent) with the reduced axes back as 1s, broadcast to x's shape. */
function spread(t: Tensor, x: Tensor, attrs: ReduceAttrs): Tensor {
  const kept = attrs.keepDims ? t : unsqueeze(t, reducedAxes(x, attrs));
  return expand(kept, x.shape);
}

/** How many elements each output of a reduce over `axes` of `x` summarises, as a scalar of x's dtype. */
function reducedCount(x: Tensor, axes: readonly number[]): Tensor | number {
  const dims = axes.map((a) => x.shape[a]);
  if (dims.every((d): d is number => typeof d === 'number')) return dims.reduce((a, b) => a * b, 1);
  // A named dim's value is known at run time only: count the ones of a tensor of the reduced dims.
  const reducedDims = x.shape.map((d, i) => (axes.includes(i) ? d : 1));
  return sum(
    expand(asTensor(1, x), reducedDims),
    reducedDims.map((_, i) => i),
  );
}

export const ReduceSumOp = reduceOp('sum', 'ReduceSum', ({ inputs: [x], attrs }, [g]) => [
  spread(g as Tensor, x, attrs),
]);

export const ReduceMeanOp = reduceOp('mean', 'ReduceMean', ({ inputs: [x], attrs }, [g]) => [
  div(spread(g as Tensor, x, attrs), reducedCount(x, reducedAxes(x, attrs))),
]);

// torch.amax's rule: the cotangent is shared equally among the elements that attain the maximum.
export const ReduceMaxOp = reduceOp('max', 'ReduceMax', ({ inputs: [x], outputs: [y], attrs }, [g]) => {
  const hits = cast(equal(x, spread(y, x, attrs)), x.dtype);
  return [div(mul(hits, spread(g as Tensor, x, attrs)), sum(hits, reducedAxes(x, attrs), true))];
});

const axesOf = (axes: number | readonly number[]): readonly number[] =>
  typeof axes === 'number' ? [axes] : axes;

export function sum(x: Tensor, axes: number | readonly number[], keepDims = false): Tensor {
  return apply(ReduceSumOp, [x], { axes: axesOf(axes), keepDims })[0];
}
export function mean(x: Tensor, axes: number | readonly number[], keepDims = false): Tensor {
  return apply(ReduceMeanOp, [x], { axes: axesOf(axes), keepDims })[0];
}
export function max(x: Tensor, axes: number | readonly number[], keepDims = false): Tensor {
  return apply(ReduceMaxOp, [x], { axes: axesOf(axes), keepDims })[0];
}

export interface CumsumAttrs {
  axis: number;
  exclusive: boolean;
  reverse: boolean;
}

export const CumsumOp = defineOp<CumsumAttrs>({
  name: 'cumsum',
  // x_i reaches y_j for j ≥ i (j > i when exclusive): the cotangent is the cumsum the other way.
  vjp: ({ attrs }, [g]) => [
    cumsum(g as Tensor, attrs.axis, { exclusive: attrs.exclusive, reverse: !attrs.reverse }),
  ],
  infer([x], { axis }) {
    if (x.dtype === 'bool') fail('cumsum of a bool tensor', 'DTYPE');
    normalizeAxis(axis, x.shape.length, `input ${formatShape(x.shape)}`);
    return [{ dtype: x.dtype, shape: x.shape }];
  },
  lower(ctx, node, [out]) {
    const x = node.inputs[0];
    const axis = normalizeAxis(node.attrs.axis, x.shape.length, 'cumsum');
    ctx.emit('CumSum', [ctx.name(x), ctx.int64s([axis])], [out], {
      exclusive: attr.int(node.attrs.exclusive ? 1 : 0),
      reverse: attr.int(node.attrs.reverse ? 1 : 0),
    });
  },
});

/** Cumulative sum along `axis`; `exclusive` leaves out the current element, `reverse` runs backwards. */
export function cumsum(
  x: Tensor,
  axis: number,
  options: { exclusive?: boolean; reverse?: boolean } = {},
): Tensor {
  return apply(CumsumOp, [x], {
    axis,
    exclusive: options.exclusive ?? false,
    reverse: options.reverse ?? false,
  })[0];
}

/**
 * Sums, keeping them as 1s, the axes of x whose dim in `shape` turns out to be 1 at run time: for a
 * named dim that was broadcast against a number (broadcastShapes assumes the number), which is
 * either that number or 1 when the graph runs.
 */
export const SumToRuntimeOnesOp = defineOp<{ shape: Shape; axes: readonly number[] }>({
  name: 'sumToRuntimeOnes',
  infer([x], { shape, axes }) {
    if (x.dtype === 'bool') fail('cannot sum a bool tensor', 'DTYPE');
    if (shape.length !== x.shape.length)
      fail(`rank of ${formatShape(shape)} differs from ${formatShape(x.shape)}`, 'SHAPE');
    for (const a of axes) normalizeAxis(a, x.shape.length, `axes [${axes.join(', ')}]`);
    return [{ dtype: x.dtype, shape }];
  },
  lower(ctx, node, [out]) {
    const { shape, axes } = node.attrs;
    const [dims, ones, hits, which, axesToSum] = ['dims', 'ones', 'hits', 'which', 'axes'].map((h) =>
      ctx.fresh(`sum_to_${h}`),
    );
    ctx.emit('Gather', [ctx.shapeOf(shape), ctx.int64s(axes)], [dims], { axis: attr.int(0) });
    ctx.emit('Equal', [dims, ctx.int64s([1])], [ones]);
    ctx.emit('NonZero', [ones], [hits]);
    ctx.emit('Reshape', [hits, ctx.int64s([-1])], [which]);
    ctx.emit('Gather', [ctx.int64s(axes), which], [axesToSum], { axis: attr.int(0) });
    ctx.emit('ReduceSum', [ctx.name(node.inputs[0]), axesToSum], [out], {
      keepdims: attr.int(1),
      noop_with_empty_axes: attr.int(1),
    });
  },
  vjp: ({ inputs: [x] }, [g]) => [expand(g as Tensor, x.shape)],
});

/**
 * Sum `x` down to `shape`, undoing numpy broadcasting: the cotangent of an operand that was
 * broadcast. Leading dims that `shape` lacks are summed away; a 1 in `shape` against another dim
 * is summed keeping the 1; equal dims (named dims equal by name) stay. A named dim against a
 * number may be 1 or that number at run time: it is summed when it is 1.
 */
export function sumToShape(x: Tensor, shape: Shape): Tensor {
  const lead = x.rank - shape.length;
  if (lead < 0) {
    const scope = x.graph.currentScope;
    fail(
      `${scope ? `${scope} (sumToShape)` : 'sumToShape'}: cannot sum ${formatShape(x.shape)} down to ${formatShape(shape)}, which has more dims`,
      'SHAPE',
    );
  }
  const axes: number[] = [];
  const runtime: number[] = [];
  shape.forEach((d, i) => {
    const have = x.shape[lead + i];
    if (dimEquals(have, d)) return;
    if (d === 1) axes.push(lead + i);
    else if (typeof d === 'string') runtime.push(i);
    else {
      const scope = x.graph.currentScope;
      fail(
        `${scope ? `${scope} (sumToShape)` : 'sumToShape'}: cannot sum ${formatShape(x.shape)} down to ${formatShape(shape)}: dim ${String(have)} does not broadcast from ${d}`,
        'SHAPE',
      );
    }
  });
  let y = x;
  if (axes.length > 0) y = sum(y, axes, true);
  if (lead > 0)
    y = sum(
      y,
      Array.from({ length: lead }, (_, i) => i),
    );
  if (runtime.length > 0) y = apply(SumToRuntimeOnesOp, [y], { shape, axes: runtime })[0];
  return y;
}
