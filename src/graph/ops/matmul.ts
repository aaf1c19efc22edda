import type { Tensor } from '../graph.js';
import { apply, defineOp, expectSameDType, fail } from '../op.js';
import type { Dim } from '../shape.js';
import { broadcastShapes, dimEquals, formatShape } from '../shape.js';

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
    ctx.emit('MatMul', [ctx.name(node.inputs[0]), ctx.name(node.inputs[1])], [out]);
  },
});

/** Matrix product with numpy broadcasting of batch dims. */
export function matmul(a: Tensor, b: Tensor): Tensor {
  return apply(MatMulOp, [a, b], {})[0];
}
