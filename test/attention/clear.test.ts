/**
 * CLEAR attention (src/attention/clear.ts) through ONNX Runtime against the dense float64 reference
 * of test/reference/clear.ts, which applies the mask predicate of methods/clear_linfusion.md
 * §1.3/§1.4 to every (query, key) pair, through each plan (tiled, dense, whole grid) and with blocks
 * of every size; plus checks that the plans' constants reproduce that predicate, that memory stays
 * bounded as the grid grows, build errors, and the diffusers-style self-attention module.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';

import type { ClearPlan } from '../../src/attention/clear-window.js';
import { MASKED, clearPlan, clearTiling, tilingSizes } from '../../src/attention/clear-window.js';
import { clearAttention, clearSelfAttention } from '../../src/attention/clear.js';
import { GraphBuildError } from '../../src/errors.js';
import type { Tensor } from '../../src/graph/index.js';
import { Graph, isStaticShape } from '../../src/graph/index.js';
import { SafetensorsFile, writeSafetensors } from '../../src/io/safetensors.js';
import { Params } from '../../src/nn/params.js';
import type { TensorSource } from '../../src/nn/weights.js';
import type { HostTensor } from '../../src/runtime/host-tensor.js';
import { hostTensor } from '../../src/runtime/host-tensor.js';
import type { ClearRefOptions } from '../reference/clear.js';
import { clearAllowed, clearAttentionRef } from '../reference/clear.js';
import { assertMaxAbsError } from '../compare.js';
import { randomArray, randomTensor, runGraph, testRuntime } from '../helpers.js';
import { seededUniform } from '../random.js';

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
  lowering?: 'tiled' | 'dense';
  blockScores?: number;
  /** The plan the case must take: plain attention (the circle holds the grid), tiled or dense. */
  expect: 'whole' | 'tiled' | 'dense';
  /** At least this many blocks. */
  minBlocks?: number;
  /** q and k drawn from [−range, range); default 2. */
  range?: number;
  /** q and k of its own (one batch item, no text), for scores of chosen sizes. */
  queriesKeys?: (grid: [number, number], random: () => number) => { q: Float32Array; k: Float32Array };
  /** Declare the batch dim as the name 'B', as model graphs do. */
  symbolicBatch?: boolean;
  seed: number;
}

async function check(c: Case): Promise<number> {
  const random = seededUniform(c.seed);
  const [height, width] = c.grid;
  const textTokens = c.textTokens ?? 0;
  const downFactor = c.downFactor ?? 1;
  const tokens = textTokens + height * width;
  const hidden = c.numHeads * c.headDim;
  const valueWidth = c.numHeads * (c.valueDim ?? c.headDim);
  const range = c.range ?? 2;
  const feeds: Record<string, HostTensor> = {
    q: randomTensor([c.batch, tokens, hidden], random, -range, range),
    k: randomTensor([c.batch, tokens, hidden], random, -range, range),
    v: randomTensor([c.batch, tokens, valueWidth], random),
  };
  if (c.queriesKeys) {
    const { q, k } = c.queriesKeys(c.grid, random);
    feeds.q = hostTensor('float32', [c.batch, tokens, hidden], q);
    feeds.k = hostTensor('float32', [c.batch, tokens, hidden], k);
  }
  if (c.weightShape) feeds.w = randomTensor(c.weightShape, random, -0.5, 1);
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
        lowering: c.lowering,
        blockScores: c.blockScores,
      });
      // One softmax per block; a block gathers its queries, and in the tiled plan its keys and
      // values, which a last gather puts back in token order.
      const count = (op: string): number => g.nodes.filter((n) => n.op === op).length;
      const blocks = count('softmax');
      const plan = c.expect;
      const gathers = plan === 'tiled' ? 3 * blocks + 1 : blocks;
      assert.equal(blocks === 0, plan === 'whole', `${plan}: ${blocks} blocks`);
      assert.equal(count('gather'), gathers, `${plan} plan: gathers`);
      assert.ok(blocks >= (c.minBlocks ?? 0), `${blocks} blocks, expected at least ${c.minBlocks}`);
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
  return assertMaxAbsError(out.o.data as Float32Array, expected, TOLERANCE, c.name).maxAbsError;
}

