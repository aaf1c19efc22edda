/**
 * StableDiffusionXLPipeline on a tiny SDXL folder (random CLIP encoders, the golden SDXL UNet and VAE,
 * DDIM), against computations written here: the conditioning from the two encoders run directly,
 * the time ids and pooled embeddings the UNet receives, and a hand-driven loop of UNet forward +
 * float64 CFG (and guidance rescale) + DDIM step that the pipeline's shared loop must equal.
 * Image-to-image: the noised start latents and timesteps against diffusers' formulas in float64,
 * and strength 1 on a zero-SNR schedule equal to text-to-image from the same noise.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { CLIPTextModel, CLIPTextModelWithProjection } from '../../src/models/clip-text.js';
import {
  DiffusionPipeline,
  StableDiffusionXLImg2ImgPipeline,
  StableDiffusionXLPipeline,
} from '../../src/pipelines/index.js';
import type { UNetPipeline } from '../../src/pipelines/index.js';
import { TorchGenerator } from '../../src/random/torch-generator.js';
import { hostTensor } from '../../src/runtime/host-tensor.js';
import { Runtime } from '../../src/runtime/runtime.js';
import { schedulerFromConfig } from '../../src/schedulers/index.js';
import { CLIPTokenizer } from '../../src/tokenizers/clip-tokenizer.js';
import { assertMaxAbsError, maxAbs } from '../compare.js';
import { recordUNet, tinySdxlPipeline, type TinySdxlPipeline } from '../fixtures/tiny-sd-pipelines.js';
import { randomTensor } from '../helpers.js';
import { seededUniform, testSeed } from '../random.js';

const runtime = new Runtime({ worker: false, threads: 1 });
let folder: TinySdxlPipeline;
before(async () => {
  folder = await tinySdxlPipeline();
});
after(() => runtime.dispose());

/** hidden_states[index] of both encoders run directly, joined along the channels, and encoder 2's text_embeds. */
async function directConditioning(
  dir: string,
  prompts: [string, string],
  fromEnd: number,
): Promise<{ hidden: Float32Array; pooled: Float32Array }> {
  const parts: Float32Array[] = [];
  let pooled: Float32Array | undefined;
  for (const [i, [tok, enc]] of [
    ['tokenizer', 'text_encoder'],
    ['tokenizer_2', 'text_encoder_2'],
  ].entries()) {
    const tokenizer = await CLIPTokenizer.fromPretrained(join(dir, tok));
    const ids = tokenizer.encode(prompts[i], { maxLength: 8, padding: 'max_length', truncation: true })
      .inputIds[0];
    const load = { runtime, onWarning: () => {} };
    const model =
      i === 0
        ? await CLIPTextModel.fromPretrained(join(dir, enc), load)
        : await CLIPTextModelWithProjection.fromPretrained(join(dir, enc), load);
    const out = await model.forward(
      { input_ids: hostTensor('int64', [1, 8], BigInt64Array.from(ids, BigInt)) },
      { kwargs: { output_hidden_states: true } },
    );
    const layers = model.config.numHiddenLayers;
    parts.push(out[`hidden_states.${layers + 1 - fromEnd}`].data as Float32Array);
    if (out.text_embeds) pooled = out.text_embeds.data as Float32Array;
    await model.close();
  }
  // [1, 8, 8] and [1, 8, 16] → [1, 8, 24]
  const hidden = new Float32Array(8 * 24);
  for (let s = 0; s < 8; s++) {
    hidden.set(parts[0].subarray(s * 8, (s + 1) * 8), s * 24);
    hidden.set(parts[1].subarray(s * 16, (s + 1) * 16), s * 24 + 8);
  }
  return { hidden, pooled: pooled as Float32Array };
}

interface HandCondition {
  pos: Float32Array;
  neg: Float32Array;
  pooled: Float32Array;
  negPooled: Float32Array;
  ids: number[];
  negIds: number[];
}

