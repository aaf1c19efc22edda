import assert from 'node:assert/strict';
import { mkdtemp, readdir, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

import { FileFormatError } from '../../src/errors.js';
import { AdamW } from '../../src/train/adamw.js';
import {
  optimizerFromConfig,
  parseTrainConfig,
  readTrainConfig,
  resumeIdentity,
  scheduleFromConfig,
  TRAIN_DEFAULTS,
  TRAIN_KINDS,
  TrainConfigError,
  type TrainConfig,
} from '../../src/train/config.js';
import { ADAMW_DEFAULTS } from '../../src/train/adamw.js';
import { EMA_DEFAULTS } from '../../src/train/ema.js';
import { Prodigy } from '../../src/train/prodigy.js';
import { CLEAR_LOSS_WEIGHTS } from '../../src/train/distill/clear.js';
import { LINFUSION_LOSS_WEIGHTS } from '../../src/train/distill/linfusion.js';
import { seededUniform, testSeed } from '../random.js';

const CONFIGS = fileURLToPath(new URL('../../configs/', import.meta.url));
const random = seededUniform(testSeed('test/train/config.test.ts'));
const FILE = 'configs/test.json';

/** The TrainConfigError `raw` raises, or a failure when it validates. */
function problemsOf(raw: unknown, overrides: { data?: string } = {}): TrainConfigError {
  try {
    parseTrainConfig(raw, { path: FILE, ...overrides });
  } catch (error) {
    assert.ok(error instanceof TrainConfigError, `expected a TrainConfigError, got ${String(error)}`);
    return error;
  }
  assert.fail(`${JSON.stringify(raw)} validated`);
}

const MINIMAL: Record<(typeof TRAIN_KINDS)[number], Record<string, unknown>> = {
  vae: { kind: 'vae', steps: 10 },
  'text-to-image': { kind: 'text-to-image', steps: 10, model: { vae: 'runs/emoji-vae/model' } },
  classifier: { kind: 'classifier', steps: 10 },
  'distill-clear': { kind: 'distill-clear', steps: 10, model: { teacher: 'models/emoji', radius: 4 } },
  'distill-linfusion': { kind: 'distill-linfusion', steps: 10, model: { teacher: 'models/emoji' } },
  'distill-flash': { kind: 'distill-flash', steps: 10, model: { teacher: 'models/emoji' } },
};

describe('training configuration', () => {
  it('fills in every documented default from a file with only kind and steps', () => {
    for (const kind of TRAIN_KINDS) {
      const config = parseTrainConfig(MINIMAL[kind], { path: FILE });
      assert.equal(config.kind, kind);
      assert.equal(config.steps, 10);
      assert.equal(config.seed, TRAIN_DEFAULTS.seed);
      assert.equal(config.batchSize, TRAIN_DEFAULTS.batchSize);
      assert.equal(config.accumulation, TRAIN_DEFAULTS.accumulation);
      assert.equal(config.clip, TRAIN_DEFAULTS.clip);
      assert.deepEqual(config.optimizer, { kind: 'adamw', ...ADAMW_DEFAULTS });
      assert.deepEqual(config.lrSchedule, TRAIN_DEFAULTS.lrSchedule);
      assert.equal(config.ema, null);
      assert.deepEqual(config.checkpoint, TRAIN_DEFAULTS.checkpoint);
      assert.equal(config.sample.every, TRAIN_DEFAULTS.sample.every);
      assert.deepEqual(config.log, TRAIN_DEFAULTS.log);
      assert.equal(config.data.source, 'emoji');
      assert.equal(config.data.size, 64);
      assert.equal(config.data.captionDropout, TRAIN_DEFAULTS.data.captionDropout[kind]);
      // The default run folder is named after the file, under runs/ of the current directory.
      assert.equal(config.output, resolve('runs', 'test'));
    }
    const t2i = parseTrainConfig(MINIMAL['text-to-image'], { path: FILE });
    assert.ok(t2i.kind === 'text-to-image');
    assert.equal(t2i.model.vae, resolve('runs/emoji-vae/model'));
    assert.equal(t2i.model.minSnrGamma, 5);
    assert.deepEqual(t2i.sample.prompts, TRAIN_DEFAULTS.sample.prompts);
    const ema = parseTrainConfig({ ...MINIMAL.vae, ema: {} }, { path: FILE });
    assert.deepEqual(ema.ema, EMA_DEFAULTS, 'ema: {} is EMA with the EMA defaults');
  });

  it('names every unknown key with its key path and the closest known key, all at once', () => {
    const error = problemsOf({
      kind: 'vae',
      steps: 10,
      batchsize: 8,
      optimizer: { lr: 1e-3, weight_decay: 0.1 },
      checkpoint: { every: 5, kep: 2 },
      data: { source: 'emoji', colorSpace: 'srgb' },
      model: { vae: { latent_chanels: 4 } },
    });
    assert.ok(error.message.startsWith(`${FILE}: 5 problems:`), error.message);
    const expected = [
      /^batchsize: unknown key\. Did you mean 'batchSize'\?/,
      /^optimizer\.weight_decay: unknown key\. Did you mean 'weightDecay'\?/,
      /^checkpoint\.kep: unknown key\. Did you mean 'keep'\?/,
      /^data\.colorSpace: unknown key\./,
      /^model\.vae\.latent_chanels: unknown key for this model/,
    ];
    for (const pattern of expected) {
      assert.ok(
        error.problems.some((p) => pattern.test(p)),
        `${pattern} in:\n${error.problems.join('\n')}`,
      );
    }
    assert.equal(error.path, FILE);
  });

  it('takes captionDropout only where batches use it, and says so elsewhere', () => {
    const dropout = Math.round((0.05 + 0.9 * random()) * 1000) / 1000;
    for (const kind of ['text-to-image', 'distill-clear', 'distill-linfusion'] as const) {
      const config = parseTrainConfig(
        { ...MINIMAL[kind], data: { captionDropout: dropout } },
        { path: FILE },
      );
      assert.equal(config.data.captionDropout, dropout, kind);
    }
    for (const kind of ['vae', 'classifier', 'distill-flash'] as const) {
      const error = problemsOf({ ...MINIMAL[kind], data: { captionDropout: dropout } });
      assert.ok(
        error.problems.some(
          (p) =>
            p.startsWith(`data.captionDropout: a ${kind} run has no use for dropped captions`) &&
            p.endsWith(`expected 0, found ${dropout}`),
        ),
        error.problems.join('\n'),
      );
      parseTrainConfig({ ...MINIMAL[kind], data: { captionDropout: 0 } }, { path: FILE });
    }
  });

  it("reads a distillation's loss weights: the authors' by default, any term replaced, bad values named", () => {
    const clear = parseTrainConfig(MINIMAL['distill-clear'], { path: FILE });
    assert.ok(clear.kind === 'distill-clear');
    // Left out when not given, so that a run from before the key hashes (and resumes) as it did.
    assert.equal(clear.model.lossWeights, undefined);
    assert.ok(!('lossWeights' in clear.model));
    const weight = Math.round(random() * 100) / 10;
    const custom = parseTrainConfig(
      {
        ...MINIMAL['distill-clear'],
        model: { teacher: 'models/emoji', radius: 4, lossWeights: { denoise: weight } },
      },
      { path: FILE },
    );
    assert.ok(custom.kind === 'distill-clear');
    assert.deepEqual(custom.model.lossWeights, { ...CLEAR_LOSS_WEIGHTS, denoise: weight });
    const linfusion = parseTrainConfig(
      { ...MINIMAL['distill-linfusion'], model: { teacher: 'models/emoji', lossWeights: { kd: weight } } },
      { path: FILE },
    );
    assert.ok(linfusion.kind === 'distill-linfusion');
    assert.deepEqual(linfusion.model.lossWeights, { ...LINFUSION_LOSS_WEIGHTS, kd: weight });
    const error = problemsOf({
      ...MINIMAL['distill-clear'],
      model: { teacher: 'models/emoji', radius: 4, lossWeights: { denoise: -1, distil: 1 } },
    });
    for (const line of [
      'model.lossWeights.denoise: expected a number ≥ 0, found -1',
      "model.lossWeights.distil: unknown key. Did you mean 'distill'? Known keys here: denoise, distill, attention",
    ])
      assert.ok(error.problems.includes(line), `${line}\nin:\n${error.problems.join('\n')}`);
    const zero = problemsOf({
      ...MINIMAL['distill-linfusion'],
      model: { teacher: 'models/emoji', lossWeights: { simple: 0, kd: 0, feat: 0 } },
    });
    assert.ok(
      zero.problems.includes(
        'model.lossWeights: expected at least one weight above 0, found {"simple":0,"kd":0,"feat":0}',
      ),
      zero.problems.join('\n'),
    );
  });

  it('names bad values with their key path, expected and found (random bad values)', () => {
    const badLr = -(1 + Math.floor(random() * 100)) / 1000;
    const badBatch = 1 + Math.floor(random() * 50) + 0.5;
    const badDropout = 1 + random();
    const error = problemsOf({
      kind: 'text-to-image',
      steps: 100,
      batchSize: badBatch,
      optimizer: { kind: 'adamw', lr: badLr, betas: [0.9] },
      lrSchedule: { kind: 'warmup-cosine', warmupSteps: 101 },
      ema: { decay: 2 },
      data: { captionDropout: badDropout, sets: ['apple'] },
      sample: { prompts: [] },
      model: {
        vae: 'v',
        transformer: { patch_size: 'two' },
        maxTextLength: 0,
        captionProjectionInit: 'xavier',
      },
    });
    const expected = [
      `batchSize: expected an integer ≥ 1, found ${badBatch}`,
      `optimizer.lr: expected a number ≥ 0, found ${badLr}`,
      'optimizer.betas: expected two numbers [β1, β2], found [0.9]',
      'ema.decay: expected a number in [0, 1], found 2',
      `data.captionDropout: expected a number in [0, 1], found ${badDropout}`,
      "data.sets: expected a list of 'google', 'twitter', found [\"apple\"]",
      'sample.prompts: expected at least one prompt, found []',
      'model.maxTextLength: expected an integer ≥ 1, found 0',
      "model.captionProjectionInit: expected one of 'pixart', 'fan-in', found \"xavier\"",
    ];
    for (const line of expected)
      assert.ok(error.problems.includes(line), `${line}\nin:\n${error.problems.join('\n')}`);
    // Checked by the classes that own them, with their own words.
    assert.ok(error.problems.some((p) => p.startsWith('lrSchedule: ') && /warmupSteps 101/.test(p)));
    assert.ok(error.problems.some((p) => p.startsWith('model.transformer: ') && /patch_size/.test(p)));
  });

  it('predictionType: v_prediction is kept, epsilon (the default) leaves no key, anything else is a problem', () => {
    const t2i = MINIMAL['text-to-image'];
    const model = t2i.model as Record<string, unknown>;
    const v = parseTrainConfig(
      { ...t2i, model: { ...model, predictionType: 'v_prediction' } },
      { path: FILE },
    );
    assert.ok(v.kind === 'text-to-image' && v.model.predictionType === 'v_prediction');
    const eps = parseTrainConfig({ ...t2i, model: { ...model, predictionType: 'epsilon' } }, { path: FILE });
    assert.ok(eps.kind === 'text-to-image' && !('predictionType' in eps.model));
    assert.match(
      problemsOf({ ...t2i, model: { ...model, predictionType: 'sample' } }).message,
      /model\.predictionType: expected one of 'epsilon', 'v_prediction', found "sample"/,
    );
  });

  it('timestepSampling: uniform (the default) leaves no key; logit-normal is kept with its mean and std; bad values are problems', () => {
    const t2i = MINIMAL['text-to-image'];
    const model = t2i.model as Record<string, unknown>;
    const parse = (timestepSampling: unknown): TrainConfig =>
      parseTrainConfig({ ...t2i, model: { ...model, timestepSampling } }, { path: FILE });
    const plain = parseTrainConfig(t2i, { path: FILE });
    assert.ok(plain.kind === 'text-to-image' && !('timestepSampling' in plain.model));
    assert.deepEqual(
      resumeIdentity(parse('uniform')),
      resumeIdentity(plain),
      'older runs keep their identity',
    );
    const mean = Math.round((random() * 4 - 2) * 100) / 100;
    const std = Math.round((0.2 + random() * 2) * 100) / 100;
    const logit = parse({ kind: 'logit-normal', mean, std });
    assert.ok(logit.kind === 'text-to-image');
    assert.deepEqual(logit.model.timestepSampling, { kind: 'logit-normal', mean, std });
    const defaults = parse({ kind: 'logit-normal' });
    assert.ok(defaults.kind === 'text-to-image');
    assert.deepEqual(defaults.model.timestepSampling, { kind: 'logit-normal', mean: 0, std: 1 });
    const problems = (timestepSampling: unknown): string =>
      problemsOf({ ...t2i, model: { ...model, timestepSampling } }).message;
    assert.match(
      problems({ kind: 'logit-normal', mean, std: 0 }),
      /model\.timestepSampling\.std: expected a number > 0, found 0/,
    );
    assert.match(
      problems({ kind: 'logit-normal', std: -std }),
      /model\.timestepSampling\.std: expected a number > 0, found -/,
    );
    assert.match(
      problems({ kind: 'logit-normal', mean: 'high' }),
      /model\.timestepSampling\.mean: expected a number, found "high"/,
    );
    assert.match(
      problems({ kind: 'logit-normal', mean: null }),
      /model\.timestepSampling\.mean: expected a number, found null/,
    );
    assert.match(
      problems({ kind: 'logit-normal', scale: 2 }),
      /model\.timestepSampling\.scale: unknown key\. Known keys here: kind, mean, std/,
    );
    assert.match(
      problems({ kind: 'normal', mean }),
      /model\.timestepSampling\.kind: expected one of 'logit-normal', found "normal"/,
    );
    assert.match(problems({ mean }), /model\.timestepSampling\.kind: expected 'logit-normal', found nothing/);
    assert.match(
      problems('logit-normal'),
      /model\.timestepSampling: expected 'uniform' or \{"kind": "logit-normal", "mean": <number>, "std": <number > 0>\}, found "logit-normal"/,
    );
  });

  it('requires kind and steps', () => {
    assert.match(
      problemsOf({ steps: 3 }).message,
      /kind: expected one of 'vae', 'text-to-image', 'classifier', 'distill-clear', 'distill-linfusion', 'distill-flash', found nothing/,
    );
    assert.match(problemsOf({ kind: 'vae' }).message, /steps: required/);
    assert.match(problemsOf([]).message, /expected a JSON object/);
  });

  it('takes data as a name or a folder; --data and --out replace the file’s', () => {
    const folder = parseTrainConfig({ ...MINIMAL.vae, data: 'my/images' }, { path: FILE });
    assert.ok(folder.data.source === 'folder');
    assert.equal(folder.data.folder, resolve('my/images'));
    assert.equal(folder.data.onBadFile, 'error');
    const overridden = parseTrainConfig(
      { ...MINIMAL.vae, data: { source: 'emoji', size: 32 }, output: 'runs/a' },
      { path: FILE, data: 'other', output: 'elsewhere' },
    );
    assert.ok(overridden.data.source === 'folder');
    assert.equal(overridden.data.folder, resolve('other'));
    assert.equal(overridden.data.size, 32);
    assert.equal(overridden.output, resolve('elsewhere'));
    // Keys of the other source are unknown here.
    assert.match(
      problemsOf({ ...MINIMAL.vae, data: { source: 'x', sets: ['google'] } }).message,
      /data\.sets: unknown key/,
    );
  });

  it('builds the configured optimizer (no weight decay on biases and norms) and schedule', () => {
    const config = parseTrainConfig(
      { ...MINIMAL.vae, optimizer: { kind: 'adamw', lr: 0.01, weightDecay: 0.2 } },
      { path: FILE },
    );
    const adamw = optimizerFromConfig(config.optimizer, ['conv.weight', 'conv.bias', 'norm1.weight']);
    assert.ok(adamw instanceof AdamW);
    const decay = new Map(adamw.groups.flatMap((g) => g.params.map((p) => [p, g.options.weightDecay])));
    assert.deepEqual(Object.fromEntries(decay), { 'conv.weight': 0.2, 'conv.bias': 0, 'norm1.weight': 0 });
    const prodigy = parseTrainConfig(
      { ...MINIMAL.vae, optimizer: { kind: 'prodigy', d0: 1e-5 } },
      { path: FILE },
    );
    assert.ok(optimizerFromConfig(prodigy.optimizer, ['w']) instanceof Prodigy);
    const steps = 50 + Math.floor(random() * 100);
    const cosine = parseTrainConfig(
      { ...MINIMAL.vae, steps, lrSchedule: { kind: 'warmup-cosine', warmupSteps: 10, minLrRatio: 0.25 } },
      { path: FILE },
    );
    const schedule = scheduleFromConfig(cosine.lrSchedule, cosine.steps);
    assert.equal(schedule.factor(5), 0.5);
    assert.ok(Math.abs(schedule.factor(steps) - 0.25) < 1e-12, 'reaches minLrRatio at the last step');
  });

  it('resume identity: output, logging, samples and checkpoints may change; steps only under a constant schedule', () => {
    const base = { ...MINIMAL.vae, steps: 100 };
    const identity = (raw: Record<string, unknown>): string =>
      JSON.stringify(resumeIdentity(parseTrainConfig(raw, { path: FILE })));
    const a = identity(base);
    assert.equal(
      identity({ ...base, output: 'x', sample: { every: 7 }, log: { every: 3 }, checkpoint: { every: 9 } }),
      a,
    );
    assert.equal(identity({ ...base, steps: 200 }), a, 'a constant schedule continues for longer');
    assert.notEqual(identity({ ...base, batchSize: 16 }), a);
    const cosine = { ...base, lrSchedule: { kind: 'warmup-cosine', warmupSteps: 0 } };
    assert.notEqual(
      identity({ ...cosine, steps: 200 }),
      identity(cosine),
      'a cosine reaches its end at steps',
    );
  });

  it('optimizer.lrScale: the first matching rule scales a parameter’s lr, in its own group, weight decay kept', () => {
    const config = parseTrainConfig(
      {
        ...MINIMAL.vae,
        optimizer: {
          lr: 0.002,
          weightDecay: 0.1,
          lrScale: [
            { match: '^text_encoder\\.', scale: 0.1 },
            { match: 'attn2', scale: 3 },
          ],
        },
      },
      { path: FILE },
    );
    const names = [
      'transformer.blocks.0.attn1.to_q.weight',
      'transformer.blocks.0.attn2.to_k.weight',
      'transformer.blocks.0.attn2.to_k.bias',
      'text_encoder.encoder.block.0.attn2.weight', // both rules match: the first applies
      'text_encoder.shared.weight',
      'transformer.norm_out.weight',
    ];
    const adamw = optimizerFromConfig(config.optimizer, names) as AdamW;
    const of = new Map(
      adamw.groups.flatMap((g) => g.params.map((p) => [p, [g.options.lr, g.options.weightDecay]])),
    );
    assert.deepEqual(Object.fromEntries(of), {
      'transformer.blocks.0.attn1.to_q.weight': [0.002, 0.1],
      'transformer.blocks.0.attn2.to_k.weight': [0.006, 0.1],
      'transformer.blocks.0.attn2.to_k.bias': [0.006, 0],
      'text_encoder.encoder.block.0.attn2.weight': [0.0002, 0.1],
      'text_encoder.shared.weight': [0.0002, 0.1],
      'transformer.norm_out.weight': [0.002, 0],
    });
    assert.equal(parseTrainConfig(MINIMAL.vae, { path: FILE }).optimizer.lrScale, undefined);
    const problems = problemsOf({
      ...MINIMAL.vae,
      optimizer: { lrScale: [{ match: '(', scale: 2 }, { match: 'x', scale: 0 }, { match: 'y' }] },
    }).message;
    assert.match(problems, /optimizer\.lrScale\[0\]\.match: expected a regular expression/);
    assert.match(problems, /optimizer\.lrScale\[1\]\.scale: expected a number > 0, found 0/);
    assert.match(problems, /optimizer\.lrScale\[2\]: expected \{"match"/);
    assert.match(
      problemsOf({ ...MINIMAL.vae, optimizer: { lrScale: 2 } }).message,
      /optimizer\.lrScale: expected a list/,
    );
  });

  it('init and data.maxPerGroup: read and checked, absent from the configuration unless given', () => {
    const plain = parseTrainConfig(MINIMAL.vae, { path: FILE });
    assert.equal(plain.init, undefined);
    assert.equal(plain.data.maxPerGroup, undefined);
    const json = JSON.stringify(resumeIdentity(plain));
    assert.ok(!json.includes('init') && !json.includes('maxPerGroup'), 'older runs keep their identity');
    const given = parseTrainConfig(
      { ...MINIMAL.vae, init: { checkpoint: 'runs/a/checkpoint-10' }, data: { maxPerGroup: 2 } },
      { path: FILE },
    );
    assert.deepEqual(given.init, { checkpoint: resolve('runs/a/checkpoint-10'), weights: 'ema' });
    assert.equal(given.data.maxPerGroup, 2);
    const problems = problemsOf({
      ...MINIMAL.vae,
      init: { weights: 'last', from: 'x' },
      data: { maxPerGroup: 0 },
    }).message;
    assert.match(problems, /init\.checkpoint: expected a checkpoint folder of an earlier run/);
    assert.match(problems, /init\.weights: expected one of 'ema', 'model', found "last"/);
    assert.match(problems, /init\.from: unknown key/);
    assert.match(problems, /data\.maxPerGroup: expected an integer ≥ 1, found 0/);
    assert.match(problemsOf({ ...MINIMAL.vae, init: 'runs/a' }).message, /init: expected an object/);
  });

  it('init.pipeline: a text-to-image run starts from a pipeline folder; exactly one of checkpoint and pipeline, no weights beside it', () => {
    const t2i = MINIMAL['text-to-image'];
    const given = parseTrainConfig({ ...t2i, init: { pipeline: 'models/emoji' } }, { path: FILE });
    assert.deepEqual(given.init, { pipeline: resolve('models/emoji') });
    const checkpoint = parseTrainConfig(
      { ...t2i, init: { checkpoint: 'runs/a/checkpoint-10' } },
      { path: FILE },
    );
    assert.deepEqual(checkpoint.init, { checkpoint: resolve('runs/a/checkpoint-10'), weights: 'ema' });
    assert.match(
      problemsOf({ ...t2i, init: { pipeline: 'models/emoji', checkpoint: 'runs/a/checkpoint-10' } }).message,
      /init: expected exactly one of 'checkpoint' \(an earlier run's checkpoint folder\), 'pipeline' \(a pipeline folder\) and 'student' \(a student folder\), found \{/,
    );
    assert.match(
      problemsOf({ ...t2i, init: { pipeline: 'models/emoji', weights: 'ema' } }).message,
      /init\.weights: expected nothing beside init\.pipeline \(the folder holds one set of weights: the ones it ships\), found "ema"/,
    );
    assert.match(
      problemsOf({ ...MINIMAL.vae, init: { pipeline: 'models/emoji' } }).message,
      /init\.pipeline: expected init\.checkpoint instead \(only a text-to-image run starts from a pipeline folder; this run is 'vae'\), found "models\/emoji"/,
    );
    assert.match(
      problemsOf({ ...t2i, init: {} }).message,
      /init\.checkpoint: expected a checkpoint folder of an earlier run, such as 'runs\/x\/checkpoint-4000' \(or init\.pipeline: a pipeline folder such as 'models\/emoji'\), found nothing/,
    );
    assert.match(
      problemsOf({ ...t2i, init: { pipeline: '' } }).message,
      /init\.pipeline: expected a non-empty string/,
    );
  });

  it('init.student: a distillation starts from a student folder; no other kind does, and it comes alone', () => {
    const distill = MINIMAL['distill-linfusion'];
    const given = parseTrainConfig(
      { ...distill, init: { student: 'models/emoji-students/linfusion' } },
      { path: FILE },
    );
    assert.deepEqual(given.init, { student: resolve('models/emoji-students/linfusion') });
    assert.match(
      problemsOf({ ...MINIMAL['text-to-image'], init: { student: 'models/emoji-students/flash' } }).message,
      /init\.student: expected init\.checkpoint instead \(only a distillation run starts from a student folder; this run is 'text-to-image'\), found "models\/emoji-students\/flash"/,
    );
    assert.match(
      problemsOf({ ...distill, init: { student: 'a', pipeline: 'b' } }).message,
      /init: expected exactly one of 'checkpoint' .*, 'pipeline' .* and 'student' \(a student folder\)/,
    );
    assert.match(
      problemsOf({ ...distill, init: { student: 'a', weights: 'model' } }).message,
      /init\.weights: expected nothing beside init\.student/,
    );
    assert.match(
      problemsOf({ ...distill, init: {} }).message,
      /init\.checkpoint: expected .* \(or init\.student: a student folder such as 'models\/emoji-students\/linfusion'\), found nothing/,
    );
    assert.match(
      problemsOf({ ...distill, init: { pipeline: 'models/emoji' } }).message,
      /init\.pipeline: expected init\.checkpoint instead/,
    );
  });

  it('model.tokenDropout: a probability, absent from the configuration at 0', () => {
    const t2i = MINIMAL['text-to-image'];
    const model = (m: Record<string, unknown>) => ({ ...t2i, model: { ...(t2i.model as object), ...m } });
    const given = parseTrainConfig(model({ tokenDropout: 0.15 }), { path: FILE });
    assert.equal(given.kind === 'text-to-image' && given.model.tokenDropout, 0.15);
    const off = parseTrainConfig(model({ tokenDropout: 0 }), { path: FILE });
    assert.ok(off.kind === 'text-to-image' && !('tokenDropout' in off.model));
    assert.match(
      problemsOf(model({ tokenDropout: 1 })).message,
      /model\.tokenDropout: expected a probability in \[0, 1\), found 1/,
    );
  });

  it('every example in configs/ validates', async () => {
    const files = (await readdir(CONFIGS)).filter((f) => f.endsWith('.json'));
    assert.ok(files.length >= 4, files.join(', '));
    const kinds = new Set<TrainConfig['kind']>();
    for (const file of files) kinds.add((await readTrainConfig(join(CONFIGS, file))).kind);
    assert.deepEqual([...kinds].sort(), [...TRAIN_KINDS].sort());
  });

  it('a missing file and a file that is not JSON are named', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'velodiff-config-'));
    await assert.rejects(readTrainConfig(join(dir, 'none.json')), (e: unknown) => {
      assert.ok(e instanceof FileFormatError);
      assert.match(e.message, /none\.json: no such training configuration file/);
      return true;
    });
    await writeFile(join(dir, 'bad.json'), '{ "kind": "vae", }');
    await assert.rejects(readTrainConfig(join(dir, 'bad.json')), /bad\.json: not valid JSON/);
  });
});
