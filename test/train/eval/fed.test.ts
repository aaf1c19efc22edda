import assert from 'node:assert/strict';
import { test } from 'node:test';

import { FED_EPSILON, featureStatistics, frechetDistance } from '../../../src/train/eval/fed.js';
import type { FeatureStatistics } from '../../../src/train/eval/fed.js';
import { symmetricEigen } from '../../../src/train/eval/symmetric-eigen.js';
import { assertClose, assertMaxAbsError } from '../../compare.js';
import { normalArray, seededUniform, testSeed } from '../../random.js';

/** A random orthogonal n×n matrix: the product of n Householder reflections of random normal vectors. */
function randomOrthogonal(n: number, uniform: () => number): Float64Array {
  let q = new Float64Array(n * n);
  for (let i = 0; i < n; i++) q[i * n + i] = 1;
  for (let r = 0; r < n; r++) {
    const v = Float64Array.from(normalArray(n, uniform));
    const norm2 = v.reduce((s, x) => s + x * x, 0);
    // q ← q·(I − 2vvᵀ/‖v‖²)
    const next = new Float64Array(n * n);
    for (let i = 0; i < n; i++) {
      let qv = 0;
      for (let k = 0; k < n; k++) qv += q[i * n + k] * v[k];
      for (let j = 0; j < n; j++) next[i * n + j] = q[i * n + j] - (2 * qv * v[j]) / norm2;
    }
    q = next;
  }
  return q;
}

/** Q·diag(d)·Qᵀ. */
function rotated(q: Float64Array, d: ArrayLike<number>, n: number): Float64Array {
  const out = new Float64Array(n * n);
  for (let i = 0; i < n; i++)
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let k = 0; k < n; k++) s += q[i * n + k] * d[k] * q[j * n + k];
      out[i * n + j] = s;
    }
  return out;
}

function stats(mean: ArrayLike<number>, covariance: Float64Array, count = 1000): FeatureStatistics {
  return { count, dims: mean.length, mean: Float64Array.from(mean), covariance };
}

test('symmetricEigen recovers the spectrum and eigenvectors of Q·diag(d)·Qᵀ', () => {
  const random = seededUniform(testSeed('symmetricEigen'));
  for (const n of [1, 2, 5, 40]) {
    const d = Float64Array.from({ length: n }, () => 10 * random() - 5);
    const q = randomOrthogonal(n, random);
    const a = rotated(q, d, n);
    const { values, vectors } = symmetricEigen(a, n);
    const expected = [...d].sort((x, y) => x - y);
    assertMaxAbsError(values, expected, 1e-12 * 5 * n, `eigenvalues, n = ${n}`);
    // A·v_k = λ_k·v_k and VᵀV = I, column by column.
    for (let k = 0; k < n; k++) {
      const av = new Float64Array(n);
      const lv = new Float64Array(n);
      for (let i = 0; i < n; i++) {
        for (let j = 0; j < n; j++) av[i] += a[i * n + j] * vectors[j * n + k];
        lv[i] = values[k] * vectors[i * n + k];
      }
      assertMaxAbsError(av, lv, 1e-12 * 5 * n, `A·v = λv, n = ${n}, k = ${k}`);
      for (let m = 0; m < n; m++) {
        let dot = 0;
        for (let i = 0; i < n; i++) dot += vectors[i * n + k] * vectors[i * n + m];
        assert.ok(Math.abs(dot - (k === m ? 1 : 0)) < 1e-12 * n, `VᵀV[${k}][${m}] = ${dot}`);
      }
    }
  }
});

test('FED of two Gaussians with a shared eigenbasis is ‖Δμ‖² + Σ(√a − √b)² (closed form)', () => {
  const random = seededUniform(testSeed('FED shared eigenbasis'));
  const n = 24;
  const q = randomOrthogonal(n, random);
  const a = Float64Array.from({ length: n }, () => 0.01 + 3 * random());
  const b = Float64Array.from({ length: n }, () => 0.01 + 3 * random());
  const mu1 = normalArray(n, random);
  const mu2 = normalArray(n, random);
  let expected = 0;
  for (let i = 0; i < n; i++) expected += (mu1[i] - mu2[i]) ** 2 + (Math.sqrt(a[i]) - Math.sqrt(b[i])) ** 2;
  const result = frechetDistance(stats(mu1, rotated(q, a, n)), stats(mu2, rotated(q, b, n)));
  assert.equal(result.epsilon, 0);
  assertClose([result.distance], [expected], { rtol: 1e-10, atol: 1e-10, what: 'FED' });
});

