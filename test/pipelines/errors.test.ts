import assert from 'node:assert/strict';
import { rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { FileFormatError, OptionError, WeightError } from '../../src/errors.js';
import { writeSafetensors } from '../../src/io/safetensors.js';
import { readHostTensors } from '../../src/io/host-tensors.js';
import { DiffusionPipeline } from '../../src/pipelines/index.js';
import { schedulerFromConfig } from '../../src/schedulers/index.js';
import { Runtime } from '../../src/runtime/runtime.js';
import { tinyPixArtPipeline } from '../fixtures/tiny-pixart-pipeline.js';

const runtime = new Runtime({ worker: false, threads: 1 });
after(() => runtime.dispose());

describe('PixArt pipeline folders: clear errors', () => {
  it('names the missing component folder', async () => {
    const dir = await tinyPixArtPipeline();
    await rm(join(dir, 'vae'), { recursive: true });
    await assert.rejects(
      DiffusionPipeline.fromPretrained(dir, { runtime }),
      (e: unknown) => e instanceof FileFormatError && e.message.includes(join(dir, 'vae')),
    );
  });

  it('names a missing weight and its file', async () => {
    const dir = await tinyPixArtPipeline();
    const file = join(dir, 'transformer', 'diffusion_pytorch_model.safetensors');
    const tensors = await readHostTensors(file);
    delete tensors['proj_out.weight'];
    await writeSafetensors(
      file,
      Object.fromEntries(
        Object.entries(tensors).map(([k, t]) => [
          k,
          { dtype: 'F32' as const, shape: [...t.shape], data: t.data },
        ]),
      ),
    );
    // Checked when the model loads, before any generation.
    await assert.rejects(
      DiffusionPipeline.fromPretrained(dir, { runtime }),
      (e: unknown) =>
        e instanceof WeightError && /proj_out\.weight/.test(e.message) && e.message.includes(file),
    );
  });

  it('names a weight of the wrong shape, with both shapes', async () => {
    const dir = await tinyPixArtPipeline();
    const file = join(dir, 'transformer', 'diffusion_pytorch_model.safetensors');
    const tensors = await readHostTensors(file);
    tensors['scale_shift_table'] = { dtype: 'float32', shape: [3, 24], data: new Float32Array(72) };
    await writeSafetensors(
      file,
      Object.fromEntries(
        Object.entries(tensors).map(([k, t]) => [
          k,
          { dtype: 'F32' as const, shape: [...t.shape], data: t.data },
        ]),
      ),
    );
    await assert.rejects(
      DiffusionPipeline.fromPretrained(dir, { runtime }),
      (e: unknown) =>
        e instanceof WeightError &&
        /scale_shift_table.*expected shape \[2, 24\], found \[3, 24\]/.test(e.message),
    );
  });

  it('rejects an unknown config key and an unknown scheduler class, naming them', async () => {
    const dir = await tinyPixArtPipeline();
    const config = join(dir, 'transformer', 'config.json');
    const { readFile } = await import('node:fs/promises');
    const raw = JSON.parse(await readFile(config, 'utf8')) as Record<string, unknown>;
    await writeFile(config, JSON.stringify({ ...raw, frobnicate: 3 }));
    await assert.rejects(
      DiffusionPipeline.fromPretrained(dir, { runtime }),
      (e: unknown) =>
        e instanceof FileFormatError && /"frobnicate"/.test(e.message) && e.message.includes(config),
    );
    assert.throws(
      () => schedulerFromConfig({ _class_name: 'MagicScheduler' }),
      (e: unknown) =>
        e instanceof OptionError && /MagicScheduler/.test(e.message) && /DDIMScheduler/.test(e.message),
    );
  });
});
