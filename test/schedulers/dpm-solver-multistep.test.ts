/**
 * DPMSolverMultistepScheduler: the six golden cases of diffusers 0.40 (2M/3M, Karras, heun,
 * sigma_min, SDE, v-prediction, defaults), plus identities from the papers for the variants the
 * fixtures leave out: first-order DPM-Solver and DPM-Solver++ are DDIM (Lu et al. 2022, §3.3 / §4),
 * and first-order DPM-Solver++ with flow sigmas is the flow-matching Euler step.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { OptionError } from '../../src/errors.js';
import {
  DDIMScheduler,
  DPMSolverMultistepScheduler,
  FlowMatchEulerDiscreteScheduler,
  type NoiseGenerator,
  type SchedulerTensor,
} from '../../src/schedulers/index.js';
import { item, loadGoldenCase, schedulerOf, testGoldenCases, whole } from './golden.js';
import { assertScaledMaxAbsError } from '../compare.js';
import { seededUniform, testSeed } from '../random.js';
import { randomNormal } from './random.js';

describe('DPMSolverMultistepScheduler golden cases', () => {
  testGoldenCases([
    'sched_dpmpp_2m_sd15',
    'sched_dpmpp_2m_karras',
    'sched_dpmpp_2m_default_pixart',
    'sched_dpmpp_3m_vpred',
    'sched_dpmpp_2m_heun_sigmamin',
    'sched_dpmpp_2m_sde_variance_noise',
  ]);
});

const SD_BETAS = { beta_schedule: 'scaled_linear', beta_start: 0.00085, beta_end: 0.012 } as const;

describe('DPMSolverMultistepScheduler behaviour', () => {
  const seed = testSeed('DPMSolverMultistepScheduler behaviour');

  it('a fresh setTimesteps clears the multistep history', async () => {
    const golden = await loadGoldenCase('sched_dpmpp_3m_vpred');
    const scheduler = schedulerOf(golden) as DPMSolverMultistepScheduler;
    const outputs = golden.inputs.get('model_outputs') ?? assert.fail();
    const prevSamples = golden.outputs.get('prev_samples') ?? assert.fail();
    const uniform = seededUniform(seed);
    scheduler.setTimesteps(8);
    let junk = randomNormal([2, 4, 8, 8], uniform);
    for (const t of scheduler.timesteps.slice(0, 3))
      junk = scheduler.step(randomNormal([2, 4, 8, 8], uniform), t, junk).prevSample;
    scheduler.setTimesteps(8);
    let sample: SchedulerTensor = whole(golden.inputs.get('sample') ?? assert.fail());
    scheduler.timesteps.forEach((t, i) => {
      sample = scheduler.step(item(outputs, i), t, sample).prevSample;
      assert.deepEqual(sample.data, item(prevSamples, i).data, `step ${i}`);
    });
  });

  for (const algorithm of ['dpmsolver++', 'dpmsolver'] as const) {
    it(`${algorithm} of order 1 is DDIM on the same timesteps (seed ${seed})`, () => {
      const uniform = seededUniform(seed);
      // DPM-Solver (noise form) needs final_sigmas_type sigma_min, which is DDIM with set_alpha_to_one false.
      const toZero = algorithm === 'dpmsolver++';
      const ddim = new DDIMScheduler({ ...SD_BETAS, clip_sample: false, set_alpha_to_one: toZero });
      ddim.setTimesteps(10);
      const dpm = new DPMSolverMultistepScheduler({
        ...SD_BETAS,
        solver_order: 1,
        algorithm_type: algorithm,
        final_sigmas_type: toZero ? 'zero' : 'sigma_min',
      });
      dpm.setTimesteps(undefined, { timesteps: ddim.timesteps });
      assert.deepEqual(dpm.timesteps, ddim.timesteps);
      const shape = [1, 4, 6, 6];
      let ddimSample = randomNormal(shape, uniform);
      let dpmSample = ddimSample;
      for (const t of ddim.timesteps) {
        const output = randomNormal(shape, uniform);
        const a = ddim.step(output, t, ddimSample);
        const b = dpm.step(output, t, dpmSample);
        assertScaledMaxAbsError(b.predOriginalSample.data, a.predOriginalSample.data, 1e-5, `x̂0 at t=${t}`);
        assertScaledMaxAbsError(b.prevSample.data, a.prevSample.data, 1e-5, `x_prev at t=${t}`);
        ddimSample = a.prevSample;
        dpmSample = b.prevSample;
      }
    });
  }

  it(`first-order DPM-Solver++ with flow sigmas is the flow-matching Euler step (seed ${seed})`, () => {
    const uniform = seededUniform(seed);
    const dpm = new DPMSolverMultistepScheduler({
      solver_order: 1,
      prediction_type: 'flow_prediction',
      use_flow_sigmas: true,
      flow_shift: 3,
    });
    dpm.setTimesteps(6);
    const flow = new FlowMatchEulerDiscreteScheduler({ shift: 1 });
    flow.setTimesteps(undefined, { sigmas: Array.from(dpm.sigmas.subarray(0, -1)) });
    assert.deepEqual(flow.sigmas, dpm.sigmas);
    const shape = [1, 16, 8];
    let flowSample = randomNormal(shape, uniform);
    let dpmSample = flowSample;
    flow.timesteps.forEach((t, i) => {
      const velocity = randomNormal(shape, uniform);
      const a = flow.step(velocity, t, flowSample);
      const b = dpm.step(velocity, dpm.timesteps[i], dpmSample);
      assertScaledMaxAbsError(b.prevSample.data, a.prevSample.data, 1e-5, `step ${i}`);
      flowSample = a.prevSample;
      dpmSample = b.prevSample;
    });
  });

  it('sde-dpmsolver++ draws its noise from a generator shaped as the sample', async () => {
    const golden = await loadGoldenCase('sched_dpmpp_2m_sde_variance_noise');
    const noises = golden.inputs.get('noises') ?? assert.fail();
    let draws = 0;
    const generator: NoiseGenerator = {
      randn(shape) {
        assert.deepEqual([...shape], [2, 4, 8, 8]);
        return item(noises, draws++).data;
      },
    };
    const scheduler = schedulerOf(golden);
    scheduler.setTimesteps(8);
    let sample: SchedulerTensor = whole(golden.inputs.get('sample') ?? assert.fail());
    scheduler.timesteps.forEach((t, i) => {
      sample = scheduler.step(item(golden.inputs.get('model_outputs') ?? assert.fail(), i), t, sample, {
        generator,
      }).prevSample;
    });
    assert.equal(draws, 8);
    assert.deepEqual(sample.data, item(golden.outputs.get('prev_samples') ?? assert.fail(), 7).data);
    scheduler.setTimesteps(8);
    assert.throws(
      () => scheduler.step(sample, scheduler.timesteps[0], sample),
      (e: unknown) => e instanceof OptionError && e.code === 'NOISE_REQUIRED',
    );
  });

  it('with a learned variance keeps the first 3 channels of the model output', () => {
    const uniform = seededUniform(seed);
    const config = { variance_type: 'learned_range', solver_order: 2 } as const;
    const learned = new DPMSolverMultistepScheduler(config);
    const plain = new DPMSolverMultistepScheduler();
    learned.setTimesteps(5);
    plain.setTimesteps(5);
    let sample = randomNormal([2, 3, 4, 4], uniform);
    let plainSample = sample;
    for (const t of learned.timesteps) {
      const epsilon = randomNormal([2, 3, 4, 4], uniform);
      const variance = randomNormal([2, 3, 4, 4], uniform);
      const both = new Float32Array(2 * 6 * 16);
      for (let b = 0; b < 2; b++) {
        both.set(epsilon.data.subarray(b * 48, (b + 1) * 48), b * 96);
        both.set(variance.data.subarray(b * 48, (b + 1) * 48), b * 96 + 48);
      }
      sample = learned.step({ data: both, shape: [2, 6, 4, 4] }, t, sample).prevSample;
      plainSample = plain.step(epsilon, t, plainSample).prevSample;
      assert.deepEqual(sample.data, plainSample.data);
    }
  });

  it('respaced schedules run from σ_max down to σ_min', () => {
    for (const respacing of [
      'use_karras_sigmas',
      'use_exponential_sigmas',
      'use_beta_sigmas',
      'use_lu_lambdas',
    ]) {
      const scheduler = new DPMSolverMultistepScheduler({
        ...SD_BETAS,
        [respacing]: true,
        final_sigmas_type: 'sigma_min',
      });
      scheduler.setTimesteps(12);
      const sigmas = Array.from(scheduler.sigmas);
      assert.equal(sigmas.length, 13, respacing);
      assertScaledMaxAbsError([sigmas[0]], [14.614647], 1e-6, `${respacing} σ_max`);
      assertScaledMaxAbsError([sigmas[11], sigmas[12]], [0.029167, 0.029167], 1e-4, `${respacing} σ_min`);
      assert.ok(
        sigmas.slice(0, 12).every((s, i) => s > sigmas[i + 1] || i === 11),
        `${respacing} decreasing`,
      );
      assert.equal(scheduler.timesteps[0], 999, respacing);
      assert.ok(
        scheduler.timesteps.every((t, i) => i === 0 || t <= scheduler.timesteps[i - 1]),
        `${respacing} timesteps`,
      );
    }
  });

  it('lambda_min_clipped leaves out the timesteps whose λ is below it', () => {
    const clipped = new DPMSolverMultistepScheduler({
      beta_schedule: 'squaredcos_cap_v2',
      lambda_min_clipped: -5.1,
    });
    clipped.setTimesteps(10);
    const full = new DPMSolverMultistepScheduler({ beta_schedule: 'squaredcos_cap_v2' });
    full.setTimesteps(10);
    assert.ok(clipped.timesteps[0] < full.timesteps[0], `${clipped.timesteps[0]} < ${full.timesteps[0]}`);
    const alphaBar = clipped.alphasCumprod[clipped.timesteps[0]];
    assert.ok(0.5 * Math.log(alphaBar / (1 - alphaBar)) >= -5.1 - 0.02);
  });

  it('mu sets the flow shift only with use_dynamic_shifting', () => {
    const dynamic = new DPMSolverMultistepScheduler({
      use_flow_sigmas: true,
      prediction_type: 'flow_prediction',
      use_dynamic_shifting: true,
    });
    dynamic.setTimesteps(4, { mu: Math.log(3) });
    const fixed = new DPMSolverMultistepScheduler({
      use_flow_sigmas: true,
      prediction_type: 'flow_prediction',
      flow_shift: 3,
    });
    fixed.setTimesteps(4);
    assertScaledMaxAbsError(dynamic.sigmas, fixed.sigmas, 1e-7, 'sigmas');
    assert.throws(() => new DPMSolverMultistepScheduler().setTimesteps(4, { mu: 1 }), /use_dynamic_shifting/);
  });
});
