/** softmax, layerNorm, groupNorm and rmsNorm against float64 loops (torch formulas). */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import type { Graph, Tensor } from '../../src/graph/index.js';
import { cast, Graph as GraphClass, groupNorm, layerNorm, rmsNorm, softmax } from '../../src/graph/index.js';
import type { HostTensor } from '../../src/runtime/host-tensor.js';
import { randomTensor, runGraph } from '../helpers.js';
import { seededUniform } from '../random.js';
import { assertBuildError, assertMatches, runOp, toRef } from '../reference/check.js';
import * as ref from '../reference/math.js';

const shapeName = (shape: readonly number[]): string => `[${shape.join(', ')}]`;

/** A float32 graph weight holding `t`'s values in memory. */
function weightOf(g: Graph, name: string, t: HostTensor): Tensor {
  return g.weight(name, 'float32', t.shape, { kind: 'data', data: t.data, storedDType: 'float32' });
}

describe('softmax', () => {
  const cases: { shape: number[]; axis: number; range: [number, number] }[] = [
    { shape: [2, 3, 7], axis: -1, range: [-3, 3] },
    { shape: [2, 5, 3], axis: 1, range: [-3, 3] },
    { shape: [4, 6], axis: 0, range: [-3, 3] },
    // Large logits: exp overflows float32 unless the maximum is subtracted first.
    { shape: [3, 8], axis: -1, range: [60, 120] },
  ];
  cases.forEach(({ shape, axis, range }, caseIndex) => {
    it(`${shapeName(shape)} over axis ${axis}, logits in [${range.join(', ')}]`, async () => {
      const x = randomTensor(shape, seededUniform(7000 + caseIndex), ...range);
      const y = await runOp((t) => softmax(t.x, axis), { x });
      assertMatches(y, ref.softmax(toRef(x), axis), { atol: 1e-6, rtol: 1e-5, what: 'softmax' });
    });
  });

  it('errors: axis out of range, integer input', () => {
    const g = new GraphClass('errors');
    assertBuildError(() => softmax(g.input('x', 'float32', [2, 3]), 2), 'softmax', 'axis 2', '[2, 3]');
    assertBuildError(() => softmax(g.input('i', 'int32', [2, 3])), 'softmax', 'int32');
  });
});

describe('layerNorm', () => {
  const cases: { shape: number[]; axis: number; weight: boolean; bias: boolean; eps: number }[] = [
    { shape: [2, 3, 8], axis: -1, weight: true, bias: true, eps: 1e-5 },
    { shape: [2, 3, 8], axis: -1, weight: false, bias: false, eps: 1e-6 },
    { shape: [2, 3, 8], axis: -1, weight: true, bias: false, eps: 1e-5 },
    { shape: [2, 3, 8], axis: -1, weight: false, bias: true, eps: 1e-5 },
    { shape: [2, 4, 6], axis: -2, weight: true, bias: true, eps: 1e-5 },
    { shape: [2, 4, 6], axis: -2, weight: false, bias: false, eps: 1e-5 },
    { shape: [3, 2, 5], axis: 1, weight: true, bias: true, eps: 1e-5 },
    // eps comparable to the variance: a wrong placement of eps shows.
    { shape: [4, 16], axis: -1, weight: true, bias: true, eps: 0.05 },
  ];
  cases.forEach(({ shape, axis, weight, bias, eps }, caseIndex) => {
    const parts = [weight ? 'weight' : 'no weight', bias ? 'bias' : 'no bias', `eps ${eps}`].join(', ');
    it(`${shapeName(shape)} from axis ${axis}, ${parts}`, async () => {
      const random = seededUniform(7100 + caseIndex);
      // Offset and scaled, so that the mean and the variance both matter.
      const x = randomTensor(shape, random, eps > 0.01 ? 0.2 : -1, eps > 0.01 ? 0.8 : 3);
      const normalized = shape.slice(axis < 0 ? axis + shape.length : axis);
      const w = randomTensor(normalized, random, 0.5, 1.5);
      const b = randomTensor(normalized, random);
      const y = await runOp(
        (t, g) =>
          layerNorm(
            t.x,
            weight ? weightOf(g, 'ln.weight', w) : undefined,
            bias ? weightOf(g, 'ln.bias', b) : undefined,
            {
              eps,
              axis,
            },
          ),
        { x },
      );
      const expected = ref.layerNorm(
        toRef(x),
        axis,
        weight ? toRef(w) : undefined,
        bias ? toRef(b) : undefined,
        eps,
      );
      assertMatches(y, expected, { atol: 2e-5, rtol: 1e-5, what: 'layerNorm' });
    });
  });

  it('defaults: eps 1e-5 over the last axis', async () => {
    const x = randomTensor([3, 4], seededUniform(7150), -0.01, 0.01);
    const y = await runOp((t) => layerNorm(t.x, undefined, undefined), { x });
    assertMatches(y, ref.layerNorm(toRef(x), -1, undefined, undefined, 1e-5), {
      atol: 2e-5,
      what: 'layerNorm',
    });
  });

  it('errors: weight of the wrong shape, axis out of range', () => {
    const g = new GraphClass('errors');
    const x = g.input('x', 'float32', [2, 3, 8]);
    const w = g.input('w', 'float32', [3, 8]);
    assertBuildError(() => layerNorm(x, w, undefined), 'layerNorm', '[3, 8]', '[8]');
    assertBuildError(() => layerNorm(x, undefined, undefined, { axis: 3 }), 'layerNorm', 'axis 3');
    assertBuildError(() => g.scope('norm1', () => layerNorm(x, w, undefined)), 'norm1', 'layerNorm');
  });
});

