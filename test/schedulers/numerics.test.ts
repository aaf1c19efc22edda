/**
 * The numpy / torch / scipy semantics the schedulers rely on, against values printed by numpy 2 and
 * scipy 1.17 (`np.linspace`, `np.arange`, `np.round`, `np.interp`, `scipy.stats.beta.ppf`) and
 * against float64 math for torch's float32 exp.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import {
  arange,
  interpAtIntegers,
  linspace,
  roundHalfEven,
  torchExpFloat32,
} from '../../src/schedulers/numerics.js';
import { betaQuantile, sigmaToT } from '../../src/schedulers/sigma-schedules.js';
import { seededUniform, testSeed } from '../random.js';

describe('scheduler numerics', () => {
  it('linspace and arange reproduce numpy bit for bit', () => {
    assert.deepEqual(Array.from(linspace(0, 999, 7)), [0.0, 166.5, 333.0, 499.5, 666.0, 832.5, 999.0]);
    assert.deepEqual(Array.from(linspace(3, 5, 1)), [3]);
    assert.deepEqual(Array.from(arange(1000, 0, -1000 / 3)), [1000.0, 666.6666666666667, 333.3333333333335]);
    assert.deepEqual(
      Array.from(arange(1000, 0, -1000 / 7)),
      [
        1000.0, 857.1428571428571, 714.2857142857142, 571.4285714285713, 428.57142857142844,
        285.71428571428555, 142.85714285714266,
      ],
    );
  });

  it('rounds halves to even, as np.round', () => {
    assert.deepEqual(
      [0.5, 1.5, 2.5, -0.5, -1.5, 2.4999, 998.5].map(roundHalfEven),
      [0, 2, 2, -0, -2, 2, 998],
    );
  });

  it('interpolates between integer knots as np.interp', () => {
    const fp = Float32Array.of(1, 2, 4, 8);
    assert.deepEqual(
      [0.25, 3, 2.5, -1, 9].map((x) => interpAtIntegers(x, fp)),
      [1.25, 8.0, 6.0, 1.0, 8.0],
    );
  });

  it('betaQuantile matches scipy.stats.beta.ppf', () => {
    const cases: [number, number, number, number][] = [
      [0.1, 0.6, 0.6, 0.03958440558878085],
      [0.3, 0.6, 0.6, 0.23401700387523572],
      [0.7, 0.6, 0.6, 0.7659829961247643],
      [0.95, 0.6, 0.6, 0.9874455431263885],
      [1e-9, 0.6, 0.6, 1.85588246249141e-15],
      [0.2, 2.5, 0.4, 0.7479173429593555],
      [0.7, 2.5, 0.4, 0.9832005842167646],
    ];
    for (const [q, a, b, expected] of cases) {
      const actual = betaQuantile(q, a, b);
      assert.ok(
        Math.abs(actual - expected) <= 1e-12 * expected,
        `ppf(${q}; ${a}, ${b}) = ${actual}, scipy ${expected}`,
      );
    }
    assert.equal(betaQuantile(0, 0.6, 0.6), 0);
    assert.equal(betaQuantile(1, 0.6, 0.6), 1);
  });

  const expSeed = testSeed("torch's float32 exp on random arguments");
  it(`torch's float32 exp is within one float32 ulp of exp (seed ${expSeed})`, () => {
    // The value that tells SLEEF's expf_u10 from a correctly rounded expf (found in the DPM golden case).
    assert.equal(torchExpFloat32(-Math.fround(0.56543064)), Math.fround(0.5681154727935791));
    assert.equal(torchExpFloat32(0), 1);
    assert.equal(torchExpFloat32(-Infinity), 0);
    assert.equal(torchExpFloat32(Infinity), Infinity);
    const uniform = seededUniform(expSeed);
    for (let i = 0; i < 2000; i++) {
      const x = Math.fround((uniform() - 0.5) * 160);
      const exact = Math.exp(x);
      const ulp = 2 ** (Math.floor(Math.log2(exact)) - 23);
      assert.ok(Math.abs(torchExpFloat32(x) - exact) <= Math.max(ulp, 2 ** -149), `exp(${x})`);
    }
  });

  it('sigmaToT inverts the log-σ table, clamped at both ends', () => {
    const logSigmas = Float32Array.of(Math.log(0.1), Math.log(1), Math.log(10));
    assert.equal(sigmaToT(1, logSigmas), 1);
    assert.ok(Math.abs(sigmaToT(Math.sqrt(10), logSigmas) - 1.5) < 1e-6);
    assert.equal(sigmaToT(100, logSigmas), 2);
    assert.equal(sigmaToT(0.001, logSigmas), 0);
  });
});
