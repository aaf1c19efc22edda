import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { assertMaxAbsError } from '../compare.js';
import { captureCli } from './capture.js';

describe('velodiff bench engine', () => {
  it('prints one JSON object with ir_gflops, raw_gflops and their ratio as the last line', async () => {
    const { code, out } = await captureCli([
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
    assertMaxAbsError([result.ratio], [result.ir_gflops / result.raw_gflops], 1e-9, 'ratio');
    assert.equal(result.flops, 2 * 32 * 32 * 32 * 2);
  });

  it('rejects unknown options and benchmarks with exit code 2', async () => {
    assert.equal((await captureCli(['bench', 'engine', '--size', '3'])).code, 2);
    assert.match((await captureCli(['bench', 'engine', '--size', '3'])).err, /unknown option --size/);
    assert.equal((await captureCli(['bench', 'nothing'])).code, 2);
    assert.equal((await captureCli(['bench', 'engine', '--reps', 'x'])).code, 2);
  });
});

describe('velodiff bench attention', () => {
  it('runs every kind in one process and prints {tokens, results: [{kind, ms, …}]} as the last line', async () => {
    const { code, out } = await captureCli(['bench', 'attention', '--tokens', '64', '--reps', '1', '--json']);
    assert.equal(code, 0);
    const result = JSON.parse(out.trim().split('\n').pop() as string) as {
      tokens: number;
      results: { kind: string; ms: number; attention_ms: number; gflop: number; attention_gflop: number }[];
    };
    assert.equal(result.tokens, 64);
    assert.deepEqual(
      result.results.map((r) => r.kind),
      ['full', 'clear:8', 'clear:8:4', 'clear:16', 'clear:16:4', 'clear:32', 'clear:32:4', 'linfusion'],
    );
    for (const r of result.results) {
      assert.ok(r.ms > 0 && r.attention_ms > 0, `${r.kind}: ${r.ms} / ${r.attention_ms} ms`);
      // The layer adds the four 64·1152² projections to the kernel's FLOPs.
      assert.ok(r.gflop > r.attention_gflop, r.kind);
    }
    const full = result.results[0];
    assert.equal(full.attention_gflop, (4 * 64 * 64 * 1152) / 1e9);
    assert.equal(full.gflop, (4 * 64 * 64 * 1152 + 8 * 64 * 1152 * 1152) / 1e9);
  });

  it('rejects token counts that are not square and unknown scopes', async () => {
    const bad = await captureCli(['bench', 'attention', '--tokens', '100,50']);
    assert.equal(bad.code, 2);
    assert.match(bad.err, /square numbers/);
    const scope = await captureCli(['bench', 'attention', '--scope', 'all']);
    assert.equal(scope.code, 2);
    assert.match(scope.err, /--scope must be layer, kernel or both/);
    const warmups = await captureCli(['bench', 'attention', '--warmups', '-1']);
    assert.equal(warmups.code, 2);
    assert.match(warmups.err, /--warmups must be ≥ 0/);
  });
});

describe('velodiff bench tgate', () => {
  it('rejects bad sizes before building anything', async () => {
    const bad = await captureCli(['bench', 'tgate', '--tokens', '10']);
    assert.equal(bad.code, 2);
    assert.match(bad.err, /square number/);
    assert.equal((await captureCli(['bench', 'tgate', '--layers', '0'])).code, 2);
  });
});

describe('velodiff bench tgate --json', () => {
  it('prints {steps: 25, gate_step: 8, baseline_ms, tgate_ms, speedup} as the last line', async () => {
    const { code, out } = await captureCli([
      'bench',
      'tgate',
      '--tokens',
      '4',
      '--layers',
      '1',
      '--reps',
      '1',
      '--json',
    ]);
    assert.equal(code, 0);
    const result = JSON.parse(out.trim().split('\n').pop() as string) as Record<string, number | null>;
    assert.equal(result.steps, 25);
    assert.equal(result.gate_step, 8);
    const { baseline_ms: base, tgate_ms: gated, speedup } = result as Record<string, number>;
    assert.ok(base > 0 && gated > 0, `${base} / ${gated}`);
    assertMaxAbsError([speedup], [base / gated], 1e-9, 'speedup');
    // After the gate the CFG batch and the cross-attention are gone: fewer FLOPs, whatever the timing.
    assert.ok((result.flop_ratio as number) > 1.5, String(result.flop_ratio));
    assert.equal(result.v2_ms, null);
  });
});
