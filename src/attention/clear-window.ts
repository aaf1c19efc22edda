/**
 * The plan behind CLEAR's block-sparse lowering (methods/clear_linfusion.md §1.6.2): which queries
 * are computed together, which keys each group reads, and which (query, key) pairs are allowed.
 *
 * Tiled plan: query tiles of ty×tx tokens, each reading one window of the K/V grid reached from it,
 * R = ⌈r⌉−1 (the largest offset o with o² < r²) around the tile. The window is the
 * (ty+2Ry)×(tx+2Rx) box less its corners that no query of the tile can see (the tile grown by the
 * disc: ≈ t² + 4tR + πR² keys instead of (t+2R)²), clipped to the grid; every text and pooled key is
 * appended to it. Tiles whose windows are clipped alike (the same rows and columns of the box lie
 * in the grid) share one [tile, window] bias: all interior tiles, plus a few groups along the
 * border. Tiles are processed in blocks of a bounded size, so no tensor grows with the grid beyond
 * the inputs, the outputs and the index constants.
 *
 * Dense plan, where the windows would hold about as many keys as the whole sequence (r comparable
 * to the grid): blocks of whole image rows attend to every key under an explicit [rows, keys] mask.
 *
 * Everything here depends only on the grid, the radius and the key counts, so it becomes graph
 * constants.
 */
import type { TokenGrid } from './types.js';

/**
 * Smallest default tile side. Below it the per-tile products ([t², D] × [D, W]) are too small for
 * MatMul to run well, and the gathered K/V (∝ (1 + 2R/t)²) grows.
 */
export const MIN_TILE = 4;

/**
 * Cost of gathering one K or V value into a window, in units of one (query, key) score (its two
 * dot products, mask and softmax). Measured on the CPU EP at D = 72 (PixArt-α): a window key costs
 * about 2.4 ns per query of its tile and 0.38 ns per gathered float, per head.
 */
export const GATHER_COST = 0.16;

/**
 * Stands for −∞ in the additive biases: finite, so that a padding query whose keys are all masked
 * gets a uniform softmax instead of NaN (its output is dropped).
 */
export const MASKED = -1e30;

/**
 * Largest dense bias (4 bytes per image query and key) a plan may embed; beyond it the tiled plan
 * is used even where dense would be cheaper.
 */
export const DENSE_BIAS_BYTES = 256 * 2 ** 20;

/**
 * Default bound on the scores of one block (heads × queries × keys, per batch item): 2 Mi floats,
 * 8 MiB. Smaller blocks keep each block's scores in cache, larger ones mean fewer and larger
 * products; at PixArt-α width (16 heads × 72) on 2 threads 2 Mi was 7–12% faster than 1 Mi or 4 Mi
 * at 4K and 16K tokens.
 */
export const BLOCK_SCORES = 1 << 21;

export interface ClearTiling {
  grid: TokenGrid;
  radius: number;
  /** Largest |Δy| and |Δx| a query can reach: ⌈r⌉−1, capped at the grid size minus one. */
  reach: { y: number; x: number };
  tile: { height: number; width: number };
  /** Tiles per column and per row: the query grid is padded to rows·tile.height × cols·tile.width. */
  tiles: { rows: number; cols: number };
  /**
   * The window's bounding box, (tile.height + 2·reach.y) × (tile.width + 2·reach.x), and the
   * positions in it, row-major, that some query of the tile sees: [u0, w0, u1, w1, …]. Position
   * (u, w) of tile (a, b) is grid cell (a·tile.height + u − reach.y, b·tile.width + w − reach.x).
   */
  window: { height: number; width: number; positions: Int32Array };
}

/** What the cost of a window key depends on besides the tiling. */
export interface WindowCostModel {
  /** Keys every image query sees in addition to its window (text, pooled); default 0. */
  sharedKeys?: number;
  /** Per-head width of one key plus one value, D + Dv; default 128. */
  channels?: number;
}

