/**
 * Eigenvalues and eigenvectors of a real symmetric matrix by the cyclic Jacobi method, in float64:
 * plane rotations zero one off-diagonal element at a time until the off-diagonal part is rounding
 * noise (Golub & Van Loan, Matrix Computations, 4th ed., §8.5). Jacobi is slower than tridiagonal QR
 * but simple, and accurate to a few ulps of the largest eigenvalue for every eigenvalue; the
 * matrices here (feature covariances, 128×128 for the emoji classifier) take milliseconds.
 */
import { OptionError } from '../../errors.js';

export interface SymmetricEigen {
  /** Eigenvalues, ascending. */
  readonly values: Float64Array;
  /** Eigenvectors as columns of an n×n row-major matrix: vectors[i·n + k] is component i of vector k. */
  readonly vectors: Float64Array;
}

const MAX_SWEEPS = 60;

/** The eigen-decomposition A = V·diag(values)·Vᵀ of the symmetric n×n row-major `matrix` (only read). */
export function symmetricEigen(matrix: ArrayLike<number>, n: number): SymmetricEigen {
  if (!Number.isInteger(n) || n < 1 || matrix.length !== n * n) {
    throw new OptionError(
      `symmetricEigen: expected an n×n matrix with n ≥ 1, got ${matrix.length} values for n = ${n}`,
      'EIGEN_SHAPE',
    );
  }
  const a = Float64Array.from(matrix);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < i; j++) {
      const upper = a[j * n + i];
      const lower = a[i * n + j];
      if (!Number.isFinite(upper) || !Number.isFinite(lower)) {
        throw new OptionError(`symmetricEigen: element [${i}, ${j}] is not finite`, 'EIGEN_NOT_FINITE');
      }
      // The mean of the two triangles: callers pass covariances symmetric up to rounding.
      a[i * n + j] = a[j * n + i] = 0.5 * (upper + lower);
    }
  }
  const v = new Float64Array(n * n);
  for (let i = 0; i < n; i++) v[i * n + i] = 1;

  let total = 0;
  for (let i = 0; i < n * n; i++) total += a[i] * a[i];
  // Off-diagonal mass below (n·ε·‖A‖_F)² changes no eigenvalue by more than ~n·ε·‖A‖.
  const threshold = (Number.EPSILON * n) ** 2 * total;
  for (let sweep = 0; sweep < MAX_SWEEPS; sweep++) {
    let off = 0;
    for (let p = 0; p < n; p++) for (let q = p + 1; q < n; q++) off += 2 * a[p * n + q] ** 2;
    if (off <= threshold) break;
    for (let p = 0; p < n - 1; p++) {
      for (let q = p + 1; q < n; q++) {
        const apq = a[p * n + q];
        if (apq === 0) continue;
        // The rotation that zeroes a[p][q]: t = tan φ, the smaller root of t² + 2θt − 1 = 0 (§8.5.2).
        const theta = (a[q * n + q] - a[p * n + p]) / (2 * apq);
        const t = (theta >= 0 ? 1 : -1) / (Math.abs(theta) + Math.sqrt(theta * theta + 1));
        const c = 1 / Math.sqrt(t * t + 1);
        const s = t * c;
        for (let k = 0; k < n; k++) {
          const akp = a[k * n + p];
          const akq = a[k * n + q];
          a[k * n + p] = c * akp - s * akq;
          a[k * n + q] = s * akp + c * akq;
        }
        for (let k = 0; k < n; k++) {
          const apk = a[p * n + k];
          const aqk = a[q * n + k];
          a[p * n + k] = c * apk - s * aqk;
          a[q * n + k] = s * apk + c * aqk;
        }
        a[p * n + q] = a[q * n + p] = 0;
        for (let k = 0; k < n; k++) {
          const vkp = v[k * n + p];
          const vkq = v[k * n + q];
          v[k * n + p] = c * vkp - s * vkq;
          v[k * n + q] = s * vkp + c * vkq;
        }
      }
    }
  }

  const order = Array.from({ length: n }, (_, i) => i).sort((i, j) => a[i * n + i] - a[j * n + j]);
  const values = Float64Array.from(order, (i) => a[i * n + i]);
  const vectors = new Float64Array(n * n);
  order.forEach((from, to) => {
    for (let i = 0; i < n; i++) vectors[i * n + to] = v[i * n + from];
  });
  return { values, vectors };
}
