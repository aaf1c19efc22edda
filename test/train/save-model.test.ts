/**
 * saveModelFolder round trips: a random-init tiny PixArt, AutoencoderKL and T5EncoderModel (shapes
 * discovered from the golden configs, PyTorch default init) saved in float32, float16 and bfloat16,
 * loaded by each class's fromPretrained with no warning, and run: the loaded model's forward equals the
 * training graph's forward (the same builder, parameters fed as inputs) on the same parameters, rounded
 * to the stored dtype.
 */
import assert from 'node:assert/strict';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

import { WeightError } from '../../src/errors.js';
import type { Graph } from '../../src/graph/graph.js';
import { readConfig } from '../../src/io/diffusers.js';
import { bf16ToF32, f16ToF32, f32ToBf16, f32ToF16 } from '../../src/io/dtypes.js';
import { AutoencoderKL, buildAutoencoderKLGraph } from '../../src/models/autoencoder-kl.js';
import { sincosPositionEmbedding2d } from '../../src/models/embeddings.js';
import type { DiffusersModel } from '../../src/models/model.js';
import {
  buildPixArtGraph,
  parsePixArtConfig,
  PixArtTransformer2DModel,
} from '../../src/models/pixart-transformer.js';
import { buildT5EncoderGraph, parseT5EncoderConfig, T5EncoderModel } from '../../src/models/t5-encoder.js';
import { parseAutoencoderKLConfig } from '../../src/models/vae/config.js';
import { ParameterInputs } from '../../src/nn/weights.js';
import type { HostTensor } from '../../src/runtime/host-tensor.js';
import { hostTensor } from '../../src/runtime/host-tensor.js';
import { discoverParameterShapes, initParameters } from '../../src/train/parameters.js';
import { saveModelFolder, type SavedDType } from '../../src/train/save-model.js';
import type { VelodiffWarning } from '../../src/warnings.js';
import { assertScaledMaxAbsError } from '../compare.js';
import { randomTensor, testRuntime } from '../helpers.js';
import { seededUniform, testSeed } from '../random.js';

const GOLDEN = fileURLToPath(new URL('../golden/', import.meta.url));
const DTYPES: readonly SavedDType[] = ['float32', 'float16', 'bfloat16'];

function rounded(params: ReadonlyMap<string, Float32Array>, dtype: SavedDType): Map<string, Float32Array> {
  const round = (v: Float32Array): Float32Array =>
    dtype === 'float16' ? f16ToF32(f32ToF16(v)) : dtype === 'bfloat16' ? bf16ToF32(f32ToBf16(v)) : v;
  return new Map([...params].map(([name, values]) => [name, round(values)]));
}

/** The training graph's forward: `build` with the parameters as graph inputs, fed `params`. */
async function trainingForward(
  shapes: ReadonlyMap<string, readonly number[]>,
  params: ReadonlyMap<string, Float32Array>,
  build: (source: ParameterInputs) => Graph,
  feeds: Record<string, HostTensor>,
): Promise<Record<string, HostTensor>> {
  const source = ParameterInputs.fromShapes(Object.fromEntries(shapes));
  const g = build(source);
  const all: Record<string, HostTensor> = { ...feeds };
  for (const name of Object.keys(source.inputsOf(g))) {
    all[name] = hostTensor('float32', shapes.get(name)!, params.get(name)!);
  }
  return (await testRuntime().compile(g)).run(all);
}

interface Case {
  className: string;
  library: 'diffusers' | 'transformers';
  goldenDir: string;
  shapes(config: Record<string, unknown>, dir: string): Map<string, number[]>;
  load(dir: string, onWarning: (w: VelodiffWarning) => void): Promise<DiffusersModel>;
  /** Inputs of the loaded model's forward, and the training graph with its extra feeds. */
  inputs(random: () => number): Record<string, HostTensor>;
  training(config: Record<string, unknown>, dir: string, source: ParameterInputs): Graph;
  trainingFeeds(
    config: Record<string, unknown>,
    dir: string,
    inputs: Record<string, HostTensor>,
  ): Record<string, HostTensor>;
  output: string;
  trainingOutput: string;
}

