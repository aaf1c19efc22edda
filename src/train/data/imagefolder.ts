/**
 * A user's own training data (`--data DIR`), in Hugging Face's imagefolder layout: image files (in
 * subfolders too) and a `metadata.jsonl` at the top whose lines are `{"file_name": "a/b.png", "text":
 * "a caption"}`. PNG and JPEG, any size: composited on white, scaled so the shorter side is the
 * training size and centre-cropped. Bad entries are reported by line and file with what is wrong,
 * and skipped with a summary or fatal, as the caller chooses.
 */
import { createHash } from 'node:crypto';
import { readFile, stat } from 'node:fs/promises';
import { basename, isAbsolute, join, posix, resolve } from 'node:path';
import { errnoCode } from '../../io/errno.js';
import { isPlainObject } from '../../io/json.js';
import { OptionError } from '../../errors.js';
import { VelodiffWarning, emitWarning, type WarningHandler } from '../../warnings.js';
import { cacheEntryDir, defaultCacheDir, readCacheEntry, writeCacheEntry, type CachedData } from './cache.js';
import { checkImageSize, mapConcurrently, type DatasetItem, type ImageTextDataset } from './dataset.js';
import { DatasetError, describeBadFiles, type BadFile } from './errors.js';
import {
  compositeOnWhite,
  decodeImage,
  describeUnsupportedFormat,
  detectImageFormat,
  fitToSquare,
  PREPARE_VERSION,
} from './image.js';
import { checkValidationFraction, splitMembers } from './split.js';

export const METADATA_FILE = 'metadata.jsonl';

export interface ImageFolderOptions {
  /** Side of the square training images (default 64). */
  readonly size?: number;
  /** What to do with a bad entry: 'error' (default) stops and lists them all; 'skip' leaves them out with a warning. */
  readonly onBadFile?: 'skip' | 'error';
  /** The metadata key of the caption (default 'text', as diffusers' training scripts' --caption_column). */
  readonly captionColumn?: string;
  /** Share of images held out for validation, by a hash of file_name (default 0: all train). */
  readonly validationFraction?: number;
  /** Where prepared data sets are kept (default `defaultCacheDir()`); false: prepare in memory only. */
  readonly cacheDir?: string | false;
  /** Images decoded at once (default 2). */
  readonly concurrency?: number;
  /** Called after each image is prepared (not when the cache has them). */
  readonly onProgress?: (done: number, total: number) => void;
  /** Receives the summary of skipped entries (default: a process warning). */
  readonly onWarning?: WarningHandler;
}

/** One usable metadata entry: an image file and its captions (a file named on several lines has several). */
interface FolderEntry {
  readonly fileName: string;
  readonly path: string;
  readonly line: number;
  readonly captions: string[];
}

/** Reads metadata.jsonl: the entries, and the lines that are bad before any image is opened. */
function parseMetadata(
  text: string,
  dir: string,
  captionColumn: string,
): { entries: FolderEntry[]; bad: BadFile[]; lines: number } {
  const entries = new Map<string, FolderEntry>();
  const bad: BadFile[] = [];
  let lines = 0;
  text.split(/\r?\n/).forEach((source, index) => {
    const line = index + 1;
    if (source.trim() === '') return;
    lines += 1;
    let row: unknown;
    try {
      row = JSON.parse(source) as unknown;
    } catch (error) {
      bad.push({ kind: 'bad-json', line, problem: `not valid JSON (${(error as Error).message})` });
      return;
    }
    if (!isPlainObject(row)) {
      bad.push({ kind: 'bad-json', line, problem: 'not a JSON object' });
      return;
    }
    const fileName = row.file_name;
    if (typeof fileName !== 'string' || fileName === '') {
      bad.push({ kind: 'missing-file-name', line, problem: 'no "file_name" string' });
      return;
    }
    const caption = row[captionColumn];
    if (typeof caption !== 'string' || caption.trim() === '') {
      const found = caption === undefined ? 'none' : JSON.stringify(caption);
      bad.push({
        kind: 'missing-text',
        line,
        file: fileName,
        problem: `no "${captionColumn}" caption (found ${found}); an empty caption is what caption dropout makes, not data`,
      });
      return;
    }
    // Forward slashes as in the Hub's layout; a path that leaves the folder is refused, not followed.
    const normalized = posix.normalize(fileName.replace(/\\/g, '/'));
    if (isAbsolute(fileName) || normalized === '..' || normalized.startsWith('../')) {
      bad.push({ kind: 'outside-folder', line, file: fileName, problem: 'file_name leaves the data folder' });
      return;
    }
    const known = entries.get(normalized);
    if (known === undefined) {
      entries.set(normalized, {
        fileName: normalized,
        path: join(dir, normalized),
        line,
        captions: [caption],
      });
    } else if (!known.captions.includes(caption)) {
      known.captions.push(caption);
    }
  });
  return { entries: [...entries.values()], bad, lines };
}

/** Size and modification time of each entry's file ('missing' where there is none), for the cache key. */
async function fileStamp(path: string): Promise<string> {
  try {
    const info = await stat(path);
    return info.isFile() ? `${info.size} ${info.mtimeMs}` : 'not a file';
  } catch {
    return 'missing';
  }
}

type Prepared = { ok: true; pixels: Uint8Array } | { ok: false; bad: BadFile };

