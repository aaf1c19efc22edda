/**
 * The prepared-data cache: a whole data set as one binary file of pixels (uint8 RGB, N×H×W×3) and a
 * JSON index beside it, so that training epochs never decode an image. An entry's folder is named by
 * a SHA-256 of its inputs and options (the caller computes it): a changed input or option is simply a
 * different entry, and a stale one is never read.
 */
import { mkdir, readFile, stat } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { writeFileAtomic } from '../../io/atomic.js';
import { errnoCode } from '../../io/errno.js';
import { isPlainObject } from '../../io/json.js';
import type { BadFile } from './errors.js';
import type { DatasetItem, LabelNames } from './dataset.js';

/** Bumped when the files' layout changes, so older entries are not read. */
const CACHE_FORMAT_VERSION = 1;
const INDEX_FILE = 'index.json';
const PIXELS_FILE = 'images.u8';

/** `$VELODIFF_CACHE_DIR`, else `$XDG_CACHE_HOME/velodiff`, else `~/.cache/velodiff`. */
export function defaultCacheDir(): string {
  const explicit = process.env.VELODIFF_CACHE_DIR;
  if (explicit !== undefined && explicit !== '') return explicit;
  const xdg = process.env.XDG_CACHE_HOME;
  return join(xdg !== undefined && xdg !== '' ? xdg : join(homedir(), '.cache'), 'velodiff');
}

/** What an entry holds. */
export interface CachedData {
  /** Side of the square images. */
  readonly size: number;
  /** count·size·size·3 bytes: image i's RGB rows at i·size·size·3. */
  readonly pixels: Uint8Array;
  readonly items: readonly DatasetItem[];
  readonly labelNames: LabelNames | undefined;
  /** Entries that were skipped when the entry was made (image folders), reported again on each load. */
  readonly badFiles: readonly BadFile[];
}

/** The folder of one entry: `<cacheDir>/datasets/<name>-<first 16 hex digits of the key>`. */
export function cacheEntryDir(cacheDir: string, name: string, key: string): string {
  return join(cacheDir, 'datasets', `${name}-${key.slice(0, 16)}`);
}

/**
 * The entry made under `key`, or undefined when there is none, or it was made under another key or
 * format, or it is incomplete (a pixel file of the wrong length): then the caller prepares it anew.
 */
export async function readCacheEntry(dir: string, key: string): Promise<CachedData | undefined> {
  let index: unknown;
  try {
    index = JSON.parse(await readFile(join(dir, INDEX_FILE), 'utf8')) as unknown;
  } catch (error) {
    if (errnoCode(error) === 'ENOENT' || error instanceof SyntaxError) return undefined;
    throw error;
  }
  if (
    !isPlainObject(index) ||
    index.format !== 'velodiff-dataset' ||
    index.version !== CACHE_FORMAT_VERSION ||
    index.key !== key ||
    typeof index.size !== 'number' ||
    !Array.isArray(index.items) ||
    !Array.isArray(index.badFiles)
  ) {
    return undefined;
  }
  const size = index.size;
  const items = index.items as DatasetItem[];
  const expectedBytes = items.length * size * size * 3;
  const pixelsPath = join(dir, PIXELS_FILE);
  try {
    if ((await stat(pixelsPath)).size !== expectedBytes) return undefined;
  } catch (error) {
    if (errnoCode(error) === 'ENOENT') return undefined;
    throw error;
  }
  const buffer = await readFile(pixelsPath);
  const pixels = new Uint8Array(buffer.buffer, buffer.byteOffset, buffer.length);
  if (pixels.length !== expectedBytes) return undefined;
  return {
    size,
    pixels,
    items,
    labelNames: isPlainObject(index.labelNames) ? (index.labelNames as unknown as LabelNames) : undefined,
    badFiles: index.badFiles as BadFile[],
  };
}

/** Writes an entry: pixels first, then the index, each atomically, so a reader never sees half of one. */
export async function writeCacheEntry(dir: string, key: string, data: CachedData): Promise<void> {
  if (data.pixels.length !== data.items.length * data.size * data.size * 3) {
    throw new Error(
      `writeCacheEntry: ${data.items.length} images of ${data.size}×${data.size} RGB need ` +
        `${data.items.length * data.size * data.size * 3} bytes, got ${data.pixels.length}`,
    );
  }
  await mkdir(dir, { recursive: true });
  await writeFileAtomic(join(dir, PIXELS_FILE), data.pixels);
  const index = {
    format: 'velodiff-dataset',
    version: CACHE_FORMAT_VERSION,
    key,
    size: data.size,
    count: data.items.length,
    pixelLayout: 'uint8 RGB, [count, size, size, 3], row-major',
    labelNames: data.labelNames,
    items: data.items,
    badFiles: data.badFiles,
  };
  await writeFileAtomic(join(dir, INDEX_FILE), `${JSON.stringify(index)}\n`);
}
