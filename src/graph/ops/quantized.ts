import type { Tensor } from '../graph.js';
import { attr } from '../onnx/model.js';
import { apply, defineOp, fail } from '../op.js';
import { dimEquals, formatShape } from '../shape.js';
import { pads4, windowOut, type Padding2d } from './conv.js';

/**
 * y = x·(s ⊙ Q)ᵀ + b: a Linear whose weight is stored as symmetric int8 Q [out, in] with one float
 * scale per output row, s [out]. The activation is quantized per tensor at run time (uint8, ORT's
 * DynamicQuantizeMatMul), so the product runs on the CPU's int8 units (VNNI, AMX). Inference only:
 * it has no VJP, and `grad()` through it is an error naming the module.
 */
export const Int8LinearOp = defineOp<Record<string, never>>({
  name: 'int8Linear',
  infer(inputs) {
    const [x, w, s, b] = inputs;
    if (x.dtype !== 'float32') fail(`input must be float32, got ${x.dtype}`, 'DTYPE');
    if (w.dtype !== 'int8') fail(`weight must be int8, got ${w.dtype}`, 'DTYPE');
    if (w.shape.length !== 2) fail(`weight must be [out, in], got ${formatShape(w.shape)}`, 'SHAPE');
    const [outDim, inDim] = w.shape;
    if (x.shape.length < 2 || !dimEquals(x.shape[x.shape.length - 1], inDim))
      fail(`expected input [*, ${String(inDim)}], got ${formatShape(x.shape)}`, 'SHAPE');
    if (s.dtype !== 'float32' || s.shape.length !== 1 || !dimEquals(s.shape[0], outDim))
      fail(`scale must be float32 [${String(outDim)}], got ${s.dtype} ${formatShape(s.shape)}`, 'SHAPE');
    if (b !== undefined && (b.dtype !== 'float32' || b.shape.length !== 1 || !dimEquals(b.shape[0], outDim)))
      fail(`bias must be float32 [${String(outDim)}], got ${b.dtype} ${formatShape(b.shape)}`, 'SHAPE');
    return [{ dtype: 'float32', shape: [...x.shape.slice(0, -1), outDim] }];
  },
  lower(ctx, node, [out]) {
    const [x, w, s, b] = node.inputs;
    // The kernel takes B as [in, out]; ORT folds the transpose of the constant weight at session
    // creation and then packs it for its int8 GEMM.
    const wt = ctx.fresh('int8_weight_t');
    ctx.emit('Transpose', [ctx.name(w)], [wt], { perm: attr.ints([1, 0]) });
    const inputs = [ctx.name(x), wt, ctx.name(s)];
    if (b !== undefined) inputs.push('', ctx.name(b));
    ctx.emit('DynamicQuantizeMatMul', inputs, [out], {}, 'com.microsoft');
  },
});

/** A Linear on an int8 weight [out, in] with per-output scales [out] (Int8LinearOp). */
export function int8Linear(x: Tensor, weight: Tensor, scale: Tensor, bias?: Tensor): Tensor {
  return apply(Int8LinearOp, bias ? [x, weight, scale, bias] : [x, weight, scale], {})[0];
}

export interface Int8Conv2dAttrs {
  /** [top, left, bottom, right], as Conv2dAttrs.pads. */
  pads: [number, number, number, number];
  hasBias: boolean;
}

/**
 * A 2-D convolution (stride 1, dilation 1, groups 1) on a symmetric int8 weight Q [Cout, Cin, kH, kW]
 * with one float scale per output channel, s [Cout]. ORT's ConvInteger takes no per-channel weight
 * scale and has no fast int8 path on CPU (measured: 0.2–1.1× fp32 Conv on SD UNet shapes, README
 * "int8"), so it lowers as kH·kW shifted matrix products instead: the padded input, channels last,
 * quantized once per tensor to uint8 (DynamicQuantizeLinear), then per kernel tap an int8 GEMM
 * (MatMulInteger, uint8 × int8, exact int32 sums) of the shifted window with that tap's [Cin, Cout]
 * weights, the taps summed in int32 and scaled once. Inference only: no VJP.
 */
