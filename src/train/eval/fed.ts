/**
 * The Fréchet distance between two sets of feature vectors, each summarised by a Gaussian (mean and
 * covariance): ‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^½) (Dowson & Landau 1982; the FID of Heusel et al.
 * 2017, §3). velodiff's FED takes the features from its own emoji classifier, not from ImageNet's
 * Inception-v3, so its values are comparable only with other FED values (same classifier, same
 * reference set), never with published FID figures.
 *
 * Everything is float64 in TypeScript. Tr (Σ₁Σ₂)^½ is computed as the sum of the singular values of
 * √Σ₂√Σ₁ (its nuclear norm): they are the square roots of the eigenvalues of (√Σ₂√Σ₁)ᵀ√Σ₂√Σ₁ =
 * √Σ₁Σ₂√Σ₁, which is similar to Σ₁Σ₂. Only symmetric positive semi-definite matrices are
 * decomposed (tiny negative eigenvalues from rounding are clamped to 0), and the singular values come
 * from one-sided Jacobi rotations of √Σ₂√Σ₁ itself, never from the square roots of √Σ₁Σ₂√Σ₁'s
 * eigenvalues: near 0 a square root turns a rounding error ε·λ²max into √ε·λmax, which made the
 * distance of a set to itself 3e-9 of its trace instead of 0; this way it is within rounding
 * (≈ 1e-14 of the trace). Unlike scipy's general `sqrtm` in pytorch-fid, this cannot fail on a
 * singular covariance; when a set has no more vectors than dimensions (its covariance is then
 * singular), ε·I is still added to both covariances as pytorch-fid does (ε = 1e-6), and the result
 * says so.
 */
import { OptionError } from '../../errors.js';
import { symmetricEigen } from './symmetric-eigen.js';

/** pytorch-fid's `eps` in calculate_frechet_distance. */
export const FED_EPSILON = 1e-6;

/** A set of feature vectors as a Gaussian: sample mean and unbiased covariance (numpy's np.cov). */
export interface FeatureStatistics {
  readonly count: number;
  readonly dims: number;
  readonly mean: Float64Array;
  /** dims×dims, row-major. */
  readonly covariance: Float64Array;
}

export interface FrechetDistance {
  /** ‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^½). */
  readonly distance: number;
  /** ‖μ₁ − μ₂‖². */
  readonly meanTerm: number;
  /** Tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^½). */
  readonly covarianceTerm: number;
  /** The ε added to both covariances' diagonals (0: none). */
  readonly epsilon: number;
}

/**
 * Mean and covariance (divided by count − 1, as np.cov) of `count` vectors of `dims` values, stored
 * one after another in `features`.
 */
export function featureStatistics(
  features: ArrayLike<number>,
  count: number,
  dims: number,
): FeatureStatistics {
  if (!Number.isInteger(dims) || dims < 1 || !Number.isInteger(count) || count < 2) {
    throw new OptionError(
      `featureStatistics: a covariance needs at least 2 vectors of at least 1 value, got ${count} of ${dims}`,
      'FED_TOO_FEW',
    );
  }
  if (features.length !== count * dims) {
    throw new OptionError(
      `featureStatistics: ${count} vectors of ${dims} values need ${count * dims} numbers, got ${features.length}`,
      'FED_SHAPE',
    );
  }
  const mean = new Float64Array(dims);
  for (let i = 0; i < count; i++) for (let d = 0; d < dims; d++) mean[d] += features[i * dims + d];
  for (let d = 0; d < dims; d++) mean[d] /= count;
  const covariance = new Float64Array(dims * dims);
  const centered = new Float64Array(dims);
  for (let i = 0; i < count; i++) {
    for (let d = 0; d < dims; d++) {
      const value = features[i * dims + d];
      if (!Number.isFinite(value)) {
        throw new OptionError(
          `featureStatistics: value ${d} of vector ${i} is ${value}; features must be finite`,
          'FED_NOT_FINITE',
        );
      }
      centered[d] = value - mean[d];
    }
    for (let r = 0; r < dims; r++) {
      const cr = centered[r];
      for (let c = r; c < dims; c++) covariance[r * dims + c] += cr * centered[c];
    }
  }
  for (let r = 0; r < dims; r++) {
    for (let c = r; c < dims; c++) {
      const value = covariance[r * dims + c] / (count - 1);
      covariance[r * dims + c] = value;
      covariance[c * dims + r] = value;
    }
  }
  return { count, dims, mean, covariance };
}

