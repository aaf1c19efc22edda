/** Atomic replacement: complete new contents or the untouched old file, never a stray temp file. */
import assert from 'node:assert/strict';
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, it } from 'node:test';

import { writeAtomic, writeFileAtomic, writeFully } from '../../src/io/atomic.js';
import { tempDir } from './craft.js';

describe('writeFileAtomic', () => {
  it('writes strings as UTF-8 and bytes as given, replacing an existing file', async () => {
    const dir = await tempDir();
    const path = join(dir, 'config.json');
    await writeFileAtomic(path, '{"ünïcode": true}');
    assert.equal(await readFile(path, 'utf8'), '{"ünïcode": true}');
    const bytes = Uint8Array.from({ length: 1000 }, (_, i) => (i * 7) % 256).subarray(3, 997);
    await writeFileAtomic(path, bytes);
    assert.deepEqual(new Uint8Array(await readFile(path)), bytes);
    assert.deepEqual(await readdir(dir), ['config.json'], 'no temporary file is left');
  });
});

describe('writeAtomic', () => {
  it('leaves the target untouched and removes the temporary file when writing fails', async () => {
    const dir = await tempDir();
    const path = join(dir, 'weights.bin');
    await writeFile(path, 'old');
    let tempName = '';
    await assert.rejects(
      writeAtomic(path, async (handle) => {
        await writeFully(handle, new TextEncoder().encode('half of the new'), 0);
        tempName = (await readdir(dir)).find((name) => name !== 'weights.bin') ?? '';
        throw new Error('disk on fire');
      }),
      /disk on fire/,
    );
    assert.match(
      tempName,
      new RegExp(`^\\.weights\\.bin\\.tmp-${process.pid}-[0-9a-f]+$`),
      'temp file beside the target',
    );
    assert.equal(await readFile(path, 'utf8'), 'old');
    assert.deepEqual(await readdir(dir), ['weights.bin']);
  });

  it('removes the temporary file when the rename fails', async () => {
    const dir = await tempDir();
    const target = join(dir, 'occupied');
    await mkdir(join(target, 'child'), { recursive: true });
    await assert.rejects(writeFileAtomic(target, 'x'), /EISDIR|ENOTEMPTY|EEXIST|EPERM/);
    assert.deepEqual(await readdir(dir), ['occupied']);
  });
});
