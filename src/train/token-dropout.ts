/**
 * Word dropout on tokenized captions (`model.tokenDropout`): each token but the closing `</s>` is
 * deleted with probability p and the rest close up, padded again to the same length. A caption keeps
 * at least one of its words (the one whose draw was highest); an empty caption (CFG's dropped
 * caption, `</s>` alone) is left as it is.
 */
export interface TokenRows {
  readonly inputIds: number[][];
  readonly attentionMask: number[][];
}

/**
 * `rows` with tokens dropped where `u` (one uniform draw in [0, 1) per position, row-major over
 * [rows, length]) is below `p`. The last real token of each row (its `</s>`, or the last token kept
 * by truncation) always stays. `padId` fills the freed positions, with mask 0.
 */
export function dropTokens(rows: TokenRows, u: ArrayLike<number>, p: number, padId = 0): TokenRows {
  const inputIds: number[][] = [];
  const attentionMask: number[][] = [];
  rows.inputIds.forEach((ids, b) => {
    const length = ids.length;
    const real = rows.attentionMask[b].reduce((n, m) => n + (m > 0 ? 1 : 0), 0);
    const words = real - 1; // every real token but the closing one
    const draw = (i: number): number => u[b * length + i];
    const keep = Array.from({ length: real }, (_, i) => i === words || draw(i) >= p);
    if (words > 0 && !keep.slice(0, words).some(Boolean)) {
      let best = 0;
      for (let i = 1; i < words; i++) if (draw(i) > draw(best)) best = i;
      keep[best] = true;
    }
    const kept = ids.slice(0, real).filter((_, i) => keep[i]);
    inputIds.push([...kept, ...new Array<number>(length - kept.length).fill(padId)]);
    attentionMask.push(Array.from({ length }, (_, i) => (i < kept.length ? 1 : 0)));
  });
  return { inputIds, attentionMask };
}
