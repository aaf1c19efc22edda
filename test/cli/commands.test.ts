import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { PNG } from 'pngjs';
import { clearPlan } from '../../src/attention/clear-window.js';
import { writeHostTensors } from '../../src/io/host-tensors.js';
import type { PixArtRunOptions } from '../../src/pipelines/index.js';
import { DiffusionPipeline } from '../../src/pipelines/index.js';
import type { HostTensor } from '../../src/runtime/host-tensor.js';
import { hostTensor } from '../../src/runtime/host-tensor.js';
import { Runtime } from '../../src/runtime/runtime.js';
import { schedulerFromConfig } from '../../src/schedulers/index.js';
import { assertClose, assertMaxAbsError, maxAbs } from '../compare.js';
import { tinyPixArtPipeline } from '../fixtures/tiny-pixart-pipeline.js';
import { imageRgb, pngRgb, randomArray, readAllTensors } from '../helpers.js';
import { PixArtReference, refInputs } from '../pipelines/pixart-reference.js';
import { STEP_TOLERANCE } from '../pipelines/record-steps.js';
import { seededUniform, testSeed } from '../random.js';
import { captureCli, type CliResult } from './capture.js';

const GOLDEN = fileURLToPath(new URL('../golden/', import.meta.url));

/** `velodiff ...argv` in this process on one thread (inspect takes no --threads). */
function capture(argv: string[]): Promise<CliResult> {
  return captureCli(argv[0] === 'inspect' ? argv : [...argv, '--threads', '1']);
}

const random = seededUniform(testSeed('test/cli/commands.test.ts'));
const runtime = new Runtime({ worker: false, threads: 1 });
after(() => runtime.dispose());

/** The `forward` command on a model folder and an inputs file; returns the outputs it wrote. */
async function forward(model: string, inputs: string, extra: string[]): Promise<Record<string, HostTensor>> {
  const out = join(await mkdtemp(join(tmpdir(), 'velodiff-fwd-')), 'out.safetensors');
  const r = await capture(['forward', model, '--inputs', inputs, '--out', out, ...extra]);
  assert.equal(r.code, 0, r.err);
  return readAllTensors(out);
}

/**
 * The RGB bytes a PNG written by `generate` should hold: the library pipeline run with the options
 * the flags stand for, mapped to 8 bits as diffusers' numpy_to_pil does ((x·255).round()).
 */
async function expectedPixels(
  dir: string,
  options: PixArtRunOptions,
  scheduler?: string,
): Promise<Uint8Array> {
  const pipe = await DiffusionPipeline.fromPretrained(dir, { runtime });
  try {
    if (scheduler) pipe.scheduler = schedulerFromConfig({ ...pipe.scheduler.config, _class_name: scheduler });
    const { images } = await pipe.run(options);
    return imageRgb(images as HostTensor);
  } finally {
    await pipe.close();
  }
}

/**
 * The PNG equals the library's image to within one 8-bit level (the command and this process compile
 * their own sessions, and a value next to a rounding boundary may land on either side).
 */
function assertSameImage(actual: Uint8Array, expected: Uint8Array, what: string): void {
  assertMaxAbsError(actual, expected, 1, what);
}

