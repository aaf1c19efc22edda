/**
 * CLEAR (arXiv 2412.16112): each image query attends, in one softmax, to every text key, to every
 * down-pooled key (downFactor > 1) and to the image keys inside a circle of radius r on the token
 * grid, (Δy)² + (Δx)² < r² (methods/clear_linfusion.md §1.3–§1.5). Text queries attend to all text
 * and image keys and never to the pooled ones.
 *
 * Lowering (§1.6.2): text queries are plain attention (fused MultiHeadAttention); image queries run
 * in blocks planned by clear-window.ts. A block gathers its queries and, per tile, the window of
 * keys/values they can reach (plus every text and pooled key), and scores them with batched MatMuls
 * under a constant mask; blocks are small enough for their scores to stay in cache, so memory is
 * bounded whatever the grid. Where the windows would cover about the whole sequence the blocks are
 * rows of queries against every key.
 */
import { GraphBuildError } from '../errors.js';
import type { Tensor } from '../graph/graph.js';
import {
  add,
  attention,
  cast,
  concat,
  gather,
  matmul,
  mul,
  reshape,
  slice,
  softmax,
  sum,
  transpose,
  unsqueeze,
} from '../graph/ops/index.js';
import type { Dim } from '../graph/shape.js';
import { formatShape } from '../graph/shape.js';
import type { AttentionKernel } from '../nn/attention.js';
import { Attention } from '../nn/attention.js';
import type { Params } from '../nn/params.js';
import type { ClearBias, ClearPlan } from './clear-window.js';
import { clearPlan } from './clear-window.js';
import type { SelfAttentionLayer, TokenGrid } from './types.js';

export interface ClearAttentionOptions {
  numHeads: number;
  /** Layout of the image tokens, which follow the text tokens in the sequence. */
  grid: TokenGrid;
  /** Window radius r in tokens (≥ 1): keys with (Δy)² + (Δx)² < r² are seen. */
  radius: number;
  /** Text tokens at the start of the sequence (joint attention); default 0. */
  textTokens?: number;
  /** Side of the pooling cells of the down-sampled keys/values; 1 (default) adds none. */
  downFactor?: number;
  /**
   * The pooling weights w[i, j], [1,1,1,df,1,df,1] as CLEAR stores `processor.spatial_weight`, or
   * [df, df]; default 1/df² (average pooling, the authors' initialisation).
   */
  spatialWeight?: Tensor;
  /** Multiplies q·kᵀ; default 1/√headDim. */
  scale?: number;
  /** Exact tile side for the lowering (clamped to the grid); default: see clearTiling. */
  tileSize?: number;
  /** Force the tiled or the dense plan (tests, benchmarks); default 'auto': see clearPlan. */
  lowering?: 'auto' | 'tiled' | 'dense';
  /** Bound on heads × queries × keys scored per block; default BLOCK_SCORES. */
  blockScores?: number;
}

/**
 * CLEAR attention on packed [B, S, H·D] q/k/v with S = textTokens + grid.height·grid.width (text
 * first); returns [B, S, H·Dv].
 */
export function clearAttention(q: Tensor, k: Tensor, v: Tensor, options: ClearAttentionOptions): Tensor {
  const c = checkOptions(q, k, v, options);
  const { grid, textTokens, downFactor, scale, numHeads } = c;
  const pooled =
    downFactor > 1
      ? {
          k: poolTokens(imagePart(k, textTokens), c),
          v: poolTokens(imagePart(v, textTokens), c),
        }
      : undefined;
  if (isWholeGrid(grid, options.radius)) {
    // The circle holds the whole grid: CLEAR is full attention (plus the pooled keys).
    if (!pooled) return attention(q, k, v, { numHeads, scale });
    const image = attention(imagePart(q, textTokens), concat([k, pooled.k], 1), concat([v, pooled.v], 1), {
      numHeads,
      scale,
    });
    if (textTokens === 0) return image;
    return concat([attention(textPart(q, textTokens), k, v, { numHeads, scale }), image], 1);
  }
  const plan = clearPlan(grid, options.radius, {
    textTokens,
    pooledTokens: pooled ? (pooled.k.shape[1] as number) : 0,
    numHeads,
    channels: c.headDim + c.valueDim,
    tileSize: options.tileSize,
    lowering: options.lowering,
    blockScores: options.blockScores,
  });
  const image = blockImageAttention(q, k, v, c, plan, pooled);
  if (textTokens === 0) return image;
  return concat([attention(textPart(q, textTokens), k, v, { numHeads, scale }), image], 1);
}