const PIXART_OPTIONS = { height: 8, width: 8, captionLength: 6, withMask: true };

const CASES: Case[] = [
  {
    className: 'PixArtTransformer2DModel',
    library: 'diffusers',
    goldenDir: 'models/pixart_alpha_tiny/model',
    shapes: (config, dir) =>
      discoverParameterShapes((s) => buildPixArtGraph(parsePixArtConfig(config, dir), s, PIXART_OPTIONS)),
    load: (dir, onWarning) =>
      PixArtTransformer2DModel.fromPretrained(dir, { runtime: testRuntime(), onWarning }),
    inputs: (random) => ({
      hidden_states: randomTensor([2, 4, 8, 8], random),
      encoder_hidden_states: randomTensor([2, 6, 32], random),
      timestep: hostTensor('float32', [2], [17, 803]),
      encoder_attention_mask: hostTensor('float32', [2, 6], [1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1, 1]),
    }),
    training: (config, dir, source) =>
      buildPixArtGraph(parsePixArtConfig(config, dir), source, PIXART_OPTIONS),
    trainingFeeds: (config, dir, inputs) => {
      const c = parsePixArtConfig(config, dir);
      const grid = 8 / c.patchSize;
      const pos = sincosPositionEmbedding2d(
        c.innerDim,
        grid,
        grid,
        c.sampleSize / c.patchSize,
        c.interpolationScale,
      );
      return { ...inputs, pos_embed: hostTensor('float32', [1, grid * grid, c.innerDim], pos) };
    },
    output: 'sample',
    trainingOutput: 'sample',
  },
  {
    className: 'AutoencoderKL',
    library: 'diffusers',
    goldenDir: 'models/vae_kl_tiny/model',
    shapes: (config, dir) =>
      discoverParameterShapes((s) => {
        const c = parseAutoencoderKLConfig(config, dir);
        buildAutoencoderKLGraph(c, s, 'encode', [1, 3, 8, 8]);
        buildAutoencoderKLGraph(c, s, 'decode', [1, 4, 2, 2]);
      }),
    load: (dir, onWarning) => AutoencoderKL.fromPretrained(dir, { runtime: testRuntime(), onWarning }),
    inputs: (random) => ({ sample: randomTensor([2, 3, 16, 16], random) }),
    training: (config, dir, source) =>
      buildAutoencoderKLGraph(parseAutoencoderKLConfig(config, dir), source, 'forward', [2, 3, 16, 16]),
    trainingFeeds: (_config, _dir, inputs) => ({ x: inputs.sample }),
    output: 'sample',
    trainingOutput: 'sample',
  },
  {
    className: 'T5EncoderModel',
    library: 'transformers',
    goldenDir: 'text_encoders/t5_encoder_tiny/model',
    shapes: (config, dir) =>
      discoverParameterShapes((s) =>
        buildT5EncoderGraph(parseT5EncoderConfig(config, dir), s, {
          seqLength: 1,
          idsDType: 'int64',
          maskDType: 'int64',
          outputHiddenStates: false,
        }),
      ),
    load: (dir, onWarning) => T5EncoderModel.fromPretrained(dir, { runtime: testRuntime(), onWarning }),
    inputs: (random) => ({
      input_ids: hostTensor(
        'int64',
        [2, 5],
        Array.from({ length: 10 }, () => Math.floor(100 * random())),
      ),
      attention_mask: hostTensor('int64', [2, 5], [1, 1, 1, 0, 0, 1, 1, 1, 1, 1]),
    }),
    training: (config, dir, source) =>
      buildT5EncoderGraph(parseT5EncoderConfig(config, dir), source, {
        seqLength: 5,
        idsDType: 'int64',
        maskDType: 'int64',
        outputHiddenStates: false,
      }),
    trainingFeeds: (_config, _dir, inputs) => inputs,
    output: 'last_hidden_state',
    trainingOutput: 'last_hidden_state',
  },
];

