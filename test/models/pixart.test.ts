import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { PixArtTransformer2DModel } from '../../src/models/pixart-transformer.js';
import { Runtime } from '../../src/runtime/runtime.js';
import { assertClose, readAllTensors } from '../helpers.js';

const GOLDEN = fileURLToPath(new URL('../golden/models/', import.meta.url));
const runtime = new Runtime({ worker: false, threads: 1 });
after(() => runtime.dispose());

function maxAbs(a: Float32Array): number {
  return a.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
}

describe('PixArtTransformer2DModel vs diffusers golden outputs', () => {
  for (const name of ['pixart_alpha_tiny', 'pixart_alpha_tiny_microcond', 'pixart_sigma_tiny']) {
    it(name, async () => {
      const dir = `${GOLDEN}${name}`;
      const model = await PixArtTransformer2DModel.fromPretrained(`${dir}/model`, { runtime });
      const inputs = await readAllTensors(`${dir}/inputs.safetensors`);
      const expected = (await readAllTensors(`${dir}/outputs.safetensors`)).sample;
      const out = await model.forward(inputs);
      assert.deepEqual(out.sample.shape, expected.shape);
      const golden = expected.data as Float32Array;
      const tol = 1e-4 * Math.max(1, maxAbs(golden));
      assertClose(out.sample.data as Float32Array, golden, { atol: tol, rtol: 0, what: `${name}.sample` });
      await model.close();
    });
  }
});
