/**
 * The 2-D tiling behind CLEAR's block-sparse lowering (methods/clear_linfusion.md §1.6.2): query
 * tiles of ty×tx tokens, each reading one window of a K/V grid padded by the reach R = ⌈r⌉−1 (the
 * largest offset o with o² < r²). The window is the (ty+2Ry)×(tx+2Rx) box less its corners that no
 * query of the tile can see (the tile grown by the disc: ≈ t² + 4tR + πR² keys instead of
 * (t+2R)²). Everything here depends only on the grid, the radius and the tile, so it becomes graph
 * constants; all sizes are linear in the token count.
 */
import type { TokenGrid } from './types.js';

/**
 * Smallest default tile side. Below it the per-tile products ([t², D] × [D, W]) are too small for
 * MatMul to run well, and the gathered K/V (∝ (1 + 2R/t)²) grows.
 */
export const MIN_TILE = 4;

/**
 * Stands for −∞ in the additive biases. Finite so that a padded query row whose window holds no
 * valid key (it is cropped away afterwards) gets a uniform softmax instead of NaN, which would
 * otherwise leak into gradients through Softmax's VJP. exp(MASKED − max) is exactly 0 in float32.
 */
export const MASKED = -1e30;

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
   * positions in it, row-major, that some query of the tile sees: [u0, w0, u1, w1, …].
   */
  window: { height: number; width: number; positions: Int32Array };
  /** The K/V grid after padding by the reach (and by the query padding at the bottom and right). */
  paddedKeys: { height: number; width: number };
}

/**
 * Tile sides for a radius: a target of max(⌈r/2⌉, MIN_TILE), then balanced so the tiles of an
 * axis cover it with the least padding (9 columns at target 4 → 3 tiles of 3, not 3 of 4).
 * Per query, the scores (MatMul, bias, Softmax, MatMul) grow with the window ≈ (t+2R)² keys,
 * while the gathered K/V grow as (1 + 2R/t)²·D: a larger tile wastes more keys per query, a
 * smaller one gathers more copies of each key and makes the per-tile MatMuls small. At D = 72 the
 * two balance near t ≈ r/2; on the CPU EP (64×64 grid, 16 heads, 1 thread) t = r/2 was the
 * fastest or within noise of it for r = 2, 4, 8, 16, and t ≥ r was 1.3–1.6× slower at r ≥ 8.
 * `tileSize` overrides the target exactly (clamped to the grid), for tests and benchmarks.
 */
export function clearTiling(grid: TokenGrid, radius: number, tileSize?: number): ClearTiling {
  const reachOf = (side: number): number => Math.min(Math.ceil(radius) - 1, side - 1);
  const reach = { y: reachOf(grid.height), x: reachOf(grid.width) };
  const side = (length: number): number => {
    if (tileSize !== undefined) return Math.min(tileSize, length);
    const target = Math.min(Math.max(Math.ceil(radius / 2), MIN_TILE), length);
    return Math.ceil(length / Math.ceil(length / target));
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
  return {
    grid,
    radius,
    reach,
    tile,
    tiles,
    window: { ...box, positions: Int32Array.from(positions) },
    paddedKeys: {
      height: tiles.rows * tile.height + 2 * reach.y,
      width: tiles.cols * tile.width + 2 * reach.x,
    },
  };
}

/** Number of tiles, tokens per tile and keys per window. */
export function tilingSizes(t: ClearTiling): { tiles: number; tileTokens: number; windowKeys: number } {
  return {
    tiles: t.tiles.rows * t.tiles.cols,
    tileTokens: t.tile.height * t.tile.width,
    windowKeys: t.window.positions.length / 2,
  };
}

/**
 * [tiles, windowKeys] int64: for each tile (row-major) the flat indices, in the padded K/V grid,
 * of its window's keys (row-major inside the window).
 */
export function windowIndices(t: ClearTiling): BigInt64Array {
  const { tiles, windowKeys } = tilingSizes(t);
  const p = t.window.positions;
  const out = new BigInt64Array(tiles * windowKeys);
  let n = 0;
  for (let a = 0; a < t.tiles.rows; a++) {
    for (let b = 0; b < t.tiles.cols; b++) {
      for (let key = 0; key < windowKeys; key++) {
        const y = a * t.tile.height + p[2 * key];
        const x = b * t.tile.width + p[2 * key + 1];
        out[n++] = BigInt(y * t.paddedKeys.width + x);
      }
    }
  }
  return out;
}

/**
 * [tiles, 1, windowKeys] float32: 0 where the window key is a real token, MASKED where it is
 * padding outside the grid.
 */
export function windowValidityBias(t: ClearTiling): Float32Array {
  const { tiles, windowKeys } = tilingSizes(t);
  const p = t.window.positions;
  const out = new Float32Array(tiles * windowKeys);
  let n = 0;
  for (let a = 0; a < t.tiles.rows; a++) {
    for (let b = 0; b < t.tiles.cols; b++) {
      for (let key = 0; key < windowKeys; key++) {
        const y = a * t.tile.height + p[2 * key] - t.reach.y;
        const x = b * t.tile.width + p[2 * key + 1] - t.reach.x;
        out[n++] = y >= 0 && y < t.grid.height && x >= 0 && x < t.grid.width ? 0 : MASKED;
      }
    }
  }
  return out;
}

/**
 * [tileTokens, windowKeys] float32, shared by every tile: 0 where (Δy)² + (Δx)² < r² between the
 * query at (i, j) in the tile and the window key at (u, w) (§1.3, strict), else MASKED.
 */
export function circleBias(t: ClearTiling): Float32Array {
  const { tileTokens, windowKeys } = tilingSizes(t);
  const p = t.window.positions;
  const out = new Float32Array(tileTokens * windowKeys);
  const r2 = t.radius * t.radius;
  let n = 0;
  for (let i = 0; i < t.tile.height; i++) {
    for (let j = 0; j < t.tile.width; j++) {
      for (let key = 0; key < windowKeys; key++) {
        const dy = i + t.reach.y - p[2 * key];
        const dx = j + t.reach.x - p[2 * key + 1];
        out[n++] = dy * dy + dx * dx < r2 ? 0 : MASKED;
      }
    }
  }
  return out;
}
