/**
 * Safetensors read (lazy, one tensor at a time) and write.
 *
 * Layout: a little-endian u64 header length N, N bytes of UTF-8 JSON mapping tensor names to
 * `{dtype, shape, data_offsets: [begin, end]}` (plus an optional `__metadata__` string map), then the
 * data section, whose offsets are relative to byte 8 + N. Compiled graphs point ONNX Runtime straight
 * at `8 + N + begin` (notes/onnxruntime.md §4), so the header is validated completely: a wrong offset
 * would silently feed garbage weights to a model instead of failing here.
 */
import type { BigIntStats } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { resolve } from 'node:path';

import { FileFormatError, OptionError, WeightError } from '../errors.js';
import { writeAtomic, writeFully } from './atomic.js';
import {
  dtypeByteSize,
  HOST_IS_LITTLE_ENDIAN,
  isSafetensorsDtype,
  SAFETENSORS_DTYPES,
  swapBytesInPlace,
  toFloat32,
  type SafetensorsDtype,
} from './dtypes.js';
import { errnoCode } from './errno.js';
import { describeJson, isPlainObject } from './json.js';
import { didYouMean } from './suggest.js';

/** Largest header accepted, as in the reference implementation: it bounds what a hostile file can
 * make us allocate before anything else is checked. */
export const MAX_HEADER_LENGTH = 100 * 1024 * 1024;

/** The 8-byte header length that precedes the JSON. */
const LENGTH_PREFIX_BYTES = 8;

export interface TensorInfo {
  readonly name: string;
  readonly dtype: SafetensorsDtype;
  readonly shape: number[];
  readonly byteLength: number;
  /** Absolute byte offset of the first element in the file: dataStart + data_offsets[0]. */
  readonly fileOffset: number;
}

export interface SafetensorsHeader {
  /** N, the JSON length in bytes (including any padding). */
  readonly headerLength: number;
  /** Where the data section begins in the file: 8 + N. */
  readonly dataStart: number;
  readonly metadata: Record<string, string>;
  /** Every tensor, in file order. */
  readonly tensors: Map<string, TensorInfo>;
}

/** A header entry after its own fields have been checked, before the entries are checked together. */
interface Extent {
  readonly info: TensorInfo;
  readonly begin: number;
  readonly end: number;
}

// ---------------------------------------------------------------------------------------------
// Header validation (pure).

/**
 * Reads and checks the header length from the first 8 bytes of a file of `fileSize` bytes. Everything
 * is checked before the caller allocates a buffer of that length.
 */
export function readHeaderLength(prefix: Uint8Array, fileSize: number, path: string): number {
  if (fileSize < LENGTH_PREFIX_BYTES || prefix.byteLength < LENGTH_PREFIX_BYTES) {
    throw invalid(
      path,
      'SAFETENSORS_TOO_SHORT',
      `expected at least 8 bytes (the header length), found ${Math.min(fileSize, prefix.byteLength)}.`,
    );
  }
  // Compared as a bigint: a hostile length such as 2^63 is not representable as a safe number.
  const length = new DataView(prefix.buffer, prefix.byteOffset, LENGTH_PREFIX_BYTES).getBigUint64(0, true);
  if (length === 0n) {
    throw invalid(
      path,
      'SAFETENSORS_HEADER_LENGTH',
      'the header length is 0; expected at least 2 bytes ("{}").',
    );
  }
  if (length > BigInt(MAX_HEADER_LENGTH)) {
    throw invalid(
      path,
      'SAFETENSORS_HEADER_LENGTH',
      `the header length is ${length} bytes; expected at most ${MAX_HEADER_LENGTH} (100 MiB). ` +
        'The file is probably not safetensors.',
    );
  }
  const available = fileSize - LENGTH_PREFIX_BYTES;
  if (length > BigInt(available)) {
    throw invalid(
      path,
      'SAFETENSORS_HEADER_LENGTH',
      `the header length is ${length} bytes but only ${available} bytes follow the length prefix ` +
        `(file size ${fileSize}). The file is truncated or not safetensors.`,
    );
  }
  return Number(length);
}

/**
 * Validates a safetensors header. `prefix` holds at least the first 8 + N bytes of the file (more is
 * ignored) and `fileSize` is the size of the whole file, against which the data section is checked.
 * Throws FileFormatError, with a distinct code per problem, naming the file and tensor.
 */
