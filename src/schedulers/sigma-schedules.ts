/**
 * Noise levels σ for the k-diffusion style schedulers (Euler, DPM-Solver, flow matching): σ from
 * alphas_cumprod, the Karras / exponential / beta / λ-uniform respacings, and σ → t inversion, with
 * numpy 1.24's float32/float64 behaviour (the golden fixtures were made with it).
 */
import type { ConfigReader } from './config.js';
import { f32, linspace } from './numerics.js';

/** σ_t = sqrt((1 − ᾱ_t) / ᾱ_t), computed on the float32 tensor as diffusers does. */
export function sigmasFromAlphasCumprod(alphasCumprod: Float32Array): Float32Array {
  return alphasCumprod.map((alphaBar) => Math.sqrt(f32(f32(1 - alphaBar) / alphaBar)));
}

/** `np.log` of a float32 array: float32 results. */
export function logFloat32(values: Float32Array): Float32Array {
  return values.map(Math.log);
}

/**
 * The fractional training timestep whose σ is `sigma`, interpolating log σ between the two nearest
 * training steps (diffusers' `_sigma_to_t`). numpy 1.24 casts the float64 scalar log σ to float32
 * when it meets the float32 `logSigmas`, so the interpolation weight is float32.
 */
export function sigmaToT(sigma: number, logSigmas: Float32Array): number {
  const logSigma = f32(Math.log(Math.max(sigma, 1e-10)));
  let lowIndex = 0;
  for (let i = 0; i < logSigmas.length; i++) if (logSigma >= logSigmas[i]) lowIndex = i;
  lowIndex = Math.min(lowIndex, logSigmas.length - 2);
  const low = logSigmas[lowIndex];
  const high = logSigmas[lowIndex + 1];
  const weight = Math.min(Math.max(f32(f32(low - logSigma) / f32(low - high)), 0), 1);
  return f32(1 - weight) * lowIndex + weight * (lowIndex + 1);
}

/** Karras et al. 2022 ("Elucidating the Design Space…", eq. 5) with ρ = 7: uniform in σ^(1/ρ). */
export function karrasSigmas(sigmaMin: number, sigmaMax: number, count: number): Float64Array {
  const rho = 7;
  const minInvRho = sigmaMin ** (1 / rho);
  const maxInvRho = sigmaMax ** (1 / rho);
  return linspace(0, 1, count).map((ramp) => (maxInvRho + ramp * (minInvRho - maxInvRho)) ** rho);
}

/** Uniform in log σ. */
export function exponentialSigmas(sigmaMin: number, sigmaMax: number, count: number): Float64Array {
  return linspace(Math.log(sigmaMax), Math.log(sigmaMin), count).map(Math.exp);
}

/** Lee et al. 2024 ("Beta Sampling is All You Need"): σ at the Beta(α, β) quantiles of 1 − linspace(0, 1, n). */
export function betaSigmas(
  sigmaMin: number,
  sigmaMax: number,
  count: number,
  alpha = 0.6,
  beta = 0.6,
): Float64Array {
  return linspace(0, 1, count).map(
    (u) => sigmaMin + betaQuantile(1 - u, alpha, beta) * (sigmaMax - sigmaMin),
  );
}

/** Lu et al. 2022 (DPM-Solver++), λ uniform: the respacing of `use_lu_lambdas`. */
export function luLambdas(lambdaMin: number, lambdaMax: number, count: number): Float64Array {
  return linspace(0, 1, count).map((ramp) => lambdaMax + ramp * (lambdaMin - lambdaMax));
}

export type SigmaRespacing = 'karras' | 'exponential' | 'beta';

/** Reads `use_karras_sigmas` / `use_exponential_sigmas` / `use_beta_sigmas`, of which at most one may be set. */
export function readSigmaRespacing(reader: ConfigReader): {
  use_karras_sigmas: boolean;
  use_exponential_sigmas: boolean;
  use_beta_sigmas: boolean;
  respacing: SigmaRespacing | null;
} {
  const flags = {
    use_karras_sigmas: reader.boolean('use_karras_sigmas', false),
    use_exponential_sigmas: reader.boolean('use_exponential_sigmas', false),
    use_beta_sigmas: reader.boolean('use_beta_sigmas', false),
  };
  const set = Object.entries(flags).filter(([, on]) => on);
  if (set.length > 1) {
    throw reader.invalid(
      set.map(([key]) => key).join(' and '),
      true,
      'at most one of use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas set to true',
    );
  }
  const respacing = flags.use_karras_sigmas
    ? 'karras'
    : flags.use_exponential_sigmas
      ? 'exponential'
      : flags.use_beta_sigmas
        ? 'beta'
        : null;
  return { ...flags, respacing };
}