/** UNet forward + CFG (+ rescale) in float64 + DDIM step, written out, for a batch of one. */
async function handLoop(
  pipe: UNetPipeline,
  c: HandCondition,
  latents: Float32Array,
  o: { steps: number; guidance: number; rescale?: number },
): Promise<Float32Array> {
  // A fresh DDIM of the folder's config: the pipeline's own scheduler object is not reused.
  const scheduler = schedulerFromConfig({ ...pipe.scheduler.config, _class_name: 'DDIMScheduler' });
  scheduler.setTimesteps(o.steps);
  const shape = [1, 4, 8, 8];
  let x = latents;
  const two = (a: Float32Array, b: Float32Array): Float32Array => {
    const r = new Float32Array(a.length + b.length);
    r.set(a);
    r.set(b, a.length);
    return r;
  };
  for (const t of scheduler.timesteps) {
    const out = await pipe.unet.forward({
      sample: hostTensor('float32', [2, 4, 8, 8], two(x, x)),
      timestep: hostTensor('float32', [2], Float32Array.of(t, t)),
      encoder_hidden_states: hostTensor('float32', [2, 8, 24], two(c.neg, c.pos)),
      text_embeds: hostTensor('float32', [2, 16], two(c.negPooled, c.pooled)),
      time_ids: hostTensor('float32', [2, 6], Float32Array.from([...c.negIds, ...c.ids])),
    });
    const eps = out.sample.data as Float32Array;
    const n = x.length;
    const guided = Array.from({ length: n }, (_, i) => eps[i] + o.guidance * (eps[n + i] - eps[i]));
    let pred = guided;
    if (o.rescale) {
      const std = (xs: ArrayLike<number>): number => {
        const m = Array.from(xs).reduce((a, v) => a + v, 0) / n;
        return Math.sqrt(Array.from(xs).reduce((a, v) => a + (v - m) ** 2, 0) / (n - 1));
      };
      const ratio = std(eps.subarray(n)) / std(guided);
      pred = guided.map((g) => o.rescale! * g * ratio + (1 - o.rescale!) * g);
    }
    x = scheduler.step({ data: Float32Array.from(pred), shape }, t, { data: x, shape }).prevSample.data;
  }
  return x;
}

