/**
 * A benchmark's results file: one JSON line `{"key", "result"}` per finished case, so that a rerun
 * with the same file reuses what is done and runs only what is not (a long table built over
 * several sittings, or extended by new rows). The key is everything the case was run with.
 */
import { appendFileSync, existsSync, readFileSync } from 'node:fs';

import { OptionError } from '../src/errors.js';

/** The finished cases of `path` (none when it is absent); a line that does not parse is an error naming it. */
export function readResults<T>(path: string | undefined, command: string): Map<string, T> {
  const done = new Map<string, T>();
  if (!path || !existsSync(path)) return done;
  readFileSync(path, 'utf8')
    .split('\n')
    .forEach((line, i) => {
      if (!line.trim()) return;
      let entry: { key?: unknown; result?: unknown };
      try {
        entry = JSON.parse(line) as { key?: unknown; result?: unknown };
      } catch (e) {
        throw new OptionError(
          `${command}: line ${i + 1} of ${path} is not JSON (${(e as Error).message}); delete the line or the file`,
        );
      }
      if (typeof entry.key !== 'string' || typeof entry.result !== 'object' || entry.result === null) {
        throw new OptionError(
          `${command}: line ${i + 1} of ${path} is not a case result ({"key": …, "result": …})`,
        );
      }
      done.set(entry.key, entry.result as T);
    });
  return done;
}

/** Adds a finished case to `path` (nothing without a path). */
export function appendResult(path: string | undefined, key: string, result: unknown): void {
  if (path) appendFileSync(path, `${JSON.stringify({ key, result })}\n`);
}
