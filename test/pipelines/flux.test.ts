/**
 * FluxPipeline against diffusers 0.40 (golden case pipeline_flux_flowmatch: a tiny FLUX.1-dev-style
 * transformer with guidance embedding, a 2-level VAE with shift_factor, FlowMatch with dynamic
 * shifting, 4 steps), and the parts the case does not record — image-to-image, true CFG, seeded
 * latents — against formulas written out here in float64 or against the golden run itself.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

import { OptionError } from '../../src/errors.js';
import { FluxPipeline, packLatents, unpackLatents } from '../../src/pipelines/flux.js';
import { TorchGenerator } from '../../src/random/torch-generator.js';
import type { HostTensor } from '../../src/runtime/host-tensor.js';
import { hostTensor } from '../../src/runtime/host-tensor.js';
import { Runtime } from '../../src/runtime/runtime.js';
import { assertMaxAbsError, maxAbs } from '../compare.js';
import { tinyFluxPipeline } from '../fixtures/tiny-flux-pipeline.js';
import { describeCheck, GoldenFixture, type GoldenMeta } from '../golden-fixture.js';
import { randomTensor, readAllTensors } from '../helpers.js';
import { seededUniform, testSeed } from '../random.js';

const CASE = fileURLToPath(new URL('../golden/pipelines/pipeline_flux_flowmatch/', import.meta.url));
const runtime = new Runtime({ worker: false, threads: 1 });

interface PipelineMeta extends GoldenMeta {
  readonly fp32_vs_fp64_per_step_max_abs: readonly number[];
}

/** diffusers' _pack_latents written as its view/permute: packed[b, i·W/2 + j, 4c + 2dy + dx] = x[b, c, 2i + dy, 2j + dx]. */
function packReference(x: HostTensor): Float64Array {
  const [batch, channels, height, width] = x.shape;
  const data = x.data as Float32Array;
  const out = new Float64Array(data.length);
  const columns = width / 2;
  const tokens = (height / 2) * columns;
  for (let b = 0; b < batch; b++)
    for (let c = 0; c < channels; c++)
      for (let y = 0; y < height; y++)
        for (let x0 = 0; x0 < width; x0++) {
          const token = Math.floor(y / 2) * columns + Math.floor(x0 / 2);
          const feature = 4 * c + 2 * (y % 2) + (x0 % 2);
          out[(b * tokens + token) * 4 * channels + feature] =
            data[((b * channels + c) * height + y) * width + x0];
        }
  return out;
}

/** The fixture's σ schedule in float64: linspace(1, 1/4, 4) time-shifted by μ = calculate_shift(64) (exponential). */
function fixtureSigmas(): number[] {
  const mu = 64 * ((1.15 - 0.5) / (4096 - 256)) + (0.5 - ((1.15 - 0.5) / (4096 - 256)) * 256);
  return [1, 0.75, 0.5, 0.25].map((s) => Math.exp(mu) / (Math.exp(mu) + (1 / s - 1)));
}

after(() => runtime.dispose());

