/**
 * DDIMScheduler: the four golden cases of diffusers 0.40, and a float64 reference of DDIM's update
 * (Song et al. 2021, eq. 12 and 16) for the options the fixtures leave out: clipping with
 * use_clipped_model_output, dynamic thresholding, "sample" prediction and the generator path.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { OptionError } from '../../src/errors.js';
import { DDIMScheduler, type NoiseGenerator, type SchedulerTensor } from '../../src/schedulers/index.js';
import { item, loadGoldenCase, testGoldenCases, whole } from './golden.js';
import { assertScaledMaxAbsError } from '../compare.js';
import { seededUniform, testSeed } from '../random.js';
import { randomNormal } from './random.js';

describe('DDIMScheduler golden cases', () => {
  testGoldenCases([
    'sched_ddim_default',
    'sched_ddim_eta1_variance_noise',
    'sched_ddim_sd15',
    'sched_ddim_trailing_vpred_zsnr',
  ]);
});

/** numpy's `np.quantile(..., method="linear")` in float64. */
function quantile(values: number[], q: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  const rank = q * (sorted.length - 1);
  const below = Math.floor(rank);
  const above = Math.min(below + 1, sorted.length - 1);
  return sorted[below] + (rank - below) * (sorted[above] - sorted[below]);
}

interface ReferenceOptions {
  prediction: 'epsilon' | 'sample' | 'v_prediction';
  clip?: number;
  threshold?: { ratio: number; maxValue: number };
  eta: number;
  useClipped: boolean;
  noise?: Float32Array;
}

/** One DDIM step in float64 from ᾱ_t and ᾱ_prev. */
function referenceStep(
  output: SchedulerTensor,
  sample: SchedulerTensor,
  alphaProd: number,
  alphaProdPrev: number,
  options: ReferenceOptions,
): { prev: number[]; x0: number[] } {
  const x = Array.from(sample.data);
  const m = Array.from(output.data);
  const a = Math.sqrt(alphaProd);
  const b = Math.sqrt(1 - alphaProd);
  let x0 = x.map((v, i) =>
    options.prediction === 'epsilon'
      ? (v - b * m[i]) / a
      : options.prediction === 'sample'
        ? m[i]
        : a * v - b * m[i],
  );
  let eps = x.map((v, i) =>
    options.prediction === 'epsilon'
      ? m[i]
      : options.prediction === 'sample'
        ? (v - a * m[i]) / b
        : a * m[i] + b * v,
  );
  if (options.threshold !== undefined) {
    const batch = sample.shape[0];
    const size = x0.length / batch;
    const { ratio, maxValue } = options.threshold;
    x0 = x0.map((v, i) => {
      const itemValues = x0.slice(Math.floor(i / size) * size, (Math.floor(i / size) + 1) * size);
      const s = Math.min(Math.max(quantile(itemValues.map(Math.abs), ratio), 1), maxValue);
      return Math.min(Math.max(v, -s), s) / s;
    });
  } else if (options.clip !== undefined) {
    const range = options.clip;
    x0 = x0.map((v) => Math.min(Math.max(v, -range), range));
  }
  const variance = ((1 - alphaProdPrev) / (1 - alphaProd)) * (1 - alphaProd / alphaProdPrev);
  const std = options.eta * Math.sqrt(variance);
  if (options.useClipped) eps = x.map((v, i) => (v - a * x0[i]) / b);
  const direction = Math.sqrt(1 - alphaProdPrev - std * std);
  const prev = x0.map(
    (v, i) =>
      Math.sqrt(alphaProdPrev) * v +
      direction * eps[i] +
      (options.noise === undefined ? 0 : std * options.noise[i]),
  );
  return { prev, x0 };
}

