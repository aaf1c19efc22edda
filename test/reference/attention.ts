/**
 * Float64 reference for scaled dot-product attention (torch.nn.functional.scaled_dot_product_attention),
 * one head, one query row at a time.
 */
import type { RefArray } from './layout.js';
import { at, generate, offsetOf } from './layout.js';

/** Per-head views of attention inputs: `value(b, h, s, d)` for [B, S, H·D] or [B, H, S, D] arrays. */
function headView(
  a: RefArray,
  numHeads: number,
): { seq: number; dim: number; value: (b: number, h: number, s: number, d: number) => number } {
  if (a.shape.length === 3) {
    const dim = a.shape[2] / numHeads;
    return { seq: a.shape[1], dim, value: (b, h, s, d) => at(a, [b, s, h * dim + d]) };
  }
  return { seq: a.shape[2], dim: a.shape[3], value: (b, h, s, d) => at(a, [b, h, s, d]) };
}

export interface RefMask {
  /** Numpy-broadcastable to [B, H, Sq, Skv]. */
  shape: readonly number[];
  /** bool: 1 = attend, 0 = masked out; additive: added to the scaled scores. */
  data: ArrayLike<number>;
  kind: 'bool' | 'additive';
}

function maskAt(mask: RefMask, index: [number, number, number, number]): number {
  const r = mask.shape.length;
  const own = index.slice(4 - r).map((v, i) => (mask.shape[i] === 1 ? 0 : v));
  return Number(mask.data[offsetOf(own, mask.shape)]);
}

/**
 * softmax(q·kᵀ·scale + mask)·v per batch and head. Inputs all [B, S, H·D] (output [B, Sq, H·Dv])
 * or all [B, H, S, D] (output [B, H, Sq, Dv]).
 */
export function attentionRef(
  q: RefArray,
  k: RefArray,
  v: RefArray,
  numHeads: number,
  options: { scale?: number; mask?: RefMask } = {},
): RefArray {
  const qv = headView(q, numHeads);
  const kv = headView(k, numHeads);
  const vv = headView(v, numHeads);
  const batch = q.shape[0];
  const scale = options.scale ?? 1 / Math.sqrt(qv.dim);
  // context[b][h][i] = the Dv-vector for query row i
  const context = new Map<string, Float64Array>();
  for (let b = 0; b < batch; b++) {
    for (let h = 0; h < numHeads; h++) {
      for (let i = 0; i < qv.seq; i++) {
        const scores = new Float64Array(kv.seq);
        for (let j = 0; j < kv.seq; j++) {
          let dot = 0;
          for (let d = 0; d < qv.dim; d++) dot += qv.value(b, h, i, d) * kv.value(b, h, j, d);
          let s = dot * scale;
          if (options.mask) {
            const m = maskAt(options.mask, [b, h, i, j]);
            if (options.mask.kind === 'bool') s = m ? s : -Infinity;
            else s += m;
          }
          scores[j] = s;
        }
        const max = Math.max(...scores);
        let total = 0;
        for (let j = 0; j < kv.seq; j++) {
          scores[j] = Math.exp(scores[j] - max);
          total += scores[j];
        }
        const row = new Float64Array(vv.dim);
        for (let j = 0; j < kv.seq; j++) {
          const p = scores[j] / total;
          for (let d = 0; d < vv.dim; d++) row[d] += p * vv.value(b, h, j, d);
        }
        context.set(`${b},${h},${i}`, row);
      }
    }
  }
  const row = (b: number, h: number, i: number): Float64Array =>
    context.get(`${b},${h},${i}`) as Float64Array;
  if (q.shape.length === 3) {
    return generate(
      [batch, qv.seq, numHeads * vv.dim],
      ([b, i, hd]) => row(b, Math.floor(hd / vv.dim), i)[hd % vv.dim],
    );
  }
  return generate([batch, numHeads, qv.seq, vv.dim], ([b, h, i, d]) => row(b, h, i)[d]);
}