describe('FluxPipeline vs diffusers (pipeline_flux_flowmatch)', () => {
  let pipe: FluxPipeline;
  let inputs: Record<string, HostTensor>;
  let fixture: GoldenFixture<PipelineMeta>;
  before(async () => {
    pipe = await FluxPipeline.fromPretrained(`${CASE}pipeline`, { runtime });
    inputs = await readAllTensors(`${CASE}inputs.safetensors`);
    fixture = await GoldenFixture.load<PipelineMeta>(CASE);
  });
  after(() => pipe.close());

  const embeds = (): { promptEmbeds: HostTensor; pooledPromptEmbeds: HostTensor } => ({
    promptEmbeds: inputs.prompt_embeds,
    pooledPromptEmbeds: inputs.pooled_prompt_embeds,
  });

  it('reproduces timesteps, per-step latents, final (packed) latents and the image', async (t) => {
    const golden = await readAllTensors(`${CASE}outputs.safetensors`);
    const fed: Record<string, HostTensor>[] = [];
    const step = pipe.transformer.step.bind(pipe.transformer);
    pipe.transformer.step = async (feeds, options) => {
      fed.push(feeds);
      return step(feeds, options);
    };
    const perStep: HostTensor[] = [];
    const progress: number[] = [];
    try {
      const out = await pipe.run({
        ...embeds(),
        latents: inputs.latents,
        numInferenceSteps: 4,
        guidanceScale: 3.5,
        height: 32,
        width: 32,
        callbackOnStepEnd: ({ latents }) => void perStep.push(latents),
        onProgress: ({ step }) => void progress.push(step),
      });
      // FlowMatch timesteps are float32 in diffusers; ours are the same float32 values.
      assert.deepEqual(out.timesteps, [...(golden.timesteps.data as Float32Array)]);
      assert.deepEqual(progress, [1, 2, 3, 4]);
      // What the transformer was fed (meta.json notes): t / 1000, guidance 3.5, txt_ids zeros [7, 3],
      // img_ids (0, row, col) on the 8×8 packed grid.
      assert.equal(fed.length, 4);
      fed.forEach((feeds, i) => {
        assert.deepEqual([...(feeds.timestep.data as Float32Array)], [Math.fround(out.timesteps[i] / 1000)]);
        assert.deepEqual([...(feeds.guidance.data as Float32Array)], [3.5]);
      });
      assert.deepEqual(fed[0].txt_ids.shape, [7, 3]);
      assert.ok((fed[0].txt_ids.data as Float32Array).every((v) => v === 0));
      const ids = fed[0].img_ids.data as Float32Array;
      assert.deepEqual(fed[0].img_ids.shape, [64, 3]);
      assert.deepEqual([...ids.subarray(3 * 11, 3 * 12)], [0, 1, 3]); // token 11 = row 1, column 3

      // 10× torch's fp32 noise per step (1.5e-7 … 4.6e-7 of values up to 4.5), against fp32 and fp64.
      const perStepNoise = fixture.meta.fp32_vs_fp64_per_step_max_abs;
      assert.equal(perStep.length, 4);
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

      // outputType 'latent' returns the packed latents, as diffusers does, and decodes nothing.
      const latentOnly = await pipe.run({
        ...embeds(),
        latents: inputs.latents,
        numInferenceSteps: 4,
        height: 32,
        width: 32,
        outputType: 'latent',
      });
      assert.equal(latentOnly.images, undefined);
      assert.deepEqual(latentOnly.latents.data, out.latents.data);
    } finally {
      pipe.transformer.step = step;
    }
  });

  it('packs and unpacks latents as diffusers _pack_latents / _unpack_latents', () => {
    const x = randomTensor([2, 3, 4, 6], seededUniform(testSeed('flux pack')));
    const packed = packLatents(x);
    assert.deepEqual(packed.shape, [2, 6, 12]);
    assert.deepEqual([...(packed.data as Float32Array)], [...packReference(x)]);
    const back = unpackLatents(packed, 4, 6);
    assert.deepEqual(back.shape, x.shape);
    assert.deepEqual(back.data, x.data);
  });

  it('draws seeded latents unpacked [B, C, H/f, W/f] and packs them, as diffusers prepare_latents', async () => {
    const seed = 1234;
    const fromSeed = await pipe.run({
      ...embeds(),
      seed,
      numInferenceSteps: 1,
      height: 16,
      width: 24,
      outputType: 'latent',
    });
    const noise = new TorchGenerator(seed).randn([1, 4, 8, 12]);
    const latents = hostTensor(
      'float32',
      [1, 24, 16],
      Float32Array.from(packReference(hostTensor('float32', [1, 4, 8, 12], noise))),
    );
    const given = await pipe.run({
      ...embeds(),
      latents,
      numInferenceSteps: 1,
      height: 16,
      width: 24,
      outputType: 'latent',
    });
    assert.deepEqual(fromSeed.latents.data, given.latents.data);
  });

  it('image-to-image with strength 1 from the golden noise reproduces the golden run', async (t) => {
    // scale_noise at σ = 1 is the noise itself, so any image (here latents) gives the text-to-image run.
    const image = randomTensor([1, 4, 16, 16], seededUniform(testSeed('flux img2img latents')));
    const noise = unpackLatents(inputs.latents, 16, 16);
    const out = await pipe.run({ ...embeds(), image, noise, strength: 1, numInferenceSteps: 4 });
    const golden = await readAllTensors(`${CASE}outputs.safetensors`);
    assert.deepEqual(out.timesteps, [...(golden.timesteps.data as Float32Array)]);
    t.diagnostic(describeCheck(fixture.check('final_latents', out.latents.data as Float32Array)));
    assert.ok(out.images);
    t.diagnostic(describeCheck(fixture.check('image', out.images.data as Float32Array)));
  });

  it('image-to-image runs the schedule from int(steps − steps · strength), from scale_noise of the VAE sample', async (t) => {
    const golden = await readAllTensors(`${CASE}outputs.safetensors`);
    const goldenTimesteps = [...(golden.timesteps.data as Float32Array)];
    // From golden per_step_latents[1] (after step 2 of 4) with strength 0.5 the last two steps are
    // the golden run's: the schedule, its begin index and the step index all agree with diffusers.
    const perStep = golden.per_step_latents;
    const item = perStep.data.length / 4;
    const afterStep2 = hostTensor(
      'float32',
      [1, 64, 16],
      (perStep.data as Float32Array).slice(item, 2 * item),
    );
    const rgb = randomTensor([1, 3, 32, 32], seededUniform(testSeed('flux img2img image')), 0, 1);
    const resumed = await pipe.run({
      ...embeds(),
      image: rgb,
      latents: afterStep2,
      strength: 0.5,
      numInferenceSteps: 4,
    });
    assert.deepEqual(resumed.timesteps, goldenTimesteps.slice(2));
    t.diagnostic(describeCheck(fixture.check('final_latents', resumed.latents.data as Float32Array)));
    // strength 0.6: int(4 − 2.4) = 1, so three steps run (diffusers' float init_timestep).
    const fed: HostTensor[] = [];
    const step = pipe.transformer.step.bind(pipe.transformer);
    pipe.transformer.step = async (feeds, options) => {
      fed.push(feeds.hidden_states);
      return step(feeds, options);
    };
    try {
      const out = await pipe.run({ ...embeds(), image: rgb, seed: 5, numInferenceSteps: 4 });
      assert.deepEqual(out.timesteps, goldenTimesteps.slice(1));
      assert.equal(fed.length, 3);
      // The start: VAE posterior sample ((m + s·ε − shift) · scale), then σ·noise + (1 − σ)·x0 at σ of step 1.
      const generator = new TorchGenerator(5);
      const posterior = await pipe.vae!.encode(
        hostTensor(
          'float32',
          rgb.shape,
          (rgb.data as Float32Array).map((v) => 2 * v - 1),
        ),
      );
      const shape = posterior.latentMean.shape;
      const eps = generator.randn(shape);
      const noise = generator.randn(shape);
      const sigma = fixtureSigmas()[1];
      const { scalingFactor, shiftFactor } = pipe.vae!.config;
      const mean = posterior.latentMean.data as Float32Array;
      const std = posterior.latentStd.data as Float32Array;
      const start = Float32Array.from(mean, (m, i) => {
        const x0 = (m + std[i] * eps[i] - (shiftFactor ?? 0)) * scalingFactor;
        return sigma * noise[i] + (1 - sigma) * x0;
      });
      const expected = packReference(hostTensor('float32', shape, start));
      const measured = assertMaxAbsError(
        fed[0].data as Float32Array,
        expected,
        1e-5 * Math.max(1, maxAbs(expected)),
        'start latents',
      );
      t.diagnostic(`FLUX img2img start latents vs float64 formula: ${measured.maxAbsError.toExponential(2)}`);
    } finally {
      pipe.transformer.step = step;
    }
  });

  it('true CFG (trueCfgScale > 1 with a negative) guides the velocity: negative + s · (positive − negative)', async () => {
    // One Euler step is linear in the velocity, so the guided step equals the same combination of
    // the steps taken with each conditioning alone.
    const negativePromptEmbeds = randomTensor([1, 7, 24], seededUniform(testSeed('flux negative embeds')));
    const negativePooledPromptEmbeds = randomTensor([1, 20], seededUniform(testSeed('flux negative pooled')));
    const common = {
      latents: inputs.latents,
      numInferenceSteps: 1,
      height: 32,
      width: 32,
      outputType: 'latent' as const,
    };
    const positive = await pipe.run({ ...embeds(), ...common });
    const negative = await pipe.run({
      promptEmbeds: negativePromptEmbeds,
      pooledPromptEmbeds: negativePooledPromptEmbeds,
      ...common,
    });
    const scale = 2.5;
    const guided = await pipe.run({
      ...embeds(),
      negativePromptEmbeds,
      negativePooledPromptEmbeds,
      trueCfgScale: scale,
      ...common,
    });
    const p = positive.latents.data as Float32Array;
    const n = negative.latents.data as Float32Array;
    const expected = Array.from(n, (v, i) => v + scale * (p[i] - v));
    assertMaxAbsError(
      guided.latents.data as Float32Array,
      expected,
      1e-5 * Math.max(1, maxAbs(expected)),
      'true CFG',
    );
    // Without a negative, trueCfgScale is off (diffusers' has_neg_prompt).
    const unguided = await pipe.run({ ...embeds(), trueCfgScale: scale, ...common });
    assert.deepEqual(unguided.latents.data, positive.latents.data);
  });

  it('gives clear errors for missing pooled embeddings, sizes, prompts without encoders and latents', async () => {
    const base = { numInferenceSteps: 1, height: 32, width: 32, outputType: 'latent' as const };
    await assert.rejects(
      pipe.run({ promptEmbeds: inputs.prompt_embeds, ...base }),
      (e: unknown) =>
        e instanceof OptionError && /pooledPromptEmbeds must be given with promptEmbeds/.test(e.message),
    );
    await assert.rejects(
      pipe.run({ ...embeds(), ...base, negativePromptEmbeds: inputs.prompt_embeds, trueCfgScale: 2 }),
      /negativePooledPromptEmbeds must be given with negativePromptEmbeds/,
    );
    await assert.rejects(
      pipe.run({ ...embeds(), ...base, height: 30 }),
      (e: unknown) =>
        e instanceof OptionError &&
        /height 30 must be a multiple of 4 \(VAE factor 2 × 2 for the 2×2 latent patches\); try 32/.test(
          e.message,
        ),
    );
    await assert.rejects(
      pipe.run({ prompt: 'a cat', ...base }),
      (e: unknown) =>
        e instanceof OptionError &&
        /no text_encoder \(CLIP\) and text_encoder_2 \(T5\) with its tokenizer .*pass promptEmbeds and pooledPromptEmbeds/.test(
          e.message,
        ),
    );
    await assert.rejects(
      pipe.run({ ...embeds(), ...base, latents: unpackLatents(inputs.latents, 16, 16) }),
      (e: unknown) =>
        e instanceof OptionError &&
        /latents: expected packed shape \[1, 64, 16\] .*got \[1, 4, 16, 16\] \(unpacked latents: pack them with packLatents\)/.test(
          e.message,
        ),
    );
    await assert.rejects(
      pipe.run({
        ...embeds(),
        ...base,
        pooledPromptEmbeds: hostTensor('float32', [1, 21], new Float32Array(21)),
      }),
      /pooledPromptEmbeds must have shape \[1, 20\], got \[1, 21\]/,
    );
    await assert.rejects(
      pipe.run({
        ...embeds(),
        ...base,
        promptEmbeds: hostTensor('float32', [1, 7, 25], new Float32Array(175)),
      }),
      /promptEmbeds must have shape \[B, L, 24\]/,
    );
    await assert.rejects(pipe.run({ ...embeds(), ...base, maxSequenceLength: 513 }), /at most 512/);
    await assert.rejects(pipe.run({ ...embeds(), ...base, strength: 0.5 }), /give an image too/);
    const controller = new AbortController();
    controller.abort();
    await assert.rejects(pipe.run({ ...embeds(), ...base, signal: controller.signal }), {
      name: 'AbortError',
    });
  });
});

