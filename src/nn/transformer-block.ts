import { GraphBuildError } from '../errors.js';
import type { Tensor } from '../graph/graph.js';
import { add, gelu, layerNorm, mul, reshape, sigmoid, split } from '../graph/ops/index.js';
import { Attention } from './attention.js';
import { LayerNorm, Linear } from './layers.js';
import type { Params } from './params.js';

/** diffusers' `activation_fn` names for FeedForward. */
export type FeedForwardActivation = 'gelu' | 'gelu-approximate' | 'geglu' | 'geglu-approximate';

const ACTIVATIONS: readonly FeedForwardActivation[] = [
  'gelu',
  'gelu-approximate',
  'geglu',
  'geglu-approximate',
];

export function isFeedForwardActivation(name: unknown): name is FeedForwardActivation {
  return ACTIVATIONS.includes(name as FeedForwardActivation);
}

export interface FeedForwardOptions {
  dim: number;
  /** Output width (`dim_out`), dim by default. */
  dimOut?: number;
  /** Hidden width (`inner_dim`), 4·dim by default (`mult` = 4). */
  innerDim?: number;
  activation: FeedForwardActivation;
  /** Biases of both projections (`bias`, true by default). */
  bias?: boolean;
}

/**
 * diffusers `FeedForward`: net.0 is the activation module with its `proj` (GELU, GELU(tanh),
 * GEGLU — proj to 2·inner, hidden · gelu(gate) — or ApproximateGELU's GEGLU, x·σ(1.702x)),
 * net.1 dropout (identity at inference), net.2 the output Linear.
 */
export function FeedForward(p: Params, x: Tensor, o: FeedForwardOptions): Tensor {
  const inner = o.innerDim ?? 4 * o.dim;
  const bias = o.bias ?? true;
  const net = p.child('net');
  const proj = net.child(0).child('proj');
  let hidden: Tensor;
  switch (o.activation) {
    case 'gelu':
    case 'gelu-approximate': {
      const h = Linear(proj, x, o.dim, inner, bias);
      hidden = net.scope(() => gelu(h, o.activation === 'gelu' ? 'none' : 'tanh'));
      break;
    }
    case 'geglu':
    case 'geglu-approximate': {
      const h = Linear(proj, x, o.dim, 2 * inner, bias);
      hidden = net.scope(() => {
        const [value, gate] = split(h, 2, -1);
        const activated = o.activation === 'geglu' ? gelu(gate) : mul(gate, sigmoid(mul(gate, 1.702)));
        return mul(value, activated);
      });
      break;
    }
    default:
      throw new GraphBuildError(
        `${p.path}: unknown feed-forward activation ${JSON.stringify(o.activation)}; expected one of ${ACTIVATIONS.join(', ')}`,
      );
  }
  return Linear(net.child(2), hidden, inner, o.dimOut ?? o.dim, bias);
}

/** The attention modules of a block, as T-GATE and the kernel choice name them. */
export type BlockAttentionRole = 'attn1' | 'attn2';

/** diffusers `BasicTransformerBlock`'s constructor arguments that change its parameters or graph. */
export interface BasicTransformerBlockOptions {
  dim: number;
  heads: number;
  dimHead: number;
  /** Width of the text states for attn2; absent: the block has no cross-attention. */
  crossAttentionDim?: number;
  /** to_q/to_k/to_v biases (`attention_bias`). */
  attentionBias?: boolean;
  /** attn1 attends to the text states too (`only_cross_attention`). */
  onlyCrossAttention?: boolean;
  /** `layer_norm` (SD UNets) or `ada_norm_single` (PixArt). */
  normType: 'layer_norm' | 'ada_norm_single';
  normEps?: number;
  normElementwiseAffine?: boolean;
  activation: FeedForwardActivation;
  ffInnerDim?: number;
  /**
   * ada_norm_single: the timestep modulation broadcastable to [B, 6, dim] (diffusers'
   * `timestep.reshape(B, 6, -1)`), added to the block's scale_shift_table.
   */
  modulation?: Tensor;
  /** Additive mask of the text tokens for attn2. */
  crossMask?: Tensor;
  /** Builds attn1 instead of the default `Attention` (CLEAR, LinFusion: attention/). */
  selfAttention?: (p: Params, x: Tensor) => Tensor;
  /** Wraps each attention module's computation (T-GATE: compute, keep, or read the cache). */
  around?: (role: BlockAttentionRole, compute: () => Tensor) => Tensor;
}