/** Whether every pair of grid cells lies strictly inside the circle. */
function isWholeGrid(grid: TokenGrid, radius: number): boolean {
  return (grid.height - 1) ** 2 + (grid.width - 1) ** 2 < radius * radius;
}

interface Checked {
  numHeads: number;
  grid: TokenGrid;
  textTokens: number;
  downFactor: number;
  scale: number;
  batch: Dim;
  headDim: number;
  valueDim: number;
  spatialWeight: Tensor | undefined;
}

/**
 * What is wrong with a CLEAR window, or undefined: the radius is a finite number ≥ 1 (a query always
 * sees itself) and the down factor a positive integer. The one definition; callers pass it on.
 */
export function clearWindowProblem(o: { radius: number; downFactor?: number }): string | undefined {
  if (!(Number.isFinite(o.radius) && o.radius >= 1)) {
    return `radius must be a finite number ≥ 1 (a query always sees itself), got ${o.radius}`;
  }
  const downFactor = o.downFactor ?? 1;
  if (!Number.isInteger(downFactor) || downFactor < 1) {
    return `downFactor must be a positive integer, got ${downFactor}`;
  }
  return undefined;
}

/** The module path and op for errors, as apply() writes them. */
function site(t: Tensor): string {
  const scope = t.graph.currentScope;
  return scope ? `${scope} (clearAttention)` : 'clearAttention';
}

function checkOptions(q: Tensor, k: Tensor, v: Tensor, o: ClearAttentionOptions): Checked {
  const bad = (message: string, code: string): never => {
    throw new GraphBuildError(`${site(q)}: ${message}`, code);
  };
  const positiveInt = (x: number): boolean => Number.isInteger(x) && x >= 1;
  if (!positiveInt(o.numHeads)) bad(`numHeads must be a positive integer, got ${o.numHeads}`, 'ATTR');
  const { grid } = o;
  if (!positiveInt(grid.height) || !positiveInt(grid.width)) {
    bad(`grid must be positive integers, got ${grid.height}×${grid.width}`, 'ATTR');
  }
  const window = clearWindowProblem(o);
  if (window) bad(window, 'ATTR');
  const textTokens = o.textTokens ?? 0;
  if (!Number.isInteger(textTokens) || textTokens < 0) {
    bad(`textTokens must be an integer ≥ 0, got ${textTokens}`, 'ATTR');
  }
  const downFactor = o.downFactor ?? 1;
  if (o.tileSize !== undefined && !positiveInt(o.tileSize)) {
    bad(`tileSize must be a positive integer, got ${o.tileSize}`, 'ATTR');
  }
  for (const [t, name] of [
    [q, 'query'],
    [k, 'key'],
    [v, 'value'],
  ] as const) {
    if (t.rank !== 3) bad(`${name} ${formatShape(t.shape)}: expected packed [B, S, H·D]`, 'SHAPE');
    if (t.dtype !== q.dtype) bad(`${name} dtype ${t.dtype} differs from query ${q.dtype}`, 'DTYPE');
    const hidden = t.shape[2];
    if (typeof hidden !== 'number' || hidden % o.numHeads !== 0) {
      bad(`${name} ${formatShape(t.shape)}: last dim must be a multiple of numHeads=${o.numHeads}`, 'SHAPE');
    }
  }
  if (q.dtype !== 'float32' && q.dtype !== 'float16' && q.dtype !== 'bfloat16') {
    bad(`expected float tensors, got ${q.dtype}`, 'DTYPE');
  }
  const tokens = textTokens + grid.height * grid.width;
  for (const [t, name] of [
    [q, 'query'],
    [k, 'key'],
    [v, 'value'],
  ] as const) {
    if (t.shape[1] !== tokens) {
      bad(
        `${name} ${formatShape(t.shape)} has ${String(t.shape[1])} tokens, but textTokens=${textTokens} + ` +
          `grid ${grid.height}×${grid.width} = ${tokens}; pass the grid of the image tokens`,
        'SHAPE',
      );
    }
    if (String(t.shape[0]) !== String(q.shape[0])) {
      bad(`batch dims differ: query ${formatShape(q.shape)}, ${name} ${formatShape(t.shape)}`, 'SHAPE');
    }
  }
  if (k.shape[2] !== q.shape[2]) {
    bad(`query ${formatShape(q.shape)} and key ${formatShape(k.shape)} differ in width`, 'SHAPE');
  }
  if (grid.height % downFactor !== 0 || grid.width % downFactor !== 0) {
    bad(
      `grid ${grid.height}×${grid.width} is not divisible by downFactor=${downFactor}: the pooling cells ` +
        `tile the grid from its top-left corner; use an image size whose token grid is a multiple of ${downFactor}`,
      'SHAPE',
    );
  }
  let spatialWeight = o.spatialWeight;
  if (spatialWeight) {
    const s = spatialWeight.shape.map(String).join(',');
    const df = String(downFactor);
    if (s !== `1,1,1,${df},1,${df},1` && s !== `${df},${df}`) {
      bad(
        `spatialWeight ${formatShape(spatialWeight.shape)}: expected [1, 1, 1, ${df}, 1, ${df}, 1] or [${df}, ${df}] for downFactor=${df}`,
        'SHAPE',
      );
    }
    if (downFactor === 1) spatialWeight = undefined;
    else spatialWeight = cast(spatialWeight, q.dtype);
  }
  const headDim = (q.shape[2] as number) / o.numHeads;
  const scale = o.scale ?? 1 / Math.sqrt(headDim);
  if (!Number.isFinite(scale)) bad(`scale must be finite, got ${scale}`, 'ATTR');
  return {
    numHeads: o.numHeads,
    grid,
    textTokens,
    downFactor,
    scale,
    batch: q.shape[0],
    headDim,
    valueDim: (v.shape[2] as number) / o.numHeads,
    spatialWeight,
  };
}

