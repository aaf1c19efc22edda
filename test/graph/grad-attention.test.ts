/**
 * Gradients of the fused attention op (src/graph/ops/attention.ts) against central finite
 * differences through test/graph/gradcheck.ts: both head layouts, custom scales, bool and additive
 * masks, named batch dims, and partial differentiation.
 *
 * float64 (ORT has double MatMul and Softmax, which the explicit lowering uses), with the harness's
 * tolerance of 1e-7 relative to max(1, max|numeric|). One float32 case takes the fused
 * MultiHeadAttention lowering (packed, unmasked float32 only), whose forward the differences then
 * run through: harness float32 step and tolerance (h = 1e-2, 2e-3 relative).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import type { Graph, Tensor } from '../../src/graph/index.js';
import { Graph as GraphClass, attention, serialize } from '../../src/graph/index.js';
import type { GradInputSpec } from './gradcheck.js';
import { gradCheck } from './gradcheck.js';

/** A bool mask with at least one attended key per row (a fully masked row has no defined softmax). */
function boolMask(shape: readonly number[]): (random: () => number) => Uint8Array {
  return (random) => {
    const skv = shape[shape.length - 1];
    const data = Uint8Array.from({ length: shape.reduce((a, b) => a * b, 1) }, () =>
      random() < 0.6 ? 1 : 0,
    );
    for (let row = 0; row < data.length; row += skv) data[row + Math.floor(random() * skv)] = 1;
    return data;
  };
}

interface Case {
  what: string;
  inputs: Record<string, GradInputSpec>;
  numHeads: number;
  scale?: number;
}

const cases: Case[] = [
  {
    what: 'packed [B, S, H·D], 2 heads, Skv ≠ Sq, value head dim ≠ key head dim',
    inputs: { q: { shape: [2, 3, 4] }, k: { shape: [2, 5, 4] }, v: { shape: [2, 5, 6] } },
    numHeads: 2,
  },
  {
    what: '[B, H, S, D], 3 heads, scale 0.7',
    inputs: { q: { shape: [1, 3, 4, 2] }, k: { shape: [1, 3, 3, 2] }, v: { shape: [1, 3, 3, 3] } },
    numHeads: 3,
    scale: 0.7,
  },
  {
    what: 'packed with named batch and lengths [B, S, 4] × [B, L, 4]',
    inputs: {
      q: { shape: [2, 3, 4], dims: ['B', 'S', 4] },
      k: { shape: [2, 2, 4], dims: ['B', 'L', 4] },
      v: { shape: [2, 2, 4], dims: ['B', 'L', 4] },
    },
    numHeads: 2,
  },
  {
    what: 'bool mask [B, 1, 1, Skv] (padding), packed',
    inputs: {
      q: { shape: [2, 3, 4] },
      k: { shape: [2, 4, 4] },
      v: { shape: [2, 4, 4] },
      mask: { shape: [2, 1, 1, 4], dtype: 'bool', values: boolMask([2, 1, 1, 4]) },
    },
    numHeads: 2,
  },
  {
    what: 'bool mask [Sq, Skv] (causal-like), [B, H, S, D]',
    inputs: {
      q: { shape: [2, 2, 4, 3] },
      k: { shape: [2, 2, 4, 3] },
      v: { shape: [2, 2, 4, 3] },
      mask: { shape: [4, 4], dtype: 'bool', values: boolMask([4, 4]) },
    },
    numHeads: 2,
  },
  {
    what: 'additive mask [B, 1, Sq, Skv] with its gradient (summed over the heads)',
    inputs: {
      q: { shape: [2, 3, 4] },
      k: { shape: [2, 5, 4] },
      v: { shape: [2, 5, 4] },
      mask: { shape: [2, 1, 3, 5], range: [-2, 1] },
    },
    numHeads: 2,
  },
  {
    what: 'additive mask [H, 1, Skv] (a per-head key bias) with its gradient',
    inputs: {
      q: { shape: [1, 2, 3, 2] },
      k: { shape: [1, 2, 4, 2] },
      v: { shape: [1, 2, 4, 2] },
      mask: { shape: [2, 1, 4], range: [-2, 1] },
    },
    numHeads: 2,
    scale: 1.3,
  },
  {
    what: 'additive mask not differentiated, only the value differentiated',
    inputs: {
      q: { shape: [2, 3, 4], grad: false },
      k: { shape: [2, 5, 4], grad: false },
      v: { shape: [2, 5, 4] },
      mask: { shape: [2, 1, 1, 5], range: [-2, 1], grad: false },
    },
    numHeads: 1,
  },
  {
    what: 'only the query differentiated',
    inputs: {
      q: { shape: [2, 3, 6] },
      k: { shape: [2, 4, 6], grad: false },
      v: { shape: [2, 4, 6], grad: false },
    },
    numHeads: 3,
  },
];

describe('attention gradient (float64, explicit lowering)', () => {
  for (const c of cases) {
    it(c.what, async () => {
      await gradCheck({
        what: `attention, ${c.what}`,
        // q and k of size 2 make the softmax far from uniform.
        inputs: Object.fromEntries(
          Object.entries(c.inputs).map(([name, spec]) => [
            name,
            name === 'q' || name === 'k' ? { range: [-2, 2] as const, ...spec } : spec,
          ]),
        ),
        build: (_g, { q, k, v, mask }) => attention(q, k, v, { numHeads: c.numHeads, scale: c.scale, mask }),
      });
    });
  }
});

describe('attention gradient (float32, fused MultiHeadAttention forward)', () => {
  const build = (_g: Graph, { q, k, v }: Record<string, Tensor>): Tensor =>
    attention(q, k, v, { numHeads: 2 });

  it('packed, unmasked: the forward the differences run is com.microsoft MultiHeadAttention', async () => {
    const g = new GraphClass('lowering');
    g.output(
      'y',
      build(g, {
        q: g.input('q', 'float32', [2, 3, 8]),
        k: g.input('k', 'float32', [2, 5, 8]),
        v: g.input('v', 'float32', [2, 5, 8]),
      }),
    );
    assert.ok(new TextDecoder().decode(serialize(g).model).includes('MultiHeadAttention'));
    await gradCheck({
      what: 'attention packed float32 (MultiHeadAttention)',
      dtype: 'float32',
      inputs: {
        q: { shape: [2, 3, 8], range: [-2, 2] },
        k: { shape: [2, 5, 8], range: [-2, 2] },
        v: { shape: [2, 5, 8] },
      },
      build,
    });
  });
});
