/**
 * Packages velodiff uses for one feature only (sharp for images, vega and vega-lite for training
 * plots) are not installed with it by default: each is imported on first use, and where it is
 * missing the error says which package, for what, and the command that installs it.
 */
import { VelodiffError } from '../errors.js';

/** An optional package a feature needs is not installed (or cannot load). */
export class MissingPackageError extends VelodiffError {
  override readonly name: string = 'MissingPackageError';
  constructor(
    message: string,
    /** The npm package names, as `npm install` takes them (with their version ranges). */
    readonly packages: readonly string[],
  ) {
    super(message, 'PACKAGE_MISSING');
  }
}

/**
 * `load()` (an `import('name')` written out, so bundlers and TypeScript see it), or a
 * MissingPackageError saying that `purpose` needs `packages`.
 */
export async function importOptional<T>(
  load: () => Promise<T>,
  packages: readonly string[],
  purpose: string,
): Promise<T> {
  try {
    return await load();
  } catch (error) {
    const why = (error as Error).message.split('\n')[0];
    const names = packages.map((p) => `'${p.replace(/(?<=.)@.*$/, '')}'`).join(' and ');
    throw new MissingPackageError(
      `${purpose} needs ${names}, optional packages of velodiff that could not be loaded (${why}). ` +
        `Install them beside velodiff: npm install ${packages.join(' ')}`,
      packages,
    );
  }
}
