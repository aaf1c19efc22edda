/**
 * The held-out emoji that `velodiff eval` measures against, from the validation split (emoji that
 * neither the generator nor the classifier trained on):
 *
 * - one image per emoji and style: skin-tone variants are left out, since they are recolourings of
 *   one drawing and would make People & Body 60 % of the set (508 of 814 validation images, against
 *   78 of 384 without them), so that category accuracy is not mostly "is it a person";
 * - split in two halves by base emoji, stratified by category (the data set's split rule at 0.5):
 *   the *reference* half is what FED compares with, the *prompt* half gives the prompts.
 *
 * Generated images are then scored on the same footing as the real images of their prompts: both
 * are compared with the same reference half, so `real_fed` — the prompts' real images against the
 * reference half — is what a generator that drew the held-out emoji themselves would score, at the
 * same sample count (FED is biased upwards at small counts, equally for both), and no emoji sits on
 * both sides. `real_alignment` is the classifier's accuracy on those same real images.
 */
import { createHash } from 'node:crypto';

import { OptionError } from '../../errors.js';
import type { ImageTextDataset } from '../data/dataset.js';
import { splitIndices } from '../data/dataset.js';
import { splitMembers } from '../data/split.js';

export interface HeldOutSet {
  /** Data set indices of the reference half. */
  readonly reference: readonly number[];
  /** Data set indices of the prompt half, in the order prompts are drawn (a fixed hash order). */
  readonly prompts: readonly number[];
}

/** Whether an emoji item is the emoji itself rather than a skin-tone variant (its id ends in its group). */
function isBaseVariant(dataset: ImageTextDataset, index: number): boolean {
  const item = dataset.items[index];
  return item.id.endsWith(`/${item.group}`);
}

/** A sort key that does not depend on the data set's order: SHA-256 of the image's id. */
function hashKey(id: string): string {
  return createHash('sha256').update(`velodiff-eval-v1/${id}`).digest('hex');
}

/** The held-out set of an emoji data set (see the file comment). */
export function heldOutSet(dataset: ImageTextDataset): HeldOutSet {
  if (dataset.labelNames === undefined) {
    throw new OptionError(
      'eval measures against the emoji data set (labelled with categories); this data set has no labels',
      'EVAL_DATASET',
    );
  }
  const labelNames = dataset.labelNames;
  const candidates = splitIndices(dataset, 'validation').filter((i) => isBaseVariant(dataset, i));
  const halves = splitMembers(
    candidates.map((i) => {
      const item = dataset.items[i];
      return { group: item.group, stratum: labelNames.category[item.labels?.category ?? 0] };
    }),
    0.5,
  );
  const reference = candidates.filter((_, k) => halves[k] === 'train');
  const prompts = candidates
    .filter((_, k) => halves[k] === 'validation')
    .map((i) => ({ i, key: hashKey(dataset.items[i].id) }))
    .sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0))
    .map(({ i }) => i);
  if (reference.length < 2 || prompts.length < 1) {
    throw new OptionError(
      `the data set's validation split has ${candidates.length} emoji images without skin tones, too few ` +
        'for a reference half and a prompt half; use a larger validation split',
      'EVAL_DATASET',
    );
  }
  return { reference, prompts };
}

/** The data set index behind each of `samples` prompts: the prompt half in its order, again from the start when used up. */
export function promptItems(set: HeldOutSet, samples: number): number[] {
  return Array.from({ length: samples }, (_, i) => set.prompts[i % set.prompts.length]);
}
