/**
 * EulerAncestralDiscreteScheduler has no golden case of its own. Its schedule is EulerDiscrete's
 * (same betas, spacing and interpolation), so it must reproduce the Euler golden tables bit for bit;
 * its step is checked against k-diffusion's ancestral Euler step in float64.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { OptionError } from '../../src/errors.js';
import { EulerAncestralDiscreteScheduler, type NoiseGenerator } from '../../src/schedulers/index.js';
import { loadGoldenCase } from './golden.js';
import { assertExactlyEqual, assertScaledMaxAbsError } from '../compare.js';
import { seededUniform, testSeed } from '../random.js';
import { randomNormal } from './random.js';

/** A config as read from JSON, so that an invalid value reaches the constructor. */
function raw(config: Record<string, unknown>): Record<string, unknown> {
  return config;
}

describe('EulerAncestralDiscreteScheduler', () => {
  const seed = testSeed('EulerAncestralDiscreteScheduler');

  for (const name of ['sched_euler_sd15', 'sched_euler_trailing']) {
    it(`reproduces the timesteps and sigmas tables of ${name}`, async () => {
      const golden = await loadGoldenCase(name);
      let tables = 0;
      for (const [key, expected] of golden.outputs) {
        const match = /^table_timesteps_n(\d+)$/.exec(key);
        if (match === null) continue;
        const scheduler = new EulerAncestralDiscreteScheduler(
          JSON.parse(golden.configText) as Record<string, unknown>,
        );
        scheduler.setTimesteps(Number(match[1]));
        assertExactlyEqual(scheduler.timesteps, expected.values, key);
        const sigmas = golden.outputs.get(`table_sigmas_n${match[1]}`);
        assert.ok(sigmas !== undefined, `${name} records table_sigmas_n${match[1]}`);
        assertExactlyEqual(scheduler.sigmas, sigmas.values, `table_sigmas_n${match[1]}`);
        tables += 1;
      }
      assert.ok(tables > 0, `${name} records no set_timesteps tables`);
      const scheduler = new EulerAncestralDiscreteScheduler(
        JSON.parse(golden.configText) as Record<string, unknown>,
      );
      scheduler.setTimesteps(golden.meta.num_inference_steps);
      assert.equal(scheduler.initNoiseSigma, golden.outputs.get('init_noise_sigma')?.values[0]);
    });
  }

  for (const prediction of ['epsilon', 'v_prediction'] as const) {
    it(`${prediction}: each step is the ancestral Euler step in float64 (seed ${seed})`, () => {
      const uniform = seededUniform(seed);
      const scheduler = new EulerAncestralDiscreteScheduler({
        beta_schedule: 'scaled_linear',
        beta_start: 0.00085,
        beta_end: 0.012,
        prediction_type: prediction,
        timestep_spacing: 'trailing',
      });
      scheduler.setTimesteps(6);
      const shape = [2, 4, 4, 4];
      let sample: Float32Array = randomNormal(shape, uniform).data.map((v) => v * scheduler.initNoiseSigma);
      scheduler.timesteps.forEach((t, i) => {
        const x = { data: sample, shape };
        const scaled = scheduler.scaleModelInput(x, t);
        const sigma = scheduler.sigmas[i];
        assertScaledMaxAbsError(
          scaled.data,
          Array.from(sample, (v) => v / Math.sqrt(sigma ** 2 + 1)),
          1e-6,
          'scaled input',
        );
        const output = randomNormal(shape, uniform);
        const noise = randomNormal(shape, uniform);
        const sigmaNext = scheduler.sigmas[i + 1];
        const x0 = Array.from(sample, (v, k) =>
          prediction === 'epsilon'
            ? v - sigma * output.data[k]
            : output.data[k] * (-sigma / Math.sqrt(sigma ** 2 + 1)) + v / (sigma ** 2 + 1),
        );
        const sigmaUp = Math.sqrt((sigmaNext ** 2 * (sigma ** 2 - sigmaNext ** 2)) / sigma ** 2);
        const sigmaDown = Math.sqrt(sigmaNext ** 2 - sigmaUp ** 2);
        const expected = Array.from(
          sample,
          (v, k) => v + ((v - x0[k]) / sigma) * (sigmaDown - sigma) + noise.data[k] * sigmaUp,
        );
        const out = scheduler.step(output, t, x, { noise });
        assertScaledMaxAbsError(out.predOriginalSample.data, x0, 2e-6, `x̂0 at step ${i}`);
        assertScaledMaxAbsError(out.prevSample.data, expected, 2e-6, `x_prev at step ${i}`);
        sample = out.prevSample.data;
      });
    });
  }

  it('draws noise on every step, the last included, as diffusers does', () => {
    const scheduler = new EulerAncestralDiscreteScheduler();
    scheduler.setTimesteps(3);
    const uniform = seededUniform(seed);
    const shapes: number[][] = [];
    const generator: NoiseGenerator = {
      randn: (shape) => {
        shapes.push([...shape]);
        return randomNormal(shape, uniform).data;
      },
    };
    let sample = randomNormal([1, 2, 3], uniform);
    for (const t of scheduler.timesteps)
      sample = scheduler.step(randomNormal([1, 2, 3], uniform), t, sample, { generator }).prevSample;
    assert.deepEqual(shapes, [
      [1, 2, 3],
      [1, 2, 3],
      [1, 2, 3],
    ]);
    assert.throws(
      () => {
        scheduler.setTimesteps(3);
        scheduler.step(sample, scheduler.timesteps[0], sample);
      },
      (e: unknown) => e instanceof OptionError && e.code === 'NOISE_REQUIRED',
    );
  });

  it('rejects the "sample" prediction type that diffusers leaves unimplemented', () => {
    assert.throws(
      () => new EulerAncestralDiscreteScheduler(raw({ prediction_type: 'sample' })),
      /prediction_type.*"sample".*"epsilon", "v_prediction"/,
    );
  });
});
