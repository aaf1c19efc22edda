/**
 * matmul (numpy semantics: batch broadcasting, 1-D operands) and linear (torch.nn.Linear weights
 * [out, in]) against float64 loops.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import type { Graph, Tensor } from '../../src/graph/index.js';
import { Graph as GraphClass, linear, matmul, serialize, transpose } from '../../src/graph/index.js';
import type { HostTensor } from '../../src/runtime/host-tensor.js';
import { randomTensor, runGraph } from '../helpers.js';
import { seededUniform } from '../random.js';
import { assertBuildError, assertMatches, runOp, toRef } from '../reference/check.js';
import * as ref from '../reference/math.js';

const shapeName = (shape: readonly number[]): string => `[${shape.join(', ')}]`;

describe('matmul', () => {
  const cases: { a: number[]; b: number[]; out: number[] }[] = [
    { a: [3, 4], b: [4, 5], out: [3, 5] },
    { a: [1, 7], b: [7, 1], out: [1, 1] },
    { a: [2, 3, 4], b: [2, 4, 5], out: [2, 3, 5] },
    { a: [2, 3, 4], b: [4, 6], out: [2, 3, 6] },
    { a: [3, 4], b: [2, 4, 5], out: [2, 3, 5] },
    { a: [2, 3, 2, 4], b: [1, 3, 4, 5], out: [2, 3, 2, 5] },
    { a: [2, 1, 3, 4], b: [3, 4, 2], out: [2, 3, 3, 2] },
    { a: [4], b: [4, 5], out: [5] },
    { a: [3, 4], b: [4], out: [3] },
    { a: [4], b: [4], out: [] },
    { a: [4], b: [2, 4, 5], out: [2, 5] },
    { a: [2, 3, 4], b: [4], out: [2, 3] },
  ];
  cases.forEach(({ a: aShape, b: bShape, out }, caseIndex) => {
    it(`${shapeName(aShape)} @ ${shapeName(bShape)} → ${shapeName(out)}`, async () => {
      const random = seededUniform(5000 + caseIndex);
      const a = randomTensor(aShape, random);
      const b = randomTensor(bShape, random);
      let built: Tensor | undefined;
      const y = await runOp((t) => (built = matmul(t.a, t.b)), { a, b });
      assert.deepEqual(built?.shape, out, 'inferred shape');
      const expected = ref.matmul(toRef(a), toRef(b));
      assert.deepEqual(expected.shape, out, 'reference shape');
      assertMatches(y, expected, { what: 'matmul' });
    });
  });

  it('with a long inner dim (k = 256)', async () => {
    const random = seededUniform(5100);
    const a = randomTensor([3, 256], random);
    const b = randomTensor([256, 4], random);
    const y = await runOp((t) => matmul(t.a, t.b), { a, b });
    assertMatches(y, ref.matmul(toRef(a), toRef(b)), { atol: 1e-4, rtol: 1e-5, what: 'matmul k=256' });
  });
});

describe('matmul build errors', () => {
  const inputs = (...shapes: number[][]): Tensor[] => {
    const g = new GraphClass('errors');
    return shapes.map((shape, i) => g.input(`x${i}`, 'float32', shape));
  };

  it('inner dims that differ name the op and both shapes', () => {
    const [a, b] = inputs([2, 3], [4, 5]);
    assertBuildError(() => matmul(a, b), 'matmul', '[2, 3]', '[4, 5]');
  });

  it('batch dims that do not broadcast', () => {
    const [a, b] = inputs([2, 3, 4], [3, 4, 5]);
    assertBuildError(() => matmul(a, b), 'matmul', '[2, 3, 4]', '[3, 4, 5]', 'batch');
  });

  it('rank-0 operands and mixed dtypes', () => {
    const [a, s] = inputs([2, 3], []);
    assertBuildError(() => matmul(a, s), 'matmul', '[2, 3]', '[]');
    const ints = a.graph.input('ints', 'int64', [3, 2]);
    assertBuildError(() => matmul(a, ints), 'matmul', 'float32', 'int64');
  });

  it('inside a scope the error names the module path', () => {
    const [a, b] = inputs([2, 3], [4, 5]);
    assertBuildError(
      () => a.graph.scope('blocks.0', () => matmul(a, b)),
      'blocks.0',
      'matmul',
      '[2, 3]',
      '[4, 5]',
    );
  });
});

/** A float32 graph weight holding `t`'s values in memory. */
function weightOf(g: Graph, name: string, t: HostTensor): Tensor {
  return g.weight(name, 'float32', t.shape, { kind: 'data', data: t.data, storedDType: 'float32' });
}

