/**
 * The float32 logarithm, sine and cosine that torch's AVX2 `normal_fill` uses
 * (aten/src/ATen/native/cpu/avx_mathfun.h: Cephes polynomials, after Pommier's sse_mathfun), replayed
 * one lane at a time with every operation rounded to float32, so that results match torch bit for
 * bit rather than to within an ulp of the true function.
 *
 * Each `mulAdd` marks a multiply whose only use is the add after it: GCC, which builds torch's Linux
 * wheels, fuses exactly those into FMA instructions (where an add takes two products, the one computed
 * first). Passing `fusedMulAdd` reproduces such a build, `unfusedMulAdd` one built without contraction;
 * both were checked on all 2^24 inputs the kernel can see against the C++ compiled by GCC 12 at -O2.
 */
const f32 = Math.fround;

const SQRT_HALF = f32(Math.SQRT1_2);
const LOG_P = [
  7.0376836292e-2, -1.151461031e-1, 1.167699874e-1, -1.2420140846e-1, 1.4249322787e-1, -1.6668057665e-1,
  2.0000714765e-1, -2.4999993993e-1, 3.3333331174e-1,
].map(f32);
/** ln 2 split in two (Cephes' C2 and C1): Q2 has few bits, so e·Q2 is exact. */
const LOG_Q1 = f32(-2.1219444e-4);
const LOG_Q2 = f32(0.693359375);

/** π/4 split in three (Cephes' DP1..DP3) for the argument reduction. */
const MINUS_DP1 = f32(-0.78515625);
const MINUS_DP2 = f32(-2.4187564849853515625e-4);
const MINUS_DP3 = f32(-3.774894977445941e-8);
const SIN_P = [-1.9515295891e-4, 8.3321608736e-3, -1.6666654611e-1].map(f32);
const COS_P = [2.443315711809948e-5, -1.388731625493765e-3, 4.166664568298827e-2].map(f32);
const FOUR_OVER_PI = f32(1.27323954473516);

export type MulAdd = (a: number, b: number, c: number) => number;

/** a·b + c with the product rounded first, as separate mul and add instructions compute it. */
export const unfusedMulAdd: MulAdd = (a, b, c) => f32(f32(a * b) + c);

const bits64 = new Float64Array(1);
const words64 = new Uint32Array(bits64.buffer);
const LOW_WORD = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1 ? 0 : 1;

/**
 * a·b + c rounded once to float32, as an FMA instruction computes it. The float32 product is exact in
 * float64; the sum is rounded to odd in float64 (53 ≥ 2·24 + 2 bits), which makes the final
 * rounding to float32 correct (Boldo & Melquiond 2008, "Emulation of FMA and correctly rounded sums").
 */
export const fusedMulAdd: MulAdd = (a, b, c) => {
  const product = a * b;
  const sum = product + c;
  // TwoSum (Knuth): the exact rounding error of `sum`.
  const productPart = sum - c;
  const addendPart = sum - productPart;
  const error = product - productPart + (c - addendPart);
  if (error === 0 || !Number.isFinite(sum)) return f32(sum);
  bits64[0] = sum;
  if ((words64[LOW_WORD] & 1) === 0) {
    // Round to odd: step one float64 ulp towards the exact value.
    const awayFromZero = error > 0 === sum > 0;
    const low = words64[LOW_WORD];
    const high = words64[1 - LOW_WORD];
    if (awayFromZero) {
      words64[LOW_WORD] = low + 1;
      if (low === 0xffffffff) words64[1 - LOW_WORD] = high + 1;
    } else {
      words64[LOW_WORD] = low - 1;
      if (low === 0) words64[1 - LOW_WORD] = high - 1;
    }
  }
  return f32(bits64[0]);
};

const bits32 = new Float32Array(1);
const words32 = new Uint32Array(bits32.buffer);

/**
 * Natural logarithm of a positive normal float32 as `log256_ps` computes it: split x = m·2^e with
 * m in [√½, √2), then ln x = e·ln 2 + (m − 1) − (m − 1)²/2 + (m − 1)³·P(m − 1). The kernel only
 * passes x in [2^-24, 1], so the NaN for x ≤ 0 and the clamp of subnormals are left out.
 */
export function cephesLog(x: number, mulAdd: MulAdd): number {
  bits32[0] = x;
  const raw = words32[0];
  words32[0] = (raw & ~0x7f800000) | 0x3f000000; // the mantissa, scaled into [0.5, 1)
  let mantissa = bits32[0];
  let exponent = (raw >>> 23) - 126;
  if (mantissa < SQRT_HALF) {
    exponent -= 1;
    mantissa = f32(f32(mantissa - 1) + mantissa);
  } else {
    mantissa = f32(mantissa - 1);
  }
  const square = f32(mantissa * mantissa);
  let poly = LOG_P[0];
  for (let i = 1; i < LOG_P.length; i++) poly = mulAdd(poly, mantissa, LOG_P[i]);
  poly = mulAdd(f32(poly * mantissa), square, f32(exponent * LOG_Q1));
  poly = f32(poly - f32(square * 0.5));
  return mulAdd(exponent, LOG_Q2, f32(mantissa + poly));
}

/**
 * Sine and cosine of a float32 angle in [0, 2π] as `sincos256_ps` computes them: reduce by the
 * nearest even multiple j of π/4, evaluate the sine or cosine polynomial on the remainder, and
 * pick and sign them by the octant. Writes [sin, cos] into `out`.
 */
export function cephesSinCos(angle: number, mulAdd: MulAdd, out: Float64Array): void {
  const magnitude = Math.abs(angle);
  const negative = angle < 0 || Object.is(angle, -0);
  let octant = Math.trunc(f32(magnitude * FOUR_OVER_PI)) | 0;
  octant = (octant + 1) & ~1;
  let x = mulAdd(octant, MINUS_DP1, magnitude);
  x = mulAdd(octant, MINUS_DP2, x);
  x = mulAdd(octant, MINUS_DP3, x);
  const square = f32(x * x);

  let cosPoly = mulAdd(COS_P[0], square, COS_P[1]);
  cosPoly = mulAdd(cosPoly, square, COS_P[2]);
  cosPoly = mulAdd(f32(cosPoly * square), square, -f32(square * 0.5));
  cosPoly = f32(cosPoly + 1);

  let sinPoly = mulAdd(SIN_P[0], square, SIN_P[1]);
  sinPoly = mulAdd(sinPoly, square, SIN_P[2]);
  sinPoly = mulAdd(f32(sinPoly * square), x, x);

  // The selection is done with masks and an add of +0, which turns a −0 into +0.
  const sineFromSinPoly = (octant & 2) === 0;
  let sine = (sineFromSinPoly ? sinPoly : cosPoly) + 0;
  let cosine = (sineFromSinPoly ? cosPoly : sinPoly) + 0;
  if (((octant & 4) !== 0) !== negative) sine = -sine;
  if ((~(octant - 2) & 4) !== 0) cosine = -cosine;
  out[0] = sine;
  out[1] = cosine;
}
