/**
 * The train/validation split: by group, stratified, by hash. A group is what must not straddle the
 * split — for emoji the base emoji (its code points without skin tone), so both styles and every
 * skin tone of one emoji land on the same side and validation measures unseen emoji, not a recoloured
 * or restyled copy of a training image. Within each stratum (emoji: the category) the groups are
 * ranked by a SHA-256 of their key and the first round(fraction·n) go to validation, at least one,
 * so validation has every category. Adding an emoji moves at most the boundary one place; no seed or
 * ordering of the input changes anything.
 */
import { createHash } from 'node:crypto';
import { OptionError } from '../../errors.js';

export type SplitName = 'train' | 'validation';

/** Changing this reshuffles every split: it is in the hash so a future scheme cannot collide. */
const SPLIT_SALT = 'velodiff-split-v1';

/** Position of a group in its stratum's ranking: the first 8 bytes of SHA-256, as hex (sortable). */
function rankKey(group: string): string {
  return createHash('sha256').update(`${SPLIT_SALT}/${group}`).digest('hex').slice(0, 16);
}

export interface SplitMember {
  /** What must not straddle the split (emoji: the base emoji's unified code). */
  readonly group: string;
  /** The stratum the group belongs to (emoji: the category); one stratum for unlabelled data. */
  readonly stratum: string;
}

/** Checks a validation fraction once, for every caller: a number in [0, 1). */
export function checkValidationFraction(fraction: number): void {
  if (!(fraction >= 0 && fraction < 1)) {
    throw new OptionError(
      `validationFraction must be in [0, 1) (0 puts everything in train), found ${fraction}`,
      'INVALID_VALIDATION_FRACTION',
    );
  }
}

/**
 * Which side each member is on, in the members' order. A group whose members name different strata
 * is ranked in the stratum of its first member.
 */
export function splitMembers(members: readonly SplitMember[], validationFraction: number): SplitName[] {
  checkValidationFraction(validationFraction);
  const strata = new Map<string, Set<string>>();
  const stratumOfGroup = new Map<string, string>();
  for (const { group, stratum } of members) {
    if (stratumOfGroup.has(group)) continue;
    stratumOfGroup.set(group, stratum);
    let groups = strata.get(stratum);
    if (groups === undefined) strata.set(stratum, (groups = new Set()));
    groups.add(group);
  }
  const validation = new Set<string>();
  if (validationFraction > 0) {
    for (const groups of strata.values()) {
      // A stratum of one group stays in train: with nothing left to train on it, it teaches nothing.
      if (groups.size < 2) continue;
      const count = Math.max(1, Math.round(validationFraction * groups.size));
      const ranked = [...groups]
        .map((group) => ({ group, key: rankKey(group) }))
        .sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : a.group < b.group ? -1 : 1));
      for (const { group } of ranked.slice(0, count)) validation.add(group);
    }
  }
  return members.map(({ group }) => (validation.has(group) ? 'validation' : 'train'));
}
