/**
 * The teacher's own samples for distillation, on the tiny PixArt pipeline: each equals the latent a
 * one-prompt `run` with that sample's seed gives (batching and sharding change nothing); a stopped
 * run continues from its finished shards; other settings in the same folder, and bad options, are
 * errors that say what differs.
 */
import assert from 'node:assert/strict';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { PixArtPipeline } from '../../src/pipelines/pixart.js';
import { TorchGenerator } from '../../src/random/torch-generator.js';
import { hostTensor } from '../../src/runtime/host-tensor.js';
import { teacherSamples } from '../../src/train/distill/teacher-samples.js';
import { PreparationStopped } from '../../src/train/stop-signal.js';
import { assertClose } from '../compare.js';
import { tinyPixArtPipeline } from '../fixtures/tiny-pixart-pipeline.js';
import { testRuntime } from '../helpers.js';

const PROMPTS = ['red heart', 'dog face', 'a rocket', 'pizza slice', 'flag'];
const SETTINGS = { steps: 3, guidance: 4.5, seed: 11, maxSequenceLength: 8 };

let pipeline: PixArtPipeline;
let root: string;

before(async () => {
  pipeline = await PixArtPipeline.fromPretrained(await tinyPixArtPipeline(), { runtime: testRuntime() });
  root = await mkdtemp(join(tmpdir(), 'velodiff-teacher-samples-'));
});
after(async () => {
  await pipeline.close();
  await rm(root, { recursive: true, force: true });
});

describe('teacher samples', () => {
  it('equal one-prompt runs with each sample seed, across batches and shards; a stopped run continues', async () => {
    const dir = join(root, 'a');
    const options = { pipeline, prompts: PROMPTS, dir, ...SETTINGS, batchSize: 2, shardSize: 3 };
    const samples = await teacherSamples(options);
    assert.equal(samples.generated, PROMPTS.length);
    const channels = pipeline.transformer.config.inChannels;
    const side = pipeline.defaultSize / pipeline.vaeScaleFactor;
    assert.deepEqual(samples.latents.shape, [PROMPTS.length, channels, side, side]);
    assert.deepEqual(samples.promptEmbeds.shape.slice(0, 2), [PROMPTS.length, SETTINGS.maxSequenceLength]);
    const per = channels * side * side;
    for (const [i, prompt] of PROMPTS.entries()) {
      const noise = new TorchGenerator(SETTINGS.seed + i).randn([1, channels, side, side]);
      const one = await pipeline.run({
        prompt,
        numInferenceSteps: SETTINGS.steps,
        guidanceScale: SETTINGS.guidance,
        maxSequenceLength: SETTINGS.maxSequenceLength,
        latents: hostTensor('float32', [1, channels, side, side], noise),
        outputType: 'latent',
      });
      const mine = (samples.latents.data as Float32Array).subarray(i * per, (i + 1) * per);
      assertClose(mine, one.latents?.data as Float32Array, { rtol: 1e-5, atol: 1e-6, what: `sample ${i}` });
    }

    // A run stopped before its second shard was written: the first shard is read back, the second made.
    await rm(join(dir, 'samples-00001.safetensors'));
    const again = await teacherSamples(options);
    assert.equal(again.generated, 2);
    assert.deepEqual(again.latents.data, samples.latents.data);
    assert.deepEqual(again.promptEmbeds.data, samples.promptEmbeds.data);
    const complete = await teacherSamples(options);
    assert.equal(complete.generated, 0);
  });

  it('a stop asked for mid-shard ends with PreparationStopped, keeps the finished shards, and the next call completes the same samples', async () => {
    const dir = join(root, 'stopped');
    const whole = await teacherSamples({
      pipeline,
      prompts: PROMPTS,
      dir: join(root, 'whole'),
      ...SETTINGS,
      batchSize: 2,
      shardSize: 3,
    });
    // Asked for before the third pipeline call: shard 0 (samples 0–2) is written, shard 1 is not.
    let calls = 0;
    const stop = {
      get requested(): boolean {
        return ++calls >= 3;
      },
    };
    const options = { pipeline, prompts: PROMPTS, dir, ...SETTINGS, batchSize: 2, shardSize: 3 };
    await assert.rejects(teacherSamples({ ...options, stop }), (e: unknown) => {
      assert.ok(e instanceof PreparationStopped, String(e));
      assert.equal(e.phase, 'teacher samples');
      assert.deepEqual([e.done, e.total], [3, PROMPTS.length]);
      return true;
    });
    assert.deepEqual((await readdir(dir)).sort(), ['manifest.json', 'samples-00000.safetensors']);
    const again = await teacherSamples(options);
    assert.equal(again.generated, 2);
    assert.deepEqual(again.latents.data, whole.latents.data);
  });

  it('other settings in the same folder, and bad options, say what differs or what was expected', async () => {
    const dir = join(root, 'b');
    await teacherSamples({ pipeline, prompts: PROMPTS.slice(0, 2), dir, ...SETTINGS });
    await assert.rejects(
      teacherSamples({ pipeline, prompts: PROMPTS.slice(0, 2), dir, ...SETTINGS, steps: 4 }),
      /holds samples made with other settings \(steps: 3 there, 4 now\)/,
    );
    // A retrained teacher in the same folder: its weights' hash differs, so its old samples are refused.
    const changed = await tinyPixArtPipeline();
    const weights = join(changed, 'transformer', 'diffusion_pytorch_model.safetensors');
    const bytes = await readFile(weights);
    bytes[bytes.length - 1] ^= 1;
    await writeFile(weights, bytes);
    const other = await PixArtPipeline.fromPretrained(changed, { runtime: testRuntime() });
    try {
      await assert.rejects(
        teacherSamples({ pipeline: other, prompts: PROMPTS.slice(0, 2), dir, ...SETTINGS }),
        /holds samples made with other settings \(teacher: .*; teacher_sha256: /,
      );
    } finally {
      await other.close();
    }
    await assert.rejects(
      teacherSamples({ pipeline, prompts: [], dir: join(root, 'c') }),
      /prompts must be an integer ≥ 1, got 0/,
    );
    await assert.rejects(
      teacherSamples({ pipeline, prompts: PROMPTS, dir: join(root, 'c'), batchSize: 0 }),
      /batchSize must be an integer ≥ 1, got 0/,
    );
  });
});
