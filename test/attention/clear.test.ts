/**
 * CLEAR attention (src/attention/clear.ts) through ONNX Runtime against the dense float64 reference
 * of test/reference/clear.ts, which applies the mask predicate of methods/clear_linfusion.md
 * §1.3/§1.4 to every (query, key) pair; plus checks that the tiled lowering stays linear in the
 * token count, build errors, and the diffusers-style self-attention module.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';

import {
  circleBias,
  clearTiling,
  tilingSizes,
  windowIndices,
  windowValidityBias,
} from '../../src/attention/clear-window.js';
import { clearAttention, clearSelfAttention } from '../../src/attention/clear.js';
import { GraphBuildError } from '../../src/errors.js';
import type { Tensor } from '../../src/graph/index.js';
import { Graph, isStaticShape } from '../../src/graph/index.js';
import { SafetensorsFile, writeSafetensors } from '../../src/io/safetensors.js';
import { Params } from '../../src/nn/params.js';
import type { TensorSource } from '../../src/nn/weights.js';
import type { HostTensor } from '../../src/runtime/host-tensor.js';
import { clearAttentionRef } from '../reference/clear.js';
import { randomArray, randomTensor, rng, runGraph, testRuntime } from '../helpers.js';

/** Float32 rounding of O(1) outputs; the worst error seen is about 6e-7. */
const TOLERANCE = 1e-5;

interface Case {
  name: string;
  batch: number;
  numHeads: number;
  headDim: number;
  /** Per-head width of v; default headDim. */
  valueDim?: number;
  grid: [number, number];
  radius: number;
  textTokens?: number;
  downFactor?: number;
  /** A random learnable spatial weight, fed as a graph input of this shape. */
  weightShape?: number[];
  scale?: number;
  tileSize?: number;
  /** Declare the batch dim as the name 'B', as model graphs do. */
  symbolicBatch?: boolean;
  seed: number;
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length);
  let worst = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    if (!(d <= worst)) worst = d; // NaN propagates as a failure below
  }
  return worst;
}

async function check(c: Case): Promise<number> {
  const random = rng(c.seed);
  const [height, width] = c.grid;
  const textTokens = c.textTokens ?? 0;
  const downFactor = c.downFactor ?? 1;
  const tokens = textTokens + height * width;
  const hidden = c.numHeads * c.headDim;
  const valueWidth = c.numHeads * (c.valueDim ?? c.headDim);
  const feeds: Record<string, HostTensor> = {
    q: randomTensor([c.batch, tokens, hidden], random, -2, 2),
    k: randomTensor([c.batch, tokens, hidden], random, -2, 2),
    v: randomTensor([c.batch, tokens, valueWidth], random),
  };
  if (c.weightShape) feeds.w = randomTensor(c.weightShape, random, -0.5, 1);
  // A radius whose circle holds the whole grid takes the dense path; every other, the tiles.
  const dense = (height - 1) ** 2 + (width - 1) ** 2 < c.radius ** 2;
  const out = await runGraph(
    (g, i) => {
      const o = clearAttention(i.q, i.k, i.v, {
        numHeads: c.numHeads,
        grid: { height, width },
        radius: c.radius,
        textTokens: c.textTokens,
        downFactor: c.downFactor,
        spatialWeight: i.w,
        scale: c.scale,
        tileSize: c.tileSize,
      });
      assert.equal(g.nodes.filter((n) => n.op === 'gather').length, dense ? 0 : 2, 'window gathers');
      return { o };
    },
    feeds,
    c.symbolicBatch
      ? { q: ['B', tokens, hidden], k: ['B', tokens, hidden], v: ['B', tokens, valueWidth] }
      : {},
  );
  assert.deepEqual(out.o.shape, [c.batch, tokens, valueWidth]);
  const expected = clearAttentionRef(
    feeds.q.data as Float32Array,
    feeds.k.data as Float32Array,
    feeds.v.data as Float32Array,
    c.batch,
    valueWidth,
    {
      numHeads: c.numHeads,
      gridHeight: height,
      gridWidth: width,
      radius: c.radius,
      textTokens,
      downFactor,
      spatialWeight: feeds.w?.data as Float32Array | undefined,
      scale: c.scale,
    },
  );
  const err = maxAbsDiff(out.o.data as Float32Array, expected);
  assert.ok(err <= TOLERANCE, `${c.name}: max |diff| ${err} > ${TOLERANCE}`);
  return err;
}

