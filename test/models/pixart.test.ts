import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { VelodiffError } from '../../src/errors.js';
import type { LayerAction } from '../../src/attention/tgate.js';
import type { PixArtGraphOptions } from '../../src/models/pixart-transformer.js';
import { PixArtTransformer2DModel } from '../../src/models/pixart-transformer.js';
import type { HostTensor } from '../../src/runtime/host-tensor.js';
import { hostTensor } from '../../src/runtime/host-tensor.js';
import { Runtime } from '../../src/runtime/runtime.js';
import { describeCheck, GoldenFixture } from '../golden-fixture.js';
import { readAllTensors } from '../helpers.js';

const GOLDEN = fileURLToPath(new URL('../golden/models/', import.meta.url));
const runtime = new Runtime({ worker: false, threads: 1 });
after(() => runtime.dispose());

describe('PixArtTransformer2DModel vs diffusers golden outputs', () => {
  for (const name of ['pixart_alpha_tiny', 'pixart_alpha_tiny_microcond', 'pixart_sigma_tiny']) {
    it(name, async (t) => {
      const dir = `${GOLDEN}${name}`;
      const model = await PixArtTransformer2DModel.fromPretrained(`${dir}/model`, { runtime });
      const inputs = await readAllTensors(`${dir}/inputs.safetensors`);
      const golden = await GoldenFixture.load(dir);
      const out = await model.forward(inputs);
      assert.deepEqual(out.sample.shape, golden.shape('sample'));
      // 10× torch's fp32 noise (4.7e-7 to 5.2e-7); measured 4.8e-7 to 7.9e-7, against fp64 too.
      const sample = out.sample.data as Float32Array;
      t.diagnostic(describeCheck(golden.check('sample', sample, { what: `${name}.sample` })));
      await model.close();
    });
  }
});

describe('PixArtTransformer2DModel.forward checks its inputs (runtime/runnable-model.ts)', () => {
  const dir = `${GOLDEN}pixart_alpha_tiny`;
  let model: PixArtTransformer2DModel;
  let inputs: Record<string, HostTensor>;
  before(async () => {
    model = await PixArtTransformer2DModel.fromPretrained(`${dir}/model`, { runtime });
    inputs = await readAllTensors(`${dir}/inputs.safetensors`);
  });
  after(() => model.close());

  const fails = (code: string, message: RegExp) => (e: unknown) => {
    assert.ok(e instanceof VelodiffError, String(e));
    assert.equal(e.code, code);
    assert.match(e.message, /^PixArtTransformer2DModel\.forward \(.*pixart_alpha_tiny\/model\): /);
    assert.match(e.message, message);
    return true;
  };

  it('unknown and missing inputs', async () => {
    await assert.rejects(
      model.forward({ ...inputs, added_cond_kwargs: inputs.timestep }),
      fails(
        'INPUT',
        /unknown input "added_cond_kwargs"; expected hidden_states, timestep, encoder_hidden_states/,
      ),
    );
    const noText = { ...inputs };
    delete noText.encoder_hidden_states;
    await assert.rejects(
      model.forward(noText),
      fails('INPUT', /missing input "encoder_hidden_states" \(float32 \[B, L, 32\]\)/),
    );
  });

  it('channels, batch, caption width, mask length and patch multiples', async () => {
    const x = inputs.hidden_states;
    await assert.rejects(
      model.forward({ ...inputs, hidden_states: hostTensor('float32', [2, 3, 8, 8]) }),
      fails('SHAPE', /input "hidden_states": expected float32 \[B, 4, H, W\], got float32 \[2, 3, 8, 8\]/),
    );
    await assert.rejects(
      model.forward({ ...inputs, encoder_hidden_states: hostTensor('float32', [1, 10, 32]) }),
      fails(
        'SHAPE',
        /input "encoder_hidden_states": .* with B = 2 \(from input "hidden_states"\), got float32 \[1, 10, 32\]/,
      ),
    );
    await assert.rejects(
      model.forward({ ...inputs, encoder_hidden_states: hostTensor('float32', [2, 10, 24]) }),
      fails('SHAPE', /expected float32 \[B, L, 32\], got float32 \[2, 10, 24\]/),
    );
    await assert.rejects(
      model.forward({ ...inputs, encoder_attention_mask: hostTensor('int64', [2, 9]) }),
      fails(
        'SHAPE',
        /input "encoder_attention_mask": .* with L = 10 \(from input "encoder_hidden_states"\), got int64 \[2, 9\]/,
      ),
    );
    await assert.rejects(
      model.forward({ ...inputs, hidden_states: hostTensor('float32', [2, 4, 8, 7]) }),
      fails('SHAPE', /input "hidden_states": height and width \(8×7\) must be multiples of the patch size 2/),
    );
    await assert.rejects(
      model.forward({ ...inputs, hidden_states: hostTensor('float64', [...x.shape]) }),
      fails('DTYPE', /expected float32 \[B, 4, H, W\], got float64 \[2, 4, 8, 8\]/),
    );
  });
});

describe("PixArtTransformer2DModel's T-GATE step graphs' session settings", () => {
  const layout = { height: 8, width: 8, captionLength: 10, withMask: true };
  const settingsOf = async (
    model: PixArtTransformer2DModel,
    o: PixArtGraphOptions,
  ): Promise<[string, boolean]> => {
    const { settings } = await model.compile(o);
    return [settings.optimizationLevel, settings.disablePrepacking];
  };

  it("store and reuse graphs read the float32 checkpoint in place; the plain graph keeps the runtime's", async () => {
    const model = await PixArtTransformer2DModel.fromPretrained(`${GOLDEN}pixart_alpha_tiny/model`, {
      runtime,
    });
    const own = new Runtime({ worker: false, threads: 1, shareWeightsAcrossGraphs: false });
    const unshared = await PixArtTransformer2DModel.fromPretrained(`${GOLDEN}pixart_alpha_tiny/model`, {
      runtime: own,
    });
    try {
      const gated = (selfAttention: LayerAction, crossAttention: LayerAction): PixArtGraphOptions => ({
        ...layout,
        tgate: { selfAttention, crossAttention, average: selfAttention === 'store' },
      });
      assert.deepEqual(await settingsOf(model, layout), ['all', false]);
      assert.deepEqual(await settingsOf(model, gated('compute', 'compute')), ['all', false]);
      for (const at of [gated('store', 'store'), gated('reuse', 'reuse'), gated('compute', 'reuse')]) {
        assert.deepEqual(await settingsOf(model, at), ['extended', true], JSON.stringify(at.tgate));
        assert.deepEqual(await settingsOf(unshared, at), ['all', false], JSON.stringify(at.tgate));
      }
    } finally {
      await model.close();
      await unshared.close();
      await own.dispose();
    }
  });
});
