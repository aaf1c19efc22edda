/**
 * T-GATE and DeepCache on the Stable Diffusion pipelines, against loops written here: the plain
 * UNet forward graph with test-side hooks that keep and substitute attention outputs (T-GATE) or
 * every skipped layer's output of the last full step (DeepCache, as the authors' helper returns
 * them), the guidance formula and a separate DDIM scheduler. The step schedules are checked against
 * tables written from methods/tgate_flash.md §1.3, §1.6 and horseee/DeepCache.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';

import { deepCachePlan, tgateDeepCachePlan } from '../../src/attention/deepcache.js';
import { pruneDeadStores, tgatePlan } from '../../src/attention/tgate.js';
import { OptionError } from '../../src/errors.js';
import type { Graph } from '../../src/graph/graph.js';
import type { UNet2DConditionModel, UNetBuildHooks } from '../../src/models/unet-2d-condition.js';
import { SAMPLE_INPUT, buildUNetGraph } from '../../src/models/unet-2d-condition.js';
import { StableDiffusionPipeline, StableDiffusionXLPipeline } from '../../src/pipelines/index.js';
import type { StableDiffusionRunOptions } from '../../src/pipelines/unet-pipeline.js';
import { accelerationPlan } from '../../src/pipelines/unet-pipeline.js';
import { fromScheduler, schedulerTensor } from '../../src/pipelines/batch.js';
import type { HostTensor } from '../../src/runtime/host-tensor.js';
import { hostTensor } from '../../src/runtime/host-tensor.js';
import { Runtime } from '../../src/runtime/runtime.js';
import { schedulerFromConfig } from '../../src/schedulers/index.js';
import { assertExactlyEqual, assertScaledMaxAbsError } from '../compare.js';
import { SD15_PIPELINE, tinySdPipeline, tinySdxlPipeline } from '../fixtures/tiny-sd-pipelines.js';
import { randomTensor } from '../helpers.js';
import { seededUniform, testSeed } from '../random.js';

const runtime = new Runtime({ worker: false, threads: 1 });
after(() => runtime.dispose());

const GUIDANCE = 5;
/** The tiny SD UNet at a 16×16 image: 8×8 latents (VAE factor 2), 8 text tokens of width 16. */
const SIZE = 16;
const LATENT = 8;
const TOKENS = 8;

/** One step of a hand-written schedule: CFG, T-GATE's per-role action, DeepCache's step. */
interface HandStep {
  cfg: boolean;
  sa?: 'compute' | 'store' | 'reuse';
  ca?: 'compute' | 'store' | 'reuse';
  /** Keep the mean of the CFG halves of the stored attention outputs. */
  average?: boolean;
  deep?: 'full' | 'skip';
}

function f32(t: HostTensor): Float32Array {
  return t.data as Float32Array;
}

function halves(t: HostTensor): [Float32Array, Float32Array] {
  const d = f32(t);
  return [d.slice(0, d.length / 2), d.slice(d.length / 2)];
}

function halfMean(t: HostTensor): HostTensor {
  const [a, b] = halves(t);
  const f = Math.fround;
  return hostTensor(
    'float32',
    [t.shape[0] / 2, ...t.shape.slice(1)],
    a.map((v, i) => f(f(v + b[i]) * 0.5)),
  );
}

function pair(a: HostTensor, b: HostTensor): HostTensor {
  const data = new Float32Array(a.data.length + b.data.length);
  data.set(f32(a));
  data.set(f32(b), a.data.length);
  return hostTensor('float32', [a.shape[0] + b.shape[0], ...a.shape.slice(1)], data);
}

/**
 * The denoising loop by hand: each step builds the plain UNet graph with hooks that store
 * (as graph outputs), reuse (as graph inputs) attention outputs, and on DeepCache skip steps give
 * every layer not in `recomputed` its output of the last full step. Returns the final latents and
 * each step's model output.
 */
