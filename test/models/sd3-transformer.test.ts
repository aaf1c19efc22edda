import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { VelodiffError } from '../../src/errors.js';
import { readConfig } from '../../src/io/diffusers.js';
import { loadModel } from '../../src/models/index.js';
import { SD3Transformer2DModel, parseSD3TransformerConfig } from '../../src/models/sd3-transformer.js';
import type { HostTensor } from '../../src/runtime/host-tensor.js';
import { hostTensor } from '../../src/runtime/host-tensor.js';
import { Runtime } from '../../src/runtime/runtime.js';
import type { VelodiffWarning } from '../../src/warnings.js';
import { assertExactlyEqual } from '../compare.js';
import { describeCheck, GoldenFixture } from '../golden-fixture.js';
import { readAllTensors } from '../helpers.js';

const GOLDEN = fileURLToPath(new URL('../golden/models/', import.meta.url));
const runtime = new Runtime({ worker: false, threads: 1 });
after(() => runtime.dispose());

describe('SD3Transformer2DModel vs diffusers golden outputs', () => {
  // sd3: SD3-medium style (no qk norm, last block context_pre_only), batch 2, a non-square 12×8
  // latent cropped from the 16×16 position table. sd35: qk_norm rms_norm and a dual-attention block.
  for (const name of ['sd3_transformer_tiny', 'sd35_transformer_tiny']) {
    it(name, async (t) => {
      const dir = `${GOLDEN}${name}`;
      const model = await SD3Transformer2DModel.fromPretrained(`${dir}/model`, { runtime });
      try {
        const inputs = await readAllTensors(`${dir}/inputs.safetensors`);
        const golden = await GoldenFixture.load(dir);
        const out = await model.forward(inputs);
        assert.deepEqual(out.sample.shape, golden.shape('sample'));
        // 10× torch's fp32 noise (4.9e-7 and 3.6e-7), against the fp32 and the fp64 run.
        const sample = out.sample.data as Float32Array;
        t.diagnostic(describeCheck(golden.check('sample', sample, { what: `${name}.sample` })));
      } finally {
        await model.close();
      }
    });
  }

  it('loadModel picks the class from config.json; a scalar timestep is broadcast to the batch', async () => {
    const dir = `${GOLDEN}sd35_transformer_tiny`;
    const model = await loadModel(`${dir}/model`, { runtime });
    try {
      assert.equal(model.className, 'SD3Transformer2DModel');
      const inputs = await readAllTensors(`${dir}/inputs.safetensors`);
      const t = inputs.timestep.data as Float32Array;
      assert.deepEqual(inputs.timestep.shape, [1]);
      const asBatch = (await model.forward(inputs)).sample.data as Float32Array;
      const scalar = hostTensor('int64', [], BigInt64Array.of(BigInt(t[0])));
      const asScalar = (await model.forward({ ...inputs, timestep: scalar })).sample.data as Float32Array;
      assertExactlyEqual(asScalar, asBatch, 'sample with an int64 scalar timestep');
    } finally {
      await model.close();
    }
  });
});

