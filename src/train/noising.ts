/**
 * The forward diffusion a denoising loss trains on: timesteps drawn uniformly over the training
 * schedule and x_t = √ᾱ_t·x₀ + √(1 − ᾱ_t)·ε, as diffusers' training scripts do.
 */
import { addNoiseWithAlphasCumprod } from '../schedulers/ddim.js';

/** Timestep ⌊u·T⌋ (at most T − 1) for each uniform draw u in [0, 1), T = alphasCumprod.length. */
export function uniformTimesteps(uniform: ArrayLike<number>, alphasCumprod: Float32Array): number[] {
  const steps = alphasCumprod.length;
  return Array.from(uniform, (u) => Math.min(steps - 1, Math.floor(u * steps)));
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