async function handLoop(o: {
  unet: UNet2DConditionModel;
  schedulerConfig: string;
  steps: readonly HandStep[];
  latents: HostTensor;
  pos: Record<string, HostTensor>;
  neg: Record<string, HostTensor>;
  recomputed?: ReadonlySet<string>;
}): Promise<{ latents: HostTensor; outputs: HostTensor[] }> {
  const scheduler = schedulerFromConfig(o.schedulerConfig);
  scheduler.setTimesteps(o.steps.length);
  const attention = new Map<string, HostTensor>();
  const layers = new Map<string, HostTensor>();
  const outputs: HostTensor[] = [];
  let latents = o.latents;
  for (const [i, step] of o.steps.entries()) {
    const t = scheduler.timesteps[i];
    const input = step.cfg ? pair(latents, latents) : latents;
    const n = input.shape[0];
    const cond = Object.fromEntries(
      Object.keys(o.pos).map((k) => [k, step.cfg ? pair(o.neg[k], o.pos[k]) : o.neg[k]]),
    );
    const feeds: Record<string, HostTensor> = {
      [SAMPLE_INPUT]: fromScheduler(scheduler.scaleModelInput(schedulerTensor(input), t)),
      timestep: hostTensor('float32', [n], new Float32Array(n).fill(t)),
      ...cond,
    };
    const stores: { key: string; average: boolean }[] = [];
    // Every attention sits inside a layer, so the layer hook has named the graph before `around` runs.
    let graph: Graph | undefined;
    const hooks: UNetBuildHooks = {
      around: (site, role, compute) => {
        const action = (role === 'attn1' ? step.sa : step.ca) ?? 'compute';
        const key = `attention.${site.path}.${role}`; // by path: a skip step builds fewer blocks
        if (action === 'reuse') {
          const kept = attention.get(key);
          assert.ok(kept && graph, `${key} reused before it was stored`);
          feeds[key] = kept;
          return graph.input(key, 'float32', ['B', ...kept.shape.slice(1)]);
        }
        const out = compute();
        if (action === 'store') {
          out.graph.output(key, out);
          stores.push({ key, average: step.average ?? false });
        }
        return out;
      },
      layer: (path, compute, g) => {
        graph = g;
        const key = `layer.${path}`;
        if (step.deep === 'skip' && !o.recomputed?.has(path)) {
          const kept = layers.get(key);
          assert.ok(kept, `${key} skipped before a full step kept it`);
          feeds[key] = kept;
          return g.input(key, 'float32', ['B', ...kept.shape.slice(1)]);
        }
        const out = compute();
        if (step.deep === 'full') g.output(key, out);
        return out;
      },
    };
    const layout = {
      height: LATENT,
      width: LATENT,
      textLength: feeds.encoder_hidden_states.shape[1],
      ...(feeds.time_ids ? { timeIds: feeds.time_ids.shape[1] } : {}),
      ...(feeds.timestep_cond ? { withTimestepCond: true } : {}),
    };
    const built = buildUNetGraph(o.unet.config, o.unet.weights, layout, { hooks });
    const out = await (await runtime.compile(built)).run(feeds);
    for (const { key, average } of stores) attention.set(key, average ? halfMean(out[key]) : out[key]);
    if (step.deep === 'full') {
      layers.clear();
      for (const [name, value] of Object.entries(out)) if (name.startsWith('layer.')) layers.set(name, value);
    }
    let eps = out.sample;
    outputs.push(eps);
    if (step.cfg) {
      const [u, c] = halves(eps);
      const f = Math.fround;
      const g = f(GUIDANCE);
      eps = hostTensor(
        'float32',
        latents.shape,
        u.map((v, k) => f(v + f(g * f(c[k] - v)))),
      );
    }
    latents = fromScheduler(
      scheduler.step(schedulerTensor(eps), t, schedulerTensor(latents), { eta: 0 }).prevSample,
    );
  }
  return { latents, outputs };
}

/** Records what every `pipe.unet.step` call got and returned (inputs and model output). */
function recordUNetSteps(unet: UNet2DConditionModel): {
  steps: { inputs: Record<string, HostTensor>; sample: HostTensor }[];
  stop: () => void;
} {
  const steps: { inputs: Record<string, HostTensor>; sample: HostTensor }[] = [];
  const original = unet.step;
  unet.step = async (inputs, options) => {
    const result = await original.call(unet, inputs, options);
    steps.push({
      inputs: Object.fromEntries(
        Object.entries(inputs).map(([k, t]) => [k, hostTensor(t.dtype, [...t.shape], t.data.slice())]),
      ),
      sample: result.host.sample,
    });
    return result;
  };
  return { steps, stop: () => void (unet.step = original) };
}

