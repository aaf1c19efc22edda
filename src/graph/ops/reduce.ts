import type { Tensor } from '../graph.js';
import { attr } from '../onnx/model.js';
import type { OpDef } from '../op.js';
import { apply, defineOp, fail } from '../op.js';
import type { Dim } from '../shape.js';
import { formatShape, normalizeAxis } from '../shape.js';

export interface ReduceAttrs {
  axes: readonly number[];
  keepDims: boolean;
}

function reduceOp(name: string, onnxOp: string): OpDef<ReduceAttrs> {
  return defineOp<ReduceAttrs>({
    name,
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

export const ReduceSumOp = reduceOp('sum', 'ReduceSum');
export const ReduceMeanOp = reduceOp('mean', 'ReduceMean');
export const ReduceMaxOp = reduceOp('max', 'ReduceMax');

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