describe('velodiff forward', () => {
  const hiddenStates = ['--kwargs', '{"output_hidden_states": true}'];
  const clipHidden = ['hidden_states.0', 'hidden_states.1', 'hidden_states.2', 'hidden_states.3'];
  // [golden case, outputs compared, extra flags, the case whose model/ folder it runs when not its own]
  for (const [model, outputs, extra, weights] of [
    ['models/pixart_alpha_tiny', ['sample'], [], undefined],
    ['models/pixart_alpha_tiny_microcond', ['sample'], [], undefined],
    ['text_encoders/t5_encoder_tiny', ['last_hidden_state'], [], undefined],
    [
      'text_encoders/clip_text_tiny',
      ['last_hidden_state', 'pooler_output', ...clipHidden],
      hiddenStates,
      undefined,
    ],
    [
      'text_encoders/clip_text_with_projection_tiny',
      ['last_hidden_state', 'text_embeds', ...clipHidden],
      hiddenStates,
      undefined,
    ],
    ['models/unet2d_sd15_tiny', ['sample'], [], undefined],
    ['models/unet2d_sd15_tiny_scalar_t', ['sample'], [], 'models/unet2d_sd15_tiny'],
    ['models/unet2d_sd2_linearproj_tiny', ['sample'], [], undefined],
    ['models/unet2d_sdxl_tiny', ['sample'], [], undefined],
    ['models/unet2d_lcm_timecond_tiny', ['sample'], [], undefined],
  ] as const) {
    it(`${model}: writes outputs named as diffusers, equal to the golden ones`, async () => {
      const out = join(await mkdtemp(join(tmpdir(), 'velodiff-fwd-')), 'out.safetensors');
      const args = [
        'forward',
        `${GOLDEN}${weights ?? model}/model`,
        '--inputs',
        `${GOLDEN}${model}/inputs.safetensors`,
        '--out',
        out,
        ...extra,
      ];
      const r = await capture(args);
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
    const ours = await forward(`${GOLDEN}${model}/model`, `${GOLDEN}${model}/inputs.safetensors`, [
      '--attention',
      'clear:6',
    ]);
    const g = (await readAllTensors(`${GOLDEN}${model}/outputs.safetensors`)).sample.data as Float32Array;
    assertClose(ours.sample.data as Float32Array, g, {
      atol: 1e-4 * Math.max(1, maxAbs(g)),
      rtol: 0,
      what: 'sample',
    });
  });

  it('--attention clear:R with a window smaller than the grid equals a dense masked float64 reference (dense and tiled plans)', async () => {
    const model = `${GOLDEN}models/pixart_alpha_tiny/model`;
    const reference = await PixArtReference.load(model);
    const dir = await mkdtemp(join(tmpdir(), 'velodiff-fwd-'));
    // The golden inputs (8×8 latent: a 4×4 token grid) and fresh ones at 16×16 (an 8×8 grid).
    const golden = await readAllTensors(`${GOLDEN}models/pixart_alpha_tiny/inputs.safetensors`);
    const mask = Float32Array.from({ length: 12 }, (_, i) => (i % 6 < 4 ? 1 : 0));
    const fresh = {
      hidden_states: hostTensor('float32', [2, 4, 16, 16], randomArray(2 * 4 * 16 * 16, random, -2, 2)),
      timestep: hostTensor('float32', [2], Float32Array.of(Math.floor(random() * 1000), 37)),
      encoder_hidden_states: hostTensor('float32', [2, 6, 32], randomArray(2 * 6 * 32, random, -2, 2)),
      encoder_attention_mask: hostTensor('float32', [2, 6], mask),
    };
    await writeHostTensors(join(dir, 'fresh.safetensors'), fresh);
    for (const { inputs, path, radius, plan } of [
      {
        inputs: golden,
        path: `${GOLDEN}models/pixart_alpha_tiny/inputs.safetensors`,
        radius: 2,
        plan: 'dense',
      },
      { inputs: fresh, path: join(dir, 'fresh.safetensors'), radius: 3, plan: 'tiled' },
    ] as const) {
      const side = inputs.hidden_states.shape[2] / 2;
      const grid = { height: side, width: side };
      // Not the whole-grid fallback, and the masked lowering runs with this plan (3 heads, D 8 + Dv 8).
      assert.ok(
        (side - 1) ** 2 * 2 >= radius * radius,
        `r=${radius} leaves part of the ${side}×${side} grid out`,
      );
      assert.equal(
        clearPlan(grid, radius, { textTokens: 0, pooledTokens: 0, numHeads: 3, channels: 16 }).kind,
        plan,
      );
      const ours = await forward(model, path, ['--attention', `clear:${radius}`]);
      const expected = reference.forward(refInputs(inputs), { selfAttention: { kind: 'clear', radius } });
      assert.deepEqual(ours.sample.shape, expected.shape);
      assertMaxAbsError(
        ours.sample.data as Float32Array,
        expected.data,
        STEP_TOLERANCE * Math.max(1, maxAbs(expected.data)),
        `clear:${radius} on the ${side}×${side} grid`,
      );
    }
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
    const run7 = {
      prompt: 'a cat',
      numInferenceSteps: 3,
      guidanceScale: 4.5,
      seed: 7,
      width: 16,
      height: 16,
    };
    assertSameImage(pngRgb(a), await expectedPixels(dir, run7), 'the PNG holds the pipeline image, seed 7');
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
    // The image is the pipeline's with CLEAR r=2 and T-GATE (gate 2, sp 1, fi 1, warm-up 0).
    const run: PixArtRunOptions = {
      prompt: 'a cat',
      numInferenceSteps: 4,
      guidanceScale: 4.5,
      seed: 1,
      width: 16,
      height: 16,
    };
    const expected = await expectedPixels(dir, {
      ...run,
      attention: { kind: 'clear', radius: 2 },
      tgate: { gateStep: 2, spInterval: 1, fiInterval: 1, warmUp: 0 },
    });
    assertSameImage(pngRgb(readFileSync(path)), expected, '--attention clear:2 --tgate 2,1,1,0');
    const plain = await expectedPixels(dir, run);
    assert.ok(
      plain.some((v, i) => Math.abs(v - expected[i]) > 1),
      'the flags change the image by more than the tolerance',
    );
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
    const run: PixArtRunOptions = {
      prompt: 'the cat',
      numInferenceSteps: 2,
      guidanceScale: 4.5,
      seed: 1,
      width: 16,
      height: 16,
    };
    const expected = await expectedPixels(dir, run, 'DPMSolverMultistepScheduler');
    assertSameImage(pngRgb(readFileSync(path)), expected, '--scheduler dpm++');
    const ddim = await expectedPixels(dir, run);
    assert.ok(
      ddim.some((v, i) => Math.abs(v - expected[i]) > 1),
      "DPM-Solver++ gives another image than the folder's DDIM",
    );
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