test('FED of a 2×2 case computed by hand', () => {
  // Σ₁ = [[2, 1], [1, 2]], Σ₂ = diag(1, 4), μ₁ = 0, μ₂ = (1, 2). Σ₁Σ₂ = [[2, 4], [1, 8]]: trace 10,
  // det 12, so Tr √(Σ₁Σ₂) = √λ₁ + √λ₂ = √(λ₁ + λ₂ + 2√(λ₁λ₂)) = √(10 + 2√12) = 4.1143898…
  // FED = ‖μ‖² + Tr Σ₁ + Tr Σ₂ − 2·4.1143898 = 5 + 4 + 5 − 8.2287796 = 5.7712204…
  const traceSqrt = Math.sqrt(10 + 2 * Math.sqrt(12));
  const result = frechetDistance(
    stats([0, 0], Float64Array.of(2, 1, 1, 2)),
    stats([1, 2], Float64Array.of(1, 0, 0, 4)),
  );
  assertClose([result.meanTerm, result.distance], [5, 14 - 2 * traceSqrt], { rtol: 1e-13, atol: 1e-13 });
  assert.ok(Math.abs(result.distance - 5.7712204) < 1e-7, `FED = ${result.distance}`);
});

test('FED is symmetric, and 0 for a set against itself (full rank and rank-deficient)', () => {
  const random = seededUniform(testSeed('FED symmetry'));
  const dims = 32;
  // Correlated features: x = L·z with a random L, so the covariance is far from diagonal.
  const mixing = normalArray(dims * dims, random);
  const draw = (count: number, shift: number): Float32Array => {
    const z = normalArray(count * dims, random);
    const x = new Float32Array(count * dims);
    for (let i = 0; i < count; i++)
      for (let r = 0; r < dims; r++) {
        let s = shift;
        for (let c = 0; c < dims; c++) s += (mixing[r * dims + c] * z[i * dims + c]) / Math.sqrt(dims);
        x[i * dims + r] = s;
      }
    return x;
  };
  const a = featureStatistics(draw(300, 0), 300, dims);
  const b = featureStatistics(draw(200, 0.3), 200, dims);
  const ab = frechetDistance(a, b).distance;
  const ba = frechetDistance(b, a).distance;
  assert.ok(ab > 0.1, `FED of two different sets is ${ab}`);
  // Not bit-equal (the nuclear norms of √Σ_b√Σ_a and of its transpose are rounded differently),
  // but within rounding: no square root of a squared small eigenvalue amplifies it.
  assertClose([ab], [ba], { rtol: 1e-12, atol: 1e-12, what: 'FED(a, b) against FED(b, a)' });
  let trace = 0;
  for (let d = 0; d < dims; d++) trace += a.covariance[d * dims + d];
  const self = frechetDistance(a, a).distance;
  assert.ok(Math.abs(self) < 1e-13 * trace, `FED(a, a) = ${self}`);
  // 10 vectors in 32 dimensions: a covariance of rank 9, regularised with ε·I.
  const small = featureStatistics(draw(10, 0), 10, dims);
  const selfSmall = frechetDistance(small, small);
  assert.equal(selfSmall.epsilon, FED_EPSILON);
  assert.ok(Math.abs(selfSmall.distance) < 1e-13 * trace, `FED(small, small) = ${selfSmall.distance}`);
});