const CASES: Case[] = [
  {
    name: 'odd 7×9 grid, r=2, default tiles (rows padded)',
    batch: 1,
    numHeads: 2,
    headDim: 8,
    grid: [7, 9],
    radius: 2,
    expect: 'tiled',
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
    lowering: 'tiled',
    expect: 'tiled',
    seed: 2,
  },
  {
    name: 'non-square 5×12, r=1 (only itself), 3 heads',
    batch: 1,
    numHeads: 3,
    headDim: 4,
    grid: [5, 12],
    radius: 1,
    expect: 'tiled',
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
    lowering: 'tiled',
    expect: 'tiled',
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
    lowering: 'tiled',
    expect: 'tiled',
    seed: 5,
  },
  {
    name: 'square 12×12, r=3, default tiles divide the grid',
    batch: 1,
    numHeads: 1,
    headDim: 16,
    grid: [12, 12],
    radius: 3,
    expect: 'tiled',
    seed: 6,
  },
  {
    name: 'radius 8 beyond a 7×9 grid (reach clamped), tiled although dense is cheaper, text 2',
    batch: 1,
    numHeads: 2,
    headDim: 8,
    grid: [7, 9],
    radius: 8,
    textTokens: 2,
    lowering: 'tiled',
    expect: 'tiled',
    seed: 7,
  },
  {
    name: 'radius 8 on a 7×9 grid: the dense plan by cost, blocks of one row, text 2, batch 2',
    batch: 2,
    numHeads: 2,
    headDim: 8,
    grid: [7, 9],
    radius: 8,
    textTokens: 2,
    blockScores: 2 * 74 * 9,
    expect: 'dense',
    minBlocks: 7,
    symbolicBatch: true,
    seed: 14,
  },
  {
    name: 'radius 11 covers 7×9: dense path, text 2',
    batch: 2,
    numHeads: 2,
    headDim: 8,
    grid: [7, 9],
    radius: 11,
    textTokens: 2,
    expect: 'whole',
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
    lowering: 'tiled',
    expect: 'tiled',
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
    lowering: 'tiled',
    expect: 'tiled',
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
    expect: 'tiled',
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
    expect: 'whole',
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
    lowering: 'tiled',
    expect: 'tiled',
    seed: 13,
  },
  {
    name: 'blocks of one tile, interior and border, df=2, text 3, batch 2',
    batch: 2,
    numHeads: 2,
    headDim: 4,
    grid: [12, 16],
    radius: 3,
    tileSize: 3,
    textTokens: 3,
    downFactor: 2,
    lowering: 'tiled',
    blockScores: 1,
    expect: 'tiled',
    minBlocks: 20,
    symbolicBatch: true,
    seed: 15,
  },
  {
    name: 'blocks of several tiles, uneven, 3 heads, r=2.5',
    batch: 1,
    numHeads: 3,
    headDim: 4,
    grid: [13, 11],
    radius: 2.5,
    tileSize: 3,
    blockScores: 3 * 9 * 40 * 3,
    expect: 'tiled',
    minBlocks: 5,
    seed: 16,
  },
  {
    name: 'dense plan forced, df=2, text 2, value heads narrower',
    batch: 1,
    numHeads: 2,
    headDim: 8,
    valueDim: 4,
    grid: [6, 8],
    radius: 3,
    textTokens: 2,
    downFactor: 2,
    lowering: 'dense',
    blockScores: 2 * 62 * 16,
    expect: 'dense',
    minBlocks: 3,
    seed: 17,
  },
  {
    name: 'large scores: masked keys far above and allowed keys far below the row maximum',
    batch: 1,
    numHeads: 1,
    headDim: 2,
    grid: [8, 12],
    radius: 3,
    scale: 1.2,
    // Keys of the left half score about +77 against every query, of the right half about −77: a
    // query on the right sees only −77s while its masked keys score +77, and one near the middle
    // sees both, so its −77s lie far below the floor (row max − 64).
    queriesKeys: ([height, width], random) => {
      const q = new Float32Array(height * width * 2);
      const k = new Float32Array(height * width * 2);
      for (let n = 0; n < height * width; n++) {
        q[2 * n] = 8;
        q[2 * n + 1] = 2 * random() - 1;
        k[2 * n] = n % width < width / 2 ? 8 : -8;
        k[2 * n + 1] = 2 * random() - 1;
      }
      return { q, k };
    },
    expect: 'tiled',
    seed: 18,
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

/**
 * The (query, key) pairs a plan scores with bias 0, for every real image query, as
 * "queryToken,keyRow" over the key sequence [text | image | pooled]; fails on a key scored twice
 * for one query, or an image token not read from the slot that computed it.
 */
function allowedPairs(plan: ClearPlan, o: ClearRefOptions): Set<string> {
  // Per output slot (the blocks' queries, concatenated): its query row and the keys it may attend.
  const slots: { query: number; keys: number[] }[] = [];
  for (const block of plan.blocks) {
    const { tiles, tileTokens, keyCount } = block;
    for (let tile = 0; tile < tiles; tile++) {
      for (let i = 0; i < tileTokens; i++) {
        const keys: number[] = [];
        const biasRow = ((block.bias.shape[0] === 1 ? 0 : tile) * tileTokens + i) * keyCount;
        for (let j = 0; j < keyCount; j++) {
          const bias = block.bias.data[biasRow + j];
          if (bias === 0) keys.push(block.keys ? Number(block.keys[tile * keyCount + j]) : j);
          else assert.equal(bias, Math.fround(MASKED));
        }
        slots.push({ query: Number(block.queries[tile * tileTokens + i]), keys });
      }
    }
  }
  const pairs = new Set<string>();
  const read = new Set<number>();
  for (let n = 0; n < o.gridHeight * o.gridWidth; n++) {
    const slot = plan.order ? Number(plan.order[n]) : n;
    assert.equal(slots[slot].query, o.textTokens + n, `image token ${n} is read from slot ${slot}`);
    assert.ok(!read.has(slot), `slot ${slot} is read twice`);
    read.add(slot);
    for (const key of slots[slot].keys) {
      const pair = `${o.textTokens + n},${key}`;
      assert.ok(!pairs.has(pair), `pair ${pair} scored twice`);
      pairs.add(pair);
    }
  }
  return pairs;
}

describe('clear plans', () => {
  it('every plan scores exactly the pairs the circle predicate allows, each once', () => {
    // Independent of ORT: rebuild the allowed pairs from the plan's indices and biases.
    const cases: [number, number, number, number, number, number | undefined, 'tiled' | 'dense'][] = [
      [7, 9, 3, 0, 0, 5, 'tiled'],
      [5, 12, 2, 2, 0, undefined, 'tiled'],
      [6, 6, 4, 0, 9, 4, 'tiled'],
      [12, 16, 3, 3, 12, 3, 'tiled'],
      [7, 9, 8, 2, 0, undefined, 'tiled'],
      [7, 9, 8, 2, 0, undefined, 'dense'],
      [6, 8, 3, 1, 12, undefined, 'dense'],
    ];
    for (const [height, width, radius, textTokens, pooledTokens, tileSize, lowering] of cases) {
      const what = `${height}×${width} r=${radius} text ${textTokens} pooled ${pooledTokens} ${lowering}`;
      for (const blockScores of [1, 500, undefined]) {
        const plan = clearPlan({ height, width }, radius, {
          textTokens,
          pooledTokens,
          numHeads: 2,
          channels: 16,
          tileSize,
          lowering,
          blockScores,
        });
        assert.equal(plan.kind, lowering);
        const o = { numHeads: 2, gridHeight: height, gridWidth: width, radius, textTokens, downFactor: 1 };
        const pairs = allowedPairs(plan, o);
        const imageTokens = height * width;
        const keys = textTokens + imageTokens + pooledTokens;
        let expected = 0;
        for (let n = 0; n < imageTokens; n++) {
          for (let key = 0; key < keys; key++) {
            // clearAllowed knows pooled keys only through downFactor; they follow the image keys.
            const allowed = key >= textTokens + imageTokens || clearAllowed(textTokens + n, key, o);
            if (!allowed) continue;
            expected++;
            assert.ok(pairs.has(`${textTokens + n},${key}`), `${what}: pair ${n},${key} missing`);
          }
        }
        assert.equal(pairs.size, expected, `${what}: pairs`);
      }
    }
  });

  it('default tiles follow the radius and are balanced over each axis', () => {
    assert.deepEqual(clearTiling({ height: 64, width: 64 }, 16).tile, { height: 8, width: 8 });
    assert.deepEqual(clearTiling({ height: 64, width: 64 }, 1).tile, { height: 4, width: 4 });
    assert.deepEqual(clearTiling({ height: 7, width: 9 }, 8, 4).tile, { height: 4, width: 3 });
    // 20 rows: three tiles of 7, not of 8.
    assert.deepEqual(clearTiling({ height: 20, width: 30 }, 6).tile, { height: 7, width: 6 });
    assert.deepEqual(clearTiling({ height: 128, width: 128 }, 32).tile, { height: 10, width: 10 });
    assert.deepEqual(clearTiling({ height: 7, width: 9 }, 8).reach, { y: 6, x: 7 });
    // The window drops the box corners no query of the tile sees: 8×8 tiles at r = 8 read 452 of 22².
    assert.equal(tilingSizes(clearTiling({ height: 64, width: 64 }, 8, 8)).windowKeys, 452);
  });

  it('the cost model takes dense only where windows cover about the whole sequence', () => {
    const kind = (side: number, radius: number): string =>
      clearPlan({ height: side, width: side }, radius, {
        textTokens: 0,
        pooledTokens: 0,
        numHeads: 16,
        channels: 144,
      }).kind;
    assert.equal(kind(32, 32), 'dense');
    assert.equal(kind(24, 16), 'dense');
    assert.equal(kind(64, 32), 'tiled');
    assert.equal(kind(64, 16), 'tiled');
    assert.equal(kind(128, 32), 'tiled');
    // Past DENSE_BIAS_BYTES the dense bias would be too large: tiled, whatever the cost.
    assert.equal(kind(92, 92), 'tiled');
  });
});

/** Sizes in a graph built for a grid: the largest node output and score tensor, all constants, in elements. */
function graphSizes(
  side: number,
  textTokens: number,
  blockScores: number,
): { largest: number; scores: number; constants: number; nodes: number } {
  const g = new Graph('sizes');
  const tokens = textTokens + side * side;
  const q = g.input('q', 'float32', [1, tokens, 16]);
  const k = g.input('k', 'float32', [1, tokens, 16]);
  const v = g.input('v', 'float32', [1, tokens, 16]);
  g.output(
    'o',
    clearAttention(q, k, v, {
      numHeads: 2,
      grid: { height: side, width: side },
      radius: 3,
      textTokens,
      blockScores,
    }),
  );
  let largest = 0;
  let scores = 0;
  for (const node of g.nodes) {
    for (const out of node.outputs) {
      assert.ok(isStaticShape(out.shape), `${node.op} output ${String(out.shape)} should be static`);
      const size = (out.shape as number[]).reduce((a, b) => a * b, 1);
      largest = Math.max(largest, size);
      if (node.op === 'softmax') scores = Math.max(scores, size);
    }
  }
  let constants = 0;
  for (const leaf of g.leaves.values()) if (leaf.kind === 'constant') constants += leaf.values.length;
  return { largest, scores, constants, nodes: g.nodes.length };
}

describe('memory is bounded as the grid grows (df = 1)', () => {
  for (const textTokens of [0, 8]) {
    it(`4× the tokens → the same score blocks, at most ~4× the largest tensor, constants and nodes (text ${textTokens})`, () => {
      const blockScores = 4096;
      const small = graphSizes(16, textTokens, blockScores);
      const large = graphSizes(32, textTokens, blockScores);
      const n = 32 * 32;
      assert.ok(large.largest < n * n, `largest tensor ${large.largest} is not below N² = ${n * n}`);
      assert.ok(large.scores <= blockScores, `a block scores ${large.scores} > ${blockScores}`);
      assert.ok(large.scores <= small.scores, `score blocks grew from ${small.scores} to ${large.scores}`);
      for (const key of ['largest', 'constants', 'nodes'] as const) {
        assert.ok(large[key] / small[key] <= 4.5, `${key} grew ${large[key] / small[key]}×`);
      }
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
      const random = seededUniform(c.seed);
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
        assertMaxAbsError(out.data as Float32Array, expected, TOLERANCE, c.name);
      } finally {
        await file.close();
      }
    });
  }
});
