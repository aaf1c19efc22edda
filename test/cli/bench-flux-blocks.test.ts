/**
 * `velodiff bench flux-blocks` (bench/flux-blocks.ts): the kept-score count against a pair-by-pair
 * loop over CLEAR's definition; the executed FLOPs of full attention against (L + N)² · 4 · D and of
 * the pair against the block Linears written out; the rows' derived columns from their own fields;
 * and the errors for bad options. No timing is asserted beyond being positive.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, describe, it } from 'node:test';

import type { FluxBlocksResult } from '../../bench/flux-blocks.js';
import { usefulScores } from '../../bench/flux-blocks.js';
import { captureCli } from './capture.js';

/** Kept scores by CLEAR's definition, one (query, key) pair at a time over [text | image | pooled]. */
function scoresByPairs(radius: number | null, downFactor: number, side: number, text: number): number {
  const image = side * side;
  const pooled = radius !== null && downFactor > 1 ? (side / downFactor) ** 2 : 0;
  let kept = 0;
  for (let q = 0; q < text + image; q++) {
    for (let k = 0; k < text + image + pooled; k++) {
      const isTextQuery = q < text;
      const isPooledKey = k >= text + image;
      if (radius === null) {
        if (!isPooledKey) kept++;
        continue;
      }
      if (isTextQuery) {
        // Text queries attend the text and image keys, not the pooled ones.
        if (!isPooledKey) kept++;
      } else if (k < text || isPooledKey) {
        kept++;
      } else {
        const [qy, qx] = [Math.floor((q - text) / side), (q - text) % side];
        const [ky, kx] = [Math.floor((k - text) / side), (k - text) % side];
        if ((qy - ky) ** 2 + (qx - kx) ** 2 < radius * radius) kept++;
      }
    }
  }
  return kept;
}

describe('bench/flux-blocks.ts usefulScores', () => {
  for (const [radius, downFactor, side, text] of [
    [null, 1, 5, 3],
    [1, 1, 4, 0],
    [2, 1, 7, 5],
    [3, 1, 6, 2],
    [2.5, 1, 9, 0],
    [4, 2, 8, 4],
    [3, 4, 8, 1],
    [20, 1, 6, 2],
  ] as const) {
    it(`r = ${radius ?? 'full'}, d = ${downFactor}, ${side}×${side} grid, ${text} text tokens`, () => {
      const variant =
        radius === null ? ({ kind: 'full' } as const) : ({ kind: 'clear', radius, downFactor } as const);
      assert.equal(usefulScores(variant, side, text), scoresByPairs(radius, downFactor, side, text));
    });
  }
});