export const Int8Conv2dOp = defineOp<Int8Conv2dAttrs>({
  name: 'int8Conv2d',
  infer(inputs, { pads, hasBias }) {
    const [x, w, s, b] = inputs;
    if (x.dtype !== 'float32') fail(`input must be float32, got ${x.dtype}`, 'DTYPE');
    if (x.shape.length !== 4) fail(`input must be [N, C, H, W], got ${formatShape(x.shape)}`, 'SHAPE');
    if (w.dtype !== 'int8') fail(`weight must be int8, got ${w.dtype}`, 'DTYPE');
    if (w.shape.length !== 4 || w.shape.some((d) => typeof d !== 'number'))
      fail(`weight must be a static [Cout, Cin, kH, kW], got ${formatShape(w.shape)}`, 'SHAPE');
    const [cout, cin, kh, kw] = w.shape as number[];
    if (!dimEquals(x.shape[1], cin))
      fail(
        `input ${formatShape(x.shape)} has ${String(x.shape[1])} channels, the weight expects ${cin}`,
        'SHAPE',
      );
    if (s.dtype !== 'float32' || s.shape.length !== 1 || !dimEquals(s.shape[0], cout))
      fail(`scale must be float32 [${cout}], got ${s.dtype} ${formatShape(s.shape)}`, 'SHAPE');
    if (hasBias && (b.dtype !== 'float32' || b.shape.length !== 1 || !dimEquals(b.shape[0], cout)))
      fail(`bias must be float32 [${cout}], got ${b.dtype} ${formatShape(b.shape)}`, 'SHAPE');
    if (pads.some((p) => !Number.isInteger(p) || p < 0))
      fail(`padding must be non-negative integers, got [${pads.join(', ')}]`, 'ATTR');
    const h = windowOut(x.shape[2], pads[0], pads[2], kh, 1, 1, false);
    const wd = windowOut(x.shape[3], pads[1], pads[3], kw, 1, 1, false);
    return [{ dtype: 'float32', shape: [x.shape[0], cout, h, wd] }];
  },
  lower(ctx, node, [out]) {
    const [x, w, s, b] = node.inputs;
    const [cout, cin, kh, kw] = w.shape as number[];
    const [top, left, bottom, right] = node.attrs.pads;
    // Channels last, padded with zeros (which quantize exactly to the zero point).
    const nhwc = ctx.fresh('int8conv_nhwc');
    ctx.emit('Transpose', [ctx.name(x)], [nhwc], { perm: attr.ints([0, 2, 3, 1]) });
    let padded = nhwc;
    if (top + left + bottom + right > 0) {
      padded = ctx.fresh('int8conv_padded');
      ctx.emit('Pad', [nhwc, ctx.int64s([0, top, left, 0, 0, bottom, right, 0])], [padded]);
    }
    const [xq, xs, xz] = [ctx.fresh('int8conv_xq'), ctx.fresh('int8conv_xs'), ctx.fresh('int8conv_xz')];
    ctx.emit('DynamicQuantizeLinear', [padded], [xq, xs, xz]);
    // The weight as taps [kH·kW, Cin, Cout]: constants, folded by ORT at session creation.
    const taps = ctx.fresh('int8conv_taps');
    const tapsT = ctx.fresh('int8conv_taps_t');
    ctx.emit('Transpose', [ctx.name(w)], [tapsT], { perm: attr.ints([2, 3, 1, 0]) });
    ctx.emit('Reshape', [tapsT, ctx.int64s([kh * kw, cin, cout])], [taps]);
    const weightZero = ctx.scalar(0, 'int8');
    // A window's end counted from the padded input's end, so symbolic H and W need no arithmetic.
    const end = (tap: number, kernel: number): bigint =>
      tap === kernel - 1 ? 2n ** 62n : BigInt(tap - (kernel - 1));
    let sum: string | undefined;
    for (let i = 0; i < kh; i++) {
      for (let j = 0; j < kw; j++) {
        let window = xq;
        if (kh > 1 || kw > 1) {
          window = ctx.fresh('int8conv_window');
          ctx.emit(
            'Slice',
            [xq, ctx.int64s([i, j]), ctx.int64s([end(i, kh), end(j, kw)]), ctx.int64s([1, 2])],
            [window],
          );
        }
        const tap = ctx.fresh('int8conv_tap');
        ctx.emit('Gather', [taps, ctx.scalar(i * kw + j, 'int64')], [tap], { axis: attr.int(0) });
        const product = ctx.fresh('int8conv_product');
        ctx.emit('MatMulInteger', [window, tap, xz, weightZero], [product]);
        if (sum === undefined) {
          sum = product;
        } else {
          const next = ctx.fresh('int8conv_sum');
          ctx.emit('Add', [sum, product], [next]);
          sum = next;
        }
      }
    }
    const sumF = ctx.fresh('int8conv_sum_f');
    ctx.emit('Cast', [sum as string], [sumF], { to: attr.int(1) });
    const scale = ctx.fresh('int8conv_scale');
    ctx.emit('Mul', [xs, ctx.name(s)], [scale]);
    let y = ctx.fresh('int8conv_y');
    ctx.emit('Mul', [sumF, scale], [y]);
    if (b !== undefined) {
      const biased = ctx.fresh('int8conv_biased');
      ctx.emit('Add', [y, ctx.name(b)], [biased]);
      y = biased;
    }
    ctx.emit('Transpose', [y], [out], { perm: attr.ints([0, 3, 1, 2]) });
  },
});

/**
 * A convolution on an int8 weight [Cout, Cin, kH, kW] with per-output-channel scales [Cout]
 * (Int8Conv2dOp): stride 1, dilation 1, groups 1, any zero padding.
 */
export function int8Conv2d(
  x: Tensor,
  weight: Tensor,
  scale: Tensor,
  bias?: Tensor,
  options: { padding?: Padding2d } = {},
): Tensor {
  const attrs: Int8Conv2dAttrs = { pads: pads4(options.padding ?? 0), hasBias: bias !== undefined };
  return apply(Int8Conv2dOp, bias ? [x, weight, scale, bias] : [x, weight, scale], attrs)[0];
}
