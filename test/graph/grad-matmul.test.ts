/**
 * Gradient checks of matmul (2-D, batched, broadcast batch dims, 1-D operands, the Linear-weight
 * case with named dims) and of the composites built on it and on the reduce ops (linear, rmsNorm),
 * all in float64 against central finite differences (test/graph/gradcheck.ts).
 */
import { describe, it } from 'node:test';

import { linear, matmul, rmsNorm } from '../../src/graph/index.js';
import type { GradInputSpec } from './gradcheck.js';
import { gradCheck } from './gradcheck.js';

const CASES: readonly { name: string; a: GradInputSpec; b: GradInputSpec }[] = [
  { name: '2-D', a: { shape: [3, 4] }, b: { shape: [4, 5] } },
  { name: 'batched', a: { shape: [2, 3, 4] }, b: { shape: [2, 4, 5] } },
  { name: 'broadcast batch dims', a: { shape: [2, 1, 3, 4] }, b: { shape: [3, 4, 5] } },
  { name: 'batch against a matrix (Linear weight)', a: { shape: [2, 3, 4] }, b: { shape: [4, 5] } },
  {
    name: 'named batch dims against a matrix',
    a: { shape: [2, 3, 4], dims: ['B', 'S', 4] },
    b: { shape: [4, 5] },
  },
  { name: 'matrix against a batch', a: { shape: [3, 4] }, b: { shape: [2, 4, 5] } },
  { name: 'vector · matrix', a: { shape: [4] }, b: { shape: [4, 5] } },
  { name: 'matrix · vector', a: { shape: [3, 4] }, b: { shape: [4] } },
  { name: 'vector · vector', a: { shape: [4] }, b: { shape: [4] } },
  { name: 'vector · batch', a: { shape: [4] }, b: { shape: [2, 4, 5] } },
  { name: 'batch · vector', a: { shape: [2, 3, 4] }, b: { shape: [4] } },
];

describe('gradient of matmul (float64)', () => {
  for (const c of CASES) {
    it(c.name, async () => {
      await gradCheck({
        what: `matmul ${c.name}`,
        inputs: { a: c.a, b: c.b },
        build: (_g, { a, b }) => matmul(a, b),
      });
    });
  }
});

describe('gradients of composites (float64)', () => {
  it('linear: x·Wᵀ + b with a named batch dim', async () => {
    await gradCheck({
      what: 'linear',
      inputs: {
        x: { shape: [2, 3, 4], dims: ['B', 3, 4] },
        weight: { shape: [5, 4] },
        bias: { shape: [5] },
      },
      build: (_g, { x, weight, bias }) => linear(x, weight, bias),
    });
  });

  it('rmsNorm with a weight', async () => {
    await gradCheck({
      what: 'rmsNorm',
      inputs: { x: { shape: [2, 3, 6] }, weight: { shape: [6] } },
      build: (_g, { x, weight }) => rmsNorm(x, weight, 1e-6),
    });
  });
});
