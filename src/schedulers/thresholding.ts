/**
 * Dynamic thresholding of x̂0 (Saharia et al. 2022, "Photorealistic Text-to-Image Diffusion Models…",
 * §2.3): per batch item, s = the `ratio` quantile of |x̂0| clamped to [1, maxValue], then x̂0 is clamped
 * to [−s, s] and divided by s. Meant for pixel-space models; latent models leave it off.
 */
import { f32 } from './numerics.js';

/** `torch.quantile(values, q)` with linear interpolation, in float32. */
function quantile(sortedValues: Float32Array, q: number): number {
  const rank = f32(q * (sortedValues.length - 1));
  const below = Math.floor(rank);
  const above = Math.min(below + 1, sortedValues.length - 1);
  const weight = f32(rank - below);
  const start = sortedValues[below];
  const end = sortedValues[above];
  // torch.lerp's two-sided formula, which is exact at both ends.
  return weight < 0.5
    ? f32(start + f32(weight * f32(end - start)))
    : f32(end - f32(f32(end - start) * f32(1 - weight)));
}

export function thresholdSample(
  sample: Float32Array,
  batch: number,
  ratio: number,
  maxValue: number,
): Float32Array {
  const out = new Float32Array(sample.length);
  const itemSize = sample.length / batch;
  for (let item = 0; item < batch; item++) {
    const values = sample.subarray(item * itemSize, (item + 1) * itemSize);
    const s = Math.min(Math.max(quantile(values.map(Math.abs).sort(), ratio), 1), maxValue);
    for (let i = 0; i < itemSize; i++) out[item * itemSize + i] = Math.min(Math.max(values[i], -s), s) / s;
  }
  return out;
}
