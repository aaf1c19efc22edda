import type { Tensor } from '../graph/graph.js';
import { add, cast, concat, cos, mul, pad, silu, sin, unsqueeze } from '../graph/ops/index.js';
import type { Activation } from '../nn/activations.js';
import { activation } from '../nn/activations.js';
import { Linear } from '../nn/layers.js';
import type { Params } from '../nn/params.js';
import { torchExpFloat32 } from '../random/torch-exp.js';

const f = Math.fround;

/**
 * Frequencies of diffusers' `get_timestep_embedding`, computed in float32 as torch does:
 * exp(−ln(maxPeriod) · i / (half − shift)), with torch's own exp. A correctly rounded exp differs
 * from it by an ulp at some i, which t ≈ 1000 turns into 3e-5 in the angle: that alone made the tiny
 * PixArt's output 8× further from diffusers' float64 run than torch's float32 run is.
 */
export function timestepFrequencies(
  numChannels: number,
  downscaleFreqShift: number,
  maxPeriod = 10000,
): Float32Array {
  const half = Math.floor(numChannels / 2);
  const minusLog = f(-Math.log(maxPeriod));
  const divisor = f(half - downscaleFreqShift);
  return Float32Array.from({ length: half }, (_, i) => torchExpFloat32(f(f(minusLog * i) / divisor)));
}

/**
 * Sinusoidal embedding of a [N] float32 tensor (diffusers `Timesteps`): [sin | cos], or [cos | sin]
 * with flipSinToCos, and a zero column when numChannels is odd. Computed in the graph in float32,
 * as torch does.
 */
export function sinusoidalEmbedding(
  t: Tensor,
  numChannels: number,
  options: { flipSinToCos: boolean; downscaleFreqShift: number; scale?: number },
): Tensor {
  const g = t.graph;
  const freqs = timestepFrequencies(numChannels, options.downscaleFreqShift);
  let args = mul(unsqueeze(cast(t, 'float32'), 1), g.constant(freqs, 'float32', [1, freqs.length]));
  if (options.scale !== undefined && options.scale !== 1) args = mul(args, options.scale);
  const parts = options.flipSinToCos ? [cos(args), sin(args)] : [sin(args), cos(args)];
  const embedding = concat(parts, 1);
  return numChannels % 2 === 1
    ? pad(embedding, [
        [0, 0],
        [0, 1],
      ])
    : embedding;
}

/** diffusers `TimestepEmbedding`'s optional constructor arguments (and forward's `condition`). */
export interface TimestepEmbeddingOptions {
  /** `act_fn` between the linears, SiLU by default. */
  act?: Activation;
  /** `post_act_fn` after linear_2; none by default. */
  postAct?: Activation;
  /** linear_2's output width (`out_dim`), timeEmbedDim by default. */
  outDim?: number;
  /**
   * forward's `condition` [N, condProjDim] (LCM's guidance embedding), added to x through the
   * bias-free `cond_proj` before linear_1.
   */
  condition?: { tensor: Tensor; condProjDim: number };
}

/** diffusers `TimestepEmbedding`: (x + cond_proj(condition)) → linear_1 → act → linear_2 (→ post_act). */
export function TimestepEmbedding(
  p: Params,
  x: Tensor,
  inChannels: number,
  timeEmbedDim: number,
  options: TimestepEmbeddingOptions = {},
): Tensor {
  let sample = x;
  const condition = options.condition;
  if (condition !== undefined) {
    const projected = Linear(
      p.child('cond_proj'),
      condition.tensor,
      condition.condProjDim,
      inChannels,
      false,
    );
    sample = p.scope(() => add(sample, projected));
  }
  const first = Linear(p.child('linear_1'), sample, inChannels, timeEmbedDim);
  const h = p.scope(() => activation(first, options.act ?? 'silu'));
  const out = Linear(p.child('linear_2'), h, timeEmbedDim, options.outDim ?? timeEmbedDim);
  const post = options.postAct;
  return post === undefined ? out : p.scope(() => activation(out, post));
}

