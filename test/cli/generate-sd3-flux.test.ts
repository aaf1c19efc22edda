// `velodiff generate` with SD3 and FLUX folders (tiny, with their text encoders): the PNG has the
// requested size, a seed gives the same bytes twice, each PNG equals the library pipeline's image for
// the same options, FLUX's --attention clear:R reaches the transformer, and the flags of the PixArt
// and UNet paths are refused with the pipeline's class named.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { cp, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { readImageFile } from '../../src/io/image.js';
import { encodePng } from '../../src/io/png.js';
import type { FluxRunOptions, StableDiffusion3RunOptions } from '../../src/pipelines/index.js';
import { FluxPipeline, StableDiffusion3Pipeline } from '../../src/pipelines/index.js';
import { hostTensor } from '../../src/runtime/host-tensor.js';
import { Runtime } from '../../src/runtime/runtime.js';
import { assertMaxAbsError } from '../compare.js';
import { tinyFluxPipeline } from '../fixtures/tiny-flux-pipeline.js';
import { tinySd3Pipeline } from '../fixtures/tiny-sd3-pipeline.js';
import { imageRgb, pngRgb, readAllTensors } from '../helpers.js';
import { randomLoraFor, safetensorsIn, writeDiffusers, writeMergedCopy, writePeft } from '../lora/fixture.js';
import { seededUniform, testSeed } from '../random.js';
import { captureCli } from './capture.js';

const runtime = new Runtime({ worker: false, threads: 1 });
after(() => runtime.dispose());

/** Width and height from a PNG's IHDR chunk. */
function pngSize(png: Buffer): [number, number] {
  return [png.readUInt32BE(16), png.readUInt32BE(20)];
}

async function sd3LibraryRgb(dir: string, options: StableDiffusion3RunOptions): Promise<Uint8Array> {
  const pipe = await StableDiffusion3Pipeline.fromPretrained(dir, { runtime, onWarning: () => {} });
  try {
    return imageRgb((await pipe.run(options)).images!);
  } finally {
    await pipe.close();
  }
}

async function fluxLibraryRgb(dir: string, options: FluxRunOptions): Promise<Uint8Array> {
  const pipe = await FluxPipeline.fromPretrained(dir, { runtime, onWarning: () => {} });
  try {
    return imageRgb((await pipe.run(options)).images!);
  } finally {
    await pipe.close();
  }
}

/** A random RGB PNG of size width × height, for --init-image. */
async function writeInitImage(path: string, width: number, height: number): Promise<void> {
  const random = seededUniform(testSeed('generate sd3 flux init image'));
  const rgb = Uint8Array.from({ length: width * height * 3 }, () => Math.floor(random() * 256));
  await writeFile(path, encodePng(rgb, width, height));
}

