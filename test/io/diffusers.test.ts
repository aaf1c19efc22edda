/** Diffusers folders: model_index.json, config.json and single or sharded component weights. */
import assert from 'node:assert/strict';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, it } from 'node:test';

import { FileFormatError, WeightError } from '../../src/errors.js';
import { readConfig, readJsonFile, readModelIndex, WeightStore } from '../../src/io/diffusers.js';
import { writeSafetensors, type TensorToWrite } from '../../src/io/safetensors.js';
import { tempDir } from './craft.js';

function formatError(code: string, message: RegExp) {
  return (error: unknown): boolean => {
    assert.ok(error instanceof FileFormatError, `expected FileFormatError, got ${String(error)}`);
    assert.equal(error.code, code, error.message);
    assert.match(error.message, message);
    return true;
  };
}

const vector = (values: number[]): TensorToWrite => ({
  dtype: 'F32',
  shape: [values.length],
  data: new Float32Array(values),
});

describe('readJsonFile', () => {
  it('says what a missing file is for and quotes the parse error of invalid JSON', async () => {
    const dir = await tempDir();
    await assert.rejects(
      readJsonFile(join(dir, 'scheduler_config.json'), 'the scheduler configuration'),
      formatError(
        'FILE_MISSING',
        /Expected the scheduler configuration at .*scheduler_config\.json, but the file does not exist/,
      ),
    );
    await writeFile(join(dir, 'bad.json'), '{"a": 1,}');
    await assert.rejects(
      readJsonFile(join(dir, 'bad.json'), 'a test file'),
      formatError(
        'JSON_INVALID',
        /Expected a test file at .*bad\.json to be JSON, but it does not parse: .*JSON/,
      ),
    );
    await writeFile(join(dir, 'good.json'), '[1, {"b": null}]');
    assert.deepEqual(await readJsonFile(join(dir, 'good.json'), 'x'), [1, { b: null }]);
  });
});

describe('readModelIndex', () => {
  it('reads the class, version and components, skipping pipeline options', async () => {
    const dir = await tempDir();
    const index = {
      _class_name: 'PixArtSigmaPipeline',
      _diffusers_version: '0.30.0',
      _name_or_path: 'PixArt-alpha/PixArt-Sigma-XL-2-1024-MS',
      scheduler: ['diffusers', 'DPMSolverMultistepScheduler'],
      text_encoder: ['transformers', 'T5EncoderModel'],
      transformer: ['diffusers', 'PixArtTransformer2DModel'],
      safety_checker: [null, null],
      requires_safety_checker: false,
    };
    await writeFile(join(dir, 'model_index.json'), JSON.stringify(index));
    const parsed = await readModelIndex(dir);
    assert.equal(parsed.className, 'PixArtSigmaPipeline');
    assert.equal(parsed.diffusersVersion, '0.30.0');
    assert.deepEqual(parsed.components, {
      scheduler: ['diffusers', 'DPMSolverMultistepScheduler'],
      text_encoder: ['transformers', 'T5EncoderModel'],
      transformer: ['diffusers', 'PixArtTransformer2DModel'],
      safety_checker: [null, null],
    });
    assert.equal(parsed.raw['requires_safety_checker'], false);
  });

  it('rejects a missing file, a missing _class_name, non-objects and malformed components', async () => {
    const dir = await tempDir();
    await assert.rejects(
      readModelIndex(dir),
      formatError('FILE_MISSING', /model_index\.json.*does not exist/),
    );
    const path = join(dir, 'model_index.json');
    await writeFile(path, JSON.stringify({ transformer: ['diffusers', 'X'] }));
    await assert.rejects(
      readModelIndex(dir),
      formatError('MODEL_INDEX_INVALID', /"_class_name", found nothing/),
    );
    await writeFile(path, JSON.stringify({ _class_name: 42 }));
    await assert.rejects(readModelIndex(dir), formatError('MODEL_INDEX_INVALID', /"_class_name", found 42/));
    await writeFile(path, '["PixArtSigmaPipeline"]');
    await assert.rejects(
      readModelIndex(dir),
      formatError('MODEL_INDEX_INVALID', /a JSON object, found \["PixArtSigmaPipeline"\]/),
    );
    await writeFile(path, JSON.stringify({ _class_name: 'P', vae: ['diffusers'] }));
    await assert.rejects(
      readModelIndex(dir),
      formatError('MODEL_INDEX_INVALID', /component 'vae' .* \[library, class\]/),
    );
    await writeFile(path, '{"_class_name": "P",');
    await assert.rejects(readModelIndex(dir), formatError('JSON_INVALID', /does not parse/));
  });
});

