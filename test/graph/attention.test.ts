/**
 * attention (src/graph/ops/attention.ts) through ONNX Runtime against the float64 reference of
 * test/reference/attention.ts. Unmasked packed float32 inputs lower to com.microsoft
 * MultiHeadAttention; everything else to an explicit MatMul–Softmax–MatMul. Both are checked, and
 * each test asserts which lowering it exercised.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import type { Graph, Tensor } from '../../src/graph/index.js';
import { Graph as GraphClass, attention, serialize } from '../../src/graph/index.js';
import type { HostTensor } from '../../src/runtime/host-tensor.js';
import { hostTensor } from '../../src/runtime/host-tensor.js';
import type { RefMask } from '../reference/attention.js';
import { attentionRef } from '../reference/attention.js';
import { assertMatchesRef, fromHost, sizeOf } from '../reference/layout.js';
import { randomTensor, testRuntime } from '../helpers.js';
import { seededUniform } from '../random.js';

const TOL = { atol: 1e-5, rtol: 1e-5 };

interface Case {
  q: number[];
  k: number[];
  v: number[];
  numHeads: number;
  scale?: number;
  mask?: { shape: number[]; kind: 'bool' | 'additive' };
  /** The lowering the case must take. */
  fused: boolean;
  seed: number;
}

/** A bool mask with at least one attended key per row (a fully masked row has no defined softmax). */
function boolMask(shape: number[], random: () => number): Uint8Array {
  const skv = shape[shape.length - 1];
  const data = Uint8Array.from({ length: sizeOf(shape) }, () => (random() < 0.6 ? 1 : 0));
  for (let row = 0; row < data.length; row += skv) data[row + Math.floor(random() * skv)] = 1;
  return data;
}

async function check(c: Case): Promise<void> {
  const random = seededUniform(c.seed);
  const feeds: Record<string, HostTensor> = {
    q: randomTensor(c.q, random, -2, 2),
    k: randomTensor(c.k, random, -2, 2),
    v: randomTensor(c.v, random),
  };
  let mask: RefMask | undefined;
  if (c.mask) {
    const data =
      c.mask.kind === 'bool'
        ? boolMask(c.mask.shape, random)
        : randomTensor(c.mask.shape, random, -3, 1).data;
    feeds.mask = hostTensor(
      c.mask.kind === 'bool' ? 'bool' : 'float32',
      c.mask.shape,
      data as Uint8Array | Float32Array,
    );
    mask = { shape: c.mask.shape, data: data as ArrayLike<number>, kind: c.mask.kind };
  }
  const g: Graph = new GraphClass('attention-test');
  const inputs: Record<string, Tensor> = {};
  for (const [name, t] of Object.entries(feeds)) inputs[name] = g.input(name, t.dtype, t.shape);
  g.output(
    'y',
    attention(inputs.q, inputs.k, inputs.v, { numHeads: c.numHeads, scale: c.scale, mask: inputs.mask }),
  );

  const usesFused = Buffer.from(serialize(g).model).includes('MultiHeadAttention');
  assert.equal(
    usesFused,
    c.fused,
    `lowered ${usesFused ? 'to' : 'without'} com.microsoft MultiHeadAttention`,
  );

  const out = await (await testRuntime().compile(g)).run(feeds);
  const expected = attentionRef(fromHost(feeds.q), fromHost(feeds.k), fromHost(feeds.v), c.numHeads, {
    scale: c.scale,
    mask,
  });
  assertMatchesRef(out.y, expected, 'attention', TOL);
}

describe('attention, packed [B, S, H·D]', () => {
  it('self-attention without a mask (MultiHeadAttention)', () =>
    check({ q: [2, 5, 8], k: [2, 5, 8], v: [2, 5, 8], numHeads: 2, fused: true, seed: 301 }));

  it('with a bool mask [B, 1, Sq, Skv]', () =>
    check({
      q: [2, 5, 12],
      k: [2, 5, 12],
      v: [2, 5, 12],
      numHeads: 3,
      mask: { shape: [2, 1, 5, 5], kind: 'bool' },
      fused: false,
      seed: 302,
    }));

  it('with an additive float mask [Sq, Skv]', () =>
    check({
      q: [2, 4, 8],
      k: [2, 4, 8],
      v: [2, 4, 8],
      numHeads: 2,
      mask: { shape: [4, 4], kind: 'additive' },
      fused: false,
      seed: 303,
    }));

  it('cross-attention, Sq ≠ Skv, without a mask', () =>
    check({ q: [2, 3, 8], k: [2, 6, 8], v: [2, 6, 8], numHeads: 2, fused: true, seed: 304 }));

  it('cross-attention, Sq ≠ Skv, with a per-key bool mask [B, 1, 1, Skv]', () =>
    check({
      q: [2, 3, 8],
      k: [2, 6, 8],
      v: [2, 6, 8],
      numHeads: 4,
      mask: { shape: [2, 1, 1, 6], kind: 'bool' },
      fused: false,
      seed: 305,
    }));

  it('value head dim ≠ key head dim, without a mask', () =>
    check({ q: [1, 4, 8], k: [1, 5, 8], v: [1, 5, 6], numHeads: 2, fused: true, seed: 306 }));

  it('value head dim ≠ key head dim, with an additive mask [B, H, Sq, Skv]', () =>
    check({
      q: [1, 4, 8],
      k: [1, 5, 8],
      v: [1, 5, 6],
      numHeads: 2,
      mask: { shape: [1, 2, 4, 5], kind: 'additive' },
      fused: false,
      seed: 307,
    }));

  it('custom scale, without a mask', () =>
    check({ q: [2, 4, 8], k: [2, 4, 8], v: [2, 4, 8], numHeads: 2, scale: 0.37, fused: true, seed: 308 }));

  it('custom scale, with a bool mask', () =>
    check({
      q: [2, 4, 8],
      k: [2, 4, 8],
      v: [2, 4, 8],
      numHeads: 2,
      scale: 1.3,
      mask: { shape: [2, 2, 4, 4], kind: 'bool' },
      fused: false,
      seed: 309,
    }));
});

describe('attention, [B, H, S, D]', () => {
  it('self-attention without a mask', () =>
    check({ q: [2, 3, 4, 5], k: [2, 3, 4, 5], v: [2, 3, 4, 5], numHeads: 3, fused: false, seed: 311 }));

  it('cross-attention with value head dim ≠ key head dim and a custom scale', () =>
    check({
      q: [1, 2, 3, 4],
      k: [1, 2, 6, 4],
      v: [1, 2, 6, 7],
      numHeads: 2,
      scale: 0.8,
      fused: false,
      seed: 312,
    }));

  it('with a bool mask [B, H, Sq, Skv]', () =>
    check({
      q: [2, 2, 4, 3],
      k: [2, 2, 5, 3],
      v: [2, 2, 5, 3],
      numHeads: 2,
      mask: { shape: [2, 2, 4, 5], kind: 'bool' },
      fused: false,
      seed: 313,
    }));

  it('with an additive mask [1, 1, Sq, Skv]', () =>
    check({
      q: [2, 2, 4, 3],
      k: [2, 2, 4, 3],
      v: [2, 2, 4, 3],
      numHeads: 2,
      mask: { shape: [1, 1, 4, 4], kind: 'additive' },
      fused: false,
      seed: 314,
    }));
});