/** The tiling for one tile target, balanced so the tiles of an axis cover it with the least padding. */
function tilingFor(grid: TokenGrid, radius: number, target: number): ClearTiling {
  const reachOf = (side: number): number => Math.min(Math.ceil(radius) - 1, side - 1);
  const reach = { y: reachOf(grid.height), x: reachOf(grid.width) };
  // 9 columns at target 4 → 3 tiles of 3, not 3 of 4.
  const side = (length: number): number => {
    const t = Math.min(target, length);
    return Math.ceil(length / Math.ceil(length / t));
  };
  const tile = { height: side(grid.height), width: side(grid.width) };
  const tiles = { rows: Math.ceil(grid.height / tile.height), cols: Math.ceil(grid.width / tile.width) };
  const box = { height: tile.height + 2 * reach.y, width: tile.width + 2 * reach.x };
  // Distance from window position (u, w) to the nearest query of the tile, which sits at
  // (reach.y … reach.y + tile.height − 1, reach.x … ) in window coordinates.
  const gap = (p: number, lo: number, size: number): number => Math.max(lo - p, 0, p - (lo + size - 1));
  const positions: number[] = [];
  for (let u = 0; u < box.height; u++) {
    for (let w = 0; w < box.width; w++) {
      const dy = gap(u, reach.y, tile.height);
      const dx = gap(w, reach.x, tile.width);
      if (dy * dy + dx * dx < radius * radius) positions.push(u, w);
    }
  }
  return { grid, radius, reach, tile, tiles, window: { ...box, positions: Int32Array.from(positions) } };
}

/** The rows [lo, hi) of the window box of tile row `a` that lie in the grid (same for columns). */
function inGridRange(tile: number, reach: number, length: number, box: number, a: number): [number, number] {
  const top = a * tile - reach;
  return [Math.max(0, -top), Math.min(box, length - top)];
}

/** Window positions (indices into `window.positions`) inside rows [r0, r1) and columns [c0, c1) of the box. */
function positionsIn(t: ClearTiling, [r0, r1]: [number, number], [c0, c1]: [number, number]): number[] {
  const p = t.window.positions;
  const out: number[] = [];
  for (let key = 0; key < p.length / 2; key++) {
    const u = p[2 * key];
    const w = p[2 * key + 1];
    if (u >= r0 && u < r1 && w >= c0 && w < c1) out.push(key);
  }
  return out;
}

/** The tile rows (or columns) grouped by the part of the window box that lies in the grid. */
function clipGroups(
  tile: number,
  reach: number,
  length: number,
  box: number,
  count: number,
): Map<string, number[]> {
  const groups = new Map<string, number[]>();
  for (let a = 0; a < count; a++) {
    const key = inGridRange(tile, reach, length, box, a).join(',');
    groups.set(key, [...(groups.get(key) ?? []), a]);
  }
  return groups;
}

/**
 * Estimated cost of a tiled plan in score units: every query slot (padding included) scores every
 * key of its tile's clipped window, and every tile gathers those keys and values once.
 */
export function tiledCost(t: ClearTiling, model: WindowCostModel = {}): number {
  const { tileTokens } = tilingSizes(t);
  const perKey = tileTokens + GATHER_COST * (model.channels ?? 128);
  let cost = 0;
  for (const [rows, as] of clipGroups(
    t.tile.height,
    t.reach.y,
    t.grid.height,
    t.window.height,
    t.tiles.rows,
  )) {
    for (const [cols, bs] of clipGroups(
      t.tile.width,
      t.reach.x,
      t.grid.width,
      t.window.width,
      t.tiles.cols,
    )) {
      const range = (k: string): [number, number] => k.split(',').map(Number) as [number, number];
      const keys = positionsIn(t, range(rows), range(cols)).length + (model.sharedKeys ?? 0);
      cost += as.length * bs.length * keys * perKey;
    }
  }
  return cost;
}

/**
 * The tiling of a grid for a radius. With `tileSize` the tile side is exactly that (clamped to the
 * grid), for tests and benchmarks. Otherwise the side from MIN_TILE to 2⌈r⌉ with the least
 * `tiledCost`: a larger tile scores more keys it does not need (≈ (t+2R)² per query), a smaller one
 * gathers more copies of each key ((1 + 2R/t)²) and runs smaller products. At D = 72 this picks
 * t = 6–8 for r = 8–16 and t ≈ 12 for r = 32.
 */
export function clearTiling(
  grid: TokenGrid,
  radius: number,
  tileSize?: number,
  model: WindowCostModel = {},
): ClearTiling {
  if (tileSize !== undefined) return tilingFor(grid, radius, tileSize);
  let best: { tiling: ClearTiling; cost: number } | undefined;
  const largest = Math.max(MIN_TILE, 2 * Math.ceil(radius));
  for (let target = MIN_TILE; target <= largest; target++) {
    const tiling = tilingFor(grid, radius, target);
    const cost = tiledCost(tiling, model);
    if (!best || cost < best.cost) best = { tiling, cost };
  }
  return (best as { tiling: ClearTiling }).tiling;
}

/** Number of tiles, tokens per tile and keys per window (without shared keys). */
export function tilingSizes(t: ClearTiling): { tiles: number; tileTokens: number; windowKeys: number } {
  return {
    tiles: t.tiles.rows * t.tiles.cols,
    tileTokens: t.tile.height * t.tile.width,
    windowKeys: t.window.positions.length / 2,
  };
}