/**
 * diffusers `BasicTransformerBlock` on hidden [B, N, dim] with text [B, M, crossAttentionDim]:
 * self-attention, cross-attention and feed-forward, each pre-normed and residual; with
 * `ada_norm_single` the norms are modulated by the timestep (shift/scale/gate), attn2 sees the
 * un-normed states and the feed-forward's norm is norm2, as diffusers has it.
 */
export function BasicTransformerBlock(
  p: Params,
  hidden: Tensor,
  text: Tensor | undefined,
  o: BasicTransformerBlockOptions,
): Tensor {
  const { dim } = o;
  const eps = o.normEps ?? 1e-5;
  const affine = o.normElementwiseAffine ?? true;
  const around = o.around ?? ((_role: BlockAttentionRole, compute: () => Tensor) => compute());
  const attentionOptions = { heads: o.heads, dimHead: o.dimHead, bias: o.attentionBias ?? false };
  const norm = (name: string, x: Tensor): Tensor =>
    affine
      ? LayerNorm(p.child(name), x, dim, { eps })
      : p.scope(() => layerNorm(x, undefined, undefined, { eps }));

  let modulation: Tensor[] | undefined;
  if (o.normType === 'ada_norm_single') {
    if (o.modulation === undefined) {
      throw new GraphBuildError(`${p.path}: norm_type 'ada_norm_single' needs the timestep modulation`);
    }
    const table = p.get('scale_shift_table', [6, dim]);
    const m = o.modulation;
    modulation = p.scope(() => split(add(reshape(table, [1, 6, dim]), m), 6, 1));
  }
  const modulate = (x: Tensor, shift: number, scale: number): Tensor =>
    modulation === undefined
      ? x
      : p.scope(() => add(mul(x, add((modulation as Tensor[])[scale], 1)), (modulation as Tensor[])[shift]));
  const gate = (x: Tensor, index: number): Tensor =>
    modulation === undefined ? x : p.scope(() => mul((modulation as Tensor[])[index], x));

  // 1. Self-attention (or, with only_cross_attention, attention to the text).
  const normed1 = modulate(norm('norm1', hidden), 0, 1);
  const selfOut = around('attn1', () => {
    if (o.selfAttention && !o.onlyCrossAttention) return o.selfAttention(p.child('attn1'), normed1);
    const context = o.onlyCrossAttention ? text : undefined;
    return Attention(p.child('attn1'), normed1, context, {
      ...attentionOptions,
      queryDim: dim,
      crossAttentionDim: o.onlyCrossAttention ? o.crossAttentionDim : undefined,
    });
  });
  hidden = p.scope(() => add(hidden, gate(selfOut, 2)));

  // 2. Cross-attention to the text states.
  if (o.crossAttentionDim !== undefined) {
    // Built inside `around`: a T-GATE step that reuses attn2's output has no text states.
    const residual = hidden;
    const crossOut = around('attn2', () => {
      if (text === undefined) throw new GraphBuildError(`${p.path}: cross-attention needs the text states`);
      const query = o.normType === 'ada_norm_single' ? residual : norm('norm2', residual);
      return Attention(p.child('attn2'), query, text, {
        ...attentionOptions,
        queryDim: dim,
        crossAttentionDim: o.crossAttentionDim,
        mask: o.crossMask,
      });
    });
    hidden = p.scope(() => add(hidden, crossOut));
  }

  // 3. Feed-forward.
  const normed3 = modulate(norm(o.normType === 'ada_norm_single' ? 'norm2' : 'norm3', hidden), 3, 4);
  const ffOut = FeedForward(p.child('ff'), normed3, {
    dim,
    innerDim: o.ffInnerDim,
    activation: o.activation,
  });
  return p.scope(() => add(hidden, gate(ffOut, 5)));
}
