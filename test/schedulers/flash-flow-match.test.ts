/**
 * FlashFlowMatchEulerDiscreteScheduler (flash-sd3's sampler, methods/tgate_flash.md §2.5) against a
 * float64 loop of the spec's formulas: the doubly shifted σ grid with the spec's n = 4 values, the
 * re-noising step with fresh noise and x̂0 at the last step, the generator draws, and the errors.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { OptionError } from '../../src/errors.js';
import { flashFlowMatchScheduler } from '../../src/lora/flash.js';
import { TorchGenerator } from '../../src/random/torch-generator.js';
import { FlashFlowMatchEulerDiscreteScheduler, schedulerFromConfig } from '../../src/schedulers/index.js';
import { assertMaxAbsError, assertScaledMaxAbsError } from '../compare.js';
import { seededUniform, testSeed } from '../random.js';
import { flashSigmas64 } from './flash-sigmas.js';
import { randomNormal } from './random.js';

/** SD3-medium's scheduler_config.json (the golden SD3 pipeline's): shift 3, no dynamic shifting. */
const SD3_CONFIG = {
  _class_name: 'FlowMatchEulerDiscreteScheduler',
  num_train_timesteps: 1000,
  shift: 3.0,
  use_dynamic_shifting: false,
  base_shift: 0.5,
  max_shift: 1.15,
};

describe('FlashFlowMatchEulerDiscreteScheduler timesteps (§2.5)', () => {
  it('n = 4, shift 3: T = [1000.0, 857.692, 602.150, 8.929] and σ = [1, 0.85769, 0.60215, 0.00893, 0]', () => {
    const expected = flashSigmas64(4, 3);
    // The spec's values to its printed digits (602.150 is 602.1505…, cut after three decimals), against
    // the float64 loop first: the loop is the formula the spec states.
    assertMaxAbsError(
      expected.slice(0, 4).map((s) => s * 1000),
      [1000.0, 857.692, 602.15, 8.929],
      1e-3,
      'float64 loop vs the spec',
    );
    assertMaxAbsError(expected, [1.0, 0.85769, 0.60215, 0.00893, 0], 1e-5, 'float64 σ vs the spec');
    const scheduler = flashFlowMatchScheduler(SD3_CONFIG);
    assert.ok(scheduler instanceof FlashFlowMatchEulerDiscreteScheduler);
    assert.deepEqual(scheduler.config, { num_train_timesteps: 1000, shift: 3 });
    scheduler.setTimesteps(4);
    // float32 σ (the base class stores them as torch does) against float64: a few float32 ulps.
    assertScaledMaxAbsError(
      scheduler.timesteps,
      expected.slice(0, 4).map((s) => s * 1000),
      1e-6,
      'timesteps',
    );
    assertScaledMaxAbsError(scheduler.sigmas, expected, 1e-6, 'sigmas');
    assert.equal(scheduler.numInferenceSteps, 4);
  });

  for (const [steps, shift] of [
    [1, 3],
    [2, 3],
    [8, 3],
    [6, 1],
  ] as const) {
    it(`n = ${steps}, shift ${shift}: the same float64 formulas`, () => {
      const scheduler = new FlashFlowMatchEulerDiscreteScheduler({ shift });
      scheduler.setTimesteps(steps);
      const expected = flashSigmas64(steps, shift);
      assertScaledMaxAbsError(scheduler.sigmas, expected, 1e-6, `sigmas n=${steps}`);
      assertScaledMaxAbsError(
        scheduler.timesteps,
        expected.slice(0, steps).map((s) => s * 1000),
        1e-6,
        `timesteps n=${steps}`,
      );
    });
  }

  it('is built by _class_name from any SD3 scheduler config, keeping num_train_timesteps and shift only', () => {
    const scheduler = schedulerFromConfig({
      ...SD3_CONFIG,
      _class_name: 'FlashFlowMatchEulerDiscreteScheduler',
      num_train_timesteps: 500,
      shift: 2.5,
      use_karras_sigmas: true,
    });
    assert.ok(scheduler instanceof FlashFlowMatchEulerDiscreteScheduler);
    assert.deepEqual(scheduler.config, { num_train_timesteps: 500, shift: 2.5 });
    scheduler.setTimesteps(3);
    assertScaledMaxAbsError(scheduler.sigmas, flashSigmas64(3, 2.5, 500), 1e-6, 'sigmas T=500');
  });
});

