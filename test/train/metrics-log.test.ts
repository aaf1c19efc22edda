import assert from 'node:assert/strict';
import { appendFile, mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';

import { FileFormatError } from '../../src/errors.js';
import { MetricsLog, readMetricsLog, type MetricsRecord } from '../../src/train/metrics-log.js';
import { formatDuration, TrainingProgress } from '../../src/train/progress.js';
import { seededUniform, testSeed } from '../random.js';

const random = seededUniform(testSeed('test/train/metrics-log.test.ts'));

function record(step: number): MetricsRecord {
  return {
    step,
    loss: random(),
    loss_smoothed: random(),
    lr: random() * 1e-3,
    samples_per_s: random() * 100,
    elapsed_s: step,
    time: new Date(step * 1000).toISOString(),
    kl: random(),
  };
}

describe('metrics log', () => {
  it('reads back what was appended; a resumed run drops the lines past its checkpoint', async () => {
    const path = join(await mkdtemp(join(tmpdir(), 'velodiff-log-')), 'metrics.jsonl');
    const first = await MetricsLog.open(path);
    const records = Array.from({ length: 20 }, (_, i) => record(i + 1));
    for (const r of records) await first.append(r);
    assert.deepEqual(await readMetricsLog(path), records);
    const resumedAt = 5 + Math.floor(random() * 10);
    await MetricsLog.open(path, resumedAt);
    assert.deepEqual(await readMetricsLog(path), records.slice(0, resumedAt));
    await MetricsLog.open(path);
    assert.deepEqual(await readMetricsLog(path), [], 'a fresh run starts a fresh log');
  });

  it('leaves out a last line cut short by a kill; any other bad line is an error naming the line', async () => {
    const path = join(await mkdtemp(join(tmpdir(), 'velodiff-log-')), 'metrics.jsonl');
    const records = [record(1), record(2)];
    await writeFile(path, records.map((r) => `${JSON.stringify(r)}\n`).join(''));
    await appendFile(path, JSON.stringify(record(3)).slice(0, 25));
    assert.deepEqual(await readMetricsLog(path), records);
    await writeFile(path, `${JSON.stringify(records[0])}\nnot json\n${JSON.stringify(records[1])}\n`);
    await assert.rejects(
      readMetricsLog(path),
      (e: unknown) => e instanceof FileFormatError && /:2: not a JSON line/.test(e.message),
    );
    assert.deepEqual(await readMetricsLog(join(path, '..', 'absent.jsonl')), []);
  });
});

describe('training progress', () => {
  it('smooths the loss as a bias-corrected moving average (the weighted sum, computed directly)', () => {
    const beta = 0.9 + random() * 0.09;
    const progress = new TrainingProgress({ totalSteps: 100, lossSmoothing: beta, now: () => 0 });
    const losses = Array.from({ length: 30 }, () => random() * 3);
    for (const [i, loss] of losses.entries()) {
      const report = progress.update({ step: i + 1, loss, lr: 1, samplesPerSecond: 1 });
      // Σ β^(n−1−k)(1−β) x_k / (1 − β^n): Adam's bias correction of an average started at 0.
      let weighted = 0;
      for (let k = 0; k <= i; k++) weighted += beta ** (i - k) * (1 - beta) * losses[k];
      const expected = weighted / (1 - beta ** (i + 1));
      assert.ok(Math.abs(report.smoothedLoss - expected) < 1e-12 * Math.max(1, expected), `step ${i + 1}`);
    }
  });

  it('estimates the time left from the recent pace, after the first (compiling) step', () => {
    let now = 0;
    const progress = new TrainingProgress({ totalSteps: 50, timeSmoothing: 0, now: () => now });
    now = 60_000; // the first update includes compiling the graph
    assert.equal(progress.update({ step: 11, loss: 1, lr: 1, samplesPerSecond: 1 }).etaSeconds, undefined);
    const secondsPerStep = 0.5 + random() * 2;
    now += secondsPerStep * 1000;
    const report = progress.update({ step: 12, loss: 1, lr: 1, samplesPerSecond: 1 });
    assert.ok(Math.abs((report.etaSeconds ?? NaN) - 38 * secondsPerStep) < 1e-9);
    assert.equal(report.elapsedSeconds, now / 1000);
    assert.equal(formatDuration(3725), '1:02:05');
    assert.equal(formatDuration(65.4), '1:05');
  });
});
