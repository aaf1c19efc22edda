/**
 * Float64 reference for CLEAR attention (methods/clear_linfusion.md §1.3–§1.5): dense, one query
 * row at a time over every key, with the mask predicate written out as the paper's code states it.
 * Shares nothing with the tiled lowering in src/attention.
 */

export interface ClearRefOptions {
  numHeads: number;
  gridHeight: number;
  gridWidth: number;
  radius: number;
  textTokens: number;
  downFactor: number;
  /** w[i·df + j], df×df; default 1/df². */
  spatialWeight?: ArrayLike<number>;
  scale?: number;
}

/**
 * Whether query `i` may attend key `j`, over the key sequence [text (T) | image (N) | pooled (Nd)]
 * (§1.3, §1.4): text queries see text and image keys, never pooled ones; image queries see every
 * text and pooled key and the image keys with (Δy)² + (Δx)² < r².
 */
export function clearAllowed(i: number, j: number, o: ClearRefOptions): boolean {
  const T = o.textTokens;
  const S = T + o.gridHeight * o.gridWidth;
  if (i < T) return j < S;
  if (j < T || j >= S) return true;
  const yq = Math.floor((i - T) / o.gridWidth);
  const xq = (i - T) % o.gridWidth;
  const yk = Math.floor((j - T) / o.gridWidth);
  const xk = (j - T) % o.gridWidth;
  return (yq - yk) ** 2 + (xq - xk) ** 2 < o.radius * o.radius;
}

/** [B, S, C] with the pooled image tokens appended: [B, S + N/df², C] (Kd = Σ w[i,j]·K[a·df+i, b·df+j]). */
function appendPooled(
  x: ArrayLike<number>,
  batch: number,
  channels: number,
  o: ClearRefOptions,
): Float64Array {
  const df = o.downFactor;
  const S = o.textTokens + o.gridHeight * o.gridWidth;
  const rows = o.gridHeight / df;
  const cols = o.gridWidth / df;
  const total = S + (df > 1 ? rows * cols : 0);
  const out = new Float64Array(batch * total * channels);
  for (let b = 0; b < batch; b++) {
    for (let s = 0; s < S; s++) {
      for (let ch = 0; ch < channels; ch++)
        out[(b * total + s) * channels + ch] = x[(b * S + s) * channels + ch];
    }
    if (df === 1) continue;
    for (let a = 0; a < rows; a++) {
      for (let c = 0; c < cols; c++) {
        for (let ch = 0; ch < channels; ch++) {
          let acc = 0;
          for (let i = 0; i < df; i++) {
            for (let j = 0; j < df; j++) {
              const w = o.spatialWeight ? o.spatialWeight[i * df + j] : 1 / (df * df);
              const token = o.textTokens + (a * df + i) * o.gridWidth + (c * df + j);
              acc += w * x[(b * S + token) * channels + ch];
            }
          }
          out[(b * total + S + a * cols + c) * channels + ch] = acc;
        }
      }
    }
  }
  return out;
}

/** CLEAR attention on packed [B, S, H·D] q/k/v; returns [B, S, H·Dv] in float64. */
export function clearAttentionRef(
  q: ArrayLike<number>,
  k: ArrayLike<number>,
  v: ArrayLike<number>,
  batch: number,
  valueWidth: number,
  o: ClearRefOptions,
): Float64Array {
  const S = o.textTokens + o.gridHeight * o.gridWidth;
  const width = q.length / (batch * S);
  const d = width / o.numHeads;
  const dv = valueWidth / o.numHeads;
  const keys = appendPooled(k, batch, width, o);
  const values = appendPooled(v, batch, valueWidth, o);
  const total = keys.length / (batch * width);
  const scale = o.scale ?? 1 / Math.sqrt(d);
  const out = new Float64Array(batch * S * valueWidth);
  const scores = new Float64Array(total);
  for (let b = 0; b < batch; b++) {
    for (let h = 0; h < o.numHeads; h++) {
      for (let i = 0; i < S; i++) {
        let max = -Infinity;
        for (let j = 0; j < total; j++) {
          if (!clearAllowed(i, j, o)) {
            scores[j] = -Infinity;
            continue;
          }
          let dot = 0;
          for (let e = 0; e < d; e++)
            dot += q[(b * S + i) * width + h * d + e] * keys[(b * total + j) * width + h * d + e];
          scores[j] = dot * scale;
          max = Math.max(max, scores[j]);
        }
        let norm = 0;
        for (let j = 0; j < total; j++) {
          scores[j] = Math.exp(scores[j] - max);
          norm += scores[j];
        }
        for (let j = 0; j < total; j++) {
          const p = scores[j] / norm;
          if (p === 0) continue;
          for (let e = 0; e < dv; e++) {
            out[(b * S + i) * valueWidth + h * dv + e] +=
              p * values[(b * total + j) * valueWidth + h * dv + e];
          }
        }
      }
    }
  }
  return out;
}
