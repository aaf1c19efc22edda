/**
 * Safetensors element types and exact conversions between them and float32.
 *
 * Every conversion works on raw bit patterns so that results are exact and identical on every
 * platform: bf16/f16 → f32 is lossless, f32 → bf16/f16 rounds to nearest with ties to even (IEEE 754
 * roundTiesToEven), and NaN stays NaN.
 */
import { WeightError } from '../errors.js';

/** The dtype strings a safetensors header may use. */
export const SAFETENSORS_DTYPES = [
  'F64',
  'F32',
  'F16',
  'BF16',
  'I64',
  'I32',
  'I16',
  'I8',
  'U8',
  'U16',
  'U32',
  'U64',
  'BOOL',
  'F8_E4M3',
  'F8_E5M2',
] as const;

export type SafetensorsDtype = (typeof SAFETENSORS_DTYPES)[number];

const BYTE_SIZES: Readonly<Record<SafetensorsDtype, number>> = {
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U8: 1,
  U16: 2,
  U32: 4,
  U64: 8,
  BOOL: 1,
  F8_E4M3: 1,
  F8_E5M2: 1,
};

export function isSafetensorsDtype(value: unknown): value is SafetensorsDtype {
  return typeof value === 'string' && Object.hasOwn(BYTE_SIZES, value);
}

/** Bytes per element of `dtype`. */
export function dtypeByteSize(dtype: SafetensorsDtype): number {
  return BYTE_SIZES[dtype];
}

/** Safetensors data is little-endian; on a big-endian host typed-array views need a byte swap. */
export const HOST_IS_LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

// ---------------------------------------------------------------------------------------------
// bf16: the top 16 bits of an f32.

/** Widens bf16 bit patterns to f32 (exact). */
export function bf16ToF32(bits: Uint16Array): Float32Array {
  const out = new Float32Array(bits.length);
  const outBits = new Uint32Array(out.buffer);
  for (let i = 0; i < bits.length; i++) outBits[i] = bits[i] << 16;
  return out;
}

/** Narrows f32 to bf16 bit patterns, rounding to nearest even; NaN stays (quiet) NaN with its sign. */
export function f32ToBf16(values: Float32Array): Uint16Array {
  const inBits = new Uint32Array(values.buffer, values.byteOffset, values.length);
  const out = new Uint16Array(values.length);
  for (let i = 0; i < values.length; i++) out[i] = f32BitsToBf16(inBits[i]);
  return out;
}

function f32BitsToBf16(bits: number): number {
  if ((bits & 0x7fffffff) > 0x7f800000) {
    // Plain truncation could clear every mantissa bit and turn NaN into infinity; set the quiet bit.
    return (bits >>> 16) | 0x0040;
  }
  // Adding 0x7fff plus the lowest kept bit rounds ties to even; a carry into the exponent is correct
  // (it rounds up to the next binade, or to infinity past the largest finite bf16).
  return (bits + 0x7fff + ((bits >>> 16) & 1)) >>> 16;
}

// ---------------------------------------------------------------------------------------------
// IEEE 754 binary16: 1 sign bit, 5 exponent bits (bias 15), 10 mantissa bits.

/** Widens IEEE half bit patterns to f32 (exact, including subnormals, ±inf and NaN payloads). */
export function f16ToF32(bits: Uint16Array): Float32Array {
  const out = new Float32Array(bits.length);
  const outBits = new Uint32Array(out.buffer);
  for (let i = 0; i < bits.length; i++) outBits[i] = f16BitsToF32Bits(bits[i]);
  return out;
}

function f16BitsToF32Bits(half: number): number {
  const sign = (half & 0x8000) << 16;
  const exponent = (half >>> 10) & 0x1f;
  const mantissa = half & 0x3ff;
  if (exponent === 0x1f) return (sign | 0x7f800000 | (mantissa << 13)) >>> 0;
  if (exponent !== 0) return (sign | ((exponent + 112) << 23) | (mantissa << 13)) >>> 0;
  if (mantissa === 0) return sign >>> 0;
  // Subnormal half: normalise the mantissa so the f32 gets an implicit leading one.
  let shift = 0;
  let m = mantissa;
  while ((m & 0x400) === 0) {
    m <<= 1;
    shift++;
  }
  return (sign | ((113 - shift) << 23) | ((m & 0x3ff) << 13)) >>> 0;
}

/** Narrows f32 to IEEE half bit patterns: round to nearest even, overflow to ±inf, gradual underflow. */
export function f32ToF16(values: Float32Array): Uint16Array {
  const inBits = new Uint32Array(values.buffer, values.byteOffset, values.length);
  const out = new Uint16Array(values.length);
  for (let i = 0; i < values.length; i++) out[i] = f32BitsToF16(inBits[i]);
  return out;
}

function f32BitsToF16(bits: number): number {
  const sign = (bits >>> 16) & 0x8000;
  const exponent = (bits >>> 23) & 0xff;
  const mantissa = bits & 0x7fffff;
  if (exponent === 0xff) {
    if (mantissa === 0) return sign | 0x7c00;
    // Keep the top payload bits but force the quiet bit so the result cannot collapse into infinity.
    return sign | 0x7e00 | (mantissa >>> 13);
  }
  const unbiased = exponent - 127;
  if (unbiased > 15) return sign | 0x7c00;
  if (unbiased >= -14) {
    // Normal range: exponent and mantissa side by side, so a rounding carry ripples into the exponent
    // (and from the largest binade into 0x7c00 = infinity), which is exactly the IEEE result.
    const combined = ((unbiased + 15) << 10) | (mantissa >>> 13);
    return sign | roundShifted(combined, mantissa & 0x1fff, 13);
  }
  // Subnormal half: the value in units of 2^-24 is (1.mantissa · 2^23) · 2^(unbiased + 1).
  const shift = -unbiased - 1;
  if (shift > 24) return sign; // below half of the smallest subnormal 2^-24, even after rounding
  const significand = mantissa | 0x800000;
  const kept = significand >>> shift;
  const dropped = significand & ((1 << shift) - 1);
  return sign | roundShifted(kept, dropped, shift);
}

