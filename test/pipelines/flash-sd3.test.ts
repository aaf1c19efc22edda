/**
 * The flash-sd3 recipe (methods/tgate_flash.md §2.5) on the golden tiny SD3 pipeline: a PEFT LoRA
 * with flash-sd3's alpha/r (PEFT's default alpha 8 at r 64, here 0.5 at r 4) on the §2.3 target
 * modules, `useFlashDiffusion`, and a 4-step run at guidance 0 — against a loop written here from
 * the spec that calls a transformer with the LoRA merged into its weights (float64) and the VAE
 * step by step, drawing the same noise from a twin generator.
 */
import assert from 'node:assert/strict';
import { readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

import { AutoencoderKL } from '../../src/models/autoencoder-kl.js';
import { SD3Transformer2DModel } from '../../src/models/sd3-transformer.js';
import { StableDiffusion3Pipeline } from '../../src/pipelines/stable-diffusion-3.js';
import { TorchGenerator } from '../../src/random/torch-generator.js';
import type { HostTensor } from '../../src/runtime/host-tensor.js';
import { hostTensor } from '../../src/runtime/host-tensor.js';
import { FlashFlowMatchEulerDiscreteScheduler } from '../../src/schedulers/index.js';
import { assertClose, assertScaledMaxAbsError, maxAbs } from '../compare.js';
import { readAllTensors, testRuntime } from '../helpers.js';
import { randomLoraFor, safetensorsIn, tempDir, writeMergedCopy, writePeft } from '../lora/fixture.js';
import { seededUniform, testSeed } from '../random.js';
import { flashSigmas64 } from '../schedulers/flash-sigmas.js';

const CASE = fileURLToPath(new URL('../golden/pipelines/pipeline_sd3_flowmatch/', import.meta.url));
const PIPELINE = `${CASE}pipeline`;
const seed = testSeed('test/pipelines/flash-sd3.test.ts');
const random = seededUniform(seed);
const runtime = testRuntime();

/** flash-sd3's targets (§2.3) as the tiny model has them: image-stream attention, both FFN first layers, image ff.net.2, adaLN, patch conv, embedders, norm_out, proj_out. */
const FLASH_SD3_TARGETS = [
  'transformer_blocks.0.attn.to_q',
  'transformer_blocks.0.attn.to_k',
  'transformer_blocks.1.attn.to_v',
  'transformer_blocks.0.attn.to_out.0',
  'transformer_blocks.0.ff.net.0.proj',
  'transformer_blocks.0.ff_context.net.0.proj',
  'transformer_blocks.1.ff.net.2',
  'transformer_blocks.0.norm1.linear',
  'transformer_blocks.0.norm1_context.linear',
  'pos_embed.proj',
  'time_text_embed.timestep_embedder.linear_1',
  'time_text_embed.text_embedder.linear_2',
  'norm_out.linear',
  'proj_out',
];
const RANK = 4;
/** alpha/r = 0.125, flash-sd3's 8/64. */
const ALPHA = 0.5;

const dirs: string[] = [];
let inputs: Record<string, HostTensor>;
before(async () => {
  inputs = await readAllTensors(`${CASE}inputs.safetensors`);
});
after(async () => {
  await Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true })));
  await runtime.dispose();
});

