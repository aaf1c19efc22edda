import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { GoldenFixture } from '../golden-fixture.js';
import { readAllTensors } from '../helpers.js';
import { PixArtReference, refInputs } from './pixart-reference.js';

const CASE = fileURLToPath(new URL('../golden/models/pixart_alpha_tiny/', import.meta.url));

describe('the float64 PixArt reference the pipeline tests compare with', () => {
  it("reproduces diffusers' float64 output of the tiny PixArt-α (padded caption mask, two timesteps)", async (t) => {
    const reference = await PixArtReference.load(`${CASE}model`);
    const inputs = await readAllTensors(`${CASE}inputs.safetensors`);
    const golden = await GoldenFixture.load(CASE);
    const sample = reference.forward(refInputs(inputs));
    assert.deepEqual(sample.shape, golden.shape('sample'));
    // Float64 against float64, the timestep sinusoid in float32 as torch computes it in both runs with
    // torch's exp: measured 4.8e-8 vs fp64 (torch's float32 sin/cos are within an ulp, not correctly
    // rounded as here), held to 5e-7, a tenth of the 10×-noise bound; vs the fp32 golden 10× its noise.
    const check = golden.check('sample', sample.data, { boundVsFp64: 5e-7 });
    t.diagnostic(
      `vs fp64 ${check.errorVsFp64.toExponential(2)}, vs fp32 ${check.errorVsFp32.toExponential(2)}`,
    );
  });
});
