import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { PNG } from 'pngjs';
import { main } from '../../src/cli/main.js';
import { tinyPixArtPipeline } from '../fixtures/tiny-pixart-pipeline.js';
import { assertClose, readAllTensors } from '../helpers.js';

const GOLDEN = fileURLToPath(new URL('../golden/', import.meta.url));

async function capture(argv: string[]): Promise<{ code: number; out: string; err: string }> {
  const out: string[] = [];
  const err: string[] = [];
  const log = console.log;
  const error = console.error;
  const write = process.stderr.write.bind(process.stderr);
  console.log = (...a: unknown[]) => void out.push(a.join(' '));
  console.error = (...a: unknown[]) => void err.push(a.join(' '));
  process.stderr.write = ((chunk: string | Uint8Array) => (
    err.push(String(chunk)),
    true
  )) as typeof process.stderr.write;
  try {
    const code = await main(argv[0] === 'inspect' ? argv : [...argv, '--threads', '1']);
    return { code, out: out.join('\n'), err: err.join('\n') };
  } finally {
    console.log = log;
    console.error = error;
    process.stderr.write = write;
  }
}

function maxAbs(a: Float32Array): number {
  return a.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
}

describe('velodiff forward', () => {
  for (const [model, method, outputs] of [
    ['models/pixart_alpha_tiny', undefined, ['sample']],
    ['models/pixart_alpha_tiny_microcond', undefined, ['sample']],
    ['text_encoders/t5_encoder_tiny', undefined, ['last_hidden_state']],
  ] as const) {
    it(`${model}: writes outputs named as diffusers, equal to the golden ones`, async () => {
      const out = join(await mkdtemp(join(tmpdir(), 'velodiff-fwd-')), 'out.safetensors');
      const args = [
        'forward',
        `${GOLDEN}${model}/model`,
        '--inputs',
        `${GOLDEN}${model}/inputs.safetensors`,
        '--out',
        out,
      ];
      const r = await capture(method ? [...args, '--method', method] : args);
      assert.equal(r.code, 0, r.err);
      const ours = await readAllTensors(out);
      const golden = await readAllTensors(`${GOLDEN}${model}/outputs.safetensors`);
      for (const name of outputs) {
        const g = golden[name].data as Float32Array;
        assert.deepEqual(ours[name].shape, golden[name].shape);
        assertClose(ours[name].data as Float32Array, g, {
          atol: 1e-4 * Math.max(1, maxAbs(g)),
          rtol: 0,
          what: name,
        });
      }
    });
  }

  it('--attention clear:R with a window covering the token grid reproduces the golden (full-attention) output', async () => {
    const model = 'models/pixart_alpha_tiny';
    const out = join(await mkdtemp(join(tmpdir(), 'velodiff-fwd-')), 'out.safetensors');
    const r = await capture([
      'forward',
      `${GOLDEN}${model}/model`,
      '--inputs',
      `${GOLDEN}${model}/inputs.safetensors`,
      '--out',
      out,
      '--attention',
      'clear:6',
    ]);
    assert.equal(r.code, 0, r.err);
    const g = (await readAllTensors(`${GOLDEN}${model}/outputs.safetensors`)).sample.data as Float32Array;
    assertClose((await readAllTensors(out)).sample.data as Float32Array, g, {
      atol: 1e-4 * Math.max(1, maxAbs(g)),
      rtol: 0,
      what: 'sample',
    });
  });

  it('rejects malformed acceleration flags, and acceleration flags on models that take none', async () => {
    const model = `${GOLDEN}models/pixart_alpha_tiny`;
    const args = [
      'forward',
      `${model}/model`,
      '--inputs',
      `${model}/inputs.safetensors`,
      '--out',
      '/tmp/x.safetensors',
    ];
    for (const bad of [
      ['--attention', 'clear:x'],
      ['--attention', 'window'],
      ['--attention', 'linfusion'],
      ['--attention-weights', 'w'],
    ]) {
      const r = await capture([...args, ...bad]);
      assert.equal(r.code, 2, `${bad.join(' ')}: ${r.err}`);
    }
    const vae = `${GOLDEN}models/vae_kl_tiny`;
    const r = await capture([
      'forward',
      `${vae}/model`,
      '--inputs',
      `${vae}/inputs.safetensors`,
      '--out',
      '/tmp/x.safetensors',
      '--attention',
      'clear:2',
    ]);
    assert.equal(r.code, 2);
    assert.match(r.err, /apply to denoisers; AutoencoderKL takes neither/);
  });

  it('VAE encode via --method encode gives latent_mean/logvar/std', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'velodiff-fwd-'));
    const model = `${GOLDEN}models/vae_kl_tiny`;
    const inputs = await readAllTensors(`${model}/inputs.safetensors`);
    const { writeHostTensors } = await import('../../src/io/host-tensors.js');
    // The fixture stores the encoder input as `image`; the CLI takes diffusers' argument name `sample`.
    await writeHostTensors(join(dir, 'in.safetensors'), { sample: inputs.image });
    const r = await capture([
      'forward',
      `${model}/model`,
      '--inputs',
      join(dir, 'in.safetensors'),
      '--method',
      'encode',
      '--out',
      join(dir, 'out.safetensors'),
    ]);
    assert.equal(r.code, 0, r.err);
    const ours = await readAllTensors(join(dir, 'out.safetensors'));
    const golden = await readAllTensors(`${model}/outputs.safetensors`);
    for (const name of ['latent_mean', 'latent_logvar', 'latent_std']) {
      const g = golden[name].data as Float32Array;
      assertClose(ours[name].data as Float32Array, g, {
        atol: 1e-4 * Math.max(1, maxAbs(g)),
        rtol: 0,
        what: name,
      });
    }
  });

  it('rejects a missing --inputs, an unknown method and bad --kwargs with exit code 2', async () => {
    const model = `${GOLDEN}models/pixart_alpha_tiny/model`;
    assert.equal((await capture(['forward', model, '--out', 'x'])).code, 2);
    const inputs = `${GOLDEN}models/pixart_alpha_tiny/inputs.safetensors`;
    const bad = await capture([
      'forward',
      model,
      '--inputs',
      inputs,
      '--out',
      '/tmp/x.safetensors',
      '--method',
      'encode',
    ]);
    assert.equal(bad.code, 2);
    assert.match(bad.err, /PixArtTransformer2DModel has no method "encode"/);
    assert.match(
      (await capture(['forward', model, '--inputs', inputs, '--out', 'x', '--kwargs', '{oops'])).err,
      /--kwargs is not valid JSON/,
    );
  });
});