function textPart(x: Tensor, textTokens: number): Tensor {
  return slice(x, { axis: 1, end: textTokens });
}

function imagePart(x: Tensor, textTokens: number): Tensor {
  return textTokens === 0 ? x : slice(x, { axis: 1, start: textTokens });
}

/**
 * Kd[a, b] = Σ_{i,j<df} w[i, j]·X[a·df + i, b·df + j] per channel (§1.4), cells aligned top-left,
 * flattened row-major: [B, N, C] → [B, N/df², C].
 */
function poolTokens(image: Tensor, c: Checked): Tensor {
  const { grid, downFactor: df, batch } = c;
  const channels = image.shape[2] as number;
  const weight = c.spatialWeight
    ? reshape(c.spatialWeight, [1, 1, df, 1, df, 1])
    : image.graph.constant(new Float32Array(df * df).fill(1 / (df * df)), 'float32', [1, 1, df, 1, df, 1]);
  const cells = reshape(image, [batch, grid.height / df, df, grid.width / df, df, channels]);
  const pooled = sum(mul(cells, cast(weight, image.dtype)), [2, 4]);
  return reshape(pooled, [batch, (grid.height / df) * (grid.width / df), channels]);
}

/** [B, L, H·d] → [B, H, L, d]. */
function heads(x: Tensor, c: Checked, d: number): Tensor {
  return transpose(reshape(x, [c.batch, x.shape[1], c.numHeads, d]), [0, 2, 1, 3]);
}

/**
 * softmax over the allowed keys of `scores` [B, H, tiles, queries, keys]: the additive bias (0 or
 * MASKED) applied first. A masked score's exp underflows to zero — or, in MLAS's exp, to a
 * denormal, which is why the runtime flushes denormals by default (RuntimeOptions.flushDenormals):
 * without it CLEAR r = 16 at 16K tokens took 1202 ms instead of 877 ms.
 */
function maskedSoftmax(scores: Tensor, bias: Tensor): Tensor {
  return softmax(add(scores, cast(bias, scores.dtype)), -1);
}

/**
 * Image queries by blocks (§1.6.2): each block gathers its queries and its tiles' keys/values from
 * head-major copies of q, k, v, scores them under the plan's mask, and the block outputs are put
 * back in token order. [B, S, H·D] inputs → [B, N, H·Dv] for the image tokens.
 */
