/**
 * A whole `distill-clear` run on the tiny PixArt pipeline as teacher and a tiny in-memory data set:
 * the teacher's samples are drawn into the run folder, the student trains, and the saved model folder
 * holds CLEAR's weights file — exactly the self-attention projections under the base model's names,
 * moved off the teacher's — which the pipeline's CLEAR attention option loads; a resumed run ends
 * with the weights of an uninterrupted one.
 */
import assert from 'node:assert/strict';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { PixArtPipeline } from '../../src/pipelines/pixart.js';
import { parseTrainConfig } from '../../src/train/config.js';
import type { ImageTextDataset } from '../../src/train/data/dataset.js';
import type { Batch } from '../../src/train/data/loader.js';
import { clearDistillTrainer, clearWeightsFile } from '../../src/train/distill/clear-trainer.js';
import { linfusionDistillTrainer } from '../../src/train/distill/linfusion-trainer.js';
import { checkpointsIn, runTraining } from '../../src/train/run.js';
import { StopRequest } from '../../src/train/stop-signal.js';
import { tinyPixArtPipeline } from '../fixtures/tiny-pixart-pipeline.js';
import { assertClose, readAllTensors, testRuntime } from '../helpers.js';

const WORDS = ['red', 'heart', 'dog', 'face', 'rocket', 'flag', 'pizza', 'cat'];

function tinyDataset(count: number): ImageTextDataset {
  return {
    size: 8,
    pixels: new Uint8Array(count * 8 * 8 * 3).fill(255),
    items: Array.from({ length: count }, (_, i) => ({
      id: `image-${i}`,
      captions: [`${WORDS[i % WORDS.length]} ${WORDS[(i * 3 + 1) % WORDS.length]}, noto style`],
      group: `image-${i}`,
    })),
    labelNames: undefined,
    split: Array.from({ length: count }, (_, i) => (i < count - 2 ? 'train' : 'validation')),
    badFiles: [],
    key: 'tiny-distill-clear',
    cacheEntry: undefined,
    fromCache: false,
  };
}

let teacherDir: string;
let root: string;

before(async () => {
  teacherDir = await tinyPixArtPipeline();
  root = await mkdtemp(join(tmpdir(), 'velodiff-distill-run-'));
});
after(async () => {
  await rm(root, { recursive: true, force: true });
});

function config(output: string, steps: number) {
  return parseTrainConfig(
    {
      kind: 'distill-clear',
      output,
      seed: 3,
      steps,
      batchSize: 2,
      optimizer: { kind: 'adamw', lr: 0.01 },
      checkpoint: { every: 2, keep: 5 },
      sample: { every: 0, prompts: ['red heart'], seeds: [0], steps: 2 },
      model: { teacher: teacherDir, radius: 2, teacherSteps: 2 },
    },
    { path: join(root, 'distill.json') },
  );
}