describe('groupNorm', () => {
  const cases: { shape: number[]; groups: number; eps: number }[] = [
    { shape: [2, 6, 3, 4], groups: 1, eps: 1e-5 },
    { shape: [2, 6, 3, 4], groups: 2, eps: 1e-5 },
    { shape: [2, 6, 3, 4], groups: 3, eps: 1e-5 },
    { shape: [2, 6, 3, 4], groups: 6, eps: 1e-6 },
    { shape: [2, 8, 5], groups: 2, eps: 1e-5 },
    { shape: [2, 8, 5], groups: 4, eps: 1e-5 },
    { shape: [1, 4, 6], groups: 2, eps: 0.05 },
  ];
  cases.forEach(({ shape, groups, eps }, caseIndex) => {
    it(`${shapeName(shape)} in ${groups} groups, eps ${eps}`, async () => {
      const random = seededUniform(7200 + caseIndex);
      const x = randomTensor(shape, random, eps > 0.01 ? 0.2 : -1, eps > 0.01 ? 0.8 : 3);
      const w = randomTensor([shape[1]], random, 0.5, 1.5);
      const b = randomTensor([shape[1]], random);
      const y = await runOp(
        (t, g) => groupNorm(t.x, groups, weightOf(g, 'norm.weight', w), weightOf(g, 'norm.bias', b), eps),
        { x },
      );
      assertMatches(y, ref.groupNorm(toRef(x), groups, toRef(w), toRef(b), eps), {
        atol: 2e-5,
        rtol: 1e-5,
        what: `groupNorm(${groups})`,
      });
    });
  });

  it('stays accurate when group means are large against their spread', async () => {
    // Mean/std ≈ 50: a one-pass E[x²] − E[x]² variance in float32 is off by ~3e-4 here.
    const random = seededUniform(7250);
    const x = randomTensor([2, 8, 4, 4], random, 29, 31);
    const w = randomTensor([8], random, 0.5, 1.5);
    const b = randomTensor([8], random);
    for (const [what, y] of [
      [
        'groupNorm',
        await runOp((t, g) => groupNorm(t.x, 4, weightOf(g, 'w', w), weightOf(g, 'b', b)), { x }),
      ],
      ['layerNorm', await runOp((t) => layerNorm(t.x, undefined, undefined, { axis: 1 }), { x })],
    ] as const) {
      const expected =
        what === 'groupNorm'
          ? ref.groupNorm(toRef(x), 4, toRef(w), toRef(b), 1e-5)
          : ref.layerNorm(toRef(x), 1, undefined, undefined, 1e-5);
      assertMatches(y, expected, { atol: 5e-5, rtol: 1e-5, what });
    }
  });

  it('with named batch and spatial dims', async () => {
    const random = seededUniform(7260);
    const x = randomTensor([3, 6, 2, 5], random, -1, 2);
    const w = randomTensor([6], random, 0.5, 1.5);
    const b = randomTensor([6], random);
    const outputs = await runGraph(
      (g, t) => ({ y: groupNorm(t.x, 2, weightOf(g, 'w', w), weightOf(g, 'b', b)) }),
      { x },
      { x: ['B', 6, 'H', 'W'] },
    );
    assertMatches(outputs.y, ref.groupNorm(toRef(x), 2, toRef(w), toRef(b), 1e-5), {
      atol: 2e-5,
      what: 'groupNorm',
    });
  });

  it('in float16', async () => {
    const random = seededUniform(7270);
    const x = randomTensor([2, 6, 3, 4], random, -1, 3);
    const w = randomTensor([6], random, 0.5, 1.5);
    const b = randomTensor([6], random);
    const outputs = await runGraph(
      (_g, t) => {
        const half = (v: Tensor): Tensor => cast(v, 'float16');
        return { y: cast(groupNorm(half(t.x), 3, half(t.w), half(t.b)), 'float32') };
      },
      { x, w, b },
    );
    // float16 carries 11 significant bits: outputs of magnitude ≤ 4 are within ~2e-3.
    assertMatches(outputs.y, ref.groupNorm(toRef(x), 3, toRef(w), toRef(b), 1e-5), {
      atol: 3e-3,
      rtol: 1e-3,
      what: 'float16 groupNorm',
    });
  });

  it('errors: channels that do not split, bad weight, rank < 3', () => {
    const g = new GraphClass('errors');
    const x = g.input('x', 'float32', [2, 6, 4]);
    const w = g.input('w', 'float32', [6]);
    const short = g.input('short', 'float32', [5]);
    assertBuildError(() => groupNorm(x, 4, w, w), 'groupNorm', '6 channels', '4 groups');
    assertBuildError(() => groupNorm(x, 2, short, w), 'groupNorm', '[6]', '[5]');
    assertBuildError(() => groupNorm(g.input('flat', 'float32', [2, 6]), 2, w, w), 'groupNorm', '[2, 6]');
  });
});

