/**
 * No file handle is left to the garbage collector (issue 8, item 6): a SafetensorsFile, a model or a
 * pipeline dropped without close() must not make Node print "Closing a FileHandle object on garbage
 * collection" (DEP0137) or "Closing file descriptor N on garbage collection", and must not keep
 * descriptors (weight files, a runtime's worker thread) or sessions' weight mappings once collected.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readdirSync, readlinkSync } from 'node:fs';
import { rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { FileFormatError, WeightError } from '../../src/errors.js';
import { SafetensorsFile, writeSafetensors } from '../../src/io/safetensors.js';
import { seededUniform, testSeed } from '../random.js';
import { tempDir } from './craft.js';

const REPO_ROOT = fileURLToPath(new URL('../../', import.meta.url));
const CHILD = fileURLToPath(new URL('./drop-and-collect.ts', import.meta.url));
const ON_LINUX = process.platform === 'linux';

interface ChildReport {
  weightFilesWhileLoaded: string[];
  descriptorsBefore: number;
  descriptorsAfter: number;
  weightFilesAfter: string[];
  weightFilesMappedAfter: string[];
  opened: string[];
}

/** Runs drop-and-collect.ts for `subject` with the repository's tsx; returns its report and stderr. */
async function dropAndCollect(subject: string): Promise<{ report: ChildReport; stderr: string }> {
  const { stdout, stderr } = await promisify(execFile)(
    process.execPath,
    ['--expose-gc', '--trace-warnings', '--import', 'tsx', CHILD, subject],
    { cwd: REPO_ROOT, timeout: 120_000 },
  );
  const lines = stdout.trim().split('\n');
  return { report: JSON.parse(lines[lines.length - 1]) as ChildReport, stderr };
}

/** Paths this process has open (Linux). */
function openPaths(): string[] {
  return readdirSync('/proc/self/fd').flatMap((fd) => {
    try {
      return [readlinkSync(join('/proc/self/fd', fd))];
    } catch {
      return [];
    }
  });
}

describe('dropped without close(), collected without a warning or a kept descriptor', () => {
  for (const subject of ['file', 'model', 'pipeline']) {
    it(`a ${subject}`, async () => {
      const { report, stderr } = await dropAndCollect(subject);
      for (const text of ['Closing a FileHandle', 'Closing file descriptor', 'DeprecationWarning']) {
        assert.ok(!stderr.includes(text), `the child printed "${text}":\n${stderr}`);
      }
      if (!ON_LINUX) return;
      assert.deepEqual(report.weightFilesWhileLoaded, [], 'a loaded subject holds no weight file open');
      assert.deepEqual(report.weightFilesAfter, [], 'weight files still open after collection');
      assert.deepEqual(
        report.weightFilesMappedAfter,
        [],
        'weight files still mapped by ONNX Runtime sessions',
      );
      assert.deepEqual(report.opened, [], 'descriptors opened by two dropped subjects and still open');
      assert.ok(
        report.descriptorsAfter <= report.descriptorsBefore,
        `${report.descriptorsBefore} descriptors before, ${report.descriptorsAfter} after two dropped subjects`,
      );
    });
  }
});

describe('SafetensorsFile keeps no descriptor between reads', () => {
  async function writeRandom(path: string, seed: number): Promise<Float32Array> {
    const uniform = seededUniform(seed);
    const data = Float32Array.from({ length: 12 }, () => uniform() * 2 - 1);
    await writeSafetensors(path, { w: { dtype: 'F32', shape: [3, 4], data } });
    return data;
  }

  it('holds the file open neither after open nor after a read, and close() is idempotent', async (t) => {
    if (!ON_LINUX) return t.skip('counts descriptors in /proc/self/fd');
    const path = join(await tempDir(), 'w.safetensors');
    const data = await writeRandom(path, testSeed('file-handles read'));
    const file = await SafetensorsFile.open(path);
    assert.ok(!openPaths().includes(path), 'open() left the file open');
    assert.deepEqual(await file.readFloat32('w'), data);
    assert.ok(!openPaths().includes(path), 'readFloat32() left the file open');
    await assert.rejects(file.readBytes('missing'), (e: unknown) => e instanceof WeightError);
    assert.ok(!openPaths().includes(path), 'a failed read left the file open');
    await file.close();
    await file.close();
    await assert.rejects(
      file.readBytes('w'),
      (e: unknown) => e instanceof WeightError && e.code === 'WEIGHT_FILE_CLOSED',
    );
  });

  it('refuses to read a file replaced after it was opened', async () => {
    const dir = await tempDir();
    const path = join(dir, 'w.safetensors');
    const seed = testSeed('file-handles replaced');
    await writeRandom(path, seed);
    const file = await SafetensorsFile.open(path);
    // A different layout behind the same path: the header's offsets would read garbage.
    const replacement = join(dir, 'next.safetensors');
    await writeSafetensors(replacement, {
      a: { dtype: 'U8', shape: [3], data: new Uint8Array([1, 2, 3]) },
      w: { dtype: 'F32', shape: [3, 4], data: new Float32Array(12) },
    });
    await rename(replacement, path);
    await assert.rejects(
      file.readBytes('w'),
      (e: unknown) =>
        e instanceof FileFormatError &&
        e.code === 'SAFETENSORS_REPLACED' &&
        e.message.includes(path) &&
        /tensor 'w'.*Open it again/.test(e.message),
    );
    await rm(path);
    await assert.rejects(
      file.readBytes('w'),
      (e: unknown) => e instanceof FileFormatError && e.code === 'FILE_MISSING' && e.message.includes(path),
    );
  });
});
