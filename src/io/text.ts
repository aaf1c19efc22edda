import { readFile } from 'node:fs/promises';
import { FileFormatError } from '../errors.js';
import { errnoCode } from './errno.js';

/** A text file, with a clear error naming what it is for when it is missing. */
export async function readTextFile(path: string, what: string): Promise<string> {
  try {
    return await readFile(path, 'utf8');
  } catch (e) {
    if (errnoCode(e) === 'ENOENT')
      throw new FileFormatError(`${what} ${path} is missing`, 'FILE_MISSING', path);
    throw e;
  }
}
