/**
 * The test suite's one seeded generator, and its seeds. A test that draws a fresh seed on every run
 * gets it from `testSeed`, which prints it; `VELODIFF_TEST_SEED=N npm test` (or `node --import tsx
 * --test FILE`) replays every such test with seed N.
 */

/** mulberry32: small, seedable uniform numbers in [0, 1), good enough for test inputs. */
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

/** The environment variable that replays a run's fresh seeds. */
export const SEED_VARIABLE = 'VELODIFF_TEST_SEED';

/**
 * A fresh seed for `what` (or the replay seed from VELODIFF_TEST_SEED), printed on stderr with the
 * command that replays it, so that a failure seen once can be run again.
 */
export function testSeed(what: string): number {
  const fromEnvironment = process.env[SEED_VARIABLE];
  let seed: number;
  if (fromEnvironment === undefined || fromEnvironment === '') {
    seed = Math.floor(Math.random() * 2 ** 32);
  } else {
    seed = Number(fromEnvironment);
    if (!Number.isInteger(seed) || seed < 0 || seed >= 2 ** 32) {
      throw new Error(`${SEED_VARIABLE}=${fromEnvironment}: expected an integer in [0, 2^32)`);
    }
  }
  process.stderr.write(`# seed ${seed} for ${what} (replay: ${SEED_VARIABLE}=${seed})\n`);
  return seed;
}

/** Standard normals (Box–Muller) from a uniform generator. */
export function normalArray(count: number, uniform: () => number): Float32Array {
  const data = new Float32Array(count);
  for (let i = 0; i < count; i++) {
    const radius = Math.sqrt(-2 * Math.log(1 - uniform()));
    data[i] = radius * Math.cos(2 * Math.PI * uniform());
  }
  return data;
}