describe('velodiff inspect', () => {
  it('reports class, parameter count (= the golden meta.json count) and dtypes of each component', async () => {
    const r = await capture(['inspect', `${GOLDEN}pipelines/pipeline_pixart_alpha_ddim/pipeline`, '--json']);
    assert.equal(r.code, 0, r.err);
    const info = JSON.parse(r.out) as {
      pipeline: string;
      components: { name: string; className: string; parameters: number; dtypes: Record<string, number> }[];
    };
    assert.equal(info.pipeline, 'PixArtAlphaPipeline');
    assert.deepEqual(info.components.map((c) => c.name).sort(), ['transformer', 'vae']);
    const model = await capture(['inspect', `${GOLDEN}models/pixart_alpha_tiny/model`, '--json']);
    const meta = JSON.parse(readFileSync(`${GOLDEN}models/pixart_alpha_tiny/meta.json`, 'utf8')) as {
      num_parameters: number;
    };
    const [c] = (
      JSON.parse(model.out) as {
        components: { className: string; parameters: number; dtypes: Record<string, number> }[];
      }
    ).components;
    assert.equal(c.className, 'PixArtTransformer2DModel');
    assert.equal(c.parameters, meta.num_parameters);
    assert.deepEqual(c.dtypes, { F32: meta.num_parameters });
  });
});

describe('velodiff generate', () => {
  it('writes a PNG from a prompt with a full tiny PixArt pipeline (T5, transformer, VAE); same seed, same image', async () => {
    const dir = await tinyPixArtPipeline();
    const outDir = await mkdtemp(join(tmpdir(), 'velodiff-gen-'));
    const run = async (name: string, seed: string): Promise<Buffer> => {
      const path = join(outDir, name);
      const r = await capture([
        'generate',
        '--model',
        dir,
        '--prompt',
        'a cat',
        '--steps',
        '3',
        '--seed',
        seed,
        '--width',
        '16',
        '--height',
        '16',
        '--out',
        path,
      ]);
      assert.equal(r.code, 0, r.err);
      assert.match(r.err, /step 3\/3/);
      return readFileSync(path);
    };
    const a = await run('a.png', '7');
    const b = await run('b.png', '7');
    const c = await run('c.png', '8');
    const png = PNG.sync.read(a);
    assert.equal(png.width, 16);
    assert.equal(png.height, 16);
    assert.ok(a.equals(b), 'same seed gives the same file');
    assert.ok(!a.equals(c), 'another seed gives another image');
  });

  it('takes --attention, --tgate and rejects a malformed --tgate', async () => {
    const dir = await tinyPixArtPipeline();
    const path = join(await mkdtemp(join(tmpdir(), 'velodiff-gen-')), 'x.png');
    const common = [
      'generate',
      '--model',
      dir,
      '--prompt',
      'a cat',
      '--steps',
      '4',
      '--seed',
      '1',
      '--width',
      '16',
      '--height',
      '16',
      '--out',
      path,
    ];
    const ok = await capture([...common, '--attention', 'clear:2', '--tgate', '2,1,1,0']);
    assert.equal(ok.code, 0, ok.err);
    assert.equal(PNG.sync.read(readFileSync(path)).width, 16);
    const bad = await capture([...common, '--tgate', '2,x']);
    assert.equal(bad.code, 2);
    assert.match(bad.err, /--tgate sp interval must be an integer/);
  });

  it('switches the scheduler by name and rejects unknown ones', async () => {
    const dir = await tinyPixArtPipeline();
    const path = join(await mkdtemp(join(tmpdir(), 'velodiff-gen-')), 'x.png');
    const ok = await capture([
      'generate',
      '--model',
      dir,
      '--prompt',
      'the cat',
      '--steps',
      '2',
      '--seed',
      '1',
      '--width',
      '16',
      '--height',
      '16',
      '--scheduler',
      'dpm++',
      '--out',
      path,
    ]);
    assert.equal(ok.code, 0, ok.err);
    const bad = await capture([
      'generate',
      '--model',
      dir,
      '--prompt',
      'x',
      '--scheduler',
      'nope',
      '--out',
      path,
    ]);
    assert.equal(bad.code, 2);
    assert.match(bad.err, /nope/);
  });
});