describe('distill-clear run (tiny teacher)', () => {
  it('draws the teacher samples, trains the student, saves CLEAR weights that the pipeline loads', async () => {
    const dataset = tinyDataset(8);
    const output = join(root, 'run');
    const result = await runTraining({ config: config(output, 4), runtime: testRuntime(), dataset });
    assert.equal(result.step, 4);
    assert.ok(result.modelDir);
    const shards = await readdir(join(output, 'teacher-samples'));
    assert.ok(
      shards.includes('manifest.json') && shards.some((f) => f.endsWith('.safetensors')),
      shards.join(),
    );

    const file = join(result.modelDir, clearWeightsFile(2, 1));
    const student = await readAllTensors(file);
    const teacher = await readAllTensors(
      join(teacherDir, 'transformer', 'diffusion_pytorch_model.safetensors'),
    );
    const expected = Object.keys(teacher).filter((n) =>
      /^transformer_blocks\.\d+\.attn1\.(to_q|to_k|to_v|to_out\.0)\.(weight|bias)$/.test(n),
    );
    assert.deepEqual(Object.keys(student).sort(), expected.sort());
    const moved = expected.filter((n) =>
      (student[n].data as Float32Array).some((v, i) => v !== (teacher[n].data as Float32Array)[i]),
    );
    assert.ok(moved.length > 0, 'the student moved off the teacher');
    const saved = JSON.parse(await readFile(join(result.modelDir, 'config.json'), 'utf8')) as Record<
      string,
      unknown
    >;
    assert.equal(saved.radius, 2);
    // The folder ships: its teacher by name, not by this machine's path.
    assert.equal(saved.teacher, basename(teacherDir));

    const pipe = await PixArtPipeline.fromPretrained(teacherDir, { runtime: testRuntime() });
    try {
      const out = await pipe.run({
        prompt: 'red heart',
        numInferenceSteps: 2,
        attention: { kind: 'clear', radius: 2, weights: file },
        outputType: 'latent',
        seed: 0,
      });
      assert.ok((out.latents?.data as Float32Array).every(Number.isFinite));
    } finally {
      await pipe.close();
    }
  });

  it('a stop while the teacher samples ends the run before any update, saying so; the next run keeps the shards', async () => {
    const dataset = tinyDataset(8);
    const output = join(root, 'stopped-sampling');
    const stop = new StopRequest([]);
    stop.request('SIGINT');
    const result = await runTraining({ config: config(output, 2), runtime: testRuntime(), dataset, stop });
    assert.equal(result.stopped, true);
    assert.equal(result.stoppedDuring, 'teacher samples');
    assert.equal(result.step, 0);
    assert.equal(result.modelDir, undefined);
    assert.deepEqual(await checkpointsIn(output), []);
  });

  it('a run stopped at update 2 and resumed ends with the weights of an uninterrupted run', async () => {
    const dataset = tinyDataset(8);
    const whole = await runTraining({
      config: config(join(root, 'whole'), 4),
      runtime: testRuntime(),
      dataset,
    });
    const split = join(root, 'split');
    await runTraining({ config: config(split, 2), runtime: testRuntime(), dataset });
    const resumed = await runTraining({
      config: config(split, 4),
      runtime: testRuntime(),
      dataset,
      resume: true,
    });
    assert.equal(resumed.resumedFrom, 2);
    const a = await readAllTensors(join(whole.modelDir as string, clearWeightsFile(2, 1)));
    const b = await readAllTensors(join(resumed.modelDir as string, clearWeightsFile(2, 1)));
    for (const name of Object.keys(a)) assert.deepEqual(b[name].data, a[name].data, name);
  });

  it('the CLEAR and LinFusion trainers give a dropped caption the teacher\'s encoding of "", the rest their own', async () => {
    const dataset = tinyDataset(8);
    const teacher = await PixArtPipeline.fromPretrained(teacherDir, { runtime: testRuntime() });
    let empty: Float32Array;
    let redHeart: Float32Array;
    try {
      const L = teacher.defaultMaxSequenceLength;
      empty = (await teacher.promptEncoder!.encode([''], L)).embeds.data as Float32Array;
      redHeart = (await teacher.promptEncoder!.encode([dataset.items[1].captions[0]], L)).embeds
        .data as Float32Array;
    } finally {
      await teacher.close();
    }
    assert.notDeepEqual([...empty], [...redHeart]);
    const batch = (dropped: boolean[]): Batch => ({
      images: new Float32Array(2 * 3 * 8 * 8),
      shape: [2, 3, 8, 8],
      captions: dropped.map((d) => (d ? '' : dataset.items[1].captions[0])),
      dropped,
      labels: undefined,
      indices: [1, 1],
      flipped: [false, false],
      epoch: 0,
    });
    const parsed = config(join(root, 'dropout'), 2);
    assert.ok(parsed.kind === 'distill-clear');
    const sample = { prompts: ['red heart'], seeds: [0], steps: 2, guidance: 4.5 };
    const trainers = [
      await clearDistillTrainer({
        model: parsed.model,
        dataset,
        runtime: testRuntime(),
        seed: 3,
        output: join(root, 'dropout'),
        sample,
      }),
      await linfusionDistillTrainer({
        model: { teacher: teacherDir, midDimScale: 4 },
        dataset,
        runtime: testRuntime(),
        seed: 3,
        sample,
        cacheDir: false,
      }),
    ];
    for (const [k, trainer] of trainers.entries()) {
      const feeds = await trainer.makeBatch(batch([true, false]), 1);
      const text = feeds.encoder_hidden_states.data as Float32Array;
      const per = text.length / 2;
      assert.equal(per, empty.length);
      assertClose(text.subarray(0, per), Float64Array.from(empty), {
        rtol: 0,
        atol: 1e-6,
        what: `${k}: dropped row`,
      });
      assertClose(text.subarray(per), Float64Array.from(redHeart), {
        rtol: 0,
        atol: 1e-6,
        what: `${k}: kept row`,
      });
    }
  });
});
