import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { main } from '../../src/cli/main.js';

async function capture(argv: string[]): Promise<{ code: number; out: string; err: string }> {
  const out: string[] = [];
  const err: string[] = [];
  const log = console.log;
  const error = console.error;
  console.log = (...a: unknown[]) => void out.push(a.join(' '));
  console.error = (...a: unknown[]) => void err.push(a.join(' '));
  try {
    const code = await main(argv);
    return { code, out: out.join('\n'), err: err.join('\n') };
  } finally {
    console.log = log;
    console.error = error;
  }
}

describe('velodiff bench engine', () => {
  it('prints one JSON object with ir_gflops, raw_gflops and their ratio as the last line', async () => {
    const { code, out } = await capture([
      'bench',
      'engine',
      '--m',
      '32',
      '--k',
      '32',
      '--layers',
      '2',
      '--reps',
      '2',
      '--json',
    ]);
    assert.equal(code, 0);
    const last = out.trim().split('\n').pop() as string;
    const result = JSON.parse(last) as Record<string, number>;
    for (const key of ['ir_gflops', 'raw_gflops', 'ratio'])
      assert.ok(result[key] > 0, `${key} = ${result[key]}`);
    assert.ok(Math.abs(result.ratio - result.ir_gflops / result.raw_gflops) < 1e-9);
    assert.equal(result.flops, 2 * 32 * 32 * 32 * 2);
  });

  it('rejects unknown options and benchmarks with exit code 2', async () => {
    assert.equal((await capture(['bench', 'engine', '--size', '3'])).code, 2);
    assert.match((await capture(['bench', 'engine', '--size', '3'])).err, /unknown option --size/);
    assert.equal((await capture(['bench', 'nothing'])).code, 2);
    assert.equal((await capture(['bench', 'engine', '--reps', 'x'])).code, 2);
  });
});