describe('saveModelFolder: random-init models load with fromPretrained and match the training graph', () => {
  const roots: string[] = [];
  after(async () => {
    for (const root of roots) await rm(root, { recursive: true, force: true });
  });

  for (const c of CASES) {
    it(`${c.className} in ${DTYPES.join(', ')}`, async () => {
      const seed = testSeed(`saveModelFolder ${c.className}`);
      const random = seededUniform(seed);
      const goldenDir = join(GOLDEN, c.goldenDir);
      // The golden config, as a trainer would write it (its class and version keys are the saver's).
      const config: Record<string, unknown> = await readConfig(goldenDir);
      const shapes = c.shapes(config, goldenDir);
      const params = initParameters(shapes, { seed });
      const inputs = c.inputs(random);
      const root = await mkdtemp(join(tmpdir(), 'velodiff-save-model-'));
      roots.push(root);
      for (const dtype of DTYPES) {
        const dir = join(root, dtype);
        await saveModelFolder(dir, {
          className: c.className,
          config,
          params,
          shapes,
          dtype,
          library: c.library,
        });
        const warnings: VelodiffWarning[] = [];
        const model = await c.load(dir, (w) => warnings.push(w));
        try {
          assert.deepEqual(
            warnings.map((w) => w.message),
            [],
            `${c.className} ${dtype}: no warnings at load`,
          );
          const loaded = await model.forward(inputs);
          const expected = await trainingForward(
            shapes,
            rounded(params, dtype),
            (source) => c.training(config, goldenDir, source),
            c.trainingFeeds(config, goldenDir, inputs),
          );
          assertScaledMaxAbsError(
            loaded[c.output].data as Float32Array,
            expected[c.trainingOutput].data as Float32Array,
            1e-5,
            `${c.className} ${dtype} forward (seed ${seed})`,
          );
        } finally {
          await model.close();
        }
        const written = JSON.parse(await readFile(join(dir, 'config.json'), 'utf8')) as Record<
          string,
          unknown
        >;
        if (c.library === 'diffusers') {
          assert.equal(written['_class_name'], c.className);
          assert.equal(typeof written['_diffusers_version'], 'string');
        } else {
          assert.deepEqual(written['architectures'], [c.className]);
          assert.equal(written['torch_dtype'], dtype);
        }
      }
      assert.deepEqual((await readdir(root)).sort(), [...DTYPES].sort(), 'no temporary folders left');
    });
  }

  it('replaces an existing folder, and refuses parameters that do not match the shapes', async () => {
    const root = await mkdtemp(join(tmpdir(), 'velodiff-save-model-'));
    roots.push(root);
    const shapes = new Map([
      ['proj.weight', [2, 3]],
      ['proj.bias', [2]],
    ]);
    const params = initParameters(shapes, { seed: 3 });
    const dir = join(root, 'model');
    const options = { className: 'Tiny', config: { width: 3 }, params, shapes };
    await saveModelFolder(dir, options);
    await saveModelFolder(dir, { ...options, config: { width: 4 } });
    const written = JSON.parse(await readFile(join(dir, 'config.json'), 'utf8')) as Record<string, unknown>;
    assert.equal(written['width'], 4);
    assert.deepEqual(await readdir(root), ['model']);
    assert.deepEqual((await readdir(dir)).sort(), ['config.json', 'diffusion_pytorch_model.safetensors']);
    await assert.rejects(
      saveModelFolder(join(root, 'bad'), {
        ...options,
        params: new Map([['proj.weight', params.get('proj.weight')!]]),
      }),
      (e: unknown) => e instanceof WeightError && e.message.includes('proj.bias'),
    );
    await assert.rejects(
      saveModelFolder(join(root, 'bad'), {
        ...options,
        params: new Map([...params, ['proj.bias', new Float32Array(3)]]),
      }),
      (e: unknown) => e instanceof WeightError && e.message.includes("'proj.bias'"),
    );
    assert.deepEqual(await readdir(root), ['model'], 'a refused save leaves nothing');
  });
});