/** Runs the pipeline and the hand loop on the same inputs; compares each step's output and the final latents. */
async function againstHandLoop(
  t: { diagnostic: (m: string) => void },
  pipe: StableDiffusionPipeline | StableDiffusionXLPipeline,
  run: StableDiffusionRunOptions,
  steps: readonly HandStep[],
  conditioning: (recorded: Record<string, HostTensor>) => {
    pos: Record<string, HostTensor>;
    neg: Record<string, HostTensor>;
  },
  recomputed?: ReadonlySet<string>,
): Promise<void> {
  const recorder = recordUNetSteps(pipe.unet);
  let latents: HostTensor;
  try {
    latents = (
      await pipe.run({
        ...run,
        numInferenceSteps: steps.length,
        guidanceScale: GUIDANCE,
        outputType: 'latent',
      })
    ).latents;
  } finally {
    recorder.stop();
  }
  const recorded = recorder.steps;
  assert.equal(recorded.length, steps.length);
  // The batch of each call: the CFG pair before the gate, one half after it.
  recorded.forEach((r, i) => assert.equal(r.inputs.sample.shape[0], steps[i].cfg ? 2 : 1, `step ${i} batch`));
  const schedulerConfig = await readFile(join(pipe.dir, 'scheduler', 'scheduler_config.json'), 'utf8');
  const { pos, neg } = conditioning(recorded[0].inputs);
  const hand = await handLoop({
    unet: pipe.unet,
    schedulerConfig,
    steps,
    latents: run.latents as HostTensor,
    pos,
    neg,
    recomputed,
  });
  let worst = 0;
  hand.outputs.forEach((expected, i) => {
    const c = assertScaledMaxAbsError(f32(recorded[i].sample), f32(expected), 1e-5, `step ${i} model output`);
    worst = Math.max(worst, c.maxAbsError / c.scale);
  });
  const final = assertScaledMaxAbsError(f32(latents), f32(hand.latents), 1e-5, 'final latents');
  t.diagnostic(
    `max step error / scale ${worst.toExponential(2)}; final latents ${(final.maxAbsError / final.scale).toExponential(2)}`,
  );
}

async function sdSetup(what: string): Promise<{
  pipe: StableDiffusionPipeline;
  run: StableDiffusionRunOptions;
  conditioning: (r: Record<string, HostTensor>) => {
    pos: Record<string, HostTensor>;
    neg: Record<string, HostTensor>;
  };
}> {
  const random = seededUniform(testSeed(what));
  const pipe = await StableDiffusionPipeline.fromPretrained(SD15_PIPELINE, { runtime });
  const promptEmbeds = randomTensor([1, TOKENS, 16], random);
  const negativePromptEmbeds = randomTensor([1, TOKENS, 16], random);
  const run: StableDiffusionRunOptions = {
    promptEmbeds,
    negativePromptEmbeds,
    latents: randomTensor([1, 4, LATENT, LATENT], random),
    height: SIZE,
    width: SIZE,
  };
  return {
    pipe,
    run,
    conditioning: () => ({
      pos: { encoder_hidden_states: promptEmbeds },
      neg: { encoder_hidden_states: negativePromptEmbeds },
    }),
  };
}

/** Hand-written T-GATE steps: C compute, S store, R reuse, per role; `A` marks the averaged gate store. */
function tgateSteps(table: string, cfgSteps: number): HandStep[] {
  const action = { C: 'compute', S: 'store', R: 'reuse' } as const;
  return table.split(' ').map((cell, i) => ({
    cfg: i < cfgSteps,
    sa: action[cell[0] as 'C' | 'S' | 'R'],
    ca: action[cell[1] as 'C' | 'S' | 'R'],
    average: cell[2] === 'A',
  }));
}

