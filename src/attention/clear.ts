/**
 * CLEAR (arXiv 2412.16112): each image query attends, in one softmax, to every text key, to every
 * down-pooled key (downFactor > 1) and to the image keys inside a circle of radius r on the token
 * grid, (Δy)² + (Δx)² < r² (methods/clear_linfusion.md §1.3–§1.5). Text queries attend to all text
 * and image keys and never to the pooled ones.
 *
 * Lowering (§1.6.2): text queries are plain attention (fused MultiHeadAttention); image queries are
 * block-sparse over 2-D tiles — one Gather per K/V brings each tile its window, and every product
 * is one batched MatMul over [B, H, tiles, …]. Without pooling the cost and every tensor are
 * linear in the number of image tokens.
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
  pad,
  reshape,
  slice,
  softmax,
  split,
  sum,
  transpose,
} from '../graph/ops/index.js';
import type { Dim } from '../graph/shape.js';
import { formatShape } from '../graph/shape.js';
import { Linear } from '../nn/layers.js';
import type { ClearTiling } from './clear-window.js';
import { circleBias, clearTiling, tilingSizes, windowIndices, windowValidityBias } from './clear-window.js';
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
  const tiling = clearTiling(grid, options.radius, options.tileSize);
  const image = tiledImageAttention(q, k, v, c, tiling, pooled);
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
  if (!(Number.isFinite(o.radius) && o.radius >= 1)) {
    bad(`radius must be a finite number ≥ 1 (a query always sees itself), got ${o.radius}`, 'ATTR');
  }
  const textTokens = o.textTokens ?? 0;
  if (!Number.isInteger(textTokens) || textTokens < 0) {
    bad(`textTokens must be an integer ≥ 0, got ${textTokens}`, 'ATTR');
  }
  const downFactor = o.downFactor ?? 1;
  if (!positiveInt(downFactor)) bad(`downFactor must be a positive integer, got ${downFactor}`, 'ATTR');
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

/** Image queries, tiled (§1.6.2): [B, S, H·D] inputs → [B, N, H·Dv] outputs for the image tokens. */
function tiledImageAttention(
  q: Tensor,
  k: Tensor,
  v: Tensor,
  c: Checked,
  t: ClearTiling,
  pooled: { k: Tensor; v: Tensor } | undefined,
): Tensor {
  const { grid, batch: b, numHeads: h, headDim: d, valueDim: dv, textTokens } = c;
  const g = q.graph;
  const { tiles, tileTokens, windowKeys } = tilingSizes(t);
  const queryRows = t.tiles.rows * t.tile.height;
  const queryCols = t.tiles.cols * t.tile.width;
  const paddedQueries = tiles * tileTokens;

  // Queries, scaled once, padded to whole tiles and laid out tile by tile: [B, H, tiles·t², D].
  const qGrid = padGrid(
    reshape(mul(imagePart(q, textTokens), c.scale), [b, grid.height, grid.width, h * d]),
    [
      [0, queryRows - grid.height],
      [0, queryCols - grid.width],
    ],
  );
  const qTiled = transpose(
    reshape(qGrid, [b, t.tiles.rows, t.tile.height, t.tiles.cols, t.tile.width, h, d]),
    [0, 5, 1, 3, 2, 4, 6],
  );
  const qFlat = reshape(qTiled, [b, h, paddedQueries, d]);
  const qTiles = reshape(qFlat, [b, h, tiles, tileTokens, d]);

  // Each tile's window of keys/values, gathered from the grid padded by the reach: [B, H, tiles, W, ·].
  const index = g.constant(windowIndices(t), 'int64', [tiles, windowKeys]);
  const window = (x: Tensor, width: number): Tensor => {
    const padded = padGrid(reshape(imagePart(x, textTokens), [b, grid.height, grid.width, h * width]), [
      [t.reach.y, t.paddedKeys.height - grid.height - t.reach.y],
      [t.reach.x, t.paddedKeys.width - grid.width - t.reach.x],
    ]);
    const flat = reshape(padded, [b, t.paddedKeys.height * t.paddedKeys.width, h, width]);
    return gather(transpose(flat, [0, 2, 1, 3]), index, 2);
  };
  const kWindow = window(k, d);
  const vWindow = window(v, dv);

  const circle = g.constant(circleBias(t), 'float32', [tileTokens, windowKeys]);
  const validity = g.constant(windowValidityBias(t), 'float32', [tiles, 1, windowKeys]);
  let windowScores = matmul(qTiles, transpose(kWindow, [0, 1, 2, 4, 3]));
  windowScores = add(add(windowScores, cast(circle, q.dtype)), cast(validity, q.dtype));

  // Keys every image query sees: text first, pooled last, as in CLEAR's key order.
  const shared = (keys: Tensor): Tensor => {
    const scores = matmul(qFlat, transpose(heads(keys, c, d), [0, 1, 3, 2]));
    return reshape(scores, [b, h, tiles, tileTokens, keys.shape[1]]);
  };
  const parts: { scores: Tensor; values: Tensor | undefined }[] = [];
  if (textTokens > 0)
    parts.push({ scores: shared(textPart(k, textTokens)), values: textPart(v, textTokens) });
  parts.push({ scores: windowScores, values: undefined });
  if (pooled) parts.push({ scores: shared(pooled.k), values: pooled.v });

  const probs = softmax(
    concat(
      parts.map((p) => p.scores),
      -1,
    ),
    -1,
  );
  const pieces =
    parts.length === 1
      ? [probs]
      : split(
          probs,
          parts.map((p) => p.scores.shape[4] as number),
          -1,
        );
  let out: Tensor | undefined;
  parts.forEach((p, i) => {
    const term = p.values
      ? reshape(
          matmul(reshape(pieces[i], [b, h, paddedQueries, p.values.shape[1]]), heads(p.values, c, dv)),
          [b, h, tiles, tileTokens, dv],
        )
      : matmul(pieces[i], vWindow);
    out = out ? add(out, term) : term;
  });

  // Back to token order, cropping the query padding: [B, N, H·Dv].
  const perTile = reshape(out as Tensor, [b, h, t.tiles.rows, t.tiles.cols, t.tile.height, t.tile.width, dv]);
  const rows = reshape(transpose(perTile, [0, 2, 4, 3, 5, 1, 6]), [b, queryRows, queryCols, h * dv]);
  const cropped =
    queryRows === grid.height && queryCols === grid.width
      ? rows
      : slice(rows, [
          { axis: 1, end: grid.height },
          { axis: 2, end: grid.width },
        ]);
  return reshape(cropped, [b, grid.height * grid.width, h * dv]);
}

/** Zero-pad axes 1 and 2 of [B, rows, cols, C]. */
function padGrid(x: Tensor, [rows, cols]: [[number, number], [number, number]]): Tensor {
  if (rows[0] === 0 && rows[1] === 0 && cols[0] === 0 && cols[1] === 0) return x;
  return pad(x, [[0, 0], rows, cols, [0, 0]]);
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
  const { params: p, x, dim, heads: numHeads, qkvBias } = layer;
  const q = Linear(p.child('to_q'), x, dim, dim, qkvBias);
  const k = Linear(p.child('to_k'), x, dim, dim, qkvBias);
  const v = Linear(p.child('to_v'), x, dim, dim, qkvBias);
  const downFactor = choice.downFactor ?? 1;
  const spatialWeight =
    downFactor > 1
      ? p.child('processor').optional('spatial_weight', [1, 1, 1, downFactor, 1, downFactor, 1])
      : undefined;
  const o = p.scope(() =>
    clearAttention(q, k, v, {
      numHeads,
      grid: layer.grid,
      radius: choice.radius,
      textTokens: layer.textTokens,
      downFactor,
      spatialWeight,
      tileSize: choice.tileSize,
    }),
  );
  return Linear(p.child('to_out').child(0), o, dim, dim, true);
}
