/** sum / mean / max over axes, and cumsum, against float64 loops. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import type { Tensor } from '../../src/graph/index.js';
import { cumsum, Graph, max, mean, sum } from '../../src/graph/index.js';
import { hostTensor } from '../../src/runtime/host-tensor.js';
import { randomTensor } from '../helpers.js';
import { seededUniform } from '../random.js';
import { assertBuildError, assertMatches, runOp, toRef } from '../reference/check.js';
import type { ReduceKind } from '../reference/math.js';
import * as ref from '../reference/math.js';

const REDUCTIONS: [
  ReduceKind,
  (x: Tensor, axes: number | readonly number[], keepDims?: boolean) => Tensor,
][] = [
  ['sum', sum],
  ['mean', mean],
  ['max', max],
];

describe('reductions', () => {
  const axesCases: (number | number[])[] = [0, 1, -1, [0, 2], [-1, -3], [1, -1], [0, 1, 2]];
  REDUCTIONS.forEach(([kind, op], opIndex) => {
    axesCases.forEach((axes, caseIndex) => {
      for (const keepDims of [false, true]) {
        it(`${kind} over ${JSON.stringify(axes)}${keepDims ? ', keepDims' : ''}`, async () => {
          const random = seededUniform(6000 + 100 * opIndex + 10 * caseIndex + Number(keepDims));
          const x = randomTensor([3, 4, 5], random, -2, 2);
          const y = await runOp((t) => op(t.x, axes, keepDims), { x });
          const expected = ref.reduce(toRef(x), kind, typeof axes === 'number' ? [axes] : axes, keepDims);
          assertMatches(y, expected, { what: `${kind}(${JSON.stringify(axes)})` });
        });
      }
    });
  });

  it('over many elements (sum and mean of 4096 values per row)', async () => {
    const x = randomTensor([3, 64, 64], seededUniform(6400), -1, 1);
    for (const [kind, op] of REDUCTIONS) {
      const y = await runOp((t) => op(t.x, [1, 2]), { x });
      assertMatches(y, ref.reduce(toRef(x), kind, [1, 2], false), { atol: 1e-4, rtol: 1e-5, what: kind });
    }
  });

  it('sum and max of int32 are exact', async () => {
    const random = seededUniform(6401);
    const x = hostTensor(
      'int32',
      [4, 6],
      Array.from({ length: 24 }, () => Math.floor(random() * 200) - 100),
    );
    const total = await runOp((t) => sum(t.x, 1), { x });
    assertMatches(total, ref.reduce(toRef(x), 'sum', [1], false), { dtype: 'int32', what: 'int32 sum' });
    const peak = await runOp((t) => max(t.x, 0, true), { x });
    assertMatches(peak, ref.reduce(toRef(x), 'max', [0], true), { dtype: 'int32', what: 'int32 max' });
  });

  it('errors: out-of-range, repeated and empty axes, bool input', () => {
    const g = new Graph('errors');
    const x = g.input('x', 'float32', [3, 4]);
    assertBuildError(() => sum(x, 2), 'sum', 'axis 2', 'rank 2');
    assertBuildError(() => mean(x, [-3]), 'mean', 'axis -3', 'rank 2');
    assertBuildError(() => max(x, [1, -1]), 'max', 'repeated axis');
    assertBuildError(() => sum(x, []), 'sum', 'empty');
    assertBuildError(() => sum(g.input('b', 'bool', [2]), 0), 'sum', 'bool');
    assertBuildError(() => g.scope('blocks.0', () => sum(x, 5)), 'blocks.0', 'sum', 'axis 5');
  });
});

describe('cumsum', () => {
  const options: { exclusive: boolean; reverse: boolean }[] = [
    { exclusive: false, reverse: false },
    { exclusive: true, reverse: false },
    { exclusive: false, reverse: true },
    { exclusive: true, reverse: true },
  ];
  [0, 1, -1].forEach((axis, axisIndex) => {
    options.forEach(({ exclusive, reverse }, optionIndex) => {
      it(`axis ${axis}${exclusive ? ', exclusive' : ''}${reverse ? ', reverse' : ''}`, async () => {
        const x = randomTensor([3, 5, 4], seededUniform(6500 + 10 * axisIndex + optionIndex), -2, 2);
        const y = await runOp((t) => cumsum(t.x, axis, { exclusive, reverse }), { x });
        assertMatches(y, ref.cumsum(toRef(x), axis, exclusive, reverse), { what: 'cumsum' });
      });
    });
  });

  it('of int64 is exact', async () => {
    const x = hostTensor('int64', [2, 6], [1, 2, 3, 4, 5, 6, -1, 0, 7, 7, -3, 2]);
    const y = await runOp((t) => cumsum(t.x, 1), { x });
    assertMatches(y, ref.cumsum(toRef(x), 1), { dtype: 'int64', what: 'int64 cumsum' });
  });

  it('errors: axis out of range, bool input', () => {
    const g = new Graph('errors');
    const x = g.input('x', 'float32', [3, 4]);
    assertBuildError(() => cumsum(x, 2), 'cumsum', 'axis 2', '[3, 4]');
    assertBuildError(() => cumsum(g.input('b', 'bool', [2]), 0), 'cumsum', 'bool');
  });

  it('the four modes differ on the same input (the test can tell them apart)', () => {
    const x = ref.refTensor([3], [1, 2, 4]);
    const modes = options.map(({ exclusive, reverse }) =>
      [...ref.cumsum(x, 0, exclusive, reverse).data].join(),
    );
    assert.deepEqual(modes, ['1,3,7', '0,1,3', '7,6,4', '6,4,0']);
  });
});