describe('UNet step schedules (methods/tgate_flash.md §1.3, §1.6; DeepCacheSDHelper)', () => {
  it('SD 1.5 setting: 25 steps, gate 10, T-GATE V2 defaults', () => {
    const plan = accelerationPlan(25, { tgate: { gateStep: 10 } }, true).tgate!;
    // SA: computed 0–1, stored 2 and 5, reused 3–4 and 6–8; the stores at 9 and in FI are never read.
    // CA: computed 0–8, stored (mean of the CFG halves) at 9, reused 10–24. CFG on 0–9.
    const expected = 'CC CC SC RC RC SC RC RC RC CSA' + ' CR'.repeat(15);
    assert.deepEqual(
      plan.map(
        (s) =>
          `${s.selfAttention[0].toUpperCase()}${s.crossAttention[0].toUpperCase()}${s.average ? 'A' : ''}`,
      ),
      expected.split(' '),
    );
    assert.deepEqual(
      plan.map((s) => s.cfg),
      Array.from({ length: 25 }, (_, i) => i < 10),
    );
  });

  it('SDXL + DeepCache setting: 25 steps, gate 10, interval 3, branch 0', () => {
    const plan = accelerationPlan(
      25,
      { tgate: { gateStep: 10 }, deepCache: { cacheInterval: 3, cacheBranchId: 0 } },
      true,
    );
    // Full at 0, 3, 6; restarted before 9 (gate − 1) and 10 (gate): full at 9, 10, 13, 16, 19, 22.
    const full = [0, 3, 6, 9, 10, 13, 16, 19, 22];
    assert.deepEqual(
      plan.deepCache,
      Array.from({ length: 25 }, (_, i) => (full.includes(i) ? 'full' : 'skip')),
    );
    // T-GATE with the DeepCache loaders' spInterval 1 and warmUp 0: self-attention never reused.
    assert.deepEqual(
      plan.tgate!.map((s) => `${s.selfAttention[0]}${s.crossAttention[0]}`),
      [...new Array<string>(9).fill('cc'), 'cs', ...new Array<string>(15).fill('cr')],
    );
    assert.ok(plan.tgate![9].average);
    // A gate whose step G − 1 is off DeepCache's cycle: restarted there too (full 4, then 5, 8, 11).
    assert.deepEqual(
      accelerationPlan(
        12,
        { tgate: { gateStep: 5 }, deepCache: { cacheInterval: 3, cacheBranchId: 0 } },
        true,
      ).deepCache?.flatMap((s, i) => (s === 'full' ? [i] : [])),
      [0, 3, 4, 5, 8, 11],
    );
    // DeepCache alone: every third step from the first.
    assert.deepEqual(deepCachePlan(8, { cacheInterval: 3, cacheBranchId: 0 }), [
      'full',
      'skip',
      'skip',
      'full',
      'skip',
      'skip',
      'full',
      'skip',
    ]);
  });

  it('LCM-SDXL setting: 4 steps, gate 1, lcm: the whole batch stored at step 0, reused after', () => {
    const plan = pruneDeadStores(tgatePlan(4, { gateStep: 1, spInterval: 1, warmUp: 0, lcm: true }, false));
    assert.deepEqual(
      plan.map((s) => [s.crossAttention, s.average, s.cfg]),
      [
        ['store', false, false],
        ['reuse', false, false],
        ['reuse', false, false],
        ['reuse', false, false],
      ],
    );
    assert.throws(() => tgatePlan(4, { gateStep: 1, lcm: true }, true), OptionError);
  });

  it('refuses self-attention reuse with DeepCache and out-of-range branches', async () => {
    assert.throws(
      () =>
        tgateDeepCachePlan(
          25,
          { gateStep: 10, spInterval: 5, warmUp: 2 },
          { cacheInterval: 3, cacheBranchId: 0 },
          true,
        ),
      /spInterval 1/,
    );
    assert.throws(() => deepCachePlan(5, { cacheInterval: 0, cacheBranchId: 0 }), OptionError);
    const { pipe, run } = await sdSetup('deepcache branch error');
    try {
      // The tiny UNet has 3 down blocks: branches 0 … 8. The id is checked with the options, before
      // the prompts are looked at: mismatched embeddings would fail there, later.
      await assert.rejects(
        pipe.run({
          ...run,
          negativePromptEmbeds: randomTensor([1, TOKENS, 8], seededUniform(1)),
          numInferenceSteps: 2,
          outputType: 'latent',
          deepCache: { cacheInterval: 2, cacheBranchId: 9 },
        }),
        /cacheBranchId 9 is in down block 3.*found 9/s,
      );
    } finally {
      await pipe.close();
    }
  });
});

