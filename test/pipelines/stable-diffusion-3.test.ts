/**
 * StableDiffusion3Pipeline against diffusers' recorded run (golden pipeline_sd3_flowmatch: tiny SD3
 * MMDiT and 16-channel VAE with shift_factor, FlowMatchEuler shift 3, precomputed embeddings, pooled
 * embeddings and latents, guidance 5, 4 steps); on a tiny folder with three random text encoders, the
 * conditioning fed to the transformer against the encoders run directly; image-to-image's timesteps
 * and start latents against diffusers' formulas in float64; dynamic shifting; the errors a user meets.
 */
import assert from 'node:assert/strict';
import { cp, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

import { OptionError } from '../../src/errors.js';
import { readModelIndex } from '../../src/io/diffusers.js';
import { CLIPTextModelWithProjection } from '../../src/models/clip-text.js';
import { T5EncoderModel } from '../../src/models/t5-encoder.js';
import {
  DiffusionPipeline,
  StableDiffusion3Img2ImgPipeline,
  StableDiffusion3Pipeline,
} from '../../src/pipelines/index.js';
import { TorchGenerator } from '../../src/random/torch-generator.js';
import type { HostTensor } from '../../src/runtime/host-tensor.js';
import { hostTensor } from '../../src/runtime/host-tensor.js';
import { Runtime } from '../../src/runtime/runtime.js';
import { calculateShift, FlowMatchEulerDiscreteScheduler } from '../../src/schedulers/index.js';
import { CLIPTokenizer } from '../../src/tokenizers/clip-tokenizer.js';
import { T5Tokenizer } from '../../src/tokenizers/t5-tokenizer.js';
import { assertMaxAbsError, maxAbs } from '../compare.js';
import { MAX_LENGTH } from '../fixtures/tiny-sd-pipelines.js';
import { tinySd3Pipeline } from '../fixtures/tiny-sd3-pipeline.js';
import { describeCheck, GoldenFixture, type GoldenMeta } from '../golden-fixture.js';
import { randomTensor, readAllTensors } from '../helpers.js';
import { seededUniform, testSeed } from '../random.js';

const CASE = fileURLToPath(new URL('../golden/pipelines/pipeline_sd3_flowmatch/', import.meta.url));
const runtime = new Runtime({ worker: false, threads: 1 });
let inputs: Record<string, HostTensor>;
let tinyDir: string;
before(async () => {
  inputs = await readAllTensors(`${CASE}inputs.safetensors`);
  tinyDir = await tinySd3Pipeline();
});
after(() => runtime.dispose());

interface PipelineMeta extends GoldenMeta {
  readonly fp32_vs_fp64_per_step_max_abs: readonly number[];
}

/** The golden call's embeddings (meta.json call_kwargs: prompt_embeds, pooled ones and negatives). */
function goldenEmbeds(): {
  promptEmbeds: HostTensor;
  pooledPromptEmbeds: HostTensor;
  negativePromptEmbeds: HostTensor;
  negativePooledPromptEmbeds: HostTensor;
} {
  return {
    promptEmbeds: inputs.prompt_embeds,
    pooledPromptEmbeds: inputs.pooled_prompt_embeds,
    negativePromptEmbeds: inputs.negative_prompt_embeds,
    negativePooledPromptEmbeds: inputs.negative_pooled_prompt_embeds,
  };
}

/** Records every transformer call's inputs. */
function recordTransformer(pipe: StableDiffusion3Pipeline): Record<string, HostTensor>[] {
  const calls: Record<string, HostTensor>[] = [];
  const forward = pipe.transformer.forward.bind(pipe.transformer);
  pipe.transformer.forward = async (feeds, options) => {
    calls.push({ ...feeds });
    return forward(feeds, options);
  };
  return calls;
}

describe('StableDiffusion3Pipeline + FlowMatchEuler vs diffusers (pipeline_sd3_flowmatch)', () => {
  it('reproduces timesteps, per-step latents, final latents and the image', async (t) => {
    const pipe = await DiffusionPipeline.fromPretrained(`${CASE}pipeline`, { runtime });
    assert.ok(pipe instanceof StableDiffusion3Pipeline);
    assert.equal(pipe.className, 'StableDiffusion3Pipeline');
    const golden = await readAllTensors(`${CASE}outputs.safetensors`);
    const perStep: HostTensor[] = [];
    const out = await pipe.run({
      ...goldenEmbeds(),
      latents: inputs.latents,
      numInferenceSteps: 4,
      guidanceScale: 5,
      height: 16,
      width: 16,
      callbackOnStepEnd: ({ latents }) => void perStep.push(latents),
    });
    // σ · 1000 in float32, as diffusers records them.
    assert.deepEqual(out.timesteps, [...(golden.timesteps.data as Float32Array)]);
    const fixture = await GoldenFixture.load<PipelineMeta>(CASE);
    const perStepNoise = fixture.meta.fp32_vs_fp64_per_step_max_abs;
    assert.equal(perStep.length, 4);
    // 10× torch's fp32-vs-fp64 noise of each step (5.2e-7 … 2.3e-6 of latents up to 4.6).
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
    // The image is decoded from latents / scaling_factor + shift_factor: without the shift it is far off.
    t.diagnostic(describeCheck(fixture.check('image', out.images.data as Float32Array)));
    await pipe.close();
  });

  it('feeds σ·1000 expanded to the batch; runs numImagesPerPrompt copies; no CFG at guidance 1', async (t) => {
    const pipe = await StableDiffusion3Pipeline.fromPretrained(`${CASE}pipeline`, { runtime });
    const golden = await readAllTensors(`${CASE}outputs.safetensors`);
    const calls = recordTransformer(pipe);
    const latents = inputs.latents.data as Float32Array;
    const twice = new Float32Array(2 * latents.length);
    twice.set(latents);
    twice.set(latents, latents.length);
    const out = await pipe.run({
      ...goldenEmbeds(),
      latents: hostTensor('float32', [2, 16, 8, 8], twice),
      numImagesPerPrompt: 2,
      numInferenceSteps: 4,
      guidanceScale: 5,
      height: 16,
      width: 16,
      outputType: 'latent',
    });
    assert.equal(out.images, undefined);
    assert.equal(calls.length, 4);
    calls.forEach((call, i) => {
      assert.deepEqual(call.hidden_states.shape, [4, 16, 8, 8]);
      assert.deepEqual([...(call.timestep.data as Float32Array)], new Array(4).fill(out.timesteps[i]));
      assert.deepEqual(call.encoder_hidden_states.shape, [4, 9, 24]);
      assert.deepEqual(call.pooled_projections.shape, [4, 20]);
    });
    const final = golden.final_latents.data as Float32Array;
    const data = out.latents.data as Float32Array;
    // Both items follow the recorded run (batch 4 runs other kernels: 10× the 2.3e-6 noise).
    const first = assertMaxAbsError(data.subarray(0, final.length), final, 2.3e-5, 'item 0');
    assertMaxAbsError(data.subarray(final.length), final, 2.3e-5, 'item 1');
    t.diagnostic(`numImagesPerPrompt 2, item 0 vs golden: ${first.maxAbsError.toExponential(2)}`);

    // guidance 1: no CFG, no negatives needed, the positive conditioning alone.
    calls.length = 0;
    const { promptEmbeds, pooledPromptEmbeds } = goldenEmbeds();
    await pipe.run({
      promptEmbeds,
      pooledPromptEmbeds,
      latents: inputs.latents,
      numInferenceSteps: 2,
      guidanceScale: 1,
      height: 16,
      width: 16,
      outputType: 'latent',
    });
    assert.equal(calls.length, 2);
    assert.deepEqual(calls[0].hidden_states.shape, [1, 16, 8, 8]);
    assert.deepEqual(
      [...(calls[0].pooled_projections.data as Float32Array)],
      [...(pooledPromptEmbeds.data as Float32Array)],
    );
    await pipe.close();
  });

  it('computes mu from the image size when the scheduler shifts dynamically; passes mu and sigmas on', async () => {
    const pipe = await StableDiffusion3Pipeline.fromPretrained(`${CASE}pipeline`, { runtime });
    const fixedShift = { ...pipe.scheduler.config };
    const config = { ...fixedShift, use_dynamic_shifting: true };
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.fromConfig(config);
    const out = await pipe.run({
      ...goldenEmbeds(),
      latents: inputs.latents,
      numInferenceSteps: 3,
      guidanceScale: 5,
      height: 16,
      width: 16,
      outputType: 'latent',
    });
    // 16×16 pixels → 8×8 latents → 4×4 = 16 patches; the config's base/max shift and lengths.
    const mu = 0.5 + ((1.15 - 0.5) / (4096 - 256)) * (16 - 256);
    assert.ok(Math.abs(calculateShift(16, 256, 4096, 0.5, 1.15) - mu) < 1e-12);
    const expected = FlowMatchEulerDiscreteScheduler.fromConfig(config);
    expected.setTimesteps(3, { mu });
    assert.deepEqual(out.timesteps, [...expected.timesteps]);
    // An explicit mu wins.
    const given = await pipe.run({
      ...goldenEmbeds(),
      latents: inputs.latents,
      numInferenceSteps: 3,
      mu: 1,
      height: 16,
      width: 16,
      outputType: 'latent',
    });
    expected.setTimesteps(3, { mu: 1 });
    assert.deepEqual(given.timesteps, [...expected.timesteps]);
    // Custom sigmas set the schedule and its length (shifted by the scheduler, as diffusers does).
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.fromConfig(fixedShift);
    const custom = await pipe.run({
      ...goldenEmbeds(),
      latents: inputs.latents,
      sigmas: [1, 0.5],
      height: 16,
      width: 16,
      outputType: 'latent',
    });
    // shift 3: 3σ / (1 + 2σ) → 1 and 0.75.
    assert.deepEqual(custom.timesteps, [1000, 750]);
    await pipe.close();
  });

  it('image-to-image: steps − int(steps − steps·strength) timesteps, start = scale_noise((z − shift)·scaling)', async (t) => {
    // A copy of the golden folder whose model_index.json names the image-to-image class.
    const dir = join(await mkdtemp(join(tmpdir(), 'velodiff-sd3-img2img-')), 'pipeline');
    await cp(`${CASE}pipeline`, dir, { recursive: true });
    const index = JSON.parse(await readFile(join(dir, 'model_index.json'), 'utf8')) as object;
    const className = 'StableDiffusion3Img2ImgPipeline';
    await writeFile(join(dir, 'model_index.json'), JSON.stringify({ ...index, _class_name: className }));
    const pipe = await DiffusionPipeline.fromPretrained(dir, { runtime });
    assert.ok(pipe instanceof StableDiffusion3Img2ImgPipeline);
    assert.equal(pipe.defaults.strength, 0.6);
    await assert.rejects(pipe.run({ ...goldenEmbeds() }), /needs an image/);
    const golden = await readAllTensors(`${CASE}outputs.safetensors`);
    const calls = recordTransformer(pipe);
    const image = randomTensor([1, 3, 16, 16], seededUniform(testSeed('sd3 image')), 0, 1);
    const out = await pipe.run({
      ...goldenEmbeds(),
      image,
      strength: 0.6,
      numInferenceSteps: 4,
      guidanceScale: 5,
      seed: 3,
      outputType: 'latent',
    });
    // 4 · 0.6 = 2.4 → t_start = int(1.6) = 1: three steps (SD's int(4 · 0.6) rule would run two).
    const schedule = [...(golden.timesteps.data as Float32Array)];
    assert.deepEqual(out.timesteps, schedule.slice(1));
    assert.equal(calls.length, 3);
    // The start, computed here: the posterior of 2x − 1 sampled with the seed-3 generator, shifted
    // and scaled, then σ·ε + (1 − σ)·x0 with ε drawn next and σ = t / 1000.
    const generator = new TorchGenerator(3);
    const vae = pipe.vae!;
    const posterior = await vae.encode(
      hostTensor(
        'float32',
        image.shape,
        (image.data as Float32Array).map((v) => 2 * v - 1),
      ),
    );
    const shape = posterior.latentMean.shape;
    const eps = generator.randn(shape);
    const noise = generator.randn(shape);
    const mean = posterior.latentMean.data as Float32Array;
    const std = posterior.latentStd.data as Float32Array;
    const sigma = schedule[1] / 1000;
    const { scalingFactor, shiftFactor } = vae.config;
    assert.equal(shiftFactor, 0.0609);
    const start = Array.from(mean, (m, i) => {
      const x0 = (m + std[i] * eps[i] - 0.0609) * scalingFactor;
      return sigma * noise[i] + (1 - sigma) * x0;
    });
    const fed = (calls[0].hidden_states.data as Float32Array).subarray(0, start.length);
    const measured = assertMaxAbsError(fed, start, 1e-5 * Math.max(1, maxAbs(start)), 'noised start latents');
    t.diagnostic(`start latents vs float64 formula: ${measured.maxAbsError.toExponential(2)}`);
    await pipe.close();
    await rm(dirname(dir), { recursive: true, force: true });
  });

  it('gives clear errors for embeddings, prompts without text encoders, latents and sizes', async () => {
    const pipe = await StableDiffusion3Pipeline.fromPretrained(`${CASE}pipeline`, { runtime });
    const e = goldenEmbeds();
    const base = { ...e, numInferenceSteps: 2, height: 16, width: 16, outputType: 'latent' as const };
    const option = (pattern: RegExp) => (error: unknown) =>
      error instanceof OptionError && pattern.test(error.message);
    await assert.rejects(
      pipe.run({ ...base, pooledPromptEmbeds: undefined }),
      option(/pooledPromptEmbeds must be given with promptEmbeds/),
    );
    await assert.rejects(
      pipe.run({ ...base, negativePooledPromptEmbeds: undefined }),
      option(/negativePooledPromptEmbeds must be given with negativePromptEmbeds/),
    );
    await assert.rejects(
      pipe.run({ prompt: 'a cat', height: 16, width: 16 }),
      option(/no CLIP text encoders\/tokenizers .* pass promptEmbeds and pooledPromptEmbeds/),
    );
    await assert.rejects(
      pipe.run({
        promptEmbeds: e.promptEmbeds,
        pooledPromptEmbeds: e.pooledPromptEmbeds,
        height: 16,
        width: 16,
      }),
      option(/guidance needs negativePromptEmbeds and negativePooledPromptEmbeds/),
    );
    await assert.rejects(
      pipe.run({ ...base, negativePrompt: 'blurry' }),
      option(/give either negativePrompt \(2, 3\) or negativePromptEmbeds, not both/),
    );
    await assert.rejects(
      pipe.run({ ...base, prompt: 'a cat' }),
      option(/give either prompt or promptEmbeds, not both/),
    );
    await assert.rejects(
      pipe.run({ ...base, latents: randomTensor([1, 16, 4, 4], seededUniform(1)) }),
      option(/latents: expected shape \[1, 16, 8, 8\], got \[1, 16, 4, 4\]/),
    );
    await assert.rejects(
      pipe.run({ ...base, promptEmbeds: randomTensor([1, 9, 16], seededUniform(2)) }),
      option(/promptEmbeds must have shape \[B, L, 24\] \(joint_attention_dim/),
    );
    await assert.rejects(
      pipe.run({ ...base, pooledPromptEmbeds: randomTensor([1, 16], seededUniform(3)) }),
      option(/pooledPromptEmbeds must have shape \[1, 20\], got \[1, 16\]/),
    );
    await assert.rejects(
      pipe.run({ ...base, negativePromptEmbeds: randomTensor([1, 7, 24], seededUniform(4)) }),
      option(/negativePromptEmbeds must have shape \[1, 9, 24\], got \[1, 7, 24\]/),
    );
    await assert.rejects(
      pipe.run({ ...base, height: 14 }),
      option(/height 14 must be a multiple of 4 \(VAE factor 2 × patch size 2\); try 16/),
    );
    await assert.rejects(
      pipe.run({ ...base, width: 68 }),
      option(/width 68 is larger than .* pos_embed_max_size 16 × 4 = 64/),
    );
    await assert.rejects(
      pipe.run({ ...base, maxSequenceLength: 513 }),
      option(/maxSequenceLength must be at most 512/),
    );
    await assert.rejects(pipe.run({ ...base, strength: 0.5 }), option(/give an image too/));
    const controller = new AbortController();
    controller.abort();
    await assert.rejects(pipe.run({ ...base, signal: controller.signal }), { name: 'AbortError' });
    await pipe.close();
  });
});

/** What the tiny folder's CLIP pair `suffix` gives `text`: hidden_states[−fromEnd] and text_embeds. */
async function directClip(
  suffix: '' | '_2',
  text: string,
  fromEnd: number,
): Promise<{ hidden: Float32Array; pooled: Float32Array; width: number }> {
  const tokenizer = await CLIPTokenizer.fromPretrained(join(tinyDir, `tokenizer${suffix}`));
  const dir = join(tinyDir, `text_encoder${suffix}`);
  const ids = tokenizer.encode(text, { maxLength: MAX_LENGTH, padding: 'max_length', truncation: true })
    .inputIds[0];
  const model = await CLIPTextModelWithProjection.fromPretrained(dir, { runtime, onWarning: () => {} });
  const out = await model.forward(
    { input_ids: hostTensor('int64', [1, MAX_LENGTH], BigInt64Array.from(ids, BigInt)) },
    { kwargs: { output_hidden_states: true } },
  );
  const layers = model.config.numHiddenLayers;
  const hidden = out[`hidden_states.${layers + 1 - fromEnd}`];
  await model.close();
  return {
    hidden: hidden.data as Float32Array,
    pooled: out.text_embeds.data as Float32Array,
    width: hidden.shape[2],
  };
}

/** The tiny folder's T5 last hidden state of `text` padded to `length` tokens, without a mask. */
async function directT5(text: string, length: number): Promise<Float32Array> {
  const tokenizer = await T5Tokenizer.fromPretrained(join(tinyDir, 'tokenizer_3'));
  const ids = tokenizer.encode(text, { maxLength: length, padding: 'max_length', truncation: true })
    .inputIds[0];
  const model = await T5EncoderModel.fromPretrained(join(tinyDir, 'text_encoder_3'), {
    runtime,
    onWarning: () => {},
  });
  const out = await model.forward({
    input_ids: hostTensor('int64', [1, length], BigInt64Array.from(ids, BigInt)),
  });
  await model.close();
  return out.last_hidden_state.data as Float32Array;
}

/** diffusers' layout of one prompt: [pad([clipL, clipG], 24); t5] as [L + T, 24], and [pooledL, pooledG]. */
async function directConditioning(
  texts: [string, string, string],
  fromEnd: number,
  t5Length: number,
): Promise<{ embeds: Float32Array; pooled: Float32Array }> {
  const l = await directClip('', texts[0], fromEnd);
  const g = await directClip('_2', texts[1], fromEnd);
  const t5 = await directT5(texts[2], t5Length);
  const embeds = new Float32Array((MAX_LENGTH + t5Length) * 24);
  for (let s = 0; s < MAX_LENGTH; s++) {
    embeds.set(l.hidden.subarray(s * l.width, (s + 1) * l.width), s * 24);
    embeds.set(g.hidden.subarray(s * g.width, (s + 1) * g.width), s * 24 + l.width);
  }
  embeds.set(t5, MAX_LENGTH * 24);
  const pooled = new Float32Array(l.pooled.length + g.pooled.length);
  pooled.set(l.pooled);
  pooled.set(g.pooled, l.pooled.length);
  return { embeds, pooled };
}

describe('StableDiffusion3Pipeline prompt encoding (tiny folder with CLIP-L, CLIP-G and T5)', () => {
  it('feeds [pad(CLIP-L ⊕ CLIP-G hidden_states[−(k+2)]); T5] and the joined text_embeds, the negative at [−2]', async (t) => {
    const pipe = await DiffusionPipeline.fromPretrained(tinyDir, { runtime, onWarning: () => {} });
    assert.ok(pipe instanceof StableDiffusion3Pipeline);
    assert.equal(pipe.clipEncoders.length, 2);
    assert.ok(pipe.t5Encoder);
    const calls = recordTransformer(pipe);
    const latents = randomTensor([1, 16, 8, 8], seededUniform(testSeed('sd3 prompt latents')), -2, 2);
    const out = await pipe.run({
      prompt: 'a cat',
      prompt3: 'the cat.',
      negativePrompt: 'abc',
      clipSkip: 1,
      maxSequenceLength: 6,
      latents,
      numInferenceSteps: 2,
      guidanceScale: 5,
      height: 16,
      width: 16,
      outputType: 'latent',
    });
    assert.equal(calls.length, 2);
    const fed = calls[0].encoder_hidden_states;
    assert.deepEqual(fed.shape, [2, MAX_LENGTH + 6, 24]);
    const text = fed.data as Float32Array;
    const item = (MAX_LENGTH + 6) * 24;
    // clipSkip 1: hidden_states[−3] for the prompt; the negative prompt keeps hidden_states[−2].
    const pos = await directConditioning(['a cat', 'a cat', 'the cat.'], 3, 6);
    const neg = await directConditioning(['abc', 'abc', 'abc'], 2, 6);
    assertMaxAbsError(text.subarray(0, item), neg.embeds, 0, 'negative half');
    assertMaxAbsError(text.subarray(item), pos.embeds, 0, 'positive half');
    // CLIP's 8 + 12 channels are zero-padded to T5's 24.
    for (let s = 0; s < MAX_LENGTH; s++)
      assert.equal(maxAbs(text.subarray(item + s * 24 + 20, item + s * 24 + 24)), 0);
    const pooled = calls[0].pooled_projections.data as Float32Array;
    assertMaxAbsError(pooled.subarray(0, 20), neg.pooled, 0, 'negative pooled');
    assertMaxAbsError(pooled.subarray(20), pos.pooled, 0, 'pooled = [CLIP-L, CLIP-G] text_embeds');
    assert.ok(maxAbs(out.latents.data as Float32Array) > 0);

    // prompt2 reaches CLIP-G only; an empty prompt2 falls back to prompt (diffusers' `or`).
    calls.length = 0;
    await pipe.run({
      prompt: 'a cat',
      prompt2: 'the',
      maxSequenceLength: 6,
      latents,
      numInferenceSteps: 1,
      guidanceScale: 1,
      height: 16,
      width: 16,
      outputType: 'latent',
    });
    const two = await directConditioning(['a cat', 'the', 'a cat'], 2, 6);
    assertMaxAbsError(calls[0].encoder_hidden_states.data as Float32Array, two.embeds, 0, 'prompt2');
    t.diagnostic('conditioning equals the encoders run directly, bit for bit');
    await pipe.close();
  });

  it('without text_encoder_3 the T5 part is zeros [B, maxSequenceLength, joint_attention_dim]', async () => {
    const index = await readModelIndex(tinyDir);
    const pipe = await StableDiffusion3Pipeline.fromPretrained(tinyDir, {
      runtime,
      onWarning: () => {},
      index: { ...index, components: { ...index.components, text_encoder_3: [null, null] } },
    });
    assert.equal(pipe.t5Encoder, undefined);
    const calls = recordTransformer(pipe);
    await pipe.run({
      prompt: 'a cat',
      latents: randomTensor([1, 16, 8, 8], seededUniform(5)),
      numInferenceSteps: 1,
      guidanceScale: 5,
      height: 16,
      width: 16,
      outputType: 'latent',
    });
    const fed = calls[0].encoder_hidden_states;
    // The default max_sequence_length 256 of zeros after CLIP's 8 tokens.
    assert.deepEqual(fed.shape, [2, MAX_LENGTH + 256, 24]);
    const text = fed.data as Float32Array;
    const item = (MAX_LENGTH + 256) * 24;
    const pos = await directConditioning(['a cat', 'a cat', 'a cat'], 2, 1);
    assertMaxAbsError(
      text.subarray(item, item + MAX_LENGTH * 24),
      pos.embeds.subarray(0, MAX_LENGTH * 24),
      0,
      'CLIP part',
    );
    assert.equal(maxAbs(text.subarray(item + MAX_LENGTH * 24)), 0);
    assert.equal(maxAbs(text.subarray(MAX_LENGTH * 24, item)), 0);
    await pipe.close();
  });
});