async function prepareEntry(entry: FolderEntry, size: number): Promise<Prepared> {
  const where = { line: entry.line, file: entry.fileName };
  let bytes: Uint8Array;
  try {
    bytes = await readFile(entry.path);
  } catch (error) {
    const code = errnoCode(error);
    const problem =
      code === 'ENOENT'
        ? 'no such file'
        : code === 'EISDIR'
          ? 'a folder, not an image file'
          : `cannot be read (${(error as Error).message})`;
    return { ok: false, bad: { kind: 'missing-file', ...where, problem } };
  }
  if (detectImageFormat(bytes) === undefined) {
    const problem = `${describeUnsupportedFormat(bytes)}: only PNG and JPEG files are read`;
    return { ok: false, bad: { kind: 'unsupported-format', ...where, problem } };
  }
  try {
    const image = await decodeImage(bytes);
    return { ok: true, pixels: await fitToSquare(compositeOnWhite(image), image.width, image.height, size) };
  } catch (error) {
    if (error instanceof DatasetError) throw error;
    const problem = `cannot be decoded (${(error as Error).message.split('\n')[0]})`;
    return { ok: false, bad: { kind: 'undecodable', ...where, problem } };
  }
}

/** Bad entries in metadata order: by line. */
function byLine(a: BadFile, b: BadFile): number {
  return (a.line ?? 0) - (b.line ?? 0);
}

function reportBadFiles(
  bad: readonly BadFile[],
  lines: number,
  metadataPath: string,
  options: ImageFolderOptions,
): void {
  if (bad.length === 0) return;
  if ((options.onBadFile ?? 'error') === 'error') {
    throw new DatasetError(
      `${bad.length} of the ${lines} lines of ${metadataPath} cannot be used:\n${describeBadFiles(bad)}\n` +
        `Fix or remove them, or pass onBadFile: 'skip' (CLI: --on-bad-file skip) to train on the rest.`,
      'DATA_BAD_FILES',
      metadataPath,
      bad,
    );
  }
  (options.onWarning ?? emitWarning)(
    new VelodiffWarning(
      `Skipped ${bad.length} of the ${lines} lines of ${metadataPath}:\n${describeBadFiles(bad)}`,
      'DATA_FILES_SKIPPED',
      metadataPath,
      bad.map((b) => b.file ?? `line ${b.line}`),
    ),
  );
}

/** A user's image folder as a data set, prepared once into the cache (keyed by metadata and file stamps). */
export async function loadImageFolder(
  dir: string,
  options: ImageFolderOptions = {},
): Promise<ImageTextDataset> {
  const size = options.size ?? 64;
  checkImageSize(size);
  const validationFraction = options.validationFraction ?? 0;
  checkValidationFraction(validationFraction);
  const onBadFile = options.onBadFile ?? 'error';
  if (onBadFile !== 'skip' && onBadFile !== 'error') {
    throw new OptionError(
      `onBadFile must be 'skip' or 'error', found ${JSON.stringify(onBadFile)}`,
      'INVALID_ON_BAD_FILE',
    );
  }
  const captionColumn = options.captionColumn ?? 'text';
  const root = resolve(dir);
  const metadataPath = join(root, METADATA_FILE);
  let metadata: string;
  try {
    metadata = await readFile(metadataPath, 'utf8');
  } catch (error) {
    const code = errnoCode(error);
    const why = code === 'ENOENT' ? 'there is no such file' : (error as Error).message;
    throw new DatasetError(
      `${metadataPath} cannot be read (${why}). A training folder holds its images and a metadata.jsonl ` +
        `with one line per image: {"file_name": "images/0001.png", "text": "a caption"}.`,
      'IMAGEFOLDER_NO_METADATA',
      metadataPath,
    );
  }
  const { entries, bad: badLines, lines } = parseMetadata(metadata, root, captionColumn);

  // File stamps, not contents: a user's folder may hold gigabytes, and reading it all at every start
  // to hash it would cost more than the training step it saves. Touching a file re-prepares.
  const hash = createHash('sha256');
  hash.update(JSON.stringify({ kind: 'imagefolder', prepare: PREPARE_VERSION, size, captionColumn }));
  hash.update(`\n${METADATA_FILE}\n`).update(metadata);
  for (const entry of entries) hash.update(`\n${entry.fileName} ${await fileStamp(entry.path)}`);
  const key = hash.digest('hex');

  const cacheEntry =
    options.cacheDir === false
      ? undefined
      : cacheEntryDir(options.cacheDir ?? defaultCacheDir(), `folder-${basename(root)}-${size}px`, key);
  let data: CachedData | undefined =
    cacheEntry === undefined ? undefined : await readCacheEntry(cacheEntry, key);
  const fromCache = data !== undefined;
  if (data === undefined) {
    const prepared = await mapConcurrently(
      entries,
      options.concurrency ?? 2,
      (entry) => prepareEntry(entry, size),
      options.onProgress,
    );
    const items: DatasetItem[] = [];
    const images: Uint8Array[] = [];
    const bad = [...badLines];
    prepared.forEach((result, index) => {
      if (!result.ok) {
        bad.push(result.bad);
        return;
      }
      const entry = entries[index];
      items.push({ id: entry.fileName, captions: entry.captions, group: entry.fileName });
      images.push(result.pixels);
    });
    const pixels = new Uint8Array(images.length * size * size * 3);
    images.forEach((image, index) => pixels.set(image, index * size * size * 3));
    data = { size, pixels, items, labelNames: undefined, badFiles: bad.sort(byLine) };
    // A data set with bad files is cached too: with onBadFile 'error' the next run reports them again
    // from the cache, without decoding everything to find them.
    if (cacheEntry !== undefined) await writeCacheEntry(cacheEntry, key, data);
  }
  reportBadFiles(data.badFiles, lines, metadataPath, options);
  if (data.items.length === 0) {
    throw new DatasetError(`${metadataPath} lists no usable image`, 'IMAGEFOLDER_EMPTY', metadataPath);
  }
  const split = splitMembers(
    data.items.map((item) => ({ group: item.group, stratum: '' })),
    validationFraction,
  );
  return { ...data, split, key, cacheEntry, fromCache };
}
