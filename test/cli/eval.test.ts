/**
 * `velodiff eval` end to end on the tiny PixArt pipeline (16×16 images) and a tiny random emoji
 * classifier: the table on stdout, progress on stderr, and the contract's JSON as the last line.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { main } from '../../src/cli/main.js';
import { loadEmojiDataset } from '../../src/train/data/emoji-dataset.js';
import { tinyEmojiClassifier } from '../fixtures/tiny-emoji-classifier.js';
import { tinyPixArtPipeline } from '../fixtures/tiny-pixart-pipeline.js';
import { testSeed } from '../random.js';

async function capture(argv: string[]): Promise<{ code: number; out: string[]; err: string }> {
  const out: string[] = [];
  const err: string[] = [];
  const log = console.log;
  const error = console.error;
  const write = process.stderr.write.bind(process.stderr);
  console.log = (...a: unknown[]) => void out.push(a.join(' '));
  console.error = (...a: unknown[]) => void err.push(a.join(' '));
  process.stderr.write = ((chunk: string | Uint8Array) => (
    err.push(String(chunk)),
    true
  )) as typeof process.stderr.write;
  try {
    return { code: await main(argv), out, err: err.join('') };
  } finally {
    console.log = log;
    console.error = error;
    process.stderr.write = write;
  }
}

test('velodiff eval --json: a table, then the contract’s keys with values in range as the last line', async () => {
  const labelNames = (await loadEmojiDataset()).labelNames;
  assert.ok(labelNames);
  const classifier = await tinyEmojiClassifier(labelNames, testSeed('eval command classifier'));
  const model = await tinyPixArtPipeline();
  const r = await capture([
    'eval',
    '--model',
    model,
    '--classifier',
    classifier,
    '--samples',
    '6',
    '--steps',
    '2',
    '--batch',
    '4',
    '--seed',
    '3',
    '--json',
    '--threads',
    '1',
  ]);
  assert.equal(r.code, 0, r.err);
  assert.match(r.err, /eval: generating/);
  assert.match(r.out.join('\n'), /generated\s+\d/);
  assert.match(r.out.join('\n'), /real \(ceiling\)/);
  const json = JSON.parse(r.out[r.out.length - 1]) as Record<string, number>;
  assert.deepEqual(Object.keys(json).slice(0, 5), [
    'fed',
    'alignment',
    'ms_per_image',
    'real_fed',
    'real_alignment',
  ]);
  for (const key of ['fed', 'real_fed', 'ms_per_image'])
    assert.ok(Number.isFinite(json[key]) && json[key] >= 0, `${key} = ${json[key]}`);
  for (const key of ['alignment', 'real_alignment', 'subcategory_alignment', 'real_subcategory_alignment']) {
    assert.ok(json[key] >= 0 && json[key] <= 1, `${key} = ${json[key]}`);
  }
  assert.equal(json.samples, 6);
});

test('velodiff eval: options are checked before anything loads', async () => {
  const help = await capture(['eval', '--help']);
  assert.equal(help.code, 0);
  assert.match(help.out.join('\n'), /NOT ImageNet FID/);
  const bad = await capture(['eval', '--samples', 'many']);
  assert.equal(bad.code, 2);
  assert.match(bad.err, /--samples expects an integer/);
});
