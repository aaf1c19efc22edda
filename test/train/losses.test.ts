import assert from 'node:assert/strict';
import { test } from 'node:test';

import { logSoftmax } from '../../src/graph/index.js';
import { hostTensor } from '../../src/runtime/host-tensor.js';
import { crossEntropy } from '../../src/train/losses.js';
import { gradCheck } from '../graph/gradcheck.js';
import { assertClose } from '../compare.js';
import { runGraph } from '../helpers.js';
import { seededUniform, testSeed } from '../random.js';

/** log softmax of one row in float64, by log-sum-exp around the row's max. */
function logSoftmaxRow(row: readonly number[]): number[] {
  const m = Math.max(...row);
  const lse = m + Math.log(row.reduce((s, v) => s + Math.exp(v - m), 0));
  return row.map((v) => v - lse);
}

test('logSoftmax and crossEntropy match a float64 reference, with logits far beyond exp’s range', async () => {
  const random = seededUniform(testSeed('crossEntropy values'));
  const batch = 5;
  const classes = 7;
  // Rows of scale 1, 100 and 1000: exp(1000) overflows float64, so a naive softmax would give NaN.
  const logits = Float64Array.from({ length: batch * classes }, (_, i) => {
    const scale = [1, 1, 100, 1000, 1][Math.floor(i / classes)];
    return scale * (2 * random() - 1);
  });
  const labels = Int32Array.from({ length: batch }, () => Math.floor(random() * classes));
  const out = await runGraph((_g, { x, y }) => ({ logp: logSoftmax(x, 1), loss: crossEntropy(x, y) }), {
    x: hostTensor('float64', [batch, classes], logits),
    y: hostTensor('int32', [batch], labels),
  });
  const expected: number[] = [];
  let loss = 0;
  for (let b = 0; b < batch; b++) {
    const row = logSoftmaxRow([...logits.subarray(b * classes, (b + 1) * classes)]);
    expected.push(...row);
    loss -= row[labels[b]] / batch;
  }
  assertClose(out.logp.data as Float64Array, expected, { rtol: 1e-12, atol: 1e-12, what: 'log softmax' });
  assert.deepEqual(out.loss.shape, []);
  assertClose(out.loss.data as Float64Array, [loss], { rtol: 1e-12, atol: 1e-12, what: 'cross-entropy' });
});

test('crossEntropy gradient against finite differences (float64; int32 and int64 labels)', async () => {
  for (const dtype of ['int32', 'int64'] as const) {
    await gradCheck({
      what: `crossEntropy, ${dtype} labels`,
      inputs: {
        x: { shape: [4, 6], range: [-3, 3] },
        y: {
          shape: [4],
          dtype,
          values: (random) =>
            dtype === 'int32'
              ? Int32Array.from({ length: 4 }, () => Math.floor(random() * 6))
              : BigInt64Array.from({ length: 4 }, () => BigInt(Math.floor(random() * 6))),
        },
      },
      build: (_g, { x, y }) => crossEntropy(x, y),
    });
  }
  await gradCheck({
    what: 'logSoftmax along axis 0',
    inputs: { x: { shape: [5, 3], range: [-4, 4] } },
    build: (_g, { x }) => logSoftmax(x, 0),
  });
});
