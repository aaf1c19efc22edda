import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { OptionError } from '../../src/errors.js';
import { DiffusionPipeline } from '../../src/pipelines/index.js';
import type { HostTensor } from '../../src/runtime/host-tensor.js';
import { Runtime } from '../../src/runtime/runtime.js';
import { describeCheck, GoldenFixture, type GoldenMeta } from '../golden-fixture.js';
import { readAllTensors } from '../helpers.js';

const CASE = fileURLToPath(new URL('../golden/pipelines/pipeline_pixart_alpha_ddim/', import.meta.url));
const runtime = new Runtime({ worker: false, threads: 1 });

interface PipelineMeta extends GoldenMeta {
  readonly fp32_vs_fp64_per_step_max_abs: readonly number[];
}
after(() => runtime.dispose());

describe('PixArtAlphaPipeline + DDIM vs diffusers (pipeline_pixart_alpha_ddim)', () => {
  it('reproduces timesteps, per-step latents, final latents and the image', async (t) => {
    const pipe = await DiffusionPipeline.fromPretrained(`${CASE}pipeline`, { runtime });
    const inputs = await readAllTensors(`${CASE}inputs.safetensors`);
    const golden = await readAllTensors(`${CASE}outputs.safetensors`);
    const perStep: HostTensor[] = [];
    const out = await pipe.run({
      promptEmbeds: inputs.prompt_embeds,
      promptAttentionMask: inputs.prompt_attention_mask,
      negativePromptEmbeds: inputs.negative_prompt_embeds,
      negativePromptAttentionMask: inputs.negative_prompt_attention_mask,
      latents: inputs.latents,
      numInferenceSteps: 4,
      guidanceScale: 4.5,
      height: 16,
      width: 16,
      useResolutionBinning: false, // as the fixture (meta.json); sample_size 8 has no bin table anyway
      eta: 0,
      callbackOnStepEnd: ({ latents }) => void perStep.push(latents),
    });
    assert.deepEqual(out.timesteps, [...(golden.timesteps.data as BigInt64Array)].map(Number));
    // 10× torch's fp32 noise, against the fp32 and the fp64 run. The latents after step i get 10× the
    // noise recorded for step i (8.0e-6, 2.2e-5, 2.8e-5, 3.0e-5 of values up to 70): measured 1.2e-5,
    // 3.1e-5, 4.6e-5, 4.6e-5 against fp32 (1.0e-5 to 3.6e-5 against fp64): the error grows over the
    // steps as torch's does. The image's noise is 3.5e-7 (measured 7.8e-7, 6.9e-7 against fp64).
    const fixture = await GoldenFixture.load<PipelineMeta>(CASE);
    const perStepNoise = fixture.meta.fp32_vs_fp64_per_step_max_abs;
    assert.equal(perStep.length, 4);
    assert.equal(perStepNoise.length, 4);
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

  it('gives clear errors for sizes, missing embeddings and an aborted run', async () => {
    const pipe = await DiffusionPipeline.fromPretrained(`${CASE}pipeline`, { runtime });
    const inputs = await readAllTensors(`${CASE}inputs.safetensors`);
    const base = {
      promptEmbeds: inputs.prompt_embeds,
      negativePromptEmbeds: inputs.negative_prompt_embeds,
      numInferenceSteps: 2,
    };
    await assert.rejects(
      pipe.run({ ...base, height: 18, width: 16 }),
      (e: unknown) =>
        e instanceof OptionError &&
        /height 18 must be a multiple of 4 \(VAE factor 2 × patch size 2\)/.test(e.message),
    );
    await assert.rejects(pipe.run({ prompt: 'a cat', height: 16, width: 16 }), /no text encoder\/tokenizer/);
    const controller = new AbortController();
    controller.abort();
    await assert.rejects(pipe.run({ ...base, height: 16, width: 16, signal: controller.signal }), {
      name: 'AbortError',
    });
    await pipe.close();
  });
});
