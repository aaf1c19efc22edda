/**
 * dtype conversions against independent references: hand-computed bit patterns, float64 decoding
 * formulas, and nearest-value search over every finite half / bf16 (rather than bit tricks).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { WeightError } from '../../src/errors.js';
import {
  bf16ToF32,
  dtypeByteSize,
  f16ToF32,
  f32ToBf16,
  f32ToF16,
  SAFETENSORS_DTYPES,
  toFloat32,
  type SafetensorsDtype,
} from '../../src/io/dtypes.js';
import { seededUniform, testSeed } from '../random.js';
import { bitsOfF32, f32FromBits } from './craft.js';

/** IEEE binary16 decoded with float64 arithmetic. */
function halfValue(bits: number): number {
  const sign = bits & 0x8000 ? -1 : 1;
  const exponent = (bits >> 10) & 0x1f;
  const mantissa = bits & 0x3ff;
  if (exponent === 0x1f) return mantissa === 0 ? sign * Infinity : NaN;
  if (exponent === 0) return sign * mantissa * 2 ** -24;
  return sign * (1 + mantissa / 1024) * 2 ** (exponent - 15);
}

/** bfloat16 decoded with float64 arithmetic. */
function bf16Value(bits: number): number {
  const sign = bits & 0x8000 ? -1 : 1;
  const exponent = (bits >> 7) & 0xff;
  const mantissa = bits & 0x7f;
  if (exponent === 0xff) return mantissa === 0 ? sign * Infinity : NaN;
  if (exponent === 0) return sign * mantissa * 2 ** -133;
  return sign * (1 + mantissa / 128) * 2 ** (exponent - 127);
}

/**
 * Round-to-nearest-even by search: `magnitudes[i]` is the value of non-negative pattern i, with the
 * infinity pattern standing for the next power of two, so values past the last midpoint overflow.
 */
function nearestPattern(value: number, magnitudes: Float64Array, signBit: number): number {
  const magnitude = Math.abs(value);
  let lo = 0;
  let hi = magnitudes.length - 1;
  if (magnitude >= magnitudes[hi]) return (value < 0 || Object.is(value, -0) ? signBit : 0) | hi;
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if (magnitudes[mid] <= magnitude) lo = mid;
    else hi = mid;
  }
  const below = magnitude - magnitudes[lo];
  const above = magnitudes[hi] - magnitude;
  const pattern = below < above ? lo : above < below ? hi : lo % 2 === 0 ? lo : hi;
  return (value < 0 || Object.is(value, -0) ? signBit : 0) | pattern;
}

const HALF_MAGNITUDES = Float64Array.from({ length: 0x7c01 }, (_, i) =>
  i === 0x7c00 ? 2 ** 16 : halfValue(i),
);
const BF16_MAGNITUDES = Float64Array.from({ length: 0x7f81 }, (_, i) =>
  i === 0x7f80 ? 2 ** 128 : bf16Value(i),
);

function isHalfNaN(bits: number): boolean {
  return (bits & 0x7c00) === 0x7c00 && (bits & 0x3ff) !== 0;
}
function isBf16NaN(bits: number): boolean {
  return (bits & 0x7f80) === 0x7f80 && (bits & 0x7f) !== 0;
}

/** Random f32 values: raw bit patterns, magnitudes across (and beyond) the half range, and exact
 * midpoints between neighbouring halves / bf16s, which exercise ties-to-even. */
function randomF32(seed: number, count: number): Float32Array {
  const random = seededUniform(seed);
  const values = new Float32Array(count);
  for (let i = 0; i < count; i++) {
    const sign = random() < 0.5 ? -1 : 1;
    switch (i % 4) {
      case 0:
        values[i] = f32FromBits(Math.floor(random() * 2 ** 32));
        break;
      case 1:
        values[i] = sign * (1 + random()) * 2 ** Math.floor(random() * 50 - 30);
        break;
      case 2: {
        const half = Math.floor(random() * 0x7bff);
        values[i] = (sign * (halfValue(half) + halfValue(half + 1))) / 2;
        break;
      }
      default: {
        const bf16 = Math.floor(random() * 0x7f7f);
        values[i] = (sign * (bf16Value(bf16) + bf16Value(bf16 + 1))) / 2;
      }
    }
    if (Number.isNaN(values[i])) values[i] = 0;
  }
  return values;
}

