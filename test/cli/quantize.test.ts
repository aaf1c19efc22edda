/**
 * `velodiff quantize DIR --out DIR2` and the `--quantize int8` flag of generate, forward and eval: what
 * they print, that their output is the library's int8 model, and the errors a user meets.
 */
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

import { loadModel } from '../../src/models/index.js';
import { DiffusionPipeline, PixArtPipeline } from '../../src/pipelines/index.js';
import { Runtime } from '../../src/runtime/runtime.js';
import { assertExactlyEqual, assertMaxAbsError } from '../compare.js';
import { tinyPixArtPipeline } from '../fixtures/tiny-pixart-pipeline.js';
import { imageRgb, pngRgb, readAllTensors } from '../helpers.js';
import { tempDir } from '../io/craft.js';
import { captureCli } from './capture.js';

const GOLDEN = fileURLToPath(new URL('../golden/models/', import.meta.url));
const runtime = new Runtime({ worker: false, threads: 1 });
after(() => runtime.dispose());

describe('velodiff quantize', () => {
  it('writes an int8 pipeline folder and says what it did', async () => {
    const source = await tinyPixArtPipeline();
    const out = join(await tempDir(), 'int8');
    const r = await captureCli(['quantize', source, '--out', out]);
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, new RegExp(`^wrote ${out} \\(PixArtAlphaPipeline\\) from ${source}`));
    assert.match(
      r.out,
      /transformer +PixArtTransformer2DModel +int8: [1-9]\d* Linear modules +[\d.]+ MB → [\d.]+ MB/,
    );
    assert.match(r.out, /text_encoder +T5EncoderModel +int8: [1-9]\d* Linear modules/);
    assert.match(r.out, /vae +AutoencoderKL +float32, copied/);
    assert.match(r.out, /folder: [\d.]+ MB → [\d.]+ MB/);
    const pipe = await DiffusionPipeline.fromPretrained(out, { runtime, onWarning: () => {} });
    try {
      assert.ok(pipe instanceof PixArtPipeline);
      assert.ok((pipe.transformer.int8Modules?.size ?? 0) > 0, 'the written folder loads as int8');
    } finally {
      await pipe.close();
    }
  });

  it('writes SD3 and FLUX transformer folders that load as int8, smaller, with the modules of --quantize int8', async () => {
    for (const [fixture, className] of [
      ['sd3_transformer_tiny', 'SD3Transformer2DModel'],
      ['flux_transformer_tiny', 'FluxTransformer2DModel'],
    ]) {
      const source = join(GOLDEN, fixture, 'model');
      const out = join(await tempDir(), 'int8');
      const r = await captureCli(['quantize', source, '--out', out]);
      assert.equal(r.code, 0, r.err);
      const line = new RegExp(
        `^  \\. +${className} +int8: ([1-9]\\d*) Linear modules +([\\d.]+) MB → ([\\d.]+) MB`,
        'm',
      );
      const [, modules, before, after] = line.exec(r.out) ?? assert.fail(r.out);
      assert.ok(Number(after) < Number(before), `${after} MB < ${before} MB`);
      const folder = await loadModel(out, { runtime });
      const atLoad = await loadModel(source, { runtime, quantize: 'int8', onWarning: () => {} });
      try {
        assert.equal(folder.className, className);
        assert.equal(folder.int8Modules?.size, Number(modules));
        assert.deepEqual([...(folder.int8Modules ?? [])].sort(), [...(atLoad.int8Modules ?? [])].sort());
        const inputs = await readAllTensors(join(GOLDEN, fixture, 'inputs.safetensors'));
        assertExactlyEqual(
          (await folder.forward(inputs)).sample.data as Float32Array,
          (await atLoad.forward(inputs)).sample.data as Float32Array,
          `${className} int8 folder vs quantize at load`,
        );
      } finally {
        await folder.close();
        await atLoad.close();
      }
    }
  });

  it('errors: no --out, an output that is not empty, a missing input, two inputs; help texts', async () => {
    const root = await tempDir();
    const model = join(GOLDEN, 'pixart_alpha_tiny/model');
    const noOut = await captureCli(['quantize', model]);
    assert.equal(noOut.code, 2);
    assert.match(noOut.err, /quantize: --out DIR2 is required/);
    const taken = join(root, 'taken');
    await mkdir(taken);
    await writeFile(join(taken, 'file'), 'x');
    const full = await captureCli(['quantize', model, '--out', taken]);
    assert.equal(full.code, 2);
    assert.match(full.err, /taken exists and is not empty/);
    const missing = await captureCli(['quantize', join(root, 'none'), '--out', join(root, 'out')]);
    assert.equal(missing.code, 1);
    assert.match(missing.err, /none does not exist; expected a diffusers pipeline folder/);
    const two = await captureCli(['quantize', model, model, '--out', join(root, 'out')]);
    assert.equal(two.code, 2);
    assert.match(two.err, /give exactly one folder/);
    assert.ok(!existsSync(join(root, 'out')));

    const help = await captureCli(['quantize', '--help']);
    assert.equal(help.code, 0);
    assert.match(help.out, /usage: velodiff quantize DIR --out DIR2/);
    assert.match(help.out, /--out <string>/);
    assert.match(
      (await captureCli(['help'])).out,
      /quantize +copy a model or pipeline folder with int8 Linear weights/,
    );
  });
});