export function parseSafetensorsHeader(
  prefix: Uint8Array,
  fileSize: number,
  path: string,
): SafetensorsHeader {
  const headerLength = readHeaderLength(prefix, fileSize, path);
  const dataStart = LENGTH_PREFIX_BYTES + headerLength;
  if (prefix.byteLength < dataStart) {
    throw invalid(
      path,
      'SAFETENSORS_TRUNCATED',
      `expected ${dataStart} bytes of length prefix and header, could read only ${prefix.byteLength}.`,
    );
  }
  const json = parseHeaderJson(prefix.subarray(LENGTH_PREFIX_BYTES, dataStart), path);
  const dataSize = fileSize - dataStart;

  let metadata: Record<string, string> = {};
  const extents: Extent[] = [];
  for (const [name, entry] of Object.entries(json)) {
    if (name === '__metadata__') metadata = parseMetadata(entry, path);
    else extents.push(parseEntry(name, entry, dataStart, path));
  }
  // Sorting by (begin, end) puts zero-size tensors before a tensor starting at the same offset.
  extents.sort((a, b) => a.begin - b.begin || a.end - b.end);
  checkExtents(extents, dataSize, dataStart, fileSize, path);

  const tensors = new Map<string, TensorInfo>();
  for (const extent of extents) tensors.set(extent.info.name, extent.info);
  return { headerLength, dataStart, metadata, tensors };
}

function parseHeaderJson(headerBytes: Uint8Array, path: string): Record<string, unknown> {
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(headerBytes);
  } catch {
    throw invalid(path, 'SAFETENSORS_JSON', 'the header is not valid UTF-8.');
  }
  // The format requires the JSON to start at the first byte (padding goes after it, as spaces).
  if (!text.startsWith('{')) {
    throw invalid(
      path,
      'SAFETENSORS_JSON',
      `expected the header to be a JSON object starting with '{', found ${describeJson(text.slice(0, 40))}.`,
    );
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (error) {
    throw invalid(
      path,
      'SAFETENSORS_JSON',
      `the header is not well-formed JSON: ${(error as Error).message}.`,
    );
  }
  if (!isPlainObject(parsed)) {
    throw invalid(
      path,
      'SAFETENSORS_JSON',
      `expected the header to be a JSON object, found ${describeJson(parsed)}.`,
    );
  }
  return parsed;
}

function parseMetadata(value: unknown, path: string): Record<string, string> {
  if (!isPlainObject(value)) {
    throw invalid(
      path,
      'SAFETENSORS_METADATA',
      `expected __metadata__ to be an object of strings, found ${describeJson(value)}.`,
    );
  }
  for (const [key, entry] of Object.entries(value)) {
    if (typeof entry !== 'string') {
      throw invalid(
        path,
        'SAFETENSORS_METADATA',
        `expected __metadata__['${key}'] to be a string, found ${describeJson(entry)}.`,
      );
    }
  }
  return { ...(value as Record<string, string>) };
}

function parseEntry(name: string, entry: unknown, dataStart: number, path: string): Extent {
  if (!isPlainObject(entry)) {
    throw invalid(
      path,
      'SAFETENSORS_ENTRY',
      `tensor '${name}': expected an object {dtype, shape, data_offsets}, found ${describeJson(entry)}.`,
    );
  }
  for (const field of ['dtype', 'shape', 'data_offsets']) {
    if (!(field in entry)) {
      throw invalid(path, 'SAFETENSORS_ENTRY', `tensor '${name}': the field '${field}' is missing.`);
    }
  }
  const { dtype, shape, data_offsets: offsets } = entry;
  if (!isSafetensorsDtype(dtype)) {
    throw invalid(
      path,
      'SAFETENSORS_DTYPE',
      `tensor '${name}': expected dtype to be one of ${SAFETENSORS_DTYPES.join(', ')}, found ${describeJson(dtype)}.`,
    );
  }
  if (!Array.isArray(shape) || !shape.every(isNonNegativeSafeInteger)) {
    throw invalid(
      path,
      'SAFETENSORS_SHAPE',
      `tensor '${name}': expected shape to be an array of non-negative integers, found ${describeJson(shape)}.`,
    );
  }
  if (
    !Array.isArray(offsets) ||
    offsets.length !== 2 ||
    !offsets.every(isNonNegativeSafeInteger) ||
    offsets[0] > offsets[1]
  ) {
    throw invalid(
      path,
      'SAFETENSORS_OFFSETS',
      `tensor '${name}': expected data_offsets to be [begin, end] with integers 0 <= begin <= end, ` +
        `found ${describeJson(offsets)}.`,
    );
  }
  const [begin, end] = offsets as [number, number];
  const elementCount = (shape as number[]).reduce((product, dim) => product * dim, 1);
  const expectedBytes = elementCount * dtypeByteSize(dtype);
  if (!Number.isSafeInteger(expectedBytes) || expectedBytes !== end - begin) {
    throw invalid(
      path,
      'SAFETENSORS_SIZE',
      `tensor '${name}': dtype ${dtype} with shape [${shape.join(', ')}] needs ${expectedBytes} bytes, ` +
        `but data_offsets [${begin}, ${end}] span ${end - begin}.`,
    );
  }
  const info: TensorInfo = {
    name,
    dtype,
    shape: [...(shape as number[])],
    byteLength: end - begin,
    fileOffset: dataStart + begin,
  };
  return { info, begin, end };
}

