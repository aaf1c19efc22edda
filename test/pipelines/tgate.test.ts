import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { PixArtPipeline } from '../../src/pipelines/index.js';
import type { PixArtRunOptions } from '../../src/pipelines/index.js';
import type { HostTensor } from '../../src/runtime/host-tensor.js';
import { hostTensor } from '../../src/runtime/host-tensor.js';
import { Runtime } from '../../src/runtime/runtime.js';
import { schedulerFromConfig } from '../../src/schedulers/index.js';
import { assertExactlyEqual, assertMaxAbsError, compareValues, maxAbs } from '../compare.js';
import { readAllTensors } from '../helpers.js';
import type { RefGateStep } from './pixart-reference.js';
import { PixArtReference, TGateSlots } from './pixart-reference.js';
import { assertStepsMatch, recordSteps } from './record-steps.js';

const CASE = fileURLToPath(new URL('../golden/pipelines/pipeline_pixart_alpha_ddim/', import.meta.url));
const GUIDANCE = 4.5;
const runtime = new Runtime({ worker: false, threads: 1 });
let inputs: Record<string, HostTensor>;
let reference: PixArtReference;
before(async () => {
  inputs = await readAllTensors(`${CASE}inputs.safetensors`);
  reference = await PixArtReference.load(`${CASE}pipeline/transformer`);
});
after(() => runtime.dispose());

/** The golden pipeline case's embeddings, latents and guidance, as run options. */
function goldenRunOptions(): PixArtRunOptions {
  return {
    promptEmbeds: inputs.prompt_embeds,
    promptAttentionMask: inputs.prompt_attention_mask,
    negativePromptEmbeds: inputs.negative_prompt_embeds,
    negativePromptAttentionMask: inputs.negative_prompt_attention_mask,
    latents: inputs.latents,
    guidanceScale: GUIDANCE,
    height: 16,
    width: 16,
    outputType: 'latent',
  };
}

async function setup(): Promise<{
  pipe: PixArtPipeline;
  run: (o: Partial<PixArtRunOptions>) => Promise<Float32Array>;
  close: () => Promise<void>;
}> {
  const pipe = await PixArtPipeline.fromPretrained(`${CASE}pipeline`, { runtime });
  const base = goldenRunOptions();
  return {
    pipe,
    run: async (o) => (await pipe.run({ ...base, ...o })).latents.data as Float32Array,
    close: () => pipe.close(),
  };
}

/** Two tensors of the same shape one after the other along the batch axis. */
function concatBatch(a: HostTensor, b: HostTensor): HostTensor {
  const data = new Float32Array(a.data.length + b.data.length);
  data.set(Float32Array.from(a.data as ArrayLike<number>, Number));
  data.set(Float32Array.from(b.data as ArrayLike<number>, Number), a.data.length);
  return hostTensor('float32', [a.shape[0] + b.shape[0], ...a.shape.slice(1)], data);
}

/**
 * The sampling loop, written here from diffusers' PixArtAlphaPipeline and T-GATE's (§1.5): the float64
 * reference transformer, guidance uncond + g·(cond − uncond) on the CFG steps, the ε channels of the
 * learned-sigma output, and a fresh DDIM from the case's scheduler config (plain arithmetic, tested on
 * its own). With a `plan` attention outputs are kept and reused in TGateSlots, and steps without CFG
 * run at batch 1.
 */