describe('FluxPipeline prompts (tiny CLIP + T5 folder)', () => {
  it('feeds CLIP pooler_output of prompt and T5 last_hidden_state of prompt2, both repeated per image', async () => {
    const pipe = await FluxPipeline.fromPretrained(await tinyFluxPipeline(), { runtime });
    const inputs = await readAllTensors(`${CASE}inputs.safetensors`);
    const fed: Record<string, HostTensor>[] = [];
    const step = pipe.transformer.step.bind(pipe.transformer);
    pipe.transformer.step = async (feeds, options) => {
      fed.push(feeds);
      return step(feeds, options);
    };
    const resolveAcceleration = pipe.transformer.resolveAcceleration.bind(pipe.transformer);
    const ids = (tokens: number[][]): HostTensor =>
      hostTensor(
        'int64',
        [tokens.length, tokens[0].length],
        BigInt64Array.from(tokens.flat(), (v) => BigInt(v)),
      );
    const clip = pipe.clipEncoder!;
    const t5 = pipe.t5Encoder!;
    // The encoders run by hand: CLIP padded to its model_max_length, T5 to max_sequence_length, no masks.
    const pooled = async (text: string): Promise<Float32Array> => {
      const tokens = clip.tokenizer.encode([text], {
        maxLength: clip.maxLength,
        padding: 'max_length',
        truncation: true,
      }).inputIds;
      return (await clip.textEncoder.forward({ input_ids: ids(tokens) })).pooler_output.data as Float32Array;
    };
    const sequence = async (text: string, length: number): Promise<Float32Array> => {
      const tokens = t5.tokenizer.encode([text], {
        maxLength: length,
        padding: 'max_length',
        truncation: true,
      }).inputIds;
      return (await t5.textEncoder.forward({ input_ids: ids(tokens) })).last_hidden_state
        .data as Float32Array;
    };
    const common = { numInferenceSteps: 1, height: 32, width: 32, outputType: 'latent' as const };
    try {
      await pipe.run({
        prompt: 'a red heart',
        prompt2: 'a blue star',
        maxSequenceLength: 16,
        latents: inputs.latents,
        ...common,
      });
      assert.deepEqual(fed[0].encoder_hidden_states.shape, [1, 16, 24]);
      assert.deepEqual(fed[0].txt_ids.shape, [16, 3]);
      assert.deepEqual(fed[0].pooled_projections.data, await pooled('a red heart'));
      assert.deepEqual(fed[0].encoder_hidden_states.data, await sequence('a blue star', 16));

      // Default max_sequence_length 512; prompt2 defaults to prompt.
      fed.length = 0;
      await pipe.run({ prompt: 'a red heart', latents: inputs.latents, ...common });
      assert.deepEqual(fed[0].encoder_hidden_states.shape, [1, 512, 24]);
      assert.deepEqual(fed[0].encoder_hidden_states.data, await sequence('a red heart', 512));

      // CLEAR's text_length 512 (methods/clear_linfusion.md §1.2) is that default: the prompt is padded
      // to 512 tokens all the same. The option is resolved once per run, not once per step.
      fed.length = 0;
      let resolutions = 0;
      pipe.transformer.resolveAcceleration = async (option) => {
        resolutions++;
        return resolveAcceleration(option);
      };
      await pipe.run({
        prompt: 'a red heart',
        latents: inputs.latents,
        attention: { kind: 'clear', radius: 1 },
        ...common,
        numInferenceSteps: 2,
      });
      assert.equal(resolutions, 1);
      assert.equal(fed.length, 2);
      assert.deepEqual(fed[0].encoder_hidden_states.shape, [1, 512, 24]);
      pipe.transformer.resolveAcceleration = resolveAcceleration;

      // True CFG with a negative prompt: [negative; positive] in one call, each repeated per image.
      fed.length = 0;
      await pipe.run({
        prompt: 'a red heart',
        negativePrompt: 'grey',
        trueCfgScale: 3,
        numImagesPerPrompt: 2,
        maxSequenceLength: 16,
        seed: 3,
        ...common,
      });
      assert.deepEqual(fed[0].hidden_states.shape, [4, 64, 16]);
      const [negative, positive] = [await pooled('grey'), await pooled('a red heart')];
      const fedPooled = fed[0].pooled_projections.data as Float32Array;
      assert.deepEqual(fedPooled, Float32Array.from([...negative, ...negative, ...positive, ...positive]));

      // Text lengths that differ (given embeddings, an encoded negative prompt): one call per side,
      // as diffusers makes them, and the same guidance.
      const promptEmbeds = randomTensor([1, 7, 24], seededUniform(testSeed('flux tiny prompt embeds')));
      const pooledPromptEmbeds = randomTensor([1, 20], seededUniform(testSeed('flux tiny pooled')));
      const start = { latents: inputs.latents, maxSequenceLength: 16, ...common };
      fed.length = 0;
      const guided = await pipe.run({
        promptEmbeds,
        pooledPromptEmbeds,
        negativePrompt: 'grey',
        trueCfgScale: 2,
        ...start,
      });
      assert.deepEqual(
        fed.map((feeds) => feeds.encoder_hidden_states.shape),
        [
          [1, 16, 24],
          [1, 7, 24],
        ],
      );
      const p = (await pipe.run({ promptEmbeds, pooledPromptEmbeds, ...start })).latents.data as Float32Array;
      const n = (await pipe.run({ prompt: 'grey', ...start })).latents.data as Float32Array;
      const expected = Array.from(n, (v, i) => v + 2 * (p[i] - v));
      assertMaxAbsError(
        guided.latents.data as Float32Array,
        expected,
        1e-5 * Math.max(1, maxAbs(expected)),
        'true CFG, two calls',
      );
    } finally {
      pipe.transformer.step = step;
      pipe.transformer.resolveAcceleration = resolveAcceleration;
      await pipe.close();
    }
  });
});