const CASES: Case[] = [
  {
    name: 'odd 7×9 grid, r=2, default tiles (rows padded)',
    batch: 1,
    numHeads: 2,
    headDim: 8,
    grid: [7, 9],
    radius: 2,
    seed: 1,
  },
  {
    name: 'tiles of 5 on 7×9 (both axes padded), r=3, batch 2',
    batch: 2,
    numHeads: 2,
    headDim: 8,
    grid: [7, 9],
    radius: 3,
    tileSize: 5,
    seed: 2,
  },
  {
    name: 'non-square 5×12, r=1 (only itself), 3 heads',
    batch: 1,
    numHeads: 3,
    headDim: 4,
    grid: [5, 12],
    radius: 1,
    seed: 3,
  },
  {
    name: 'r=5 with 4 text tokens (joint attention), symbolic batch of 2',
    batch: 2,
    numHeads: 2,
    headDim: 8,
    grid: [7, 9],
    radius: 5,
    textTokens: 4,
    symbolicBatch: true,
    seed: 4,
  },
  {
    name: 'r=2.5 (non-integer), tiles of 3, custom scale',
    batch: 1,
    numHeads: 2,
    headDim: 8,
    grid: [8, 7],
    radius: 2.5,
    tileSize: 3,
    scale: 0.6,
    seed: 5,
  },
  {
    name: 'square 12×12, r=3, default tiles divide the grid',
    batch: 1,
    numHeads: 1,
    headDim: 16,
    grid: [12, 12],
    radius: 3,
    seed: 6,
  },
  {
    name: 'radius 8 beyond a 7×9 grid (reach clamped), text 2',
    batch: 1,
    numHeads: 2,
    headDim: 8,
    grid: [7, 9],
    radius: 8,
    textTokens: 2,
    seed: 7,
  },
  {
    name: 'radius 11 covers 7×9: dense path, text 2',
    batch: 2,
    numHeads: 2,
    headDim: 8,
    grid: [7, 9],
    radius: 11,
    textTokens: 2,
    symbolicBatch: true,
    seed: 8,
  },
  {
    name: 'df=2, random spatial_weight [1,1,1,2,1,2,1], text 3, r=2',
    batch: 2,
    numHeads: 2,
    headDim: 8,
    grid: [6, 10],
    radius: 2,
    textTokens: 3,
    downFactor: 2,
    weightShape: [1, 1, 1, 2, 1, 2, 1],
    symbolicBatch: true,
    seed: 9,
  },
  {
    name: 'df=2, default 1/df² weights, r=3, tiles of 4 on 6×10',
    batch: 1,
    numHeads: 2,
    headDim: 8,
    grid: [6, 10],
    radius: 3,
    downFactor: 2,
    tileSize: 4,
    seed: 10,
  },
  {
    name: 'df=3, random [3,3] weights, non-square 9×6, r=2, text 2',
    batch: 1,
    numHeads: 2,
    headDim: 4,
    grid: [9, 6],
    radius: 2,
    textTokens: 2,
    downFactor: 3,
    weightShape: [3, 3],
    seed: 11,
  },
  {
    name: 'df=2 with a radius covering the grid: dense path with pooled keys',
    batch: 1,
    numHeads: 2,
    headDim: 8,
    grid: [4, 6],
    radius: 20,
    textTokens: 2,
    downFactor: 2,
    weightShape: [2, 2],
    seed: 12,
  },
  {
    name: 'value heads narrower than query heads, text 2',
    batch: 1,
    numHeads: 2,
    headDim: 8,
    valueDim: 4,
    grid: [5, 7],
    radius: 2,
    textTokens: 2,
    seed: 13,
  },
];

