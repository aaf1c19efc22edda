/**
 * Fresh random inputs for the scheduler tests: a new seed per run (printed on failure through the
 * test names) and standard normals from it, so that a failure can be replayed with its seed.
 */
import type { SchedulerTensor } from '../../src/schedulers/index.js';

/** mulberry32: small, seedable, good enough for test inputs. */
export function seededUniform(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A seed from the environment (SCHEDULER_TEST_SEED, to replay a failure) or a fresh one. */
export function testSeed(): number {
  const fromEnvironment = process.env['SCHEDULER_TEST_SEED'];
  return fromEnvironment === undefined ? Math.floor(Math.random() * 2 ** 32) : Number(fromEnvironment);
}

/** Standard normals shaped `shape` (Box–Muller). */
export function randomNormal(shape: readonly number[], uniform: () => number): SchedulerTensor {
  const size = shape.reduce((a, b) => a * b, 1);
  const data = new Float32Array(size);
  for (let i = 0; i < size; i++) {
    const radius = Math.sqrt(-2 * Math.log(1 - uniform()));
    data[i] = radius * Math.cos(2 * Math.PI * uniform());
  }
  return { data, shape: [...shape] };
}

/** Asserts |actual − expected| ≤ tolerance · max(1, max|expected|), naming the worst element. */
export function assertRelativeClose(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  tolerance: number,
  what: string,
): void {
  if (actual.length !== expected.length)
    throw new Error(`${what}: ${actual.length} values, expected ${expected.length}`);
  let scale = 1;
  for (let i = 0; i < expected.length; i++) scale = Math.max(scale, Math.abs(expected[i]));
  for (let i = 0; i < expected.length; i++) {
    const error = Math.abs(actual[i] - expected[i]);
    if (!(error <= tolerance * scale)) {
      throw new Error(
        `${what}: |${actual[i]} − ${expected[i]}| = ${error} at ${i} exceeds ${tolerance} · ${scale}`,
      );
    }
  }
}
