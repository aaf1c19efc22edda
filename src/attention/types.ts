import type { Tensor } from '../graph/graph.js';
import type { Params } from '../nn/params.js';

/**
 * How a denoiser's self-attention layers attend, chosen when the graph is built (DESIGN.md):
 * - `full`: scaled dot-product attention over every token;
 * - `clear`: CLEAR's circular local window of `radius` tokens on the 2-D token grid (strict
 *   inequality), plus, with `downFactor` > 1, keys/values average-pooled in downFactor² cells with
 *   learnable per-layer weights (methods/clear_linfusion.md §1);
 * - `linfusion`: LinFusion's generalized normalized linear attention module, with its own weights
 *   (§2).
 */
export type AttentionChoice =
  { kind: 'full' } | { kind: 'clear'; radius: number; downFactor?: number } | { kind: 'linfusion' };

/** The 2-D layout of the image tokens a self-attention sees: token i is at (i div width, i mod width). */
export interface TokenGrid {
  height: number;
  width: number;
}

/** Everything a self-attention replacement needs about the layer it replaces. */
export interface SelfAttentionLayer {
  /** The base model's attention module (e.g. `transformer_blocks.3.attn1`): to_q, to_k, to_v, to_out.0. */
  params: Params;
  /** Normalised hidden states [B, N, dim]; for joint-attention models text tokens come first. */
  x: Tensor;
  dim: number;
  heads: number;
  /** Whether to_q/to_k/to_v have biases. */
  qkvBias: boolean;
  /** Layout of the image tokens. */
  grid: TokenGrid;
  /** Text tokens before the image tokens in joint attention (0 for PixArt's image-only self-attention). */
  textTokens: number;
}

/**
 * A run's self-attention option: the choice plus the method's weights. For CLEAR an optional
 * safetensors file overlaid on the denoiser (non-strict: base names, plus
 * `…attn1.processor.spatial_weight`); for LinFusion its folder (config.json + safetensors).
 */
export type AttentionOption =
  | { kind: 'full' }
  | { kind: 'clear'; radius: number; downFactor?: number; weights?: string }
  | { kind: 'linfusion'; weights: string };
