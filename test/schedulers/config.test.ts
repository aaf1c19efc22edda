/**
 * Reading scheduler_config.json: diffusers 0.40's defaults, keys diffusers ignores, values it
 * rejects (an OptionError naming key, value and the allowed values), and schedulerFromConfig.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

import { OptionError } from '../../src/errors.js';
import {
  DDIMScheduler,
  DPMSolverMultistepScheduler,
  EulerAncestralDiscreteScheduler,
  EulerDiscreteScheduler,
  FlowMatchEulerDiscreteScheduler,
  LCMScheduler,
  parsePythonJson,
  SCHEDULER_CLASSES,
  schedulerFromConfig,
} from '../../src/schedulers/index.js';

const GOLDEN_DIR = join(dirname(fileURLToPath(import.meta.url)), '..', 'golden', 'schedulers');

async function goldenConfig(name: string): Promise<Record<string, unknown>> {
  return parsePythonJson(await readFile(join(GOLDEN_DIR, name, 'scheduler_config.json'), 'utf8')) as Record<
    string,
    unknown
  >;
}

/** The config diffusers saved, without its bookkeeping keys. */
function withoutBookkeeping(config: Record<string, unknown>): Record<string, unknown> {
  return Object.fromEntries(Object.entries(config).filter(([key]) => !key.startsWith('_')));
}

/** A config as read from JSON, so that invalid values reach the constructor the type system would stop. */
function raw(config: Record<string, unknown>): Record<string, unknown> {
  return config;
}

/** Asserts that `make` throws an OptionError whose message names all of `parts`. */
function assertOptionError(make: () => unknown, parts: string[]): void {
  assert.throws(make, (error: unknown) => {
    assert.ok(error instanceof OptionError, `expected an OptionError, got ${String(error)}`);
    for (const part of parts)
      assert.ok(error.message.includes(part), `"${error.message}" should mention ${part}`);
    return true;
  });
}

