import type { Tensor } from '../graph.js';
import { attr } from '../onnx/model.js';
import { apply, defineOp, expectFloat, fail } from '../op.js';
import type { Dim } from '../shape.js';
import { broadcastShapes, dimEquals, formatShape } from '../shape.js';
import { add, mul, sub, where } from './elementwise.js';
import { matmul } from './matmul.js';
import { reshape, transpose } from './movement.js';
import { softmax } from './norm.js';
import { sum, sumToShape } from './reduce.js';

export interface AttentionAttrs {
  numHeads: number;
  /** Multiplies q·kᵀ; default 1/√headDim. */
  scale: number;
  hasMask: boolean;
}

/** Head dims of an attention input: [B, S, H·D] ('packed') or [B, H, S, D] ('heads'). */
function split(t: { shape: readonly Dim[] }, numHeads: number, what: string): { b: Dim; s: Dim; d: number } {
  if (t.shape.length === 3) {
    const hidden = t.shape[2];
    if (typeof hidden !== 'number' || hidden % numHeads !== 0) {
      fail(`${what} ${formatShape(t.shape)}: last dim must be a multiple of numHeads=${numHeads}`, 'SHAPE');
    }
    return { b: t.shape[0], s: t.shape[1], d: hidden / numHeads };
  }
  if (t.shape.length === 4) {
    const d = t.shape[3];
    if (!dimEquals(t.shape[1], numHeads) || typeof d !== 'number') {
      fail(`${what} ${formatShape(t.shape)}: expected [B, ${numHeads}, S, D] with a static D`, 'SHAPE');
    }
    return { b: t.shape[0], s: t.shape[2], d };
  }
  return fail(`${what} ${formatShape(t.shape)}: expected [B, S, H·D] or [B, H, S, D]`, 'SHAPE');
}

