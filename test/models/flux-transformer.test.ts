import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { FileFormatError, VelodiffError } from '../../src/errors.js';
import {
  FluxTransformer2DModel,
  fluxRotaryTables,
  parseFluxTransformerConfig,
} from '../../src/models/flux-transformer.js';
import type { HostTensor } from '../../src/runtime/host-tensor.js';
import { hostTensor } from '../../src/runtime/host-tensor.js';
import { Runtime } from '../../src/runtime/runtime.js';
import type { VelodiffWarning } from '../../src/warnings.js';
import { assertMaxAbsError } from '../compare.js';
import type { GoldenMeta } from '../golden-fixture.js';
import { describeCheck, GoldenFixture } from '../golden-fixture.js';
import { readAllTensors } from '../helpers.js';
import { seededUniform, testSeed } from '../random.js';

const GOLDEN = fileURLToPath(new URL('../golden/models/', import.meta.url));
const runtime = new Runtime({ worker: false, threads: 1 });
after(() => runtime.dispose());

describe('FluxTransformer2DModel vs diffusers golden outputs', () => {
  for (const name of ['flux_transformer_tiny', 'flux_schnell_transformer_tiny']) {
    it(name, async (t) => {
      const dir = `${GOLDEN}${name}`;
      const model = await FluxTransformer2DModel.fromPretrained(`${dir}/model`, { runtime });
      try {
        const inputs = await readAllTensors(`${dir}/inputs.safetensors`);
        const golden = await GoldenFixture.load<GoldenMeta & { extra_kwargs: Record<string, unknown> }>(dir);
        // diffusers' call: return_dict false, and guidance null for schnell.
        const out = await model.forward(inputs, { kwargs: golden.meta.extra_kwargs });
        assert.deepEqual(Object.keys(out), ['sample']);
        assert.deepEqual(out.sample.shape, golden.shape('sample'));
        // 10× torch's fp32 noise (4.0e-7 dev, 3.4e-7 schnell); measured 4.8e-7 and 6.0e-7, against fp64 too.
        const sample = out.sample.data as Float32Array;
        t.diagnostic(describeCheck(golden.check('sample', sample, { what: `${name}.sample` })));
      } finally {
        await model.close();
      }
    });
  }
});

describe('fluxRotaryTables (FluxPosEmbed)', () => {
  // θ = 10000 is FLUX's; 100000 is CLEAR's high-resolution ntk_factor 10 (θ · ntk_factor in diffusers).
  for (const theta of [10000, 100000]) {
    it(`matches a float64 evaluation of the RoPE formula, each angle repeated for its feature pair (θ = ${theta})`, () => {
      const random = seededUniform(testSeed(`fluxRotaryTables ids ${theta}`));
      const axesDims = [4, 6, 6];
      const tokens = 5;
      const ids = Float32Array.from({ length: tokens * 3 }, () => Math.floor(random() * 64) + random());
      const { cos, sin } = fluxRotaryTables(ids, axesDims, theta);
      const expectedCos: number[] = [];
      const expectedSin: number[] = [];
      for (let s = 0; s < tokens; s++) {
        axesDims.forEach((d, axis) => {
          for (let feature = 0; feature < d; feature++) {
            // Feature f rotates with pair ⌊f/2⌋, whose frequency is θ^(−2⌊f/2⌋/d).
            const angle = ids[s * 3 + axis] * Math.pow(theta, -(2 * Math.floor(feature / 2)) / d);
            expectedCos.push(Math.cos(angle));
            expectedSin.push(Math.sin(angle));
          }
        });
      }
      // Float32 rounding of values in [−1, 1] (and 1/θ^x against θ^−x in float64): half an ulp of 1.
      assertMaxAbsError(cos, expectedCos, 6e-8, 'cos');
      assertMaxAbsError(sin, expectedSin, 6e-8, 'sin');
    });
  }

  it('is the identity at position 0', () => {
    const axesDims = [4, 6, 6];
    // Position 0 is no rotation.
    const zero = fluxRotaryTables(new Float32Array(3), axesDims);
    assert.deepEqual([...zero.cos], new Array(16).fill(1));
    assert.deepEqual([...zero.sin], new Array(16).fill(0));
  });
});

