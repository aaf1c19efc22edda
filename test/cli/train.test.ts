// `velodiff train` end to end on a few emoji at 16×16: the run folder, the non-terminal progress log,
// refusing to overwrite a run, --resume, SIGINT, and the three kinds (classifier, VAE, text-to-image,
// the last one then run by `velodiff generate`).
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { PNG } from 'pngjs';

import { encodePng } from '../../src/io/png.js';
import { SafetensorsFile } from '../../src/io/safetensors.js';
import { readMetricsLog } from '../../src/train/metrics-log.js';
import { assertExactlyEqual } from '../compare.js';
import { seededUniform, testSeed } from '../random.js';
import { captureCli, spawnCli } from './capture.js';

/** Eight emoji of different categories: heart, grinning face, dog, pizza, rocket, Japan, apple, cat. */
const EMOJI = ['2764-FE0F', '1F600', '1F436', '1F355', '1F680', '1F1EF-1F1F5', '1F34E', '1F431'];

const random = seededUniform(testSeed('test/cli/train.test.ts'));
let work: string;
before(async () => {
  work = await mkdtemp(join(tmpdir(), 'velodiff-train-cli-'));
});
after(async () => {
  if (work) await rm(work, { recursive: true, force: true });
});

function dataOf(): Record<string, unknown> {
  return {
    source: 'emoji',
    size: 16,
    unified: EMOJI,
    skinTones: 'none',
    validationFraction: 0.25,
    cacheDir: join(work, 'cache'),
  };
}

async function configFile(name: string, config: Record<string, unknown>): Promise<string> {
  const path = join(work, `${name}.json`);
  await writeFile(path, JSON.stringify({ data: dataOf(), ...config }));
  return path;
}

const TINY_CLASSIFIER = {
  classifier: {
    sample_size: 16,
    stem_channels: 8,
    block_out_channels: [8, 16],
    norm_num_groups: 4,
    feature_dim: 16,
  },
};

/** A two-level AutoencoderKL at 16×16 (4×8×8 latents). */
const TINY_VAE = {
  block_out_channels: [8, 8],
  down_block_types: ['DownEncoderBlock2D', 'DownEncoderBlock2D'],
  up_block_types: ['UpDecoderBlock2D', 'UpDecoderBlock2D'],
  norm_num_groups: 4,
  sample_size: 16,
};

function png(path: string): PNG {
  return PNG.sync.read(readFileSync(path));
}