export const AttentionOp = defineOp<AttentionAttrs>({
  name: 'attention',
  infer([q, k, v, mask], { numHeads, scale, hasMask }) {
    for (const [t, n] of [
      [q, 'query'],
      [k, 'key'],
      [v, 'value'],
    ] as const) {
      expectFloat(t, n);
      if (t.dtype !== q.dtype) fail(`${n} dtype ${t.dtype} differs from query ${q.dtype}`, 'DTYPE');
    }
    if (!Number.isInteger(numHeads) || numHeads < 1)
      fail(`numHeads must be a positive integer, got ${numHeads}`, 'ATTR');
    if (!Number.isFinite(scale)) fail(`scale must be finite, got ${scale}`, 'ATTR');
    if (q.shape.length !== k.shape.length || q.shape.length !== v.shape.length) {
      fail(
        `query ${formatShape(q.shape)}, key ${formatShape(k.shape)} and value ${formatShape(v.shape)} differ in rank`,
        'SHAPE',
      );
    }
    const qs = split(q, numHeads, 'query');
    const ks = split(k, numHeads, 'key');
    const vs = split(v, numHeads, 'value');
    if (qs.d !== ks.d) {
      fail(
        `query ${formatShape(q.shape)} has head dim ${qs.d} but key ${formatShape(k.shape)} has ${ks.d} (numHeads=${numHeads}); q·kᵀ needs them equal`,
        'SHAPE',
      );
    }
    if (!dimEquals(ks.s, vs.s))
      fail(`key ${formatShape(k.shape)} and value ${formatShape(v.shape)} differ in length`, 'SHAPE');
    const qkBatch = broadcastShapes([qs.b], [ks.b]);
    const batch = qkBatch && broadcastShapes(qkBatch, [vs.b]);
    if (!batch || !dimEquals(qs.b, ks.b) || !dimEquals(qs.b, vs.b)) {
      fail(
        `batch dims differ: query ${formatShape(q.shape)}, key ${formatShape(k.shape)}, value ${formatShape(v.shape)}`,
        'SHAPE',
      );
    }
    if (hasMask) {
      if (mask.dtype !== 'bool' && mask.dtype !== q.dtype) {
        fail(`mask must be bool (true = attend) or ${q.dtype} (added to scores), got ${mask.dtype}`, 'DTYPE');
      }
      if (!broadcastShapes(mask.shape, [qs.b, numHeads, qs.s, ks.s]) || mask.shape.length > 4) {
        fail(
          `mask ${formatShape(mask.shape)} does not broadcast to [B, H, Sq, Skv] = ${formatShape([qs.b, numHeads, qs.s, ks.s])}`,
          'SHAPE',
        );
      }
    }
    const shape = q.shape.length === 3 ? [qs.b, qs.s, numHeads * vs.d] : [qs.b, numHeads, qs.s, vs.d];
    return [{ dtype: q.dtype, shape }];
  },
  lower(ctx, node, [out]) {
    const [q, k, v, mask] = node.inputs;
    const { numHeads, scale, hasMask } = node.attrs;
    const packed = q.shape.length === 3;
    if (packed && !hasMask && q.dtype === 'float32') {
      // ORT's MultiHeadAttention on 3-D packed inputs takes the tiled (flash) CPU path: fastest, and it
      // never materialises the Sq×Skv matrix (notes §3).
      ctx.emit(
        'MultiHeadAttention',
        [ctx.name(q), ctx.name(k), ctx.name(v)],
        [out],
        { num_heads: attr.int(numHeads), scale: attr.float(scale) },
        'com.microsoft',
      );
      return;
    }
    // Explicit MatMul–Softmax–MatMul on [B, H, S, D]; ORT fuses the transposes and the scale into
    // FusedMatMul.
    const toHeads = (t: Tensor, perm: number[], hint: string): string => {
      if (!packed) {
        if (perm[2] === 3) {
          const o = ctx.fresh(hint);
          ctx.emit('Transpose', [ctx.name(t)], [o], { perm: attr.ints([0, 1, 3, 2]) });
          return o;
        }
        return ctx.name(t);
      }
      const d = (t.shape[2] as number) / numHeads;
      const r = ctx.reshape(ctx.name(t), t.shape, [t.shape[0], t.shape[1], numHeads, d]);
      const o = ctx.fresh(hint);
      ctx.emit('Transpose', [r], [o], { perm: attr.ints(perm) });
      return o;
    };
    const qh = toHeads(q, [0, 2, 1, 3], 'q_heads');
    const kt = toHeads(k, [0, 2, 3, 1], 'k_t');
    const vh = toHeads(v, [0, 2, 1, 3], 'v_heads');
    const raw = ctx.fresh('scores_raw');
    ctx.emit('MatMul', [qh, kt], [raw]);
    let scores = ctx.fresh('scores');
    ctx.emit('Mul', [raw, ctx.scalar(scale, q.dtype)], [scores]);
    if (hasMask) {
      const masked = ctx.fresh('scores_masked');
      if (mask.dtype === 'bool')
        ctx.emit('Where', [ctx.name(mask), scores, ctx.scalar(-Infinity, q.dtype)], [masked]);
      else ctx.emit('Add', [scores, ctx.name(mask)], [masked]);
      scores = masked;
    }
    const probs = ctx.fresh('probs');
    ctx.emit('Softmax', [scores], [probs], { axis: attr.int(-1) });
    if (!packed) {
      ctx.emit('MatMul', [probs, vh], [out]);
      return;
    }
    const ctxHeads = ctx.fresh('context_heads');
    ctx.emit('MatMul', [probs, vh], [ctxHeads]);
    const merged = ctx.fresh('context');
    ctx.emit('Transpose', [ctxHeads], [merged], { perm: attr.ints([0, 2, 1, 3]) });
    const dv = (v.shape[2] as number) / numHeads;
    ctx.reshape(merged, [q.shape[0], q.shape[1], numHeads, dv], node.outputs[0].shape, out);
  },
  vjp({ inputs: [q, k, v, mask], outputs: [out], attrs: { numHeads, scale, hasMask }, needsGrad }, [dOut]) {
    if (!dOut) return [];
    // Recompute the probabilities on [B, H, S, D] (no kernel keeps them), then backward through
    // P·V, the softmax and q·kᵀ — composed from matmuls, as ORT has no attention gradient kernel.
    const packed = q.rank === 3;
    const toHeads = (t: Tensor): Tensor =>
      packed
        ? transpose(
            reshape(t, [t.shape[0], t.shape[1], numHeads, (t.shape[2] as number) / numHeads]),
            [0, 2, 1, 3],
          )
        : t;
    const fromHeads = (t: Tensor, like: Tensor): Tensor =>
      packed ? reshape(transpose(t, [0, 2, 1, 3]), like.shape) : t;
    const swapLast = (t: Tensor): Tensor => transpose(t, [0, 1, 3, 2]);
    const [qh, kh, vh, dOutHeads] = [q, k, v, dOut].map(toHeads);
    let scores = mul(matmul(qh, swapLast(kh)), scale);
    if (hasMask) scores = mask.dtype === 'bool' ? where(mask, scores, -Infinity) : add(scores, mask);
    const probs = softmax(scores, -1);
    const [needsQ, needsK, needsV] = needsGrad;
    // A bool mask selects and has no gradient; an additive float mask is a bias on the scores.
    const needsMask = hasMask && mask.dtype !== 'bool' && needsGrad[3];
    let dScores: Tensor | undefined;
    if (needsQ || needsK || needsMask) {
      const dProbs = matmul(dOutHeads, swapLast(vh));
      // Σ_j dP_ij · P_ij = dO_i · O_i (FlashAttention, Dao et al. 2022, App. B.2): a row sum over
      // Dv instead of Skv.
      const rowDot = sum(mul(dOutHeads, toHeads(out)), -1, true);
      dScores = mul(probs, sub(dProbs, rowDot));
    }
    const grads: (Tensor | undefined)[] = [
      dScores && needsQ ? fromHeads(mul(matmul(dScores, kh), scale), q) : undefined,
      dScores && needsK ? fromHeads(mul(matmul(swapLast(dScores), qh), scale), k) : undefined,
      needsV ? fromHeads(matmul(swapLast(probs), dOutHeads), v) : undefined,
    ];
    if (hasMask) grads.push(dScores && needsMask ? sumToShape(dScores, mask.shape) : undefined);
    return grads;
  },
});

/**
 * Scaled dot-product attention with `numHeads` heads. Inputs are [B, S, H·D] (heads packed in the
 * last dim) or [B, H, S, D]. `mask` is bool (true = attend) or additive, broadcastable to
 * [B, H, Sq, Skv]. Unmasked packed float32 attention lowers to ORT's fused MultiHeadAttention.
 */
export function attention(
  q: Tensor,
  k: Tensor,
  v: Tensor,
  options: { numHeads: number; scale?: number; mask?: Tensor },
): Tensor {
  const headDim = q.shape.length === 3 ? (q.shape[2] as number) / options.numHeads : (q.shape[3] as number);
  const scale = options.scale ?? 1 / Math.sqrt(headDim);
  const inputs = options.mask ? [q, k, v, options.mask] : [q, k, v];
  return apply(AttentionOp, inputs, {
    numHeads: options.numHeads,
    scale,
    hasMask: options.mask !== undefined,
  })[0];
}
