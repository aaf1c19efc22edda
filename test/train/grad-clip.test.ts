import assert from 'node:assert/strict';
import { test } from 'node:test';

import { clipGradNorm, NonFiniteGradientError } from '../../src/train/grad-clip.js';
import { assertClose, assertExactlyEqual } from '../compare.js';
import { normalArray, seededUniform, testSeed } from '../random.js';

function randomGrads(random: () => number, scale: number): Map<string, Float32Array> {
  return new Map([
    ['a.weight', normalArray(30, random).map((g) => g * scale)],
    ['a.bias', normalArray(5, random).map((g) => g * scale)],
    ['b.weight', normalArray(12, random).map((g) => g * scale)],
  ]);
}

test('clipGradNorm: scales by maxNorm/(norm + 1e-6) above maxNorm, leaves gradients alone below', () => {
  const random = seededUniform(testSeed('clipGradNorm'));
  const grads = randomGrads(random, 3);
  const original = new Map([...grads].map(([n, g]) => [n, g.slice()]));
  // The norm by another route: Math.hypot over every element.
  const norm = Math.hypot(...[...original.values()].flatMap((g) => [...g]));
  const maxNorm = norm / 4;
  const result = clipGradNorm(grads, maxNorm);
  assertClose([result.norm], [norm], { atol: 0, rtol: 1e-12, what: 'pre-clip norm' });
  const scale = maxNorm / (norm + 1e-6);
  assertClose([result.scale], [scale], { atol: 0, rtol: 1e-12, what: 'scale' });
  for (const [name, grad] of grads) {
    assertClose(
      grad,
      Array.from(original.get(name)!, (g) => g * scale),
      { atol: 1e-7, rtol: 1e-6, what: name },
    );
  }
  const after = Math.hypot(...[...grads.values()].flatMap((g) => [...g]));
  assertClose([after], [maxNorm], { atol: 0, rtol: 1e-6, what: 'norm after clipping' });

  const small = randomGrads(random, 0.01);
  const smallCopy = new Map([...small].map(([n, g]) => [n, g.slice()]));
  const unclipped = clipGradNorm(small, 10);
  assertExactlyEqual([unclipped.scale], [1], 'scale within maxNorm');
  for (const [name, grad] of small) assertExactlyEqual(grad, smallCopy.get(name)!, name);
});

test('clipGradNorm: a non-finite norm throws naming the parameters, or skips by policy', () => {
  const random = seededUniform(testSeed('clipGradNorm non-finite'));
  const grads = randomGrads(random, 1);
  grads.get('a.bias')![2] = Number.NaN;
  grads.get('b.weight')![0] = Infinity;
  const copy = new Map([...grads].map(([n, g]) => [n, g.slice()]));
  assert.throws(
    () => clipGradNorm(grads, 1),
    (error: unknown) =>
      error instanceof NonFiniteGradientError &&
      error.code === 'GRADIENT_NOT_FINITE' &&
      error.parameters.join() === 'a.bias,b.weight' &&
      /'a\.bias', 'b\.weight' hold inf or NaN/.test(error.message),
  );
  const skipped = clipGradNorm(grads, 1, { nonFinite: 'skip' });
  assert.equal(skipped.skipped, true);
  assertExactlyEqual([skipped.norm], [Number.NaN], 'norm of non-finite gradients');
  assert.deepEqual(skipped.nonFinite, ['a.bias', 'b.weight']);
  for (const [name, grad] of grads) assertExactlyEqual(grad, copy.get(name)!, name);
  assert.throws(() => clipGradNorm(grads, 0), /maxNorm/);
});