function blockImageAttention(
  q: Tensor,
  k: Tensor,
  v: Tensor,
  c: Checked,
  plan: ClearPlan,
  pooled: { k: Tensor; v: Tensor } | undefined,
): Tensor {
  const { grid, batch: b, numHeads: h, valueDim: dv } = c;
  const g = q.graph;
  const imageTokens = grid.height * grid.width;
  // Head-major sources: queries [B, H, S, D]; keys/values [B, H, S (+ pooled), ·].
  const qHeads = heads(q, c, c.headDim);
  const source = (x: Tensor, p: Tensor | undefined, d: number): Tensor =>
    heads(p ? concat([x, p], 1) : x, c, d);
  const kHeads = source(k, pooled?.k, c.headDim);
  const vHeads = source(v, pooled?.v, dv);

  const biasTensors = new Map<ClearBias, Tensor>();
  const outputs = plan.blocks.map((block) => {
    const { tiles, tileTokens, keyCount } = block;
    const queries = gather(qHeads, g.constant(block.queries, 'int64', [tiles, tileTokens]), 2);
    let keys: Tensor;
    let values: Tensor;
    if (block.keys) {
      const index = g.constant(block.keys, 'int64', [tiles, keyCount]);
      keys = gather(kHeads, index, 2);
      values = gather(vHeads, index, 2);
    } else {
      // Every key: one "tile" of the block's queries against the whole sequence.
      keys = unsqueeze(kHeads, 2);
      values = unsqueeze(vHeads, 2);
    }
    let bias = biasTensors.get(block.bias);
    if (!bias) {
      bias = g.constant(block.bias.data, 'float32', block.bias.shape);
      biasTensors.set(block.bias, bias);
    }
    const scores = mul(matmul(queries, transpose(keys, [0, 1, 2, 4, 3])), c.scale);
    const out = matmul(maskedSoftmax(scores, bias), values);
    return reshape(out, [b, h, tiles * tileTokens, dv]);
  });

  // Back to token order: [B, H, slots, Dv] → [B, slots, H·Dv] → the image tokens, in raster order.
  const all = outputs.length === 1 ? outputs[0] : concat(outputs, 2);
  const slots = all.shape[2] as number;
  const rows = reshape(transpose(all, [0, 2, 1, 3]), [b, slots, h * dv]);
  if (!plan.order) return rows;
  return gather(rows, g.constant(plan.order, 'int64', [imageTokens]), 1);
}

/**
 * The pooling weights w of an attention module: `processor.spatial_weight` [1,1,1,df,1,df,1], the
 * parameter CLEAR's down-sampling processor adds to the module it is set on (§1.1, §1.9), when the
 * checkpoint (or a CLEAR file overlaid on it) has one; undefined for downFactor 1 or when absent,
 * where clearAttention pools with the 1/df² initialisation.
 */
export function clearSpatialWeight(attn: Params, downFactor: number): Tensor | undefined {
  if (downFactor <= 1) return undefined;
  return attn.child('processor').optional('spatial_weight', [1, 1, 1, downFactor, 1, downFactor, 1]);
}

/**
 * A diffusers `Attention` self-attention module with CLEAR as its kernel: to_q/to_k/to_v (biases
 * per `layer.qkvBias`), CLEAR over `layer.grid` (after `layer.textTokens` text tokens), to_out.0.
 * With downFactor > 1 the pooling weights are the checkpoint's `processor.spatial_weight`
 * [1,1,1,df,1,df,1] (§1.9) when it has one, else the 1/df² initialisation.
 */
export function clearSelfAttention(
  layer: SelfAttentionLayer,
  choice: { radius: number; downFactor?: number; tileSize?: number },
): Tensor {
  const { params: p, x, dim, heads, qkvBias } = layer;
  const downFactor = choice.downFactor ?? 1;
  const spatialWeight = clearSpatialWeight(p, downFactor);
  const kernel: AttentionKernel = (q, k, v, o) =>
    clearAttention(q, k, v, {
      numHeads: o.heads,
      grid: layer.grid,
      radius: choice.radius,
      textTokens: layer.textTokens,
      downFactor,
      spatialWeight,
      tileSize: choice.tileSize,
    });
  return Attention(p, x, undefined, { queryDim: dim, heads, dimHead: dim / heads, bias: qkvBias, kernel });
}
