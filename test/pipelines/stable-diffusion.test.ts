/**
 * StableDiffusionPipeline against diffusers' recorded run (golden pipeline_sd15_ddim: tiny SD 1.5-like
 * UNet and VAE, DDIM with SD 1.5's scheduler config, precomputed embeddings and latents, guidance 7.5,
 * 5 steps), plus guidance_rescale against a float64 formula and the errors a user meets.
 */
import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

import { OptionError } from '../../src/errors.js';
import { DiffusionPipeline, StableDiffusionPipeline, rescaleNoiseCfg } from '../../src/pipelines/index.js';
import type { HostTensor } from '../../src/runtime/host-tensor.js';
import { hostTensor } from '../../src/runtime/host-tensor.js';
import { Runtime } from '../../src/runtime/runtime.js';
import { assertMaxAbsError } from '../compare.js';
import { describeCheck, GoldenFixture, type GoldenMeta } from '../golden-fixture.js';
import { randomTensor, readAllTensors } from '../helpers.js';
import { seededUniform, testSeed } from '../random.js';

const CASE = fileURLToPath(new URL('../golden/pipelines/pipeline_sd15_ddim/', import.meta.url));
const runtime = new Runtime({ worker: false, threads: 1 });
after(() => runtime.dispose());

interface PipelineMeta extends GoldenMeta {
  readonly fp32_vs_fp64_per_step_max_abs: readonly number[];
}

describe('StableDiffusionPipeline + DDIM vs diffusers (pipeline_sd15_ddim)', () => {
  it('reproduces timesteps, per-step latents, final latents and the image', async (t) => {
    const pipe = await DiffusionPipeline.fromPretrained(`${CASE}pipeline`, { runtime });
    assert.ok(pipe instanceof StableDiffusionPipeline);
    assert.equal(pipe.className, 'StableDiffusionPipeline');
    const inputs = await readAllTensors(`${CASE}inputs.safetensors`);
    const golden = await readAllTensors(`${CASE}outputs.safetensors`);
    const perStep: HostTensor[] = [];
    const out = await pipe.run({
      promptEmbeds: inputs.prompt_embeds,
      negativePromptEmbeds: inputs.negative_prompt_embeds,
      latents: inputs.latents,
      numInferenceSteps: 5,
      guidanceScale: 7.5,
      height: 32,
      width: 32,
      eta: 0,
      callbackOnStepEnd: ({ latents }) => void perStep.push(latents),
    });
    assert.deepEqual(out.timesteps, [...(golden.timesteps.data as BigInt64Array)].map(Number));
    const fixture = await GoldenFixture.load<PipelineMeta>(CASE);
    const perStepNoise = fixture.meta.fp32_vs_fp64_per_step_max_abs;
    assert.equal(perStep.length, 5);
    // 10× torch's fp32-vs-fp64 noise of each step (9.1e-6 … 2.9e-5 of latents up to 21).
    perStep.forEach((latents, i) => {
      const check = fixture.check('per_step_latents', latents.data as Float32Array, {
        index: i,
        bound: 10 * perStepNoise[i],
        what: `per_step_latents[${i}]`,
      });
      t.diagnostic(describeCheck({ ...check, noise: perStepNoise[i] }));
    });
    assert.deepEqual(out.latents.shape, fixture.shape('final_latents'));
    t.diagnostic(describeCheck(fixture.check('final_latents', out.latents.data as Float32Array)));
    assert.ok(out.images);
    assert.deepEqual(out.images.shape, fixture.shape('image'));
    t.diagnostic(describeCheck(fixture.check('image', out.images.data as Float32Array)));
    await pipe.close();
  });

  it('runs numImagesPerPrompt copies of the same conditioning and outputType latent', async () => {
    const pipe = await StableDiffusionPipeline.fromPretrained(`${CASE}pipeline`, { runtime });
    const inputs = await readAllTensors(`${CASE}inputs.safetensors`);
    const golden = await readAllTensors(`${CASE}outputs.safetensors`);
    const latents = inputs.latents.data as Float32Array;
    const twice = new Float32Array(2 * latents.length);
    twice.set(latents);
    twice.set(latents, latents.length);
    const out = await pipe.run({
      promptEmbeds: inputs.prompt_embeds,
      negativePromptEmbeds: inputs.negative_prompt_embeds,
      latents: hostTensor('float32', [2, 4, 16, 16], twice),
      numImagesPerPrompt: 2,
      numInferenceSteps: 5,
      height: 32,
      width: 32,
      outputType: 'latent',
    });
    assert.equal(out.images, undefined);
    assert.deepEqual(out.latents.shape, [2, 4, 16, 16]);
    const final = golden.final_latents.data as Float32Array;
    const data = out.latents.data as Float32Array;
    // Both batch items follow the recorded run (batch 2 runs other kernels: 10× the 2.9e-5 noise).
    assertMaxAbsError(data.subarray(0, final.length), final, 2.9e-4, 'item 0');
    assertMaxAbsError(data.subarray(final.length), final, 2.9e-4, 'item 1');
    await pipe.close();
  });

  it('gives clear errors for sizes, prompts without a text encoder, tgate and an aborted run', async () => {
    const pipe = await StableDiffusionPipeline.fromPretrained(`${CASE}pipeline`, { runtime });
    const inputs = await readAllTensors(`${CASE}inputs.safetensors`);
    const base = {
      promptEmbeds: inputs.prompt_embeds,
      negativePromptEmbeds: inputs.negative_prompt_embeds,
      numInferenceSteps: 2,
    };
    await assert.rejects(
      pipe.run({ ...base, height: 33, width: 32 }),
      (e: unknown) =>
        e instanceof OptionError && /height 33 must be a multiple of 2 \(the VAE factor\)/.test(e.message),
    );
    await assert.rejects(pipe.run({ prompt: 'a cat', height: 32, width: 32 }), /no text encoder\/tokenizer/);
    await assert.rejects(
      pipe.run({ promptEmbeds: inputs.prompt_embeds, height: 32, width: 32 }),
      /guidance needs negativePromptEmbeds/,
    );
    await assert.rejects(
      pipe.run({ ...base, height: 32, width: 32, tgate: { gateStep: 1, lcm: true } }),
      /tgate.lcm caches the whole batch, which needs a run without CFG/,
    );
    await assert.rejects(pipe.run({ ...base, height: 32, width: 32, strength: 0.5 }), /give an image too/);
    const controller = new AbortController();
    controller.abort();
    await assert.rejects(pipe.run({ ...base, height: 32, width: 32, signal: controller.signal }), {
      name: 'AbortError',
    });
    await pipe.close();
  });
});

