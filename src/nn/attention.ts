import type { Tensor } from '../graph/graph.js';
import { attention, reshape } from '../graph/ops/index.js';
import type { Dim } from '../graph/shape.js';
import { LayerNorm, Linear, RMSNorm } from './layers.js';
import type { Params } from './params.js';

/**
 * The product between the projections: q [B, Nq, heads·dimHead], k and v [B, Nk, heads·dimHead]
 * in, [B, Nq, heads·dimHead] out. The default is scaled dot-product attention; callers pass
 * another (CLEAR's local window, a cached T-GATE output…) without the module knowing about it.
 */
export type AttentionKernel = (
  q: Tensor,
  k: Tensor,
  v: Tensor,
  o: { heads: number; mask?: Tensor },
) => Tensor;

export const scaledDotProductKernel: AttentionKernel = (q, k, v, o) =>
  attention(q, k, v, { numHeads: o.heads, mask: o.mask });

/** diffusers `Attention`'s constructor arguments that change its parameters or its graph. */
export interface AttentionOptions {
  /** Width of the queries' input (`query_dim`). */
  queryDim: number;
  /** Width of the context for cross-attention (`cross_attention_dim`); absent for self-attention. */
  crossAttentionDim?: number;
  heads: number;
  /** Per-head width (`dim_head`); the projections are heads·dimHead wide. */
  dimHead: number;
  /** Biases on to_q/to_k/to_v (`bias`, false by default as in diffusers). */
  bias?: boolean;
  /** Bias on to_out.0 (`out_bias`, true by default). */
  outBias?: boolean;
  /** Width of to_out.0's output (`out_dim`), queryDim by default. */
  outDim?: number;
  /** Per-head norms of q and k (`qk_norm`): diffusers' `norm_q`/`norm_k` over dimHead. */
  qkNorm?: 'layer_norm' | 'rms_norm';
  /** eps of the qk norms (diffusers' `eps`, 1e-5 by default). */
  eps?: number;
  /** Additive mask broadcast to [B, heads, Nq, Nk] (0 keeps, a large negative value drops). */
  mask?: Tensor;
  /** The product between the projections; scaled dot-product attention by default. */
  kernel?: AttentionKernel;
  /**
   * What to_q and to_k project when it is not x and the context: LinFusion feeds them the tokens
   * plus a residual MLP of them (methods/clear_linfusion.md §2.2). Same widths as x and the context.
   */
  queryInput?: Tensor;
  keyInput?: Tensor;
  /**
   * The checkpoint's names of the projections where they are not diffusers' current to_q, to_k,
   * to_v, to_out.0 (VAEs saved before diffusers 0.14: query, key, value, proj_attn).
   */
  projectionNames?: { q: string; k: string; v: string; out: string };
}

const PROJECTION_NAMES = { q: 'to_q', k: 'to_k', v: 'to_v', out: 'to_out.0' };

/**
 * diffusers `Attention` (to_q, to_k, to_v, optional norm_q/norm_k, the kernel, to_out.0) on
 * x [B, N, queryDim] and, for cross-attention, context [B, M, crossAttentionDim]. Every model's
 * attention module is built here; attention/ supplies the kernels and whole replacements.
 */
export function Attention(p: Params, x: Tensor, context: Tensor | undefined, o: AttentionOptions): Tensor {
  const inner = o.heads * o.dimHead;
  const bias = o.bias ?? false;
  const source = context ?? x;
  const sourceDim = context === undefined ? o.queryDim : (o.crossAttentionDim ?? o.queryDim);
  const names = o.projectionNames ?? PROJECTION_NAMES;
  let q = Linear(p.child(names.q), o.queryInput ?? x, o.queryDim, inner, bias);
  let k = Linear(p.child(names.k), o.keyInput ?? source, sourceDim, inner, bias);
  const v = Linear(p.child(names.v), source, sourceDim, inner, bias);
  if (o.qkNorm !== undefined) {
    q = headNorm(p.child('norm_q'), q, o);
    k = headNorm(p.child('norm_k'), k, o);
  }
  const kernel = o.kernel ?? scaledDotProductKernel;
  const out = p.scope(() => kernel(q, k, v, { heads: o.heads, mask: o.mask }));
  return Linear(p.child(names.out), out, inner, o.outDim ?? o.queryDim, o.outBias ?? true);
}

/** A norm over each head's dimHead features of [B, N, heads·dimHead]. */
function headNorm(p: Params, t: Tensor, o: AttentionOptions): Tensor {
  const [batch, tokens] = t.shape as [Dim, Dim];
  const split = p.scope(() => reshape(t, [batch, tokens, o.heads, o.dimHead]));
  const normed =
    o.qkNorm === 'rms_norm'
      ? RMSNorm(p, split, o.dimHead, { eps: o.eps ?? 1e-5 })
      : LayerNorm(p, split, o.dimHead, { eps: o.eps ?? 1e-5 });
  return p.scope(() => reshape(normed, [batch, tokens, o.heads * o.dimHead]));
}
