/**
 * LCMScheduler: the golden LCM-LoRA SD1.5 case of diffusers 0.40 (noise drawn from a generator on all
 * but the last step), plus the schedule options the fixture leaves out.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { OptionError } from '../../src/errors.js';
import { LCMScheduler } from '../../src/schedulers/index.js';
import { testGoldenCases } from './golden.js';
import { assertScaledMaxAbsError } from '../compare.js';
import { seededUniform, testSeed } from '../random.js';
import { randomNormal } from './random.js';

describe('LCMScheduler golden cases', () => {
  testGoldenCases(['sched_lcm_sd15']);
});

describe('LCMScheduler behaviour', () => {
  const seed = testSeed('LCMScheduler behaviour');

  it('takes evenly spaced timesteps of the 50-step distillation schedule', () => {
    const scheduler = new LCMScheduler();
    scheduler.setTimesteps(4);
    assert.deepEqual(scheduler.timesteps, [999, 759, 499, 259]);
    scheduler.setTimesteps(4, { originalInferenceSteps: 100 });
    assert.deepEqual(scheduler.timesteps, [999, 749, 499, 249]);
  });

  it('strength keeps the lower part of the schedule (image-to-image)', () => {
    const scheduler = new LCMScheduler();
    scheduler.setTimesteps(4, { strength: 0.5 });
    // 25 origin timesteps 19, 39, …, 499; 4 of them from the top.
    assert.deepEqual(scheduler.timesteps, [499, 379, 259, 139]);
    scheduler.setTimesteps(undefined, { timesteps: [999, 499, 259, 19], strength: 0.5 });
    assert.deepEqual(scheduler.timesteps, [259, 19]);
    assert.equal(scheduler.numInferenceSteps, 4);
  });

  it('rejects schedules diffusers rejects', () => {
    const scheduler = new LCMScheduler();
    assert.throws(() => scheduler.setTimesteps(60), OptionError);
    assert.throws(() => scheduler.setTimesteps(30, { strength: 0.5 }), /smaller than numInferenceSteps/);
    assert.throws(() => scheduler.setTimesteps(undefined, { timesteps: [259, 499] }), /descending/);
    assert.throws(() => scheduler.setTimesteps(4, { timesteps: [999] }), OptionError);
    assert.throws(() => scheduler.setTimesteps(4, { sigmas: [1] }), /does not take the option "sigmas"/);
  });

  it(`each step applies the consistency boundary condition in float64 (seed ${seed})`, () => {
    const uniform = seededUniform(seed);
    const scheduler = new LCMScheduler({ prediction_type: 'v_prediction', timestep_scaling: 7.5 });
    scheduler.setTimesteps(3);
    const shape = [1, 4, 3, 3];
    let sample = randomNormal(shape, uniform);
    scheduler.timesteps.forEach((t, i) => {
      const output = randomNormal(shape, uniform);
      const noise = randomNormal(shape, uniform);
      const alphaBar = scheduler.alphasCumprod[t];
      const x0 = Array.from(
        sample.data,
        (v, k) => Math.sqrt(alphaBar) * v - Math.sqrt(1 - alphaBar) * output.data[k],
      );
      const scaled = t * 7.5;
      const cSkip = 0.25 / (scaled ** 2 + 0.25);
      const cOut = scaled / Math.sqrt(scaled ** 2 + 0.25);
      const denoised = x0.map((v, k) => cOut * v + cSkip * sample.data[k]);
      const last = i === scheduler.timesteps.length - 1;
      const alphaPrev = last ? 0 : scheduler.alphasCumprod[scheduler.timesteps[i + 1]];
      const expected = last
        ? denoised
        : denoised.map((v, k) => Math.sqrt(alphaPrev) * v + Math.sqrt(1 - alphaPrev) * noise.data[k]);
      const out = scheduler.step(output, t, sample, last ? {} : { noise });
      assertScaledMaxAbsError(out.predOriginalSample.data, denoised, 2e-6, `denoised at t=${t}`);
      assertScaledMaxAbsError(out.prevSample.data, expected, 2e-6, `x_prev at t=${t}`);
      sample = out.prevSample;
    });
  });
});