describe('T-GATE on StableDiffusionPipeline', () => {
  it('with the gate past the last step and spInterval 1 equals the plain pipeline bit for bit', async () => {
    const { pipe, run } = await sdSetup('tgate sd plain');
    try {
      const options = { ...run, numInferenceSteps: 4, outputType: 'latent' as const };
      const plain = await pipe.run(options);
      const gated = await pipe.run({ ...options, tgate: { gateStep: 5, spInterval: 1 } });
      assertExactlyEqual(f32(gated.latents), f32(plain.latents), 'latents');
    } finally {
      await pipe.close();
    }
  });

  it('equals the hand-driven loop: SA kept at 1 and reused at 2, CA mean kept at the gate − 1, batch 1 and CA reused after', async (t) => {
    const { pipe, run, conditioning } = await sdSetup('tgate sd hand loop');
    try {
      // 7 steps, gate 5, spInterval 3, warm-up 1 (§1.3): SA computed at 0, stored at 1 (c = W),
      // reused at 2, stored at 3 (3 mod 3 = 0) and at 4 but never read; CA stored at 4, reused 5–6.
      const steps = tgateSteps('CC SC RC CC CSA CR CR', 5);
      await againstHandLoop(
        t,
        pipe,
        { ...run, tgate: { gateStep: 5, spInterval: 3, warmUp: 1 } },
        steps,
        conditioning,
      );
    } finally {
      await pipe.close();
    }
  });
});

describe('T-GATE on an LCM UNet (lcm: true, no CFG)', () => {
  it('gate 2 of 4 steps: the whole batch kept at step 1 and reused after, as the hand-driven loop', async (t) => {
    const random = seededUniform(testSeed('tgate lcm'));
    const { dir } = await tinySdPipeline({ lcm: true, className: 'StableDiffusionPipeline' });
    const pipe = await StableDiffusionPipeline.fromPretrained(dir, { runtime });
    try {
      const promptEmbeds = randomTensor([1, TOKENS, 16], random);
      const run: StableDiffusionRunOptions = {
        promptEmbeds,
        latents: randomTensor([1, 4, LATENT, LATENT], random),
        height: SIZE,
        width: SIZE,
        tgate: { gateStep: 2, lcm: true },
      };
      // warm-up 2 > gate: SA computed throughout (its gate store is never read); CA kept whole at 1.
      const steps = tgateSteps('CC CS CR CR', 0);
      await againstHandLoop(t, pipe, run, steps, (first) => {
        const cond = { encoder_hidden_states: promptEmbeds, timestep_cond: first.timestep_cond };
        return { pos: cond, neg: cond };
      });
    } finally {
      await pipe.close();
    }
  });
});

describe('DeepCache on StableDiffusionPipeline', () => {
  // The layers DeepCache runs on a skip step of the tiny UNet (3 down/up blocks, 2 layers per down
  // block, 3 per up block), read off DeepCacheSDHelper.is_skip_step by hand.
  const recomputed: Record<number, string[]> = {
    // Block 0, layer 0: only the last up layer (up_blocks.2 layer 2, "up block 0 layer 0").
    0: ['up_blocks.2.resnets.2', 'up_blocks.2.attentions.2'],
    // Block 1, layer 1: down block 0 and down_blocks.1 layer 0; up_blocks.1 layers 1–2 and its
    // upsampler; all of up_blocks.2.
    4: [
      'down_blocks.0.resnets.0',
      'down_blocks.0.attentions.0',
      'down_blocks.0.resnets.1',
      'down_blocks.0.attentions.1',
      'down_blocks.0.downsamplers.0',
      'down_blocks.1.resnets.0',
      'down_blocks.1.attentions.0',
      'up_blocks.1.resnets.1',
      'up_blocks.1.attentions.1',
      'up_blocks.1.resnets.2',
      'up_blocks.1.attentions.2',
      'up_blocks.1.upsamplers.0',
      ...[0, 1, 2].flatMap((j) => [`up_blocks.2.resnets.${j}`, `up_blocks.2.attentions.${j}`]),
    ],
  };
  for (const branch of [0, 4]) {
    it(`branch ${branch}, interval 3: full steps as plain, skip steps on the last full step's skipped-layer outputs`, async (t) => {
      const { pipe, run, conditioning } = await sdSetup(`deepcache branch ${branch}`);
      try {
        const steps: HandStep[] = Array.from({ length: 7 }, (_, i) => ({
          cfg: true,
          deep: i % 3 === 0 ? 'full' : 'skip',
        }));
        await againstHandLoop(
          t,
          pipe,
          { ...run, deepCache: { cacheInterval: 3, cacheBranchId: branch } },
          steps,
          conditioning,
          new Set(recomputed[branch]),
        );
      } finally {
        await pipe.close();
      }
    });
  }

  it('with T-GATE (gate 3, interval 3, branch 0): restarted at steps 2 and 3, CA reused on skip steps after the gate', async (t) => {
    const { pipe, run, conditioning } = await sdSetup('deepcache tgate sd');
    try {
      // Without the restart before step 2 (gate − 1) it would be a skip step: full steps 0, 3, 6.
      const full = [0, 2, 3, 6];
      const ca = ['compute', 'compute', 'store', 'reuse', 'reuse', 'reuse', 'reuse', 'reuse'] as const;
      const steps: HandStep[] = ca.map((action, i) => ({
        cfg: i < 3,
        ca: action,
        average: i === 2,
        deep: full.includes(i) ? 'full' : 'skip',
      }));
      await againstHandLoop(
        t,
        pipe,
        { ...run, tgate: { gateStep: 3 }, deepCache: { cacheInterval: 3, cacheBranchId: 0 } },
        steps,
        conditioning,
        new Set(['up_blocks.2.resnets.2', 'up_blocks.2.attentions.2']),
      );
    } finally {
      await pipe.close();
    }
  });
});