describe('parseFluxTransformerConfig', () => {
  const path = '/models/flux/transformer/config.json';
  const tiny = {
    _class_name: 'FluxTransformer2DModel',
    attention_head_dim: 16,
    axes_dims_rope: [4, 6, 6],
    guidance_embeds: true,
    in_channels: 16,
    joint_attention_dim: 24,
    num_attention_heads: 2,
    num_layers: 1,
    num_single_layers: 2,
    out_channels: null,
    patch_size: 1,
    pooled_projection_dim: 20,
  };
  const rejects = (raw: Record<string, unknown>, code: string, message: RegExp): void => {
    assert.throws(
      () => parseFluxTransformerConfig(raw, path, () => {}),
      (e: unknown) => {
        assert.ok(e instanceof FileFormatError, String(e));
        assert.equal(e.code, code);
        assert.equal(e.path, path);
        assert.match(e.message, message);
        return true;
      },
    );
  };

  it("reads diffusers' keys and defaults (FLUX.1-dev's sizes when absent)", () => {
    const config = parseFluxTransformerConfig(tiny, path);
    assert.equal(config.innerDim, 32);
    assert.equal(config.outChannels, 16, 'out_channels null is in_channels');
    assert.equal(config.guidanceEmbeds, true);
    const defaults = parseFluxTransformerConfig({ guidance_embeds: true }, path);
    assert.deepEqual(
      [
        defaults.inChannels,
        defaults.numLayers,
        defaults.numSingleLayers,
        defaults.innerDim,
        defaults.jointAttentionDim,
      ],
      [64, 19, 38, 3072, 4096],
    );
    assert.deepEqual(defaults.axesDimsRope, [16, 56, 56]);
    assert.equal(parseFluxTransformerConfig({}, path).guidanceEmbeds, false);
  });

  it('rejects values that change the math and that it cannot build', () => {
    rejects(
      { ...tiny, axes_dims_rope: [4, 6, 8] },
      'CONFIG_VALUE',
      /"axes_dims_rope" \[4,6,8\] adds up to 18, but .* attention_head_dim 16/,
    );
    rejects({ ...tiny, axes_dims_rope: [4, 5, 7] }, 'CONFIG_UNSUPPORTED', /"axes_dims_rope" .*even integers/);
    rejects(
      { ...tiny, guidance_embeds: 'yes' },
      'CONFIG_VALUE',
      /"guidance_embeds" is "yes"; expected true or false/,
    );
    rejects(
      { ...tiny, num_attention_heads: 0 },
      'CONFIG_VALUE',
      /"num_attention_heads" is 0; expected an integer ≥ 1/,
    );
    rejects(
      { ...tiny, _class_name: 'SD3Transformer2DModel' },
      'CONFIG_CLASS',
      /expected FluxTransformer2DModel/,
    );
  });

  it('warns of keys it does not read, as diffusers does, naming them and the file', () => {
    const warnings: VelodiffWarning[] = [];
    parseFluxTransformerConfig({ ...tiny, mlp_ratio: 4, _diffusers_version: '0.40.0' }, path, (w) =>
      warnings.push(w),
    );
    assert.equal(warnings.length, 1);
    assert.equal(warnings[0].code, 'CONFIG_UNUSED_KEYS');
    assert.deepEqual(warnings[0].names, ['mlp_ratio']);
    assert.match(
      warnings[0].message,
      /config\.json: the config attribute \{"mlp_ratio": 4\} was passed to FluxTransformer2DModel/,
    );
  });
});