/** √M of a symmetric positive semi-definite matrix, through its eigen-decomposition. */
function psdSqrt(matrix: Float64Array, n: number): Float64Array {
  const { values, vectors } = symmetricEigen(matrix, n);
  const roots = values.map((v) => Math.sqrt(Math.max(v, 0)));
  const out = new Float64Array(n * n);
  for (let i = 0; i < n; i++) {
    for (let j = i; j < n; j++) {
      let sum = 0;
      for (let k = 0; k < n; k++) sum += vectors[i * n + k] * roots[k] * vectors[j * n + k];
      out[i * n + j] = sum;
      out[j * n + i] = sum;
    }
  }
  return out;
}

/**
 * The sum of the singular values of the n×n row-major matrix `m`, by one-sided Jacobi (Hestenes)
 * rotations: pairs of columns are rotated until every pair is orthogonal to working precision, and
 * the singular values are then the columns' norms. Each value is found to within rounding of ‖m‖,
 * with no square root of a squared value.
 */
export function nuclearNorm(m: Float64Array, n: number): number {
  // Columns as rows of the transpose, for contiguous access.
  const cols = new Float64Array(n * n);
  for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) cols[j * n + i] = m[i * n + j];
  const tolerance = 1e-15;
  for (let sweep = 0; sweep < 60; sweep++) {
    let rotated = false;
    for (let p = 0; p < n - 1; p++) {
      for (let q = p + 1; q < n; q++) {
        let alpha = 0;
        let beta = 0;
        let gamma = 0;
        for (let k = 0; k < n; k++) {
          const a = cols[p * n + k];
          const b = cols[q * n + k];
          alpha += a * a;
          beta += b * b;
          gamma += a * b;
        }
        if (gamma === 0 || Math.abs(gamma) <= tolerance * Math.sqrt(alpha * beta)) continue;
        rotated = true;
        const zeta = (beta - alpha) / (2 * gamma);
        const t = (zeta >= 0 ? 1 : -1) / (Math.abs(zeta) + Math.sqrt(1 + zeta * zeta));
        const c = 1 / Math.sqrt(1 + t * t);
        const s = c * t;
        for (let k = 0; k < n; k++) {
          const a = cols[p * n + k];
          const b = cols[q * n + k];
          cols[p * n + k] = c * a - s * b;
          cols[q * n + k] = s * a + c * b;
        }
      }
    }
    if (!rotated) break;
  }
  let total = 0;
  for (let j = 0; j < n; j++) {
    let norm = 0;
    for (let k = 0; k < n; k++) norm += cols[j * n + k] ** 2;
    total += Math.sqrt(norm);
  }
  return total;
}

/** a·b for n×n row-major matrices. */
function matmul(a: Float64Array, b: Float64Array, n: number): Float64Array {
  const out = new Float64Array(n * n);
  for (let i = 0; i < n; i++) {
    for (let k = 0; k < n; k++) {
      const aik = a[i * n + k];
      if (aik === 0) continue;
      for (let j = 0; j < n; j++) out[i * n + j] += aik * b[k * n + j];
    }
  }
  return out;
}

function withDiagonal(matrix: Float64Array, n: number, epsilon: number): Float64Array {
  if (epsilon === 0) return matrix;
  const out = Float64Array.from(matrix);
  for (let i = 0; i < n; i++) out[i * n + i] += epsilon;
  return out;
}

/**
 * The Fréchet distance between the Gaussians of two feature sets. Symmetric in its arguments up to
 * rounding. `epsilon`: added to both covariances' diagonals; by default FED_EPSILON when either set
 * has no more vectors than dimensions (a singular covariance), else 0.
 */
export function frechetDistance(
  a: FeatureStatistics,
  b: FeatureStatistics,
  options: { epsilon?: number } = {},
): FrechetDistance {
  if (a.dims !== b.dims) {
    throw new OptionError(
      `frechetDistance: the feature sets have ${a.dims} and ${b.dims} dimensions; both must come from the same feature layer`,
      'FED_DIMS',
    );
  }
  const n = a.dims;
  const epsilon = options.epsilon ?? (a.count <= n || b.count <= n ? FED_EPSILON : 0);
  if (!(epsilon >= 0) || !Number.isFinite(epsilon)) {
    throw new OptionError(
      `frechetDistance: epsilon must be a finite number ≥ 0, got ${epsilon}`,
      'FED_EPSILON',
    );
  }
  let meanTerm = 0;
  for (let d = 0; d < n; d++) meanTerm += (a.mean[d] - b.mean[d]) ** 2;
  const sigma1 = withDiagonal(a.covariance, n, epsilon);
  const sigma2 = withDiagonal(b.covariance, n, epsilon);
  const traceSqrt = nuclearNorm(matmul(psdSqrt(sigma2, n), psdSqrt(sigma1, n), n), n);
  let traces = 0;
  for (let d = 0; d < n; d++) traces += sigma1[d * n + d] + sigma2[d * n + d];
  const covarianceTerm = traces - 2 * traceSqrt;
  return { distance: meanTerm + covarianceTerm, meanTerm, covarianceTerm, epsilon };
}
