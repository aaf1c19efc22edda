import assert from 'node:assert/strict';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { OptionError } from '../../src/errors.js';
import type { TensorToWrite } from '../../src/io/safetensors.js';
import { writeSafetensors } from '../../src/io/safetensors.js';
import type { PixArtPipeline, PixArtRunOptions } from '../../src/pipelines/index.js';
import { DiffusionPipeline } from '../../src/pipelines/index.js';
import { Runtime } from '../../src/runtime/runtime.js';
import { tinyPixArtPipeline } from '../fixtures/tiny-pixart-pipeline.js';
import { assertClose, randomArray, rng } from '../helpers.js';

const runtime = new Runtime({ worker: false, threads: 1 });
after(() => runtime.dispose());

async function pipeline(): Promise<PixArtPipeline> {
  return DiffusionPipeline.fromPretrained(await tinyPixArtPipeline(), { runtime });
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

function f32(shape: number[], data: Float32Array): TensorToWrite {
  return { dtype: 'F32', shape, data };
}

/** A PEFT LoRA folder over some of the tiny transformer's Linear modules, rank 2, alpha 4. */
async function writePeftLora(pipe: PixArtPipeline, seed: number): Promise<string> {
  const random = rng(seed);
  const dir = join(await tinyPixArtPipeline(), '..', `lora-${seed}`);
  await mkdir(dir, { recursive: true });
  const tensors: Record<string, TensorToWrite> = {};
  for (const module of ['transformer_blocks.0.attn1.to_q', 'transformer_blocks.1.ff.net.2', 'proj_out']) {
    const [out, inF] = pipe.transformer.weights.info(`${module}.weight`).shape;
    tensors[`base_model.model.${module}.lora_A.weight`] = f32([2, inF], randomArray(2 * inF, random));
    tensors[`base_model.model.${module}.lora_B.weight`] = f32([out, 2], randomArray(2 * out, random));
  }
  await writeSafetensors(join(dir, 'adapter_model.safetensors'), tensors);
  await writeFile(
    join(dir, 'adapter_config.json'),
    JSON.stringify({ peft_type: 'LORA', r: 2, lora_alpha: 4 }),
  );
  return dir;
}

/** A LinFusion folder covering both attn1 layers of the tiny transformer (dim 24, 3 heads). */
async function writeLinFusion(seed: number): Promise<string> {
  const random = rng(seed);
  const dir = join(await tinyPixArtPipeline(), '..', 'linfusion');
  await mkdir(dir, { recursive: true });
  const C = 24;
  const m = 8;
  const tensors: Record<string, TensorToWrite> = {};
  const add = (name: string, shape: number[], scale = 0.3): void => {
    tensors[name] = f32(
      shape,
      randomArray(
        shape.reduce((a, b) => a * b, 1),
        random,
        -scale,
        scale,
      ),
    );
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
  return dir;
}

describe('accelerations in the PixArt pipeline', () => {
  it('CLEAR with a window covering the whole grid equals full attention; a small window does not', async () => {
    const pipe = await pipeline();
    const full = await latents(pipe);
    // 16×16 px → 8×8 latent → 4×4 tokens: every offset has (Δy)² + (Δx)² ≤ 18 < 5².
    const wide = await latents(pipe, { attention: { kind: 'clear', radius: 5 } });
    assertClose(wide, full, { atol: 1e-5, rtol: 1e-4, what: 'CLEAR r=5 vs full' });
    const narrow = await latents(pipe, { attention: { kind: 'clear', radius: 1 } });
    assert.ok(
      narrow.some((v, i) => Math.abs(v - full[i]) > 1e-3),
      'a 1-token window changes the result',
    );
    await pipe.close();
  });

  it('LinFusion from its released folder layout runs at several resolutions', async () => {
    const pipe = await pipeline();
    const weights = await writeLinFusion(5);
    const full = await latents(pipe);
    const lin = await latents(pipe, { attention: { kind: 'linfusion', weights } });
    assert.ok(lin.every(Number.isFinite));
    assert.ok(
      lin.some((v, i) => Math.abs(v - full[i]) > 1e-3),
      'LinFusion replaces self-attention',
    );
    const bigger = await latents(pipe, { attention: { kind: 'linfusion', weights }, width: 32, height: 24 });
    assert.equal(bigger.length, 4 * 12 * 16);
    await assert.rejects(pipe.run({ ...base, attention: { kind: 'linfusion' } as never }), OptionError);
    await pipe.close();
  });

  it('LoRA: fused equals unfused; weight 0 and unload give the base model back exactly', async () => {
    const pipe = await pipeline();
    const plain = await latents(pipe);
    const lora = await writePeftLora(pipe, 7);
    const loaded = await pipe.loadLoraWeights(lora, { adapterName: 'style' });
    assert.equal(loaded.modules.length, 3);
    const unfused = await latents(pipe);
    assert.ok(
      unfused.some((v, i) => Math.abs(v - plain[i]) > 1e-4),
      'the LoRA changes the output',
    );
    pipe.setAdapters('style', 0);
    assert.deepEqual([...(await latents(pipe))], [...plain], 'weight 0');
    pipe.setAdapters('style', 1);
    pipe.fuseLora();
    assertClose(await latents(pipe), unfused, { atol: 1e-5, rtol: 1e-4, what: 'fused vs unfused' });
    pipe.unfuseLora();
    pipe.unloadLoraWeights('style');
    assert.deepEqual([...(await latents(pipe))], [...plain], 'after unload');
    await pipe.close();
  });

  it('the Flash recipe: LCM, 4 steps, no CFG batch, LoRA fused at its own alpha/r; combines with T-GATE lcm', async () => {
    const pipe = await pipeline();
    const lora = await writePeftLora(pipe, 9);
    const { adapter, runOptions } = await pipe.useFlashDiffusion(lora);
    assert.deepEqual(adapter.alphaOverRank, [2]);
    assert.deepEqual(runOptions, { numInferenceSteps: 4, guidanceScale: 0 });
    assert.equal(pipe.scheduler.constructor.name, 'LCMScheduler');
    const batches: number[] = [];
    const step = pipe.transformer.step.bind(pipe.transformer);
    pipe.transformer.step = async (inputs, options) => {
      batches.push(inputs.hidden_states.shape[0]);
      return step(inputs, options);
    };
    const out = await pipe.run({ ...base, ...runOptions });
    assert.deepEqual(out.timesteps, [999, 759, 499, 259]);
    assert.deepEqual(batches, [1, 1, 1, 1], 'guidance 0: no CFG batch');
    const gated = await pipe.run({
      ...base,
      ...runOptions,
      tgate: { gateStep: 1, spInterval: 1, warmUp: 0, lcm: true },
    });
    assert.ok((gated.latents.data as Float32Array).every(Number.isFinite));
    await pipe.close();
  });

  it('CLEAR and LinFusion combine with T-GATE', async () => {
    const pipe = await pipeline();
    const tgate = { gateStep: 2, spInterval: 1, warmUp: 0 };
    const clear = await latents(pipe, {
      numInferenceSteps: 4,
      attention: { kind: 'clear', radius: 2 },
      tgate,
    });
    const lin = await latents(pipe, {
      numInferenceSteps: 4,
      attention: { kind: 'linfusion', weights: await writeLinFusion(6) },
      tgate,
    });
    assert.ok(clear.every(Number.isFinite) && lin.every(Number.isFinite));
    await pipe.close();
  });
});