describe('velodiff bench flux-blocks', () => {
  const heads = 2;
  const headDim = 32;
  const dim = heads * headDim;
  const text = 8;

  const results = join(mkdtempSync(join(tmpdir(), 'velodiff-flux-blocks-test-')), 'cases.jsonl');
  after(() => rmSync(dirname(results), { recursive: true, force: true }));
  const run = (extra: string[] = []) =>
    captureCli([
      'bench',
      'flux-blocks',
      '--heads',
      String(heads),
      '--head-dim',
      String(headDim),
      '--tokens',
      '64',
      '--text',
      String(text),
      '--variants',
      'full,clear:3,clear:2:4',
      '--reps',
      '1',
      '--warmups',
      '0',
      '--threads',
      '1',
      '--results',
      results,
      '--json',
      ...extra,
    ]);
  const parse = (out: string): FluxBlocksResult =>
    JSON.parse(out.trim().split('\n').pop() as string) as FluxBlocksResult;
  /** A figure of a case that ran. */
  const num = (x: number | null): number => {
    assert.equal(typeof x, 'number');
    return x as number;
  };

  it('runs each case in a process of its own; FLOPs as lowered, rates and speed-ups from the rows', async () => {
    const r = await run();
    assert.equal(r.code, 0, r.err);
    assert.match(r.err, /Double \+ single block pair/);
    assert.match(r.err, /Attention kernel alone/);
    const result = parse(r.out);
    assert.deepEqual(
      result.rows.map((row) => `${row.scope} ${row.kind}`),
      ['pair full', 'pair clear:3', 'pair clear:2:4', 'kernel full', 'kernel clear:3', 'kernel clear:2:4'],
    );
    const tokens = text + 64;
    for (const row of result.rows) {
      assert.equal(row.error, undefined);
      const [ms, gflop, gflops, matmul] = [
        num(row.ms),
        num(row.gflop),
        num(row.gflops),
        num(row.matmul_gflops),
      ];
      assert.ok(ms > 0 && matmul > 0 && num(row.peak_rss_mb) > 0);
      assert.ok(Math.abs(gflops - (gflop * 1e3) / ms) <= 1e-9 * gflops);
      assert.ok(Math.abs(num(row.fraction) - gflops / matmul) <= 1e-12);
      const full = result.rows.find((x) => x.scope === row.scope && x.kind === 'full');
      assert.ok(full && Math.abs(num(row.speedup) - num(full.ms) / ms) <= 1e-12);
    }
    const kernel = result.rows.filter((row) => row.scope === 'kernel');
    // Full attention: q·kᵀ and p·v, 2 · 2 · (L + N)² · D.
    assert.equal(num(kernel[0].gflop) * 1e9, 4 * tokens * tokens * dim);
    assert.equal(kernel[0].useful_gflop, kernel[0].gflop);
    for (const row of kernel.slice(1)) {
      // The lowering scores padding slots and keys beyond the circle (on a grid this small, every
      // key under a mask): executed ≥ kept.
      assert.ok(num(row.useful_gflop) <= num(row.gflop) + 1e-12, `${row.kind}: kept ≤ executed`);
    }
    assert.equal(
      kernel[1].useful_gflop,
      (4 * dim * usefulScores({ kind: 'clear', radius: 3, downFactor: 1 }, 8, text)) / 1e9,
    );
    // The pair with full attention: the Linears on tokens written out, the two attention products,
    // and the embedders and proj_out around the blocks.
    const pair = result.rows[0];
    const linears =
      // double block: q, k, v, out and the feed-forward (4 D² + 8 D²) per stream, on N and on L tokens
      2 * 12 * dim * dim * tokens +
      // single block: q, k, v (3 D²), proj_mlp (4 D²), proj_out (5 D²) on L + N tokens
      2 * 12 * dim * dim * tokens +
      // x_embedder (64 → D), context_embedder (4096 → D), proj_out (D → 64)
      2 * 64 * dim * 64 +
      2 * 4096 * dim * text +
      2 * dim * 64 * 64;
    const modulations =
      // norm1, norm1_context (6 D each), the single block's norm (3 D), norm_out (2 D), the three
      // embedders' two Linears (256 → D → D, 256 → D → D, 768 → D → D) at batch 1
      2 * dim * (6 + 6 + 3 + 2) * dim + 2 * (256 * dim + dim * dim) * 2 + 2 * (768 * dim + dim * dim);
    assert.equal(num(pair.gflop) * 1e9, linears + modulations + 2 * num(kernel[0].gflop) * 1e9);

    // The same command with the same results file reuses every case: the same rows, nothing run.
    const again = await run();
    assert.equal(again.code, 0, again.err);
    assert.equal((again.err.match(/^reusing /gm) ?? []).length, 6);
    assert.deepEqual(parse(again.out).rows, result.rows);
  });

  it('a failed case is a row saying why, and a results file line that is not a case is an error naming it', async () => {
    // The file holds every case of the run above; make one of them a failure, as a killed process records it.
    const lines = readFileSync(results, 'utf8').trim().split('\n');
    const entry = JSON.parse(lines[1]) as { key: string };
    lines[1] = JSON.stringify({ key: entry.key, result: { error: 'killed by SIGKILL' } });
    writeFileSync(results, `${lines.join('\n')}\n`);
    const r = await run();
    assert.equal(r.code, 0, r.err);
    assert.match(r.err, /pair clear:3 at 64 image tokens: killed by SIGKILL/);
    const failed = parse(r.out).rows[1];
    assert.equal(failed.kind, 'clear:3');
    assert.equal(failed.error, 'killed by SIGKILL');
    assert.equal(failed.ms, null);
    assert.equal(failed.speedup, null);
    assert.match(r.err, /CLEAR r=3 +64 +failed/);

    writeFileSync(results, `${lines[0]}\n{not json\n`);
    const bad = await run();
    assert.equal(bad.code, 2);
    assert.match(bad.err, /line 2 of .*cases\.jsonl is not JSON/);
  });

  it('refuses a run without full, non-square tokens, a pooling that does not tile the grid, a bad scope', async () => {
    const cases: [string[], RegExp][] = [
      [['--variants', 'clear:8'], /--variants must include full/],
      [['--tokens', '4000'], /image tokens must be square numbers/],
      [
        ['--tokens', '36', '--variants', 'full,clear:2:4'],
        /clear:2:4 pools 4 × 4 cells, which do not tile the 6 × 6 grid/,
      ],
      [['--variants', 'full,clear:x'], /a variant is full, clear:R or clear:R:D/],
      [['--scope', 'layer'], /--scope must be pair, kernel or both, got "layer"/],
      [['--head-dim', '48'], /--head-dim must be a multiple of 32/],
    ];
    for (const [args, message] of cases) {
      const r = await captureCli(['bench', 'flux-blocks', ...args]);
      assert.equal(r.code, 2, `${args.join(' ')}: ${r.err}`);
      assert.match(r.err, message);
    }
  });
});
