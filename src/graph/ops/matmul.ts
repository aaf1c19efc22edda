import type { Tensor } from '../graph.js';
import { attr } from '../onnx/model.js';
import { apply, defineOp, expectSameDType, fail } from '../op.js';
import type { Dim } from '../shape.js';
import { broadcastShapes, dimEquals, formatShape } from '../shape.js';
import { reshape, squeeze, transpose, unsqueeze } from './movement.js';
import { sumToShape } from './reduce.js';

export const MatMulOp = defineOp<Record<string, never>>({
  name: 'matmul',
  infer([a, b]) {
    expectSameDType(a, b, 'operands');
    if (a.dtype === 'bool') fail('matmul of bool tensors', 'DTYPE');
    if (a.shape.length === 0 || b.shape.length === 0) {
      fail(`matmul needs rank ≥ 1, got ${formatShape(a.shape)} @ ${formatShape(b.shape)}`, 'SHAPE');
    }
    // numpy semantics: a 1-D operand gets a unit dim that is removed from the result.
    const as = a.shape.length === 1 ? [1, a.shape[0]] : [...a.shape];
    const bs = b.shape.length === 1 ? [b.shape[0], 1] : [...b.shape];
    const k1 = as[as.length - 1];
    const k2 = bs[bs.length - 2];
    if (!dimEquals(k1, k2)) {
      fail(
        `inner dims differ: ${formatShape(a.shape)} @ ${formatShape(b.shape)} (${String(k1)} vs ${String(k2)})`,
        'SHAPE',
      );
    }
    const batch = broadcastShapes(as.slice(0, -2), bs.slice(0, -2));
    if (!batch)
      fail(`batch dims do not broadcast: ${formatShape(a.shape)} @ ${formatShape(b.shape)}`, 'SHAPE');
    const shape: Dim[] = [...batch];
    if (a.shape.length > 1) shape.push(as[as.length - 2]);
    if (b.shape.length > 1) shape.push(bs[bs.length - 1]);
    return [{ dtype: a.dtype, shape }];
  },
  lower(ctx, node, [out]) {
    const weight = ctx.transposedWeight(node.inputs[1]);
    if (weight !== undefined) {
      ctx.emit(
        'FusedMatMul',
        [ctx.name(node.inputs[0]), weight],
        [out],
        { transB: attr.int(1) },
        'com.microsoft',
      );
      return;
    }
    ctx.emit('MatMul', [ctx.name(node.inputs[0]), ctx.name(node.inputs[1])], [out]);
  },
  // dA = dY·Bᵀ, dB = Aᵀ·dY, with 1-D operands given their unit dim back and broadcast batch dims
  // summed. ORT fuses the transposes into FusedMatMul (notes §8).
  vjp: ({ inputs: [a, b], needsGrad }, [g]) => {
    const a2 = a.rank === 1 ? unsqueeze(a, 0) : a;
    const b2 = b.rank === 1 ? unsqueeze(b, 1) : b;
    let g2 = g as Tensor;
    if (a.rank === 1) g2 = unsqueeze(g2, g2.rank - (b.rank === 1 ? 0 : 1));
    if (b.rank === 1) g2 = unsqueeze(g2, g2.rank);
    const ga = needsGrad[0] ? sumToShape(matmul(g2, transposeLast(b2)), a2.shape) : undefined;
    const gb = needsGrad[1] ? weightGrad(a2, b2, g2) : undefined;
    return [ga && a.rank === 1 ? squeeze(ga, 0) : ga, gb && b.rank === 1 ? squeeze(gb, 1) : gb];
  },
});

function transposeLast(t: Tensor): Tensor {
  const perm = t.shape.map((_, i) => i);
  perm.splice(-2, 2, t.rank - 1, t.rank - 2);
  return transpose(t, perm);
}

/** Aᵀ·dY summed to B's shape; for a 2-D B (a Linear weight) as one matmul over the flattened batch. */
function weightGrad(a: Tensor, b: Tensor, g: Tensor): Tensor {
  if (b.rank === 2 && a.rank > 2) {
    const k = a.shape[a.rank - 1];
    const n = g.shape[g.rank - 1];
    return matmul(transposeLast(reshape(a, [-1, k])), reshape(g, [-1, n]));
  }
  return sumToShape(matmul(transposeLast(a), g), b.shape);
}

/** Matrix product with numpy broadcasting of batch dims. */
export function matmul(a: Tensor, b: Tensor): Tensor {
  return apply(MatMulOp, [a, b], {})[0];
}