describe('dtypeByteSize', () => {
  it('gives the element size of every safetensors dtype', () => {
    const expected: Record<SafetensorsDtype, number> = {
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
    assert.deepEqual(
      Object.fromEntries(SAFETENSORS_DTYPES.map((dtype) => [dtype, dtypeByteSize(dtype)])),
      expected,
    );
  });
});

describe('bf16', () => {
  it('encodes known values to hand-computed bit patterns', () => {
    const cases: [number, number][] = [
      [1.0, 0x3f80],
      [-2.0, 0xc000],
      [0, 0x0000],
      [-0, 0x8000],
      [Infinity, 0x7f80],
      [-Infinity, 0xff80],
      [f32FromBits(0x3f808000), 0x3f80], // 1 + 2^-8: a tie, kept mantissa even → down
      [f32FromBits(0x3f818000), 0x3f82], // 1 + 3·2^-8: a tie, kept mantissa odd → up
      [f32FromBits(0x3f808001), 0x3f81], // just above the tie → up
      [f32FromBits(0x3f807fff), 0x3f80], // just below the tie → down
      [f32FromBits(0x7f7fffff), 0x7f80], // largest f32 rounds past the largest bf16 → inf
      [f32FromBits(0x00000001), 0x0000], // smallest f32 subnormal → 0
      [f32FromBits(0x00010000), 0x0001], // smallest bf16 subnormal is exact
    ];
    const encoded = f32ToBf16(Float32Array.from(cases.map(([value]) => value)));
    cases.forEach(([value, bits], i) =>
      assert.equal(
        encoded[i],
        bits,
        `bf16(${value}) = 0x${encoded[i].toString(16)}, expected 0x${bits.toString(16)}`,
      ),
    );
  });

  it('keeps NaN as NaN, including payloads that truncation would turn into infinity', () => {
    const nans = new Float32Array(new Uint32Array([0x7fc00000, 0x7f800001, 0xff800001, 0x7fffffff]).buffer);
    const encoded = f32ToBf16(nans);
    for (const bits of encoded) assert.ok(isBf16NaN(bits), `0x${bits.toString(16)} is not a bf16 NaN`);
    assert.equal(encoded[2] & 0x8000, 0x8000, 'NaN sign is kept');
    assert.ok(bf16ToF32(encoded).every(Number.isNaN));
  });

  it('decodes all 65536 patterns exactly', () => {
    const decoded = bf16ToF32(Uint16Array.from({ length: 0x10000 }, (_, i) => i));
    for (let bits = 0; bits < 0x10000; bits++) {
      const expected = bf16Value(bits);
      if (Number.isNaN(expected)) assert.ok(Number.isNaN(decoded[bits]), `0x${bits.toString(16)}`);
      else
        assert.ok(
          Object.is(decoded[bits], expected),
          `0x${bits.toString(16)}: ${decoded[bits]} != ${expected}`,
        );
    }
  });

  it('rounds random f32 values to the nearest bf16, ties to even', () => {
    const seed = testSeed('random f32 values rounded to bf16');
    const values = randomF32(seed, 20000);
    const encoded = f32ToBf16(values);
    values.forEach((value, i) => {
      const expected = nearestPattern(value, BF16_MAGNITUDES, 0x8000);
      assert.equal(encoded[i], expected, `seed ${seed}: bf16(${value}) = 0x${encoded[i].toString(16)}`);
    });
  });

  it('round-trips every non-NaN bf16 through f32', () => {
    const patterns = Uint16Array.from({ length: 0x10000 }, (_, i) => i).filter((bits) => !isBf16NaN(bits));
    assert.deepEqual(f32ToBf16(bf16ToF32(patterns)), patterns);
  });
});

describe('f16', () => {
  it('encodes known values to hand-computed bit patterns', () => {
    const cases: [number, number][] = [
      [1.0, 0x3c00],
      [-2.0, 0xc000],
      [0.1, 0x2e66],
      [1 / 3, 0x3555],
      [65504, 0x7bff], // largest finite half
      [65519, 0x7bff], // below the midpoint to 65536
      [65520, 0x7c00], // the midpoint: 0x7bff is odd, so it rounds to infinity
      [1e6, 0x7c00],
      [-1e6, 0xfc00],
      [2 ** -14, 0x0400], // smallest normal
      [2 ** -24, 0x0001], // smallest subnormal
      [2 ** -25, 0x0000], // half of it: a tie, rounds to even 0
      [2 ** -25 * (1 + 2 ** -20), 0x0001], // just above the tie
      [3 * 2 ** -25, 0x0002], // tie between 1 and 2 ulps → even 2
      [5 * 2 ** -25, 0x0002], // tie between 2 and 3 ulps → even 2
      [1 + 2 ** -11, 0x3c00], // tie, kept mantissa even → down
      [1 + 3 * 2 ** -11, 0x3c02], // tie, kept mantissa odd → up
      [2 ** -14 - 2 ** -25, 0x0400], // largest subnormal + half ulp rounds up into the normals
      [0, 0x0000],
      [-0, 0x8000],
      [-(2 ** -26), 0x8000], // underflow keeps the sign
      [Infinity, 0x7c00],
      [-Infinity, 0xfc00],
    ];
    const encoded = f32ToF16(Float32Array.from(cases.map(([value]) => value)));
    cases.forEach(([value, bits], i) =>
      assert.equal(
        encoded[i],
        bits,
        `f16(${value}) = 0x${encoded[i].toString(16)}, expected 0x${bits.toString(16)}`,
      ),
    );
  });

  it('keeps NaN as NaN', () => {
    const nans = new Float32Array(new Uint32Array([0x7fc00000, 0x7f800001, 0xff800001]).buffer);
    const encoded = f32ToF16(nans);
    for (const bits of encoded) assert.ok(isHalfNaN(bits), `0x${bits.toString(16)} is not a half NaN`);
    assert.ok(f16ToF32(encoded).every(Number.isNaN));
  });

  it('decodes all 65536 patterns exactly, subnormals included', () => {
    const decoded = f16ToF32(Uint16Array.from({ length: 0x10000 }, (_, i) => i));
    for (let bits = 0; bits < 0x10000; bits++) {
      const expected = halfValue(bits);
      if (Number.isNaN(expected)) assert.ok(Number.isNaN(decoded[bits]), `0x${bits.toString(16)}`);
      else
        assert.ok(
          Object.is(decoded[bits], expected),
          `0x${bits.toString(16)}: ${decoded[bits]} != ${expected}`,
        );
    }
    assert.equal(bitsOfF32(decoded[0x0001]), 0x33800000, '2^-24 as f32');
  });

  it('rounds random f32 values to the nearest half, ties to even', () => {
    const seed = testSeed('random f32 values rounded to f16');
    const values = randomF32(seed, 20000);
    const encoded = f32ToF16(values);
    values.forEach((value, i) => {
      const expected = nearestPattern(value, HALF_MAGNITUDES, 0x8000);
      assert.equal(encoded[i], expected, `seed ${seed}: f16(${value}) = 0x${encoded[i].toString(16)}`);
    });
  });

  it('round-trips every non-NaN half through f32', () => {
    const patterns = Uint16Array.from({ length: 0x10000 }, (_, i) => i).filter((bits) => !isHalfNaN(bits));
    assert.deepEqual(f32ToF16(f16ToF32(patterns)), patterns);
  });
});

describe('toFloat32', () => {
  /** Writes `values` little-endian with `write` at byte offset `offset` of a fresh buffer. */
  function bytesAt(
    offset: number,
    size: number,
    values: (number | bigint)[],
    write: (view: DataView, at: number, v: never) => void,
  ): Uint8Array {
    const buffer = new ArrayBuffer(offset + size * values.length + 3);
    const view = new DataView(buffer);
    values.forEach((value, i) => write(view, offset + i * size, value as never));
    return new Uint8Array(buffer, offset, size * values.length);
  }

  const cases: {
    dtype: SafetensorsDtype;
    values: (number | bigint)[];
    expected: number[];
    write: (view: DataView, at: number, v: never) => void;
  }[] = [
    {
      dtype: 'F32',
      values: [1.5, -2.25, 3e38],
      expected: [1.5, -2.25, Math.fround(3e38)],
      write: (v, a, x) => v.setFloat32(a, x, true),
    },
    {
      dtype: 'F64',
      values: [0.1, -1e300, 2 ** -30],
      expected: [Math.fround(0.1), -Infinity, 2 ** -30],
      write: (v, a, x) => v.setFloat64(a, x, true),
    },
    {
      dtype: 'F16',
      values: [0x3c00, 0xc000, 0x0001, 0x7c00],
      expected: [1, -2, 2 ** -24, Infinity],
      write: (v, a, x) => v.setUint16(a, x, true),
    },
    {
      dtype: 'BF16',
      values: [0x3f80, 0xc040, 0x4049],
      expected: [1, -3, 3.140625],
      write: (v, a, x) => v.setUint16(a, x, true),
    },
    {
      dtype: 'I64',
      values: [-5n, 2n ** 40n, 0n],
      expected: [-5, 2 ** 40, 0],
      write: (v, a, x) => v.setBigInt64(a, x, true),
    },
    {
      dtype: 'U64',
      values: [7n, 2n ** 63n],
      expected: [7, 2 ** 63],
      write: (v, a, x) => v.setBigUint64(a, x, true),
    },
    {
      dtype: 'I32',
      values: [-123456, 2 ** 31 - 1],
      expected: [-123456, 2 ** 31],
      write: (v, a, x) => v.setInt32(a, x, true),
    },
    {
      dtype: 'U32',
      values: [2 ** 32 - 1, 9],
      expected: [2 ** 32, 9],
      write: (v, a, x) => v.setUint32(a, x, true),
    },
    {
      dtype: 'I16',
      values: [-32768, 1234],
      expected: [-32768, 1234],
      write: (v, a, x) => v.setInt16(a, x, true),
    },
    { dtype: 'U16', values: [65535, 3], expected: [65535, 3], write: (v, a, x) => v.setUint16(a, x, true) },
    { dtype: 'I8', values: [-128, 127, -1], expected: [-128, 127, -1], write: (v, a, x) => v.setInt8(a, x) },
    { dtype: 'U8', values: [0, 255, 17], expected: [0, 255, 17], write: (v, a, x) => v.setUint8(a, x) },
    { dtype: 'BOOL', values: [0, 1, 7], expected: [0, 1, 1], write: (v, a, x) => v.setUint8(a, x) },
    // e5m2: the high byte of a half. 0x3c = 1.0, 0xc4 = -4, 0x7c = inf, 0x01 = 2^-16.
    {
      dtype: 'F8_E5M2',
      values: [0x3c, 0xc4, 0x7c, 0x01],
      expected: [1, -4, Infinity, 2 ** -16],
      write: (v, a, x) => v.setUint8(a, x),
    },
    // e4m3fn: bias 7, no inf. 0x38 = 1.0, 0x7e = 448 (largest), 0x01 = 2^-9, 0xb0 = -0.5.
    {
      dtype: 'F8_E4M3',
      values: [0x38, 0x7e, 0x01, 0xb0],
      expected: [1, 448, 2 ** -9, -0.5],
      write: (v, a, x) => v.setUint8(a, x),
    },
  ];

  for (const { dtype, values, expected, write } of cases) {
    it(`decodes ${dtype} at aligned and unaligned byte offsets`, () => {
      const size = dtypeByteSize(dtype);
      for (const offset of [0, 1, 3, 5]) {
        const decoded = toFloat32(bytesAt(offset, size, values, write), dtype);
        assert.deepEqual([...decoded], expected, `${dtype} at offset ${offset}`);
      }
    });
  }

  it('decodes the e4m3fn NaN pattern to NaN', () => {
    assert.ok(toFloat32(new Uint8Array([0x7f, 0xff]), 'F8_E4M3').every(Number.isNaN));
  });

  it('shares memory for aligned F32 and copies unaligned F32', () => {
    const aligned = new Uint8Array(new Float32Array([1, 2]).buffer);
    assert.equal(toFloat32(aligned, 'F32').buffer, aligned.buffer);
    const unaligned = new Uint8Array(9).subarray(1);
    unaligned.set(aligned);
    const decoded = toFloat32(unaligned, 'F32');
    assert.notEqual(decoded.buffer, unaligned.buffer);
    assert.deepEqual([...decoded], [1, 2]);
  });

  it('rejects a byte length that is not a whole number of elements', () => {
    assert.throws(
      () => toFloat32(new Uint8Array(6), 'F32'),
      (error: unknown) =>
        error instanceof WeightError &&
        error.code === 'WEIGHT_BYTE_LENGTH' &&
        /multiple of 4 bytes, found 6/.test(error.message),
    );
  });
});
