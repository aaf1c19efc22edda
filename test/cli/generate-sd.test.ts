// `velodiff generate` with Stable Diffusion folders: --negative-prompt, --clip-skip, --guidance-rescale,
// --init-image with --strength; each PNG equals the library pipeline's image for the same options.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';

import { encodePng } from '../../src/io/png.js';
import { readImageFile } from '../../src/io/image.js';
import { Runtime } from '../../src/runtime/runtime.js';
import { assertMaxAbsError } from '../compare.js';
import { sdLibraryRgb, tinySdPipeline } from '../fixtures/tiny-sd-pipelines.js';
import { pngRgb } from '../helpers.js';
import { captureCli } from './capture.js';
import { tinyPixArtPipeline } from '../fixtures/tiny-pixart-pipeline.js';

const runtime = new Runtime({ worker: false, threads: 1 });
after(() => runtime.dispose());

describe('velodiff generate with Stable Diffusion folders', () => {
  it('text-to-image with --negative-prompt --clip-skip --guidance-rescale, and --init-image --strength', async () => {
    const { dir } = await tinySdPipeline();
    const outDir = await mkdtemp(join(tmpdir(), 'velodiff-gen-sd-'));
    const path = join(outDir, 'a.png');
    const common = ['generate', 'a cat', '--model', dir, '--steps', '2', '--seed', '3'];
    const r = await captureCli([
      ...common,
      '--negative-prompt',
      'blurry',
      '--clip-skip',
      '1',
      '--guidance-rescale',
      '0.7',
      '--width',
      '32',
      '--height',
      '32',
      '--out',
      path,
    ]);
    assert.equal(r.code, 0, r.err);
    assert.match(r.err, /step 2\/2/);
    const expected = await sdLibraryRgb(runtime, dir, {
      prompt: 'a cat',
      negativePrompt: 'blurry',
      clipSkip: 1,
      guidanceRescale: 0.7,
      numInferenceSteps: 2,
      seed: 3,
      width: 32,
      height: 32,
    });
    assertMaxAbsError(pngRgb(readFileSync(path)), expected, 1, 'text-to-image PNG');

    // image-to-image from a PNG file: the output keeps the file's size.
    const init = join(outDir, 'init.png');
    const rgb = Uint8Array.from({ length: 32 * 32 * 3 }, (_, i) => (i * 37) % 256);
    await writeFile(init, encodePng(rgb, 32, 32));
    const edited = join(outDir, 'b.png');
    const r2 = await captureCli([...common, '--init-image', init, '--strength', '0.5', '--out', edited]);
    assert.equal(r2.code, 0, r2.err);
    assert.match(r2.err, /step 1\/1/, 'int(2 · 0.5) = 1 step');
    const expected2 = await sdLibraryRgb(runtime, dir, {
      prompt: 'a cat',
      image: await readImageFile(init),
      strength: 0.5,
      numInferenceSteps: 2,
      seed: 3,
    });
    assertMaxAbsError(pngRgb(readFileSync(edited)), expected2, 1, 'image-to-image PNG');

    const bad = await captureCli([...common, '--strength', '0.5', '--out', path]);
    assert.equal(bad.code, 2);
    assert.match(bad.err, /--strength needs --init-image/);
  });

  it('rejects Stable Diffusion flags on PixArt folders', async () => {
    const dir = await tinyPixArtPipeline();
    const r = await captureCli(['generate', 'a cat', '--model', dir, '--clip-skip', '1', '--steps', '1']);
    assert.equal(r.code, 2);
    assert.match(r.err, /--clip-skip applies to Stable Diffusion folders, not PixArtAlphaPipeline/);
  });
});
