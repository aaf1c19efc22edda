// `velodiff generate --highres` on the tiny FLUX and PixArt folders: the PNG is the base size × the
// stages' scales and equals the library's staged run for the same options (--attention in the refine
// stages), and bad values, image-to-image flags and other pipelines are refused before anything runs.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import type { FluxRunOptions, PixArtRunOptions } from '../../src/pipelines/index.js';
import { FluxPipeline, PixArtPipeline } from '../../src/pipelines/index.js';
import { Runtime } from '../../src/runtime/runtime.js';
import { tinyFluxPipeline } from '../fixtures/tiny-flux-pipeline.js';
import { tinyPixArtPipeline } from '../fixtures/tiny-pixart-pipeline.js';
import { tinySd3Pipeline } from '../fixtures/tiny-sd3-pipeline.js';
import { tinySdPipeline } from '../fixtures/tiny-sd-pipelines.js';
import { imageRgb, pngRgb } from '../helpers.js';
import { captureCli } from './capture.js';

const runtime = new Runtime({ worker: false, threads: 1 });
after(() => runtime.dispose());

/** Width and height from a PNG's IHDR chunk. */
function pngSize(png: Buffer): [number, number] {
  return [png.readUInt32BE(16), png.readUInt32BE(20)];
}

describe('velodiff generate --highres', () => {
  let flux: string;
  let pixart: string;
  let outDir: string;
  before(async () => {
    flux = await tinyFluxPipeline();
    pixart = await tinyPixArtPipeline();
    outDir = await mkdtemp(join(tmpdir(), 'velodiff-gen-highres-'));
  });

  it('FLUX: --highres 2:0.5 --highres-steps 4 --attention clear:2 writes base × 2, equal to run({ highres })', async () => {
    const path = join(outDir, 'flux.png');
    const r = await captureCli([
      'generate',
      'a red heart',
      '--model',
      flux,
      '--width',
      '12',
      '--height',
      '8',
      '--steps',
      '2',
      '--highres',
      '2:0.5',
      '--highres-steps',
      '4',
      '--highres-guidance',
      '5',
      '--attention',
      'clear:2',
      '--seed',
      '3',
      '--threads',
      '1',
      '--out',
      path,
    ]);
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /wrote .*flux\.png \(24×16\)/);
    const png = readFileSync(path);
    assert.deepEqual(pngSize(png), [24, 16]);
    const options: FluxRunOptions = {
      prompt: 'a red heart',
      width: 12,
      height: 8,
      numInferenceSteps: 2,
      seed: 3,
      highres: {
        scale: 2,
        strength: 0.5,
        numInferenceSteps: 4,
        guidanceScale: 5,
        attention: { kind: 'clear', radius: 2, downFactor: 1 },
      },
    };
    const pipe = await FluxPipeline.fromPretrained(flux, { runtime, onWarning: () => {} });
    try {
      assert.deepEqual(pngRgb(png), imageRgb((await pipe.run(options)).images!));
    } finally {
      await pipe.close();
    }
  });

  it('PixArt: --highres 2,2 --attention clear:2 writes base × 4, equal to run({ highres })', async () => {
    const path = join(outDir, 'pixart.png');
    const argv = ['generate', 'a red heart', '--model', pixart, '--width', '8', '--height', '8'];
    const r = await captureCli([
      ...argv,
      '--steps',
      '3',
      '--highres',
      '2,2:0.5',
      '--attention',
      'clear:2',
      '--seed',
      '4',
      '--threads',
      '1',
      '--out',
      path,
    ]);
    assert.equal(r.code, 0, r.err);
    const png = readFileSync(path);
    assert.deepEqual(pngSize(png), [32, 32]);
    const clear = { kind: 'clear', radius: 2, downFactor: 1 } as const;
    const options: PixArtRunOptions = {
      prompt: 'a red heart',
      width: 8,
      height: 8,
      numInferenceSteps: 3,
      numImagesPerPrompt: 1,
      seed: 4,
      highres: [
        { scale: 2, attention: clear },
        { scale: 2, strength: 0.5, attention: clear },
      ],
    };
    const pipe = await PixArtPipeline.fromPretrained(pixart, { runtime, onWarning: () => {} });
    try {
      assert.deepEqual(pngRgb(png), imageRgb((await pipe.run(options)).images!));
    } finally {
      await pipe.close();
    }
  });

  it('errors: bad stages, the flags beside it, other pipelines', async () => {
    const sd3 = await tinySd3Pipeline();
    const sd = (await tinySdPipeline()).dir;
    const run = (dir: string, extra: string[]) =>
      captureCli(['generate', 'a cat', '--model', dir, '--steps', '1', '--threads', '1', ...extra]);
    const cases: [string, string[], RegExp][] = [
      [flux, ['--highres', '1'], /--highres "1": highres\.scale must be an integer ≥ 2 .*got 1/],
      [flux, ['--highres', '2.5'], /highres\.scale must be an integer ≥ 2/],
      [
        flux,
        ['--highres', '2:1.5'],
        /--highres "2:1.5": highres\.strength must be a number in \(0, 1\], got 1\.5/,
      ],
      [flux, ['--highres', '2,1'], /highres\[1\]\.scale must be an integer ≥ 2/],
      [flux, ['--highres', 'x'], /--highres "x": expected SCALE\[:STRENGTH\] per stage, .*got "x"/],
      [flux, ['--highres', '2:0.5:1'], /expected SCALE\[:STRENGTH\] per stage/],
      [flux, ['--highres', '2', '--highres-steps', '0'], /highres\.numInferenceSteps must be an integer ≥ 1/],
      [flux, ['--highres-steps', '4'], /--highres-steps needs --highres SCALE/],
      [flux, ['--highres', '2', '--strength', '0.5'], /--strength does not go with --highres/],
      [flux, ['--highres', '2', '--attention', 'clear:0'], /radius must be an integer ≥ 1/],
      [
        sd3,
        ['--highres', '2'],
        /--highres does not apply to StableDiffusion3Pipeline: CLEAR's staged recipe/,
      ],
      [sd, ['--highres', '2'], /--highres runs on FLUX and PixArt folders, not StableDiffusionPipeline/],
    ];
    for (const [dir, extra, message] of cases) {
      const r = await run(dir, extra);
      assert.notEqual(r.code, 0, extra.join(' '));
      assert.match(r.err, message, extra.join(' '));
    }
  });
});