test('FED stays exact for singular covariances: rank-1 pairs and rank-deficient shared bases', () => {
  const random = seededUniform(testSeed('FED singular'));
  const n = 16;
  // Σ₁ = uuᵀ, Σ₂ = vvᵀ: √Σ₁ = uuᵀ/‖u‖, √Σ₁Σ₂√Σ₁ = (u·v)²·uuᵀ/‖u‖², whose root has trace |u·v|.
  const u = normalArray(n, random);
  const v = normalArray(n, random);
  const outer = (w: Float32Array): Float64Array =>
    Float64Array.from({ length: n * n }, (_, k) => w[Math.floor(k / n)] * w[k % n]);
  const dot = (x: Float32Array, y: Float32Array): number => x.reduce((s, xi, i) => s + xi * y[i], 0);
  const mu = normalArray(n, random);
  const expected = dot(mu, mu) + dot(u, u) + dot(v, v) - 2 * Math.abs(dot(u, v));
  const exact = frechetDistance(stats(mu, outer(u)), stats(new Float32Array(n), outer(v)), { epsilon: 0 });
  assertClose([exact.distance], [expected], { rtol: 1e-7, atol: 1e-7, what: 'rank-1 FED' });

  // Both of rank 5 in a shared basis, with few samples (count ≤ dims): ε·I is added, and the closed
  // form with ε is Σ(√(a + ε) − √(b + ε))².
  const q = randomOrthogonal(n, random);
  const a = Float64Array.from({ length: n }, (_, i) => (i < 5 ? 0.5 + random() : 0));
  const b = Float64Array.from({ length: n }, (_, i) => (i < 5 ? 0.5 + random() : 0));
  const result = frechetDistance(stats(mu, rotated(q, a, n), 6), stats(mu, rotated(q, b, n), 6));
  assert.equal(result.epsilon, FED_EPSILON);
  let closed = 0;
  for (let i = 0; i < n; i++) closed += (Math.sqrt(a[i] + FED_EPSILON) - Math.sqrt(b[i] + FED_EPSILON)) ** 2;
  assertClose([result.distance], [closed], { rtol: 1e-8, atol: 1e-12, what: 'rank-5 FED with ε' });
});

test('featureStatistics: mean and unbiased covariance as np.cov (E[xxᵀ] − μμᵀ, times N/(N − 1))', () => {
  const random = seededUniform(testSeed('featureStatistics'));
  const count = 7;
  const dims = 3;
  const x = normalArray(count * dims, random);
  const s = featureStatistics(x, count, dims);
  const mean = [0, 1, 2].map(
    (d) => [...Array(count).keys()].reduce((t, i) => t + x[i * dims + d], 0) / count,
  );
  assertClose(s.mean, mean, { rtol: 1e-12, atol: 1e-12, what: 'mean' });
  const cov: number[] = [];
  for (let r = 0; r < dims; r++)
    for (let c = 0; c < dims; c++) {
      let exx = 0;
      for (let i = 0; i < count; i++) exx += x[i * dims + r] * x[i * dims + c];
      cov.push(((exx / count - mean[r] * mean[c]) * count) / (count - 1));
    }
  assertClose(s.covariance, cov, { rtol: 1e-10, atol: 1e-12, what: 'covariance' });
  assert.throws(() => featureStatistics(x.subarray(0, dims), 1, dims), /at least 2 vectors/);
  assert.throws(() => frechetDistance(s, featureStatistics(x, count * 3, 1)), /3 and 1 dimensions/);
});

test('FED of a nearly singular set with itself is 0 within rounding (no square root of a squared eigenvalue)', () => {
  const random = seededUniform(testSeed('FED nearly singular'));
  const dims = 32;
  const count = 300;
  // Features of rank 5 plus noise of 1e-6: more vectors than dimensions (no ε), but 27 eigenvalues
  // of order 1e-12 against ones of order 1. Square roots of √Σ·Σ·√Σ's eigenvalues gave ≈ 5e-8·trace.
  const basis = normalArray(5 * dims, random);
  const x = new Float32Array(count * dims);
  for (let i = 0; i < count; i++) {
    const z = normalArray(5, random);
    const noise = normalArray(dims, random);
    for (let d = 0; d < dims; d++) {
      let s = 1e-6 * noise[d];
      for (let k = 0; k < 5; k++) s += z[k] * basis[k * dims + d];
      x[i * dims + d] = s;
    }
  }
  const a = featureStatistics(x, count, dims);
  let trace = 0;
  for (let d = 0; d < dims; d++) trace += a.covariance[d * dims + d];
  const self = frechetDistance(a, a);
  assert.equal(self.epsilon, 0);
  assert.ok(Math.abs(self.distance) < 1e-12 * trace, `FED(a, a) = ${self.distance} (trace ${trace})`);
});
