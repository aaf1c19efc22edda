/**
 * Gradient checks of the reduce ops (sum, mean, max over several axes, with and without keepDims,
 * with named dims) and cumsum (plain, exclusive, reverse), in float64 against central finite
 * differences (test/graph/gradcheck.ts); and max's rule for ties.
 */
import { describe, it } from 'node:test';

import { cumsum, Graph, grad, max, mean, mul, sum } from '../../src/graph/index.js';
import { hostTensor } from '../../src/runtime/host-tensor.js';
import { assertExactlyEqual } from '../compare.js';
import { testRuntime } from '../helpers.js';
import { gradCheck } from './gradcheck.js';

const AXES: readonly { axes: number[]; keepDims: boolean }[] = [
  { axes: [1], keepDims: false },
  { axes: [-1], keepDims: true },
  { axes: [0, 2], keepDims: false },
  { axes: [0, 1, 2], keepDims: true },
];

const REDUCE = { sum, mean, max };

describe('gradients of reductions (float64)', () => {
  for (const [name, op] of Object.entries(REDUCE)) {
    it(`${name} over several axes`, async () => {
      for (const { axes, keepDims } of AXES) {
        await gradCheck({
          what: `${name} axes [${axes.join(', ')}] keepDims ${keepDims}`,
          inputs: { x: { shape: [2, 3, 4] } },
          build: (_g, { x }) => op(x, axes, keepDims),
        });
      }
    });

    it(`${name} over a named dim`, async () => {
      await gradCheck({
        what: `${name} named`,
        inputs: { x: { shape: [2, 3, 4], dims: ['B', 'S', 4] } },
        build: (_g, { x }) => op(x, [0, 1]),
      });
    });
  }

  it('max shares the cotangent among the elements that attain it', async () => {
    const g = new Graph('ties');
    const x = g.input('x', 'float64', [2, 3]);
    const [dx] = grad(sum(mul(max(x, 1), 2), 0), [x]);
    g.output('dx', dx);
    const out = await (
      await testRuntime().compile(g)
    ).run({ x: hostTensor('float64', [2, 3], Float64Array.of(1, 3, 3, 5, 4, 3)) });
    assertExactlyEqual(out.dx.data as Float64Array, [0, 1, 1, 2, 0, 0], 'dx');
  });
});

describe('gradient of cumsum (float64)', () => {
  for (const exclusive of [false, true]) {
    for (const reverse of [false, true]) {
      it(`exclusive ${exclusive}, reverse ${reverse}`, async () => {
        await gradCheck({
          what: `cumsum exclusive ${exclusive} reverse ${reverse}`,
          inputs: { x: { shape: [3, 5] } },
          build: (_g, { x }) => cumsum(x, -1, { exclusive, reverse }),
        });
      });
    }
  }

  it('along a named axis', async () => {
    await gradCheck({
      what: 'cumsum named',
      inputs: { x: { shape: [4, 3], dims: ['S', 3] } },
      build: (_g, { x }) => cumsum(x, 0),
    });
  });
});
