/**
 * Stable Diffusion 1.x prompt encoding on a tiny folder (byte-level CLIP tokenizer, a random
 * CLIPTextModel): clip-skip's final layer norm against a float64 LayerNorm written here, the negative
 * prompt's last hidden state; and the LCM pipeline's guidance embedding against the float64 formula.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';

import { CLIPTextModel } from '../../src/models/clip-text.js';
import {
  DiffusionPipeline,
  LatentConsistencyModelPipeline,
  StableDiffusionImg2ImgPipeline,
  StableDiffusionPipeline,
} from '../../src/pipelines/index.js';
import type { HostTensor } from '../../src/runtime/host-tensor.js';
import { hostTensor } from '../../src/runtime/host-tensor.js';
import { Runtime } from '../../src/runtime/runtime.js';
import { CLIPTokenizer } from '../../src/tokenizers/clip-tokenizer.js';
import { assertMaxAbsError } from '../compare.js';
import { recordUNet, tinySdPipeline } from '../fixtures/tiny-sd-pipelines.js';

const runtime = new Runtime({ worker: false, threads: 1 });
after(() => runtime.dispose());
const quiet = { runtime, onWarning: () => {} };

async function clipStates(dir: string, prompt: string): Promise<Record<string, HostTensor>> {
  const tokenizer = await CLIPTokenizer.fromPretrained(join(dir, 'tokenizer'));
  const ids = tokenizer.encode(prompt, { maxLength: 8, padding: 'max_length', truncation: true }).inputIds[0];
  const model = await CLIPTextModel.fromPretrained(join(dir, 'text_encoder'), quiet);
  const out = await model.forward(
    { input_ids: hostTensor('int64', [1, 8], BigInt64Array.from(ids, BigInt)) },
    { kwargs: { output_hidden_states: true } },
  );
  await model.close();
  return out;
}

describe('StableDiffusionPipeline prompts (tiny SD folder)', () => {
  it('clipSkip: final_layer_norm(hidden_states[-(k+1)]) for the prompt, last_hidden_state for the negative', async (t) => {
    const { dir, textEncoder } = await tinySdPipeline();
    const pipe = await DiffusionPipeline.fromPretrained(dir, quiet);
    assert.ok(pipe instanceof StableDiffusionPipeline);
    const calls = recordUNet(pipe);
    await pipe.run({
      prompt: 'a photo of a cat',
      negativePrompt: 'blurry',
      clipSkip: 1,
      numInferenceSteps: 1,
      height: 32,
      width: 32,
      seed: 1,
      outputType: 'latent',
    });
    const fed = calls[0].encoder_hidden_states.data as Float32Array;
    const negative = (await clipStates(dir, 'blurry')).last_hidden_state.data as Float32Array;
    // The pipeline's graph has no hidden-state outputs, the one here has: ORT fuses them differently (≤ 1 ulp of ~3).
    assertMaxAbsError(fed.subarray(0, 128), negative, 2e-6, 'negative = last_hidden_state');
    // LayerNorm(hidden_states.2) in float64 with the encoder's own final_layer_norm weights.
    const state = (await clipStates(dir, 'a photo of a cat'))['hidden_states.2'].data as Float32Array;
    const weight = textEncoder.get('text_model.final_layer_norm.weight') as Float32Array;
    const bias = textEncoder.get('text_model.final_layer_norm.bias') as Float32Array;
    const expected = new Float64Array(128);
    for (let s = 0; s < 8; s++) {
      const row = Array.from(state.subarray(s * 16, (s + 1) * 16));
      const mean = row.reduce((a, v) => a + v, 0) / 16;
      const variance = row.reduce((a, v) => a + (v - mean) ** 2, 0) / 16;
      row.forEach(
        (v, c) => (expected[s * 16 + c] = ((v - mean) / Math.sqrt(variance + 1e-5)) * weight[c] + bias[c]),
      );
    }
    const measured = assertMaxAbsError(fed.subarray(128), expected, 1e-5, 'prompt = LN(hidden_states[-2])');
    t.diagnostic(`clip-skip embedding vs float64 LayerNorm: ${measured.maxAbsError.toExponential(2)}`);
    // Without clipSkip the prompt takes last_hidden_state, which differs: the check can fail.
    const last = (await clipStates(dir, 'a photo of a cat')).last_hidden_state.data as Float32Array;
    assert.ok(last.some((v, i) => Math.abs(v - expected[i]) > 1e-2));
    await pipe.close();
  });

  it('StableDiffusionImg2ImgPipeline needs an image; with one it runs int(steps · strength) steps', async () => {
    const { dir } = await tinySdPipeline();
    const pipe = await StableDiffusionImg2ImgPipeline.fromPretrained(dir, quiet);
    await assert.rejects(pipe.run({ prompt: 'a cat', numInferenceSteps: 2 }), /needs an image/);
    const image = hostTensor('float32', [1, 3, 32, 32], new Float32Array(3 * 32 * 32).fill(0.5));
    const out = await pipe.run({ prompt: 'a cat', image, numInferenceSteps: 5, seed: 2 });
    // Default strength 0.8: int(4) of 801 601 401 201 1.
    assert.deepEqual(out.timesteps, [601, 401, 201, 1]);
    assert.deepEqual(out.images?.shape, [1, 3, 32, 32]);
    await assert.rejects(
      pipe.run({ prompt: 'a cat', image, height: 64 }),
      /height 64 differs from the image's 32/,
    );
    await assert.rejects(
      pipe.run({ prompt: 'a cat', image, strength: 0.1, numInferenceSteps: 5 }),
      /leaves no step/,
    );
    await pipe.close();
  });
});

describe('LatentConsistencyModelPipeline (tiny LCM UNet)', () => {
  it('runs without CFG and feeds timestep_cond = get_guidance_scale_embedding(guidance − 1)', async (t) => {
    const { dir } = await tinySdPipeline({ lcm: true });
    const pipe = await DiffusionPipeline.fromPretrained(dir, quiet);
    assert.ok(pipe instanceof LatentConsistencyModelPipeline);
    assert.equal(pipe.defaults.numInferenceSteps, 4);
    const calls = recordUNet(pipe);
    await pipe.run({
      prompt: 'a cat',
      numInferenceSteps: 2,
      height: 32,
      width: 32,
      seed: 1,
      outputType: 'latent',
    });
    assert.equal(calls.length, 2);
    assert.equal(calls[0].sample.shape[0], 1, 'no CFG batch');
    // VDM's embedding of w = 8.5 − 1, ·1000: [sin(w·f_k), cos(w·f_k)], f_k = exp(−k·ln(10⁴)/(half − 1)).
    const w = 7.5 * 1000;
    const half = 4;
    const expected = new Float64Array(8);
    for (let k = 0; k < half; k++) {
      const freq = Math.exp(-k * (Math.log(10000) / (half - 1)));
      expected[k] = Math.sin(w * freq);
      expected[half + k] = Math.cos(w * freq);
    }
    // Computed in float32 as torch does: the angle 7500·f carries float32 rounding, which sin/cos pass on.
    const measured = assertMaxAbsError(
      calls[0].timestep_cond.data as Float32Array,
      expected,
      1e-4,
      'timestep_cond',
    );
    t.diagnostic(`timestep_cond vs float64 formula: ${measured.maxAbsError.toExponential(2)}`);
    await pipe.close();
  });
});