/** Rounds `kept` (the bits left after dropping `droppedBits` low bits, whose value was `dropped`) to
 * nearest, ties to even. */
function roundShifted(kept: number, dropped: number, droppedBits: number): number {
  const half = 1 << (droppedBits - 1);
  if (dropped > half || (dropped === half && (kept & 1) === 1)) return kept + 1;
  return kept;
}

// ---------------------------------------------------------------------------------------------
// 8-bit floats as PyTorch defines them (float8_e4m3fn and float8_e5m2).

/** float8_e4m3fn: bias 7, no infinities, S.1111.111 is NaN. */
function f8e4m3ToNumber(byte: number): number {
  const sign = byte & 0x80 ? -1 : 1;
  const exponent = (byte >>> 3) & 0xf;
  const mantissa = byte & 0x7;
  if (exponent === 0xf && mantissa === 0x7) return NaN;
  if (exponent === 0) return sign * mantissa * 2 ** -9;
  return sign * (1 + mantissa / 8) * 2 ** (exponent - 7);
}

// ---------------------------------------------------------------------------------------------
// Raw little-endian bytes → float32.

/**
 * Decodes `bytes` (little-endian elements of `dtype`, at any byte offset) to float32. Integer and
 * 64-bit values are rounded to the nearest float32; BOOL becomes 0 or 1. When `dtype` is F32 and
 * `bytes` is 4-byte aligned the result is a view sharing `bytes`' memory, otherwise a fresh array.
 */
export function toFloat32(bytes: Uint8Array, dtype: SafetensorsDtype): Float32Array {
  const size = dtypeByteSize(dtype);
  if (bytes.byteLength % size !== 0) {
    throw new WeightError(
      `Cannot decode ${dtype}: expected a multiple of ${size} bytes, found ${bytes.byteLength}.`,
      'WEIGHT_BYTE_LENGTH',
    );
  }
  const count = bytes.byteLength / size;
  switch (dtype) {
    case 'F32':
      return new Float32Array(...nativeView(bytes, 4, count));
    case 'F64':
      return Float32Array.from(new Float64Array(...nativeView(bytes, 8, count)));
    case 'F16':
      return f16ToF32(new Uint16Array(...nativeView(bytes, 2, count)));
    case 'BF16':
      return bf16ToF32(new Uint16Array(...nativeView(bytes, 2, count)));
    case 'I64':
      return Float32Array.from(new BigInt64Array(...nativeView(bytes, 8, count)), Number);
    case 'U64':
      return Float32Array.from(new BigUint64Array(...nativeView(bytes, 8, count)), Number);
    case 'I32':
      return Float32Array.from(new Int32Array(...nativeView(bytes, 4, count)));
    case 'U32':
      return Float32Array.from(new Uint32Array(...nativeView(bytes, 4, count)));
    case 'I16':
      return Float32Array.from(new Int16Array(...nativeView(bytes, 2, count)));
    case 'U16':
      return Float32Array.from(new Uint16Array(...nativeView(bytes, 2, count)));
    case 'I8':
      return Float32Array.from(new Int8Array(bytes.buffer, bytes.byteOffset, count));
    case 'U8':
      return Float32Array.from(bytes);
    case 'BOOL':
      return Float32Array.from(bytes, (byte) => (byte !== 0 ? 1 : 0));
    case 'F8_E5M2':
      // e5m2 is exactly the high byte of an IEEE half.
      return f16ToF32(Uint16Array.from(bytes, (byte) => byte << 8));
    case 'F8_E4M3':
      return Float32Array.from(bytes, f8e4m3ToNumber);
  }
}

/**
 * Arguments for a typed-array constructor that reads `count` elements of `elementSize` bytes from
 * `bytes` in host order: a zero-copy view when aligned on a little-endian host, else an aligned copy
 * (byte-swapped on a big-endian host). Safetensors offsets are often unaligned (see notes §4).
 */
function nativeView(
  bytes: Uint8Array,
  elementSize: number,
  count: number,
): [ArrayBufferLike, number, number] {
  if (HOST_IS_LITTLE_ENDIAN && bytes.byteOffset % elementSize === 0) {
    return [bytes.buffer, bytes.byteOffset, count];
  }
  const copy = bytes.slice();
  if (!HOST_IS_LITTLE_ENDIAN) swapBytesInPlace(copy, elementSize);
  return [copy.buffer, 0, count];
}

/** Reverses the byte order of every `elementSize`-byte element of `bytes`. */
export function swapBytesInPlace(bytes: Uint8Array, elementSize: number): void {
  if (elementSize === 1) return;
  for (let start = 0; start < bytes.length; start += elementSize) {
    for (let lo = start, hi = start + elementSize - 1; lo < hi; lo++, hi--) {
      const byte = bytes[lo];
      bytes[lo] = bytes[hi];
      bytes[hi] = byte;
    }
  }
}
