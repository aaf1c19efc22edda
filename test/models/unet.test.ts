/**
 * UNet2DConditionModel against the diffusers 0.40 golden fixtures (test/golden/models/unet2d_*), and,
 * for what the fixtures do not cover (latent sizes that do not halve evenly, the encoder attention
 * mask, center_input_sample, mid_block_scale_factor, float timesteps), against the float64
 * reference of test/models/unet-reference.ts, which reproduces the fixtures' float64 runs first.
 * Then the build hooks later accelerations use, and the errors a user meets.
 */
import assert from 'node:assert/strict';
import { copyFile, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

import { FileFormatError, OptionError, RuntimeError, WeightError } from '../../src/errors.js';
import type { Tensor } from '../../src/graph/graph.js';
import { mul } from '../../src/graph/ops/index.js';
import { serialize } from '../../src/graph/serialize.js';
import { writeSafetensors } from '../../src/io/safetensors.js';
import type { TensorToWrite } from '../../src/io/safetensors.js';
import { loadModel } from '../../src/models/index.js';
import {
  SAMPLE_INPUT,
  UNet2DConditionModel,
  buildUNetGraph,
  parseUNetConfig,
} from '../../src/models/unet-2d-condition.js';
import type { UNetGraphOptions, UNetTransformerSite } from '../../src/models/unet-2d-condition.js';
import type { LayerAction } from '../../src/attention/tgate.js';
import { f32ToF16 } from '../../src/io/dtypes.js';
import { Attention } from '../../src/nn/attention.js';
import type { HostTensor } from '../../src/runtime/host-tensor.js';
import { hostTensor } from '../../src/runtime/host-tensor.js';
import { Runtime } from '../../src/runtime/runtime.js';
import { assertExactlyEqual, assertMaxAbsError, goldenBound } from '../compare.js';
import { describeCheck, GoldenFixture } from '../golden-fixture.js';
import type { GoldenMeta } from '../golden-fixture.js';
import { readAllTensors } from '../helpers.js';
import { normalArray, seededUniform, testSeed } from '../random.js';
import { refTensor } from '../reference/math.js';
import type { RefTensor } from '../reference/math.js';
import type { RefUNetInputs } from './unet-reference.js';
import { RefUNet } from './unet-reference.js';

const GOLDEN = fileURLToPath(new URL('../golden/models/', import.meta.url));

/**
 * Golden cases and the model folder each runs. unet2d_sd15_tiny_scalar_t uses the same weights as
 * unet2d_sd15_tiny (its meta.json says so; the two checkpoints are byte-identical in ../shared/golden),
 * so its copy here keeps only the inputs and outputs.
 */
const CASES = [
  ['unet2d_sd15_tiny', 'unet2d_sd15_tiny'],
  ['unet2d_sd15_tiny_scalar_t', 'unet2d_sd15_tiny'],
  ['unet2d_sd2_linearproj_tiny', 'unet2d_sd2_linearproj_tiny'],
  ['unet2d_sdxl_tiny', 'unet2d_sdxl_tiny'],
  ['unet2d_lcm_timecond_tiny', 'unet2d_lcm_timecond_tiny'],
] as const;

const modelDir = (fixture: string): string => join(GOLDEN, fixture, 'model');

let runtime: Runtime;
let scratch: string;
before(async () => {
  runtime = new Runtime({ worker: false, threads: 1 });
  scratch = await mkdtemp(join(tmpdir(), 'velodiff-unet-'));
});
after(async () => {
  await runtime.dispose();
  await rm(scratch, { recursive: true, force: true });
});

const numbers = (t: HostTensor): number[] =>
  t.data instanceof BigInt64Array ? Array.from(t.data, Number) : Array.from(t.data as Float32Array);
const toRef = (t: HostTensor): RefTensor => refTensor(t.shape, numbers(t));

/** The reference's inputs for forward's host inputs (the timestep expanded to the batch). */
function referenceInputs(inputs: Record<string, HostTensor>): RefUNetInputs {
  const batch = inputs.sample.shape[0];
  const t = numbers(inputs.timestep);
  return {
    sample: toRef(inputs.sample),
    timestep: t.length === 1 ? Array.from({ length: batch }, () => t[0]) : t,
    encoderHiddenStates: toRef(inputs.encoder_hidden_states),
    ...(inputs.encoder_attention_mask ? { encoderAttentionMask: toRef(inputs.encoder_attention_mask) } : {}),
    ...(inputs.timestep_cond ? { timestepCond: toRef(inputs.timestep_cond) } : {}),
    ...(inputs.text_embeds ? { textEmbeds: toRef(inputs.text_embeds) } : {}),
    ...(inputs.time_ids ? { timeIds: toRef(inputs.time_ids) } : {}),
  };
}

async function goldenMeta(fixture: string): Promise<GoldenMeta> {
  return JSON.parse(await readFile(join(GOLDEN, fixture, 'meta.json'), 'utf8')) as GoldenMeta;
}

// ---------------------------------------------------------------------------------------------

describe('UNet2DConditionModel vs diffusers golden outputs', () => {
  for (const [fixture, model] of CASES) {
    it(fixture, async (t) => {
      const dir = join(GOLDEN, fixture);
      const unet = await UNet2DConditionModel.fromPretrained(modelDir(model), { runtime });
      try {
        const inputs = await readAllTensors(join(dir, 'inputs.safetensors'));
        const golden = await GoldenFixture.load(dir);
        assert.deepEqual(golden.outputs(), ['sample']);
        const out = await unet.forward(inputs, { kwargs: { return_dict: false } });
        assert.deepEqual(Object.keys(out), ['sample']);
        assert.deepEqual(out.sample.shape, golden.shape('sample'));
        // 10× torch's fp32 noise (6.0e-7 to 1.3e-6); measured 0.8–1.5× it vs fp32, 0.6–1.2× vs fp64.
        const check = golden.check('sample', out.sample.data as Float32Array, { what: `${fixture}.sample` });
        t.diagnostic(describeCheck(check));
      } finally {
        await unet.close();
      }
    });
  }

  it('loads through loadModel (velodiff forward) and compiles once per input layout', async () => {
    const unet = await loadModel(modelDir('unet2d_sd15_tiny'), { runtime });
    try {
      assert.equal(unet.className, 'UNet2DConditionModel');
      const inputs = await readAllTensors(join(GOLDEN, 'unet2d_sd15_tiny', 'inputs.safetensors'));
      const first = await unet.forward(inputs);
      const sessions = runtime.cachedSessions;
      // A float32 timestep with the same values runs the same graph and gives the same output.
      const floatTimestep = hostTensor('float32', [2], Float32Array.from(numbers(inputs.timestep)));
      const again = await unet.forward({ ...inputs, timestep: floatTimestep });
      assert.equal(runtime.cachedSessions, sessions);
      assertExactlyEqual(again.sample.data as Float32Array, first.sample.data as Float32Array, 'float32 t');
    } finally {
      await unet.close();
    }
  });
});

// ---------------------------------------------------------------------------------------------

describe('UNet2DConditionModel against a float64 reference', () => {
  it('the reference reproduces the golden float64 runs (so it can judge other inputs)', async (t) => {
    for (const [fixture, model] of CASES) {
      const ref = await RefUNet.load(modelDir(model));
      const inputs = await readAllTensors(join(GOLDEN, fixture, 'inputs.safetensors'));
      const golden = await GoldenFixture.load(join(GOLDEN, fixture));
      // Measured 2e-15 to 5e-9 vs fp64 (sin/cos of float32 angles rounded as torch does).
      const check = golden.check('sample', ref.forward(referenceInputs(inputs)).data, {
        what: `reference ${fixture}`,
        boundVsFp64: 1e-7,
      });
      t.diagnostic(describeCheck(check));
    }
  });

  /**
   * Random inputs of the fixtures' scale; the bound is 10× torch's fp32 noise on the model's golden
   * case, as for the golden checks.
   */
  const variants: {
    title: string;
    fixture: string;
    shape: [number, number, number, number];
    text: number;
    mask?: boolean;
    patch?: Record<string, unknown>;
  }[] = [
    {
      title: 'SD 1.5 topology, 13×10 latent (forward_upsample_size), float timesteps, masked text',
      fixture: 'unet2d_sd15_tiny',
      shape: [2, 4, 13, 10],
      text: 5,
      mask: true,
    },
    {
      title: 'SDXL topology, 9×6 latent, text_time and two-layer transformers',
      fixture: 'unet2d_sdxl_tiny',
      shape: [1, 4, 9, 6],
      text: 3,
    },
    {
      title: 'LCM timestep_cond, 7×12 latent, center_input_sample, mid_block_scale_factor 2',
      fixture: 'unet2d_lcm_timecond_tiny',
      shape: [1, 4, 7, 12],
      text: 4,
      patch: { center_input_sample: true, mid_block_scale_factor: 2 },
    },
  ];
  for (const variant of variants) {
    it(variant.title, async (t) => {
      const seed = testSeed(`UNet2DConditionModel vs float64 reference: ${variant.title}`);
      const random = seededUniform(seed);
      const dir = variant.patch
        ? await derivedModel(variant.fixture, variant.patch)
        : modelDir(variant.fixture);
      const unet = await UNet2DConditionModel.fromPretrained(dir, { runtime });
      try {
        const [batch] = variant.shape;
        const normal = (shape: number[]): HostTensor =>
          hostTensor(
            'float32',
            shape,
            normalArray(
              shape.reduce((a, b) => a * b, 1),
              random,
            ),
          );
        const inputs: Record<string, HostTensor> = {
          sample: normal(variant.shape),
          // Fractional timesteps, as Euler-type schedulers produce.
          timestep: hostTensor(
            'float32',
            [batch],
            Float32Array.from({ length: batch }, () => 1000 * random()),
          ),
          encoder_hidden_states: normal([batch, variant.text, unet.config.encoderHiddenSize]),
        };
        if (variant.mask) {
          // Each item keeps its first token and drops a random half of the rest.
          const mask = Float32Array.from({ length: batch * variant.text }, (_, i) =>
            i % variant.text === 0 || random() < 0.5 ? 1 : 0,
          );
          inputs.encoder_attention_mask = hostTensor('float32', [batch, variant.text], mask);
        }
        if (unet.config.timeCondProjDim !== null) {
          inputs.timestep_cond = normal([batch, unet.config.timeCondProjDim]);
        }
        const textTime = unet.config.textTime;
        if (textTime) {
          inputs.text_embeds = normal([batch, textTime.projectionInputDim - 6 * textTime.timeEmbedDim]);
          // original size, crop corner, target size, as SDXL pipelines pass them.
          inputs.time_ids = hostTensor(
            'float32',
            [batch, 6],
            Float32Array.from({ length: batch * 6 }, (_, i) => [72, 48, 0, 8, 72, 48][i % 6]),
          );
        }
        const ours = await unet.forward(inputs);
        const expected = (await RefUNet.load(dir)).forward(referenceInputs(inputs));
        assert.deepEqual(ours.sample.shape, expected.shape);
        const bound = goldenBound(await goldenMeta(variant.fixture), 'sample');
        const { maxAbsError } = assertMaxAbsError(
          ours.sample.data as Float32Array,
          expected.data,
          bound,
          variant.title,
        );
        t.diagnostic(
          `${variant.title}: max |ours − reference| ${maxAbsError.toExponential(2)}, bound ${bound.toExponential(2)}`,
        );
      } finally {
        await unet.close();
      }
    });
  }
});

// ---------------------------------------------------------------------------------------------

describe('UNet2DConditionModel build hooks', () => {
  const fixture = 'unet2d_sd15_tiny';
  const layout = { height: 16, width: 16, textLength: 7 };

  async function feeds(): Promise<Record<string, HostTensor>> {
    const inputs = await readAllTensors(join(GOLDEN, fixture, 'inputs.safetensors'));
    return {
      [SAMPLE_INPUT]: inputs.sample,
      timestep: hostTensor('float32', [2], Float32Array.from(numbers(inputs.timestep))),
      encoder_hidden_states: inputs.encoder_hidden_states,
    };
  }

  it('every transformer block reaches selfAttention and around, numbered in forward order', async () => {
    const unet = await UNet2DConditionModel.fromPretrained(modelDir(fixture), { runtime });
    try {
      const sites: UNetTransformerSite[] = [];
      const roles: string[] = [];
      const graph = buildUNetGraph(unet.config, unet.weights, layout, {
        hooks: {
          // The default attn1, built by the caller: the output must not change.
          selfAttention: (site, p, x) => {
            sites.push(site);
            return Attention(p, x, undefined, {
              queryDim: site.dim,
              heads: site.heads,
              dimHead: site.dim / site.heads,
            });
          },
          around: (site, role, compute) => {
            roles.push(`${site.index}.${role}`);
            return compute();
          },
        },
      });
      assert.deepEqual(
        sites.map((s) => [s.index, s.path, s.grid.height, s.dim, s.heads]),
        [
          [0, 'down_blocks.0.attentions.0.transformer_blocks.0', 16, 8, 2],
          [1, 'down_blocks.0.attentions.1.transformer_blocks.0', 16, 8, 2],
          [2, 'down_blocks.1.attentions.0.transformer_blocks.0', 8, 16, 2],
          [3, 'down_blocks.1.attentions.1.transformer_blocks.0', 8, 16, 2],
          [4, 'mid_block.attentions.0.transformer_blocks.0', 4, 16, 2],
          [5, 'up_blocks.1.attentions.0.transformer_blocks.0', 8, 16, 2],
          [6, 'up_blocks.1.attentions.1.transformer_blocks.0', 8, 16, 2],
          [7, 'up_blocks.1.attentions.2.transformer_blocks.0', 8, 16, 2],
          [8, 'up_blocks.2.attentions.0.transformer_blocks.0', 16, 8, 2],
          [9, 'up_blocks.2.attentions.1.transformer_blocks.0', 16, 8, 2],
          [10, 'up_blocks.2.attentions.2.transformer_blocks.0', 16, 8, 2],
        ],
      );
      assert.deepEqual(
        roles,
        sites.flatMap((s) => [`${s.index}.attn1`, `${s.index}.attn2`]),
      );
      const hooked = await (await runtime.compile(graph)).run(await feeds());
      const plain = await (await unet.compile(layout)).run(await feeds());
      assertExactlyEqual(hooked.sample.data as Float32Array, plain.sample.data as Float32Array, 'hooked');

      // And what a hook returns is what the block uses: halving one cross-attention changes the output.
      const halved = buildUNetGraph(unet.config, unet.weights, layout, {
        hooks: {
          around: (site, role, compute) =>
            site.index === 4 && role === 'attn2' ? mul(compute(), 0.5) : compute(),
        },
      });
      const changed = await (await runtime.compile(halved)).run(await feeds());
      assert.notDeepEqual(changed.sample.data, plain.sample.data);
    } finally {
      await unet.close();
    }
  });

  it('layer: an up-path feature stored on one step and fed back on the next gives the same sample', async () => {
    const unet = await UNet2DConditionModel.fromPretrained(modelDir(fixture), { runtime });
    try {
      const path = 'up_blocks.2.resnets.0';
      let featureShape: readonly (number | string)[] = [];
      const store = buildUNetGraph(unet.config, unet.weights, layout, {
        hooks: {
          layer: (at, compute) => {
            const out = compute();
            if (at === path) {
              featureShape = out.shape;
              out.graph.output('feature', out);
            }
            return out;
          },
        },
      });
      const full = await (await runtime.compile(store)).run(await feeds());
      const reuse = buildUNetGraph(unet.config, unet.weights, layout, {
        hooks: {
          layer: (at, compute, graph): Tensor =>
            at === path ? graph.input('cached', 'float32', featureShape) : compute(),
        },
      });
      const partial = await (await runtime.compile(reuse)).run({ ...(await feeds()), cached: full.feature });
      assertExactlyEqual(partial.sample.data as Float32Array, full.sample.data as Float32Array, 'reused');
      // What only the replaced layer needed (the deeper levels) is not in the partial step's graph.
      const mentions = (graph: typeof store, name: string): boolean =>
        Buffer.from(serialize(graph).model).includes(name);
      for (const deep of ['mid_block.resnets.0.conv1.weight', 'up_blocks.1.attentions.2.proj_out.weight'])
        assert.ok(mentions(store, deep) && !mentions(reuse, deep), deep);
      assert.ok(mentions(reuse, 'down_blocks.0.resnets.0.conv1.weight'));
    } finally {
      await unet.close();
    }
  });
});

describe("UNet2DConditionModel step graphs' session settings", () => {
  const fixture = 'unet2d_sd15_tiny';
  const layout = { height: 16, width: 16, textLength: 7 };
  const gated = (selfAttention: LayerAction, crossAttention: LayerAction): UNetGraphOptions => ({
    ...layout,
    tgate: { selfAttention, crossAttention, average: false },
  });
  const deepCache = (step: 'full' | 'skip', cacheBranchId: number): UNetGraphOptions => ({
    ...layout,
    deepCache: { cacheBranchId, step },
  });
  const settingsOf = async (unet: UNet2DConditionModel, at: UNetGraphOptions): Promise<[string, boolean]> => {
    const { settings } = await unet.compile(at);
    return [settings.optimizationLevel, settings.disablePrepacking];
  };

  it("T-GATE's graphs read a float32 checkpoint in place; the plain graph and DeepCache's own steps keep the runtime's", async () => {
    const random = seededUniform(testSeed('unet step graph settings'));
    const branch = Math.floor(random() * 3);
    const unet = await UNet2DConditionModel.fromPretrained(modelDir(fixture), { runtime });
    try {
      assert.deepEqual(await settingsOf(unet, layout), ['all', false]);
      // Computing every attention builds the plain graph: its session, not one more.
      assert.equal(await unet.compile(gated('compute', 'compute')), await unet.compile(layout));
      const inPlace = [
        gated('store', 'compute'),
        gated('reuse', 'compute'),
        gated('compute', 'store'),
        gated('compute', 'reuse'),
        { ...deepCache('full', branch), tgate: gated('compute', 'reuse').tgate },
      ];
      for (const at of inPlace)
        assert.deepEqual(await settingsOf(unet, at), ['extended', true], JSON.stringify(at));
      // A DeepCache loop never runs the plain graph: its full step takes the plain graph's place, and
      // its skip step reads only the layers above the branch (also under T-GATE).
      const own = [
        deepCache('full', branch),
        deepCache('skip', branch),
        { ...deepCache('skip', branch), tgate: gated('compute', 'reuse').tgate },
      ];
      for (const at of own) assert.deepEqual(await settingsOf(unet, at), ['all', false], JSON.stringify(at));
    } finally {
      await unet.close();
    }
  });

  it('keeps the runtime settings where it says so, and for a float16 checkpoint (cast into a copy per session anyway)', async () => {
    const own = new Runtime({ worker: false, threads: 1, shareWeightsAcrossGraphs: false });
    const halfDir = await derivedModel(fixture, {}, (tensors) => {
      for (const [name, t] of tensors)
        tensors.set(name, { dtype: 'F16', shape: t.shape, data: f32ToF16(t.data as Float32Array) });
    });
    const unets = [
      await UNet2DConditionModel.fromPretrained(modelDir(fixture), { runtime: own }),
      await UNet2DConditionModel.fromPretrained(halfDir, { runtime }),
    ];
    try {
      for (const unet of unets) {
        for (const at of [gated('store', 'compute'), deepCache('skip', 0)])
          assert.deepEqual(await settingsOf(unet, at), ['all', false], `${unet.dir}: ${JSON.stringify(at)}`);
      }
    } finally {
      for (const unet of unets) await unet.close();
      await own.dispose();
    }
  });
});

// ---------------------------------------------------------------------------------------------
// Model folders derived from a fixture, and errors.

type RawConfig = Record<string, unknown>;

let folders = 0;
/** A copy of a fixture's model folder with `patch` merged into its config and `edit` applied to its tensors. */
async function derivedModel(
  fixture: string,
  patch: RawConfig,
  edit?: (tensors: Map<string, TensorToWrite>) => void,
): Promise<string> {
  const dir = join(scratch, `model-${folders++}`);
  await mkdir(dir);
  const source = modelDir(fixture);
  const config = {
    ...(JSON.parse(await readFile(join(source, 'config.json'), 'utf8')) as RawConfig),
    ...patch,
  };
  await writeFile(join(dir, 'config.json'), JSON.stringify(config, null, 2));
  const weights = join(source, 'diffusion_pytorch_model.safetensors');
  if (!edit) {
    await copyFile(weights, join(dir, 'diffusion_pytorch_model.safetensors'));
    return dir;
  }
  const tensors = new Map<string, TensorToWrite>();
  for (const [name, t] of Object.entries(await readAllTensors(weights)))
    tensors.set(name, { dtype: 'F32', shape: [...t.shape], data: t.data as Float32Array });
  edit(tensors);
  await writeSafetensors(join(dir, 'diffusion_pytorch_model.safetensors'), Object.fromEntries(tensors));
  return dir;
}

function rejectsWith<E extends Error>(
  type: new (...args: never[]) => E,
  code: string,
  ...fragments: string[]
) {
  return (error: unknown): boolean => {
    assert.ok(error instanceof type, `expected ${type.name}, got ${String(error)}`);
    assert.equal((error as E & { code: string }).code, code, (error as Error).message);
    for (const f of fragments)
      assert.ok((error as Error).message.includes(f), `"${(error as Error).message}" lacks "${f}"`);
    return true;
  };
}

describe('UNet2DConditionModel errors', () => {
  it('a missing weight tensor names the tensor and the file', async () => {
    const name = 'up_blocks.1.attentions.2.transformer_blocks.0.attn2.to_k.weight';
    const dir = await derivedModel('unet2d_sd15_tiny', {}, (tensors) => assert.ok(tensors.delete(name)));
    await assert.rejects(
      UNet2DConditionModel.fromPretrained(dir, { runtime }),
      rejectsWith(
        WeightError,
        'WEIGHT_MISSING',
        `'${name}'`,
        join(dir, 'diffusion_pytorch_model.safetensors'),
      ),
    );
  });

  it('a tensor of the wrong shape names the tensor and both shapes', async () => {
    const name = 'add_embedding.linear_1.weight';
    const dir = await derivedModel('unet2d_sdxl_tiny', {}, (tensors) =>
      tensors.set(name, { dtype: 'F32', shape: [32, 60], data: new Float32Array(32 * 60) }),
    );
    await assert.rejects(
      UNet2DConditionModel.fromPretrained(dir, { runtime }),
      rejectsWith(WeightError, 'WEIGHT_SHAPE', `'${name}'`, '[32, 64]', '[32, 60]'),
    );
  });

  it('configs velodiff does not build are rejected, naming the key and the file', () => {
    const base = {
      _class_name: 'UNet2DConditionModel',
      block_out_channels: [8, 16, 16],
      down_block_types: ['CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'DownBlock2D'],
      up_block_types: ['UpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D'],
      attention_head_dim: 2,
      norm_num_groups: 4,
      cross_attention_dim: 16,
    };
    const path = '/models/unet/config.json';
    assert.equal(parseUNetConfig(base, path, () => {}).down.length, 3);
    const cases: [RawConfig, string, ...string[]][] = [
      [
        { down_block_types: ['CrossAttnDownBlock2D', 'AttnDownBlock2D', 'DownBlock2D'] },
        'CONFIG_UNSUPPORTED',
        '"down_block_types"',
        'AttnDownBlock2D',
      ],
      [
        { up_block_types: ['UpBlock2D', 'SimpleCrossAttnUpBlock2D', 'CrossAttnUpBlock2D'] },
        'CONFIG_UNSUPPORTED',
        'SimpleCrossAttnUpBlock2D',
      ],
      [
        { up_block_types: ['UpBlock2D', 'CrossAttnUpBlock2D'] },
        'CONFIG_VALUE',
        '"up_block_types"',
        '"block_out_channels"',
      ],
      [{ mid_block_type: 'UNetMidBlock2DSimpleCrossAttn' }, 'CONFIG_UNSUPPORTED', '"mid_block_type"'],
      [{ class_embed_type: 'timestep' }, 'CONFIG_UNSUPPORTED', '"class_embed_type"', '"timestep"'],
      [{ num_class_embeds: 10 }, 'CONFIG_UNSUPPORTED', '"num_class_embeds"'],
      [{ dual_cross_attention: true }, 'CONFIG_UNSUPPORTED', '"dual_cross_attention"'],
      [{ num_attention_heads: 8 }, 'CONFIG_UNSUPPORTED', '"num_attention_heads"', 'attention_head_dim'],
      [{ addition_embed_type: 'text' }, 'CONFIG_UNSUPPORTED', '"addition_embed_type"'],
      [{ addition_embed_type: 'text_time' }, 'CONFIG_VALUE', '"addition_time_embed_dim"'],
      [{ resnet_time_scale_shift: 'scale_shift' }, 'CONFIG_UNSUPPORTED', '"resnet_time_scale_shift"'],
      [{ time_embedding_type: 'fourier' }, 'CONFIG_UNSUPPORTED', '"time_embedding_type"'],
      [{ timestep_post_act: 'silu' }, 'CONFIG_UNSUPPORTED', '"timestep_post_act"'],
      [{ encoder_hid_dim: 32 }, 'CONFIG_UNSUPPORTED', '"encoder_hid_dim"'],
      [{ attention_head_dim: [2, 4] }, 'CONFIG_VALUE', '"attention_head_dim"', 'a list of 3'],
      [{ attention_head_dim: 32 }, 'CONFIG_VALUE', '"attention_head_dim"', 'number of heads'],
      [
        { transformer_layers_per_block: [[1, 1], 1, 1] },
        'CONFIG_VALUE',
        'reverse_transformer_layers_per_block',
      ],
      [{ cross_attention_dim: [16, 24, 16] }, 'CONFIG_VALUE', '"cross_attention_dim"'],
      [{ act_fn: 'tanh' }, 'CONFIG_VALUE', '"act_fn"'],
      [{ conv_in_kernel: 4 }, 'CONFIG_VALUE', '"conv_in_kernel"'],
      [{ norm_num_groups: null }, 'CONFIG_UNSUPPORTED', '"norm_num_groups"'],
      [{ _class_name: 'UNet2DModel' }, 'CONFIG_CLASS', 'UNet2DModel'],
    ];
    for (const [patch, code, ...fragments] of cases) {
      assert.throws(
        () => parseUNetConfig({ ...base, ...patch }, path, () => {}),
        rejectsWith(FileFormatError, code, path, ...fragments),
        JSON.stringify(patch),
      );
    }
  });

  it('wrong inputs name the input, the expected and the given shape', async () => {
    const sd15 = await UNet2DConditionModel.fromPretrained(modelDir('unet2d_sd15_tiny'), { runtime });
    const sdxl = await UNet2DConditionModel.fromPretrained(modelDir('unet2d_sdxl_tiny'), { runtime });
    try {
      const inputs = await readAllTensors(join(GOLDEN, 'unet2d_sd15_tiny', 'inputs.safetensors'));
      const zeros = (shape: number[]): HostTensor => hostTensor('float32', shape);
      const cases: [Record<string, HostTensor>, new (...args: never[]) => Error, string, ...string[]][] = [
        [
          { ...inputs, sample: zeros([2, 3, 16, 16]) },
          RuntimeError,
          'SHAPE',
          'sample',
          '[B, 4, H, W]',
          '[2, 3, 16, 16]',
        ],
        [
          { ...inputs, encoder_hidden_states: zeros([2, 7, 24]) },
          RuntimeError,
          'SHAPE',
          'encoder_hidden_states',
          '[B, L, 16]',
          '[2, 7, 24]',
        ],
        [
          { ...inputs, encoder_hidden_states: zeros([1, 7, 16]) },
          RuntimeError,
          'SHAPE',
          'encoder_hidden_states',
          '[1, 7, 16]',
        ],
        [{ ...inputs, timestep: zeros([3]) }, RuntimeError, 'SHAPE', 'timestep', '[3]'],
        [
          { ...inputs, sample: hostTensor('float16', [2, 4, 16, 16]) },
          RuntimeError,
          'DTYPE',
          'sample',
          'float32',
          'float16',
        ],
        [
          { ...inputs, encoder_attention_mask: zeros([2, 6]) },
          RuntimeError,
          'SHAPE',
          'encoder_attention_mask',
          'L = 7',
        ],
        [
          { ...inputs, timestep_cond: zeros([2, 8]) },
          OptionError,
          'INPUT',
          'timestep_cond',
          'time_cond_proj_dim',
        ],
        [{ ...inputs, text_embeds: zeros([2, 16]) }, OptionError, 'INPUT', 'text_embeds'],
        [
          { ...inputs, added_cond_kwargs: zeros([1]) },
          OptionError,
          'INPUT',
          'unknown input "added_cond_kwargs"',
        ],
        [
          { sample: inputs.sample, timestep: inputs.timestep },
          OptionError,
          'INPUT',
          'missing input "encoder_hidden_states"',
        ],
      ];
      for (const [given, type, code, ...fragments] of cases) {
        await assert.rejects(sd15.forward(given), rejectsWith(type, code, ...fragments), fragments.join(' '));
      }
      const xl = await readAllTensors(join(GOLDEN, 'unet2d_sdxl_tiny', 'inputs.safetensors'));
      const withoutPooled = Object.fromEntries(Object.entries(xl).filter(([name]) => name !== 'text_embeds'));
      await assert.rejects(
        sdxl.forward(withoutPooled),
        rejectsWith(OptionError, 'INPUT', 'missing input "text_embeds"', 'text_time'),
      );
      await assert.rejects(
        sdxl.forward({ ...xl, text_embeds: zeros([2, 12]) }),
        rejectsWith(RuntimeError, 'SHAPE', 'text_embeds', '[B, 16]', '[2, 12]'),
      );
      await assert.rejects(
        sd15.forward(inputs, { kwargs: { cross_attention_kwargs: {} } }),
        rejectsWith(OptionError, 'KWARG', 'cross_attention_kwargs'),
      );
    } finally {
      await sd15.close();
      await sdxl.close();
    }
  });
});