describe('rescaleNoiseCfg (guidance_rescale)', () => {
  it('equals the float64 formula of Lin et al. §3.4 per batch item', () => {
    const random = seededUniform(testSeed('rescale_noise_cfg'));
    const guided = randomTensor([2, 4, 3, 5], random, -3, 3);
    const text = randomTensor([2, 4, 3, 5], random, -1, 1);
    for (const phi of [0.7, 1]) {
      const ours = rescaleNoiseCfg(guided, text, phi).data as Float32Array;
      const item = 60;
      const expected = new Float64Array(120);
      const std = (d: Float32Array, b: number): number => {
        const xs = Array.from(d.subarray(b * item, (b + 1) * item));
        const mean = xs.reduce((a, v) => a + v, 0) / item;
        return Math.sqrt(xs.reduce((a, v) => a + (v - mean) ** 2, 0) / (item - 1));
      };
      for (let b = 0; b < 2; b++) {
        const ratio = std(text.data as Float32Array, b) / std(guided.data as Float32Array, b);
        for (let i = b * item; i < (b + 1) * item; i++) {
          const g = (guided.data as Float32Array)[i];
          expected[i] = phi * g * ratio + (1 - phi) * g;
        }
      }
      // float32 rounding of values up to ~3: a few ulps.
      assertMaxAbsError(ours, expected, 2e-6, `phi ${phi}`);
    }
    // φ = 1 gives the text prediction's std exactly (up to rounding).
    const full = rescaleNoiseCfg(guided, text, 1).data as Float32Array;
    const s = (d: Float32Array): number => {
      const m = d.reduce((a, v) => a + v, 0) / d.length;
      return Math.sqrt(d.reduce((a, v) => a + (v - m) ** 2, 0) / (d.length - 1));
    };
    assert.ok(Math.abs(s(full.subarray(0, 60)) - s((text.data as Float32Array).subarray(0, 60))) < 1e-5);
  });
});