describe('readConfig', () => {
  it('returns the parsed object and rejects anything else', async () => {
    const dir = await tempDir();
    await writeFile(
      join(dir, 'config.json'),
      JSON.stringify({ _class_name: 'AutoencoderKL', latent_channels: 4 }),
    );
    const config = await readConfig(dir);
    assert.equal(config._class_name, 'AutoencoderKL');
    assert.equal(config['latent_channels'], 4);
    await writeFile(join(dir, 'scheduler_config.json'), '3');
    await assert.rejects(
      readConfig(dir, 'scheduler_config.json'),
      formatError('CONFIG_INVALID', /JSON object, found 3/),
    );
    await assert.rejects(readConfig(join(dir, 'nowhere')), formatError('FILE_MISSING', /config\.json/));
  });
});

describe('WeightStore', () => {
  it('opens a single diffusers file and reads tensors with absolute paths', async () => {
    const dir = await tempDir();
    await writeSafetensors(join(dir, 'diffusion_pytorch_model.safetensors'), {
      'proj.bias': vector([1, -2]),
      'proj.weight': vector([3]),
    });
    // A transformers-named file beside it must lose to the diffusers name.
    await writeSafetensors(join(dir, 'model.safetensors'), { other: vector([0]) });
    const store = await WeightStore.open(dir);
    assert.deepEqual(store.names(), ['proj.bias', 'proj.weight']);
    assert.equal(store.info('proj.bias').path, join(dir, 'diffusion_pytorch_model.safetensors'));
    assert.deepEqual([...(await store.readFloat32('proj.bias'))], [1, -2]);
    assert.throws(
      () => store.info('proj.weights'),
      (error: unknown) =>
        error instanceof WeightError &&
        error.code === 'WEIGHT_MISSING' &&
        /'proj\.weights' is not in the weights of .*Did you mean 'proj\.weight'/.test(error.message),
    );
    await store.close();
  });

  it('falls back to transformers naming, and opens an explicit variant base name', async () => {
    const dir = await tempDir();
    await writeSafetensors(join(dir, 'model.safetensors'), { 'encoder.embed': vector([5]) });
    await writeSafetensors(join(dir, 'diffusion_pytorch_model.fp16.safetensors'), {
      w: { dtype: 'F16', shape: [1], data: new Uint16Array([0x4000]) },
    });
    const fallback = await WeightStore.open(dir);
    assert.deepEqual(fallback.names(), ['encoder.embed']);
    await fallback.close();
    const variant = await WeightStore.open(dir, 'diffusion_pytorch_model.fp16');
    assert.deepEqual([...(await variant.readFloat32('w'))], [2]);
    await variant.close();
    await assert.rejects(
      WeightStore.open(dir, 'diffusion_pytorch_model'),
      formatError('WEIGHTS_MISSING', /diffusion_pytorch_model\.safetensors/),
    );
  });

  it('opens a sharded checkpoint through its index', async () => {
    const dir = await tempDir();
    await writeSafetensors(join(dir, 'diffusion_pytorch_model-00001-of-00002.safetensors'), {
      'a.weight': vector([1, 2]),
      'b.weight': vector([3]),
      'unlisted.extra': vector([9]),
    });
    await writeSafetensors(join(dir, 'diffusion_pytorch_model-00002-of-00002.safetensors'), {
      'c.weight': vector([4, 5, 6]),
    });
    const weightMap = {
      'a.weight': 'diffusion_pytorch_model-00001-of-00002.safetensors',
      'c.weight': 'diffusion_pytorch_model-00002-of-00002.safetensors',
      'b.weight': 'diffusion_pytorch_model-00001-of-00002.safetensors',
    };
    await writeFile(
      join(dir, 'diffusion_pytorch_model.safetensors.index.json'),
      JSON.stringify({ metadata: { total_size: 24 }, weight_map: weightMap }),
    );
    const store = await WeightStore.open(dir);
    assert.deepEqual(store.names(), ['a.weight', 'c.weight', 'b.weight']);
    assert.equal(store.files.length, 2, 'each shard is opened once');
    assert.equal(store.has('unlisted.extra'), false, 'the index is authoritative');
    assert.equal(
      store.info('c.weight').path,
      join(dir, 'diffusion_pytorch_model-00002-of-00002.safetensors'),
    );
    assert.deepEqual(store.info('c.weight').shape, [3]);
    assert.deepEqual([...(await store.readFloat32('c.weight'))], [4, 5, 6]);
    assert.deepEqual([...(await store.readFloat32('b.weight'))], [3]);
    await store.close();
  });

  it('rejects an index that lists a tensor its shard lacks, a missing shard, or a path outside the folder', async () => {
    const dir = await tempDir();
    await writeSafetensors(join(dir, 'shard-1.safetensors'), { 'a.weight': vector([1]) });
    const indexPath = join(dir, 'model.safetensors.index.json');
    await writeFile(
      indexPath,
      JSON.stringify({ weight_map: { 'a.weight': 'shard-1.safetensors', 'a.bias': 'shard-1.safetensors' } }),
    );
    await assert.rejects(
      WeightStore.open(dir),
      formatError(
        'WEIGHT_INDEX_MISMATCH',
        /places tensor 'a\.bias' in shard-1\.safetensors, but that shard does not contain it/,
      ),
    );
    await writeFile(
      indexPath,
      JSON.stringify({ weight_map: { 'a.weight': 'shard-1.safetensors', b: 'shard-2.safetensors' } }),
    );
    await assert.rejects(
      WeightStore.open(dir),
      formatError('FILE_MISSING', /lists the shard shard-2\.safetensors, but .* does not exist/),
    );
    await writeFile(indexPath, JSON.stringify({ weight_map: { 'a.weight': '../elsewhere.safetensors' } }));
    await assert.rejects(
      WeightStore.open(dir),
      formatError('WEIGHT_INDEX_INVALID', /inside the folder, found "\.\.\/elsewhere\.safetensors"/),
    );
    await writeFile(indexPath, JSON.stringify({ metadata: {} }));
    await assert.rejects(
      WeightStore.open(dir),
      formatError('WEIGHT_INDEX_INVALID', /"weight_map": \{tensor name: shard file\}, found nothing/),
    );
  });

  it('explains a folder without safetensors weights, listing its files', async () => {
    const dir = await tempDir();
    await writeFile(join(dir, 'config.json'), '{}');
    await writeFile(join(dir, 'diffusion_pytorch_model.bin'), 'pickle');
    await assert.rejects(
      WeightStore.open(dir),
      formatError(
        'WEIGHTS_MISSING',
        /No weights found in .*: expected one of diffusion_pytorch_model\.safetensors, .*model\.safetensors\.index\.json\. The folder contains: config\.json, diffusion_pytorch_model\.bin\. PyTorch pickle checkpoints .* not supported.*convert them to safetensors/,
      ),
    );
    const variants = join(dir, 'variants');
    await mkdir(variants);
    await writeSafetensors(join(variants, 'diffusion_pytorch_model.fp16.safetensors'), {});
    await assert.rejects(
      WeightStore.open(variants),
      formatError('WEIGHTS_MISSING', /pass its base name: 'diffusion_pytorch_model\.fp16'/),
    );
    await assert.rejects(
      WeightStore.open(join(dir, 'absent')),
      formatError('FILE_MISSING', /Expected a model folder at .*absent/),
    );
  });
});