describe('clearAttention against the dense masked reference', () => {
  for (const c of CASES) {
    it(c.name, async (t) => {
      const err = await check(c);
      t.diagnostic(`max |diff| ${err.toExponential(2)}`);
    });
  }
});

describe('clear window constants', () => {
  it('the tiled mask equals the circle predicate for every (query, key) pair of the grid', () => {
    // Independent of ORT: rebuild the dense mask from index + circle + validity and compare.
    for (const [height, width, radius, tileSize] of [
      [7, 9, 3, 5],
      [5, 12, 2, undefined],
      [6, 6, 4, 4],
    ] as [number, number, number, number | undefined][]) {
      const t = clearTiling({ height, width }, radius, tileSize);
      const index = windowIndices(t);
      const circle = circleBias(t);
      const validity = windowValidityBias(t);
      const { windowKeys, tileTokens } = tilingSizes(t);
      const seen = new Set<string>();
      let pairs = 0;
      for (let a = 0; a < t.tiles.rows; a++) {
        for (let b = 0; b < t.tiles.cols; b++) {
          const tile = a * t.tiles.cols + b;
          for (let i = 0; i < tileTokens; i++) {
            const yq = a * t.tile.height + Math.floor(i / t.tile.width);
            const xq = b * t.tile.width + (i % t.tile.width);
            if (yq >= height || xq >= width) continue;
            for (let w = 0; w < windowKeys; w++) {
              if (circle[i * windowKeys + w] + validity[tile * windowKeys + w] !== 0) continue;
              const flat = Number(index[tile * windowKeys + w]);
              const yk = Math.floor(flat / t.paddedKeys.width) - t.reach.y;
              const xk = (flat % t.paddedKeys.width) - t.reach.x;
              assert.ok((yq - yk) ** 2 + (xq - xk) ** 2 < radius * radius);
              seen.add(`${yq},${xq},${yk},${xk}`);
              pairs++;
            }
          }
        }
      }
      let expected = 0;
      for (let yq = 0; yq < height; yq++)
        for (let xq = 0; xq < width; xq++)
          for (let yk = 0; yk < height; yk++)
            for (let xk = 0; xk < width; xk++)
              if ((yq - yk) ** 2 + (xq - xk) ** 2 < radius * radius) expected++;
      assert.equal(seen.size, expected, `${height}×${width} r=${radius}: allowed pairs`);
      assert.equal(pairs, expected, `${height}×${width} r=${radius}: a key appears twice in a window`);
    }
  });

  it('default tiles follow the radius and are balanced over each axis', () => {
    assert.deepEqual(clearTiling({ height: 64, width: 64 }, 16).tile, { height: 8, width: 8 });
    assert.deepEqual(clearTiling({ height: 64, width: 64 }, 1).tile, { height: 4, width: 4 });
    assert.deepEqual(clearTiling({ height: 7, width: 9 }, 8).tile, { height: 4, width: 3 });
    assert.deepEqual(clearTiling({ height: 20, width: 30 }, 20).tile, { height: 10, width: 10 });
    assert.deepEqual(clearTiling({ height: 7, width: 9 }, 8).reach, { y: 6, x: 7 });
    // The window drops the box corners no query of the tile sees: 8×8 tiles at r = 8 read 452 of 22².
    assert.equal(tilingSizes(clearTiling({ height: 64, width: 64 }, 8, 8)).windowKeys, 452);
  });
});

/** Sizes in a graph built for a grid: the largest node output and all constants, in elements. */
function graphSizes(side: number, textTokens: number): { largest: number; constants: number; nodes: number } {
  const g = new Graph('sizes');
  const tokens = textTokens + side * side;
  const q = g.input('q', 'float32', [1, tokens, 16]);
  const k = g.input('k', 'float32', [1, tokens, 16]);
  const v = g.input('v', 'float32', [1, tokens, 16]);
  g.output(
    'o',
    clearAttention(q, k, v, { numHeads: 2, grid: { height: side, width: side }, radius: 3, textTokens }),
  );
  let largest = 0;
  for (const node of g.nodes) {
    for (const out of node.outputs) {
      assert.ok(isStaticShape(out.shape), `${node.op} output ${String(out.shape)} should be static`);
      largest = Math.max(
        largest,
        (out.shape as number[]).reduce((a, b) => a * b, 1),
      );
    }
  }
  let constants = 0;
  for (const leaf of g.leaves.values()) if (leaf.kind === 'constant') constants += leaf.values.length;
  return { largest, constants, nodes: g.nodes.length };
}

