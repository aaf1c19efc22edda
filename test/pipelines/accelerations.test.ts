import assert from 'node:assert/strict';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { clearPlan } from '../../src/attention/clear-window.js';
import { OptionError } from '../../src/errors.js';
import type { TensorToWrite } from '../../src/io/safetensors.js';
import { writeSafetensors } from '../../src/io/safetensors.js';
import type { PixArtRunOptions } from '../../src/pipelines/index.js';
import { PixArtPipeline } from '../../src/pipelines/index.js';
import { Runtime } from '../../src/runtime/runtime.js';
import { assertClose, assertExactlyEqual, compareValues } from '../compare.js';
import { tinyPixArtPipeline } from '../fixtures/tiny-pixart-pipeline.js';
import { randomArray } from '../helpers.js';
import { seededUniform, testSeed } from '../random.js';
import type { RefTensor } from '../reference/math.js';
import type { RefGateStep, RefLoraTerm, RefSelfAttention } from './pixart-reference.js';
import { PixArtReference, refInputs } from './pixart-reference.js';
import type { RecordedStep } from './record-steps.js';
import { STEP_TOLERANCE, assertStepsMatch, recordSteps } from './record-steps.js';

const TRANSFORMER = fileURLToPath(
  new URL('../golden/pipelines/pipeline_pixart_alpha_ddim/pipeline/transformer', import.meta.url),
);
const runtime = new Runtime({ worker: false, threads: 1 });
const random = seededUniform(testSeed('test/pipelines/accelerations.test.ts'));
let reference: PixArtReference;
before(async () => {
  // The tiny pipeline's transformer, read by the float64 reference.
  reference = await PixArtReference.load(TRANSFORMER);
});
after(() => runtime.dispose());

async function pipeline(): Promise<PixArtPipeline> {
  return PixArtPipeline.fromPretrained(await tinyPixArtPipeline(), { runtime });
}

const base: PixArtRunOptions = {
  prompt: 'a cat',
  numInferenceSteps: 3,
  guidanceScale: 4.5,
  width: 16,
  height: 16,
  seed: 3,
  outputType: 'latent',
};

async function latents(pipe: PixArtPipeline, o: Partial<PixArtRunOptions> = {}): Promise<Float32Array> {
  return (await pipe.run({ ...base, ...o })).latents.data as Float32Array;
}

/** The denoiser calls of one run. */
async function recorded(pipe: PixArtPipeline, o: Partial<PixArtRunOptions>): Promise<RecordedStep[]> {
  const recording = recordSteps(pipe, runtime);
  try {
    await pipe.run({ ...base, ...o });
  } finally {
    recording.stop();
  }
  return recording.steps;
}

function f32(shape: number[], data: Float32Array): TensorToWrite {
  return { dtype: 'F32', shape, data };
}

const refTensor = (shape: number[], data: Float32Array): RefTensor => ({
  shape,
  data: Float64Array.from(data),
});

/**
 * A PEFT LoRA folder over some of the tiny transformer's Linear modules, rank 2, alpha 4, with its
 * terms at weight 1 (scale alpha/r = 2) for the reference.
 */
async function writePeftLora(pipe: PixArtPipeline): Promise<{ dir: string; terms: RefLoraTerm[] }> {
  const dir = await mkdtemp(join(tmpdir(), 'velodiff-lora-'));
  const tensors: Record<string, TensorToWrite> = {};
  const terms: RefLoraTerm[] = [];
  for (const module of ['transformer_blocks.0.attn1.to_q', 'transformer_blocks.1.ff.net.2', 'proj_out']) {
    const [out, inF] = pipe.transformer.weights.info(`${module}.weight`).shape;
    const down = randomArray(2 * inF, random);
    const up = randomArray(2 * out, random);
    tensors[`base_model.model.${module}.lora_A.weight`] = f32([2, inF], down);
    tensors[`base_model.model.${module}.lora_B.weight`] = f32([out, 2], up);
    terms.push({ module, down: refTensor([2, inF], down), up: refTensor([out, 2], up), scale: 2 });
  }
  await writeSafetensors(join(dir, 'adapter_model.safetensors'), tensors);
  await writeFile(
    join(dir, 'adapter_config.json'),
    JSON.stringify({ peft_type: 'LORA', r: 2, lora_alpha: 4 }),
  );
  return { dir, terms };
}