describe('Flash Diffusion on StableDiffusion3Pipeline (jasperai/flash-sd3 recipe)', () => {
  it('useFlashDiffusion, then 4 steps at guidance 0, equal a hand-written loop on the merged transformer and the VAE', async (t) => {
    const dir = await tempDir();
    dirs.push(dir);
    const transformerDir = join(PIPELINE, 'transformer');
    const base = await readAllTensors(await safetensorsIn(transformerDir));
    // Large enough for a 0.125 LoRA to move the output far beyond the tolerance.
    const lora = randomLoraFor(base, FLASH_SD3_TARGETS, RANK, random, 0.5);
    const peft = await writePeft(join(dir, 'flash-sd3'), lora, {
      r: RANK,
      lora_alpha: ALPHA,
      target_modules: [
        'to_q',
        'to_k',
        'to_v',
        'to_out.0',
        'ff.net.0.proj',
        'ff.net.2',
        'linear',
        'proj',
        'linear_1',
        'linear_2',
        'proj_out',
      ],
    });
    const merged = await SD3Transformer2DModel.fromPretrained(
      await writeMergedCopy(transformerDir, join(dir, 'merged'), lora, ALPHA / RANK),
      { runtime },
    );
    const vae = await AutoencoderKL.fromPretrained(join(PIPELINE, 'vae'), { runtime });
    const pipe = await StableDiffusion3Pipeline.fromPretrained(PIPELINE, { runtime });
    try {
      const { adapter, runOptions } = await pipe.useFlashDiffusion(peft);
      assert.deepEqual(runOptions, { numInferenceSteps: 4, guidanceScale: 0 });
      assert.equal(adapter.adapterName, 'flash');
      assert.equal(adapter.format, 'peft');
      assert.deepEqual(adapter.alphaOverRank, [ALPHA / RANK]);
      assert.deepEqual([...adapter.modules].sort(), [...FLASH_SD3_TARGETS].sort());
      assert.deepEqual(pipe.transformer.adapters.fused, ['flash']);
      assert.ok(pipe.scheduler instanceof FlashFlowMatchEulerDiscreteScheduler);
      // Built from the folder's FlowMatchEuler config: its shift 3 and 1000 training steps.
      assert.deepEqual(pipe.scheduler.config, { num_train_timesteps: 1000, shift: 3 });

      const calls: Record<string, HostTensor>[] = [];
      const forward = pipe.transformer.forward.bind(pipe.transformer);
      pipe.transformer.forward = async (feeds, options) => {
        calls.push({ ...feeds });
        return forward(feeds, options);
      };
      const generatorSeed = Math.floor(random() * 2 ** 31);
      // This folder has no text encoders: guidance 0 must neither encode a negative prompt nor ask for
      // negative embeddings (diffusers' do_classifier_free_guidance is guidance_scale > 1).
      const out = await pipe.run({
        promptEmbeds: inputs.prompt_embeds,
        pooledPromptEmbeds: inputs.pooled_prompt_embeds,
        ...runOptions,
        height: 16,
        width: 16,
        generator: new TorchGenerator(generatorSeed),
      });
      assert.equal(calls.length, 4);
      for (const call of calls) {
        assert.equal(call.hidden_states.shape[0], 1, 'no CFG batch');
        assert.deepEqual(call.encoder_hidden_states.data, inputs.prompt_embeds.data);
      }

      // The loop of §2.5, in float64 between the transformer calls.
      const sigmas = flashSigmas64(4, 3);
      const timesteps = sigmas.slice(0, 4).map((s) => Math.fround(Math.fround(s) * 1000));
      assertScaledMaxAbsError(out.timesteps, timesteps, 1e-6, 'timesteps');
      const generator = new TorchGenerator(generatorSeed);
      const shape = [1, 16, 8, 8];
      let x = generator.randn(shape);
      for (let i = 0; i < 4; i++) {
        const v = (
          await merged.forward({
            hidden_states: hostTensor('float32', shape, x),
            timestep: hostTensor('float32', [1], Float32Array.of(timesteps[i])),
            encoder_hidden_states: inputs.prompt_embeds,
            pooled_projections: inputs.pooled_prompt_embeds,
          })
        ).sample.data as Float32Array;
        const sigma = sigmas[i];
        const next = sigmas[i + 1];
        const x0 = Float64Array.from(x, (value, k) => value - sigma * v[k]);
        if (i < 3) {
          const noise = generator.randn(shape);
          x = Float32Array.from(x0, (value, k) => next * noise[k] + (1 - next) * value);
        } else x = Float32Array.from(x0);
      }
      const { maxAbsError } = assertClose(out.latents.data as Float32Array, x, {
        // fp32 noise of four transformer calls (measured about 5e-7 on latents up to ≈ 3).
        atol: 1e-5,
        rtol: 1e-5,
        what: `seed ${seed}: Flash-SD3 final latents vs the hand-written loop`,
      });
      t.diagnostic(
        `final latents: max |diff| ${maxAbsError.toExponential(2)} (max |x| ${maxAbs(x).toFixed(3)})`,
      );

      // diffusers' SD3 decode: vae.decode(latents / scaling_factor + shift_factor), then (x/2 + 0.5).clamp(0, 1).
      const vaeConfig = JSON.parse(await readFile(join(PIPELINE, 'vae', 'config.json'), 'utf8')) as {
        scaling_factor: number;
        shift_factor: number;
      };
      const z = Float32Array.from(x, (v) => v / vaeConfig.scaling_factor + vaeConfig.shift_factor);
      const decoded = (await vae.decode(hostTensor('float32', shape, z))).sample;
      const image = Float32Array.from(decoded.data as Float32Array, (v) =>
        Math.min(1, Math.max(0, v / 2 + 0.5)),
      );
      assert.ok(out.images);
      assert.deepEqual(out.images.shape, [1, 3, 16, 16]);
      assertClose(out.images.data as Float32Array, image, {
        atol: 1e-5,
        rtol: 0,
        what: `seed ${seed}: Flash-SD3 image vs the hand-written decode`,
      });

      // The LoRA matters: the same run without it is far from the loop's result.
      pipe.unloadLoraWeights();
      const plain = await pipe.run({
        promptEmbeds: inputs.prompt_embeds,
        pooledPromptEmbeds: inputs.pooled_prompt_embeds,
        ...runOptions,
        height: 16,
        width: 16,
        generator: new TorchGenerator(generatorSeed),
        outputType: 'latent',
      });
      const change = maxAbs(Float32Array.from(plain.latents.data as Float32Array, (v, k) => v - x[k]));
      assert.ok(change > 1e3 * 1e-5, `the Flash LoRA changes the latents by only ${change}`);
      t.diagnostic(`the Flash LoRA changes the final latents by up to ${change.toFixed(3)}`);
    } finally {
      await pipe.close();
      await merged.close();
      await vae.close();
    }
  });
});
