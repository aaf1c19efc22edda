import assert from 'node:assert/strict';
import { test } from 'node:test';

import { GradientAccumulator } from '../../src/train/grad-accumulation.js';
import { assertClose } from '../compare.js';
import { normalArray, seededUniform, testSeed } from '../random.js';

/** ∂/∂w of the mean squared error ½·mean((x·w − y)²) over `rows`, in float64. */
function linearGradient(x: Float32Array[], y: number[], w: Float32Array, rows: number[]): Float64Array {
  const grad = new Float64Array(w.length);
  for (const r of rows) {
    let prediction = 0;
    for (let j = 0; j < w.length; j++) prediction += x[r][j] * w[j];
    for (let j = 0; j < w.length; j++) grad[j] += ((prediction - y[r]) * x[r][j]) / rows.length;
  }
  return grad;
}

test('GradientAccumulator: the mean over 3 micro-batches is the gradient of the whole batch', () => {
  const random = seededUniform(testSeed('gradient accumulation'));
  const x = Array.from({ length: 6 }, () => normalArray(4, random));
  const y = Array.from(normalArray(6, random));
  const w = normalArray(4, random);
  const accumulator = new GradientAccumulator(['w'], 3);
  for (const rows of [
    [0, 1],
    [2, 3],
    [4, 5],
  ]) {
    assert.equal(accumulator.ready, false);
    accumulator.add(new Map([['w', Float32Array.from(linearGradient(x, y, w, rows))]]));
  }
  assert.equal(accumulator.ready, true);
  assert.throws(() => accumulator.add(new Map([['w', new Float32Array(4)]])), /take\(\)/);
  const mean = accumulator.take();
  assertClose(mean.get('w')!, linearGradient(x, y, w, [0, 1, 2, 3, 4, 5]), {
    atol: 1e-6,
    rtol: 1e-6,
    what: 'mean',
  });
  assert.equal(accumulator.count, 0);
  assert.throws(() => accumulator.take(), /add\(\) at least one/);
});

test('GradientAccumulator: sum, and a short last group (end of an epoch) averaged over what was added', () => {
  const random = seededUniform(testSeed('gradient accumulation sum'));
  const micro = Array.from(
    { length: 2 },
    () =>
      new Map([
        ['a', normalArray(5, random)],
        ['b', normalArray(3, random)],
      ]),
  );
  const sum = new GradientAccumulator(['a', 'b'], 2, 'sum');
  for (const grads of micro) sum.add(grads);
  const summed = sum.take();
  const mean = new GradientAccumulator(['a', 'b'], 4);
  for (const grads of micro) mean.add(grads);
  const averaged = mean.take();
  for (const name of ['a', 'b']) {
    const expectedSum = Array.from(micro[0].get(name)!, (g, i) => g + micro[1].get(name)![i]);
    assertClose(summed.get(name)!, expectedSum, { atol: 1e-7, rtol: 1e-7, what: `sum ${name}` });
    assertClose(
      averaged.get(name)!,
      expectedSum.map((g) => g / 2),
      { atol: 1e-7, rtol: 1e-7, what: `mean ${name}` },
    );
  }
  // The inputs were read, not kept.
  assert.notEqual(summed.get('a'), micro[0].get('a'));
  assert.throws(() => sum.add(new Map([['a', new Float32Array(5)]])), /missing: 'b'/);
  assert.throws(() => new GradientAccumulator(['a'], 0), /integer ≥ 1/);
});
