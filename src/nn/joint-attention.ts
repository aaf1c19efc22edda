/**
 * The projections of diffusers' `Attention` with `added_kv_proj_dim`, as SD3's MMDiT
 * (JointAttnProcessor2_0) and FLUX (FluxAttnProcessor) use it: image tokens through to_q/to_k/to_v
 * (norm_q/norm_k), caption tokens through add_q_proj/add_k_proj/add_v_proj (norm_added_q/
 * norm_added_k), outputs through to_out.0 and to_add_out. Each model joins the two streams in its
 * own order and chooses the attention kernel.
 */
import type { Tensor } from '../graph/graph.js';
import { reshape } from '../graph/ops/index.js';
import { Linear, RMSNorm } from './layers.js';
import type { Params } from './params.js';

/** The checkpoint names of one stream's projections and per-head query/key norms. */
export interface StreamProjectionNames {
  q: string;
  k: string;
  v: string;
  normQ: string;
  normK: string;
}

/** The image tokens' projections. */
export const IMAGE_PROJECTIONS: StreamProjectionNames = {
  q: 'to_q',
  k: 'to_k',
  v: 'to_v',
  normQ: 'norm_q',
  normK: 'norm_k',
};

/** The caption tokens' projections (`added_kv_proj_dim`). */
export const CONTEXT_PROJECTIONS: StreamProjectionNames = {
  q: 'add_q_proj',
  k: 'add_k_proj',
  v: 'add_v_proj',
  normQ: 'norm_added_q',
  normK: 'norm_added_k',
};

export interface HeadProjectionOptions {
  dim: number;
  heads: number;
  /** qk_norm "rms_norm": queries and keys through RMSNorm over each head's features, eps 1e-6. */
  qkNorm: boolean;
}

/**
 * The projection `part` of one stream, x [B, S, dim] through its Linear (dim → dim) under `attn`,
 * split into heads [B, S, heads, dim/heads]; queries and keys through their RMSNorm with `qkNorm`.
 */
export function projectHeads(
  attn: Params,
  x: Tensor,
  names: StreamProjectionNames,
  part: 'q' | 'k' | 'v',
  o: HeadProjectionOptions,
): Tensor {
  const { dim, heads } = o;
  const headDim = dim / heads;
  const projected = Linear(attn.child(names[part]), x, dim, dim);
  const [batch, tokens] = projected.shape;
  const perHead = attn.scope(() => reshape(projected, [batch, tokens, heads, headDim]));
  const norm = part === 'q' ? names.normQ : part === 'k' ? names.normK : undefined;
  if (!o.qkNorm || norm === undefined) return perHead;
  return RMSNorm(attn.child(norm), perHead, headDim, { eps: 1e-6 });
}

/** One stream's queries, keys and values, [B, S, heads, dim/heads] each. */
export interface StreamHeads {
  q: Tensor;
  k: Tensor;
  v: Tensor;
}

/** One stream's queries, keys and values (`projectHeads`), built in that order. */
export function streamHeads(
  attn: Params,
  x: Tensor,
  names: StreamProjectionNames,
  o: HeadProjectionOptions,
): StreamHeads {
  return {
    q: projectHeads(attn, x, names, 'q', o),
    k: projectHeads(attn, x, names, 'k', o),
    v: projectHeads(attn, x, names, 'v', o),
  };
}

/**
 * The output projections of the attention product split back into its streams: to_out.0 on the
 * image tokens [B, N, dim], to_add_out on the caption tokens [B, M, dim] unless `context` is
 * undefined (a context_pre_only block has no to_add_out).
 */
export function jointOutputProjections(
  attn: Params,
  image: Tensor,
  context: Tensor,
  dim: number,
): { image: Tensor; context: Tensor };
export function jointOutputProjections(
  attn: Params,
  image: Tensor,
  context: Tensor | undefined,
  dim: number,
): { image: Tensor; context: Tensor | undefined };
export function jointOutputProjections(
  attn: Params,
  image: Tensor,
  context: Tensor | undefined,
  dim: number,
): { image: Tensor; context: Tensor | undefined } {
  const imageOut = Linear(attn.child('to_out').child(0), image, dim, dim);
  const contextOut = context === undefined ? undefined : Linear(attn.child('to_add_out'), context, dim, dim);
  return { image: imageOut, context: contextOut };
}