/**
 * Checks that the tensors, sorted by offset, tile the data section exactly: from 0, no overlap, no
 * gap, ending at its last byte. Zero-size tensors occupy no bytes, so they only need to lie in bounds.
 */
function checkExtents(
  extents: Extent[],
  dataSize: number,
  dataStart: number,
  fileSize: number,
  path: string,
): void {
  let cursor = 0;
  let previous: Extent | undefined;
  let tilingError: FileFormatError | undefined;
  for (const extent of extents) {
    if (extent.begin === extent.end) continue;
    if (extent.begin < cursor && previous !== undefined) {
      tilingError = invalid(
        path,
        'SAFETENSORS_OVERLAP',
        `tensor '${extent.info.name}' (data_offsets [${extent.begin}, ${extent.end}]) overlaps tensor ` +
          `'${previous.info.name}' (data_offsets [${previous.begin}, ${previous.end}]); ` +
          `expected it to begin at ${cursor}.`,
      );
      break;
    }
    if (extent.begin > cursor) {
      tilingError = invalid(
        path,
        'SAFETENSORS_GAP',
        `bytes [${cursor}, ${extent.begin}) of the data section belong to no tensor: expected tensor ` +
          `'${extent.info.name}' to begin at ${cursor}, found data_offsets [${extent.begin}, ${extent.end}].`,
      );
      break;
    }
    cursor = extent.end;
    previous = extent;
  }

  const outOfBounds = extents.find((extent) => extent.end > dataSize);
  if (outOfBounds !== undefined) {
    if (tilingError === undefined && previous !== undefined && cursor > dataSize) {
      // The tensors are consistent with each other, so the file lost its tail (e.g. a cut download).
      throw invalid(
        path,
        'SAFETENSORS_TRUNCATED',
        `the header describes ${cursor} bytes of tensor data (the last tensor is '${previous.info.name}'), ` +
          `but only ${dataSize} bytes follow the header: expected a file of ${dataStart + cursor} bytes, ` +
          `found ${fileSize}. The file is truncated; download or write it again.`,
      );
    }
    throw invalid(
      path,
      'SAFETENSORS_OFFSETS',
      `tensor '${outOfBounds.info.name}': data_offsets [${outOfBounds.begin}, ${outOfBounds.end}] lie outside ` +
        `the data section, which holds ${dataSize} bytes.`,
    );
  }
  if (tilingError !== undefined) throw tilingError;
  if (cursor !== dataSize) {
    throw invalid(
      path,
      'SAFETENSORS_TRAILING',
      `the tensors end at byte ${cursor} of the data section, but it holds ${dataSize} bytes: ` +
        `${dataSize - cursor} trailing bytes belong to no tensor (expected a file of ${dataStart + cursor} bytes, ` +
        `found ${fileSize}).`,
    );
  }
}

// ---------------------------------------------------------------------------------------------
// Lazy reader.

/**
 * A safetensors file, opened lazily. Opening reads and validates only the header; tensor bytes are
 * read on demand at their offsets, so a multi-gigabyte checkpoint costs nothing until a tensor is used.
 *
 * No descriptor stays open between calls: after load only the header is used (ONNX Runtime reads the
 * weights by path), and a FileHandle left to the garbage collector makes Node warn (DEP0137). Each
 * read opens the file, checks that it is still the file the header came from, reads and closes.
 */
export class SafetensorsFile {
  #closed = false;

  private constructor(
    /** Absolute path of the file. */
    readonly path: string,
    readonly header: SafetensorsHeader,
    /** Device and inode at open: a later read must find the same file behind the path. */
    private readonly identity: FileIdentity,
  ) {}

