import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { OptionError } from '../../src/errors.js';
import { Mt19937, seedToUint64 } from '../../src/random/mt19937.js';
import { seededUniform } from '../random.js';

function outputs(engine: Mt19937, count: number): number[] {
  return Array.from({ length: count }, () => engine.nextUint32());
}

describe('Mt19937', () => {
  it('gives the published reference sequence for seed 5489', () => {
    // mt19937ar's init_genrand(5489) and std::mt19937's default-constructed stream.
    assert.deepEqual(
      outputs(new Mt19937(5489), 5),
      [3499211612, 581869302, 3890346734, 3586334585, 545404204],
    );
    assert.deepEqual(outputs(new Mt19937(), 1), [3499211612]);
  });

  it('gives 4123659995 as the 10000th output for seed 5489 (C++ standard, [rand.predef])', () => {
    const engine = new Mt19937(5489);
    for (let i = 0; i < 9999; i++) engine.nextUint32();
    assert.equal(engine.nextUint32(), 4123659995);
  });

  it("gives numpy's published RandomState(0).random_sample() doubles for seed 0", () => {
    // numpy's legacy integer seeding is init_genrand too; doubles take 27 + 26 bits of two outputs.
    const engine = new Mt19937(0);
    const uniform53 = (): number => {
      const high = engine.nextUint32() >>> 5;
      const low = engine.nextUint32() >>> 6;
      return (high * 67108864 + low) / 9007199254740992;
    };
    assert.deepEqual(
      Array.from({ length: 5 }, uniform53),
      [0.5488135039273248, 0.7151893663724195, 0.6027633760716439, 0.5448831829968969, 0.4236547993389047],
    );
  });

  it('seeds from the low 32 bits only, as torch does, keeping the 64-bit seed', () => {
    const random = seededUniform(0x5eed);
    const seed = Math.floor(random() * 2 ** 32);
    const reference = outputs(new Mt19937(seed), 700); // crosses a twist
    const high = 2n ** 32n * BigInt(1 + Math.floor(random() * 1000));
    const wide = new Mt19937(BigInt(seed) + high);
    assert.equal(wide.seed, BigInt(seed) + high);
    assert.deepEqual(outputs(wide, 700), reference);
  });

  it("reads negative seeds as torch does, by their 64-bit two's complement", () => {
    assert.equal(seedToUint64(-1), 2n ** 64n - 1n);
    assert.equal(seedToUint64(-(2n ** 63n)), 2n ** 63n);
    assert.deepEqual(outputs(new Mt19937(-1), 5), outputs(new Mt19937(0xffffffff), 5));
  });

  it('rejects seeds torch rejects, and non-integers', () => {
    for (const bad of [0.5, Number.NaN, 2 ** 53, 2n ** 64n, -(2n ** 63n) - 1n]) {
      assert.throws(
        () => new Mt19937(bad),
        (error: unknown) => error instanceof OptionError,
      );
    }
  });

  it('resumes from a saved state, mid-block and across twists', () => {
    const random = seededUniform(7);
    const engine = new Mt19937(Math.floor(random() * 2 ** 32));
    outputs(engine, 1 + Math.floor(random() * 1500));
    const saved = engine.getState();
    const expected = outputs(engine, 1300);
    const resumed = new Mt19937(123);
    resumed.setState(saved);
    assert.deepEqual(outputs(resumed, 1300), expected);
    // The saved copy is not aliased to the live engine.
    resumed.setState(saved);
    assert.deepEqual(outputs(resumed, 3), expected.slice(0, 3));
  });

  it('rejects corrupt states', () => {
    const state = new Mt19937(1).getState();
    for (const bad of [
      { ...state, left: 0 },
      { ...state, left: 625 },
      { ...state, next: 625 },
      { ...state, words: new Uint32Array(623) },
    ]) {
      assert.throws(
        () => new Mt19937().setState(bad),
        (error: unknown) => error instanceof OptionError,
      );
    }
  });
});