/** What time_text_embed reads: [B] float32 timestep (and guidance), [B, pooled_projection_dim] pooled text. */
export interface TimestepTextInputs {
  timestep: Tensor;
  pooledProjections: Tensor;
  /** FLUX.1-dev's distilled guidance scale; given, it goes through guidance_embedder. */
  guidance?: Tensor;
}

export interface TimestepTextOptions {
  /** Width of the embedding (the transformer's inner_dim). */
  dim: number;
  pooledProjectionDim: number;
  /** What the model's forward multiplies timestep and guidance by before time_proj (FLUX: 1000). */
  timestepScale?: number;
}

/**
 * diffusers `CombinedTimestepTextProjEmbeddings` (SD3, FLUX.1-schnell) or, with a guidance input,
 * `CombinedTimestepGuidanceTextProjEmbeddings` (FLUX.1-dev): the sinusoidal embeddings (256
 * channels, cos first, shift 0) of the timestep (and guidance) through their TimestepEmbeddings,
 * plus the pooled text through text_embedder (PixArtAlphaTextProjection with SiLU). [B, dim].
 */
export function CombinedTimestepTextProjEmbeddings(
  p: Params,
  inputs: TimestepTextInputs,
  o: TimestepTextOptions,
): Tensor {
  const { dim, timestepScale } = o;
  const project = (t: Tensor): Tensor =>
    sinusoidalEmbedding(timestepScale === undefined ? t : mul(t, timestepScale), 256, {
      flipSinToCos: true,
      downscaleFreqShift: 0,
    });
  let embedding = TimestepEmbedding(p.child('timestep_embedder'), project(inputs.timestep), 256, dim);
  const guidance = inputs.guidance;
  if (guidance) {
    const guided = TimestepEmbedding(p.child('guidance_embedder'), project(guidance), 256, dim);
    embedding = p.scope(() => add(embedding, guided));
  }
  const textEmbedder = p.child('text_embedder');
  const hidden = Linear(textEmbedder.child('linear_1'), inputs.pooledProjections, o.pooledProjectionDim, dim);
  const pooled = Linear(
    textEmbedder.child('linear_2'),
    textEmbedder.scope(() => silu(hidden)),
    dim,
    dim,
  );
  return p.scope(() => add(embedding, pooled));
}

/**
 * diffusers' 2-D sin-cos position embedding (`get_2d_sincos_pos_embed`) for a gridH × gridW token
 * grid, row-major: each token gets [sincos(w coordinate) | sincos(h coordinate)]. Coordinates are
 * float32 as in torch; the sines are taken in float64 and rounded, as diffusers does.
 */
export function sincosPositionEmbedding2d(
  embedDim: number,
  gridH: number,
  gridW: number,
  baseSize: number,
  interpolationScale: number,
): Float32Array {
  if (embedDim % 4 !== 0) throw new Error(`embed dim ${embedDim} must be divisible by 4`);
  const half = embedDim / 2;
  const quarter = half / 2;
  // get_1d_sincos_pos_embed_from_grid with embed_dim = half: ω_i = 1 / 10000^(i / (half/2)), in float64.
  const omega = Float64Array.from({ length: quarter }, (_, i) => 1 / 10000 ** (i / quarter));
  const coord = (i: number, size: number): number => f(f(i / f(size / baseSize)) / f(interpolationScale));
  const out = new Float32Array(gridH * gridW * embedDim);
  for (let h = 0; h < gridH; h++) {
    const ch = coord(h, gridH);
    for (let w = 0; w < gridW; w++) {
      const cw = coord(w, gridW);
      const base = (h * gridW + w) * embedDim;
      for (let i = 0; i < quarter; i++) {
        out[base + i] = Math.sin(cw * omega[i]);
        out[base + quarter + i] = Math.cos(cw * omega[i]);
        out[base + half + i] = Math.sin(ch * omega[i]);
        out[base + half + quarter + i] = Math.cos(ch * omega[i]);
      }
    }
  }
  return out;
}
