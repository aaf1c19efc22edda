/**
 * `velodiff inspect` on SD/SDXL pipeline folders (the tiny fixtures and the golden SD pipeline) and on
 * the golden UNet, VAE and text-encoder folders. Parameter counts are checked against numbers found
 * without velodiff: each safetensors header read here by hand, the golden meta.json's torch
 * `num_parameters`, and for the fixtures' random CLIPs the count their config gives.
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { cp, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

import { writeSafetensors, type TensorToWrite } from '../../src/io/safetensors.js';
import { readAllTensors } from '../helpers.js';
import { tinySdPipeline, tinySdxlPipeline } from '../fixtures/tiny-sd-pipelines.js';
import { captureCli } from './capture.js';

const GOLDEN = fileURLToPath(new URL('../golden/', import.meta.url));

interface Inspected {
  dir: string;
  pipeline?: string;
  components: {
    name: string;
    className: string;
    parameters: number;
    dtypes: Record<string, number>;
    buffers: number;
  }[];
  skipped?: { name: string; className: string; reason: string }[];
}

const dirs: string[] = [];
after(async () => {
  await Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true })));
});

async function inspect(dir: string): Promise<Inspected> {
  const r = await captureCli(['inspect', dir, '--json']);
  assert.equal(r.code, 0, r.err);
  return JSON.parse(r.out) as Inspected;
}

async function readJson<T>(path: string): Promise<T> {
  return JSON.parse(await readFile(path, 'utf8')) as T;
}

/** Element counts of a folder's safetensors file, floating-point and other, from its header alone. */
async function headerCounts(dir: string): Promise<{ float: number; other: number }> {
  const file = (await readdir(dir)).find((f) => f.endsWith('.safetensors'));
  assert.ok(file, `no safetensors in ${dir}`);
  const bytes = await readFile(join(dir, file));
  const length = Number(bytes.readBigUInt64LE(0));
  const header = JSON.parse(bytes.subarray(8, 8 + length).toString('utf8')) as Record<
    string,
    { dtype: string; shape: number[] }
  >;
  let float = 0;
  let other = 0;
  for (const [name, entry] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    const count = entry.shape.reduce((a, b) => a * b, 1);
    if (/^(F|BF)\d+/.test(entry.dtype)) float += count;
    else other += count;
  }
  return { float, other };
}

/** transformers' CLIPTextModel(WithProjection) parameter count from its config.json. */
function clipParameters(c: {
  vocab_size: number;
  hidden_size: number;
  intermediate_size: number;
  num_hidden_layers: number;
  max_position_embeddings: number;
  projection_dim: number;
  architectures: string[];
}): number {
  const h = c.hidden_size;
  const i = c.intermediate_size;
  const embeddings = (c.vocab_size + c.max_position_embeddings) * h;
  // q, k, v, out projections; two layer norms; fc1, fc2.
  const layer = 4 * (h * h + h) + 2 * 2 * h + (h * i + i) + (i * h + h);
  const projection = c.architectures[0] === 'CLIPTextModelWithProjection' ? h * c.projection_dim : 0;
  return embeddings + c.num_hidden_layers * layer + 2 * h + projection;
}

/** The class a component's config.json names (diffusers `_class_name`, transformers `architectures`). */
async function configClass(dir: string): Promise<string> {
  const config = await readJson<{ _class_name?: string; architectures?: string[] }>(join(dir, 'config.json'));
  return config._class_name ?? (config.architectures ?? [])[0];
}

describe('velodiff inspect on SD and SDXL pipeline folders', () => {
  const cases = [
    {
      what: 'tiny SD pipeline',
      make: async () => (await tinySdPipeline()).dir,
      pipeline: 'StableDiffusionPipeline',
      models: { text_encoder: 'CLIPTextModel', unet: 'UNet2DConditionModel', vae: 'AutoencoderKL' },
      skipped: ['scheduler', 'tokenizer'],
      golden: {},
    },
    {
      what: 'tiny SDXL pipeline',
      make: async () => (await tinySdxlPipeline()).dir,
      pipeline: 'StableDiffusionXLPipeline',
      models: {
        text_encoder: 'CLIPTextModel',
        text_encoder_2: 'CLIPTextModelWithProjection',
        unet: 'UNet2DConditionModel',
        vae: 'AutoencoderKL',
      },
      skipped: ['scheduler', 'tokenizer', 'tokenizer_2'],
      golden: { unet: 'models/unet2d_sdxl_tiny', vae: 'models/vae_kl_tiny' },
    },
    {
      what: 'golden SD pipeline',
      make: async () => join(GOLDEN, 'pipelines/pipeline_sd15_ddim/pipeline'),
      pipeline: 'StableDiffusionPipeline',
      models: { unet: 'UNet2DConditionModel', vae: 'AutoencoderKL' },
      skipped: ['scheduler'],
      golden: {},
    },
  ];
  for (const c of cases) {
    it(`${c.what}: every model component with its class and parameter count; tokenizers and schedulers skipped`, async () => {
      const dir = await c.make();
      if (!dir.startsWith(GOLDEN)) dirs.push(dir);
      const info = await inspect(dir);
      assert.equal(info.pipeline, c.pipeline);
      assert.deepEqual(info.components.map((m) => m.name).sort(), Object.keys(c.models).sort());
      assert.deepEqual(
        (info.skipped ?? []).map((s) => [s.name, s.reason]).sort(),
        c.skipped.map((name) => [name, 'no weights']),
      );
      const index = await readJson<Record<string, unknown>>(join(dir, 'model_index.json'));
      for (const component of info.components) {
        const sub = join(dir, component.name);
        const className: string | undefined = (c.models as Record<string, string>)[component.name];
        assert.ok(className, `unexpected component ${component.name}`);
        assert.equal(component.className, className, component.name);
        assert.equal(await configClass(sub), className, `${component.name}/config.json`);
        assert.equal((index[component.name] as string[])[1], className, `model_index.json ${component.name}`);
        const counts = await headerCounts(sub);
        assert.ok(counts.float > 0);
        assert.equal(component.parameters, counts.float, `${c.what}: ${component.name} parameters`);
        assert.equal(component.buffers, counts.other, `${c.what}: ${component.name} buffers`);
        assert.deepEqual(component.dtypes, { F32: counts.float });
        if (className.startsWith('CLIP')) {
          const config = await readJson<Parameters<typeof clipParameters>[0]>(join(sub, 'config.json'));
          assert.equal(
            component.parameters,
            clipParameters(config),
            `${component.name}: count from its config`,
          );
        }
        const golden = (c.golden as Record<string, string>)[component.name];
        if (golden) {
          const meta = await readJson<{ num_parameters: number }>(join(GOLDEN, golden, 'meta.json'));
          assert.equal(component.parameters, meta.num_parameters, `${component.name}: torch's count`);
        }
      }

      const text = await captureCli(['inspect', dir]);
      assert.equal(text.code, 0, text.err);
      const lines = text.out.split('\n');
      assert.equal(lines[0], `${c.pipeline} (${dir})`);
      for (const component of info.components) {
        assert.ok(
          lines.some(
            (l) =>
              l.startsWith(`${component.name}: ${component.className} — `) && l.includes(' parameters (F32 '),
          ),
          `no line for ${component.name} in:\n${text.out}`,
        );
      }
      for (const name of c.skipped)
        assert.ok(lines.some((l) => l.startsWith(`${name}: `) && l.includes('skipped')));
    });
  }
});

