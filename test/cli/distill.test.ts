/**
 * `velodiff distill clear` on the tiny PixArt pipeline as teacher and a 4-image folder of captions:
 * it runs, saves CLEAR's weights file, and `--resume` at the end is accepted; bad arguments say what
 * was expected.
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { encodePng } from '../../src/io/png.js';
import { tinyPixArtPipeline } from '../fixtures/tiny-pixart-pipeline.js';
import { captureCli } from './capture.js';

let work: string;
let teacher: string;
let folder: string;

before(async () => {
  work = await mkdtemp(join(tmpdir(), 'velodiff-distill-cli-'));
  teacher = await tinyPixArtPipeline();
  folder = join(work, 'images');
  await mkdir(folder, { recursive: true });
  const lines: string[] = [];
  for (let i = 0; i < 4; i++) {
    await writeFile(join(folder, `${i}.png`), encodePng(new Uint8Array(16 * 16 * 3).fill(40 * i), 16, 16));
    lines.push(
      JSON.stringify({ file_name: `${i}.png`, text: ['red heart', 'dog face', 'rocket', 'pizza'][i] }),
    );
  }
  await writeFile(join(folder, 'metadata.jsonl'), `${lines.join('\n')}\n`);
});
after(async () => {
  await rm(work, { recursive: true, force: true });
});

describe('velodiff distill clear', () => {
  it('distils a CLEAR student and writes its weights file', async () => {
    const out = join(work, 'run');
    const argv = ['distill', 'clear', '--radius', '2', '--teacher', teacher, '--data', folder];
    const r = await captureCli([
      ...argv,
      '--steps',
      '2',
      '--batch-size',
      '2',
      '--out',
      out,
      '--threads',
      '1',
    ]);
    assert.equal(r.code, 0, r.err);
    assert.match(r.err, /training distill-clear: 2 steps of 2 images/);
    assert.ok(existsSync(join(out, 'model', 'clear_local_2.safetensors')));
    assert.ok(existsSync(join(out, 'teacher-samples', 'manifest.json')));
  });

  it('bad arguments say what was expected', async () => {
    let r = await captureCli(['distill', 'sharpen', '--radius', '2']);
    assert.equal(r.code, 2);
    assert.match(r.err, /distill: expected a method \(clear\), found "sharpen"/);
    r = await captureCli(['distill', 'clear']);
    assert.equal(r.code, 2);
    assert.match(r.err, /give --radius R/);
    r = await captureCli(['distill', 'clear', '--radius', '0.5', '--teacher', teacher, '--data', folder]);
    assert.notEqual(r.code, 0);
    assert.match(r.err, /radius: expected a window radius ≥ 1 \(latent tokens\), found 0\.5/);
  });
});
