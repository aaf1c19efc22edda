/**
 * FlowMatchEulerDiscreteScheduler: the three golden cases of diffusers 0.40 (defaults, SD3 shift 3,
 * FLUX dynamic shifting with explicit sigmas and mu), plus float64 checks of the options the
 * fixtures leave out.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { OptionError } from '../../src/errors.js';
import { calculateShift, FlowMatchEulerDiscreteScheduler } from '../../src/schedulers/index.js';
import { testGoldenCases } from './golden.js';
import { assertScaledMaxAbsError } from '../compare.js';
import { seededUniform, testSeed } from '../random.js';
import { randomNormal } from './random.js';

describe('FlowMatchEulerDiscreteScheduler golden cases', () => {
  testGoldenCases(['sched_flowmatch_default', 'sched_flowmatch_sd3', 'sched_flowmatch_flux_dynamic']);
});

describe('FlowMatchEulerDiscreteScheduler behaviour', () => {
  const seed = testSeed('FlowMatchEulerDiscreteScheduler behaviour');

  it('calculateShift is linear in the sequence length (FLUX: 1024 tokens → 0.63)', () => {
    assertScaledMaxAbsError([calculateShift(1024)], [0.63], 1e-15, 'mu');
    assertScaledMaxAbsError([calculateShift(256), calculateShift(4096)], [0.5, 1.15], 1e-15, 'ends');
  });

  it('dynamic shifting needs mu', () => {
    const scheduler = new FlowMatchEulerDiscreteScheduler({ use_dynamic_shifting: true });
    assert.throws(() => scheduler.setTimesteps(4), /pass \{ mu \}/);
    scheduler.setTimesteps(4, { mu: calculateShift(4096) });
    // exp(μ)/(exp(μ) + 1/t − 1) on t = linspace(1, 1/1000, 4).
    const expected = [1, 0.667, 0.334, 0.001].map((t) => Math.exp(1.15) / (Math.exp(1.15) + 1 / t - 1));
    assertScaledMaxAbsError(scheduler.sigmas.subarray(0, 4), expected, 1e-6, 'sigmas');
  });

  it(`stochastic sampling re-noises x̂0 to the next level (seed ${seed})`, () => {
    const uniform = seededUniform(seed);
    const scheduler = new FlowMatchEulerDiscreteScheduler({ shift: 3, stochastic_sampling: true });
    scheduler.setTimesteps(5);
    let sample = randomNormal([1, 4, 4], uniform);
    scheduler.timesteps.forEach((t, i) => {
      const velocity = randomNormal([1, 4, 4], uniform);
      const noise = randomNormal([1, 4, 4], uniform);
      const sigma = scheduler.sigmas[i];
      const next = scheduler.sigmas[i + 1];
      const x0 = Array.from(sample.data, (v, k) => v - sigma * velocity.data[k]);
      const out = scheduler.step(velocity, t, sample, { noise });
      assertScaledMaxAbsError(out.predOriginalSample.data, x0, 1e-6, 'x̂0');
      assertScaledMaxAbsError(
        out.prevSample.data,
        x0.map((v, k) => (1 - next) * v + next * noise.data[k]),
        1e-6,
        'x_prev',
      );
      sample = out.prevSample;
    });
  });

  it('invert_sigmas and shift_terminal reshape the schedule', () => {
    const inverted = new FlowMatchEulerDiscreteScheduler({ invert_sigmas: true });
    inverted.setTimesteps(4);
    assertScaledMaxAbsError(inverted.sigmas, [0, 0.333, 0.666, 0.999, 1], 1e-6, 'inverted sigmas');
    assertScaledMaxAbsError(inverted.timesteps, [0, 333, 666, 999], 1e-6, 'inverted timesteps');
    const stretched = new FlowMatchEulerDiscreteScheduler({ shift: 3, shift_terminal: 0.1 });
    stretched.setTimesteps(8);
    assertScaledMaxAbsError([stretched.sigmas[7]], [0.1], 1e-7, 'last sigma');
    assertScaledMaxAbsError([stretched.sigmas[0]], [1], 1e-7, 'first sigma');
  });

  it('setShift and custom timesteps', () => {
    const scheduler = new FlowMatchEulerDiscreteScheduler();
    scheduler.setShift(3);
    scheduler.setTimesteps(undefined, { timesteps: [1000, 500] });
    assertScaledMaxAbsError(scheduler.sigmas, [1, 0.75, 0], 1e-7, 'shifted custom timesteps');
    assert.equal(scheduler.numInferenceSteps, 2);
    assert.throws(() => scheduler.setTimesteps(3, { sigmas: [1, 0.5] }), OptionError);
    assert.throws(
      () => scheduler.setTimesteps(undefined, { sigmas: [1, 0.5], timesteps: [1000] }),
      OptionError,
    );
    assert.throws(() => scheduler.setShift(0), OptionError);
  });

  it('scaleNoise and addNoise agree and follow setBeginIndex', () => {
    const uniform = seededUniform(seed);
    const scheduler = new FlowMatchEulerDiscreteScheduler({ shift: 3 });
    scheduler.setTimesteps(6);
    const x = randomNormal([2, 8], uniform);
    const noise = randomNormal([2, 8], uniform);
    const t = scheduler.timesteps[2];
    assert.deepEqual(scheduler.scaleNoise(x, t, noise), scheduler.addNoise(x, noise, t));
    const sigma = scheduler.sigmas[2];
    assertScaledMaxAbsError(
      scheduler.addNoise(x, noise, t).data,
      Array.from(x.data, (v, i) => sigma * noise.data[i] + (1 - sigma) * v),
      1e-6,
      'scale_noise',
    );
    scheduler.setBeginIndex(4);
    const sigmaBegin = scheduler.sigmas[4];
    assertScaledMaxAbsError(
      scheduler.addNoise(x, noise, 12345).data,
      Array.from(x.data, (v, i) => sigmaBegin * noise.data[i] + (1 - sigmaBegin) * v),
      1e-6,
      'begin index',
    );
  });
});
