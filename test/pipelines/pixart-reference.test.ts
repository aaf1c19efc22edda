import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { assertMaxAbsError, goldenBound } from '../compare.js';
import { readAllTensors } from '../helpers.js';
import { PixArtReference, refInputs } from './pixart-reference.js';

const CASE = fileURLToPath(new URL('../golden/models/pixart_alpha_tiny/', import.meta.url));

describe('the float64 PixArt reference the pipeline tests compare with', () => {
  it("reproduces diffusers' float64 output of the tiny PixArt-α (padded caption mask, two timesteps)", async () => {
    const reference = await PixArtReference.load(`${CASE}model`);
    const inputs = await readAllTensors(`${CASE}inputs.safetensors`);
    const expected = (await readAllTensors(`${CASE}outputs_f64.safetensors`)).sample;
    const meta = JSON.parse(await readFile(`${CASE}meta.json`, 'utf8')) as Parameters<typeof goldenBound>[0];
    const sample = reference.forward(refInputs(inputs));
    assert.deepEqual(sample.shape, expected.shape);
    assertMaxAbsError(sample.data, expected.data as Float32Array, goldenBound(meta, 'sample'), 'sample');
  });
});
