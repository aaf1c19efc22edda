/**
 * Min-SNR-γ loss weighting (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting
 * Strategy", eq. 6): each timestep's MSE is weighted by min(SNR(t), γ) / SNR(t) for ε-prediction
 * (min(SNR, γ) / (SNR + 1) for v-prediction), where SNR(t) = ᾱ_t / (1 − ᾱ_t). This is how diffusers'
 * train_text_to_image.py applies it (`compute_snr`, `--snr_gamma`): the mean over a sample's
 * elements times its weight, then the mean over the batch.
 */
import { OptionError } from '../errors.js';

export type MinSnrPrediction = 'epsilon' | 'v_prediction';

/**
 * The weight of every training timestep, from the schedule's ᾱ (float32 as diffusers keeps it),
 * computed in float64. γ = 0 turns the weighting off (all weights 1).
 */
export function minSnrWeights(
  alphasCumprod: Float32Array,
  gamma: number,
  prediction: MinSnrPrediction = 'epsilon',
): Float64Array {
  if (!(Number.isFinite(gamma) && gamma >= 0)) {
    throw new OptionError(`minSnrWeights: γ must be a number ≥ 0 (0 turns the weighting off), got ${gamma}`);
  }
  const weights = new Float64Array(alphasCumprod.length);
  for (let t = 0; t < alphasCumprod.length; t++) {
    if (gamma === 0) {
      weights[t] = 1;
      continue;
    }
    const alphaBar = alphasCumprod[t];
    const snr = alphaBar / (1 - alphaBar);
    weights[t] = Math.min(snr, gamma) / (prediction === 'epsilon' ? snr : snr + 1);
  }
  return weights;
}