/**
 * A LinFusion folder covering both attn1 layers of the tiny transformer (dim 24, 3 heads), and its
 * tensors for the reference.
 */
async function writeLinFusion(): Promise<{ dir: string; selfAttention: RefSelfAttention }> {
  const dir = await mkdtemp(join(tmpdir(), 'velodiff-linfusion-'));
  const C = 24;
  const m = 8;
  const tensors: Record<string, TensorToWrite> = {};
  const refs: Record<string, RefTensor> = {};
  const add = (name: string, shape: number[], scale = 0.3): void => {
    const data = randomArray(
      shape.reduce((a, b) => a * b, 1),
      random,
      -scale,
      scale,
    );
    tensors[name] = f32(shape, data);
    refs[name] = refTensor(shape, data);
  };
  for (const i of [0, 1]) {
    for (const w of ['to_q', 'to_k', 'to_v']) add(`${i}.${w}.weight`, [C, C]);
    add(`${i}.to_out.0.weight`, [C, C]);
    add(`${i}.to_out.0.bias`, [C]);
    for (const mlp of ['to_q_', 'to_k_']) {
      add(`${i}.${mlp}.0.weight`, [m, C]);
      add(`${i}.${mlp}.0.bias`, [m]);
      add(`${i}.${mlp}.1.weight`, [m]);
      add(`${i}.${mlp}.1.bias`, [m]);
      add(`${i}.${mlp}.3.weight`, [C, m]);
      add(`${i}.${mlp}.3.bias`, [C]);
    }
  }
  await writeSafetensors(join(dir, 'diffusion_pytorch_model.safetensors'), tensors);
  const modules_list = [0, 1].map((i) => ({
    module_name: `transformer_blocks.${i}.attn1`,
    dim_n: C,
    heads: 3,
    projection_mid_dim: m,
  }));
  await writeFile(join(dir, 'config.json'), JSON.stringify({ _class_name: 'LinFusion', modules_list }));
  return { dir, selfAttention: { kind: 'linfusion', tensors: refs } };
}

/**
 * The T-GATE plan of methods/tgate_flash.md §1.3 for gateStep 2, spInterval 1, warmUp 0 over 4 steps
 * with CFG: step 0 stores self-attention (c = W); step 1 is the gate (both stored, averaged); from
 * step 2 cross-attention is reused at batch 1 and self-attention recomputed (fiInterval 1).
 */
const GATE_2_OF_4: RefGateStep[] = [
  { attn1: 'store', attn2: 'compute', average: false, cfg: true },
  { attn1: 'store', attn2: 'store', average: true, cfg: true },
  { attn1: 'store', attn2: 'reuse', average: false, cfg: false },
  { attn1: 'store', attn2: 'reuse', average: false, cfg: false },
];

