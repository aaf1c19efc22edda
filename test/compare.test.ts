/**
 * The suite's comparator (test/compare.ts) must fail on every non-finite mismatch, wherever it sits.
 *
 * The copies it replaced did not. Run on the cases below (functions copied from the commit before,
 * e06ef35), these passed:
 * - NaN at the first element, or NaN followed by a larger finite error: `assertGoldenClose`
 *   (test/schedulers/golden.ts) and `maxAbsDiff(…) <= TOLERANCE` (test/attention/clear.test.ts). Their
 *   running maximum `if (!(d <= worst)) worst = d` took the NaN, and the next element replaced it.
 * - finite where the reference is NaN: `maxAbsDiff(…) <= TOLERANCE`.
 * - finite where the reference is +Infinity, and +Infinity against −Infinity: `assertClose`
 *   (test/helpers.ts; |a − e| − rtol·|e| is NaN or −Inf, never above 0), `assertRelativeClose`
 *   (test/schedulers/random.ts; the scale max|e| became Infinity), `assertGoldenClose`, and the T5
 *   test's `assertGolden`.
 * - two empty arrays: all of them.
 */
import assert from 'node:assert/strict';
import { AssertionError } from 'node:assert';
import { describe, it } from 'node:test';

import {
  assertClose,
  assertExactlyEqual,
  assertMaxAbsError,
  assertScaledMaxAbsError,
  compareValues,
  goldenBound,
  maxAbs,
} from './compare.js';

/** A bound no finite error here comes near: only the non-finite rule can make these comparisons fail. */
const HUGE = 1e9;

/**
 * Every comparator rejects `actual` against `expected`, however loose its bound, with a message that
 * names `index` as the first offending element.
 */
function assertEveryComparatorRejects(
  actual: readonly number[],
  expected: readonly number[],
  index: number,
): void {
  const comparators: [string, () => unknown][] = [
    ['compareValues', () => compareValues(actual, expected, 'x')],
    ['assertClose', () => assertClose(actual, expected, { atol: HUGE, rtol: HUGE, what: 'x' })],
    ['assertMaxAbsError', () => assertMaxAbsError(actual, expected, HUGE, 'x')],
    ['assertScaledMaxAbsError', () => assertScaledMaxAbsError(actual, expected, HUGE, 'x')],
    ['assertExactlyEqual', () => assertExactlyEqual(actual, expected, 'x')],
  ];
  for (const [name, compare] of comparators) {
    assert.throws(
      compare,
      (e: unknown) => e instanceof AssertionError && e.message.startsWith(`x: [${index}] is `),
      `${name} should reject [${actual.join(', ')}] against [${expected.join(', ')}] at [${index}]`,
    );
  }
}

describe('compare.ts fails on every non-finite mismatch', () => {
  it('NaN at the first element where the reference is finite', () => {
    assertEveryComparatorRejects([NaN, 1, 2], [0, 1, 2], 0);
  });

  it('NaN in the middle, followed by a larger finite error (what a running maximum lost)', () => {
    // The finite error 1e-3 alone would pass a 1e-2 bound; the NaN before it must not.
    assertEveryComparatorRejects([0, NaN, 2.001], [0, 1, 2], 1);
    assert.throws(() => assertMaxAbsError([0, NaN, 2.001], [0, 1, 2], 1e-2), /\[1\] is NaN/);
    assertMaxAbsError([0, 1, 2.001], [0, 1, 2], 1e-2);
  });

  it('finite where the reference is NaN', () => {
    assertEveryComparatorRejects([0, 1, 2], [0, NaN, 2], 1);
  });

  it('+Infinity where the reference is finite', () => {
    assertEveryComparatorRejects([0, Infinity, 2], [0, 1, 2], 1);
  });

  it('finite where the reference is +Infinity (what helpers.ts assertClose let through)', () => {
    assertEveryComparatorRejects([0, 1, 2], [0, Infinity, 2], 1);
    assertEveryComparatorRejects([0, 1, 2], [0, 1, -Infinity], 2);
  });

  it('+Infinity where the reference is −Infinity', () => {
    assertEveryComparatorRejects([Infinity, 1], [-Infinity, 1], 0);
    assertEveryComparatorRejects([1, -Infinity], [1, Infinity], 1);
  });

  it('NaN against NaN and each infinity against itself pass, and the finite rest is still measured', () => {
    const comparison = compareValues([NaN, Infinity, -Infinity, 1.5, 2], [NaN, Infinity, -Infinity, 1, 2]);
    assert.deepEqual(comparison, { maxAbsError: 0.5, maxAbsIndex: 3, scale: 2 });
    assertExactlyEqual([NaN, Infinity, -Infinity, 1], [NaN, Infinity, -Infinity, 1]);
    assertClose([NaN, Infinity, 1 + 1e-6], [NaN, Infinity, 1], { atol: 2e-6, rtol: 0 });
    assert.throws(() => assertMaxAbsError([NaN, Infinity, 1.5], [NaN, Infinity, 1], 0.4), /\[2\]/);
  });

  it('names the first offending element, not the worst or the last', () => {
    assertEveryComparatorRejects([0, 1, NaN, Infinity, -Infinity], [0, 1, 2, 3, 4], 2);
  });

  it('rejects a length mismatch', () => {
    assert.throws(() => compareValues([1, 2], [1, 2, 3], 'x'), /x: 2 values, expected 3/);
    assert.throws(() => assertClose([1, 2, 3], [1, 2], { atol: HUGE }), /3 values, expected 2/);
    assert.throws(() => assertExactlyEqual([], [1]), /0 values, expected 1/);
  });

  it('rejects a comparison of nothing, which could not fail', () => {
    assert.throws(() => compareValues([], [], 'x'), /x: nothing to compare/);
    assert.throws(() => assertMaxAbsError(new Float32Array(0), new Float64Array(0), 1), /nothing to compare/);
  });
});

