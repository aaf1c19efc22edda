// `velodiff generate --tgate … --deep-cache-interval N --deep-cache-branch B` on a Stable Diffusion
// folder: the PNG equals the library pipeline's image for the same options, and differs from the
// plain one (the flags reach the pipeline).
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';

import type { StableDiffusionRunOptions } from '../../src/pipelines/index.js';
import { Runtime } from '../../src/runtime/runtime.js';
import { assertMaxAbsError } from '../compare.js';
import { tinyPixArtPipeline } from '../fixtures/tiny-pixart-pipeline.js';
import { sdLibraryRgb, tinySdPipeline } from '../fixtures/tiny-sd-pipelines.js';
import { pngRgb } from '../helpers.js';
import { captureCli } from './capture.js';

const runtime = new Runtime({ worker: false, threads: 1 });
after(() => runtime.dispose());

describe('velodiff generate with T-GATE and DeepCache on a Stable Diffusion folder', () => {
  it('--tgate 2 --deep-cache-interval 2 --deep-cache-branch 1 gives the library run with those options', async () => {
    const { dir } = await tinySdPipeline();
    const outDir = await mkdtemp(join(tmpdir(), 'velodiff-gen-unet-acc-'));
    const path = join(outDir, 'a.png');
    const r = await captureCli([
      'generate',
      'a cat',
      '--model',
      dir,
      '--steps',
      '4',
      '--seed',
      '5',
      '--width',
      '32',
      '--height',
      '32',
      '--tgate',
      '2',
      '--deep-cache-interval',
      '2',
      '--deep-cache-branch',
      '1',
      '--out',
      path,
    ]);
    assert.equal(r.code, 0, r.err);
    const base: StableDiffusionRunOptions = {
      prompt: 'a cat',
      numInferenceSteps: 4,
      seed: 5,
      width: 32,
      height: 32,
    };
    const expected = await sdLibraryRgb(runtime, dir, {
      ...base,
      tgate: { gateStep: 2 },
      deepCache: { cacheInterval: 2, cacheBranchId: 1 },
    });
    const written = pngRgb(readFileSync(path));
    assertMaxAbsError(written, expected, 1, 'PNG');
    assert.notDeepEqual(
      written,
      await sdLibraryRgb(runtime, dir, base),
      'the accelerated image differs from the plain one',
    );
  });

  it('refuses --deep-cache-branch alone and DeepCache on PixArt folders', async () => {
    const { dir } = await tinySdPipeline();
    const alone = await captureCli([
      'generate',
      'a cat',
      '--model',
      dir,
      '--steps',
      '1',
      '--deep-cache-branch',
      '1',
    ]);
    assert.equal(alone.code, 2);
    assert.match(alone.err, /--deep-cache-branch needs --deep-cache-interval/);
    const pixart = await tinyPixArtPipeline();
    const r = await captureCli([
      'generate',
      'a cat',
      '--model',
      pixart,
      '--steps',
      '1',
      '--deep-cache-interval',
      '2',
    ]);
    assert.equal(r.code, 2);
    assert.match(r.err, /--deep-cache-interval works on UNet models/);
  });
});