async function referenceLoop(steps: number, plan?: readonly RefGateStep[]): Promise<Float64Array> {
  const config = await readFile(`${CASE}pipeline/scheduler/scheduler_config.json`, 'utf8');
  const scheduler = schedulerFromConfig(config);
  scheduler.setTimesteps(steps);
  const bothEmbeds = concatBatch(inputs.negative_prompt_embeds, inputs.prompt_embeds);
  const bothMasks = concatBatch(inputs.negative_prompt_attention_mask, inputs.prompt_attention_mask);
  const slots = new TGateSlots();
  let latents = hostTensor(
    'float32',
    inputs.latents.shape,
    Float32Array.from(inputs.latents.data as Float32Array),
  );
  for (const [i, t] of scheduler.timesteps.entries()) {
    const step = plan?.[i];
    const cfg = step ? step.cfg : true;
    const scaled = scheduler.scaleModelInput({ data: latents.data as Float32Array, shape: latents.shape }, t);
    const x = hostTensor('float32', scaled.shape, scaled.data);
    const crossAttends = step?.attn2 !== 'reuse';
    const out = reference.forward(
      {
        hiddenStates: cfg ? concatBatch(x, x) : x,
        timesteps: new Array<number>(cfg ? 2 : 1).fill(t),
        // Without CFG (after the gate) the pipeline would feed the negative conditioning (§1.5).
        ...(crossAttends
          ? {
              encoderHiddenStates: cfg ? bothEmbeds : inputs.negative_prompt_embeds,
              encoderAttentionMask: cfg ? bothMasks : inputs.negative_prompt_attention_mask,
            }
          : {}),
      },
      { hook: step ? slots.hook(step) : undefined },
    );
    // [B, 2C, H, W] → ε = the first C channels (learned sigma).
    const [, outChannels, h, w] = out.shape;
    const plane = (outChannels / 2) * h * w;
    const eps = (b: number, j: number): number => out.data[b * 2 * plane + j];
    const epsilon = Float64Array.from({ length: plane }, (_, j) =>
      cfg ? eps(0, j) + GUIDANCE * (eps(1, j) - eps(0, j)) : eps(0, j),
    );
    const next = scheduler.step(
      { data: Float32Array.from(epsilon), shape: latents.shape },
      t,
      { data: latents.data as Float32Array, shape: latents.shape },
      { eta: 0 },
    );
    latents = hostTensor('float32', next.prevSample.shape, next.prevSample.data);
  }
  return Float64Array.from(latents.data as Float32Array);
}

/**
 * Bound on the final latents against the float64 loop, relative to max(1, max |latents|): the case's
 * meta.json records diffusers' float32 vs float64 at 4.3e-7 of max |latents| after 4 steps, and the
 * pipeline stays within 9e-7 after 8. (The random tiny model lets the latents grow to ~200, and T-GATE
 * moves them by ~3e-4 of that: the bound must stay well below.)
 */
const LATENTS_TOLERANCE = 1e-5;

function assertLatentsMatch(actual: Float32Array, expected: Float64Array, what: string): void {
  assertMaxAbsError(actual, expected, LATENTS_TOLERANCE * Math.max(1, maxAbs(expected)), what);
}

/**
 * methods/tgate_flash.md §1.3 for gateStep 5, spInterval 3, fiInterval 2, warmUp 0 over 8 steps:
 * self-attention is stored at c = W = 0 and at c mod 3 = 0 (step 3), reused at 1, 2; the gate
 * (step 4) stores both roles averaged over the CFG halves; from step 5 CFG is off, cross-attention is
 * reused, and self-attention is stored where c mod 2 = 0 (6) and reused otherwise (5 reads the
 * averaged one of the gate, 7 the one of step 6).
 */
const GATE_5_SP_3_FI_2: RefGateStep[] = [
  { attn1: 'store', attn2: 'compute', average: false, cfg: true },
  { attn1: 'reuse', attn2: 'compute', average: false, cfg: true },
  { attn1: 'reuse', attn2: 'compute', average: false, cfg: true },
  { attn1: 'store', attn2: 'compute', average: false, cfg: true },
  { attn1: 'store', attn2: 'store', average: true, cfg: true },
  { attn1: 'reuse', attn2: 'reuse', average: false, cfg: false },
  { attn1: 'store', attn2: 'reuse', average: false, cfg: false },
  { attn1: 'reuse', attn2: 'reuse', average: false, cfg: false },
];

/** §1.3 for gateStep 5, spInterval 2, warmUp 1 (fiInterval 1) over 8 steps. */
const GATE_5_SP_2_WARM_1: RefGateStep[] = [
  { attn1: 'compute', attn2: 'compute', average: false, cfg: true },
  { attn1: 'store', attn2: 'compute', average: false, cfg: true },
  { attn1: 'store', attn2: 'compute', average: false, cfg: true },
  { attn1: 'reuse', attn2: 'compute', average: false, cfg: true },
  { attn1: 'store', attn2: 'store', average: true, cfg: true },
  ...new Array<RefGateStep>(3).fill({ attn1: 'store', attn2: 'reuse', average: false, cfg: false }),
];

