import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { cephesLog, cephesSinCos, fusedMulAdd, unfusedMulAdd } from '../../src/random/avx-mathfun.js';
import { seededUniform } from '../random.js';

const f32 = Math.fround;
/** Every finite float32 is an integer multiple of 2^-149. */
const SCALE = 149n;

/** a·b + c rounded once to float32 (ties to even), in exact integer arithmetic. */
function exactMulAdd(a: number, b: number, c: number): number {
  const toInteger = (x: number): bigint => BigInt(x * 2 ** 149);
  const sum = toInteger(a) * toInteger(b) + (toInteger(c) << SCALE); // scaled by 2^298
  if (sum === 0n) return 0;
  const negative = sum < 0n;
  const magnitude = negative ? -sum : sum;
  const shift = BigInt(Math.max(0, magnitude.toString(2).length - 24));
  let kept = magnitude >> shift;
  const rest = magnitude - (kept << shift);
  const half = shift === 0n ? 0n : 1n << (shift - 1n);
  if (rest > half || (rest === half && half !== 0n && (kept & 1n) === 1n)) kept += 1n;
  const value = Number(kept) * 2 ** (Number(shift) - 298);
  return negative ? -value : value;
}

function randomFloat32(random: () => number, minExponent: number, maxExponent: number): number {
  const exponent = minExponent + Math.floor(random() * (maxExponent - minExponent + 1));
  const sign = random() < 0.5 ? -1 : 1;
  return f32(sign * (1 + random()) * 2 ** exponent);
}

describe('fusedMulAdd', () => {
  it('rounds once, where a float64 sum then a float32 rounding would round twice', () => {
    // Exact: 2^30 + 2^7 + 2^6 − 2^-40, just below a float32 midpoint; float64 rounds it onto the
    // midpoint and ties-to-even then goes up.
    const a = f32(64 * (1 + 2 ** -23));
    const b = f32(1 - 2 ** -23);
    const c = 2 ** 30 + 2 ** 7;
    assert.equal(exactMulAdd(a, b, c), c);
    assert.equal(fusedMulAdd(a, b, c), c);
    assert.notEqual(f32(a * b + c), c);
  });

  it('matches exact integer arithmetic on random and cancelling operands', () => {
    const random = seededUniform(2024);
    for (let i = 0; i < 3000; i++) {
      const a = randomFloat32(random, -20, 20);
      const b = randomFloat32(random, -20, 20);
      let c: number;
      if (i % 3 === 0) c = randomFloat32(random, -40, 40);
      else if (i % 3 === 1)
        c = -f32(a * b); // catastrophic cancellation
      else c = f32(-f32(a * b) * (1 + (random() - 0.5) * 2 ** -20)); // near cancellation
      assert.equal(fusedMulAdd(a, b, c), exactMulAdd(a, b, c), `fma(${a}, ${b}, ${c})`);
      assert.equal(unfusedMulAdd(a, b, c), f32(f32(a * b) + c));
    }
  });
});

describe('Cephes float32 log and sincos', () => {
  it('are within a few float32 ulps of the true functions on the inputs torch passes', () => {
    const random = seededUniform(99);
    const out = new Float64Array(2);
    for (const mulAdd of [fusedMulAdd, unfusedMulAdd]) {
      for (let i = 0; i < 5000; i++) {
        const uniform = Math.floor(random() * 2 ** 24) * 2 ** -24;
        const x = f32(1 - uniform);
        const log = cephesLog(x, mulAdd);
        assert.equal(log, f32(log));
        assert.ok(Math.abs(log - Math.log(x)) <= 2 ** -23 * Math.max(Math.abs(Math.log(x)), 2 ** -24) * 2);
        const angle = f32(f32(2 * Math.PI) * uniform);
        cephesSinCos(angle, mulAdd, out);
        assert.ok(Math.abs(out[0] - Math.sin(angle)) <= 2 ** -23, `sin(${angle}) = ${out[0]}`);
        assert.ok(Math.abs(out[1] - Math.cos(angle)) <= 2 ** -23, `cos(${angle}) = ${out[1]}`);
      }
    }
  });

  it('give exact values at the ends', () => {
    const out = new Float64Array(2);
    assert.equal(cephesLog(1, fusedMulAdd), 0);
    cephesSinCos(0, fusedMulAdd, out);
    assert.deepEqual(Array.from(out), [0, 1]);
  });
});
