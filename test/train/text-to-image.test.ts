/**
 * The text-to-image trainer on a tiny configuration: a random 32×32 data set, the golden tiny VAE
 * (32 px → 4×8×8 latents), a 2-layer PixArt and a 1-layer T5. Checks the latent cache against the VAE,
 * the min-SNR weights against a float64 computation, caption dropout, the timestep draws, that a few
 * steps lower the loss, that the written pipeline folder loads without warnings and its denoiser
 * computes what the training graph computes, and that a run starts from such a folder (init.pipeline)
 * with its weights, refusing one of another model, tokenizer or VAE.
 */
import assert from 'node:assert/strict';
import { cp, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

import { OptionError } from '../../src/errors.js';
import { Graph } from '../../src/graph/graph.js';
import { f16ToF32, f32ToF16 } from '../../src/io/dtypes.js';
import { SafetensorsFile, writeSafetensors, type TensorToWrite } from '../../src/io/safetensors.js';
import { AutoencoderKL } from '../../src/models/autoencoder-kl.js';
import { ParameterInputs } from '../../src/nn/weights.js';
import { dropTokens } from '../../src/train/token-dropout.js';
import { TorchGenerator } from '../../src/random/torch-generator.js';
import { DiffusionPipeline, PixArtPipeline } from '../../src/pipelines/index.js';
import type { HostTensor } from '../../src/runtime/host-tensor.js';
import { hostTensor } from '../../src/runtime/host-tensor.js';
import { AdamW } from '../../src/train/adamw.js';
import { parseTrainConfig } from '../../src/train/config.js';
import type { ImageTextDataset } from '../../src/train/data/dataset.js';
import { parsePythonJson } from '../../src/schedulers/config.js';
import { DataLoader } from '../../src/train/data/loader.js';
import { logitNormalTimesteps, uniformTimesteps } from '../../src/train/noising.js';
import { initParameters } from '../../src/train/parameters.js';
import { runTraining } from '../../src/train/run.js';
import { TrainStep } from '../../src/train/train-step.js';
import type { TextToImageTrainer } from '../../src/train/trainers/text-to-image.js';
import {
  preprocessCaption,
  textToImageForward,
  textToImageInitRules,
  textToImageTrainer,
} from '../../src/train/trainers/text-to-image.js';
import type { VelodiffWarning } from '../../src/warnings.js';
import { assertClose, assertExactlyEqual } from '../compare.js';
import { readAllTensors, testRuntime } from '../helpers.js';
import { seededUniform, testSeed } from '../random.js';

const VAE = fileURLToPath(new URL('../golden/models/vae_kl_tiny/model', import.meta.url));
const SIZE = 32;
const TEXT_LENGTH = 8;
const WORDS = ['Red', 'heart', 'grinning', 'face', 'flag', 'dog', 'pizza', 'rocket'];

/** `count` random images with two-word captions (some upper-case: prompts are lower-cased). */
function tinyDataset(random: () => number, count: number): ImageTextDataset {
  const pick = (): string => WORDS[Math.floor(random() * WORDS.length)];
  return {
    size: SIZE,
    pixels: Uint8Array.from({ length: count * SIZE * SIZE * 3 }, () => Math.floor(random() * 256)),
    items: Array.from({ length: count }, (_, i) => ({
      id: `image-${i}`,
      captions: [`${pick()} ${pick()}, noto style`, `${pick()} ${pick()}`],
      group: `image-${i}`,
    })),
    labelNames: undefined,
    split: Array.from({ length: count }, (_, i) => (i < count - 2 ? 'train' : 'validation')),
    badFiles: [],
    key: `tiny-text-to-image-${Math.floor(random() * 2 ** 32)}`,
    cacheEntry: undefined,
    fromCache: false,
  };
}

const MODEL = {
  transformer: { num_layers: 2, num_attention_heads: 2, attention_head_dim: 8, patch_size: 1 },
  textEncoder: {
    d_model: 16,
    d_kv: 8,
    num_heads: 2,
    d_ff: 32,
    num_layers: 1,
    relative_attention_num_buckets: 8,
    relative_attention_max_distance: 20,
  },
  vae: VAE,
  minSnrGamma: 5,
  maxTextLength: TEXT_LENGTH,
  captionProjectionInit: 'pixart' as const,
};

/** The training graph's forward (prediction only) on `params`, for the feeds of one batch. */
async function trainingPrediction(
  trainer: TextToImageTrainer,
  params: ReadonlyMap<string, Float32Array>,
  batch: Record<string, HostTensor>,
): Promise<HostTensor> {
  const source = ParameterInputs.fromShapes(Object.fromEntries(trainer.shapes));
  const g = new Graph('prediction');
  const { prediction } = textToImageForward(g, source, trainer.transformer, trainer.textEncoder, trainer);
  g.output('prediction', prediction);
  const feeds: Record<string, HostTensor> = {};
  for (const input of g.inputs) {
    feeds[input.name] =
      batch[input.name] ??
      hostTensor('float32', trainer.shapes.get(input.name) ?? [], params.get(input.name));
  }
  return (await (await testRuntime().compile(g)).run(feeds)).prediction;
}

describe('textToImageTrainer', () => {
  const seed = testSeed('text-to-image trainer');
  const random = seededUniform(seed);
  const dataset = tinyDataset(random, 10);
  let cacheDir: string;
  let trainer: TextToImageTrainer;

  before(async () => {
    cacheDir = await mkdtemp(join(tmpdir(), 'velodiff-t2i-'));
    trainer = await textToImageTrainer({ model: MODEL, dataset, runtime: testRuntime(), seed, cacheDir });
  });
  after(async () => {
    await rm(cacheDir, { recursive: true, force: true });
  });

  it('encodes the data set once with the VAE and reads it back from the cache', async () => {
    const { latents } = trainer;
    assert.deepEqual(latents.shape, [10, 4, 8, 8]);
    assert.equal(latents.fromCache, false);
    const vae = await AutoencoderKL.fromPretrained(VAE, { runtime: testRuntime() });
    const index = 3;
    const plane = SIZE * SIZE;
    const image = new Float32Array(3 * plane);
    for (let i = 0; i < plane; i++)
      for (let c = 0; c < 3; c++)
        image[c * plane + i] = dataset.pixels[(index * plane + i) * 3 + c] / 127.5 - 1;
    const encoding = await vae.encode(hostTensor('float32', [1, 3, SIZE, SIZE], image));
    await vae.close();
    const item = 4 * 8 * 8;
    assertClose(
      latents.mean.subarray(index * item, (index + 1) * item),
      encoding.latentMean.data as Float32Array,
      {
        atol: 1e-5,
        what: 'cached latent mean',
      },
    );
    assertClose(
      latents.std.subarray(index * item, (index + 1) * item),
      encoding.latentStd.data as Float32Array,
      {
        atol: 1e-5,
        what: 'cached latent std',
      },
    );
    const again = await textToImageTrainer({ model: MODEL, dataset, runtime: testRuntime(), seed, cacheDir });
    assert.equal(again.latents.fromCache, true);
    assert.deepEqual(again.latents.mean, latents.mean);
    assert.deepEqual(again.latents.std, latents.std);
    assert.equal((await readdir(join(cacheDir, 'latents'))).length, 1);
  });

  it('weights each timestep by min(SNR, 5)/SNR, as a float64 computation of the schedule gives', () => {
    // PixArt-α's schedule in float64: β linear in [1e-4, 0.02] over 1000 steps, ᾱ_t = ∏(1 − β).
    let alphaBar = 1;
    let crossover = -1;
    for (let t = 0; t < 1000; t++) {
      alphaBar *= 1 - (0.0001 + ((0.02 - 0.0001) * t) / 999);
      const snr = alphaBar / (1 - alphaBar);
      const expected = Math.min(snr, 5) / snr;
      // ᾱ is float32 in diffusers; near t = 0, 1 − ᾱ ≈ 1e-4 keeps only ~3 digits of it.
      assert.ok(
        Math.abs(trainer.lossWeights[t] - expected) <= 2e-3 * expected,
        `t=${t}: ${trainer.lossWeights[t]} vs ${expected}`,
      );
      if (snr <= 5 && crossover < 0) crossover = t;
    }
    assert.ok(
      crossover > 0 && trainer.lossWeights[crossover] === 1 && trainer.lossWeights[crossover - 1] < 1,
    );
    // The batch carries each sample's weight of its own timestep.
    const batch = trainer.makeBatch(new DataLoader(dataset, { batchSize: 4, seed }).next());
    const timesteps = batch.timestep.data as Float32Array;
    const weights = batch.weights.data as Float32Array;
    timesteps.forEach((t, b) => {
      assert.ok(Number.isInteger(t) && t >= 0 && t < 1000);
      assert.equal(weights[b], Math.fround(trainer.lossWeights[t]));
    });
  });

  it('v-prediction: target √ᾱ·ε − √(1 − ᾱ)·x₀ from the same draws, min(SNR, 5)/(SNR + 1) weights, the scheduler told', async () => {
    const v = await textToImageTrainer({
      model: { ...MODEL, predictionType: 'v_prediction' },
      dataset,
      runtime: testRuntime(),
      seed,
      cacheDir,
    });
    const eps = await textToImageTrainer({ model: MODEL, dataset, runtime: testRuntime(), seed, cacheDir });
    const a = eps.makeBatch(new DataLoader(dataset, { batchSize: 4, seed }).next());
    const b = v.makeBatch(new DataLoader(dataset, { batchSize: 4, seed }).next());
    assert.deepEqual(b.hidden_states.data, a.hidden_states.data, 'the same x_t');
    const xt = a.hidden_states.data as Float32Array;
    const noise = a.target.data as Float32Array;
    const per = xt.length / 4;
    const expected = new Float64Array(xt.length);
    (a.timestep.data as Float32Array).forEach((t, n) => {
      const alphaBar = eps.alphasCumprod[t];
      const snr = alphaBar / (1 - alphaBar);
      assertClose([(b.weights.data as Float32Array)[n]], [Math.min(snr, 5) / (snr + 1)], {
        rtol: 1e-6,
        atol: 0,
        what: `weight at t=${t}`,
      });
      // x₀ from x_t and ε, then v, in float64.
      for (let i = n * per; i < (n + 1) * per; i++) {
        const x0 = (xt[i] - Math.sqrt(1 - alphaBar) * noise[i]) / Math.sqrt(alphaBar);
        expected[i] = Math.sqrt(alphaBar) * noise[i] - Math.sqrt(1 - alphaBar) * x0;
      }
    });
    assertClose(b.target.data as Float32Array, expected, { rtol: 1e-4, atol: 1e-4, what: 'v target' });
    const dir = await mkdtemp(join(tmpdir(), 'velodiff-v-'));
    try {
      await v.writePipeline(dir, v.initialParameters(seed));
      const scheduler = parsePythonJson(
        await readFile(join(dir, 'scheduler', 'scheduler_config.json'), 'utf8'),
      ) as {
        prediction_type: string;
      };
      assert.equal(scheduler.prediction_type, 'v_prediction');
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('draws timesteps uniformly from rand, or logit-normally from randn, after the same posterior ε and noise', async () => {
    const density = { kind: 'logit-normal' as const, mean: random() * 2 - 1, std: 0.5 + random() };
    const logit = await textToImageTrainer({
      model: { ...MODEL, timestepSampling: density },
      dataset,
      runtime: testRuntime(),
      seed,
      cacheDir,
    });
    const state = trainer.generators.noise.getState();
    logit.generators.noise.setState(state);
    const batchSize = 8;
    const uniform = trainer.makeBatch(new DataLoader(dataset, { batchSize, seed }).next());
    const drawn = logit.makeBatch(new DataLoader(dataset, { batchSize, seed }).next());
    assert.deepEqual(drawn.target.data, uniform.target.data, 'the same noise ε');
    // Replayed in the trainer's order: posterior ε, noise, then the timesteps' draw.
    const replay = (): TorchGenerator => {
      const generator = new TorchGenerator(0);
      generator.setState(state);
      generator.randn([batchSize, 4, 8, 8]);
      generator.randn([batchSize, 4, 8, 8]);
      return generator;
    };
    assert.deepEqual(
      Array.from(uniform.timestep.data as Float32Array),
      uniformTimesteps(replay().rand([batchSize]), trainer.alphasCumprod),
    );
    assert.deepEqual(
      Array.from(drawn.timestep.data as Float32Array),
      logitNormalTimesteps(replay().randn([batchSize]), trainer.alphasCumprod, density),
    );
    (drawn.timestep.data as Float32Array).forEach((t, b) =>
      assert.equal((drawn.weights.data as Float32Array)[b], Math.fround(trainer.lossWeights[t])),
    );
  });

  it('model.tokenDropout: drops caption words with a draw made after the timesteps, the rest unchanged', async () => {
    const p = 0.3;
    const dropping = await textToImageTrainer({
      model: { ...MODEL, tokenDropout: p },
      dataset,
      runtime: testRuntime(),
      seed,
      cacheDir,
    });
    const state = trainer.generators.noise.getState();
    dropping.generators.noise.setState(state);
    const batchSize = 8;
    const plain = trainer.makeBatch(new DataLoader(dataset, { batchSize, seed }).next());
    const dropped = dropping.makeBatch(new DataLoader(dataset, { batchSize, seed }).next());
    assert.deepEqual(dropped.target.data, plain.target.data, 'the same noise ε');
    assert.deepEqual(dropped.timestep.data, plain.timestep.data, 'the same timesteps');
    const generator = new TorchGenerator(0);
    generator.setState(state);
    generator.randn([batchSize, 4, 8, 8]);
    generator.randn([batchSize, 4, 8, 8]);
    generator.rand([batchSize]);
    const rowsOf = (t: HostTensor, width: number): number[][] => {
      const values = Array.from(t.data as Iterable<number | bigint>, Number);
      return Array.from({ length: batchSize }, (_, b) => values.slice(b * width, (b + 1) * width));
    };
    const expected = dropTokens(
      {
        inputIds: rowsOf(plain.input_ids, TEXT_LENGTH),
        attentionMask: rowsOf(plain.attention_mask, TEXT_LENGTH),
      },
      generator.rand([batchSize * TEXT_LENGTH]),
      p,
    );
    assert.deepEqual(rowsOf(dropped.input_ids, TEXT_LENGTH), expected.inputIds);
    assert.deepEqual(rowsOf(dropped.attention_mask, TEXT_LENGTH), expected.attentionMask);
    const count = (t: HostTensor) => Array.from(t.data as Float32Array).reduce((a, b) => a + b, 0);
    assert.ok(count(dropped.attention_mask) < count(plain.attention_mask), 'some words were dropped');
  });

  it('replaces about 10 % of captions by "", encoded as the pipeline encodes its negative prompt', () => {
    const loader = new DataLoader(dataset, { batchSize: 8, seed, captionDropout: 0.1 });
    const empty = trainer.tokenizer.encode([''], {
      maxLength: TEXT_LENGTH,
      padding: 'max_length',
      truncation: true,
    });
    let dropped = 0;
    let total = 0;
    for (let i = 0; i < 100; i++) {
      const batch = loader.next();
      const feeds = trainer.makeBatch(batch);
      const ids = feeds.input_ids.data as BigInt64Array;
      const mask = feeds.attention_mask.data as Float32Array;
      batch.captions.forEach((caption, b) => {
        total += 1;
        const row = Array.from(ids.subarray(b * TEXT_LENGTH, (b + 1) * TEXT_LENGTH), Number);
        const rowMask = Array.from(mask.subarray(b * TEXT_LENGTH, (b + 1) * TEXT_LENGTH));
        if (caption !== '') {
          const encoded = trainer.tokenizer.encode([preprocessCaption(caption)], {
            maxLength: TEXT_LENGTH,
            padding: 'max_length',
            truncation: true,
          });
          assert.deepEqual(row, encoded.inputIds[0]);
          return;
        }
        dropped += 1;
        assert.deepEqual(row, empty.inputIds[0]);
        assert.deepEqual(rowMask, empty.attentionMask[0]);
      });
    }
    // Binomial(800, 0.1): mean 80, sd 8.5.
    assert.ok(dropped >= 50 && dropped <= 115, `${dropped} of ${total} captions dropped`);
  });

  it('starts caption_projection at N(0, 0.02) (PixArt) or N(0, 1/fan_in) as configured', () => {
    const std = (v: Float32Array): number => Math.sqrt(v.reduce((a, x) => a + x * x, 0) / v.length);
    const shapes = trainer.shapes;
    for (const init of ['pixart', 'fan-in'] as const) {
      const params = initParameters(shapes, {
        seed,
        rules: textToImageInitRules(shapes, trainer.textEncoder, init),
      });
      for (const i of [1, 2]) {
        const name = `transformer.caption_projection.linear_${i}.weight`;
        const [, fanIn] = shapes.get(name) as number[];
        const values = params.get(name) as Float32Array;
        const expected = init === 'pixart' ? 0.02 : fanIn ** -0.5;
        // A sample std of n normal draws is within 5/sqrt(2n) of σ (relative) all but never.
        const tolerance = 5 / Math.sqrt(2 * values.length);
        assert.ok(
          Math.abs(std(values) / expected - 1) < tolerance,
          `${init} ${name}: std ${std(values)}, expected ${expected} (±${tolerance} relative)`,
        );
        assert.ok(values.every(Number.isFinite));
      }
    }
  });

  it('lowers the loss in a few AdamW steps on one batch', async () => {
    const step = await TrainStep.compile(testRuntime(), trainer.stepSpec(4));
    const params = trainer.initialParameters(seed);
    // PixArt's init: zero final projection and cross-attention output, xavier-uniform elsewhere.
    for (const name of [
      'transformer.proj_out.weight',
      'transformer.transformer_blocks.1.attn2.to_out.0.weight',
    ])
      assert.ok(
        params.get(name)?.every((v) => v === 0),
        `${name} starts at zero`,
      );
    const toQ = params.get('transformer.transformer_blocks.0.attn1.to_q.weight') as Float32Array;
    const bound = Math.sqrt(6 / (16 + 16));
    const largest = toQ.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
    assert.ok(largest <= bound && largest > 0.8 * bound, `to_q within the xavier bound ${bound}: ${largest}`);
    const trainable = new Map([...params].filter(([name]) => trainer.stepSpec(4).trainable.includes(name)));
    const optimizer = new AdamW([...trainable.keys()], { lr: 3e-3, weightDecay: 0 });
    const batch = trainer.makeBatch(new DataLoader(dataset, { batchSize: 4, seed }).next());
    const losses: number[] = [];
    for (let i = 0; i < 15; i++) {
      const result = await step.run(params, batch);
      losses.push(result.loss);
      optimizer.step(trainable, result.grads);
    }
    assert.ok(losses.every(Number.isFinite), losses.join(', '));
    assert.ok(
      losses[losses.length - 1] < 0.7 * losses[0],
      `losses ${losses.map((l) => l.toFixed(4)).join(', ')}`,
    );
  });

  for (const dtype of ['float32', 'float16'] as const) {
    it(`writes a ${dtype} PixArtAlphaPipeline folder that loads with no warning and denoises as the training graph`, async () => {
      const dir = join(cacheDir, `pipeline-${dtype}`);
      // PyTorch's default init: no zero-initialised output layer, so the prediction is not trivially 0.
      const params = initParameters(trainer.shapes, { seed: (seed ^ 1) >>> 0 });
      await trainer.writePipeline(dir, params, { dtype });
      assert.deepEqual((await readdir(dir)).sort(), [
        'model_index.json',
        'scheduler',
        'text_encoder',
        'tokenizer',
        'transformer',
        'vae',
      ]);
      const index = JSON.parse(await readFile(join(dir, 'model_index.json'), 'utf8'));
      assert.equal(index._class_name, 'PixArtAlphaPipeline');
      assert.deepEqual(index.tokenizer, ['transformers', 'T5TokenizerFast']);
      const stored = (
        await SafetensorsFile.open(join(dir, 'transformer', 'diffusion_pytorch_model.safetensors'))
      ).info('proj_out.weight').dtype;
      assert.equal(stored, dtype === 'float32' ? 'F32' : 'F16');
      const warnings: VelodiffWarning[] = [];
      const pipe = await PixArtPipeline.fromPretrained(dir, {
        runtime: testRuntime(),
        onWarning: (w) => warnings.push(w),
      });
      try {
        assert.deepEqual(
          warnings.map((w) => w.message),
          [],
        );
        const out = await pipe.run({
          prompt: 'red heart',
          numInferenceSteps: 2,
          guidanceScale: 4.5,
          height: SIZE,
          width: SIZE,
          useResolutionBinning: false,
          maxSequenceLength: TEXT_LENGTH,
          seed,
        });
        assert.deepEqual(out.images?.shape, [1, 3, SIZE, SIZE]);

        const loaded =
          dtype === 'float16' ? new Map([...params].map(([n, v]) => [n, f16ToF32(f32ToF16(v))])) : params;
        const loaderBatch = new DataLoader(dataset, { batchSize: 3, seed }).next();
        const batch = trainer.makeBatch(loaderBatch);
        const expected = await trainingPrediction(trainer, loaded, batch);
        const prompts = loaderBatch.captions.map(preprocessCaption);
        const text = await pipe.promptEncoder!.encode(prompts, TEXT_LENGTH);
        assert.deepEqual(text.mask.data, batch.attention_mask.data);
        const { sample } = await pipe.transformer.forward({
          hidden_states: batch.hidden_states,
          timestep: batch.timestep,
          encoder_hidden_states: text.embeds,
          encoder_attention_mask: text.mask,
        });
        assertClose(sample.data as Float32Array, expected.data as Float32Array, {
          atol: 1e-5,
          rtol: 1e-4,
          what: `denoiser of the ${dtype} folder vs the training forward`,
        });
      } finally {
        await pipe.close();
      }
    });
  }

  it('fp16 folders are half the size of fp32 ones', async () => {
    const bytes = async (dir: string): Promise<number> => {
      let total = 0;
      for (const part of ['transformer', 'text_encoder', 'vae']) {
        for (const file of await readdir(join(dir, part))) total += (await stat(join(dir, part, file))).size;
      }
      return total;
    };
    const ratio =
      (await bytes(join(cacheDir, 'pipeline-float16'))) / (await bytes(join(cacheDir, 'pipeline-float32')));
    assert.ok(ratio > 0.45 && ratio < 0.55, `fp16/fp32 size ${ratio}`);
  });

  it('renders a grid of fixed prompts and seeds, each cell the image of a batch-1 run with its seed', async () => {
    const params = initParameters(trainer.shapes, { seed: (seed ^ 2) >>> 0 });
    const options = { prompts: ['red heart', 'dog face'], seeds: [3, 4], steps: 2, guidance: 4.5 };
    const grid = await trainer.sampleGrid(params, 7);
    assert.equal(grid.rows.length, 2);
    const { images } = await trainer.renderSamples(params, options);
    assert.deepEqual(
      images.map((row) => row.map((image) => image.length)),
      [
        [SIZE * SIZE * 3, SIZE * SIZE * 3],
        [SIZE * SIZE * 3, SIZE * SIZE * 3],
      ],
    );
    const dir = join(cacheDir, 'pipeline-grid');
    await trainer.writePipeline(dir, params, { dtype: 'float32' });
    const pipe = await DiffusionPipeline.fromPretrained(dir, { runtime: testRuntime() });
    try {
      const single = await pipe.run({
        prompt: 'dog face',
        seed: 3,
        numInferenceSteps: 2,
        guidanceScale: 4.5,
        height: SIZE,
        width: SIZE,
        useResolutionBinning: false,
        maxSequenceLength: TEXT_LENGTH,
      });
      const data = single.images?.data as Float32Array;
      const rgb = Uint8Array.from({ length: SIZE * SIZE * 3 }, (_, i) => {
        const [pixel, channel] = [Math.floor(i / 3), i % 3];
        return Math.round(Math.fround(data[channel * SIZE * SIZE + pixel] * 255));
      });
      const cell = images[1][0];
      const worst = cell.reduce((m, v, i) => Math.max(m, Math.abs(v - rgb[i])), 0);
      assert.ok(worst <= 1, `cell (dog face, seed 3) differs from its batch-1 run by ${worst} levels`);
    } finally {
      await pipe.close();
    }
  });

  describe('init.pipeline', () => {
    /** A float16 folder (as the shipped model is) of known weights: PyTorch's init, not the trainer's. */
    let folder: string;
    let known: Map<string, Float32Array>;
    before(async () => {
      folder = join(cacheDir, 'init-pipeline');
      known = initParameters(trainer.shapes, { seed: (seed ^ 3) >>> 0 });
      await trainer.writePipeline(folder, known);
    });

    const runConfig = (output: string, init: Record<string, unknown>) =>
      parseTrainConfig(
        {
          kind: 'text-to-image',
          output,
          seed,
          steps: 1,
          batchSize: 2,
          // lr 0 and no weight decay: the first checkpoint holds the weights the run started from.
          optimizer: { lr: 0, weightDecay: 0 },
          checkpoint: { every: 1, keep: 1 },
          sample: { every: 0, prompts: ['red heart'], seeds: [0], steps: 1 },
          data: { size: SIZE, cacheDir },
          model: MODEL,
          init,
        },
        { path: join(cacheDir, 'init.json') },
      );

    /** A copy of the folder, changed by `edit`. */
    const variant = async (name: string, edit: (dir: string) => Promise<void>): Promise<string> => {
      const dir = join(cacheDir, `init-${name}`);
      await cp(folder, dir, { recursive: true });
      await edit(dir);
      return dir;
    };
    const editJson = async (path: string, edit: (json: Record<string, unknown>) => void): Promise<void> => {
      const json = JSON.parse(await readFile(path, 'utf8')) as Record<string, unknown>;
      edit(json);
      await writeFile(path, JSON.stringify(json));
    };
    const editTensors = async (
      path: string,
      edit: (tensors: Record<string, TensorToWrite>) => void,
    ): Promise<void> => {
      const tensors: Record<string, TensorToWrite> = {};
      for (const [name, tensor] of Object.entries(await readAllTensors(path)))
        tensors[name] = { dtype: 'F32', shape: [...tensor.shape], data: tensor.data as Float32Array };
      edit(tensors);
      await writeSafetensors(path, tensors);
    };

    it('starts the run from the folder’s weights, widened from float16, not from its own initialisation', async () => {
      const output = join(cacheDir, 'init-run');
      const config = runConfig(output, { pipeline: folder });
      const result = await runTraining({ config, runtime: testRuntime(), dataset, trainer });
      assert.equal(result.step, 1);
      const started = await readAllTensors(
        join(output, 'checkpoint-1', 'model', 'diffusion_pytorch_model.safetensors'),
      );
      assert.deepEqual(Object.keys(started).sort(), [...trainer.shapes.keys()].sort());
      for (const [name, values] of known)
        assertExactlyEqual(started[name].data as Float32Array, f16ToF32(f32ToF16(values)), name);
      const own = trainer.initialParameters(config.seed);
      assert.ok(
        [...own].some(([name, values]) =>
          values.some((v, i) => v !== (started[name].data as Float32Array)[i]),
        ),
        'a run without init starts elsewhere',
      );
      const saved = JSON.parse(await readFile(join(output, 'config.json'), 'utf8')) as Record<
        string,
        unknown
      >;
      assert.deepEqual(saved.init, { pipeline: folder });
    });

    it('refuses a folder of another model configuration, naming the file and the key', async () => {
      const dir = await variant('config', (d) =>
        editJson(join(d, 'transformer', 'config.json'), (json) => {
          json.num_layers = 3;
        }),
      );
      await assert.rejects(
        runTraining({
          config: runConfig(join(cacheDir, 'init-config-run'), { pipeline: dir }),
          runtime: testRuntime(),
          dataset,
          trainer,
        }),
        (error: unknown) => {
          assert.ok(error instanceof OptionError && error.code === 'INIT_PIPELINE', String(error));
          assert.match(
            error.message,
            /^train: init\.pipeline .*init-config cannot be used: .*init-config\/transformer\/config\.json: not this run's model \(num_layers: this run 2, the folder 3\)/,
          );
          return true;
        },
      );
    });

    it('refuses a missing or extra tensor, a wrong shape and non-finite values', async () => {
      const encoder = await variant('tensors', (d) =>
        editTensors(join(d, 'text_encoder', 'model.safetensors'), (tensors) => {
          // What a transformers-saved T5EncoderModel also holds; the trainer's writer leaves it out.
          tensors['encoder.embed_tokens.weight'] = tensors['shared.weight'];
          delete tensors['encoder.final_layer_norm.weight'];
        }),
      );
      await assert.rejects(
        trainer.readPipeline(encoder),
        /init-tensors\/text_encoder\/model\.safetensors: not this run's parameters; missing: 'encoder\.final_layer_norm\.weight'; not in this run's model: 'encoder\.embed_tokens\.weight'/,
      );
      const shape = await variant('shape', (d) =>
        editTensors(join(d, 'transformer', 'diffusion_pytorch_model.safetensors'), (tensors) => {
          tensors['proj_out.bias'] = { dtype: 'F32', shape: [5], data: new Float32Array(5) };
        }),
      );
      await assert.rejects(trainer.readPipeline(shape), /'proj_out\.bias' \[5\] \(this run: \[4\]\)/);
      const nan = await variant('nan', (d) =>
        editTensors(join(d, 'transformer', 'diffusion_pytorch_model.safetensors'), (tensors) => {
          (tensors['proj_out.weight'].data as Float32Array)[3] = Number.NaN;
        }),
      );
      await assert.rejects(
        trainer.readPipeline(nan),
        /tensor 'proj_out\.weight' holds 1 non-finite values \(index 3: NaN\); a run cannot start from them/,
      );
    });

    it('refuses another tokenizer (token ids would mean other words) and another VAE', async () => {
      const tokenizer = await variant('tokenizer', (d) =>
        editJson(join(d, 'tokenizer', 'tokenizer.json'), (json) => {
          const vocab = (json.model as { vocab: unknown[] }).vocab;
          [vocab[5], vocab[6]] = [vocab[6], vocab[5]];
        }),
      );
      const pieces = (trainer.tokenizerFiles['tokenizer.json'].model.vocab ?? []).length;
      await assert.rejects(
        trainer.readPipeline(tokenizer),
        new RegExp(
          `tokenizer\\.json: not the tokenizer this run builds from its training captions, so the folder's token ` +
            `ids would mean other words \\(vocabulary: this run's ${pieces} pieces, the folder's ${pieces}; the ` +
            'first difference is id 5: ',
        ),
      );
      const vae = await variant('vae', (d) =>
        editJson(join(d, 'vae', 'config.json'), (json) => {
          json.scaling_factor = 0.5;
        }),
      );
      await assert.rejects(
        trainer.readPipeline(vae),
        /vae\/config\.json: not this run's VAE .*\(scaling_factor: model\.vae [0-9.]+, the folder 0\.5\)\. The denoiser learnt this VAE's latents: set model\.vae to /,
      );
    });
  });
});