describe('parseSD3TransformerConfig rejects what it does not implement', () => {
  const dir = `${GOLDEN}sd3_transformer_tiny/model`;
  let raw: Record<string, unknown>;
  before(async () => {
    raw = await readConfig(dir);
  });

  const fails = (code: string, message: RegExp) => (e: unknown) => {
    assert.ok(e instanceof VelodiffError, String(e));
    assert.equal(e.code, code);
    assert.match(e.message, /^test\/config\.json: /);
    assert.match(e.message, message);
    return true;
  };
  const parse = (changes: Record<string, unknown>, onWarning?: (w: VelodiffWarning) => void) =>
    parseSD3TransformerConfig({ ...raw, ...changes }, 'test/config.json', onWarning);

  it('values that change the math', () => {
    assert.throws(
      () => parse({ qk_norm: 'layer_norm' }),
      fails('CONFIG_UNSUPPORTED', /"qk_norm" is "layer_norm", which SD3Transformer2DModel .*"rms_norm"/),
    );
    assert.throws(
      () => parse({ pos_embed_max_size: null }),
      fails('CONFIG_UNSUPPORTED', /"pos_embed_max_size" is null/),
    );
    assert.throws(
      () => parse({ dual_attention_layers: [0.5] }),
      fails('CONFIG_UNSUPPORTED', /"dual_attention_layers" is \[0\.5\]/),
    );
    assert.throws(
      () => parse({ caption_projection_dim: 48 }),
      fails('CONFIG_VALUE', /caption_projection_dim 48 must equal .* = 32/),
    );
    assert.throws(() => parse({ num_layers: 'two' }), fails('CONFIG_VALUE', /"num_layers" is "two"/));
    assert.throws(
      () => parse({ _class_name: 'FluxTransformer2DModel' }),
      fails('CONFIG_CLASS', /expected SD3Transformer2DModel/),
    );
  });

  it('unknown keys are named in one warning', () => {
    const warnings: VelodiffWarning[] = [];
    const config = parse({ use_pooled_guidance: true }, (w) => warnings.push(w));
    assert.equal(config.innerDim, 32);
    assert.equal(warnings.length, 1);
    assert.equal(warnings[0].code, 'CONFIG_UNUSED_KEYS');
    assert.match(warnings[0].message, /"use_pooled_guidance": true/);
  });
});

describe('SD3Transformer2DModel.forward checks its inputs (runtime/runnable-model.ts)', () => {
  const dir = `${GOLDEN}sd3_transformer_tiny`;
  let model: SD3Transformer2DModel;
  let inputs: Record<string, HostTensor>;
  before(async () => {
    model = await SD3Transformer2DModel.fromPretrained(`${dir}/model`, { runtime });
    inputs = await readAllTensors(`${dir}/inputs.safetensors`);
  });
  after(() => model.close());

  const fails = (code: string, message: RegExp) => (e: unknown) => {
    assert.ok(e instanceof VelodiffError, String(e));
    assert.equal(e.code, code);
    assert.match(e.message, /^SD3Transformer2DModel\.forward \(.*sd3_transformer_tiny\/model\): /);
    assert.match(e.message, message);
    return true;
  };

  it('unknown and missing inputs', async () => {
    await assert.rejects(
      model.forward({ ...inputs, block_controlnet_hidden_states: inputs.hidden_states }),
      fails('INPUT', /unknown input "block_controlnet_hidden_states"; expected hidden_states, /),
    );
    const noPooled = { ...inputs };
    delete noPooled.pooled_projections;
    await assert.rejects(
      model.forward(noPooled),
      fails('INPUT', /missing input "pooled_projections" \(float32 \[B, 20\]\)/),
    );
  });

  it('channels, widths, batch, patch multiples and the position table', async () => {
    await assert.rejects(
      model.forward({ ...inputs, hidden_states: hostTensor('float32', [2, 16, 12, 8]) }),
      fails('SHAPE', /input "hidden_states": expected float32 \[B, 4, H, W\], got float32 \[2, 16, 12, 8\]/),
    );
    await assert.rejects(
      model.forward({ ...inputs, encoder_hidden_states: hostTensor('float32', [2, 9, 32]) }),
      fails(
        'SHAPE',
        /input "encoder_hidden_states": expected float32 \[B, L, 24\], got float32 \[2, 9, 32\]/,
      ),
    );
    await assert.rejects(
      model.forward({ ...inputs, pooled_projections: hostTensor('float32', [1, 20]) }),
      fails(
        'SHAPE',
        /input "pooled_projections": .* with B = 2 \(from input "hidden_states"\), got float32 \[1, 20\]/,
      ),
    );
    await assert.rejects(
      model.forward({ ...inputs, hidden_states: hostTensor('float32', [2, 4, 12, 7]) }),
      fails('SHAPE', /height and width \(12×7\) must be multiples of the patch size 2/),
    );
    await assert.rejects(
      model.forward({ ...inputs, hidden_states: hostTensor('float32', [2, 4, 34, 8]) }),
      fails('SHAPE', /height and width \(34×8\) must be at most pos_embed_max_size × patch_size = 32/),
    );
  });
});
