/** What goes wrong with training data: a problem with one file, or a data set that cannot be read. */
import { VelodiffError } from '../../errors.js';

/** Why one entry of a training folder could not be used. */
export type BadFileKind =
  | 'bad-json' // a metadata.jsonl line that is not a JSON object
  | 'missing-file-name' // no string "file_name"
  | 'missing-text' // no string "text", or an empty one
  | 'outside-folder' // a file_name that leaves the data folder
  | 'missing-file' // file_name names no readable file
  | 'unsupported-format' // a file that is neither PNG nor JPEG
  | 'undecodable'; // a PNG or JPEG the decoder rejects (truncated, corrupt)

/** One bad entry: where it is (metadata line, file) and what is wrong with it. */
export interface BadFile {
  readonly kind: BadFileKind;
  /** The file_name as metadata.jsonl spells it, when the line has one. */
  readonly file?: string;
  /** 1-based line of metadata.jsonl. */
  readonly line?: number;
  /** What is wrong, in words: 'not valid JSON: Unexpected token …', 'no such file', … */
  readonly problem: string;
}

/** `metadata.jsonl:3: photos/cat.png: no such file` — one line of a report. */
export function describeBadFile(bad: BadFile): string {
  const where = [bad.line === undefined ? undefined : `metadata.jsonl:${bad.line}`, bad.file]
    .filter((part) => part !== undefined)
    .join(': ');
  return `${where}: ${bad.problem}`;
}

/** A report of many bad files, at most `limit` of them listed. */
export function describeBadFiles(bad: readonly BadFile[], limit = 20): string {
  const lines = bad.slice(0, limit).map((b) => `  ${describeBadFile(b)}`);
  if (bad.length > limit) lines.push(`  … ${bad.length - limit} more`);
  return lines.join('\n');
}

/** A data set that cannot be prepared or read: a missing package, a bad folder, bad files. */
export class DatasetError extends VelodiffError {
  override readonly name: string = 'DatasetError';
  constructor(
    message: string,
    code: string,
    /** The folder or file the problem is in, when there is one. */
    readonly path?: string,
    /** Every bad entry, when the problem is bad files (onBadFile: 'error'). */
    readonly badFiles: readonly BadFile[] = [],
  ) {
    super(message, code);
  }
}
