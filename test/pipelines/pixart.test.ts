import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { OptionError } from '../../src/errors.js';
import { DiffusionPipeline } from '../../src/pipelines/index.js';
import type { HostTensor } from '../../src/runtime/host-tensor.js';
import { Runtime } from '../../src/runtime/runtime.js';
import { assertClose, readAllTensors } from '../helpers.js';

const CASE = fileURLToPath(new URL('../golden/pipelines/pipeline_pixart_alpha_ddim/', import.meta.url));
const runtime = new Runtime({ worker: false, threads: 1 });
after(() => runtime.dispose());

function maxAbs(a: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]));
  return m;
}

describe('PixArtAlphaPipeline + DDIM vs diffusers (pipeline_pixart_alpha_ddim)', () => {
  it('reproduces timesteps, per-step latents, final latents and the image', async () => {
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
    // Whole pipelines: about 1e-3 relative to the largest value (golden README).
    const stepData = golden.per_step_latents.data as Float32Array;
    const stepSize = stepData.length / 4;
    for (let i = 0; i < 4; i++) {
      const expected = stepData.subarray(i * stepSize, (i + 1) * stepSize);
      assertClose(perStep[i].data as Float32Array, expected, {
        atol: 1e-3 * Math.max(1, maxAbs(expected)),
        rtol: 0,
        what: `per_step_latents[${i}]`,
      });
    }
    const finalLatents = golden.final_latents.data as Float32Array;
    assertClose(out.latents.data as Float32Array, finalLatents, {
      atol: 1e-3 * Math.max(1, maxAbs(finalLatents)),
      rtol: 0,
      what: 'final_latents',
    });
    assert.ok(out.images);
    assert.deepEqual(out.images.shape, golden.image.shape);
    assertClose(out.images.data as Float32Array, golden.image.data as Float32Array, {
      atol: 1e-3,
      rtol: 0,
      what: 'image',
    });
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