/**
 * Writes the [tileTokens, keys] bias of a tile's window into `out` (row stride `stride`, from column
 * `offset`): 0 where (Δy)² + (Δx)² < r² between the query at (i, j) in the tile and window position
 * `keys[n]` (§1.3, strict), else MASKED.
 */
function writeCircleBias(
  t: ClearTiling,
  keys: readonly number[],
  out: Float32Array,
  stride: number,
  offset: number,
): void {
  const p = t.window.positions;
  const r2 = t.radius * t.radius;
  for (let i = 0; i < t.tile.height; i++) {
    for (let j = 0; j < t.tile.width; j++) {
      const row = (i * t.tile.width + j) * stride + offset;
      keys.forEach((key, n) => {
        const dy = i + t.reach.y - p[2 * key];
        const dx = j + t.reach.x - p[2 * key + 1];
        out[row + n] = dy * dy + dx * dx < r2 ? 0 : MASKED;
      });
    }
  }
}

/** An additive bias one or more blocks share: float32 [1, tileTokens, keys], 0 or MASKED. */
export interface ClearBias {
  data: Float32Array;
  shape: [number, number, number];
}

/**
 * Queries computed together: `tiles` groups of `tileTokens` queries, each group scoring its own
 * `keyCount` keys under one softmax.
 */
export interface ClearBlock {
  /** [tiles·tileTokens] rows of the query sequence ([text | image]); padding slots repeat a real row. */
  queries: BigInt64Array;
  tiles: number;
  tileTokens: number;
  /** [tiles·keyCount] rows of the key sequence [text | image | pooled]; undefined: every key, in order. */
  keys: BigInt64Array | undefined;
  keyCount: number;
  /** Which query attends which key; the same object for blocks that share it. */
  bias: ClearBias;
}

export interface ClearPlan {
  kind: 'tiled' | 'dense';
  /** The tiling of a tiled plan. */
  tiling: ClearTiling | undefined;
  blocks: ClearBlock[];
  /**
   * [N] int64: for each image token in raster order, its row among the concatenated block outputs;
   * undefined where the blocks already produce the image tokens in raster order.
   */
  order: BigInt64Array | undefined;
}

export interface ClearPlanOptions {
  textTokens: number;
  /** Down-sampled keys appended after the image keys. */
  pooledTokens: number;
  numHeads: number;
  /** D + Dv per head. */
  channels: number;
  tileSize?: number;
  /** 'auto' (default) takes the cheaper plan by the cost model. */
  lowering?: 'auto' | 'tiled' | 'dense';
  /** Bound on heads × queries × keys per block; default BLOCK_SCORES. */
  blockScores?: number;
}

/** The plan for CLEAR over `grid` with radius r; see the file comment. */
export function clearPlan(grid: TokenGrid, radius: number, o: ClearPlanOptions): ClearPlan {
  const imageTokens = grid.height * grid.width;
  const sharedKeys = o.textTokens + o.pooledTokens;
  const tiling = clearTiling(grid, radius, o.tileSize, { sharedKeys, channels: o.channels });
  const allKeys = sharedKeys + imageTokens;
  const kind =
    o.lowering === 'tiled' || o.lowering === 'dense'
      ? o.lowering
      : imageTokens * allKeys <= tiledCost(tiling, { sharedKeys, channels: o.channels }) &&
          imageTokens * allKeys * 4 <= DENSE_BIAS_BYTES
        ? 'dense'
        : 'tiled';
  const budget = o.blockScores ?? BLOCK_SCORES;
  return kind === 'dense' ? densePlan(grid, radius, o, budget) : tiledPlan(tiling, o, budget);
}

/** Split `count` items into runs of at most `per`, as evenly as possible. */
function runs(count: number, per: number): number[] {
  const n = Math.ceil(count / Math.max(1, per));
  return Array.from({ length: n }, (_, i) => Math.floor(((i + 1) * count) / n) - Math.floor((i * count) / n));
}

