/**
 * The model velodiff ships: a small emoji text-to-image PixArt-α pipeline folder, `models/emoji/` at
 * the package root, which `velodiff generate "red heart"` runs when no `--model` is given. Found from
 * this module's own location, so it works from a checkout, a `dist/` build and an npm install alike.
 */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { FileFormatError } from '../errors.js';

/** The shipped model's folder, relative to the package root. */
export const SHIPPED_MODEL_PATH = 'models/emoji';

/** The folder of velodiff's package.json, found by walking up from this module (src/ or dist/src/). */
export function packageRoot(from: string = fileURLToPath(import.meta.url)): string {
  for (let dir = dirname(from); ; dir = dirname(dir)) {
    const manifest = join(dir, 'package.json');
    if (existsSync(manifest)) {
      const { name } = JSON.parse(readFileSync(manifest, 'utf8')) as { name?: unknown };
      if (name === 'velodiff') return dir;
    }
    if (dirname(dir) === dir) {
      throw new FileFormatError(`no velodiff package.json above ${from}`, 'PACKAGE_ROOT', from);
    }
  }
}

/**
 * The shipped model's folder, checked to be there: a FileFormatError naming the folder where it is
 * not (a build from before the model was trained, or a package installed without it).
 */
export function shippedModelDir(root: string = packageRoot()): string {
  const dir = join(root, SHIPPED_MODEL_PATH);
  if (!existsSync(join(dir, 'model_index.json'))) {
    throw new FileFormatError(
      `the shipped emoji model is not in this velodiff: ${dir} ${existsSync(dir) ? 'has no model_index.json' : 'does not exist'} ` +
        `(the model is still being trained, and lands in ${SHIPPED_MODEL_PATH}/ when it is done). ` +
        'Until then give --model DIR, a diffusers PixArt-α/Σ pipeline folder.',
      'SHIPPED_MODEL_MISSING',
      dir,
    );
  }
  return dir;
}

/** The shipped students of the shipped model (CLEAR, LinFusion, Flash), relative to the package root. */
export const SHIPPED_STUDENTS_PATH = 'models/emoji-students';

/** The shipped students' folder (it may hold none yet: `--accel` says which are missing). */
export function shippedStudentsDir(root: string = packageRoot()): string {
  return join(root, SHIPPED_STUDENTS_PATH);
}