describe('rmsNorm', () => {
  const cases: { shape: number[]; weight: boolean; eps: number }[] = [
    { shape: [2, 3, 8], weight: true, eps: 1e-6 },
    { shape: [2, 3, 8], weight: false, eps: 1e-6 },
    { shape: [4, 16], weight: true, eps: 0.05 },
  ];
  cases.forEach(({ shape, weight, eps }, caseIndex) => {
    it(`${shapeName(shape)}, ${weight ? 'weight' : 'no weight'}, eps ${eps}`, async () => {
      const random = seededUniform(7300 + caseIndex);
      const x = randomTensor(shape, random, -1, 2);
      const w = randomTensor([shape[shape.length - 1]], random, 0.5, 1.5);
      const y = await runOp((t, g) => rmsNorm(t.x, weight ? weightOf(g, 'norm.weight', w) : undefined, eps), {
        x,
      });
      assertMatches(y, ref.rmsNorm(toRef(x), weight ? toRef(w) : undefined, eps), { what: 'rmsNorm' });
    });
  });

  it('errors: a weight that is not [D] (mul would broadcast it)', () => {
    const g = new GraphClass('errors');
    const x = g.input('x', 'float32', [2, 3, 8]);
    for (const shape of [[1], [3, 8], [3]]) {
      const w = g.input(`w${shape.join('x')}`, 'float32', shape);
      assertBuildError(() => rmsNorm(x, w), 'rmsNorm', '[8]', `[${shape.join(', ')}]`);
    }
    const w = g.input('w', 'float32', [3]);
    assertBuildError(() => g.scope('norm_q', () => rmsNorm(x, w)), 'norm_q (rmsNorm)');
  });

  it('default eps is 1e-6', async () => {
    const x = randomTensor([2, 4], seededUniform(7350), -1e-3, 1e-3);
    const y = await runOp((t) => rmsNorm(t.x, undefined), { x });
    const expected = ref.rmsNorm(toRef(x), undefined, 1e-6);
    assertMatches(y, expected, { what: 'rmsNorm' });
    // With inputs this small eps dominates: a different default would move the result a lot.
    const other = ref.rmsNorm(toRef(x), undefined, 1e-5);
    assert.ok(Math.abs(other.data[0] - expected.data[0]) > 1e-2);
  });
});
