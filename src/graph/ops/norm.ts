import type { Tensor } from '../graph.js';
import { attr } from '../onnx/model.js';
import { apply, defineOp, expectFloat, fail } from '../op.js';
import { dimEquals, formatShape, isStaticShape, normalizeAxis } from '../shape.js';
import { add, mul, rsqrt, sub } from './elementwise.js';
import { reshape } from './movement.js';
import { mean, sum } from './reduce.js';

// The VJPs below are composed from standard ops: ORT's npm builds have no SoftmaxGrad or
// LayerNormalizationGrad kernels (notes/onnxruntime.md §8).

/** Softmax backward: dx = y ⊙ (dy − Σ dy ⊙ y) along `axis`. */
function softmaxBackward(y: Tensor, dy: Tensor, axis: number): Tensor {
  return mul(y, sub(dy, sum(mul(dy, y), axis, true)));
}

const range = (from: number, to: number): number[] => Array.from({ length: to - from }, (_, i) => from + i);

/** x̂ = (x − mean) · rstd over `axes`, with rstd = 1/√(var + eps) kept for the backward pass. */
function standardize(x: Tensor, axes: readonly number[], eps: number): { normed: Tensor; rstd: Tensor } {
  const centered = sub(x, mean(x, axes, true));
  const rstd = rsqrt(add(mean(mul(centered, centered), axes, true), eps));
  return { normed: mul(centered, rstd), rstd };
}

/** Backward of x̂ = standardize(x): dx = rstd · (dx̂ − mean(dx̂) − x̂ · mean(dx̂ ⊙ x̂)) over `axes`. */
function standardizeBackward(normed: Tensor, rstd: Tensor, dNormed: Tensor, axes: readonly number[]): Tensor {
  const centered = sub(dNormed, mean(dNormed, axes, true));
  return mul(rstd, sub(centered, mul(normed, mean(mul(dNormed, normed), axes, true))));
}

/** Sum over `axes`, or `t` itself when there are none. */
const sumOver = (t: Tensor, axes: readonly number[]): Tensor => (axes.length > 0 ? sum(t, axes) : t);

export const SoftmaxOp = defineOp<{ axis: number }>({
  name: 'softmax',
  infer([x], { axis }) {
    expectFloat(x, 'input');
    normalizeAxis(axis, x.shape.length, `input ${formatShape(x.shape)}`);
    return [{ dtype: x.dtype, shape: x.shape }];
  },
  lower(ctx, node, [out]) {
    const axis = normalizeAxis(node.attrs.axis, node.inputs[0].shape.length, 'softmax');
    ctx.emit('Softmax', [ctx.name(node.inputs[0])], [out], { axis: attr.int(axis) });
  },
  vjp({ outputs: [y], attrs: { axis } }, [dy]) {
    return [dy && softmaxBackward(y, dy, axis)];
  },
});

export function softmax(x: Tensor, axis = -1): Tensor {
  return apply(SoftmaxOp, [x], { axis })[0];
}

/**
 * Layer norm over the trailing axes from `axis` on; weight and bias are optional (diffusers'
 * `elementwise_affine=False`). Inputs: x, then weight and bias when `affine` says so.
 */