describe('velodiff train', () => {
  it('a classifier run: progress lines, metrics.jsonl, sample grids, loss plot, checkpoints, model', async () => {
    const out = join(work, 'classifier');
    const config = await configFile('classifier', {
      kind: 'classifier',
      steps: 6,
      batchSize: 4,
      checkpoint: { every: 3, keep: 1 },
      sample: { every: 3, count: 4 },
      log: { every: 2 },
      model: TINY_CLASSIFIER,
    });
    const r = await captureCli(['train', '--config', config, '--out', out, '--threads', '1']);
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /trained 6 steps; model in .*classifier[\\/]model\//);
    // stderr is not a terminal here: a whole line every log.every steps and at the end.
    const progress = r.err.split('\n').filter((l) => /^step \d+\/6 \|/.test(l));
    assert.deepEqual(
      progress.map((l) => l.split(' ')[1]),
      ['2/6', '4/6', '6/6'],
    );
    assert.match(progress[0], /loss \S+ · \S+ samples\/s · lr 0\.00100 · ETA /);

    const metrics = await readMetricsLog(join(out, 'metrics.jsonl'));
    assert.deepEqual(
      metrics.map((m) => m.step),
      [1, 2, 3, 4, 5, 6],
    );
    for (const m of metrics) {
      assert.ok(Number.isFinite(m.loss) && Number.isFinite(m.loss_smoothed) && m.samples_per_s > 0);
      assert.ok(Number.isFinite(m['category_accuracy'] as number), 'the trainer’s metrics are logged too');
    }
    for (const step of ['000003', '000006']) {
      const grid = png(join(out, 'samples', `step-${step}.png`));
      assert.ok(grid.width > 4 * 16 && grid.height > 16);
    }
    const loss = png(join(out, 'loss.png'));
    assert.deepEqual([loss.width, loss.height], [800, 400]);
    const spec = JSON.parse(readFileSync(join(out, 'loss.vl.json'), 'utf8')) as {
      data: { values: { step: number; value: number; series: string }[] };
    };
    assert.deepEqual(
      spec.data.values.filter((v) => v.series === 'loss').map((v) => [v.step, v.value]),
      metrics.map((m) => [m.step, m.loss]),
      'the plot is drawn from the metrics log',
    );
    const entries = await readdir(out);
    assert.deepEqual(entries.filter((e) => e.startsWith('checkpoint-')).sort(), ['checkpoint-6'], 'keep 1');
    const saved = JSON.parse(readFileSync(join(out, 'config.json'), 'utf8')) as Record<string, unknown>;
    assert.equal(saved.kind, 'classifier');
    assert.equal(saved.batchSize, 4);
    // Every default is written out: the folder says how it was trained.
    assert.deepEqual(saved.optimizer, {
      kind: 'adamw',
      lr: 1e-3,
      betas: [0.9, 0.999],
      eps: 1e-8,
      weightDecay: 1e-2,
      amsgrad: false,
      maximize: false,
    });
    assert.equal(saved.ema, null);
    const model = JSON.parse(readFileSync(join(out, 'model', 'config.json'), 'utf8')) as Record<
      string,
      unknown
    >;
    assert.equal(model._class_name, 'VelodiffEmojiClassifier');
    assert.ok(existsSync(join(out, 'model', 'diffusion_pytorch_model.safetensors')));

    // --export writes a checkpoint's model without training: the final checkpoint's is the run's model.
    const exported = join(work, 'classifier-export');
    const exportArgs = ['train', '--config', config, '--out', out, '--export', exported];
    const x = await captureCli([...exportArgs, '--threads', '1']);
    assert.equal(x.code, 0, x.err);
    assert.match(x.out, /exported step 6 \(.*checkpoint-6\)/);
    for (const file of ['config.json', 'diffusion_pytorch_model.safetensors']) {
      assert.ok(
        readFileSync(join(exported, file)).equals(readFileSync(join(out, 'model', file))),
        `${file}: the export of checkpoint-6 equals the model the run wrote`,
      );
    }
    const missing = await captureCli([...exportArgs, '--checkpoint', '5']);
    assert.equal(missing.code, 2);
    assert.match(missing.err, /has no checkpoint at step 5; it has 6/);

    // The same folder again without --resume is refused; with --resume and more steps, it continues.
    const again = await captureCli(['train', '--config', config, '--out', out, '--threads', '1']);
    assert.equal(again.code, 2);
    assert.match(again.err, /already holds checkpoints \(the newest at step 6\): pass --resume/);
    const longer = await configFile('classifier-9', {
      kind: 'classifier',
      steps: 9,
      batchSize: 4,
      checkpoint: { every: 3, keep: 1 },
      sample: { every: 3, count: 4 },
      log: { every: 2 },
      model: TINY_CLASSIFIER,
    });
    const resumed = await captureCli([
      'train',
      '--config',
      longer,
      '--out',
      out,
      '--resume',
      '--threads',
      '1',
    ]);
    assert.equal(resumed.code, 0, resumed.err);
    assert.match(resumed.err, /resuming from the newest of 1 checkpoints/);
    const continued = await readMetricsLog(join(out, 'metrics.jsonl'));
    assert.deepEqual(
      continued.map((m) => m.step),
      [1, 2, 3, 4, 5, 6, 7, 8, 9],
    );
    assert.deepEqual(continued.slice(0, 6), metrics, 'the first run’s lines are kept as they were');
  });

  it('a bad configuration: every problem with the file and key path, exit code 1', async () => {
    const config = await configFile('bad', { kind: 'vae', steps: 0, optimizer: { lr: 'fast' }, sampel: {} });
    const r = await captureCli(['train', '--config', config]);
    assert.equal(r.code, 1);
    assert.ok(r.err.includes(`velodiff: ${config}: 3 problems:`), r.err);
    assert.match(r.err, /steps: expected an integer ≥ 1, found 0/);
    assert.match(r.err, /optimizer\.lr: expected a number ≥ 0, found "fast"/);
    assert.match(r.err, /sampel: unknown key\. Did you mean 'sample'\?/);
    const none = await captureCli(['train']);
    assert.equal(none.code, 2);
    assert.match(none.err, /give --config FILE/);
  });

  it('SIGINT saves a checkpoint and exits 130; --resume continues from it', async () => {
    const out = join(work, 'interrupted');
    const config = await configFile('long', {
      kind: 'classifier',
      steps: 100_000,
      batchSize: 4,
      checkpoint: { every: 100_000, keep: 2 },
      sample: { every: 0 },
      log: { every: 1 },
      model: TINY_CLASSIFIER,
    });
    const child = spawnCli(['train', '--config', config, '--out', out, '--threads', '1']);
    let stderr = '';
    child.stderr?.on('data', (chunk: Buffer) => {
      stderr += chunk.toString();
      // A few updates in, ask it to stop.
      if (/step 5\/100000/.test(stderr) && child.exitCode === null && !child.killed) child.kill('SIGINT');
    });
    const code = await new Promise<number | null>((done) => child.on('exit', (c) => done(c)));
    assert.equal(code, 130, stderr);
    const stopped =
      /stopped at step (\d+) \(SIGINT\): checkpoint saved in .*Continue with: velodiff train --config .* --resume/.exec(
        stderr,
      );
    assert.ok(stopped, stderr);
    const step = Number(stopped[1]);
    assert.ok(existsSync(join(out, `checkpoint-${step}`)), `checkpoint-${step}`);
    assert.ok(!existsSync(join(out, 'model')), 'no model from an interrupted run');
    const logged = await readMetricsLog(join(out, 'metrics.jsonl'));
    assert.equal(logged[logged.length - 1].step, step);

    const finish = await configFile('long-finish', {
      kind: 'classifier',
      steps: step + 2,
      batchSize: 4,
      checkpoint: { every: 100_000, keep: 2 },
      sample: { every: 0 },
      log: { every: 1 },
      model: TINY_CLASSIFIER,
    });
    const resumed = await captureCli([
      'train',
      '--config',
      finish,
      '--out',
      out,
      '--resume',
      '--threads',
      '1',
    ]);
    assert.equal(resumed.code, 0, resumed.err);
    assert.ok(existsSync(join(out, 'model', 'config.json')));
    assert.deepEqual(
      (await readMetricsLog(join(out, 'metrics.jsonl'))).map((m) => m.step),
      Array.from({ length: step + 2 }, (_, i) => i + 1),
    );
  });

  it('init starts a new run from another run’s checkpoint weights, and refuses one of other data', async () => {
    const first = join(work, 'init-first');
    const base = {
      kind: 'classifier',
      batchSize: 4,
      sample: { every: 0 },
      log: { every: 1 },
      model: TINY_CLASSIFIER,
    };
    const a = await captureCli([
      'train',
      '--config',
      await configFile('init-a', { ...base, steps: 2, checkpoint: { every: 2, keep: 1 } }),
      '--out',
      first,
      '--threads',
      '1',
    ]);
    assert.equal(a.code, 0, a.err);
    const from = join(first, 'checkpoint-2');
    // lr 0 and no weight decay: the new run's first checkpoint holds exactly the weights it started from.
    const second = join(work, 'init-second');
    const still = {
      ...base,
      steps: 1,
      optimizer: { lr: 0, weightDecay: 0 },
      checkpoint: { every: 1, keep: 1 },
    };
    const b = await captureCli([
      'train',
      '--config',
      await configFile('init-b', { ...still, init: { checkpoint: from, weights: 'model' } }),
      '--out',
      second,
      '--threads',
      '1',
    ]);
    assert.equal(b.code, 0, b.err);
    const weightsOf = async (dir: string): Promise<Map<string, Float32Array>> => {
      const file = await SafetensorsFile.open(join(dir, 'model', 'diffusion_pytorch_model.safetensors'));
      const out = new Map<string, Float32Array>();
      for (const name of file.names()) out.set(name, await file.readFloat32(name));
      return out;
    };
    const started = await weightsOf(from);
    const copied = await weightsOf(join(second, 'checkpoint-1'));
    assert.deepEqual([...copied.keys()].sort(), [...started.keys()].sort());
    for (const [name, values] of started) assertExactlyEqual(copied.get(name) as Float32Array, values, name);
    // And they are not what a random start would give: the same run without init differs.
    const third = join(work, 'init-none');
    const c = await captureCli([
      'train',
      '--config',
      await configFile('init-c', still),
      '--out',
      third,
      '--threads',
      '1',
    ]);
    assert.equal(c.code, 0, c.err);
    const random = await weightsOf(join(third, 'checkpoint-1'));
    assert.ok(
      [...started].some(([name, values]) => values.some((v, i) => v !== random.get(name)?.[i])),
      'a random start differs',
    );

    const refused = async (name: string, config: Record<string, unknown>, pattern: RegExp): Promise<void> => {
      const r = await captureCli([
        'train',
        '--config',
        await configFile(name, config),
        '--out',
        join(work, name),
      ]);
      assert.equal(r.code, 2, r.err); // an OptionError, as other bad options are
      assert.match(r.err, pattern);
    };
    await refused(
      'init-no-ema',
      { ...still, init: { checkpoint: from } },
      /has no EMA weights; set init\.weights to 'model'/,
    );
    await refused(
      'init-missing',
      { ...still, init: { checkpoint: join(work, 'nowhere', 'checkpoint-5'), weights: 'model' } },
      /init\.checkpoint .*nowhere.*checkpoint-5 cannot be used: .*trainer_state\.json, but the file does not exist/,
    );
    await refused(
      'init-other-data',
      {
        ...still,
        data: { ...dataOf(), validationFraction: 0.5 },
        init: { checkpoint: from, weights: 'model' },
      },
      /was trained on other data \(validationFraction: checkpoint 0\.25, now 0\.5\)/,
    );
  });

  it('--data DIR trains on an image folder (metadata.jsonl) instead of the configured data', async () => {
    const folder = join(work, 'images');
    await mkdir(folder, { recursive: true });
    const lines: string[] = [];
    for (let i = 0; i < 4; i++) {
      // Random 20×20 images: the data module fits them to the configured 16×16.
      const pixels = Uint8Array.from({ length: 20 * 20 * 3 }, () => Math.floor(random() * 256));
      await writeFile(join(folder, `${i}.png`), encodePng(pixels, 20, 20));
      lines.push(JSON.stringify({ file_name: `${i}.png`, text: `image ${i}` }));
    }
    await writeFile(join(folder, 'metadata.jsonl'), `${lines.join('\n')}\n`);
    const out = join(work, 'folder-vae');
    const config = await configFile('folder-vae', {
      kind: 'vae',
      steps: 1,
      batchSize: 2,
      sample: { every: 0, count: 2 },
      model: { vae: TINY_VAE },
    });
    const r = await captureCli([
      'train',
      '--config',
      config,
      '--data',
      folder,
      '--out',
      out,
      '--threads',
      '1',
    ]);
    assert.equal(r.code, 0, r.err);
    assert.match(r.err, /data: 4 images \(\d train, \d validation\)/);
    const saved = JSON.parse(readFileSync(join(out, 'config.json'), 'utf8')) as {
      data: Record<string, unknown>;
    };
    assert.equal(saved.data.source, 'folder');
    assert.equal(saved.data.folder, folder);
    assert.ok(existsSync(join(out, 'model', 'config.json')));
  });

  it('a VAE, then a text-to-image model on its latents, then `generate` with that model', async () => {
    const vaeOut = join(work, 'vae');
    const vae = await configFile('vae', {
      kind: 'vae',
      steps: 2,
      batchSize: 2,
      sample: { every: 0, count: 3 },
      ema: { decay: 0.9 },
      model: {
        vae: TINY_VAE,
      },
    });
    const v = await captureCli(['train', '--config', vae, '--out', vaeOut, '--threads', '1']);
    assert.equal(v.code, 0, v.err);
    const grid = png(join(vaeOut, 'samples', 'step-000002.png'));
    assert.ok(grid.width >= 3 * 16 * 8, `${grid.width}: three images, enlarged`);
    const vaeConfig = JSON.parse(readFileSync(join(vaeOut, 'model', 'config.json'), 'utf8')) as Record<
      string,
      unknown
    >;
    assert.equal(vaeConfig._class_name, 'AutoencoderKL');
    // The EMA weights are what a run ships, and what --export writes from its last checkpoint.
    const vaeExport = join(work, 'vae-export');
    const ve = await captureCli(['train', '--config', vae, '--out', vaeOut, '--export', vaeExport]);
    assert.equal(ve.code, 0, ve.err);
    assert.ok(
      readFileSync(join(vaeExport, 'diffusion_pytorch_model.safetensors')).equals(
        readFileSync(join(vaeOut, 'model', 'diffusion_pytorch_model.safetensors')),
      ),
    );

    const t2iOut = join(work, 't2i');
    const t2i = await configFile('t2i', {
      kind: 'text-to-image',
      steps: 2,
      batchSize: 2,
      sample: { every: 0, prompts: ['red heart', 'dog face'], seeds: [0, 1], steps: 2 },
      model: {
        vae: join(vaeOut, 'model'),
        transformer: { num_layers: 1, num_attention_heads: 2, attention_head_dim: 8, patch_size: 1 },
        textEncoder: { d_model: 16, d_kv: 8, num_heads: 2, d_ff: 32, num_layers: 1 },
        maxTextLength: 8,
      },
    });
    const t = await captureCli(['train', '--config', t2i, '--out', t2iOut, '--threads', '1']);
    assert.equal(t.code, 0, t.err);
    for (const part of ['model_index.json', 'transformer', 'text_encoder', 'tokenizer', 'vae', 'scheduler']) {
      assert.ok(existsSync(join(t2iOut, 'model', part)), part);
    }
    assert.ok(png(join(t2iOut, 'samples', 'step-000002.png')).height > 2 * 16 * 8, 'two rows of prompts');

    const image = join(work, 'heart.png');
    const g = await captureCli([
      'generate',
      'red heart',
      '--model',
      join(t2iOut, 'model'),
      '--seed',
      '1',
      '--steps',
      '2',
      '--out',
      image,
      '--threads',
      '1',
    ]);
    assert.equal(g.code, 0, g.err);
    assert.deepEqual([png(image).width, png(image).height], [16, 16]);
  });
});
