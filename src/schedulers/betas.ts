/**
 * Training noise schedules shared by the discrete-time schedulers: betas from a config, their
 * zero-terminal-SNR rescaling, and alphas_cumprod, computed as diffusers computes them (float32
 * tensors, cumprod accumulated in float64) so that the tables match bit for bit.
 */
import type { ConfigReader } from './config.js';
import { cumprodFloat32, f32, torchLinspaceFloat32 } from './numerics.js';

export const BETA_SCHEDULES = ['linear', 'scaled_linear', 'squaredcos_cap_v2'] as const;
export type BetaSchedule = (typeof BETA_SCHEDULES)[number];

/** The config keys every beta-based scheduler shares. */
export interface BetaConfig {
  num_train_timesteps: number;
  beta_start: number;
  beta_end: number;
  beta_schedule: BetaSchedule;
  trained_betas: number[] | null;
  rescale_betas_zero_snr: boolean;
}

/** Reads the beta keys with a class's defaults (LCM's differ from the others'). */
export function readBetaConfig(
  reader: ConfigReader,
  defaults: { beta_start: number; beta_end: number; beta_schedule: BetaSchedule },
): BetaConfig {
  const trainedBetas = reader.nullableNumberArray('trained_betas');
  const numTrainTimesteps = reader.integer('num_train_timesteps', 1000, 1);
  if (trainedBetas !== null && trainedBetas.length !== numTrainTimesteps) {
    throw reader.invalid(
      'trained_betas',
      trainedBetas,
      `an array of num_train_timesteps = ${numTrainTimesteps} betas`,
    );
  }
  return {
    num_train_timesteps: numTrainTimesteps,
    beta_start: reader.number('beta_start', defaults.beta_start),
    beta_end: reader.number('beta_end', defaults.beta_end),
    // Diffusers reads beta_schedule only when no trained_betas are given.
    beta_schedule:
      trainedBetas === null
        ? reader.oneOf('beta_schedule', BETA_SCHEDULES, defaults.beta_schedule)
        : defaults.beta_schedule,
    trained_betas: trainedBetas,
    rescale_betas_zero_snr: reader.boolean('rescale_betas_zero_snr', false),
  };
}

/**
 * The Glide cosine schedule (`squaredcos_cap_v2`): betas that discretise ᾱ(t) = cos²((t + 0.008)/1.008 · π/2),
 * capped at `maxBeta` (Nichol & Dhariwal 2021, eq. 17).
 */
export function betasForAlphaBar(numDiffusionTimesteps: number, maxBeta = 0.999): Float32Array {
  const alphaBar = (t: number): number => Math.cos(((t + 0.008) / 1.008) * (Math.PI / 2)) ** 2;
  const betas = new Float32Array(numDiffusionTimesteps);
  for (let i = 0; i < numDiffusionTimesteps; i++) {
    const t1 = i / numDiffusionTimesteps;
    const t2 = (i + 1) / numDiffusionTimesteps;
    betas[i] = Math.min(1 - alphaBar(t2) / alphaBar(t1), maxBeta);
  }
  return betas;
}

/** Rescales betas to zero terminal SNR (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed", Algorithm 1). */
export function rescaleZeroTerminalSnr(betas: Float32Array): Float32Array {
  const alphasCumprod = cumprodFloat32(betas.map((beta) => f32(1 - beta)));
  const alphasBarSqrt = alphasCumprod.map(Math.sqrt);
  const first = alphasBarSqrt[0];
  const last = alphasBarSqrt[alphasBarSqrt.length - 1];
  const scale = f32(first / f32(first - last));
  // Shift so the last value is zero, then scale so the first is back to its old value.
  const alphasBar = alphasBarSqrt.map((value) => {
    const rescaled = f32(f32(value - last) * scale);
    return rescaled * rescaled;
  });
  const rescaledBetas = new Float32Array(betas.length);
  rescaledBetas[0] = f32(1 - alphasBar[0]);
  for (let i = 1; i < betas.length; i++) rescaledBetas[i] = f32(1 - f32(alphasBar[i] / alphasBar[i - 1]));
  return rescaledBetas;
}

/** The betas a config describes (float32, as the `betas` tensor diffusers builds). */
export function betasFromConfig(config: BetaConfig): Float32Array {
  const count = config.num_train_timesteps;
  let betas: Float32Array;
  if (config.trained_betas !== null) betas = Float32Array.from(config.trained_betas);
  else if (config.beta_schedule === 'linear')
    betas = torchLinspaceFloat32(config.beta_start, config.beta_end, count);
  else if (config.beta_schedule === 'scaled_linear') {
    // The schedule of latent diffusion: linear in sqrt(beta).
    betas = torchLinspaceFloat32(Math.sqrt(config.beta_start), Math.sqrt(config.beta_end), count).map(
      (b) => b * b,
    );
  } else betas = betasForAlphaBar(count);
  return config.rescale_betas_zero_snr ? rescaleZeroTerminalSnr(betas) : betas;
}

/** ᾱ_t = ∏ (1 − β_s), float32 as diffusers keeps it. */
export function alphasCumprodFromBetas(betas: Float32Array): Float32Array {
  return cumprodFloat32(betas.map((beta) => f32(1 - beta)));
}