describe('T-GATE in the PixArt pipeline', () => {
  it('with gateStep ≥ numInferenceSteps and spInterval 1 equals the plain pipeline exactly', async () => {
    const { run, close } = await setup();
    for (const steps of [4, 6]) {
      const plain = await run({ numInferenceSteps: steps });
      for (const gateStep of [steps, steps + 3]) {
        const gated = await run({ numInferenceSteps: steps, tgate: { gateStep, spInterval: 1, warmUp: 0 } });
        assertExactlyEqual(gated, plain, `steps ${steps}, gate ${gateStep}`);
      }
    }
    await close();
  });

  it('gates: the latents equal the float64 T-GATE loop, and compiled step graphs are reused across steps and calls', async () => {
    const { run, close } = await setup();
    const plain = await run({ numInferenceSteps: 8 });
    const before = runtime.cachedSessions;
    const tgate = { gateStep: 5, spInterval: 2, warmUp: 1 };
    const first = await run({ numInferenceSteps: 8, tgate });
    const kinds = runtime.cachedSessions - before;
    // Besides the plain step graph (already compiled): store self-attention (step 2), reuse it (3),
    // store the averaged cross-attention at the gate (4), reuse it without CFG (5–7).
    assert.equal(kinds, 4, `${kinds} new step graphs for 8 steps`);
    const second = await run({ numInferenceSteps: 8, tgate });
    assert.equal(runtime.cachedSessions - before, kinds, 'a second call compiles nothing');
    assertExactlyEqual(second, first, 'caches are cleared between calls');

    const expected = await referenceLoop(8, GATE_5_SP_2_WARM_1);
    assertLatentsMatch(first, expected, 'T-GATE latents vs the float64 loop');
    const plainExpected = await referenceLoop(8);
    assertLatentsMatch(plain, plainExpected, 'plain latents vs the float64 loop');
    // The gate changes the sampling well beyond the bound: the check above can tell them apart.
    const { maxAbsError, scale } = compareValues(expected, plainExpected);
    assert.ok(maxAbsError > 10 * LATENTS_TOLERANCE * scale, `T-GATE vs plain loop: ${maxAbsError}`);
    await close();
  });

  it('keeps the mean of the CFG halves at the gate, runs batch 1 after it, reuses self-attention on the planned steps (float64 loop, step by step)', async () => {
    const { pipe, close } = await setup();
    const recording = recordSteps(pipe, runtime);
    const tgate = { gateStep: 5, spInterval: 3, fiInterval: 2, warmUp: 0 };
    let latents: Float32Array;
    try {
      latents = (
        await pipe.run({
          ...goldenRunOptions(),
          numInferenceSteps: 8,
          tgate,
        })
      ).latents.data as Float32Array;
    } finally {
      recording.stop();
    }
    // (a) at the gate both layers keep 0.5·(uncond + cond) of their cross-attention, and (b) every
    // later step runs at batch 1 without the caption, (c) self-attention comes from the slots at
    // steps 1, 2, 5 and 7: each step's output equals the reference's with the same slots.
    const kept = assertStepsMatch(recording.steps, reference, { what: 'T-GATE', plan: GATE_5_SP_3_FI_2 });
    for (const layer of [0, 1]) {
      assert.ok(
        kept.includes(`4:${layer}.attn2`),
        `the gate's cross-attention of layer ${layer}: ${kept.join(' ')}`,
      );
      assert.ok(
        kept.includes(`4:${layer}.attn1`),
        `the gate's self-attention of layer ${layer}: ${kept.join(' ')}`,
      );
    }
    assert.deepEqual(
      recording.steps.map((s) => s.stored[Object.keys(s.stored)[0]]?.shape[0] ?? 0),
      [2, 0, 0, 0, 1, 0, 1, 0],
      'kept batch: whole CFG batch before the gate, one averaged item at it, batch 1 after',
    );
    assertLatentsMatch(
      latents,
      await referenceLoop(8, GATE_5_SP_3_FI_2),
      'T-GATE latents vs the float64 loop',
    );
    await close();
  });
});
