/**
 * Float64 reference for one LinFusion module (methods/clear_linfusion.md §2.2), written as plain loops
 * in the row form o_i = Σ_j ⟨φ(q_i), φ(k_j)⟩ v_j / (Σ_j ⟨φ(q_i), φ(k_j)⟩ + 1e-4·N), sharing no code
 * with src/ (no K̄, no KᵀV state, no √N split).
 */
import type { RefArray } from './layout.js';

/** Module tensors by their name inside the module: 'to_q.weight', 'to_q_.0.bias', …. */
export type LinFusionRefWeights = (name: string) => RefArray;

/** y = W·x + b for one row x; W is [out, in] as torch stores it. */
function linearRow(x: Float64Array, w: RefArray, b: RefArray | undefined): Float64Array {
  const [outDim, inDim] = w.shape;
  const y = new Float64Array(outDim);
  for (let o = 0; o < outDim; o++) {
    let acc = b ? b.data[o] : 0;
    for (let i = 0; i < inDim; i++) acc += w.data[o * inDim + i] * x[i];
    y[o] = acc;
  }
  return y;
}

/** torch.nn.LayerNorm over one row: biased variance, eps inside the square root. */
function layerNormRow(x: Float64Array, weight: RefArray, bias: RefArray, eps: number): Float64Array {
  let mu = 0;
  for (const v of x) mu += v;
  mu /= x.length;
  let variance = 0;
  for (const v of x) variance += (v - mu) ** 2;
  variance /= x.length;
  const inv = 1 / Math.sqrt(variance + eps);
  return x.map((v, i) => (v - mu) * inv * weight.data[i] + bias.data[i]);
}

/** x + Linear₃(LeakyReLU₀.₀₁(LayerNorm₁(Linear₀(x)))) for the MLP named `prefix` ('to_q_' or 'to_k_'). */
function residualMlpRow(x: Float64Array, w: LinFusionRefWeights, prefix: string): Float64Array {
  const hidden = linearRow(x, w(`${prefix}.0.weight`), w(`${prefix}.0.bias`));
  const normed = layerNormRow(hidden, w(`${prefix}.1.weight`), w(`${prefix}.1.bias`), 1e-5);
  const activated = normed.map((v) => (v >= 0 ? v : 0.01 * v));
  const out = linearRow(activated, w(`${prefix}.3.weight`), w(`${prefix}.3.bias`));
  return x.map((v, i) => v + out[i]);
}

/** ELU(u) + 1 with α = 1. */
const phi = (u: number): number => (u > 0 ? u + 1 : Math.exp(u));

/** LinFusion's GeneralizedLinearAttention on x [B, N, C] with `heads` heads. */
export function linfusionRef(x: RefArray, w: LinFusionRefWeights, heads: number): RefArray {
  const [batch, tokens, dim] = x.shape;
  const headDim = dim / heads;
  const out = new Float64Array(batch * tokens * dim);
  for (let b = 0; b < batch; b++) {
    const q: Float64Array[] = [];
    const k: Float64Array[] = [];
    const v: Float64Array[] = [];
    for (let n = 0; n < tokens; n++) {
      const row = x.data.slice((b * tokens + n) * dim, (b * tokens + n + 1) * dim);
      q.push(linearRow(residualMlpRow(row, w, 'to_q_'), w('to_q.weight'), undefined).map(phi));
      k.push(linearRow(residualMlpRow(row, w, 'to_k_'), w('to_k.weight'), undefined).map(phi));
      v.push(linearRow(row, w('to_v.weight'), undefined));
    }
    for (let i = 0; i < tokens; i++) {
      const attended = new Float64Array(dim);
      for (let h = 0; h < heads; h++) {
        const lo = h * headDim;
        let denominator = 1e-4 * tokens;
        const numerator = new Float64Array(headDim);
        for (let j = 0; j < tokens; j++) {
          let score = 0;
          for (let d = 0; d < headDim; d++) score += q[i][lo + d] * k[j][lo + d];
          denominator += score;
          for (let d = 0; d < headDim; d++) numerator[d] += score * v[j][lo + d];
        }
        for (let d = 0; d < headDim; d++) attended[lo + d] = numerator[d] / denominator;
      }
      const o = linearRow(attended, w('to_out.0.weight'), w('to_out.0.bias'));
      out.set(o, (b * tokens + i) * dim);
    }
  }
  return { shape: [batch, tokens, dim], data: out };
}