describe('T-GATE and DeepCache on StableDiffusionXLPipeline', () => {
  it('feeds the negative pooled text and time ids after the gate, and equals the hand-driven loop', async (t) => {
    const random = seededUniform(testSeed('tgate sdxl'));
    const { dir } = await tinySdxlPipeline();
    const pipe = await StableDiffusionXLPipeline.fromPretrained(dir, { runtime });
    try {
      const negativePooledPromptEmbeds = randomTensor([1, 16], random);
      const run: StableDiffusionRunOptions & Record<string, unknown> = {
        promptEmbeds: randomTensor([1, TOKENS, 24], random),
        negativePromptEmbeds: randomTensor([1, TOKENS, 24], random),
        pooledPromptEmbeds: randomTensor([1, 16], random),
        negativePooledPromptEmbeds,
        latents: randomTensor([1, 4, LATENT, LATENT], random),
        height: 4 * LATENT,
        width: 4 * LATENT,
        tgate: { gateStep: 3 },
        deepCache: { cacheInterval: 2, cacheBranchId: 0 },
      };
      // Up block 2 of the tiny SDXL UNet is an UpBlock2D: skip steps run no attention at all.
      const full = [0, 2, 3, 5];
      const steps: HandStep[] = Array.from({ length: 6 }, (_, i) => ({
        cfg: i < 3,
        ca: i < 2 ? 'compute' : i === 2 ? 'store' : 'reuse',
        average: i === 2,
        deep: full.includes(i) ? 'full' : 'skip',
      }));
      const split = (x: HostTensor): [HostTensor, HostTensor] => {
        const [a, b] = halves(x);
        const shape = [x.shape[0] / 2, ...x.shape.slice(1)];
        return [hostTensor('float32', shape, a), hostTensor('float32', shape, b)];
      };
      const recorder = recordUNetSteps(pipe.unet);
      await againstHandLoop(
        t,
        pipe,
        run,
        steps,
        (first) => {
          const pos: Record<string, HostTensor> = {};
          const neg: Record<string, HostTensor> = {};
          for (const k of ['encoder_hidden_states', 'text_embeds', 'time_ids'])
            [neg[k], pos[k]] = split(first[k]);
          assertExactlyEqual(f32(neg.text_embeds), f32(negativePooledPromptEmbeds), 'negative pooled embeds');
          return { pos, neg };
        },
        new Set(['up_blocks.2.resnets.2']),
      );
      recorder.stop();
      const after = recorder.steps.slice(3);
      for (const r of after) {
        assertExactlyEqual(
          f32(r.inputs.text_embeds),
          f32(negativePooledPromptEmbeds),
          'text_embeds after the gate',
        );
        assertExactlyEqual(
          f32(r.inputs.encoder_hidden_states),
          f32(run.negativePromptEmbeds as HostTensor),
          'text after the gate',
        );
      }
    } finally {
      await pipe.close();
    }
  });
});
