/**
 * Gradients of softmax, layerNorm and groupNorm (src/graph/ops/norm.ts) against central finite
 * differences through test/graph/gradcheck.ts, for every attribute each op has.
 *
 * softmax and layerNorm run in float64 (ORT has double Softmax and LayerNormalization kernels), with
 * the harness's float64 tolerance: 1e-7 relative to max(1, max|numeric|). groupNorm lowers to
 * InstanceNormalization, which has no double kernel, so it runs in float32 with the harness's float32
 * step and tolerance (h = 1e-2, 2e-3 relative; measured errors are about 1e-5 to 1e-4).
 */
import { describe, it } from 'node:test';

import { groupNorm, layerNorm, softmax } from '../../src/graph/index.js';
import { gradCheck } from './gradcheck.js';

describe('softmax gradient (float64)', () => {
  const cases: { shape: number[]; dims?: (number | string)[]; axis: number; range?: [number, number] }[] = [
    { shape: [2, 3, 5], axis: -1 },
    { shape: [2, 4, 3], axis: 1 },
    { shape: [4, 3], axis: 0 },
    // Peaked rows: probabilities near 0 and 1, where y·(dy − Σ dy·y) has its smallest terms.
    { shape: [3, 6], axis: -1, range: [-6, 6] },
    { shape: [3, 2, 5], dims: ['B', 2, 5], axis: -1 },
  ];
  for (const { shape, dims, axis, range } of cases) {
    const what = `softmax [${(dims ?? shape).join(', ')}] over axis ${axis}${range ? `, logits in [${range.join(', ')}]` : ''}`;
    it(what, async () => {
      await gradCheck({
        what,
        inputs: { x: { shape, dims, range } },
        build: (_g, { x }) => softmax(x, axis),
      });
    });
  }
});

describe('layerNorm gradient (float64)', () => {
  const cases: { shape: number[]; dims?: (number | string)[]; axis: number; eps: number }[] = [
    { shape: [2, 3, 6], axis: -1, eps: 1e-5 },
    { shape: [2, 3, 4], axis: -2, eps: 1e-5 },
    // Normalizing over every axis: the weight and bias gradients have no leading axes to sum.
    { shape: [3, 4], axis: 0, eps: 1e-6 },
    // eps comparable to the variance: a misplaced eps in the backward pass shows.
    { shape: [2, 5], axis: -1, eps: 0.2 },
    { shape: [3, 2, 4], dims: ['B', 2, 4], axis: -1, eps: 1e-5 },
  ];
  for (const { shape, dims, axis, eps } of cases) {
    const normalized = shape.slice(axis < 0 ? axis + shape.length : axis);
    for (const [weight, bias] of [
      [true, true],
      [true, false],
      [false, true],
      [false, false],
    ] as const) {
      const parts = [weight ? 'weight' : 'no weight', bias ? 'bias' : 'no bias', `eps ${eps}`].join(', ');
      const what = `layerNorm [${(dims ?? shape).join(', ')}] from axis ${axis}, ${parts}`;
      it(what, async () => {
        await gradCheck({
          what,
          inputs: {
            // Offset, so that the mean matters as well as the spread.
            x: { shape, dims, range: [-0.5, 1.5] },
            ...(weight ? { w: { shape: normalized, range: [0.5, 1.5] } } : {}),
            ...(bias ? { b: { shape: normalized } } : {}),
          },
          build: (_g, { x, w, b }) => layerNorm(x, w, b, { axis, eps }),
        });
      });
    }
  }

  it('only the weight and bias differentiated (a frozen input): the input gradient is skipped', async () => {
    await gradCheck({
      what: 'layerNorm, parameters only',
      inputs: { x: { shape: [2, 3, 4], grad: false }, w: { shape: [4] }, b: { shape: [4] } },
      build: (_g, { x, w, b }) => layerNorm(x, w, b),
    });
  });
});

describe('groupNorm gradient (float32: ORT has no double InstanceNormalization)', () => {
  const cases: { shape: number[]; dims?: (number | string)[]; groups: number; eps: number }[] = [
    { shape: [2, 4, 3, 3], groups: 2, eps: 1e-5 },
    { shape: [2, 4, 2, 3], groups: 1, eps: 1e-6 },
    // One channel per group: instance norm.
    { shape: [1, 3, 3, 2], groups: 3, eps: 1e-5 },
    { shape: [2, 6, 5], groups: 3, eps: 0.1 },
    { shape: [2, 4, 2, 2], dims: ['B', 4, 2, 2], groups: 2, eps: 1e-5 },
  ];
  for (const { shape, dims, groups, eps } of cases) {
    const what = `groupNorm [${(dims ?? shape).join(', ')}], ${groups} groups, eps ${eps}`;
    it(what, async () => {
      await gradCheck({
        what,
        dtype: 'float32',
        inputs: {
          x: { shape, dims, range: [-0.5, 1.5] },
          w: { shape: [shape[1]], range: [0.5, 1.5] },
          b: { shape: [shape[1]] },
        },
        build: (_g, { x, w, b }) => groupNorm(x, groups, w, b, eps),
      });
    });
  }

  it('only the bias differentiated: neither the statistics nor the input gradient are built', async () => {
    await gradCheck({
      what: 'groupNorm, bias only',
      dtype: 'float32',
      inputs: {
        x: { shape: [2, 4, 2, 2], grad: false },
        w: { shape: [4], grad: false },
        b: { shape: [4] },
      },
      build: (_g, { x, w, b }) => groupNorm(x, 2, w, b),
    });
  });
});
