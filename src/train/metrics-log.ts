/**
 * The run folder's metrics log, `metrics.jsonl`: one JSON object per optimizer update, appended as the
 * run goes, read back for the loss plot and by anyone with `jq`. A run resumed from a checkpoint
 * first drops the lines after the checkpoint's step (the killed run's updates are done again), so
 * the log always holds each step once.
 */
import { appendFile, readFile, writeFile } from 'node:fs/promises';

import { FileFormatError } from '../errors.js';
import { errnoCode } from '../io/errno.js';
import { isPlainObject } from '../io/json.js';

export const METRICS_LOG = 'metrics.jsonl';

/** One line of the log. Keys are snake_case, as in the JSON the CLI prints. */
export interface MetricsRecord {
  readonly step: number;
  readonly loss: number;
  /** The loss averaged as the progress bar shows it (bias-corrected exponential moving average). */
  readonly loss_smoothed: number;
  readonly lr: number;
  readonly samples_per_s: number;
  /** Seconds since this process started training. */
  readonly elapsed_s: number;
  /** ISO 8601 wall-clock time. */
  readonly time: string;
  /** The trainer's own metrics (e.g. 'kl', 'mse', 'accuracy'). */
  readonly [metric: string]: number | string;
}

/** The records of a log, oldest first. A last line cut short by a kill is left out; any other bad line is an error. */
export async function readMetricsLog(path: string): Promise<MetricsRecord[]> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (error) {
    if (errnoCode(error) === 'ENOENT') return [];
    throw error;
  }
  const lines = text.split('\n');
  const records: MetricsRecord[] = [];
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i].trim();
    if (line === '') continue;
    let value: unknown;
    try {
      value = JSON.parse(line);
    } catch {
      // Only the last line can be half-written (appends are whole lines otherwise).
      if (i === lines.length - 1) break;
      throw new FileFormatError(`${path}:${i + 1}: not a JSON line`, 'METRICS_LOG', path);
    }
    if (!isPlainObject(value) || typeof value.step !== 'number' || typeof value.loss !== 'number') {
      throw new FileFormatError(
        `${path}:${i + 1}: expected an object with numeric "step" and "loss"`,
        'METRICS_LOG',
        path,
      );
    }
    records.push(value as MetricsRecord);
  }
  return records;
}

/** Appends records to a run's metrics log. */
export class MetricsLog {
  private constructor(readonly path: string) {}

  /**
   * Opens the log for appending. `resumedAt`: the step a resumed run continues from; lines of later
   * steps are removed first. Without it, an existing log is started afresh.
   */
  static async open(path: string, resumedAt?: number): Promise<MetricsLog> {
    const kept =
      resumedAt === undefined ? [] : (await readMetricsLog(path)).filter((r) => r.step <= resumedAt);
    await writeFile(path, kept.map((r) => `${JSON.stringify(r)}\n`).join(''));
    return new MetricsLog(path);
  }

  async append(record: MetricsRecord): Promise<void> {
    await appendFile(this.path, `${JSON.stringify(record)}\n`);
  }
}
