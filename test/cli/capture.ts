// Running the CLI in this process (its stdout and stderr captured) or in a child process (for signals).
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';

import { main } from '../../src/cli/main.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));

export interface CliResult {
  code: number;
  out: string;
  err: string;
}

/** `velodiff ...argv` in this process, console and stderr captured (stderr is then not a terminal). */
export async function captureCli(argv: string[]): Promise<CliResult> {
  const out: string[] = [];
  const err: string[] = [];
  const log = console.log;
  const error = console.error;
  const write = process.stderr.write.bind(process.stderr);
  console.log = (...a: unknown[]) => void out.push(a.join(' '));
  console.error = (...a: unknown[]) => void err.push(`${a.join(' ')}\n`);
  process.stderr.write = ((chunk: string | Uint8Array) => (
    err.push(String(chunk)),
    true
  )) as typeof process.stderr.write;
  try {
    const code = await main(argv);
    return { code, out: out.join('\n'), err: err.join('') };
  } finally {
    console.log = log;
    console.error = error;
    process.stderr.write = write;
  }
}

/** `velodiff ...argv` from the sources in a child process (no build needed), for tests that send it signals. */
export function spawnCli(argv: string[], cwd = ROOT): ChildProcess {
  const entry =
    "const { main } = await import('./src/cli/main.ts'); process.exitCode = await main(process.argv.slice(1));";
  return spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', entry, '--', ...argv], {
    cwd,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
}