describe('StableDiffusionXLPipeline (tiny SDXL folder)', () => {
  it('feeds both encoders’ penultimate states, the pooled text_embeds, zero negatives and the time ids; equals a hand-driven loop', async (t) => {
    const pipe = await DiffusionPipeline.fromPretrained(folder.dir, { runtime, onWarning: () => {} });
    assert.ok(pipe instanceof StableDiffusionXLPipeline);
    const calls = recordUNet(pipe);
    const latents = randomTensor([1, 4, 8, 8], seededUniform(testSeed('sdxl latents')), -2, 2);
    const out = await pipe.run({
      prompt: 'a cat',
      latents,
      numInferenceSteps: 3,
      guidanceScale: 5,
      height: 32,
      width: 32,
      outputType: 'latent',
    });
    assert.equal(calls.length, 3);
    const first = calls[0];
    const { hidden, pooled } = await directConditioning(folder.dir, ['a cat', 'a cat'], 2);
    const text = first.encoder_hidden_states.data as Float32Array;
    assert.deepEqual(first.encoder_hidden_states.shape, [2, 8, 24]);
    // force_zeros_for_empty_prompt (default true) and no negative prompt: zeros.
    assert.equal(maxAbs(text.subarray(0, 192)), 0);
    assertMaxAbsError(text.subarray(192), hidden, 0, 'positive half = [h1[-2], h2[-2]]');
    const pooledFed = first.text_embeds.data as Float32Array;
    assert.equal(maxAbs(pooledFed.subarray(0, 16)), 0);
    assertMaxAbsError(pooledFed.subarray(16), pooled, 0, 'pooled = text_encoder_2 text_embeds');
    assert.deepEqual(
      [...(first.time_ids.data as Float32Array)],
      [32, 32, 0, 0, 32, 32, 32, 32, 0, 0, 32, 32],
    );
    const expected = await handLoop(
      pipe,
      {
        pos: hidden,
        neg: new Float32Array(192),
        pooled,
        negPooled: new Float32Array(16),
        ids: [32, 32, 0, 0, 32, 32],
        negIds: [32, 32, 0, 0, 32, 32],
      },
      latents.data as Float32Array,
      { steps: 3, guidance: 5 },
    );
    // float32 CFG in the pipeline vs float64 here: rounding of values ≲ 10 over 3 steps.
    const measured = assertMaxAbsError(
      out.latents.data as Float32Array,
      expected,
      1e-4 * maxAbs(expected),
      'final latents',
    );
    t.diagnostic(
      `final latents vs hand loop: ${measured.maxAbsError.toExponential(2)} (|x| ≤ ${maxAbs(expected).toFixed(2)})`,
    );
    await pipe.close();
  });

  it('negative prompts, prompt2, clipSkip, negative sizes and guidanceRescale reach the UNet as diffusers computes them', async (t) => {
    const pipe = await StableDiffusionXLPipeline.fromPretrained(folder.dir, { runtime, onWarning: () => {} });
    const calls = recordUNet(pipe);
    const latents = randomTensor([1, 4, 8, 8], seededUniform(testSeed('sdxl latents 2')), -2, 2);
    const out = await pipe.run({
      prompt: 'a cat',
      prompt2: 'a dog',
      negativePrompt: 'blue',
      clipSkip: 1,
      guidanceRescale: 0.7,
      negativeOriginalSize: [16, 24],
      cropsCoordsTopLeft: [4, 2],
      latents,
      numInferenceSteps: 3,
      guidanceScale: 6,
      height: 32,
      width: 32,
      outputType: 'latent',
    });
    const first = calls[0];
    // clipSkip 1: hidden_states[-3] for the prompts; the negative prompt keeps hidden_states[-2].
    const pos = await directConditioning(folder.dir, ['a cat', 'a dog'], 3);
    const neg = await directConditioning(folder.dir, ['blue', 'blue'], 2);
    const text = first.encoder_hidden_states.data as Float32Array;
    assertMaxAbsError(text.subarray(0, 192), neg.hidden, 0, 'negative half');
    assertMaxAbsError(text.subarray(192), pos.hidden, 0, 'positive half');
    const pooledFed = first.text_embeds.data as Float32Array;
    assertMaxAbsError(pooledFed.subarray(0, 16), neg.pooled, 0, 'negative pooled');
    assertMaxAbsError(pooledFed.subarray(16), pos.pooled, 0, 'pooled');
    const ids = [32, 32, 4, 2, 32, 32];
    const negIds = [16, 24, 4, 2, 32, 32];
    assert.deepEqual([...(first.time_ids.data as Float32Array)], [...negIds, ...ids]);
    const expected = await handLoop(
      pipe,
      { pos: pos.hidden, neg: neg.hidden, pooled: pos.pooled, negPooled: neg.pooled, ids, negIds },
      latents.data as Float32Array,
      { steps: 3, guidance: 6, rescale: 0.7 },
    );
    const measured = assertMaxAbsError(
      out.latents.data as Float32Array,
      expected,
      1e-4 * maxAbs(expected),
      'final latents',
    );
    t.diagnostic(
      `final latents vs hand loop with float64 rescale: ${measured.maxAbsError.toExponential(2)} (|x| ≤ ${maxAbs(expected).toFixed(2)})`,
    );
    // Without the rescale the result differs by far more than that: the rescale is applied.
    const plain = await handLoop(
      pipe,
      { pos: pos.hidden, neg: neg.hidden, pooled: pos.pooled, negPooled: neg.pooled, ids, negIds },
      latents.data as Float32Array,
      { steps: 3, guidance: 6 },
    );
    assert.ok(maxAbs(plain.map((v, i) => v - expected[i])) > 1e-2 * maxAbs(expected));
    await pipe.close();
  });

  it('image-to-image: timesteps from strength, start latents = add_noise(scaling · VAE sample) as diffusers', async (t) => {
    const pipe = await StableDiffusionXLImg2ImgPipeline.fromPretrained(folder.dir, {
      runtime,
      onWarning: () => {},
    });
    assert.equal(pipe.defaults.strength, 0.3);
    await assert.rejects(pipe.run({ prompt: 'a cat' }), /needs an image/);
    const calls = recordUNet(pipe);
    const image = randomTensor([1, 3, 32, 32], seededUniform(testSeed('sdxl image')), 0, 1);
    const out = await pipe.run({
      prompt: 'a cat',
      image,
      strength: 0.6,
      numInferenceSteps: 5,
      guidanceScale: 5,
      seed: 3,
      outputType: 'latent',
    });
    // DDIM leading, steps_offset 1, 5 steps: 801 601 401 201 1; int(5 · 0.6) = 3 run.
    assert.deepEqual(out.timesteps, [401, 201, 1]);
    assert.equal(calls.length, 3);
    assert.deepEqual([...(calls[0].time_ids.data as Float32Array)].slice(6), [32, 32, 0, 0, 32, 32]);
    // The start, computed here: the VAE posterior of 2x − 1, a sample with the seed-3 generator, × scaling,
    // then sqrt(ᾱ)·x0 + sqrt(1 − ᾱ)·ε with ε drawn next and ᾱ_401 of scaled_linear betas in float64.
    const generator = new TorchGenerator(3);
    const scaled = hostTensor(
      'float32',
      image.shape,
      (image.data as Float32Array).map((v) => 2 * v - 1),
    );
    const posterior = await pipe.vae!.encode(scaled);
    const shape = posterior.latentMean.shape;
    const eps = generator.randn(shape);
    const noise = generator.randn(shape);
    const mean = posterior.latentMean.data as Float32Array;
    const std = posterior.latentStd.data as Float32Array;
    let alphaBar = 1;
    for (let t = 0; t <= 401; t++) {
      const beta = (Math.sqrt(0.00085) + (t / 999) * (Math.sqrt(0.012) - Math.sqrt(0.00085))) ** 2;
      alphaBar *= 1 - beta;
    }
    const start = Array.from(mean, (m, i) => {
      const x0 = 0.18215 * (m + std[i] * eps[i]);
      return Math.sqrt(alphaBar) * x0 + Math.sqrt(1 - alphaBar) * noise[i];
    });
    const fed = (calls[0].sample.data as Float32Array).subarray(0, start.length);
    const measured = assertMaxAbsError(fed, start, 1e-5 * Math.max(1, maxAbs(start)), 'noised start latents');
    t.diagnostic(`start latents vs float64 formula: ${measured.maxAbsError.toExponential(2)}`);
    await pipe.close();
  });

  it('strength 1 on a zero-SNR schedule equals text-to-image from the same noise', async (t) => {
    const zsnr = await tinySdxlPipeline({
      scheduler: { rescale_betas_zero_snr: true, timestep_spacing: 'trailing' },
    });
    const pipe = await StableDiffusionXLPipeline.fromPretrained(zsnr.dir, { runtime, onWarning: () => {} });
    const noise = randomTensor([1, 4, 8, 8], seededUniform(testSeed('sdxl zsnr noise')), -2, 2);
    const image = randomTensor([1, 3, 32, 32], seededUniform(testSeed('sdxl zsnr image')), 0, 1);
    const base = { prompt: 'a cat', numInferenceSteps: 3, guidanceScale: 5, outputType: 'latent' as const };
    const text = await pipe.run({ ...base, latents: noise, height: 32, width: 32 });
    const edited = await pipe.run({ ...base, image, strength: 1, noise, seed: 1 });
    assert.deepEqual(edited.timesteps, text.timesteps);
    // ᾱ_999 = 0 after the rescale: the image's weight is 0 (up to float32 rounding of ᾱ).
    const measured = assertMaxAbsError(
      edited.latents.data as Float32Array,
      text.latents.data as Float32Array,
      1e-5 * maxAbs(text.latents.data as Float32Array),
      'strength 1 vs text-to-image',
    );
    t.diagnostic(`strength 1 vs text-to-image: ${measured.maxAbsError.toExponential(2)}`);
    // With strength 0.99 of 3 steps (2 run) the result differs: the check can fail.
    const partial = await pipe.run({ ...base, image, strength: 0.99, noise, seed: 1 });
    assert.equal(partial.timesteps.length, 2);
    await pipe.close();
  });
});