  /** Opens `path` and validates its header. Throws FileFormatError (FILE_MISSING, SAFETENSORS_*). */
  static async open(path: string): Promise<SafetensorsFile> {
    const absolutePath = resolve(path);
    return withFile(absolutePath, async (handle, stats) => {
      const size = Number(stats.size);
      const lengthPrefix = new Uint8Array(LENGTH_PREFIX_BYTES);
      const prefixRead = await readFully(handle, lengthPrefix, 0);
      // Validated before the header buffer below is allocated.
      const headerLength = readHeaderLength(lengthPrefix.subarray(0, prefixRead), size, absolutePath);
      const prefix = new Uint8Array(LENGTH_PREFIX_BYTES + headerLength);
      prefix.set(lengthPrefix);
      const headerRead = await readFully(handle, prefix.subarray(LENGTH_PREFIX_BYTES), LENGTH_PREFIX_BYTES);
      const header = parseSafetensorsHeader(
        prefix.subarray(0, LENGTH_PREFIX_BYTES + headerRead),
        size,
        absolutePath,
      );
      return new SafetensorsFile(absolutePath, header, { dev: stats.dev, ino: stats.ino });
    });
  }

  get metadata(): Record<string, string> {
    return this.header.metadata;
  }

  /** Tensor names in file order. */
  names(): string[] {
    return [...this.header.tensors.keys()];
  }

  has(name: string): boolean {
    return this.header.tensors.has(name);
  }

  /** Where and what tensor `name` is. Throws WeightError WEIGHT_MISSING if the file lacks it. */
  info(name: string): TensorInfo {
    const info = this.header.tensors.get(name);
    if (info === undefined) {
      throw new WeightError(
        `Tensor '${name}' is not in ${this.path} (${this.header.tensors.size} tensors).` +
          didYouMean(name, this.header.tensors.keys()),
        'WEIGHT_MISSING',
      );
    }
    return info;
  }

  /** The raw little-endian bytes of tensor `name`, in a fresh buffer. */
  async readBytes(name: string): Promise<Uint8Array> {
    if (this.#closed) {
      throw new WeightError(`Cannot read from ${this.path}: the file has been closed.`, 'WEIGHT_FILE_CLOSED');
    }
    const info = this.info(name);
    return withFile(this.path, async (handle, stats) => {
      if (stats.dev !== this.identity.dev || stats.ino !== this.identity.ino) {
        throw invalid(
          this.path,
          'SAFETENSORS_REPLACED',
          `cannot read tensor '${name}': another file has replaced the one whose header was read ` +
            '(the tensor offsets no longer apply). Open it again.',
        );
      }
      const bytes = new Uint8Array(info.byteLength);
      const bytesRead = await readFully(handle, bytes, info.fileOffset);
      if (bytesRead !== info.byteLength) {
        throw invalid(
          this.path,
          'SAFETENSORS_TRUNCATED',
          `tensor '${name}' occupies bytes [${info.fileOffset}, ${info.fileOffset + info.byteLength}) but the ` +
            `file now has ${stats.size} bytes. It was truncated or replaced after it was opened; open it again.`,
        );
      }
      return bytes;
    });
  }

  /** Tensor `name` decoded to float32 (see toFloat32 for how each dtype converts). */
  async readFloat32(name: string): Promise<Float32Array> {
    const dtype = this.info(name).dtype;
    return toFloat32(await this.readBytes(name), dtype);
  }

  /** Ends reading: later reads throw WEIGHT_FILE_CLOSED. Idempotent; no descriptor is held to release. */
  async close(): Promise<void> {
    this.#closed = true;
  }
}

interface FileIdentity {
  readonly dev: bigint;
  readonly ino: bigint;
}

/**
 * Opens `path` for reading, runs `use` with the handle and its status, and closes the handle whatever
 * happens. Throws FileFormatError FILE_MISSING if there is no file.
 */
async function withFile<T>(
  path: string,
  use: (handle: FileHandle, stats: BigIntStats) => Promise<T>,
): Promise<T> {
  let handle: FileHandle;
  try {
    handle = await open(path, 'r');
  } catch (error) {
    if (errnoCode(error) === 'ENOENT') {
      throw new FileFormatError(`Safetensors file not found: ${path}.`, 'FILE_MISSING', path);
    }
    throw error;
  }
  try {
    // Inodes are 64-bit: as numbers, two files could compare equal.
    return await use(handle, await handle.stat({ bigint: true }));
  } finally {
    await handle.close();
  }
}

