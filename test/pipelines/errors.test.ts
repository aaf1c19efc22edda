import assert from 'node:assert/strict';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { FileFormatError, OptionError, WeightError } from '../../src/errors.js';
import { writeSafetensors } from '../../src/io/safetensors.js';
import { readHostTensors } from '../../src/io/host-tensors.js';
import { DiffusionPipeline } from '../../src/pipelines/index.js';
import { schedulerFromConfig } from '../../src/schedulers/index.js';
import { Runtime } from '../../src/runtime/runtime.js';
import { tinyPixArtPipeline } from '../fixtures/tiny-pixart-pipeline.js';
import { editWeights, patchConfig, zeros } from '../fixtures/edit-checkpoint.js';
import { VelodiffWarning } from '../../src/warnings.js';

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

  it('rejects an unknown scheduler class, naming it', () => {
    assert.throws(
      () => schedulerFromConfig({ _class_name: 'MagicScheduler' }),
      (e: unknown) =>
        e instanceof OptionError && /MagicScheduler/.test(e.message) && /DDIMScheduler/.test(e.message),
    );
  });
});

describe('PixArt pipeline folders: load checks name the component', () => {
  /** Loads the pipeline at `dir`, collecting its warnings; closes it again. */
  async function loadCollecting(dir: string): Promise<VelodiffWarning[]> {
    const warnings: VelodiffWarning[] = [];
    const pipe = await DiffusionPipeline.fromPretrained(dir, { runtime, onWarning: (w) => warnings.push(w) });
    await pipe.close();
    return warnings;
  }

  it('loads the tiny pipeline without a warning', async () => {
    assert.deepEqual(await loadCollecting(await tinyPixArtPipeline()), []);
  });

  it('passes on unknown config keys of every component as warnings naming the key and config file', async () => {
    const dir = await tinyPixArtPipeline();
    const components = ['transformer', 'vae', 'text_encoder'];
    for (const component of components) {
      await patchConfig(join(dir, component), { [`frobnicate_${component}`]: 3 });
    }
    const warnings = await loadCollecting(dir);
    assert.deepEqual(
      warnings.map((w) => [w.code, w.path, w.names]),
      components.map((c) => ['CONFIG_UNUSED_KEYS', join(dir, c, 'config.json'), [`frobnicate_${c}`]]),
    );
    for (const w of warnings) assert.ok(w.message.includes(`"${w.names[0]}"`), w.message);
  });

  it('passes on unused tensors as a warning naming the component file', async () => {
    const dir = await tinyPixArtPipeline();
    const file = join(dir, 'vae', 'diffusion_pytorch_model.safetensors');
    await editWeights(file, (tensors) => tensors.set('encoder.extra.weight', zeros('F32', [2])));
    const warnings = await loadCollecting(dir);
    assert.equal(warnings.length, 1);
    assert.equal(warnings[0].code, 'WEIGHTS_UNUSED');
    assert.equal(warnings[0].path, file);
    assert.ok(warnings[0].message.includes("'encoder.extra.weight'"), warnings[0].message);
  });

  it('a T5 text encoder tensor that is missing fails the pipeline load, naming the tensor and the text_encoder file', async () => {
    const dir = await tinyPixArtPipeline();
    const file = join(dir, 'text_encoder', 'model.safetensors');
    const missing = 'encoder.block.1.layer.0.SelfAttention.o.weight';
    await editWeights(file, (tensors) => tensors.delete(missing));
    await assert.rejects(DiffusionPipeline.fromPretrained(dir, { runtime }), (e: unknown) => {
      assert.ok(e instanceof WeightError, String(e));
      assert.ok(e.message.includes(`'${missing}'`) && e.message.includes(file), e.message);
      return true;
    });
  });

  it('a VAE weight stored as BOOL fails the pipeline load, naming the tensor and the vae file', async () => {
    const dir = await tinyPixArtPipeline();
    const file = join(dir, 'vae', 'diffusion_pytorch_model.safetensors');
    const name = 'decoder.conv_out.weight';
    await editWeights(file, (tensors) => {
      const shape = tensors.get(name)?.shape ?? [];
      tensors.set(name, zeros('BOOL', shape));
    });
    await assert.rejects(DiffusionPipeline.fromPretrained(dir, { runtime }), (e: unknown) => {
      assert.ok(e instanceof WeightError && e.code === 'WEIGHT_DTYPE', String(e));
      assert.ok(
        e.message.includes(`'${name}'`) && e.message.includes(file) && /BOOL/.test(e.message),
        e.message,
      );
      return true;
    });
  });

  it('an unsupported transformer config value fails the pipeline load, naming key, value and the transformer config', async () => {
    const dir = await tinyPixArtPipeline();
    await patchConfig(join(dir, 'transformer'), { attention_type: 'gated-text-image' });
    await assert.rejects(DiffusionPipeline.fromPretrained(dir, { runtime }), (e: unknown) => {
      assert.ok(e instanceof FileFormatError, String(e));
      assert.equal(e.path, join(dir, 'transformer', 'config.json'));
      assert.ok(/"attention_type"/.test(e.message) && /"gated-text-image"/.test(e.message), e.message);
      return true;
    });
  });
});
