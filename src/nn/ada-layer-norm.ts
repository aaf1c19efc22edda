/**
 * The adaptive LayerNorms of the MMDiT and FLUX transformers (diffusers' normalization.py): an adaLN
 * module's `linear` on the conditioning embedding, read as rows (shift, scale, gate, …), modulating
 * a LayerNorm without affine parameters (eps 1e-6); AdaLayerNormContinuous is norm_out of both.
 */
import type { Tensor } from '../graph/graph.js';
import { add, mul, reshape, split } from '../graph/ops/index.js';
import { LayerNorm, Linear } from './layers.js';
import type { Params } from './params.js';

/** x·(1 + scale) + shift, with shift and scale [B, 1, dim] broadcast over the tokens. */
export function modulate(x: Tensor, shift: Tensor, scale: Tensor): Tensor {
  return add(mul(x, add(scale, 1)), shift);
}

/**
 * The `count` rows [B, 1, dim] of the adaLN module `p`'s `linear` on `emb` [B, dim], in diffusers'
 * chunk order. `emb` is silu(temb): diffusers applies the SiLU inside each module, and the caller
 * decides whether it is computed once per model or once per module.
 */
export function adaLayerNormRows(p: Params, emb: Tensor, dim: number, count: number): Tensor[] {
  const linear = p.child('linear');
  const rows = Linear(linear, emb, dim, count * dim);
  return linear.scope(() => split(reshape(rows, [emb.shape[0], count, dim]), count, 1));
}

/** The LayerNorm every adaLN here modulates: elementwise_affine=False, eps 1e-6; `p` has no parameters. */
export function nonAffineLayerNorm(p: Params, x: Tensor, dim: number): Tensor {
  return LayerNorm(p, x, dim, { eps: 1e-6, affine: false });
}

/** `nonAffineLayerNorm` of x, then x·(1 + scale) + shift, in the scope of the norm `p`. */
export function modulatedLayerNorm(p: Params, x: Tensor, dim: number, shift: Tensor, scale: Tensor): Tensor {
  const normed = nonAffineLayerNorm(p, x, dim);
  return p.scope(() => modulate(normed, shift, scale));
}

/**
 * diffusers AdaLayerNormContinuous (norm_type "layer_norm", elementwise_affine False, eps 1e-6) of
 * x [B, N, dim]: its linear's output on `emb` (silu(temb), see `adaLayerNormRows`) read as scale,
 * then shift — the reverse of AdaLayerNormZero's order.
 */
export function AdaLayerNormContinuous(p: Params, x: Tensor, emb: Tensor, dim: number): Tensor {
  const [scale, shift] = adaLayerNormRows(p, emb, dim, 2);
  const normed = nonAffineLayerNorm(p.child('norm'), x, dim);
  return p.scope(() => modulate(normed, shift, scale));
}