describe('compare.ts bounds', () => {
  it('assertClose allows |a − e| ≤ atol + rtol·|e| at each element and names the worst excess', () => {
    // Bounds: 0.1 + 0.5·|e| = 0.1, 0.6, 5.1; the errors 0.05, 0.55, 5 are inside.
    assertClose([0.05, 1.55, 15], [0, 1, 10], { atol: 0.1, rtol: 0.5 });
    assert.throws(
      () => assertClose([0.2, 1.55, 16], [0, 1, 10], { atol: 0.1, rtol: 0.5, what: 'y' }),
      (e: unknown) => e instanceof AssertionError && /^y: \[2\] is 16, expected 10/.test(e.message),
    );
    // rtol scales with each element's own |expected|, not with the largest one.
    assert.throws(() => assertClose([100, 0.5], [100, 0], { atol: 0, rtol: 0.01 }), /\[1\] is 0\.5/);
  });

  it('assertMaxAbsError allows max |a − e| ≤ bound, returns the figures and names the worst element', () => {
    const comparison = assertMaxAbsError(Float32Array.of(1, 2.25, 3), [1, 2, 3], 0.25);
    assert.deepEqual(comparison, { maxAbsError: 0.25, maxAbsIndex: 1, scale: 3 });
    assert.throws(
      () => assertMaxAbsError([1, 2.5, 3.25], [1, 2, 3], 0.25, 'z'),
      (e: unknown) => e instanceof AssertionError && /^z: max .* = 5\.000e-1 at \[1\]/.test(e.message),
    );
  });

  it('assertScaledMaxAbsError scales its bound by max(1, max|expected|)', () => {
    // Below 1 the bound is 1e-3 itself; above, 1e-3 of the largest |expected|.
    assertScaledMaxAbsError([0.5009], [0.5], 1e-3);
    assert.throws(() => assertScaledMaxAbsError([0.502], [0.5], 1e-3), /exceeds/);
    assertScaledMaxAbsError([0, 100.09], [0, 100], 1e-3);
    assert.throws(() => assertScaledMaxAbsError([0.2, 100], [0, 100], 1e-3), /exceeds/);
  });

  it('assertExactlyEqual fails on one float32 ulp', () => {
    const one = Float32Array.of(1);
    const next = new Float32Array(new Uint32Array([0x3f800001]).buffer);
    assertExactlyEqual(one, [1]);
    assert.throws(() => assertExactlyEqual(next, one), /exceeds 0\.000e\+0/);
  });

  it('a NaN, infinite or negative bound is a test bug, not a pass', () => {
    assert.throws(() => assertMaxAbsError([1], [2], NaN), /bound NaN is not a finite, non-negative bound/);
    assert.throws(() => assertMaxAbsError([1], [2], Infinity), /not a finite/);
    assert.throws(() => assertClose([1], [2], { atol: NaN }), /atol NaN/);
    assert.throws(() => assertClose([1], [2], { rtol: -1 }), /rtol -1/);
  });

  it('maxAbs ignores NaN and infinities, so a scale built from it stays finite', () => {
    assert.equal(maxAbs([1, -3, NaN, Infinity, -Infinity, 2]), 3);
    assert.equal(maxAbs([NaN]), 0);
  });
});

describe('goldenBound', () => {
  const meta = { fp32_vs_fp64: { sample: { max_abs: 4e-7, max_abs_ref: 2.6 } } };

  it("is 10× the fixture's recorded fp32-vs-fp64 max |difference| unless told otherwise", () => {
    assert.equal(goldenBound(meta, 'sample'), 10 * 4e-7);
    assert.equal(goldenBound(meta, 'sample', 3), 3 * 4e-7);
  });

  it('throws when the record is missing or empty, instead of falling back to a loose bound', () => {
    assert.throws(() => goldenBound(meta, 'latents'), /records no fp32_vs_fp64\.latents\.max_abs/);
    assert.throws(() => goldenBound({}, 'sample'), /records no fp32_vs_fp64\.sample\.max_abs/);
    const zero = { fp32_vs_fp64: { sample: { max_abs: 0, max_abs_ref: 1 } } };
    assert.throws(() => goldenBound(zero, 'sample'), /records no fp32_vs_fp64\.sample/);
  });
});