describe('velodiff generate with SD3 and FLUX folders', () => {
  let sd3: string;
  let flux: string;
  let outDir: string;
  before(async () => {
    sd3 = await tinySd3Pipeline();
    flux = await tinyFluxPipeline();
    outDir = await mkdtemp(join(tmpdir(), 'velodiff-gen-sd3-flux-'));
  });

  it('SD3: CFG with --negative-prompt --clip-skip, a seed gives the same PNG, equal to run(); --init-image --strength', async () => {
    const path = join(outDir, 'sd3.png');
    const args = [
      'generate',
      'a cat',
      '--model',
      sd3,
      '--negative-prompt',
      'blurry',
      '--clip-skip',
      '1',
      '--guidance',
      '5',
      '--steps',
      '2',
      '--seed',
      '7',
      '--width',
      '32',
      '--height',
      '24',
      '--threads',
      '1',
    ];
    const r = await captureCli([...args, '--out', path]);
    assert.equal(r.code, 0, r.err);
    assert.match(r.err, /step 2\/2/);
    assert.match(r.out, /\(32×24\)/);
    const png = readFileSync(path);
    assert.deepEqual(pngSize(png), [32, 24]);
    const again = join(outDir, 'sd3-again.png');
    assert.equal((await captureCli([...args, '--out', again])).code, 0);
    assert.ok(readFileSync(again).equals(png), 'the same seed gives the same bytes');
    const expected = await sd3LibraryRgb(sd3, {
      prompt: 'a cat',
      negativePrompt: 'blurry',
      clipSkip: 1,
      guidanceScale: 5,
      numInferenceSteps: 2,
      seed: 7,
      width: 32,
      height: 24,
    });
    assertMaxAbsError(pngRgb(png), expected, 1, 'SD3 text-to-image PNG');

    // Image-to-image: the output takes the file's size; int(4 · 0.5) = 2 steps run.
    const init = join(outDir, 'init.png');
    await writeInitImage(init, 16, 32);
    const edited = join(outDir, 'sd3-edit.png');
    const e = await captureCli([
      'generate',
      'a cat',
      '--model',
      sd3,
      '--init-image',
      init,
      '--strength',
      '0.5',
      '--steps',
      '4',
      '--seed',
      '3',
      '--threads',
      '1',
      '--out',
      edited,
    ]);
    assert.equal(e.code, 0, e.err);
    assert.match(e.err, /step 2\/2/);
    assert.deepEqual(pngSize(readFileSync(edited)), [16, 32]);
    const expectedEdit = await sd3LibraryRgb(sd3, {
      prompt: 'a cat',
      image: await readImageFile(init),
      strength: 0.5,
      numInferenceSteps: 4,
      seed: 3,
    });
    assertMaxAbsError(pngRgb(readFileSync(edited)), expectedEdit, 1, 'SD3 image-to-image PNG');
  });

  it('FLUX: distilled --guidance, --images 2, a seed gives the same PNGs, equal to run()', async () => {
    const path = join(outDir, 'flux.png');
    const args = [
      'generate',
      'a red heart',
      '--model',
      flux,
      '--guidance',
      '4',
      '--steps',
      '2',
      '--seed',
      '5',
      '--width',
      '32',
      '--height',
      '64',
      '--images',
      '2',
      '--threads',
      '1',
    ];
    const r = await captureCli([...args, '--out', path]);
    assert.equal(r.code, 0, r.err);
    assert.match(r.err, /step 2\/2/);
    const first = readFileSync(join(outDir, 'flux-0.png'));
    const second = readFileSync(join(outDir, 'flux-1.png'));
    assert.deepEqual(pngSize(first), [32, 64]);
    assert.deepEqual(pngSize(second), [32, 64]);
    assert.ok(!first.equals(second), 'two images of one prompt are two draws');
    const again = join(outDir, 'flux-again.png');
    assert.equal((await captureCli([...args, '--out', again])).code, 0);
    assert.ok(readFileSync(join(outDir, 'flux-again-0.png')).equals(first), 'same seed, same bytes');
    assert.ok(readFileSync(join(outDir, 'flux-again-1.png')).equals(second), 'same seed, same bytes');

    const pipe = await FluxPipeline.fromPretrained(flux, { runtime, onWarning: () => {} });
    try {
      const { images } = await pipe.run({
        prompt: 'a red heart',
        guidanceScale: 4,
        numInferenceSteps: 2,
        seed: 5,
        width: 32,
        height: 64,
        numImagesPerPrompt: 2,
      });
      const [n, channels, height, width] = images!.shape;
      assert.equal(n, 2);
      const item = channels * height * width;
      const data = images!.data as Float32Array;
      [first, second].forEach((png, i) => {
        const one = hostTensor(
          'float32',
          [1, channels, height, width],
          data.subarray(i * item, (i + 1) * item),
        );
        assertMaxAbsError(pngRgb(png), imageRgb(one), 1, `FLUX PNG ${i}`);
      });
    } finally {
      await pipe.close();
    }
  });

  it('FLUX: --attention clear:1 differs from full attention and equals run({ attention: clear, radius 1 })', async () => {
    const common = [
      'generate',
      'a red heart',
      '--model',
      flux,
      '--steps',
      '2',
      '--seed',
      '11',
      '--threads',
      '1',
    ];
    const size = ['--width', '32', '--height', '32'];
    const full = join(outDir, 'flux-full.png');
    const clear = join(outDir, 'flux-clear.png');
    assert.equal((await captureCli([...common, ...size, '--out', full])).code, 0);
    const r = await captureCli([...common, ...size, '--attention', 'clear:1', '--out', clear]);
    assert.equal(r.code, 0, r.err);
    const clearRgb = pngRgb(readFileSync(clear));
    assert.notDeepEqual(clearRgb, pngRgb(readFileSync(full)), 'CLEAR reaches the transformer');
    const expected = await fluxLibraryRgb(flux, {
      prompt: 'a red heart',
      numInferenceSteps: 2,
      seed: 11,
      width: 32,
      height: 32,
      attention: { kind: 'clear', radius: 1 },
    });
    assertMaxAbsError(clearRgb, expected, 1, 'FLUX CLEAR PNG');
  });

  it('FLUX: true CFG with --negative-prompt --true-cfg-scale, --init-image --strength, --quantize int8 equal run()', async () => {
    const init = join(outDir, 'flux-init.png');
    await writeInitImage(init, 32, 32);
    const path = join(outDir, 'flux-edit.png');
    const r = await captureCli([
      'generate',
      'a red heart',
      '--model',
      flux,
      '--negative-prompt',
      'grey',
      '--true-cfg-scale',
      '2',
      '--init-image',
      init,
      '--strength',
      '0.5',
      '--steps',
      '4',
      '--seed',
      '2',
      '--quantize',
      'int8',
      '--threads',
      '1',
      '--out',
      path,
    ]);
    assert.equal(r.code, 0, r.err);
    assert.match(r.err, /int8: \d+ Linear modules of the FluxTransformer2DModel run in int8/);
    assert.match(r.err, /step 2\/2/);
    const pipe = await FluxPipeline.fromPretrained(flux, { runtime, quantize: 'int8', onWarning: () => {} });
    try {
      const { images } = await pipe.run({
        prompt: 'a red heart',
        negativePrompt: 'grey',
        trueCfgScale: 2,
        image: await readImageFile(init),
        strength: 0.5,
        numInferenceSteps: 4,
        seed: 2,
      });
      assertMaxAbsError(pngRgb(readFileSync(path)), imageRgb(images!), 1, 'FLUX true CFG int8 PNG');
    } finally {
      await pipe.close();
    }
  });

  it('--lora FILE:SCALE on FLUX and SD3 equals the folder with W + scale·alpha/r·B·A merged in float64', async () => {
    const random = seededUniform(testSeed('generate sd3 flux lora'));
    for (const [name, dir, modules] of [
      ['FLUX', flux, ['transformer_blocks.0.attn.to_q', 'single_transformer_blocks.0.proj_mlp']],
      ['SD3', sd3, ['transformer_blocks.0.attn.to_v', 'transformer_blocks.0.ff.net.2']],
    ] as const) {
      const base = await readAllTensors(await safetensorsIn(join(dir, 'transformer')));
      const lora = randomLoraFor(base, modules, 2, random);
      const file = await writeDiffusers(join(outDir, `${name}-lora.safetensors`), lora);
      // No alpha tensors: alpha = r, so the adapter's scale is the --lora scale, 0.5.
      const merged = join(outDir, `${name}-merged`);
      await cp(dir, merged, { recursive: true });
      await rm(join(merged, 'transformer'), { recursive: true });
      await writeMergedCopy(join(dir, 'transformer'), join(merged, 'transformer'), lora, 0.5);
      const args = [
        'generate',
        'a cat',
        '--steps',
        '2',
        '--seed',
        '3',
        '--width',
        '32',
        '--height',
        '32',
        '--threads',
        '1',
      ];
      const withLora = join(outDir, `${name}-lora.png`);
      const r = await captureCli([...args, '--model', dir, '--lora', `${file}:0.5`, '--out', withLora]);
      assert.equal(r.code, 0, r.err);
      const plain = join(outDir, `${name}-plain.png`);
      assert.equal((await captureCli([...args, '--model', dir, '--out', plain])).code, 0);
      const reference = join(outDir, `${name}-merged.png`);
      const m = await captureCli([...args, '--model', merged, '--out', reference]);
      assert.equal(m.code, 0, m.err);
      assertMaxAbsError(
        pngRgb(readFileSync(withLora)),
        pngRgb(readFileSync(reference)),
        1,
        `${name} --lora against merged weights`,
      );
      assert.ok(!readFileSync(withLora).equals(readFileSync(plain)), `${name}: the LoRA changes the image`);
    }
  });

  it('--flash DIR on SD3 runs the flash-sd3 recipe: the PEFT LoRA fused, the Flash scheduler, 4 steps at guidance 0, as the library', async () => {
    const random = seededUniform(testSeed('generate sd3 flash'));
    const base = await readAllTensors(await safetensorsIn(join(sd3, 'transformer')));
    const lora = randomLoraFor(
      base,
      ['transformer_blocks.0.attn.to_q', 'transformer_blocks.0.ff.net.2'],
      2,
      random,
      0.5,
    );
    const peft = await writePeft(join(outDir, 'flash-sd3'), lora, {
      r: 2,
      lora_alpha: 1,
      target_modules: ['to_q', 'ff.net.2'],
    });
    const path = join(outDir, 'sd3-flash.png');
    const r = await captureCli([
      'generate',
      'a cat',
      '--model',
      sd3,
      '--flash',
      peft,
      '--seed',
      '5',
      '--width',
      '32',
      '--height',
      '32',
      '--threads',
      '1',
      '--out',
      path,
    ]);
    assert.equal(r.code, 0, r.err);
    assert.match(
      r.err,
      /Flash Diffusion: 2 LoRA modules fused \(alpha\/r 0\.5\), FlashFlowMatchEulerDiscreteScheduler/,
    );
    assert.match(r.err, /step 4\/4/);
    const pipe = await StableDiffusion3Pipeline.fromPretrained(sd3, { runtime, onWarning: () => {} });
    try {
      const { runOptions } = await pipe.useFlashDiffusion(peft);
      assert.deepEqual(runOptions, { numInferenceSteps: 4, guidanceScale: 0 });
      const expected = imageRgb(
        (await pipe.run({ prompt: 'a cat', ...runOptions, seed: 5, width: 32, height: 32 })).images!,
      );
      assertMaxAbsError(
        pngRgb(readFileSync(path)),
        expected,
        1,
        'SD3 --flash PNG against the library recipe',
      );
    } finally {
      await pipe.close();
    }
  });

  it('refuses the flags that do not apply, naming the pipeline class', async () => {
    const base = (dir: string): string[] => [
      'generate',
      'a cat',
      '--model',
      dir,
      '--steps',
      '1',
      '--threads',
      '1',
    ];
    const cases: [string, string[], RegExp][] = [
      [
        sd3,
        ['--attention', 'clear:1'],
        /--attention does not apply to StableDiffusion3Pipeline: CLEAR has a FLUX form only/,
      ],
      [
        sd3,
        ['--tgate', '2'],
        /--tgate does not apply to StableDiffusion3Pipeline: T-GATE runs on PixArt and UNet/,
      ],
      [
        sd3,
        ['--true-cfg-scale', '2'],
        /--true-cfg-scale does not apply to StableDiffusion3Pipeline: .* use --guidance/,
      ],
      [
        sd3,
        ['--scheduler', 'ddim'],
        /--scheduler ddim does not apply to StableDiffusion3Pipeline, which samples by flow matching/,
      ],
      [
        flux,
        ['--clip-skip', '1'],
        /--clip-skip does not apply to FluxPipeline: FLUX reads CLIP's pooled output/,
      ],
      [
        flux,
        ['--flash', 'flash.safetensors'],
        /--flash does not apply to FluxPipeline: Flash Diffusion students exist for PixArt, SD 1.5, SDXL and SD3, not FLUX/,
      ],
      [
        flux,
        ['--deep-cache-interval', '2'],
        /--deep-cache-interval does not apply to FluxPipeline: DeepCache works on UNet/,
      ],
      [
        flux,
        ['--accel', 'clear'],
        /--accel does not apply to FluxPipeline: runs velodiff's distilled students of PixArt/,
      ],
      [flux, ['--guidance-rescale', '0.7'], /--guidance-rescale does not apply to FluxPipeline/],
      [
        flux,
        ['--negative-prompt', 'grey'],
        /--negative-prompt on FluxPipeline steers only under true CFG: add --true-cfg-scale/,
      ],
      [flux, ['--true-cfg-scale', '2'], /--true-cfg-scale on FluxPipeline needs --negative-prompt/],
      [flux, ['--attention-weights', 'clear.safetensors'], /--attention-weights needs --attention clear:R/],
      [flux, ['--strength', '0.5'], /--strength needs --init-image/],
    ];
    for (const [dir, flags, message] of cases) {
      const r = await captureCli([...base(dir), ...flags]);
      assert.equal(r.code, 2, `${flags.join(' ')}: ${r.err}`);
      assert.match(r.err, message, flags.join(' '));
    }
  });
});
