/**
 * Training timesteps: the logit-normal mapping (SD3's density) against its analytic distribution
 * function, computed independently by integrating the normal density, and at a few exact points.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { logitNormalTimesteps, uniformTimesteps } from '../../src/train/noising.js';
import { normalArray, seededUniform, testSeed } from '../random.js';

const STEPS = 1000;
const SCHEDULE = new Float32Array(STEPS);

/** Φ(z) by Simpson's rule on the standard normal density over [−10, z]: independent of Math.exp in sigmoid. */
function normalCdf(z: number): number {
  const lo = -10;
  if (z <= lo) return 0;
  const intervals = 4000;
  const h = (z - lo) / intervals;
  const density = (x: number): number => Math.exp(-0.5 * x * x) / Math.sqrt(2 * Math.PI);
  let sum = density(lo) + density(z);
  for (let i = 1; i < intervals; i++) sum += (i % 2 === 1 ? 4 : 2) * density(lo + i * h);
  return (sum * h) / 3;
}

describe('training timesteps', () => {
  it('logit-normal: exact timesteps for a few draws, a positive mean towards high noise, capped at T − 1', () => {
    // ⌊1000·sigmoid(m + s·n)⌋, sigmoid(0.5) = 0.62246, sigmoid(2) = 0.88080, sigmoid(−1) = 0.26894, …
    const draws = [0, 1, -1, 0.3, -2.5, 8, 40, -40];
    assert.deepEqual(
      logitNormalTimesteps(draws, SCHEDULE, { mean: 0.5, std: 1.5 }),
      [622, 880, 268, 721, 37, 999, 999, 0],
    );
    assert.deepEqual(
      logitNormalTimesteps(draws, SCHEDULE, { mean: -1, std: 0.7 }),
      [268, 425, 154, 312, 60, 990, 999, 0],
    );
    // mean 0, std → 0: every draw at the middle of the schedule.
    assert.deepEqual(logitNormalTimesteps([-3, 0, 3], SCHEDULE, { mean: 0, std: 1e-9 }), [499, 500, 500]);
    assert.deepEqual(uniformTimesteps([0, 0.5, 0.9999999], SCHEDULE), [0, 500, 999]);
  });

  it('logit-normal: the empirical distribution of t is Φ((logit((t + 1)/T) − m)/s) within the DKW bound', () => {
    const seed = testSeed('logit-normal timesteps');
    const random = seededUniform(seed);
    const mean = random() * 3 - 1.5;
    const std = 0.5 + random() * 1.5;
    const count = 200_000;
    const timesteps = logitNormalTimesteps(normalArray(count, random), SCHEDULE, { mean, std });
    const histogram = new Float64Array(STEPS);
    for (const t of timesteps) {
      assert.ok(Number.isInteger(t) && t >= 0 && t < STEPS, `t = ${t}`);
      histogram[t] += 1;
    }
    // t ≤ k ⟺ sigmoid(m + s·n) < (k + 1)/T ⟺ n < (logit((k + 1)/T) − m)/s.
    // DKW: P(sup |F_n − F| > ε) ≤ 2·exp(−2nε²) = 2·exp(−10) ≈ 9e-5 at ε = 0.005, n = 200 000.
    const tolerance = 0.005;
    let below = 0;
    let worst = 0;
    let worstAt = -1;
    for (let k = 0; k < STEPS - 1; k++) {
      below += histogram[k];
      const p = (k + 1) / STEPS;
      const expected = normalCdf((Math.log(p / (1 - p)) - mean) / std);
      const error = Math.abs(below / count - expected);
      if (error > worst) [worst, worstAt] = [error, k];
    }
    assert.ok(
      worst <= tolerance,
      `mean ${mean}, std ${std}: largest CDF error ${worst} at t = ${worstAt} (tolerance ${tolerance})`,
    );
    // The median timestep is T·sigmoid(m): above the middle for a positive mean.
    const sorted = [...timesteps].sort((a, b) => a - b);
    const median = sorted[count / 2];
    const analytic = STEPS / (1 + Math.exp(-mean));
    assert.ok(Math.abs(median - analytic) <= 10, `median ${median}, T·sigmoid(m) ${analytic}`);
  });
});