describe('the lowering is linear in the image tokens (df = 1)', () => {
  for (const textTokens of [0, 8]) {
    it(`4× the tokens → at most ~4× the largest tensor and constants, same node count (text ${textTokens})`, () => {
      const small = graphSizes(16, textTokens);
      const large = graphSizes(32, textTokens);
      const n = 32 * 32;
      assert.ok(large.largest < n * n, `largest tensor ${large.largest} is not below N² = ${n * n}`);
      assert.ok(
        large.largest / small.largest <= 4.5,
        `largest tensor grew ${large.largest / small.largest}×`,
      );
      assert.ok(
        large.constants / small.constants <= 4.5,
        `constants grew ${large.constants / small.constants}×`,
      );
      assert.equal(large.nodes, small.nodes, 'no per-tile nodes');
    });
  }
});

describe('clearAttention build errors', () => {
  const build = (
    tokens: number,
    options: Partial<Parameters<typeof clearAttention>[3]>,
    weight?: number[],
  ): void => {
    const g = new Graph('errors');
    const q = g.input('q', 'float32', ['B', tokens, 8]);
    const w = weight ? g.input('w', 'float32', weight) : undefined;
    g.scope('transformer_blocks.0.attn1', () =>
      clearAttention(q, q, q, {
        numHeads: 2,
        grid: { height: 4, width: 6 },
        radius: 2,
        ...options,
        spatialWeight: w,
      }),
    );
  };
  const rejects = (fn: () => void, pattern: RegExp): void => {
    assert.throws(
      fn,
      (e: unknown) =>
        e instanceof GraphBuildError &&
        pattern.test(e.message) &&
        /transformer_blocks\.0\.attn1/.test(e.message),
    );
  };
  it('rejects a grid that does not match the sequence length', () => {
    rejects(() => build(25, {}), /has 25 tokens, but textTokens=0 \+ grid 4×6 = 24/);
    rejects(() => build(24, { textTokens: 2 }), /textTokens=2 \+ grid 4×6 = 26/);
  });
  it('rejects a grid not divisible by the down factor', () => {
    rejects(() => build(24, { downFactor: 4 }), /grid 4×6 is not divisible by downFactor=4/);
  });
  it('rejects a radius below 1', () => {
    rejects(() => build(24, { radius: 0.5 }), /radius must be a finite number ≥ 1/);
    rejects(() => build(24, { radius: 0 }), /radius must be/);
    rejects(() => build(24, { radius: Number.NaN }), /radius must be/);
  });
  it('rejects a spatial weight of the wrong shape', () => {
    rejects(
      () => build(24, { downFactor: 2 }, [1, 1, 1, 2, 1, 3, 1]),
      /spatialWeight \[1, 1, 1, 2, 1, 3, 1\]: expected/,
    );
  });
});

// ------------------------------------------------------------------ the self-attention module

/** A TensorSource over one safetensors file. */
function sourceOf(file: SafetensorsFile): TensorSource {
  return { has: (name) => file.has(name), info: (name) => ({ ...file.info(name), path: file.path }) };
}

/** y = x·Wᵀ + b in float64, x [rows, in], W [out, in]. */
function linearRef(
  x: ArrayLike<number>,
  w: Float32Array,
  b: Float32Array | undefined,
  outDim: number,
): Float64Array {
  const inDim = w.length / outDim;
  const rows = x.length / inDim;
  const y = new Float64Array(rows * outDim);
  for (let r = 0; r < rows; r++) {
    for (let o = 0; o < outDim; o++) {
      let acc = b ? b[o] : 0;
      for (let i = 0; i < inDim; i++) acc += x[r * inDim + i] * w[o * inDim + i];
      y[r * outDim + o] = acc;
    }
  }
  return y;
}

