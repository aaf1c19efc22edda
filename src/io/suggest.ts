/**
 * "Did you mean" suggestions for missing tensor names. Checkpoint names differ from what a model
 * expects mostly by a prefix (`model.`, `transformer.`), a renamed segment or a typo, so candidates
 * are ranked by edit distance and by agreeing on the trailing segments.
 */

/** Up to `limit` names from `candidates` that are plausibly what `wanted` meant, best first. */
export function closestNames(wanted: string, candidates: Iterable<string>, limit = 3): string[] {
  const wantedTail = tailSegments(wanted);
  const maxDistance = Math.max(2, Math.floor(wanted.length / 4));
  const scored: { name: string; score: number }[] = [];
  for (const name of candidates) {
    if (name.endsWith(`.${wanted}`) || wanted.endsWith(`.${name}`)) {
      // Same name under a different prefix: the likeliest mistake, so it ranks first.
      scored.push({ name, score: -1 });
      continue;
    }
    if (Math.abs(name.length - wanted.length) > maxDistance) continue;
    const distance = editDistance(wanted, name, maxDistance);
    if (distance <= maxDistance)
      scored.push({ name, score: distance - (tailSegments(name) === wantedTail ? 0.5 : 0) });
  }
  scored.sort((a, b) => a.score - b.score || (a.name < b.name ? -1 : 1));
  return scored.slice(0, limit).map((entry) => entry.name);
}

/** Formats suggestions as a sentence to append to an error message, or '' when there are none. */
export function didYouMean(wanted: string, candidates: Iterable<string>): string {
  const names = closestNames(wanted, candidates);
  return names.length === 0 ? '' : ` Did you mean ${names.map((name) => `'${name}'`).join(', ')}?`;
}

function tailSegments(name: string): string {
  return name.split('.').slice(-2).join('.');
}

/** Levenshtein distance, giving up (returning `limit + 1`) once every path exceeds `limit`. */
function editDistance(a: string, b: string, limit: number): number {
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    let rowMin = i;
    for (let j = 1; j <= b.length; j++) {
      const substitution = previous[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1);
      current[j] = Math.min(previous[j] + 1, current[j - 1] + 1, substitution);
      rowMin = Math.min(rowMin, current[j]);
    }
    if (rowMin > limit) return limit + 1;
    previous = current;
  }
  return previous[b.length];
}