describe('linear', () => {
  const cases: { x: number[]; inFeatures: number; outFeatures: number; bias: boolean }[] = [
    { x: [2, 3, 8], inFeatures: 8, outFeatures: 6, bias: true },
    { x: [2, 3, 8], inFeatures: 8, outFeatures: 6, bias: false },
    { x: [5, 4], inFeatures: 4, outFeatures: 7, bias: true },
    { x: [3], inFeatures: 3, outFeatures: 2, bias: true },
  ];
  cases.forEach(({ x: xShape, inFeatures, outFeatures, bias }, caseIndex) => {
    it(`x ${shapeName(xShape)}, weight [${outFeatures}, ${inFeatures}]${bias ? ' and bias' : ''}`, async () => {
      const random = seededUniform(5200 + caseIndex);
      const x = randomTensor(xShape, random);
      const w = randomTensor([outFeatures, inFeatures], random);
      const b = randomTensor([outFeatures], random);
      const y = await runOp(
        (t, g) => linear(t.x, weightOf(g, 'proj.weight', w), bias ? weightOf(g, 'proj.bias', b) : undefined),
        { x },
      );
      assertMatches(y, ref.linear(toRef(x), toRef(w), bias ? toRef(b) : undefined), { what: 'linear' });
    });
  });

  it('reads a weight transposed in place (FusedMatMul transB), leaving ORT no Transpose to fold into a copy', async () => {
    const random = seededUniform(5210);
    const x = randomTensor([2, 3, 8], random);
    const w = randomTensor([6, 8], random);
    const v = randomTensor([6, 8], random);
    const build = (g: Graph, input: Tensor): { y: Tensor; z: Tensor; vt: Tensor } => {
      // `v` is also read transposed by something other than a MatMul: its Transpose stays.
      const vt = transpose(weightOf(g, 'other.weight', v), [1, 0]);
      return { y: linear(input, weightOf(g, 'proj.weight', w)), z: matmul(input, vt), vt };
    };
    const g = new GraphClass('in_place');
    const { y, z, vt } = build(g, g.input('x', 'float32', [2, 3, 8]));
    g.output('y', y);
    g.output('z', z);
    g.output('vt', vt);
    const mixed = Buffer.from(serialize(g).model);
    assert.ok(mixed.includes('FusedMatMul') && mixed.includes('Transpose'), "other.weight's Transpose kept");
    const only = new GraphClass('linear_only');
    only.output('y', linear(only.input('x', 'float32', [2, 3, 8]), weightOf(only, 'proj.weight', w)));
    const alone = Buffer.from(serialize(only).model);
    assert.ok(alone.includes('FusedMatMul') && !alone.includes('Transpose'), 'proj.weight read in place');
    const out = await runGraph(
      (graph, inputs) => {
        const built = build(graph, inputs.x);
        return { y: built.y, z: built.z };
      },
      { x },
    );
    assertMatches(out.y, ref.linear(toRef(x), toRef(w)), { what: 'linear, weight in place' });
    assertMatches(out.z, ref.linear(toRef(x), toRef(v)), { what: 'matmul by a transpose kept' });
  });

  it('a wrong input width names the expected and actual shapes, and the scope', () => {
    const g = new GraphClass('errors');
    const x = g.input('x', 'float32', [2, 3, 5]);
    const w = weightOf(g, 'w', randomTensor([6, 8], seededUniform(5300)));
    assertBuildError(() => linear(x, w), 'linear', 'expected [*, 8], got [2, 3, 5]');
    assertBuildError(
      () => g.scope('blocks.0', () => linear(x, w)),
      'blocks.0',
      'linear',
      '[*, 8]',
      '[2, 3, 5]',
    );
  });

  it('a bias that is not [out] (add would broadcast it)', () => {
    const g = new GraphClass('errors');
    const x = g.input('x', 'float32', [2, 8]);
    const w = weightOf(g, 'w', randomTensor([6, 8], seededUniform(5302)));
    for (const shape of [[1], [2, 6], [8]]) {
      const b = g.input(`b${shape.join('x')}`, 'float32', shape);
      assertBuildError(() => linear(x, w, b), 'linear', 'bias', '[6]', `[${shape.join(', ')}]`);
    }
  });

  it('a weight that is not [out, in]', () => {
    const g = new GraphClass('errors');
    const x = g.input('x', 'float32', [2, 8]);
    const w = weightOf(g, 'w', randomTensor([8], seededUniform(5301)));
    assertBuildError(() => linear(x, w), 'linear', '[8]', '[out, in]');
  });
});
