import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';

import { assertExactlyEqual } from '../compare.js';
import { seededUniform, testSeed } from '../random.js';
import {
  assertSameRun,
  checkpointManager,
  createRun,
  PARAMETER_SHAPES,
  restore,
  trainStep,
  type TinyRun,
} from './tiny-training.js';

const CHILD = fileURLToPath(new URL('./fixtures/train-child.ts', import.meta.url));
const TOTAL = 80;
const KILLS = 4;

const directories: string[] = [];
after(async () => {
  for (const directory of directories) await rm(directory, { recursive: true, force: true });
});

interface Child {
  readonly process: ChildProcess;
  /** Resolves with the first stdout line that starts with `prefix`. */
  line(prefix: string): Promise<string>;
  readonly exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  output(): string;
}

function startChild(directory: string, saveEvery: number, stepMilliseconds = 0): Child {
  const args = [CHILD, directory, 'adamw', String(TOTAL), String(saveEvery), String(stepMilliseconds)];
  const child = spawn(process.execPath, ['--import', 'tsx', ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    // `--import tsx` resolves from the working directory: the repository root.
    cwd: fileURLToPath(new URL('../..', import.meta.url)),
  });
  let stdout = '';
  let stderr = '';
  const waiting: { prefix: string; resolve: (line: string) => void }[] = [];
  child.stdout!.on('data', (chunk: Buffer) => {
    stdout += chunk.toString();
    for (const waiter of [...waiting]) {
      const line = stdout.split('\n').find((l) => l.startsWith(waiter.prefix));
      if (line !== undefined) {
        waiting.splice(waiting.indexOf(waiter), 1);
        waiter.resolve(line);
      }
    }
  });
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.on('exit', (code, signal) => resolve({ code, signal })),
  );
  return {
    process: child,
    line: (prefix) =>
      new Promise((resolve, reject) => {
        const found = stdout.split('\n').find((l) => l.startsWith(prefix));
        if (found !== undefined) return resolve(found);
        waiting.push({ prefix, resolve });
        void exit.then(() =>
          reject(new Error(`child exited before printing '${prefix}': ${stdout}\n${stderr}`)),
        );
      }),
    exit,
    output: () => `stdout:\n${stdout}\nstderr:\n${stderr}`,
  };
}

/** The uninterrupted run, and its state after every step. */
function referenceRun(): { run: TinyRun; weightsAt: Map<string, Float32Array>[] } {
  const run = createRun('adamw', TOTAL);
  const weightsAt = [new Map([...run.params].map(([n, p]) => [n, p.slice()]))];
  while (run.step < TOTAL) {
    trainStep(run);
    weightsAt.push(new Map([...run.params].map(([n, p]) => [n, p.slice()])));
  }
  return { run, weightsAt };
}

/** Every checkpoint in view loads completely and holds the reference weights of its step. */
async function checkEveryVisibleCheckpoint(
  directory: string,
  weightsAt: Map<string, Float32Array>[],
  what: string,
): Promise<number> {
  const manager = checkpointManager(directory, 'adamw', TOTAL, { onWarning: () => {} });
  const entries = await manager.list();
  for (const entry of entries) {
    const snapshot = await manager.load(entry.name);
    assert.equal(snapshot.step, entry.step, `${what}: ${entry.name} step`);
    for (const name of PARAMETER_SHAPES.keys()) {
      assertExactlyEqual(
        snapshot.weights.get(name)!,
        weightsAt[entry.step].get(name)!,
        `${what}: ${entry.name} ${name}`,
      );
    }
  }
  const names = await readdir(directory).catch(() => [] as string[]);
  if (names.includes('latest')) {
    const latest = (await readFile(join(directory, 'latest'), 'utf8')).trim();
    assert.ok(
      entries.some((e) => e.name === latest),
      `${what}: latest names ${latest}, not in view`,
    );
  }
  return entries.length === 0 ? 0 : entries[entries.length - 1].step;
}

test('SIGKILL at random moments: every visible checkpoint loads and is right; SIGTERM saves; resume finishes identically', async () => {
  const random = seededUniform(testSeed('checkpoint SIGKILL moments'));
  const directory = await mkdtemp(join(tmpdir(), 'velodiff-kill-'));
  directories.push(directory);
  const reference = referenceRun();

  let lastStep = 0;
  const log: string[] = [];
  for (let round = 0; round < KILLS; round++) {
    const child = startChild(directory, 1);
    await child.line('start');
    const delay = Math.floor(random() * 400);
    await new Promise((resolve) => setTimeout(resolve, delay));
    child.process.kill('SIGKILL');
    const { signal } = await child.exit;
    const leftovers = (await readdir(directory)).filter((n) => n.startsWith('.'));
    const step = await checkEveryVisibleCheckpoint(directory, reference.weightsAt, `after kill ${round + 1}`);
    assert.ok(step >= lastStep, `kill ${round + 1}: progress went back from ${lastStep} to ${step}`);
    log.push(
      `kill ${round + 1} after ${delay} ms (${signal ?? 'exited'}): newest step ${step}, hidden leftovers ${leftovers.length}`,
    );
    lastStep = step;
  }

  // SIGTERM: the child (its steps slowed to 20 ms, so the signal lands mid-run) finishes its step,
  // saves though saveEvery would not, and exits cleanly.
  const graceful = startChild(directory, 1000, 20);
  await graceful.line('step');
  graceful.process.kill('SIGTERM');
  const stopped = await graceful.line('stopped');
  const { code } = await graceful.exit;
  assert.equal(code, 0, graceful.output());
  const stoppedAt = Number(stopped.split(' ')[1]);
  assert.equal(stopped.split(' ')[2], 'SIGTERM');
  assert.ok(stoppedAt < TOTAL, `SIGTERM landed after the last step (${stoppedAt})`);
  assert.equal(await checkEveryVisibleCheckpoint(directory, reference.weightsAt, 'after SIGTERM'), stoppedAt);
  log.push(`SIGTERM: saved at step ${stoppedAt}`);

  const finish = startChild(directory, 1);
  const { code: finalCode } = await finish.exit;
  assert.equal(finalCode, 0, finish.output());
  assert.equal(await checkEveryVisibleCheckpoint(directory, reference.weightsAt, 'at the end'), TOTAL);
  const resumed = createRun('adamw', TOTAL);
  restore(resumed, (await checkpointManager(directory, 'adamw', TOTAL).resume())!.snapshot);
  assertSameRun(resumed, reference.run, 'killed and resumed vs uninterrupted');
  process.stderr.write(`# ${log.join('; ')}\n`);
});
