import type { Tensor } from '../graph.js';
import { attr } from '../onnx/model.js';
import { apply, defineOp, fail } from '../op.js';
import { dimEquals, formatShape } from '../shape.js';

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
