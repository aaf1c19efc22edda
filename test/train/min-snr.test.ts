import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { minSnrWeights } from '../../src/train/min-snr.js';
import { seededUniform, testSeed } from '../random.js';

describe('minSnrWeights', () => {
  // A fresh random ᾱ table (decreasing in (0, 1)), with SNR on both sides of γ.
  const random = seededUniform(testSeed('min-SNR alphas'));
  let alphaBar = 1;
  const alphasCumprod = Float32Array.from({ length: 200 }, () => (alphaBar *= 1 - 0.05 * random()));

  for (const prediction of ['epsilon', 'v_prediction'] as const) {
    it(`is min(SNR, γ)/${prediction === 'epsilon' ? 'SNR' : '(SNR + 1)'} per timestep (${prediction})`, () => {
      const gamma = 1 + 4 * random();
      const weights = minSnrWeights(alphasCumprod, gamma, prediction);
      let clipped = 0;
      alphasCumprod.forEach((a, t) => {
        const snr = (Math.sqrt(a) / Math.sqrt(1 - a)) ** 2;
        if (snr > gamma) clipped += 1;
        const expected = Math.min(snr, gamma) / (prediction === 'epsilon' ? snr : snr + 1);
        assert.ok(
          Math.abs(weights[t] - expected) <= 1e-12 * expected,
          `t=${t}: ${weights[t]} vs ${expected}`,
        );
      });
      assert.ok(clipped > 0 && clipped < alphasCumprod.length, `γ ${gamma} clips ${clipped} timesteps`);
    });
  }

  it('is 1 everywhere with γ = 0 (off), and rejects a negative γ', () => {
    assert.ok(minSnrWeights(alphasCumprod, 0).every((w) => w === 1));
    assert.throws(() => minSnrWeights(alphasCumprod, -1), /γ must be/);
  });
});
