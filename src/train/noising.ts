/**
 * The forward diffusion a denoising loss trains on: timesteps drawn over the training schedule
 * (uniformly, as diffusers' training scripts do, or logit-normally, as SD3 does) and
 * x_t = √ᾱ_t·x₀ + √(1 − ᾱ_t)·ε.
 */
import { addNoiseWithAlphasCumprod } from '../schedulers/ddim.js';

/** Timestep ⌊u·T⌋ (at most T − 1) for each uniform draw u in [0, 1), T = alphasCumprod.length. */
export function uniformTimesteps(uniform: ArrayLike<number>, alphasCumprod: Float32Array): number[] {
  const steps = alphasCumprod.length;
  return Array.from(uniform, (u) => Math.min(steps - 1, Math.floor(u * steps)));
}

/**
 * Timestep ⌊T·sigmoid(mean + std·n)⌋ (at most T − 1) for each standard normal draw n: the logit-normal
 * timestep density of SD3 (Esser et al. 2024, §3.1 "Logit-Normal Sampling") on the discrete schedule,
 * T = alphasCumprod.length. A positive mean puts more draws at high noise (large t).
 */
export function logitNormalTimesteps(
  normal: ArrayLike<number>,
  alphasCumprod: Float32Array,
  density: { readonly mean: number; readonly std: number },
): number[] {
  const steps = alphasCumprod.length;
  return Array.from(normal, (n) => {
    const sigmoid = 1 / (1 + Math.exp(-(density.mean + density.std * n)));
    return Math.min(steps - 1, Math.floor(sigmoid * steps));
  });
}

/** x_t for clean latents `x0` [B, …] and noise of the same shape at one timestep per item. */
export function noisedLatents(
  x0: Float32Array,
  noise: Float32Array,
  shape: readonly number[],
  timesteps: readonly number[],
  alphasCumprod: Float32Array,
): Float32Array {
  return addNoiseWithAlphasCumprod(
    'DDPMScheduler',
    alphasCumprod,
    { data: x0, shape: [...shape] },
    { data: noise, shape: [...shape] },
    timesteps,
  ).data as Float32Array;
}

/**
 * v = √ᾱ_t·ε − √(1 − ᾱ_t)·x₀ per item (diffusers' `get_velocity`, in float32 as torch computes it).
 */
export function velocity(
  x0: Float32Array,
  noise: Float32Array,
  shape: readonly number[],
  timesteps: readonly number[],
  alphasCumprod: Float32Array,
): Float32Array {
  const per = x0.length / shape[0];
  const out = new Float32Array(x0.length);
  timesteps.forEach((t, b) => {
    const a = Math.fround(Math.sqrt(alphasCumprod[t]));
    const s = Math.fround(Math.sqrt(Math.fround(1 - alphasCumprod[t])));
    for (let i = b * per; i < (b + 1) * per; i++)
      out[i] = Math.fround(Math.fround(a * noise[i]) - Math.fround(s * x0[i]));
  });
  return out;
}