describe('--quantize int8', () => {
  it('generate: the PNG is the int8 pipeline’s image', async () => {
    const dir = await tinyPixArtPipeline();
    const path = join(await tempDir(), 'int8.png');
    const common = [
      'generate',
      'a cat',
      '--model',
      dir,
      '--steps',
      '2',
      '--seed',
      '5',
      '--width',
      '16',
      '--height',
      '16',
    ];
    const r = await captureCli([...common, '--quantize', 'int8', '--out', path, '--threads', '1']);
    assert.equal(r.code, 0, r.err);
    assert.match(r.err, /int8: [1-9]\d* Linear modules of the PixArtTransformer2DModel run in int8/);
    const pipe = await DiffusionPipeline.fromPretrained(dir, {
      runtime,
      quantize: 'int8',
      onWarning: () => {},
    });
    try {
      const { images } = await pipe.run({
        prompt: 'a cat',
        numInferenceSteps: 2,
        seed: 5,
        width: 16,
        height: 16,
      });
      assertMaxAbsError(pngRgb(readFileSync(path)), imageRgb(images!), 1, 'the int8 PNG');
    } finally {
      await pipe.close();
    }
    const plain = await captureCli([...common, '--out', path, '--threads', '1']);
    assert.equal(plain.code, 0, plain.err);
    assert.doesNotMatch(plain.err, /int8:/, 'a float run says nothing of int8');

    const bad = await captureCli([...common, '--quantize', 'int4', '--out', path]);
    assert.equal(bad.code, 2);
    assert.match(bad.err, /generate: --quantize must be int8 \(the one method velodiff has\), got "int4"/);
  });

  it('forward: the outputs are the int8 model’s; a VAE is refused', async () => {
    const fixture = join(GOLDEN, 'pixart_alpha_tiny');
    const out = join(await tempDir(), 'out.safetensors');
    const inputs = join(fixture, 'inputs.safetensors');
    const r = await captureCli([
      'forward',
      join(fixture, 'model'),
      '--inputs',
      inputs,
      '--out',
      out,
      '--quantize',
      'int8',
      '--threads',
      '1',
    ]);
    assert.equal(r.code, 0, r.err);
    const model = await loadModel(join(fixture, 'model'), { runtime, quantize: 'int8', onWarning: () => {} });
    try {
      const expected = await model.forward(await readAllTensors(inputs));
      const written = await readAllTensors(out);
      assertExactlyEqual(written.sample.data as Float32Array, expected.sample.data as Float32Array, 'sample');
    } finally {
      await model.close();
    }

    // SD3 and FLUX transformers take the flag too.
    const flux = join(GOLDEN, 'flux_transformer_tiny');
    const fluxRun = await captureCli([
      'forward',
      join(flux, 'model'),
      '--inputs',
      join(flux, 'inputs.safetensors'),
      '--out',
      out,
      '--quantize',
      'int8',
      '--threads',
      '1',
    ]);
    assert.equal(fluxRun.code, 0, fluxRun.err);
    const fluxModel = await loadModel(join(flux, 'model'), {
      runtime,
      quantize: 'int8',
      onWarning: () => {},
    });
    try {
      const expected = await fluxModel.forward(await readAllTensors(join(flux, 'inputs.safetensors')));
      assertExactlyEqual(
        (await readAllTensors(out)).sample.data as Float32Array,
        expected.sample.data as Float32Array,
        'FLUX sample',
      );
    } finally {
      await fluxModel.close();
    }

    const vae = await captureCli([
      'forward',
      join(GOLDEN, 'vae_kl_tiny/model'),
      '--inputs',
      inputs,
      '--out',
      out,
      '--quantize',
      'int8',
    ]);
    assert.equal(vae.code, 2);
    assert.match(
      vae.err,
      /forward: --quantize applies to .*SD3Transformer2DModel, FluxTransformer2DModel, UNet2DConditionModel.*; AutoencoderKL stays float32/,
    );
    const bad = await captureCli([
      'forward',
      join(fixture, 'model'),
      '--inputs',
      inputs,
      '--out',
      out,
      '--quantize',
      'int4',
    ]);
    assert.equal(bad.code, 2);
    assert.match(bad.err, /forward: --quantize must be int8/);
  });

  it('eval rejects another value; generate, forward and eval list the flag', async () => {
    const bad = await captureCli(['eval', '--quantize', 'fp8']);
    assert.equal(bad.code, 2);
    assert.match(bad.err, /eval: --quantize must be int8 \(the one method velodiff has\), got "fp8"/);
    for (const command of ['generate', 'forward', 'eval']) {
      const help = await captureCli([command, '--help']);
      assert.equal(help.code, 0);
      assert.match(
        help.out,
        /--quantize <string> +int8: run the Linear layers of the denoiser and text encoders in int8/,
        command,
      );
    }
  });
});