function tiledPlan(t: ClearTiling, o: ClearPlanOptions, budget: number): ClearPlan {
  const { grid } = t;
  const { tileTokens } = tilingSizes(t);
  const T = o.textTokens;
  const imageTokens = grid.height * grid.width;
  const p = t.window.positions;
  const order = new BigInt64Array(imageTokens);
  const blocks: ClearBlock[] = [];
  // Per block, the image token each query slot computes (−1: padding).
  const owners = new Map<ClearBlock, Int32Array>();
  const rowGroups = clipGroups(t.tile.height, t.reach.y, grid.height, t.window.height, t.tiles.rows);
  const colGroups = clipGroups(t.tile.width, t.reach.x, grid.width, t.window.width, t.tiles.cols);
  for (const [rowKey, as] of rowGroups) {
    for (const [colKey, bs] of colGroups) {
      const range = (k: string): [number, number] => k.split(',').map(Number) as [number, number];
      const window = positionsIn(t, range(rowKey), range(colKey));
      // Text keys first, pooled keys last, as in CLEAR's key order; every query sees them.
      const keyCount = T + window.length + o.pooledTokens;
      const bias: ClearBias = {
        data: new Float32Array(tileTokens * keyCount),
        shape: [1, tileTokens, keyCount],
      };
      writeCircleBias(t, window, bias.data, keyCount, T);
      // Tiles in raster order: neighbouring tiles of a block read overlapping windows.
      const tiles = as.flatMap((a) => bs.map((b) => [a, b] as const));
      const perBlock = Math.max(1, Math.floor(budget / (o.numHeads * tileTokens * keyCount)));
      let first = 0;
      for (const count of runs(tiles.length, perBlock)) {
        const queries = new BigInt64Array(count * tileTokens);
        const keys = new BigInt64Array(count * keyCount);
        const tokens = new Int32Array(count * tileTokens).fill(-1);
        tiles.slice(first, first + count).forEach(([a, b], g) => {
          for (let i = 0; i < tileTokens; i++) {
            const y = a * t.tile.height + Math.floor(i / t.tile.width);
            const x = b * t.tile.width + (i % t.tile.width);
            // A padding query repeats a real one; its output is dropped.
            const real = y < grid.height && x < grid.width;
            queries[g * tileTokens + i] = BigInt(T + (real ? y * grid.width + x : 0));
            if (real) tokens[g * tileTokens + i] = y * grid.width + x;
          }
          const base = g * keyCount;
          for (let j = 0; j < T; j++) keys[base + j] = BigInt(j);
          window.forEach((key, n) => {
            const y = a * t.tile.height + p[2 * key] - t.reach.y;
            const x = b * t.tile.width + p[2 * key + 1] - t.reach.x;
            keys[base + T + n] = BigInt(T + y * grid.width + x);
          });
          for (let j = 0; j < o.pooledTokens; j++) {
            keys[base + T + window.length + j] = BigInt(T + imageTokens + j);
          }
        });
        const block = { queries, tiles: count, tileTokens, keys, keyCount, bias };
        blocks.push(block);
        owners.set(block, tokens);
        first += count;
      }
    }
  }
  // Largest blocks first: ORT's memory planner then reuses their buffers for the smaller ones
  // (smallest first doubled the peak memory at r = 32).
  const sorted = blocks
    .map((block, i) => ({ block, i }))
    .sort((x, y) => y.block.tiles * y.block.keyCount - x.block.tiles * x.block.keyCount || x.i - y.i);
  let slots = 0;
  for (const { block } of sorted) {
    (owners.get(block) as Int32Array).forEach((token, slot) => {
      if (token >= 0) order[token] = BigInt(slots + slot);
    });
    slots += block.tiles * tileTokens;
  }
  return { kind: 'tiled', tiling: t, blocks: sorted.map((x) => x.block), order };
}

function densePlan(grid: TokenGrid, radius: number, o: ClearPlanOptions, budget: number): ClearPlan {
  const T = o.textTokens;
  const imageTokens = grid.height * grid.width;
  const keyCount = T + imageTokens + o.pooledTokens;
  const rowsPerBlock = Math.max(1, Math.floor(budget / (o.numHeads * keyCount * grid.width)));
  const r2 = radius * radius;
  const blocks: ClearBlock[] = [];
  let top = 0;
  for (const rows of runs(grid.height, rowsPerBlock)) {
    const tokens = rows * grid.width;
    const queries = new BigInt64Array(tokens);
    const data = new Float32Array(tokens * keyCount);
    for (let i = 0; i < tokens; i++) {
      const yq = top + Math.floor(i / grid.width);
      const xq = i % grid.width;
      queries[i] = BigInt(T + yq * grid.width + xq);
      const row = i * keyCount + T;
      for (let yk = 0; yk < grid.height; yk++) {
        for (let xk = 0; xk < grid.width; xk++) {
          data[row + yk * grid.width + xk] = (yq - yk) ** 2 + (xq - xk) ** 2 < r2 ? 0 : MASKED;
        }
      }
    }
    blocks.push({
      queries,
      tiles: 1,
      tileTokens: tokens,
      keys: undefined,
      keyCount,
      bias: { data, shape: [1, tokens, keyCount] },
    });
    top += rows;
  }
  return { kind: 'dense', tiling: undefined, blocks, order: undefined };
}