describe('FlashFlowMatchEulerDiscreteScheduler.step (§2.5)', () => {
  const seed = testSeed('FlashFlowMatchEulerDiscreteScheduler.step');

  it(`x̂0 = x − σ_i·v, then σ_{i+1}·ε + (1 − σ_{i+1})·x̂0, and x̂0 at the last step (seed ${seed})`, () => {
    const uniform = seededUniform(seed);
    const shape = [2, 3, 4];
    const scheduler = flashFlowMatchScheduler(SD3_CONFIG);
    scheduler.setTimesteps(4);
    const sigmas = flashSigmas64(4, 3);
    let sample = randomNormal(shape, uniform);
    let reference = Float64Array.from(sample.data);
    scheduler.timesteps.forEach((t, i) => {
      const velocity = randomNormal(shape, uniform);
      const last = i === 3;
      const noise = last ? undefined : randomNormal(shape, uniform);
      const out = scheduler.step(velocity, t, sample, noise ? { noise } : {});
      const x0 = reference.map((x, k) => x - sigmas[i] * velocity.data[k]);
      const next = sigmas[i + 1];
      const expected = noise ? x0.map((v, k) => next * noise.data[k] + (1 - next) * v) : x0;
      // float32 arithmetic on values of order 1 against float64 (σ itself float32): a few ulps.
      assertScaledMaxAbsError(out.predOriginalSample.data, x0, 1e-6, `x̂0, step ${i}`);
      assertScaledMaxAbsError(out.prevSample.data, expected, 1e-6, `x, step ${i}`);
      if (last) assert.deepEqual(out.prevSample.data, out.predOriginalSample.data);
      assert.deepEqual(out.prevSample.shape, shape);
      sample = out.prevSample;
      reference = Float64Array.from(expected);
      assert.equal(scheduler.stepIndex, i + 1);
    });
  });

  it(`draws ε from the generator before every step but the last (seed ${seed})`, () => {
    const uniform = seededUniform(seed + 1);
    const shape = [1, 2, 2, 2];
    const generatorSeed = Math.floor(uniform() * 2 ** 31);
    const viaGenerator = flashFlowMatchScheduler(SD3_CONFIG);
    const viaNoise = flashFlowMatchScheduler(SD3_CONFIG);
    viaGenerator.setTimesteps(4);
    viaNoise.setTimesteps(4);
    const generator = new TorchGenerator(generatorSeed);
    const twin = new TorchGenerator(generatorSeed);
    const start = randomNormal(shape, uniform);
    let a = start;
    let b = start;
    viaGenerator.timesteps.forEach((t, i) => {
      const velocity = randomNormal(shape, uniform);
      a = viaGenerator.step(velocity, t, a, { generator }).prevSample;
      const noise = i < 3 ? { noise: twin.randn(shape) } : {};
      b = viaNoise.step(velocity, t, b, noise).prevSample;
      assert.deepEqual(a.data, b.data, `step ${i}`);
    });
    // Three draws, none at the last step: both generators are at the same place.
    assert.deepEqual(generator.randn([4]), twin.randn([4]));
  });

  it('refuses a step before setTimesteps, a missing noise source, custom sigmas and a bad step count', () => {
    const scheduler = flashFlowMatchScheduler(SD3_CONFIG);
    const sample = { data: new Float32Array(4), shape: [1, 4] };
    assert.throws(
      () => scheduler.step(sample, 1000, sample),
      (e: unknown) => e instanceof OptionError && e.code === 'SCHEDULER_NOT_READY',
    );
    scheduler.setTimesteps(2);
    assert.throws(
      () => scheduler.step(sample, scheduler.timesteps[0], sample),
      (e: unknown) => e instanceof OptionError && e.code === 'NOISE_REQUIRED',
    );
    assert.throws(
      () => scheduler.setTimesteps(4, { sigmas: [1, 0.5, 0.2, 0.1] }),
      /FlashFlowMatchEulerDiscreteScheduler\.setTimesteps does not take the option "sigmas"/,
    );
    assert.throws(
      () => scheduler.setTimesteps(0),
      /numInferenceSteps is 0; expected an integer in \[1, 1000\]/,
    );
    assert.throws(
      () => new FlashFlowMatchEulerDiscreteScheduler({ shift: -1 }),
      /config key "shift" is -1; expected a finite number > 0/,
    );
  });
});