/** Reads into `target` from `position` until it is full or the file ends; returns the bytes read. */
async function readFully(handle: FileHandle, target: Uint8Array, position: number): Promise<number> {
  let filled = 0;
  while (filled < target.byteLength) {
    // A single read may return less than asked (Linux caps one read at about 2 GiB).
    const { bytesRead } = await handle.read(target, filled, target.byteLength - filled, position + filled);
    if (bytesRead === 0) break;
    filled += bytesRead;
  }
  return filled;
}

// ---------------------------------------------------------------------------------------------
// Writer.

export interface TensorToWrite {
  dtype: SafetensorsDtype;
  shape: number[];
  /** Elements in row-major order; its bytes are written as they are (little-endian on every host). */
  data: ArrayBufferView;
}

/**
 * Writes `tensors` to `path` as safetensors, atomically (the target is replaced only once the new file
 * is complete and synced). Tensors are laid out in sorted name order and the header is padded with
 * spaces so that the data section starts at a multiple of 8. Everything is checked before any file is
 * created.
 */
export async function writeSafetensors(
  path: string,
  tensors: Record<string, TensorToWrite>,
  metadata?: Record<string, string>,
): Promise<void> {
  const names = Object.keys(tensors).sort();
  const payloads = names.map((name) => tensorBytes(name, tensors[name]));
  const declared = names.map((name, i) => ({
    name,
    dtype: tensors[name].dtype,
    shape: tensors[name].shape,
    byteLength: payloads[i].byteLength,
  }));
  await writeSafetensorsFromLayout(path, declared, metadata, async (handle, position) => {
    for (const bytes of payloads) position = await writeFully(handle, bytes, position);
  });
}

/** A tensor `writeSafetensorsStreaming` will write: its header entry, its bytes made on demand. */
export interface TensorToStream {
  name: string;
  dtype: SafetensorsDtype;
  shape: number[];
  /** Called once, in sorted name order, when the tensor is written; must give `shape`'s bytes. */
  data: () => Promise<ArrayBufferView> | ArrayBufferView;
}

/**
 * `writeSafetensors` for tensors too large to hold at once (a quantized copy of a checkpoint): the
 * header is written from the declared dtypes and shapes, then each tensor's bytes are made, checked
 * and written before the next is asked for. Atomic like writeSafetensors.
 */
export async function writeSafetensorsStreaming(
  path: string,
  tensors: readonly TensorToStream[],
  metadata?: Record<string, string>,
): Promise<void> {
  const sorted = [...tensors].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const declared = sorted.map((t) => ({
    name: t.name,
    dtype: t.dtype,
    shape: t.shape,
    byteLength: dtypeByteSize(t.dtype) * t.shape.reduce((a, b) => a * b, 1),
  }));
  await writeSafetensorsFromLayout(path, declared, metadata, async (handle, position) => {
    for (const [i, t] of sorted.entries()) {
      const bytes = tensorBytes(t.name, { dtype: t.dtype, shape: t.shape, data: await t.data() });
      if (bytes.byteLength !== declared[i].byteLength) {
        throw new WeightError(
          `tensor '${t.name}': ${bytes.byteLength} bytes made for a declared ${t.dtype} [${t.shape.join(', ')}]`,
          'WEIGHT_SHAPE',
        );
      }
      position = await writeFully(handle, bytes, position);
    }
  });
}

/**
 * The size in bytes of the safetensors file the writers make of these tensors (in any order) and
 * metadata: the length prefix, the padded header and the data, without making any tensor's bytes.
 */
export function safetensorsFileBytes(
  tensors: readonly { name: string; dtype: SafetensorsDtype; shape: readonly number[] }[],
  metadata?: Record<string, string>,
): number {
  const sorted = [...tensors].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const declared = sorted.map((t) => ({
    name: t.name,
    dtype: t.dtype,
    shape: [...t.shape],
    byteLength: dtypeByteSize(t.dtype) * t.shape.reduce((a, b) => a * b, 1),
  }));
  const data = declared.reduce((sum, t) => sum + t.byteLength, 0);
  return safetensorsPrefix('a safetensors file', declared, metadata).byteLength + data;
}

async function writeSafetensorsFromLayout(
  path: string,
  declared: readonly { name: string; dtype: SafetensorsDtype; shape: number[]; byteLength: number }[],
  metadata: Record<string, string> | undefined,
  writePayloads: (handle: FileHandle, position: number) => Promise<void>,
): Promise<void> {
  const prefix = safetensorsPrefix(path, declared, metadata);
  await writeAtomic(path, async (handle) => {
    await writePayloads(handle, await writeFully(handle, prefix, 0));
  });
}

