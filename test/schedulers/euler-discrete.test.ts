/**
 * EulerDiscreteScheduler: the three golden cases of diffusers 0.40, plus a float64 reference of
 * Karras et al. 2022 Algorithm 2 (with churn) and the options the fixtures leave out.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { OptionError } from '../../src/errors.js';
import { EulerDiscreteScheduler, type NoiseGenerator } from '../../src/schedulers/index.js';
import { item, loadGoldenCase, testGoldenCases, whole } from './golden.js';
import { assertScaledMaxAbsError } from '../compare.js';
import { seededUniform, testSeed } from '../random.js';
import { randomNormal } from './random.js';

describe('EulerDiscreteScheduler golden cases', () => {
  testGoldenCases(['sched_euler_sd15', 'sched_euler_karras_vpred_leading', 'sched_euler_trailing']);
});

const SD_BETAS = { beta_schedule: 'scaled_linear', beta_start: 0.00085, beta_end: 0.012 } as const;

describe('EulerDiscreteScheduler behaviour', () => {
  const seed = testSeed('EulerDiscreteScheduler behaviour');

  it(`churn follows Karras et al. Algorithm 2 in float64 (seed ${seed})`, () => {
    const uniform = seededUniform(seed);
    const scheduler = new EulerDiscreteScheduler(SD_BETAS);
    scheduler.setTimesteps(8);
    const shape = [1, 4, 5, 5];
    let sample = randomNormal(shape, uniform);
    const sChurn = 2.5;
    const sNoise = 1.003;
    scheduler.timesteps.forEach((t, i) => {
      const output = randomNormal(shape, uniform);
      const noise = randomNormal(shape, uniform);
      const sigma = scheduler.sigmas[i];
      const gamma = sigma >= 0.5 ? Math.min(sChurn / 8, Math.SQRT2 - 1) : 0;
      const sigmaHat = sigma * (gamma + 1);
      const churned = Array.from(
        sample.data,
        (v, k) => v + noise.data[k] * sNoise * Math.sqrt(sigmaHat ** 2 - sigma ** 2),
      );
      const x0 = churned.map((v, k) => v - sigmaHat * output.data[k]);
      const expected = churned.map(
        (v, k) => v + ((v - x0[k]) / sigmaHat) * (scheduler.sigmas[i + 1] - sigmaHat),
      );
      const out = scheduler.step(output, t, sample, { sChurn, sTmin: 0.5, sNoise, noise });
      assertScaledMaxAbsError(out.predOriginalSample.data, x0, 2e-6, `x̂0 at step ${i}`);
      assertScaledMaxAbsError(out.prevSample.data, expected, 2e-6, `x_prev at step ${i}`);
      sample = out.prevSample;
    });
  });

  it('a fresh setTimesteps restarts the step index', async () => {
    const golden = await loadGoldenCase('sched_euler_sd15');
    const scheduler = new EulerDiscreteScheduler(JSON.parse(golden.configText) as Record<string, unknown>);
    const outputs = golden.inputs.get('model_outputs') ?? assert.fail();
    const sample = whole(golden.inputs.get('sample') ?? assert.fail());
    scheduler.setTimesteps(10);
    scheduler.step(item(outputs, 0), scheduler.timesteps[0], sample);
    scheduler.step(item(outputs, 1), scheduler.timesteps[1], sample);
    assert.equal(scheduler.stepIndex, 2);
    scheduler.setTimesteps(10);
    assert.equal(scheduler.stepIndex, undefined);
    const again = scheduler.step(item(outputs, 0), scheduler.timesteps[0], sample);
    assert.deepEqual(
      again.prevSample.data,
      item(golden.outputs.get('prev_samples') ?? assert.fail(), 0).data,
    );
  });

  it('custom sigmas map back to the timesteps they came from', async () => {
    const golden = await loadGoldenCase('sched_euler_karras_vpred_leading');
    const config = JSON.parse(golden.configText) as Record<string, unknown>;
    const karras = new EulerDiscreteScheduler(config);
    karras.setTimesteps(12);
    const custom = new EulerDiscreteScheduler({ ...config, use_karras_sigmas: false });
    custom.setTimesteps(undefined, { sigmas: Array.from(karras.sigmas) });
    assert.deepEqual(custom.sigmas, karras.sigmas);
    assertScaledMaxAbsError(custom.timesteps, karras.timesteps, 1e-6, 'timesteps');
    assert.equal(custom.numInferenceSteps, 12);
  });

  it('churn draws from a generator only when gamma > 0', () => {
    const scheduler = new EulerDiscreteScheduler(SD_BETAS);
    scheduler.setTimesteps(4);
    const uniform = seededUniform(seed);
    const sample = randomNormal([1, 2, 3, 3], uniform);
    let draws = 0;
    const generator: NoiseGenerator = {
      randn: (shape) => {
        draws += 1;
        return randomNormal(shape, uniform).data;
      },
    };
    scheduler.step(sample, scheduler.timesteps[0], sample, { generator });
    assert.equal(draws, 0);
    scheduler.step(sample, scheduler.timesteps[1], sample, { generator, sChurn: 1 });
    assert.equal(draws, 1);
    assert.throws(() => scheduler.step(sample, scheduler.timesteps[2], sample, { sChurn: 1 }), OptionError);
  });

  it('addNoise takes one timestep per batch item, or setBeginIndex', () => {
    const scheduler = new EulerDiscreteScheduler(SD_BETAS);
    scheduler.setTimesteps(5);
    const uniform = seededUniform(seed);
    const original = randomNormal([2, 3], uniform);
    const noise = randomNormal([2, 3], uniform);
    const [t0, , t2] = scheduler.timesteps;
    const noisy = scheduler.addNoise(original, noise, [t0, t2]);
    const expected = Array.from(original.data, (v, i) => v + noise.data[i] * scheduler.sigmas[i < 3 ? 0 : 2]);
    assertScaledMaxAbsError(noisy.data, expected, 1e-6, 'per-item sigmas');
    scheduler.setBeginIndex(3);
    const fromBegin = scheduler.addNoise(original, noise, t0);
    assertScaledMaxAbsError(
      fromBegin.data,
      Array.from(original.data, (v, i) => v + noise.data[i] * scheduler.sigmas[3]),
      1e-6,
      'begin index',
    );
    assert.throws(() => scheduler.addNoise(original, noise, [t0, t0, t0]), OptionError);
  });

  it('init_noise_sigma is the largest sigma, or sqrt(σ² + 1) for leading spacing', () => {
    const linspace = new EulerDiscreteScheduler(SD_BETAS);
    linspace.setTimesteps(10);
    assert.equal(linspace.initNoiseSigma, linspace.sigmas[0]);
    const leading = new EulerDiscreteScheduler({ ...SD_BETAS, timestep_spacing: 'leading' });
    leading.setTimesteps(10);
    assertScaledMaxAbsError(
      [leading.initNoiseSigma],
      [Math.sqrt(leading.sigmas[0] ** 2 + 1)],
      1e-7,
      'init_noise_sigma',
    );
  });

  it('rejects timesteps it does not schedule and conflicting setTimesteps arguments', () => {
    const scheduler = new EulerDiscreteScheduler(SD_BETAS);
    scheduler.setTimesteps(4);
    const sample = randomNormal([1, 1, 2, 2], seededUniform(seed));
    assert.throws(() => scheduler.step(sample, 123.5, sample), /not in the schedule/);
    assert.throws(() => scheduler.setTimesteps(4, { sigmas: [1, 0] }), OptionError);
    assert.throws(
      () =>
        new EulerDiscreteScheduler({ use_karras_sigmas: true }).setTimesteps(undefined, {
          timesteps: [999, 500],
        }),
      OptionError,
    );
    assert.throws(() => scheduler.setTimesteps(4, { mu: 1 }), /does not take the option "mu"/);
  });
});
