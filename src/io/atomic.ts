/**
 * Atomic file replacement: write a temporary file beside the target, fsync it, then rename it over
 * the target. A reader (or a crash) sees either the old file or the complete new one, never a
 * half-written checkpoint; on failure the temporary file is removed and the target is untouched.
 */
import { randomBytes } from 'node:crypto';
import { open, rename, unlink, type FileHandle } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';

/**
 * Replaces `path` with what `writeContents` writes through `handle`, atomically. The temporary file
 * is `.<name>.tmp-<pid>-<random>` in the same directory, because rename is only atomic within one
 * file system.
 */
export async function writeAtomic(
  path: string,
  writeContents: (handle: FileHandle) => Promise<void>,
): Promise<void> {
  const tempPath = join(
    dirname(path),
    `.${basename(path)}.tmp-${process.pid}-${randomBytes(6).toString('hex')}`,
  );
  // 'wx' refuses to reuse an existing file, so two writers can never share a temporary file.
  const handle = await open(tempPath, 'wx');
  let handleOpen = true;
  try {
    await writeContents(handle);
    await handle.sync();
    await handle.close();
    handleOpen = false;
    await rename(tempPath, path);
  } catch (error) {
    if (handleOpen) await handle.close().catch(() => undefined);
    await unlink(tempPath).catch(() => undefined);
    throw error;
  }
  await syncDirectory(dirname(path));
}

/** Replaces `path` with `data` (UTF-8 when a string), atomically. */
export async function writeFileAtomic(path: string, data: Uint8Array | string): Promise<void> {
  const bytes = typeof data === 'string' ? new TextEncoder().encode(data) : data;
  await writeAtomic(path, async (handle) => {
    await writeFully(handle, bytes, 0);
  });
}

/** Writes all of `bytes` at `position`, looping because a single write may be partial. Returns the
 * position after the last byte. */
export async function writeFully(handle: FileHandle, bytes: Uint8Array, position: number): Promise<number> {
  let written = 0;
  while (written < bytes.byteLength) {
    const { bytesWritten } = await handle.write(
      bytes,
      written,
      bytes.byteLength - written,
      position + written,
    );
    if (bytesWritten === 0) throw new Error(`write made no progress at byte ${position + written}`);
    written += bytesWritten;
  }
  return position + written;
}

/** Makes the rename itself durable. Best effort: some platforms (Windows) cannot open a directory. */
export async function syncDirectory(directory: string): Promise<void> {
  try {
    const handle = await open(directory, 'r');
    try {
      await handle.sync();
    } finally {
      await handle.close();
    }
  } catch {
    // The file content is already synced; only the directory entry's durability is at stake.
  }
}