describe('DDIMScheduler against a float64 reference', () => {
  const seed = testSeed('DDIMScheduler against a float64 reference');
  const shape = [2, 4, 6, 6];

  const variants: {
    name: string;
    config: Record<string, unknown>;
    options: Omit<ReferenceOptions, 'noise'>;
  }[] = [
    {
      name: 'clip_sample with use_clipped_model_output, eta 0.7',
      config: { clip_sample: true, clip_sample_range: 0.5 },
      options: { prediction: 'epsilon', clip: 0.5, eta: 0.7, useClipped: true },
    },
    {
      name: 'dynamic thresholding, eta 1',
      config: {
        thresholding: true,
        dynamic_thresholding_ratio: 0.7,
        sample_max_value: 50,
        clip_sample: false,
      },
      options: { prediction: 'epsilon', threshold: { ratio: 0.7, maxValue: 50 }, eta: 1, useClipped: false },
    },
    {
      name: 'sample prediction, linspace spacing, eta 0',
      config: { prediction_type: 'sample', clip_sample: false, timestep_spacing: 'linspace' },
      options: { prediction: 'sample', eta: 0, useClipped: false },
    },
  ];

  for (const variant of variants) {
    it(`${variant.name} (seed ${seed})`, () => {
      const uniform = seededUniform(seed);
      const scheduler = new DDIMScheduler({
        beta_schedule: 'scaled_linear',
        beta_start: 0.00085,
        beta_end: 0.012,
        ...variant.config,
      });
      scheduler.setTimesteps(7);
      let sample = randomNormal(shape, uniform);
      const stepRatio = Math.floor(1000 / 7);
      for (const t of scheduler.timesteps) {
        const output = randomNormal(shape, uniform);
        const noise = randomNormal(shape, uniform);
        const prevT = t - stepRatio;
        const alphaPrev = prevT >= 0 ? scheduler.alphasCumprod[prevT] : scheduler.finalAlphaCumprod;
        const reference = referenceStep(output, sample, scheduler.alphasCumprod[t], alphaPrev, {
          ...variant.options,
          noise: noise.data,
        });
        const out = scheduler.step(output, t, sample, {
          eta: variant.options.eta,
          noise,
          useClippedModelOutput: variant.options.useClipped,
        });
        assertScaledMaxAbsError(out.predOriginalSample.data, reference.x0, 1e-5, `x̂0 at t=${t}`);
        assertScaledMaxAbsError(out.prevSample.data, reference.prev, 1e-5, `x_prev at t=${t}`);
        sample = out.prevSample;
      }
    });
  }

  it('draws eta noise from a generator shaped as the model output, exactly as explicit noise', async () => {
    const golden = await loadGoldenCase('sched_ddim_eta1_variance_noise');
    const noises = golden.inputs.get('noises');
    assert.ok(noises !== undefined);
    let draws = 0;
    const generator: NoiseGenerator = {
      randn(shape) {
        assert.deepEqual([...shape], [2, 4, 8, 8]);
        return item(noises, draws++).data;
      },
    };
    const withGenerator = new DDIMScheduler(JSON.parse(golden.configText) as Record<string, unknown>);
    const withNoise = new DDIMScheduler(JSON.parse(golden.configText) as Record<string, unknown>);
    withGenerator.setTimesteps(8);
    withNoise.setTimesteps(8);
    const sample = whole(golden.inputs.get('sample') ?? assert.fail());
    const output = item(golden.inputs.get('model_outputs') ?? assert.fail(), 0);
    const t = withGenerator.timesteps[0];
    const a = withGenerator.step(output, t, sample, { eta: 1, generator });
    const b = withNoise.step(output, t, sample, { eta: 1, noise: item(noises, 0) });
    assert.deepEqual(a.prevSample.data, b.prevSample.data);
    assert.equal(draws, 1);
  });

  it('needs noise or a generator when eta > 0, and not both', () => {
    const scheduler = new DDIMScheduler();
    scheduler.setTimesteps(4);
    const sample = randomNormal([1, 2, 2, 2], seededUniform(seed));
    const t = scheduler.timesteps[0];
    assert.throws(
      () => scheduler.step(sample, t, sample, { eta: 0.5 }),
      (e: unknown) => e instanceof OptionError && e.code === 'NOISE_REQUIRED',
    );
    const generator: NoiseGenerator = { randn: (s) => new Float32Array(s.reduce((x, y) => x * y, 1)) };
    assert.throws(
      () => scheduler.step(sample, t, sample, { eta: 0.5, noise: sample, generator }),
      OptionError,
    );
    // eta 0 needs neither.
    scheduler.step(sample, t, sample);
  });

  it('leading spacing with steps_offset and trailing spacing follow diffusers', () => {
    const leading = new DDIMScheduler({ steps_offset: 1 });
    leading.setTimesteps(4);
    assert.deepEqual(leading.timesteps, [751, 501, 251, 1]);
    const trailing = new DDIMScheduler({ timestep_spacing: 'trailing' });
    trailing.setTimesteps(3);
    assert.deepEqual(trailing.timesteps, [999, 666, 332]);
    const linspace = new DDIMScheduler({ timestep_spacing: 'linspace' });
    linspace.setTimesteps(4);
    assert.deepEqual(linspace.timesteps, [999, 666, 333, 0]);
  });

  it('refuses to step before setTimesteps', () => {
    const scheduler = new DDIMScheduler();
    const sample = randomNormal([1, 1, 2, 2], seededUniform(seed));
    assert.throws(
      () => scheduler.step(sample, 999, sample),
      (e: unknown) => e instanceof OptionError && e.code === 'SCHEDULER_NOT_READY',
    );
  });
});