export const LayerNormOp = defineOp<{ axis: number; eps: number; hasWeight: boolean; hasBias: boolean }>({
  name: 'layerNorm',
  infer([x, ...params], { axis, eps, hasWeight, hasBias }) {
    expectFloat(x, 'input');
    const ax = normalizeAxis(axis, x.shape.length, `input ${formatShape(x.shape)}`);
    const normShape = x.shape.slice(ax);
    if (!(eps >= 0)) fail(`eps must be ≥ 0, got ${eps}`, 'ATTR');
    if (params.length !== Number(hasWeight) + Number(hasBias)) fail('internal: parameter count', 'ATTR');
    if (!hasWeight && !isStaticShape(normShape)) {
      fail(`normalized dims ${formatShape(normShape)} must be numbers when there is no weight`, 'SHAPE');
    }
    for (const p of params) {
      if (p.dtype !== x.dtype) fail(`weight/bias dtype ${p.dtype} differs from input ${x.dtype}`, 'DTYPE');
      const ok = p.shape.length === normShape.length && p.shape.every((d, i) => dimEquals(d, normShape[i]));
      if (!ok)
        fail(
          `weight/bias ${formatShape(p.shape)} must have the normalized shape ${formatShape(normShape)}`,
          'SHAPE',
        );
    }
    return [{ dtype: x.dtype, shape: x.shape }];
  },
  lower(ctx, node, [out]) {
    const [x, ...params] = node.inputs;
    const { axis, eps, hasWeight, hasBias } = node.attrs;
    const ax = normalizeAxis(axis, x.shape.length, 'layerNorm');
    let scale: string;
    if (hasWeight) scale = ctx.name(params[0]);
    else {
      // ONNX LayerNormalization requires a scale: a broadcast scalar 1 would not do, it must have the
      // normalized shape.
      const normShape = x.shape.slice(ax) as number[];
      const one = ctx.scalar(1, x.dtype);
      scale = ctx.fresh('ln_scale');
      ctx.emit('Expand', [one, ctx.int64s(normShape)], [scale]);
    }
    const inputs = [ctx.name(x), scale];
    if (hasBias) inputs.push(ctx.name(params[hasWeight ? 1 : 0]));
    ctx.emit('LayerNormalization', inputs, [out], { axis: attr.int(ax), epsilon: attr.float(eps) });
  },
  vjp({ inputs: [x, ...params], attrs: { axis, eps, hasWeight, hasBias }, needsGrad }, [dy]) {
    if (!dy) return [];
    const ax = normalizeAxis(axis, x.rank, 'layerNorm');
    const normalized = range(ax, x.rank);
    const leading = range(0, ax);
    const weight = hasWeight ? params[0] : undefined;
    const needsWeight = hasWeight && needsGrad[1];
    const needsBias = hasBias && needsGrad[hasWeight ? 2 : 1];
    const { normed, rstd } = needsGrad[0] || needsWeight ? standardize(x, normalized, eps) : {};
    const grads: (Tensor | undefined)[] = [
      normed && rstd && needsGrad[0]
        ? standardizeBackward(normed, rstd, weight ? mul(dy, weight) : dy, normalized)
        : undefined,
    ];
    if (hasWeight) grads.push(normed && needsWeight ? sumOver(mul(dy, normed), leading) : undefined);
    if (hasBias) grads.push(needsBias ? sumOver(dy, leading) : undefined);
    return grads;
  },
});

export function layerNorm(
  x: Tensor,
  weight: Tensor | undefined,
  bias: Tensor | undefined,
  options: { eps?: number; axis?: number } = {},
): Tensor {
  const params = [weight, bias].filter((t): t is Tensor => t !== undefined);
  return apply(LayerNormOp, [x, ...params], {
    axis: options.axis ?? -1,
    eps: options.eps ?? 1e-5,
    hasWeight: weight !== undefined,
    hasBias: bias !== undefined,
  })[0];
}

