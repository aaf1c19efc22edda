/**
 * torch's float32 `exp` on CPU, bit for bit: the schedulers' coefficients and the models' sinusoidal
 * timestep frequencies (diffusers' `get_timestep_embedding`) depend on its rounding.
 */
import { fusedMulAdd } from './avx-mathfun.js';

const f32 = Math.fround;

/** numpy's `round` / `rint` (and SLEEF's `rintf`): halfway cases go to the even neighbour. */
export function roundHalfEven(x: number): number {
  const rounded = Math.round(x);
  // Math.round sends halves up; step back when that lands on an odd number.
  return rounded - x === 0.5 && rounded % 2 !== 0 ? rounded - 1 : rounded;
}

/** 1/ln 2 in float32, SLEEF's R_LN2f. */
const R_LN2 = f32(Math.LOG2E);
const LN2_UPPER = f32(0.693145751953125);
const LN2_LOWER = f32(1.428606765330187045e-6);
const EXP_COEFFICIENTS = [
  0.000198527617612853646278381, 0.00139304355252534151077271, 0.00833336077630519866943359,
  0.0416664853692054748535156, 0.166666671633720397949219, 0.5,
].map(f32);

/**
 * `torch.exp` of a float32 tensor on CPU: torch computes it with SLEEF's `expf_u10` (AVX2, fused
 * multiply-adds) even for one element, which is within 1 ulp but not always correctly rounded; the
 * DPM-Solver coefficients depend on it bit for bit. Cody–Waite reduction by ln 2, then a degree-7
 * polynomial (SLEEF `xexpf`).
 */
export function torchExpFloat32(x: number): number {
  if (Number.isNaN(x)) return NaN;
  if (x > 100) return Infinity;
  if (x < -104) return 0;
  const q = roundHalfEven(f32(x * R_LN2));
  let s = fusedMulAdd(q, -LN2_UPPER, x);
  s = fusedMulAdd(q, -LN2_LOWER, s);
  let u = EXP_COEFFICIENTS[0];
  for (const c of EXP_COEFFICIENTS.slice(1)) u = fusedMulAdd(u, s, c);
  u = f32(1 + fusedMulAdd(f32(s * s), u, s));
  // ldexp in two halves, as SLEEF's vldexp2 does, so that subnormal results round the same way.
  const half = q >> 1;
  return f32(f32(u * 2 ** half) * 2 ** (q - half));
}