describe('velodiff inspect on golden model folders', () => {
  it('class and parameter count of every golden UNet, VAE and text encoder equal its meta.json', async () => {
    const folders: string[] = [];
    for (const group of ['models', 'text_encoders']) {
      for (const name of await readdir(join(GOLDEN, group))) {
        // Variants that share another fixture's weights have no model folder of their own.
        if (/^(unet|vae|clip|t5)/.test(name) && existsSync(join(GOLDEN, group, name, 'model')))
          folders.push(join(GOLDEN, group, name));
      }
    }
    for (const name of [
      'unet2d_sd15_tiny',
      'unet2d_sdxl_tiny',
      'vae_kl_tiny',
      'clip_text_with_projection_tiny',
    ])
      assert.ok(
        folders.some((f) => f.endsWith(name)),
        `no golden ${name} among ${folders.join(', ')}`,
      );
    for (const folder of folders) {
      const meta = await readJson<{ num_parameters: number; model_class: string }>(join(folder, 'meta.json'));
      const info = await inspect(join(folder, 'model'));
      assert.equal(info.pipeline, undefined);
      assert.equal(info.components.length, 1);
      const [component] = info.components;
      assert.equal(component.className, meta.model_class, folder);
      assert.equal(component.parameters, meta.num_parameters, folder);
      assert.deepEqual(component.dtypes, { F32: meta.num_parameters }, folder);
      assert.equal(component.buffers, 0, folder);
    }
  });

  it("counts an SD 1.x CLIP checkpoint's saved position_ids as a buffer, not as parameters", async () => {
    const golden = join(GOLDEN, 'text_encoders/clip_text_tiny');
    const dir = await mkdtemp(join(tmpdir(), 'velodiff-inspect-'));
    dirs.push(dir);
    await cp(join(golden, 'model'), dir, { recursive: true });
    const config = await readJson<{ max_position_embeddings: number }>(join(dir, 'config.json'));
    const tensors: Record<string, TensorToWrite> = {};
    for (const [name, t] of Object.entries(await readAllTensors(join(dir, 'model.safetensors')))) {
      tensors[name] = { dtype: 'F32', shape: [...t.shape], data: t.data as Float32Array };
    }
    const positions = config.max_position_embeddings;
    tensors['text_model.embeddings.position_ids'] = {
      dtype: 'I64',
      shape: [1, positions],
      data: BigInt64Array.from({ length: positions }, (_, i) => BigInt(i)),
    };
    await writeSafetensors(join(dir, 'model.safetensors'), tensors);
    const meta = await readJson<{ num_parameters: number }>(join(golden, 'meta.json'));
    const [component] = (await inspect(dir)).components;
    assert.equal(component.parameters, meta.num_parameters);
    assert.equal(component.buffers, positions);
    assert.deepEqual(component.dtypes, { F32: meta.num_parameters });
    const text = await captureCli(['inspect', dir]);
    assert.match(text.out, new RegExp(`\\+ ${positions} in integer buffers`));
  });

  it('reports a listed component without a folder as skipped, and a model folder without config.json as an error', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'velodiff-inspect-'));
    dirs.push(dir);
    await cp(join(GOLDEN, 'pipelines/pipeline_sd15_ddim/pipeline'), dir, { recursive: true });
    const index = await readJson<Record<string, unknown>>(join(dir, 'model_index.json'));
    index.safety_checker = ['stable_diffusion', 'StableDiffusionSafetyChecker'];
    await writeFile(join(dir, 'model_index.json'), JSON.stringify(index));
    const info = await inspect(dir);
    assert.deepEqual(
      info.skipped?.find((s) => s.name === 'safety_checker'),
      {
        name: 'safety_checker',
        className: 'StableDiffusionSafetyChecker',
        reason: 'no folder',
      },
    );
    await rm(join(dir, 'unet/config.json'));
    const r = await captureCli(['inspect', dir]);
    assert.notEqual(r.code, 0);
    assert.match(r.err, /unet[\\/]config\.json/);
  });
});