describe('scheduler configs', () => {
  it('defaults equal the configs diffusers 0.40 saves for a default-constructed scheduler', async () => {
    assert.deepEqual(
      { ...new DDIMScheduler().config },
      withoutBookkeeping(await goldenConfig('sched_ddim_default')),
    );
    assert.deepEqual(
      { ...new DPMSolverMultistepScheduler().config },
      withoutBookkeeping(await goldenConfig('sched_dpmpp_2m_default_pixart')),
    );
    assert.deepEqual(
      { ...new FlowMatchEulerDiscreteScheduler().config },
      withoutBookkeeping(await goldenConfig('sched_flowmatch_default')),
    );
  });

  it('defaults equal the signatures of diffusers 0.40 where no golden config is default', async () => {
    const betas = {
      num_train_timesteps: 1000,
      beta_start: 0.0001,
      beta_end: 0.02,
      beta_schedule: 'linear',
      trained_betas: null,
      rescale_betas_zero_snr: false,
    };
    assert.deepEqual(
      { ...new EulerDiscreteScheduler().config },
      {
        ...betas,
        prediction_type: 'epsilon',
        interpolation_type: 'linear',
        use_karras_sigmas: false,
        use_exponential_sigmas: false,
        use_beta_sigmas: false,
        sigma_min: null,
        sigma_max: null,
        timestep_spacing: 'linspace',
        timestep_type: 'discrete',
        steps_offset: 0,
        final_sigmas_type: 'zero',
      },
    );
    assert.deepEqual(
      { ...new EulerAncestralDiscreteScheduler().config },
      { ...betas, prediction_type: 'epsilon', timestep_spacing: 'linspace', steps_offset: 0 },
    );
    // The golden LCM config differs from the defaults only where the case sets a value.
    const lcm = await goldenConfig('sched_lcm_sd15');
    assert.deepEqual({ ...new LCMScheduler().config }, { ...withoutBookkeeping(lcm), steps_offset: 0 });
    // And each golden config reads back to itself.
    for (const [name, make] of [
      ['sched_ddim_sd15', (c: Record<string, unknown>) => new DDIMScheduler(c).config],
      [
        'sched_euler_karras_vpred_leading',
        (c: Record<string, unknown>) => new EulerDiscreteScheduler(c).config,
      ],
      [
        'sched_dpmpp_2m_sde_variance_noise',
        (c: Record<string, unknown>) => new DPMSolverMultistepScheduler(c).config,
      ],
      [
        'sched_flowmatch_flux_dynamic',
        (c: Record<string, unknown>) => new FlowMatchEulerDiscreteScheduler(c).config,
      ],
      ['sched_lcm_sd15', (c: Record<string, unknown>) => new LCMScheduler(c).config],
    ] as const) {
      const config = await goldenConfig(name);
      assert.deepEqual({ ...make(config) }, withoutBookkeeping(config), name);
    }
  });

  it('accepts keys diffusers ignores: bookkeeping and other schedulers’ keys', async () => {
    const dpmConfig = await goldenConfig('sched_dpmpp_2m_sd15');
    const ddim = new DDIMScheduler({ ...dpmConfig, some_future_key: [1, 2] });
    assert.equal(ddim.config.beta_schedule, 'scaled_linear');
    assert.equal(ddim.config.steps_offset, 1);
    assert.ok(!('solver_order' in ddim.config));
    const flow = new FlowMatchEulerDiscreteScheduler({ ...dpmConfig, shift: 3 });
    assert.equal(flow.config.shift, 3);
  });

  it('maps the values diffusers rewrites on load', () => {
    assert.equal(
      new DPMSolverMultistepScheduler(raw({ algorithm_type: 'deis' })).config.algorithm_type,
      'dpmsolver++',
    );
    assert.equal(new DPMSolverMultistepScheduler(raw({ solver_type: 'bh2' })).config.solver_type, 'midpoint');
  });

  it('rejects invalid values with the key, the value and what is allowed', () => {
    assertOptionError(
      () => new DDIMScheduler(raw({ beta_schedule: 'cosine' })),
      ['DDIMScheduler', '"beta_schedule"', '"cosine"', '"linear", "scaled_linear", "squaredcos_cap_v2"'],
    );
    assertOptionError(
      () => new EulerDiscreteScheduler(raw({ prediction_type: 'x0' })),
      ['"prediction_type"', '"x0"', '"epsilon", "v_prediction", "sample", "original_sample"'],
    );
    assertOptionError(
      () => new DDIMScheduler(raw({ timestep_spacing: 'uniform' })),
      ['"timestep_spacing"', '"uniform"', '"linspace", "leading", "trailing"'],
    );
    assertOptionError(
      () => new DPMSolverMultistepScheduler(raw({ algorithm_type: 'unipc' })),
      ['"algorithm_type"', '"unipc"', '"dpmsolver", "dpmsolver++", "sde-dpmsolver", "sde-dpmsolver++"'],
    );
    assertOptionError(
      () => new DPMSolverMultistepScheduler(raw({ solver_type: 'rk4' })),
      ['"solver_type"', '"rk4"', '"midpoint", "heun"'],
    );
    assertOptionError(
      () => new DPMSolverMultistepScheduler(raw({ final_sigmas_type: 'one' })),
      ['"final_sigmas_type"', '"one"', '"zero", "sigma_min"'],
    );
    assertOptionError(
      () => new DPMSolverMultistepScheduler(raw({ variance_type: 'fixed' })),
      ['"variance_type"', '"fixed"', '"learned", "learned_range"'],
    );
    assertOptionError(
      () => new FlowMatchEulerDiscreteScheduler(raw({ time_shift_type: 'cubic' })),
      ['"time_shift_type"', '"cubic"', '"exponential", "linear"'],
    );
    assertOptionError(
      () => new EulerDiscreteScheduler(raw({ interpolation_type: 'cubic' })),
      ['"interpolation_type"', '"linear", "log_linear"'],
    );
    assertOptionError(
      () => new LCMScheduler(raw({ prediction_type: 'flow_prediction' })),
      ['LCMScheduler', '"prediction_type"'],
    );
    assertOptionError(
      () => new DDIMScheduler(raw({ num_train_timesteps: 10.5 })),
      ['"num_train_timesteps"', '10.5', 'integer'],
    );
    assertOptionError(
      () => new DDIMScheduler(raw({ beta_start: '0.1' })),
      ['"beta_start"', '"0.1"', 'a number'],
    );
    assertOptionError(
      () => new DDIMScheduler(raw({ clip_sample: 'yes' })),
      ['"clip_sample"', 'true or false'],
    );
    assertOptionError(
      () => new DDIMScheduler(raw({ trained_betas: [0.1, 0.2] })),
      ['"trained_betas"', 'num_train_timesteps = 1000'],
    );
    assertOptionError(() => new FlowMatchEulerDiscreteScheduler(raw({ shift: -1 })), ['"shift"', '-1']);
  });

  it('rejects combinations diffusers rejects', () => {
    assertOptionError(
      () => new EulerDiscreteScheduler(raw({ use_karras_sigmas: true, use_beta_sigmas: true })),
      ['use_karras_sigmas and use_beta_sigmas', 'at most one'],
    );
    assertOptionError(
      () => new DPMSolverMultistepScheduler(raw({ algorithm_type: 'dpmsolver' })),
      ['"final_sigmas_type"', '"zero"', '"sigma_min"'],
    );
    assertOptionError(
      () =>
        new DPMSolverMultistepScheduler(
          raw({ algorithm_type: 'sde-dpmsolver', final_sigmas_type: 'sigma_min', solver_order: 3 }),
        ),
      ['"solver_order"'],
    );
  });

  it('null reads as diffusers’ None', () => {
    const euler = new EulerDiscreteScheduler({
      use_karras_sigmas: null,
      sigma_min: null,
      trained_betas: null,
    });
    assert.equal(euler.config.use_karras_sigmas, false);
    assert.equal(euler.config.sigma_min, null);
  });
});

