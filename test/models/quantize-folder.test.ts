/**
 * quantizeFolder (src/models/quantize-folder.ts): a folder it writes loads, with no option, to the
 * same int8 model as quantizing the input at load (same modules, bit-identical outputs, within a
 * stated bound of the float model's on fresh inputs, about 3–5× the spread measured); every other
 * tensor and file is the input's, byte for byte; the int8 weights follow the format's definition
 * (src/io/quantize.ts), checked here from that definition; and a folder that does not match its
 * config, or a bad input or output folder, is an error that names the problem and writes nothing.
 */
import assert from 'node:assert/strict';
import { cp, mkdir, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { after, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

import { VelodiffError } from '../../src/errors.js';
import { SafetensorsFile, writeSafetensors } from '../../src/io/safetensors.js';
import type { TensorToWrite } from '../../src/io/safetensors.js';
import type { DiffusersModel } from '../../src/models/index.js';
import { loadModel } from '../../src/models/index.js';
import { quantizeFolder } from '../../src/models/quantize-folder.js';
import type { HostTensor } from '../../src/runtime/host-tensor.js';
import { hostTensor } from '../../src/runtime/host-tensor.js';
import { Runtime } from '../../src/runtime/runtime.js';
import type { VelodiffWarning } from '../../src/warnings.js';
import { copyModel, editWeights, patchConfig } from '../fixtures/edit-checkpoint.js';
import { tinyPixArtPipeline } from '../fixtures/tiny-pixart-pipeline.js';
import { randomArray, readAllTensors } from '../helpers.js';
import { tempDir } from '../io/craft.js';
import { seededUniform, testSeed } from '../random.js';

const GOLDEN = fileURLToPath(new URL('../golden/', import.meta.url));
const runtime = new Runtime({ worker: false, threads: 1 });
after(() => runtime.dispose());
const random = seededUniform(testSeed('test/models/quantize-folder.test.ts'));

/** The tiny golden component folders of every class that quantizes, with their golden inputs. */
const COMPONENTS = [
  {
    name: 'PixArtTransformer2DModel',
    fixture: 'models/pixart_alpha_tiny',
    weights: 'diffusion_pytorch_model',
    relBound: 0.015, // measured 2.4–3.2e-3 on fresh inputs
  },
  {
    name: 'SD3Transformer2DModel',
    fixture: 'models/sd3_transformer_tiny',
    weights: 'diffusion_pytorch_model',
    relBound: 0.015, // measured 1.9–2.9e-3
  },
  {
    name: 'FluxTransformer2DModel',
    fixture: 'models/flux_transformer_tiny',
    weights: 'diffusion_pytorch_model',
    relBound: 0.04, // measured 5.7e-3–1.1e-2
  },
  {
    name: 'UNet2DConditionModel',
    fixture: 'models/unet2d_sd15_tiny',
    weights: 'diffusion_pytorch_model',
    relBound: 0.03, // measured 5.6–6.9e-3
  },
  { name: 'T5EncoderModel', fixture: 'text_encoders/t5_encoder_tiny', weights: 'model', relBound: 0.1 }, // measured 3.3e-2
  {
    name: 'CLIPTextModelWithProjection',
    fixture: 'text_encoders/clip_text_with_projection_tiny',
    weights: 'model',
    relBound: 0.07, // measured 2.0e-2, 2.5e-2
  },
] as const;

/** The golden inputs with every float input drawn afresh (token ids, FLUX's position ids and masks kept). */
async function freshInputs(fixture: string): Promise<Record<string, HostTensor>> {
  const inputs = await readAllTensors(join(GOLDEN, fixture, 'inputs.safetensors'));
  for (const [name, t] of Object.entries(inputs)) {
    if (t.dtype === 'float32' && !name.includes('mask') && !name.endsWith('_ids') && name !== 'timestep')
      inputs[name] = hostTensor('float32', [...t.shape], randomArray(t.data.length, random));
  }
  return inputs;
}

async function outputsOf(
  dir: string,
  inputs: Record<string, HostTensor>,
  quantize?: 'int8',
): Promise<{ outputs: Record<string, HostTensor>; int8Modules: string[] | undefined }> {
  const model: DiffusersModel = await loadModel(dir, { runtime, quantize, onWarning: () => {} });
  try {
    const int8 = model.int8Modules;
    return { outputs: await model.forward(inputs), int8Modules: int8 && [...int8].sort() };
  } finally {
    await model.close();
  }
}

/** max |a − b| / max |b|. */
function relativeError(a: HostTensor['data'], b: HostTensor['data']): number {
  let error = 0;
  let scale = 0;
  for (let i = 0; i < b.length; i++) {
    error = Math.max(error, Math.abs(Number(a[i]) - Number(b[i])));
    scale = Math.max(scale, Math.abs(Number(b[i])));
  }
  return error / scale;
}

function bytesOf(t: HostTensor): Uint8Array {
  return new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
}

function sameOutputs(a: Record<string, HostTensor>, b: Record<string, HostTensor>): boolean {
  const names = Object.keys(a).sort();
  assert.deepEqual(Object.keys(b).sort(), names);
  return names.every((n) => Buffer.from(bytesOf(a[n])).equals(bytesOf(b[n])));
}

/** Every file under `dir`, relative to it, sorted. */
async function filesUnder(dir: string, prefix = ''): Promise<string[]> {
  const files: string[] = [];
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const path = prefix ? `${prefix}/${entry.name}` : entry.name;
    if (entry.isDirectory()) files.push(...(await filesUnder(join(dir, entry.name), path)));
    else files.push(path);
  }
  return files.sort();
}

/**
 * Checks a written weights file against its input: the int8 weights from the format's definition
 * (q = round(w / s) in [-127, 127], s = max|w[o, ·]| / 127 per row), every other tensor byte-identical.
 */
async function checkWeights(sourcePath: string, outPath: string, modules: readonly string[]): Promise<void> {
  const source = await SafetensorsFile.open(sourcePath);
  const out = await SafetensorsFile.open(outPath);
  try {
    const int8Weights = new Set(modules.map((m) => `${m}.weight`));
    const scales = modules.map((m) => `${m}.weight_scale`);
    assert.deepEqual(out.names().sort(), [...source.names(), ...scales].sort());
    for (const name of source.names()) {
      const before = source.info(name);
      const after = out.info(name);
      assert.deepEqual(after.shape, before.shape, name);
      if (!int8Weights.has(name)) {
        assert.equal(after.dtype, before.dtype, name);
        assert.ok(
          Buffer.from(await out.readBytes(name)).equals(await source.readBytes(name)),
          `${name} bytes`,
        );
        continue;
      }
      assert.equal(after.dtype, 'I8', name);
      const [rows, cols] = before.shape;
      const w = await source.readFloat32(name);
      const qBytes = await out.readBytes(name);
      const q = new Int8Array(qBytes.buffer, qBytes.byteOffset, qBytes.byteLength);
      const scaleInfo = out.info(`${name}_scale`);
      assert.equal(scaleInfo.dtype, 'F32');
      assert.deepEqual(scaleInfo.shape, [rows]);
      const s = await out.readFloat32(`${name}_scale`);
      for (let r = 0; r < rows; r++) {
        let max = 0;
        for (let c = 0; c < cols; c++) max = Math.max(max, Math.abs(w[r * cols + c]));
        const expected = max > 0 ? max / 127 : 1;
        assert.ok(Math.abs(s[r] - expected) <= 1e-6 * expected, `${name}_scale[${r}] ${s[r]} vs ${expected}`);
        for (let c = 0; c < cols; c++) {
          const v = q[r * cols + c];
          assert.ok(v >= -127 && v <= 127);
          // Round to nearest: the error is at most half a step (a float32 ulp of slack).
          assert.ok(Math.abs(v * s[r] - w[r * cols + c]) <= s[r] * (0.5 + 1e-5), `${name}[${r}, ${c}]`);
        }
      }
    }
  } finally {
    await source.close();
    await out.close();
  }
}

describe('quantizeFolder on a model folder', () => {
  for (const { name, fixture, weights, relBound } of COMPONENTS) {
    it(`${name}: loads as quantize 'int8' does, bit for bit, near the float model; other tensors and files unchanged`, async (t) => {
      const source = join(GOLDEN, fixture, 'model');
      const out = join(await tempDir(), 'int8');
      const warnings: VelodiffWarning[] = [];
      const result = await quantizeFolder(source, out, { runtime, onWarning: (w) => warnings.push(w) });

      const inputs = await freshInputs(fixture);
      const atLoad = await outputsOf(source, inputs, 'int8');
      const folder = await outputsOf(out, inputs);
      const float = await outputsOf(source, inputs);
      assert.ok(atLoad.int8Modules && atLoad.int8Modules.length > 0, 'the class quantizes some Linear');
      assert.deepEqual(folder.int8Modules, atLoad.int8Modules);
      assert.ok(sameOutputs(folder.outputs, atLoad.outputs), 'outputs equal quantize at load bit for bit');
      assert.ok(!sameOutputs(folder.outputs, float.outputs), 'outputs are not the float model’s');
      for (const output of Object.keys(float.outputs)) {
        const rel = relativeError(folder.outputs[output].data, float.outputs[output].data);
        t.diagnostic(
          `${output}: max |int8 − float| / max |float| = ${rel.toExponential(2)} (bound ${relBound})`,
        );
        assert.ok(rel <= relBound, `${output}: ${rel} > ${relBound}`);
      }

      assert.equal(result.components.length, 1);
      const [component] = result.components;
      assert.equal(component.className, name);
      assert.equal(component.status, 'quantized');
      assert.equal(component.int8Modules, atLoad.int8Modules.length);
      assert.ok(
        component.bytesAfter < component.bytesBefore,
        `${component.bytesAfter} < ${component.bytesBefore}`,
      );
      assert.equal(result.pipeline, undefined);

      const config = JSON.parse(await readFile(join(out, 'config.json'), 'utf8')) as Record<string, unknown>;
      const original = JSON.parse(await readFile(join(source, 'config.json'), 'utf8')) as Record<
        string,
        unknown
      >;
      const { quantization_config: quantization, ...rest } = config;
      assert.deepEqual(rest, original);
      assert.deepEqual(quantization, {
        velodiff_format: 'int8',
        weights: 'int8, symmetric, one scale per output channel (<module>.weight_scale)',
        activations: 'uint8, dynamic, one scale and zero point per tensor, computed at run time',
        modules: atLoad.int8Modules,
      });
      assert.deepEqual(await filesUnder(out), await filesUnder(source));
      await checkWeights(
        join(source, `${weights}.safetensors`),
        join(out, `${weights}.safetensors`),
        atLoad.int8Modules,
      );
      assert.deepEqual(
        warnings.filter((w) => w.code === 'WEIGHTS_LEFT_OUT'),
        [],
        'no weight file is left out',
      );
    });
  }

  it('a folder already int8 is copied unchanged; a sharded input becomes one file; variants are left out with a warning', async () => {
    const source = await copyModel(join(GOLDEN, 'models/pixart_alpha_tiny/model'));
    // Shard the checkpoint in two, as diffusers does for large models, and add an fp16 variant file.
    const single = join(source, 'diffusion_pytorch_model.safetensors');
    const file = await SafetensorsFile.open(single);
    const shards: Record<string, TensorToWrite>[] = [{}, {}];
    const weightMap: Record<string, string> = {};
    for (const [i, n] of file.names().sort().entries()) {
      const { dtype, shape } = file.info(n);
      shards[i % 2][n] = { dtype, shape: [...shape], data: await file.readBytes(n) };
      weightMap[n] = `diffusion_pytorch_model-0000${(i % 2) + 1}-of-00002.safetensors`;
    }
    await file.close();
    await cp(single, join(source, 'diffusion_pytorch_model.fp16.safetensors'));
    await rm(single);
    for (const [i, shard] of shards.entries())
      await writeSafetensors(
        join(source, `diffusion_pytorch_model-0000${i + 1}-of-00002.safetensors`),
        shard,
      );
    await writeFile(
      join(source, 'diffusion_pytorch_model.safetensors.index.json'),
      JSON.stringify({ metadata: { total_size: 0 }, weight_map: weightMap }),
    );

    const root = await tempDir();
    const warnings: VelodiffWarning[] = [];
    const first = await quantizeFolder(source, join(root, 'a'), {
      runtime,
      onWarning: (w) => warnings.push(w),
    });
    assert.deepEqual(await filesUnder(join(root, 'a')), [
      'config.json',
      'diffusion_pytorch_model.safetensors',
    ]);
    assert.deepEqual(
      warnings.map((w) => [w.code, w.names.map((n) => relative(source, n))]),
      [['WEIGHTS_LEFT_OUT', ['diffusion_pytorch_model.fp16.safetensors']]],
    );
    const inputs = await freshInputs('models/pixart_alpha_tiny');
    const atLoad = await outputsOf(source, inputs, 'int8');
    const folder = await outputsOf(join(root, 'a'), inputs);
    assert.ok(sameOutputs(folder.outputs, atLoad.outputs));
    assert.equal(first.components[0].int8Modules, atLoad.int8Modules?.length);

    const second = await quantizeFolder(join(root, 'a'), join(root, 'b'), { runtime });
    assert.equal(second.components[0].status, 'int8');
    assert.equal(second.components[0].int8Modules, atLoad.int8Modules?.length);
    for (const file of await filesUnder(join(root, 'a')))
      assert.ok((await readFile(join(root, 'a', file))).equals(await readFile(join(root, 'b', file))), file);
  });
});

describe('quantizeFolder on a pipeline folder', () => {
  it('quantizes the transformer and T5, copies the VAE and every other file', async () => {
    const source = await tinyPixArtPipeline();
    const out = join(await tempDir(), 'pipeline-int8');
    const result = await quantizeFolder(source, out, { runtime, onWarning: () => {} });
    assert.equal(result.pipeline, 'PixArtAlphaPipeline');
    assert.deepEqual(
      result.components.map((c) => [c.name, c.className, c.status]),
      [
        ['text_encoder', 'T5EncoderModel', 'quantized'],
        ['transformer', 'PixArtTransformer2DModel', 'quantized'],
        ['vae', 'AutoencoderKL', 'float'],
      ],
    );
    assert.ok(result.bytesAfter < result.bytesBefore);
    assert.deepEqual(await filesUnder(out), await filesUnder(source));
    for (const file of await filesUnder(source)) {
      if (file.startsWith('transformer/') || file.startsWith('text_encoder/')) continue;
      assert.ok((await readFile(join(out, file))).equals(await readFile(join(source, file))), file);
    }
  });
});

describe('quantizeFolder refuses what it cannot write, and writes nothing then', () => {
  const model = join(GOLDEN, 'models/pixart_alpha_tiny/model');

  async function rejects(promise: Promise<unknown>, code: string, message: RegExp): Promise<void> {
    await assert.rejects(promise, (e: unknown) => {
      assert.ok(e instanceof VelodiffError, String(e));
      assert.equal(e.code, code, e.message);
      assert.match(e.message, message);
      return true;
    });
  }

  it('an output that exists and is not empty, the input itself, a folder inside the input', async () => {
    const root = await tempDir();
    const out = join(root, 'taken');
    await mkdir(out);
    await writeFile(join(out, 'keep.txt'), 'mine');
    await rejects(quantizeFolder(model, out, { runtime }), 'OUTPUT_EXISTS', /taken exists and is not empty/);
    assert.deepEqual(await readdir(out), ['keep.txt']);
    await rejects(quantizeFolder(model, model, { runtime }), 'OUTPUT_IS_INPUT', /is the input folder/);
    const copy = await copyModel(model);
    await rejects(
      quantizeFolder(copy, join(copy, 'int8'), { runtime }),
      'OUTPUT_IN_INPUT',
      /inside the input/,
    );
    // An empty output folder is taken.
    const empty = join(root, 'empty');
    await mkdir(empty);
    await quantizeFolder(model, empty, { runtime });
    assert.deepEqual((await readdir(empty)).sort(), ['config.json', 'diffusion_pytorch_model.safetensors']);
    assert.deepEqual((await readdir(root)).sort(), ['empty', 'taken'], 'no temporary folder is left');
  });

  it('an input that is missing or not a model folder', async () => {
    const root = await tempDir();
    await rejects(
      quantizeFolder(join(root, 'nothing'), join(root, 'out'), { runtime }),
      'FILE_MISSING',
      /does not exist/,
    );
    await mkdir(join(root, 'plain'));
    await rejects(
      quantizeFolder(join(root, 'plain'), join(root, 'out'), { runtime }),
      'NOT_A_MODEL',
      /neither model_index\.json .* nor config\.json/,
    );
    assert.deepEqual((await readdir(root)).sort(), ['plain']);
  });

  it('another quant_method (bitsandbytes) is refused, by quantize and at load', async () => {
    const dir = await copyModel(model);
    await patchConfig(dir, { quantization_config: { quant_method: 'bitsandbytes', load_in_8bit: true } });
    const root = await tempDir();
    await rejects(
      quantizeFolder(dir, join(root, 'out'), { runtime }),
      'CONFIG_UNSUPPORTED',
      /"bitsandbytes"/,
    );
    await rejects(loadModel(dir, { runtime }), 'CONFIG_UNSUPPORTED', /"bitsandbytes"/);
    assert.deepEqual(await readdir(root), [], 'neither the output nor a temporary folder is left');
  });

  it('an int8 folder whose config does not match its weights: a float weight listed, a scale missing', async () => {
    const root = await tempDir();
    const good = join(root, 'good');
    await quantizeFolder(model, good, { runtime });
    const config = JSON.parse(await readFile(join(good, 'config.json'), 'utf8')) as {
      quantization_config: { modules: string[] };
    };
    const [first] = config.quantization_config.modules;

    // proj_out stays float at load; listing it makes its F32 weight a mismatch.
    const listed = await copyModel(good);
    await patchConfig(listed, {
      quantization_config: {
        ...config.quantization_config,
        modules: [...config.quantization_config.modules, 'proj_out'],
      },
    });
    await rejects(
      loadModel(listed, { runtime }),
      'WEIGHT_DTYPE',
      /'proj_out\.weight'.*expected I8.*found F32/,
    );
    await rejects(quantizeFolder(listed, join(root, 'out'), { runtime }), 'WEIGHT_DTYPE', /expected I8/);

    const unscaled = await copyModel(good);
    await editWeights(join(unscaled, 'diffusion_pytorch_model.safetensors'), (tensors) => {
      tensors.delete(`${first}.weight_scale`);
    });
    await rejects(
      loadModel(unscaled, { runtime }),
      'WEIGHT_MISSING',
      new RegExp(`'${first}\\.weight_scale'`),
    );
    assert.deepEqual((await readdir(root)).sort(), ['good'], 'the failed quantize left nothing');
  });
});
