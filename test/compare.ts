/**
 * The one comparator of the test suite. Every numeric check goes through `compareValues`, which
 * fails on any non-finite mismatch before it measures anything: a NaN where the reference is finite
 * (or finite where it is NaN), or an infinity where the reference has a finite value or the other
 * infinity. A running maximum cannot hide a NaN here, because NaN never enters the maximum.
 */
import { AssertionError } from 'node:assert';

/** What a comparison measured over the finite elements (non-finite ones must match exactly). */
export interface Comparison {
  /** max |actual − expected| over the elements whose reference is finite; 0 when there are none. */
  readonly maxAbsError: number;
  /** Index of that element (−1 when there is none). */
  readonly maxAbsIndex: number;
  /** max |expected| over the finite reference values, at least 1: the scale of "relative to max(1, max|x|)". */
  readonly scale: number;
}

function fail(what: string, message: string): never {
  throw new AssertionError({ message: `${what}: ${message}` });
}

/** A NaN or infinite bound would let every comparison pass (NaN > x is false), so it is a test bug. */
function checkBound(value: number, name: string, what: string): void {
  if (!(value >= 0 && value < Infinity)) fail(what, `${name} ${value} is not a finite, non-negative bound`);
}

/**
 * Compares element by element. Throws (naming `what` and the first index) on a length mismatch, on
 * empty arrays, or on a non-finite mismatch: NaN against anything but NaN, ±Infinity against anything
 * but the same infinity.
 * Returns the largest absolute error over the finite elements.
 */
export function compareValues(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  what = 'values',
): Comparison {
  if (actual.length !== expected.length) {
    fail(what, `${actual.length} values, expected ${expected.length}`);
  }
  // A comparison of nothing cannot fail: the test would pass whatever the code under test did.
  if (expected.length === 0) fail(what, 'nothing to compare (0 values)');
  let maxAbsError = 0;
  let maxAbsIndex = -1;
  let scale = 1;
  for (let i = 0; i < expected.length; i++) {
    const a = actual[i];
    const e = expected[i];
    if (!Number.isFinite(e)) {
      // NaN matches only NaN; an infinity only the same infinity.
      if (!(Number.isNaN(e) ? Number.isNaN(a) : a === e)) {
        fail(what, `[${i}] is ${a}, expected ${e} (first non-finite mismatch)`);
      }
      continue;
    }
    if (!Number.isFinite(a)) fail(what, `[${i}] is ${a}, expected ${e} (first non-finite mismatch)`);
    const error = Math.abs(a - e);
    if (error > maxAbsError || maxAbsIndex < 0) {
      maxAbsError = error;
      maxAbsIndex = i;
    }
    if (Math.abs(e) > scale) scale = Math.abs(e);
  }
  return { maxAbsError, maxAbsIndex, scale };
}

export interface Tolerance {
  /** Absolute part of the bound. */
  readonly atol?: number;
  /** Relative part, times |expected| of each element. */
  readonly rtol?: number;
  /** Names the compared thing in a failure. */
  readonly what?: string;
}

/**
 * Asserts |actual − expected| ≤ atol + rtol·|expected| at every element (non-finite values must match
 * exactly), naming the element that exceeds its bound the most. Returns the comparison's figures.
 */
export function assertClose(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  { atol = 1e-5, rtol = 1e-5, what = 'values' }: Tolerance = {},
): Comparison {
  checkBound(atol, 'atol', what);
  checkBound(rtol, 'rtol', what);
  const comparison = compareValues(actual, expected, what);
  let worst = -1;
  let worstExcess = 0;
  for (let i = 0; i < expected.length; i++) {
    const e = expected[i];
    if (!Number.isFinite(e)) continue;
    const excess = Math.abs(actual[i] - e) - (atol + rtol * Math.abs(e));
    if (excess > worstExcess) {
      worst = i;
      worstExcess = excess;
    }
  }
  if (worst >= 0) {
    fail(
      what,
      `[${worst}] is ${actual[worst]}, expected ${expected[worst]} (|diff| ` +
        `${Math.abs(actual[worst] - expected[worst]).toExponential(3)} > atol ${atol} + rtol ${rtol}·|expected|)`,
    );
  }
  return comparison;
}

/** Asserts max |actual − expected| ≤ bound (non-finite values must match exactly); returns the figures. */
export function assertMaxAbsError(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  bound: number,
  what = 'values',
): Comparison {
  checkBound(bound, 'bound', what);
  const comparison = compareValues(actual, expected, what);
  if (comparison.maxAbsError > bound) {
    const i = comparison.maxAbsIndex;
    fail(
      what,
      `max |actual − expected| = ${comparison.maxAbsError.toExponential(3)} at [${i}] (actual ` +
        `${actual[i]}, expected ${expected[i]}) exceeds ${bound.toExponential(3)}`,
    );
  }
  return comparison;
}

/** Asserts bit-for-bit equality of numbers (NaN equals NaN; +0 and −0 differ only in sign, counted equal). */
export function assertExactlyEqual(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  what = 'values',
): void {
  assertMaxAbsError(actual, expected, 0, what);
}

/**
 * Asserts max |actual − expected| ≤ relative · max(1, max|expected|) (non-finite values must match
 * exactly): a bound relative to the reference's scale, for outputs that have no recorded fp32 noise.
 */
export function assertScaledMaxAbsError(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  relative: number,
  what = 'values',
): Comparison {
  const { scale } = compareValues(actual, expected, what);
  return assertMaxAbsError(actual, expected, relative * scale, what);
}

/** max |x| over the finite values (0 for none): the scale a relative tolerance multiplies. */
export function maxAbs(values: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < values.length; i++) {
    const v = Math.abs(values[i]);
    // An infinity would make every bound scaled by it pass.
    if (v > m && v !== Infinity) m = v;
  }
  return m;
}

/** The fp32-vs-fp64 record of one output in a golden case's meta.json. */
export interface Fp32Noise {
  readonly max_abs: number;
  readonly max_abs_ref: number;
}

/**
 * The bound a golden comparison may use: `factor` (10 unless the test says why) times the fp32-vs-fp64
 * max |difference| that the fixture's meta.json records for `output`. Throws when the record is missing,
 * so a test cannot silently fall back to a loose bound.
 */
export function goldenBound(
  meta: { readonly fp32_vs_fp64?: Readonly<Record<string, Fp32Noise>> },
  output: string,
  factor = 10,
): number {
  const record = meta.fp32_vs_fp64?.[output];
  if (record === undefined || !(record.max_abs > 0)) {
    throw new Error(`meta.json records no fp32_vs_fp64.${output}.max_abs to size the tolerance from`);
  }
  return factor * record.max_abs;
}
