/**
 * The emoji classifier velodiff ships for `velodiff eval`: `models/emoji-classifier/` at the package
 * root, beside the shipped text-to-image model (`models/emoji/`) rather than inside it, because it is
 * the fixed yardstick for every model evaluated — the teacher, its students, a user's own — and FED
 * values compare only when measured with the same classifier. About 1.2 M parameters, 2.4 MB in fp16.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';

import { FileFormatError } from '../../errors.js';
import { packageRoot } from '../../pipelines/shipped-model.js';

/** The shipped classifier's folder, relative to the package root. */
export const SHIPPED_CLASSIFIER_PATH = 'models/emoji-classifier';

/** The shipped classifier's folder, checked to be there (an actionable error where it is not). */
export function shippedClassifierDir(root: string = packageRoot()): string {
  const dir = join(root, SHIPPED_CLASSIFIER_PATH);
  if (!existsSync(join(dir, 'config.json'))) {
    throw new FileFormatError(
      `the shipped emoji classifier is not in this velodiff: ${dir} ${existsSync(dir) ? 'has no config.json' : 'does not exist'}. ` +
        'Train one with `velodiff train --config configs/emoji-classifier.json` and pass its model folder as --classifier DIR.',
      'SHIPPED_CLASSIFIER_MISSING',
      dir,
    );
  }
  return dir;
}