describe('accelerations in the PixArt pipeline', () => {
  it('CLEAR with a window covering the whole grid equals full attention', async () => {
    const pipe = await pipeline();
    const full = await latents(pipe);
    // 16×16 px → 8×8 latent (the tiny VAE) → 4×4 tokens: every offset has (Δy)² + (Δx)² ≤ 18 < 5².
    const wide = await latents(pipe, { attention: { kind: 'clear', radius: 5 } });
    assertClose(wide, full, { atol: 1e-5, rtol: 1e-4, what: 'CLEAR r=5 vs full' });
    await pipe.close();
  });

  for (const { size, radius, plan } of [
    { size: 16, radius: 2, plan: 'dense' },
    { size: 32, radius: 3, plan: 'tiled' },
  ] as const) {
    it(`CLEAR r=${radius} on a ${size / 4}×${size / 4} token grid (${plan} plan) equals a dense masked float64 reference at every step`, async () => {
      // The tiny VAE halves the size and the patch size is 2.
      const grid = { height: size / 4, width: size / 4 };
      // Not the whole-grid fallback (full attention): the far corner lies outside the circle …
      assert.ok((grid.height - 1) ** 2 + (grid.width - 1) ** 2 >= radius * radius);
      // … and the masked lowering runs with this plan (3 heads, q·k and v widths 8 + 8).
      const lowering = clearPlan(grid, radius, { textTokens: 0, pooledTokens: 0, numHeads: 3, channels: 16 });
      assert.equal(lowering.kind, plan);
      const pipe = await pipeline();
      const attention = { kind: 'clear', radius } as const;
      const steps = await recorded(pipe, { attention, width: size, height: size, numInferenceSteps: 2 });
      assertStepsMatch(steps, reference, { what: `CLEAR r=${radius}`, selfAttention: attention });
      // The check can tell: full attention, or a window one wider, misses by far more than the bound.
      const first = steps[0];
      for (const other of [{ kind: 'full' }, { kind: 'clear', radius: radius + 1 }] as const) {
        const expected = reference.forward(refInputs(first.inputs), { selfAttention: other });
        const { maxAbsError, scale } = compareValues(first.sample.data as Float32Array, expected.data);
        assert.ok(maxAbsError > 100 * STEP_TOLERANCE * scale, `${other.kind}: ${maxAbsError}`);
      }
      await pipe.close();
    });
  }

  it('LinFusion from its released folder layout equals the float64 LinFusion reference at two resolutions', async () => {
    const pipe = await pipeline();
    const linfusion = await writeLinFusion();
    for (const [width, height] of [
      [16, 16],
      [32, 24],
    ]) {
      const steps = await recorded(pipe, {
        attention: { kind: 'linfusion', weights: linfusion.dir },
        width,
        height,
        numInferenceSteps: 2,
      });
      assert.deepEqual(steps[0].sample.shape, [2, 8, height / 2, width / 2]);
      assertStepsMatch(steps, reference, {
        what: `LinFusion ${width}×${height}`,
        selfAttention: linfusion.selfAttention,
      });
    }
    await assert.rejects(pipe.run({ ...base, attention: { kind: 'linfusion' } as never }), OptionError);
    await pipe.close();
  });

  it('LoRA: unfused and fused steps equal the model with W + s·B·A (float64); unfuse gives the never-fused output back bit for bit; weight 0 and unload the base model', async () => {
    const pipe = await pipeline();
    const plain = await latents(pipe);
    const lora = await writePeftLora(pipe);
    const targets = lora.terms.map((t) => `${t.module}.weight`);
    const baseWeights = await Promise.all(targets.map((name) => pipe.transformer.weights.readFloat32(name)));
    const loaded = await pipe.loadLoraWeights(lora.dir, { adapterName: 'style' });
    assert.equal(loaded.modules.length, 3);
    const merged = reference.withLora(lora.terms);

    const unfusedSteps = await recorded(pipe, {});
    assertStepsMatch(unfusedSteps, merged, { what: 'LoRA unfused' });
    const unfused = await latents(pipe);
    pipe.setAdapters('style', 0);
    assertExactlyEqual(await latents(pipe), plain, 'weight 0');
    pipe.setAdapters('style', 1);

    pipe.fuseLora();
    assertStepsMatch(await recorded(pipe, {}), merged, { what: 'LoRA fused' });
    // At half the scale: W + 0.5·2·B·A.
    pipe.unfuseLora();
    pipe.fuseLora({ loraScale: 0.5 });
    const half = reference.withLora(lora.terms.map((t) => ({ ...t, scale: t.scale * 0.5 })));
    assertStepsMatch(await recorded(pipe, {}), half, { what: 'LoRA fused at loraScale 0.5' });

    pipe.unfuseLora();
    assertExactlyEqual(await latents(pipe), unfused, 'unfused again vs never fused');
    const after = await Promise.all(targets.map((name) => pipe.transformer.weights.readFloat32(name)));
    targets.forEach((name, i) => assertExactlyEqual(after[i], baseWeights[i], `${name} after fuse/unfuse`));
    pipe.unloadLoraWeights('style');
    assertExactlyEqual(await latents(pipe), plain, 'after unload');
    await pipe.close();
  });

  it('the Flash recipe (LCM, 4 steps, no CFG batch, LoRA fused at its alpha/r) with T-GATE lcm equals the float64 loop at every step', async () => {
    const pipe = await pipeline();
    const lora = await writePeftLora(pipe);
    const { adapter, runOptions } = await pipe.useFlashDiffusion(lora.dir);
    assert.deepEqual(adapter.alphaOverRank, [2]);
    assert.deepEqual(runOptions, { numInferenceSteps: 4, guidanceScale: 0 });
    assert.equal(pipe.scheduler.constructor.name, 'LCMScheduler');
    const merged = reference.withLora(lora.terms);

    const plain = await recorded(pipe, runOptions);
    assert.deepEqual(
      plain.map((s) => [...s.inputs.timestep.data]),
      [999, 759, 499, 259].map((t) => [t]),
    );
    assert.deepEqual(
      plain.map((s) => s.inputs.hidden_states.shape[0]),
      [1, 1, 1, 1],
      'guidance 0: no CFG batch',
    );
    assertStepsMatch(plain, merged, { what: 'Flash' });

    // §1.3 with lcm (gate 1, sp 1, warm-up 0, no CFG): step 0 keeps the whole batch of both
    // attentions, unaveraged; steps 1–3 reuse the cross-attention and recompute self-attention.
    const lcmPlan: RefGateStep[] = [
      { attn1: 'store', attn2: 'store', average: false, cfg: false },
      ...new Array<RefGateStep>(3).fill({ attn1: 'store', attn2: 'reuse', average: false, cfg: false }),
    ];
    const gated = await recorded(pipe, {
      ...runOptions,
      tgate: { gateStep: 1, spInterval: 1, warmUp: 0, lcm: true },
    });
    const kept = assertStepsMatch(gated, merged, { what: 'Flash + T-GATE lcm', plan: lcmPlan });
    assert.ok(kept.includes('0:0.attn2') && kept.includes('0:1.attn2'), kept.join(' '));
    await pipe.close();
  });

  it('CLEAR (r < grid) and LinFusion combine with T-GATE: every step equals the float64 loop with T-GATE slots', async () => {
    const pipe = await pipeline();
    const tgate = { gateStep: 2, spInterval: 1, warmUp: 0 };
    const clear = { kind: 'clear', radius: 2 } as const;
    const clearSteps = await recorded(pipe, { numInferenceSteps: 4, attention: clear, tgate });
    const kept = assertStepsMatch(clearSteps, reference, {
      what: 'CLEAR + T-GATE',
      selfAttention: clear,
      plan: GATE_2_OF_4,
    });
    // The cross-attention kept at the gate is the mean of the CFG halves.
    assert.ok(kept.includes('1:0.attn2') && kept.includes('1:1.attn2'), kept.join(' '));

    const linfusion = await writeLinFusion();
    const linSteps = await recorded(pipe, {
      numInferenceSteps: 4,
      attention: { kind: 'linfusion', weights: linfusion.dir },
      tgate,
    });
    assertStepsMatch(linSteps, reference, {
      what: 'LinFusion + T-GATE',
      selfAttention: linfusion.selfAttention,
      plan: GATE_2_OF_4,
    });
    await pipe.close();
  });
});
