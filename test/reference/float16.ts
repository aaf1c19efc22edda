/**
 * IEEE 754 binary16 by float64 arithmetic (values and spacings as powers of two, no bit tricks), as
 * an exact reference for casts to and from float16.
 */

export const FLOAT16_MAX = 65504;

/** The value of a binary16 bit pattern: 1 sign bit, 5 exponent bits (bias 15), 10 fraction bits. */
export function float16Value(bits: number): number {
  const sign = bits & 0x8000 ? -1 : 1;
  const exponent = (bits >> 10) & 0x1f;
  const fraction = bits & 0x3ff;
  if (exponent === 0x1f) return fraction === 0 ? sign * Infinity : NaN;
  if (exponent === 0) return sign * fraction * 2 ** -24;
  return sign * (1024 + fraction) * 2 ** (exponent - 25);
}

/** `x` rounded to the nearest binary16 value, ties to even; beyond the largest finite value, ±∞. */
export function roundToFloat16(x: number): number {
  if (!Number.isFinite(x) || x === 0) return x;
  const magnitude = Math.abs(x);
  // The binade [2^e, 2^(e+1)) holding the magnitude; log2 may be off by one near powers of two.
  let e = Math.floor(Math.log2(magnitude));
  if (2 ** e > magnitude) e--;
  if (2 ** (e + 1) <= magnitude) e++;
  // binary16 values are multiples of 2^(e−10) in a normal binade, of 2^−24 below 2^−14.
  const spacing = 2 ** Math.max(e - 10, -24);
  const units = magnitude / spacing;
  let whole = Math.floor(units);
  const rest = units - whole;
  if (rest > 0.5 || (rest === 0.5 && whole % 2 === 1)) whole += 1;
  const rounded = whole * spacing;
  // Every value from FLOAT16_MAX + spacing/2 = 65520 up rounds to 65536, which is not representable.
  return Math.sign(x) * (rounded > FLOAT16_MAX ? Infinity : rounded);
}