describe('clearSelfAttention (diffusers Attention with the CLEAR kernel)', () => {
  let dir: string | undefined;
  after(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  const cases = [
    {
      name: 'df=2 with processor.spatial_weight in the checkpoint, q/k/v biases',
      qkvBias: true,
      withWeight: true,
      textTokens: 0,
      downFactor: 2,
      seed: 21,
    },
    {
      name: 'df=2 without spatial_weight (1/df² init), no q/k/v bias, text 2',
      qkvBias: false,
      withWeight: false,
      textTokens: 2,
      downFactor: 2,
      seed: 22,
    },
    {
      name: 'df=1 ignores the processor weights',
      qkvBias: true,
      withWeight: true,
      textTokens: 0,
      downFactor: 1,
      seed: 23,
    },
  ];
  for (const c of cases) {
    it(c.name, async () => {
      dir ??= await mkdtemp(join(tmpdir(), 'velodiff-clear-'));
      const random = rng(c.seed);
      const dim = 8;
      const heads = 2;
      const grid = { height: 4, width: 6 };
      const radius = 2;
      const batch = 2;
      const tokens = c.textTokens + grid.height * grid.width;
      const prefix = 'transformer_blocks.0.attn1';
      const tensors: Record<string, Float32Array> = {};
      const shapes: Record<string, number[]> = {};
      const put = (name: string, shape: number[], scale = 0.5): void => {
        tensors[`${prefix}.${name}`] = randomArray(
          shape.reduce((a, b) => a * b, 1),
          random,
          -scale,
          scale,
        );
        shapes[`${prefix}.${name}`] = shape;
      };
      for (const proj of ['to_q', 'to_k', 'to_v', 'to_out.0']) {
        put(`${proj}.weight`, [dim, dim]);
        if (c.qkvBias || proj === 'to_out.0') put(`${proj}.bias`, [dim]);
      }
      if (c.withWeight) put('processor.spatial_weight', [1, 1, 1, 2, 1, 2, 1], 1);
      const path = join(dir, `attn-${c.seed}.safetensors`);
      await writeSafetensors(
        path,
        Object.fromEntries(
          Object.entries(tensors).map(([n, data]) => [n, { dtype: 'F32', shape: shapes[n], data }]),
        ),
      );
      const file = await SafetensorsFile.open(path);
      try {
        const g = new Graph('clear-self-attention');
        const x = g.input('x', 'float32', [batch, tokens, dim]);
        const params = Params.of(g, sourceOf(file), { prefix });
        const y: Tensor = clearSelfAttention(
          { params, x, dim, heads, qkvBias: c.qkvBias, grid, textTokens: c.textTokens },
          { radius, downFactor: c.downFactor },
        );
        g.output('y', y);
        assert.equal(
          params.usedNames().includes(`${prefix}.processor.spatial_weight`),
          c.withWeight && c.downFactor > 1,
        );
        const xs = randomTensor([batch, tokens, dim], random);
        const out = (await (await testRuntime().compile(g)).run({ x: xs })).y;

        const w = (name: string): Float32Array => tensors[`${prefix}.${name}`];
        const bias = (name: string): Float32Array | undefined => tensors[`${prefix}.${name}.bias`];
        const xData = xs.data as Float32Array;
        const q = linearRef(xData, w('to_q.weight'), bias('to_q'), dim);
        const k = linearRef(xData, w('to_k.weight'), bias('to_k'), dim);
        const v = linearRef(xData, w('to_v.weight'), bias('to_v'), dim);
        const o = clearAttentionRef(q, k, v, batch, dim, {
          numHeads: heads,
          gridHeight: grid.height,
          gridWidth: grid.width,
          radius,
          textTokens: c.textTokens,
          downFactor: c.downFactor,
          spatialWeight: c.withWeight ? w('processor.spatial_weight') : undefined,
        });
        const expected = linearRef(o, w('to_out.0.weight'), bias('to_out.0'), dim);
        const err = maxAbsDiff(out.data as Float32Array, expected);
        assert.ok(err <= TOLERANCE, `max |diff| ${err}`);
      } finally {
        await file.close();
      }
    });
  }
});
