import assert from 'node:assert/strict';
import { mkdtemp, readFile, readdir, rm, truncate, writeFile, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';

import { FileFormatError, OptionError, WeightError } from '../../src/errors.js';
import { readJsonFile } from '../../src/io/diffusers.js';
import { SafetensorsFile } from '../../src/io/safetensors.js';
import type { VelodiffWarning } from '../../src/warnings.js';
import { assertExactlyEqual } from '../compare.js';
import {
  checkpointManager,
  createRun,
  assertSameRun,
  PARAMETER_SHAPES,
  restore,
  snapshotOf,
  trainStep,
  type OptimizerKind,
} from './tiny-training.js';

const directories: string[] = [];
after(async () => {
  for (const directory of directories) await rm(directory, { recursive: true, force: true });
});
async function freshDirectory(): Promise<string> {
  const directory = await mkdtemp(join(tmpdir(), 'velodiff-checkpoint-'));
  directories.push(directory);
  return directory;
}

for (const kind of ['adamw', 'prodigy'] as OptimizerKind[]) {
  test(`resume (${kind}): stopped at step k, checkpointed, resumed in fresh objects = uninterrupted, bit for bit`, async () => {
    const total = 11;
    const stopAt = 4;
    const straight = createRun(kind, total);
    while (straight.step < total) trainStep(straight);
    assert.ok(straight.losses[total - 1] < straight.losses[0], `${kind}: the loss went down`);

    const directory = await freshDirectory();
    const first = createRun(kind, total);
    while (first.step < stopAt) trainStep(first);
    await checkpointManager(directory, kind, total).save(snapshotOf(first));

    const resumed = createRun(kind, total);
    const result = await checkpointManager(directory, kind, total).resume();
    assert.ok(result !== undefined);
    assert.equal(result.checkpoint.name, `checkpoint-${stopAt}`);
    assert.deepEqual(result.skipped, []);
    restore(resumed, result.snapshot);
    assertSameRun(resumed, first, `${kind} right after resume`);
    while (resumed.step < total) trainStep(resumed);
    assertSameRun(resumed, straight, `${kind} at the end`);
  });
}

test('a checkpoint folder is a diffusers folder, with the EMA state where diffusers puts it', async () => {
  const directory = await freshDirectory();
  const run = createRun('adamw', 5);
  trainStep(run);
  trainStep(run);
  const entry = await checkpointManager(directory, 'adamw', 5).save(snapshotOf(run));
  assert.deepEqual((await readdir(entry.path)).sort(), [
    'model',
    'model_ema',
    'optimizer.safetensors',
    'trainer_state.json',
  ]);
  const weights = await SafetensorsFile.open(
    join(entry.path, 'model', 'diffusion_pytorch_model.safetensors'),
  );
  assert.deepEqual(weights.metadata, { format: 'pt' });
  assert.deepEqual(weights.info('layers.0.weight').shape, [8, 3]);
  assertExactlyEqual(
    await weights.readFloat32('layers.1.bias'),
    run.params.get('layers.1.bias')!,
    'stored weights',
  );
  const emaConfig = (await readJsonFile(
    join(entry.path, 'model_ema', 'config.json'),
    'EMA config',
  )) as Record<string, unknown>;
  assert.equal(emaConfig['_class_name'], 'TinyMlp');
  assert.equal(emaConfig['optimization_step'], 2);
  assert.equal(emaConfig['decay'], 0.9);
  const state = (await readJsonFile(join(entry.path, 'trainer_state.json'), 'state')) as Record<
    string,
    unknown
  >;
  assert.equal(state['step'], 2);
  assert.deepEqual(state['data'], run.data);
  assert.match(String(state['config_hash']), /^sha256:[0-9a-f]{64}$/);
  assert.equal((await readFile(join(directory, 'latest'), 'utf8')).trim(), 'checkpoint-2');
});

test('keeps the last K, points latest at the newest, removes leftovers and abandoned later steps', async () => {
  const directory = await freshDirectory();
  const manager = checkpointManager(directory, 'adamw', 20, { keepLast: 2 });
  const run = createRun('adamw', 20);
  for (let i = 0; i < 4; i++) {
    trainStep(run);
    await manager.save(snapshotOf(run));
  }
  assert.deepEqual(
    (await manager.list()).map((e) => e.name),
    ['checkpoint-3', 'checkpoint-4'],
  );
  // Leftovers of a killed writer (pid 2^22 + 1 is above Linux's default pid_max, so not running).
  await mkdir(join(directory, '.tmp-checkpoint-5-4194305-abcd'));
  await mkdir(join(directory, '.trash-checkpoint-1-4194305-abcd'));
  await writeFile(join(directory, '.latest.tmp-4194305-abcd'), 'x');
  const resumed = await manager.resume();
  assert.equal(resumed?.checkpoint.name, 'checkpoint-4');
  assert.deepEqual((await readdir(directory)).sort(), ['checkpoint-3', 'checkpoint-4', 'latest']);

  // Resuming from 3 (say 4 was refused) and saving 4 again replaces the abandoned 4.
  const earlier = createRun('adamw', 20);
  restore(earlier, await manager.load('checkpoint-3'));
  trainStep(earlier);
  const replaced = await manager.save(snapshotOf(earlier));
  assert.equal(replaced.name, 'checkpoint-4');
  assert.deepEqual(
    (await manager.list()).map((e) => e.name),
    ['checkpoint-3', 'checkpoint-4'],
  );
  // A save at a lower step removes later ones: they belong to an abandoned future.
  const back = createRun('adamw', 20);
  restore(back, await manager.load('checkpoint-3'));
  await manager.save({ ...snapshotOf(back), step: 2 });
  assert.deepEqual(
    (await manager.list()).map((e) => e.name),
    ['checkpoint-2'],
  );
});

test('corrupt checkpoints are reported by name with the problem and the previous one is used', async () => {
  for (const checksums of [true, false]) {
    const directory = await freshDirectory();
    const writer = checkpointManager(directory, 'prodigy', 10, { keepLast: 5, checksums });
    const run = createRun('prodigy', 10);
    for (let i = 0; i < 5; i++) {
      trainStep(run);
      await writer.save(snapshotOf(run));
    }
    // 5: truncated weights; 4: trainer_state.json cut mid-way (bad JSON); 3: optimizer file with a flipped
    // byte (same size: only the checksum sees it) or, without checksums, a missing trainer_state.json.
    const weightsFile = join(directory, 'checkpoint-5', 'model', 'diffusion_pytorch_model.safetensors');
    const weightBytes = await readFile(weightsFile);
    await truncate(weightsFile, weightBytes.length - 7);
    const stateFile = join(directory, 'checkpoint-4', 'trainer_state.json');
    const stateText = await readFile(stateFile, 'utf8');
    await writeFile(stateFile, stateText.slice(0, stateText.length / 2));
    if (checksums) {
      const optimizerFile = join(directory, 'checkpoint-3', 'optimizer.safetensors');
      const bytes = await readFile(optimizerFile);
      bytes[bytes.length - 3] ^= 0x40;
      await writeFile(optimizerFile, bytes);
    } else {
      await rm(join(directory, 'checkpoint-3', 'trainer_state.json'));
    }

    const warnings: VelodiffWarning[] = [];
    const reader = checkpointManager(directory, 'prodigy', 10, {
      checksums,
      onWarning: (w) => warnings.push(w),
    });
    const result = await reader.resume();
    const what = `checksums ${checksums}`;
    assert.equal(result?.checkpoint.name, 'checkpoint-2', what);
    assert.deepEqual(
      result.skipped.map((s) => s.name),
      ['checkpoint-5', 'checkpoint-4', 'checkpoint-3'],
      what,
    );
    assert.deepEqual(
      warnings.map((w) => [w.code, w.names[0]]),
      [
        ['CHECKPOINT_INVALID', 'checkpoint-5'],
        ['CHECKPOINT_INVALID', 'checkpoint-4'],
        ['CHECKPOINT_INVALID', 'checkpoint-3'],
      ],
    );
    const [five, four, three] = result.skipped.map((s) => s.reason);
    assert.match(
      five,
      checksums ? /diffusion_pytorch_model\.safetensors has \d+ bytes; \d+ were written/ : /truncated/,
      what,
    );
    assert.match(four, /trainer_state\.json to be JSON, but it does not parse/, what);
    assert.match(
      three,
      checksums
        ? /optimizer\.safetensors has SHA-256 [0-9a-f]+; [0-9a-f]+ was written/
        : /trainer_state\.json, but the file does not exist/,
      what,
    );
    assert.match(warnings[0].message, /Checkpoint checkpoint-5 .* is not usable and was skipped/);
    assert.equal(result.snapshot.step, 2);
  }
});

test('no valid checkpoint: an error that lists each one; none at all: undefined', async () => {
  const directory = await freshDirectory();
  assert.equal(await checkpointManager(directory, 'adamw', 5).resume(), undefined);
  const writer = checkpointManager(directory, 'adamw', 5);
  const run = createRun('adamw', 5);
  trainStep(run);
  await writer.save(snapshotOf(run));
  await writeFile(join(directory, 'checkpoint-1', 'trainer_state.json'), '{"format": "something else"}');
  await writeFile(join(directory, 'latest'), 'checkpoint-9\n');
  const warnings: VelodiffWarning[] = [];
  await assert.rejects(
    checkpointManager(directory, 'adamw', 5, { onWarning: (w) => warnings.push(w) }).resume(),
    (error: unknown) =>
      error instanceof FileFormatError &&
      error.code === 'CHECKPOINT_NONE_VALID' &&
      /checkpoint-1: Invalid trainer state .*expected "format": "velodiff.training-checkpoint"/.test(
        error.message,
      ),
  );
  assert.deepEqual(
    warnings.map((w) => w.code),
    ['CHECKPOINT_LATEST_STALE', 'CHECKPOINT_INVALID'],
  );
});

test('another configuration, model config or parameter shape is refused, naming what differs', async () => {
  const directory = await freshDirectory();
  const run = createRun('adamw', 6);
  trainStep(run);
  await checkpointManager(directory, 'adamw', 6).save(snapshotOf(run));

  await assert.rejects(
    checkpointManager(directory, 'adamw', 8).resume(),
    (error: unknown) =>
      error instanceof OptionError &&
      error.code === 'CHECKPOINT_CONFIG_MISMATCH' &&
      /total_steps: checkpoint 6, now 8/.test(error.message) &&
      /schedule\.total_steps: checkpoint 6, now 8/.test(error.message),
  );
  await assert.rejects(
    checkpointManager(directory, 'adamw', 6, {
      modelConfig: { _class_name: 'TinyMlp', hidden_features: 16 },
    }).resume(),
    /model config .* differs from the model's: .*hidden_features: checkpoint 8, now 16/,
  );
  const shapes = new Map(PARAMETER_SHAPES);
  shapes.set('layers.1.bias', [3]);
  shapes.delete('layers.0.bias');
  shapes.set('layers.2.weight', [1, 2]);
  await assert.rejects(
    checkpointManager(directory, 'adamw', 6, { parameterShapes: shapes }).resume(),
    (error: unknown) =>
      error instanceof WeightError &&
      error.code === 'CHECKPOINT_PARAMETERS' &&
      /missing 'layers\.2\.weight'; unexpected 'layers\.0\.bias'; other shapes: 'layers\.1\.bias': expected \[3\], found \[2\]/.test(
        error.message,
      ),
  );
  // The optimizer refuses a state of other hyperparameters.
  const snapshot = (await checkpointManager(directory, 'adamw', 6).resume())!.snapshot;
  const prodigy = createRun('prodigy', 6);
  assert.throws(
    () => prodigy.optimizer.loadStateDict(snapshot.optimizer),
    /written by 'adamw' into a 'prodigy' optimizer/,
  );
  await assert.rejects(
    checkpointManager(directory, 'adamw', 6).save({
      ...snapshotOf(run),
      weights: new Map([['x', new Float32Array(1)]]),
    }),
    /missing 'layers\.0\.weight'.*unexpected 'x'/,
  );
});

test('a checkpoint before the first update (no optimizer moments yet) round-trips', async () => {
  for (const kind of ['adamw', 'prodigy'] as OptimizerKind[]) {
    const directory = await freshDirectory();
    const straight = createRun(kind, 3);
    while (straight.step < 3) trainStep(straight);
    await checkpointManager(directory, kind, 3).save(snapshotOf(createRun(kind, 3)));
    const resumed = createRun(kind, 3);
    restore(resumed, (await checkpointManager(directory, kind, 3).resume())!.snapshot);
    while (resumed.step < 3) trainStep(resumed);
    assertSameRun(resumed, straight, `${kind} from step 0`);
  }
});