/** The length prefix and the header, padded with spaces so that the data starts at a multiple of 8. */
function safetensorsPrefix(
  path: string,
  declared: readonly { name: string; dtype: SafetensorsDtype; shape: number[]; byteLength: number }[],
  metadata: Record<string, string> | undefined,
): Uint8Array {
  const headerEntries: string[] = [];
  if (metadata !== undefined) headerEntries.push(`"__metadata__":${JSON.stringify(checkMetadata(metadata))}`);
  let offset = 0;
  for (const { name, dtype, shape, byteLength } of declared) {
    // Written by hand rather than via JSON.stringify of one object, which would move integer-like
    // names ("0", "1") to the front and break the sorted layout.
    headerEntries.push(
      `${JSON.stringify(name)}:${JSON.stringify({ dtype, shape, data_offsets: [offset, offset + byteLength] })}`,
    );
    offset += byteLength;
  }

  const json = new TextEncoder().encode(`{${headerEntries.join(',')}}`);
  const paddedLength = Math.ceil((LENGTH_PREFIX_BYTES + json.byteLength) / 8) * 8 - LENGTH_PREFIX_BYTES;
  if (paddedLength > MAX_HEADER_LENGTH) {
    throw new OptionError(
      `Cannot write ${path}: the safetensors header would be ${paddedLength} bytes, over the ` +
        `${MAX_HEADER_LENGTH}-byte limit readers enforce. Split the tensors over several files.`,
      'SAFETENSORS_HEADER_LENGTH',
    );
  }
  const prefix = new Uint8Array(LENGTH_PREFIX_BYTES + paddedLength).fill(0x20);
  new DataView(prefix.buffer).setBigUint64(0, BigInt(paddedLength), true);
  prefix.set(json, LENGTH_PREFIX_BYTES);
  return prefix;
}

function checkMetadata(metadata: Record<string, string>): Record<string, string> {
  for (const [key, value] of Object.entries(metadata)) {
    if (typeof value !== 'string') {
      throw new OptionError(
        `Safetensors metadata must map strings to strings; metadata['${key}'] is ${describeJson(value)}.`,
        'SAFETENSORS_METADATA',
      );
    }
  }
  return metadata;
}

/** Validates one tensor to write and returns its bytes in little-endian order. */
function tensorBytes(name: string, tensor: TensorToWrite): Uint8Array {
  if (name === '__metadata__') {
    throw new WeightError(
      `'__metadata__' is reserved by the safetensors format; rename the tensor.`,
      'WEIGHT_NAME',
    );
  }
  if (!isSafetensorsDtype(tensor.dtype)) {
    throw new WeightError(
      `Tensor '${name}': expected dtype to be one of ${SAFETENSORS_DTYPES.join(', ')}, found ${describeJson(tensor.dtype)}.`,
      'WEIGHT_DTYPE',
    );
  }
  if (!Array.isArray(tensor.shape) || !tensor.shape.every(isNonNegativeSafeInteger)) {
    throw new WeightError(
      `Tensor '${name}': expected shape to be an array of non-negative integers, found ${describeJson(tensor.shape)}.`,
      'WEIGHT_SHAPE',
    );
  }
  const elementCount = tensor.shape.reduce((product, dim) => product * dim, 1);
  const expectedBytes = elementCount * dtypeByteSize(tensor.dtype);
  const data = tensor.data;
  if (data.byteLength !== expectedBytes) {
    throw new WeightError(
      `Tensor '${name}': dtype ${tensor.dtype} with shape [${tensor.shape.join(', ')}] needs ${expectedBytes} ` +
        `bytes (${elementCount} elements), but its data has ${data.byteLength} bytes.`,
      'WEIGHT_SIZE',
    );
  }
  const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  if (HOST_IS_LITTLE_ENDIAN) return bytes;
  const swapped = bytes.slice();
  swapBytesInPlace(swapped, dtypeByteSize(tensor.dtype));
  return swapped;
}

// ---------------------------------------------------------------------------------------------

function invalid(path: string, code: string, detail: string): FileFormatError {
  return new FileFormatError(`Invalid safetensors file ${path}: ${detail}`, code, path);
}

function isNonNegativeSafeInteger(value: unknown): value is number {
  return Number.isSafeInteger(value) && (value as number) >= 0;
}