/** Group norm over [N, C, ...] with per-channel weight and bias (torch.nn.GroupNorm). */
export const GroupNormOp = defineOp<{ numGroups: number; eps: number }>({
  name: 'groupNorm',
  infer([x, weight, bias], { numGroups, eps }) {
    // float64: ORT has no double InstanceNormalization, which the lowering uses.
    expectFloat(x, 'input', { float64: false });
    if (x.shape.length < 3) fail(`expected [N, C, ...], got ${formatShape(x.shape)}`, 'SHAPE');
    const c = x.shape[1];
    if (!Number.isInteger(numGroups) || numGroups < 1) fail(`numGroups must be a positive integer`, 'ATTR');
    if (typeof c === 'number' && c % numGroups !== 0)
      fail(`${c} channels do not split into ${numGroups} groups`, 'SHAPE');
    if (!(eps >= 0)) fail(`eps must be ≥ 0, got ${eps}`, 'ATTR');
    for (const p of [weight, bias]) {
      if (p.shape.length !== 1 || !dimEquals(p.shape[0], c)) {
        fail(`weight/bias must be [${String(c)}], got ${formatShape(p.shape)}`, 'SHAPE');
      }
      if (p.dtype !== x.dtype) fail(`weight/bias dtype ${p.dtype} differs from input ${x.dtype}`, 'DTYPE');
    }
    return [{ dtype: x.dtype, shape: x.shape }];
  },
  lower(ctx, node, [out]) {
    // Not ONNX GroupNormalization: ORT expands that function with var = E[x²] − E[x]² in float32,
    // which loses the variance when a group's mean is large against its spread (max error 3e-3 at
    // mean/std ≈ 170, 0.4 at 1700). InstanceNormalization over [N, G, rest] is the same
    // standardization computed stably; the per-channel affine follows (as torch.onnx exports GroupNorm).
    const [x, weight, bias] = node.inputs;
    const { numGroups, eps } = node.attrs;
    const grouped = ctx.fresh('gn_grouped');
    ctx.emit('Reshape', [ctx.name(x), ctx.int64s([0, numGroups, -1])], [grouped]);
    const ones = ctx.fresh('gn_ones');
    const zeros = ctx.fresh('gn_zeros');
    ctx.emit('Expand', [ctx.scalar(1, x.dtype), ctx.int64s([numGroups])], [ones]);
    ctx.emit('Expand', [ctx.scalar(0, x.dtype), ctx.int64s([numGroups])], [zeros]);
    const standardized = ctx.fresh('gn_standardized');
    ctx.emit('InstanceNormalization', [grouped, ones, zeros], [standardized], { epsilon: attr.float(eps) });
    const xShape = ctx.fresh('gn_shape');
    ctx.emit('Shape', [ctx.name(x)], [xShape]);
    const ungrouped = ctx.fresh('gn_ungrouped');
    ctx.emit('Reshape', [standardized, xShape], [ungrouped]);
    const perChannel = [x.shape[1], ...x.shape.slice(2).map(() => 1)];
    const scaled = ctx.fresh('gn_scaled');
    ctx.emit('Mul', [ungrouped, ctx.reshape(ctx.name(weight), weight.shape, perChannel)], [scaled]);
    ctx.emit('Add', [scaled, ctx.reshape(ctx.name(bias), bias.shape, perChannel)], [out]);
  },
  vjp({ inputs: [x, weight], attrs: { numGroups, eps }, needsGrad }, [dy]) {
    if (!dy) return [];
    const notChannel = [0, ...range(2, x.rank)];
    const db = needsGrad[2] ? sum(dy, notChannel) : undefined;
    if (!needsGrad[0] && !needsGrad[1]) return [undefined, undefined, db];
    // Standardized per group over [N, G, C/G · spatial]; the affine is per channel.
    const grouped = (t: Tensor): Tensor => reshape(t, [x.shape[0], numGroups, -1]);
    const { normed, rstd } = standardize(grouped(x), [2], eps);
    const perChannel = reshape(weight, [x.shape[1], ...x.shape.slice(2).map(() => 1)]);
    const dx = needsGrad[0]
      ? reshape(standardizeBackward(normed, rstd, grouped(mul(dy, perChannel)), [2]), x.shape)
      : undefined;
    const dw = needsGrad[1] ? sum(mul(dy, reshape(normed, x.shape)), notChannel) : undefined;
    return [dx, dw, db];
  },
});

export function groupNorm(x: Tensor, numGroups: number, weight: Tensor, bias: Tensor, eps = 1e-5): Tensor {
  return apply(GroupNormOp, [x, weight, bias], { numGroups, eps })[0];
}