describe('FluxTransformer2DModel.forward checks its inputs', () => {
  let dev: FluxTransformer2DModel;
  let schnell: FluxTransformer2DModel;
  let devInputs: Record<string, HostTensor>;
  let schnellInputs: Record<string, HostTensor>;
  before(async () => {
    dev = await FluxTransformer2DModel.fromPretrained(`${GOLDEN}flux_transformer_tiny/model`, { runtime });
    schnell = await FluxTransformer2DModel.fromPretrained(`${GOLDEN}flux_schnell_transformer_tiny/model`, {
      runtime,
    });
    devInputs = await readAllTensors(`${GOLDEN}flux_transformer_tiny/inputs.safetensors`);
    schnellInputs = await readAllTensors(`${GOLDEN}flux_schnell_transformer_tiny/inputs.safetensors`);
  });
  after(async () => {
    await dev.close();
    await schnell.close();
  });

  const fails = (code: string, message: RegExp) => (e: unknown) => {
    assert.ok(e instanceof VelodiffError, String(e));
    assert.equal(e.code, code);
    assert.match(
      e.message,
      /^FluxTransformer2DModel\.forward \(.*flux_(schnell_)?transformer_tiny\/model\): /,
    );
    assert.match(e.message, message);
    return true;
  };

  it('guidance: required by a guidance-embedding (dev) model, refused by schnell', async () => {
    const noGuidance = { ...devInputs };
    delete noGuidance.guidance;
    await assert.rejects(
      dev.forward(noGuidance),
      fails('INPUT', /missing input "guidance": this model has guidance_embeds/),
    );
    await assert.rejects(
      schnell.forward({
        ...schnellInputs,
        guidance: hostTensor('float32', [2], new Float32Array([3.5, 3.5])),
      }),
      fails(
        'INPUT',
        /guidance was given, but this model has no guidance_embedder \(guidance_embeds is false/,
      ),
    );
  });

  it('img_ids and txt_ids: one row per token, one column per RoPE axis, no batch dim', async () => {
    await assert.rejects(
      dev.forward({ ...devInputs, img_ids: hostTensor('float32', [23, 3]) }),
      fails('SHAPE', /input "img_ids": .* with N = 24 \(from input "hidden_states"\), got float32 \[23, 3\]/),
    );
    await assert.rejects(
      dev.forward({ ...devInputs, txt_ids: hostTensor('float32', [7, 2]) }),
      fails('SHAPE', /input "txt_ids": expected .*\[L, 3\] or \[batch, L, 3\].*, got float32 \[7, 2\]/),
    );
    await assert.rejects(
      dev.forward({ ...devInputs, img_ids: hostTensor('float32', [1, 24, 3], devInputs.img_ids.data) }),
      fails(
        'SHAPE',
        /input "img_ids": 3-D ids \[1,24,3\] .* deprecated in diffusers, .* pass img_ids\[0\] as \[N, 3\]/,
      ),
    );
  });

  it('widths, kwargs and attention kinds', async () => {
    await assert.rejects(
      dev.forward({ ...devInputs, pooled_projections: hostTensor('float32', [1, 768]) }),
      fails('SHAPE', /input "pooled_projections": expected float32 \[B, 20\], got float32 \[1, 768\]/),
    );
    await assert.rejects(
      dev.forward(devInputs, { kwargs: { joint_attention_kwargs: true } }),
      fails('KWARG', /unknown kwarg "joint_attention_kwargs"; expected return_dict, guidance/),
    );
    await assert.rejects(
      dev.forward(devInputs, { kwargs: { guidance: 3.5 } }),
      fails('KWARG', /kwarg "guidance" must be null; give the guidance scale as the input tensor "guidance"/),
    );
    await assert.rejects(
      dev.forward(devInputs, { attention: { kind: 'linfusion', weights: '/nowhere' } }),
      fails('INVALID_OPTION', /attention kind 'linfusion' is not implemented for FluxTransformer2DModel/),
    );
  });

  it('a 0-d timestep of any numeric dtype; batch items computed independently', async () => {
    const batched = await schnell.forward(schnellInputs);
    const t = schnellInputs.timestep.data as Float32Array;
    const first = (x: HostTensor): HostTensor =>
      hostTensor(
        'float32',
        [1, ...x.shape.slice(1)],
        (x.data as Float32Array).subarray(0, x.data.length / 2),
      );
    const single = await schnell.forward({
      ...schnellInputs,
      hidden_states: first(schnellInputs.hidden_states),
      encoder_hidden_states: first(schnellInputs.encoder_hidden_states),
      pooled_projections: first(schnellInputs.pooled_projections),
      timestep: hostTensor('float64', [], new Float64Array([t[0]])),
    });
    const half = batched.sample.data.length / 2;
    assertMaxAbsError(
      single.sample.data as Float32Array,
      (batched.sample.data as Float32Array).subarray(0, half),
      1e-6,
      'batch item 0 alone',
    );
  });
});

describe("FluxTransformer2DModel with quantize: 'int8'", () => {
  it('runs the token Linears in int8, keeps proj_out float, and stays near the golden output', async (t) => {
    const dir = `${GOLDEN}flux_transformer_tiny`;
    const model = await FluxTransformer2DModel.fromPretrained(`${dir}/model`, { runtime, quantize: 'int8' });
    try {
      const modules = model.int8Modules;
      assert.ok(modules, 'some Linears are int8');
      assert.ok(!modules.has('proj_out'), 'proj_out stays float');
      for (const m of [
        'x_embedder',
        'transformer_blocks.0.attn.add_q_proj',
        'single_transformer_blocks.1.proj_out',
      ])
        assert.ok(modules.has(m), `${m} is int8`);
      // Linears on [B, C] vectors stay float (time and pooled-text embeddings), except the adaLN
      // modulations, int8 for memory (README "int8").
      assert.ok(![...modules].some((m) => /time_text_embed/.test(m)), [...modules].join(', '));
      for (const m of [
        'transformer_blocks.0.norm1.linear',
        'transformer_blocks.0.norm1_context.linear',
        'single_transformer_blocks.0.norm.linear',
        'norm_out.linear',
      ])
        assert.ok(modules.has(m), `${m} is int8`);
      const inputs = await readAllTensors(`${dir}/inputs.safetensors`);
      const golden = await GoldenFixture.load(dir);
      const sample = (await model.forward(inputs)).sample.data as Float32Array;
      const scale = Math.max(...Array.from(sample, Math.abs));
      // Measured 1.4e-2 of the output's scale; int8 really ran when it is far above fp32 rounding.
      const check = golden.check('sample', sample, { bound: 0.05 * scale, what: 'flux int8' });
      t.diagnostic(
        `int8: max |diff| vs fp32 golden ${(check.errorVsFp32 / scale).toExponential(2)} of max |sample|`,
      );
      assert.ok(check.errorVsFp32 > 1e-4 * scale);
    } finally {
      await model.close();
    }
  });
});
