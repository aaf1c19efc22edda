/**
 * `velodiff eval` end to end on the tiny PixArt pipeline (16×16 images) and a tiny random emoji
 * classifier: the table on stdout, progress on stderr, and the contract's JSON as the last line.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { loadEmojiDataset } from '../../src/train/data/emoji-dataset.js';
import { tinyEmojiClassifier } from '../fixtures/tiny-emoji-classifier.js';
import { tinyPixArtPipeline } from '../fixtures/tiny-pixart-pipeline.js';
import { testSeed } from '../random.js';
import { captureCli } from './capture.js';

test('velodiff eval --json: a table, then the contract’s keys with values in range as the last line', async () => {
  const labelNames = (await loadEmojiDataset()).labelNames;
  assert.ok(labelNames);
  const classifier = await tinyEmojiClassifier(labelNames, testSeed('eval command classifier'));
  const model = await tinyPixArtPipeline();
  const r = await captureCli([
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
  assert.match(r.out, /generated\s+\d/);
  assert.match(r.out, /real \(ceiling\)/);
  const json = JSON.parse(r.out.trimEnd().split('\n').at(-1) ?? '') as Record<string, number>;
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
  const help = await captureCli(['eval', '--help']);
  assert.equal(help.code, 0);
  assert.match(help.out, /NOT ImageNet FID/);
  const bad = await captureCli(['eval', '--samples', 'many']);
  assert.equal(bad.code, 2);
  assert.match(bad.err, /--samples expects an integer/);
});

test('velodiff eval --accel tgate is --tgate with the authors’ setting scaled to the steps (gate 3 of 5)', async () => {
  const labelNames = (await loadEmojiDataset()).labelNames;
  assert.ok(labelNames);
  const classifier = await tinyEmojiClassifier(labelNames, testSeed('eval accel classifier'));
  const model = await tinyPixArtPipeline();
  const base = ['eval', '--model', model, '--classifier', classifier, '--samples', '4', '--steps', '5'];
  const run = async (extra: string[]): Promise<Record<string, number>> => {
    const r = await captureCli([...base, ...extra, '--json', '--threads', '1']);
    assert.equal(r.code, 0, r.err);
    return JSON.parse(r.out.trimEnd().split('\n').at(-1) ?? '') as Record<string, number>;
  };
  const accel = await run(['--accel', 'tgate']);
  const explicit = await run(['--tgate', '3,3,1,2']);
  const plain = await run([]);
  for (const key of ['fed', 'alignment', 'subcategory_alignment'])
    assert.equal(accel[key], explicit[key], key);
  // The gate drops CFG after step 3 of 5, so the images, and with them FED, differ from the plain run.
  assert.notEqual(accel.fed, plain.fed);
  const missing = await captureCli([...base, '--accel', 'flash', '--threads', '1']);
  assert.notEqual(missing.code, 0);
  assert.match(missing.err, /--accel flash needs the students of .*: give --students DIR/);
});