/** Respaces σ between `sigmaMin` and `sigmaMax` into `count` levels, largest first. */
export function respaceSigmas(
  kind: SigmaRespacing,
  sigmaMin: number,
  sigmaMax: number,
  count: number,
): Float64Array {
  if (kind === 'karras') return karrasSigmas(sigmaMin, sigmaMax, count);
  if (kind === 'exponential') return exponentialSigmas(sigmaMin, sigmaMax, count);
  return betaSigmas(sigmaMin, sigmaMax, count);
}

// ---------------------------------------------------------------------------------------------
// The Beta distribution's quantile function (scipy.stats.beta.ppf), to about 1e-15.

/** ln Γ(x) for x > 0 (Lanczos, g = 7, n = 9). */
function logGamma(x: number): number {
  const coefficients = [
    0.99999999999980993, 676.5203681218851, -1259.1392167224028, 771.32342877765313, -176.61502916214059,
    12.507343278686905, -0.13857109526572012, 9.9843695780195716e-6, 1.5056327351493116e-7,
  ];
  if (x < 0.5) return Math.log(Math.PI / Math.sin(Math.PI * x)) - logGamma(1 - x);
  const z = x - 1;
  let series = coefficients[0];
  for (let i = 1; i < coefficients.length; i++) series += coefficients[i] / (z + i);
  const t = z + 7.5;
  return 0.5 * Math.log(2 * Math.PI) + (z + 0.5) * Math.log(t) - t + Math.log(series);
}

/** The continued fraction of the incomplete beta function (modified Lentz). */
function betaContinuedFraction(x: number, a: number, b: number): number {
  const tiny = 1e-300;
  let c = 1;
  let d = 1 - ((a + b) * x) / (a + 1);
  d = 1 / (Math.abs(d) < tiny ? tiny : d);
  let result = d;
  for (let m = 1; m <= 10000; m++) {
    const m2 = 2 * m;
    for (const numerator of [
      (m * (b - m) * x) / ((a + m2 - 1) * (a + m2)),
      (-(a + m) * (a + b + m) * x) / ((a + m2) * (a + m2 + 1)),
    ]) {
      d = 1 + numerator * d;
      d = 1 / (Math.abs(d) < tiny ? tiny : d);
      c = 1 + numerator / c;
      if (Math.abs(c) < tiny) c = tiny;
      result *= d * c;
    }
    if (Math.abs(d * c - 1) < 1e-16) break;
  }
  return result;
}

/** The regularised incomplete beta function I_x(a, b). */
function regularizedIncompleteBeta(x: number, a: number, b: number): number {
  if (x <= 0) return 0;
  if (x >= 1) return 1;
  const logFront = logGamma(a + b) - logGamma(a) - logGamma(b) + a * Math.log(x) + b * Math.log1p(-x);
  if (x < (a + 1) / (a + b + 2)) return (Math.exp(logFront) * betaContinuedFraction(x, a, b)) / a;
  return 1 - (Math.exp(logFront) * betaContinuedFraction(1 - x, b, a)) / b;
}

/** The x with I_x(a, b) = q, by bisection down to adjacent float64 values (I is increasing in x). */
export function betaQuantile(q: number, a: number, b: number): number {
  if (q <= 0) return 0;
  if (q >= 1) return 1;
  let low = 0;
  let high = 1;
  for (;;) {
    const mid = (low + high) / 2;
    if (mid <= low || mid >= high) break;
    if (regularizedIncompleteBeta(mid, a, b) < q) low = mid;
    else high = mid;
  }
  return Math.abs(regularizedIncompleteBeta(low, a, b) - q) <=
    Math.abs(regularizedIncompleteBeta(high, a, b) - q)
    ? low
    : high;
}