describe('schedulerFromConfig', () => {
  it('builds the class _class_name names, from an object or the JSON text', async () => {
    for (const name of [
      'sched_ddim_sd15',
      'sched_euler_sd15',
      'sched_dpmpp_2m_sd15',
      'sched_flowmatch_sd3',
      'sched_lcm_sd15',
    ]) {
      const text = await readFile(join(GOLDEN_DIR, name, 'scheduler_config.json'), 'utf8');
      const config = parsePythonJson(text) as Record<string, unknown>;
      const fromText = schedulerFromConfig(text);
      assert.equal(fromText.constructor.name, config['_class_name']);
      assert.deepEqual(fromText.config, schedulerFromConfig(config).config);
    }
    const ancestral = schedulerFromConfig({ _class_name: 'EulerAncestralDiscreteScheduler' });
    assert.ok(ancestral instanceof EulerAncestralDiscreteScheduler);
  });

  it('applies overrides, as diffusers’ from_config kwargs', () => {
    const scheduler = schedulerFromConfig(
      { _class_name: 'DDIMScheduler', clip_sample: true },
      { clip_sample: false, _class_name: 'LCMScheduler' },
    );
    assert.ok(scheduler instanceof LCMScheduler);
    assert.equal(scheduler.config.clip_sample, false);
    const swapped = DPMSolverMultistepScheduler.fromConfig(
      new DDIMScheduler({ beta_schedule: 'scaled_linear' }).config,
      { use_karras_sigmas: true },
    );
    assert.equal(swapped.config.beta_schedule, 'scaled_linear');
    assert.equal(swapped.config.use_karras_sigmas, true);
  });

  it('names the supported classes when _class_name is unknown or missing', () => {
    const supported = Object.keys(SCHEDULER_CLASSES);
    assert.equal(supported.length, 7);
    assertOptionError(
      () => schedulerFromConfig({ _class_name: 'UniPCMultistepScheduler' }),
      ['"UniPCMultistepScheduler"', ...supported],
    );
    assertOptionError(() => schedulerFromConfig({ beta_start: 0.1 }), ['_class_name', ...supported]);
    assertOptionError(() => schedulerFromConfig('{"_class_name": '), ['not JSON']);
    assertOptionError(() => schedulerFromConfig('[1, 2]'), ['config object']);
  });
});

describe('parsePythonJson', () => {
  it('reads the Infinity, -Infinity and NaN tokens Python writes, and leaves strings alone', () => {
    const parsed = parsePythonJson(
      '{"a": -Infinity, "b": [Infinity, NaN, 1e3], "c": "NaN and -Infinity \\" Infinity", "d": null}',
    );
    assert.deepEqual(parsed, {
      a: -Infinity,
      b: [Infinity, NaN, 1000],
      c: 'NaN and -Infinity " Infinity',
      d: null,
    });
  });
});
