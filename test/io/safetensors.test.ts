/**
 * Safetensors header validation (every failure mode from hand-crafted bytes), the lazy reader, and
 * the atomic writer.
 */
import assert from 'node:assert/strict';
import { readdir, readFile, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, it } from 'node:test';

import { FileFormatError, OptionError, WeightError } from '../../src/errors.js';
import { dtypeByteSize, f16ToF32, SAFETENSORS_DTYPES, type SafetensorsDtype } from '../../src/io/dtypes.js';
import {
  MAX_HEADER_LENGTH,
  parseSafetensorsHeader,
  SafetensorsFile,
  writeSafetensors,
  type TensorToWrite,
} from '../../src/io/safetensors.js';
import { seededUniform, testSeed } from '../random.js';
import { craftSafetensors, lengthPrefix, tempDir } from './craft.js';

const PATH = '/models/unit.safetensors';

/** Asserts that `action` throws a FileFormatError with `code` whose message matches `message`. */
function assertFormatError(action: () => unknown, code: string, message: RegExp): void {
  assert.throws(action, (error: unknown) => {
    assert.ok(error instanceof FileFormatError, `expected FileFormatError, got ${String(error)}`);
    assert.equal(error.code, code, error.message);
    assert.match(error.message, message);
    assert.match(error.message, /unit\.safetensors/, 'the message names the file');
    assert.equal(error.path, PATH);
    return true;
  });
}

function parse(bytes: Uint8Array, fileSize = bytes.byteLength) {
  return parseSafetensorsHeader(bytes, fileSize, PATH);
}

const f32 = (shape: number[], begin: number, end: number) => ({
  dtype: 'F32',
  shape,
  data_offsets: [begin, end],
});

describe('parseSafetensorsHeader: valid headers', () => {
  it('returns absolute file offsets, sizes and metadata', () => {
    const header = {
      __metadata__: { format: 'pt' },
      'b.weight': { dtype: 'F16', shape: [2, 3], data_offsets: [4, 16] },
      'a.bias': { dtype: 'F32', shape: [1], data_offsets: [0, 4] },
    };
    const bytes = craftSafetensors(header, 16);
    const headerLength = bytes.byteLength - 8 - 16;
    const parsed = parse(bytes);
    assert.equal(parsed.headerLength, headerLength);
    assert.equal(parsed.dataStart, 8 + headerLength);
    assert.deepEqual(parsed.metadata, { format: 'pt' });
    assert.deepEqual([...parsed.tensors.keys()], ['a.bias', 'b.weight'], 'file order');
    assert.deepEqual(parsed.tensors.get('b.weight'), {
      name: 'b.weight',
      dtype: 'F16',
      shape: [2, 3],
      byteLength: 12,
      fileOffset: 8 + headerLength + 4,
    });
  });

  it('accepts space padding, scalars, zero-size tensors and an empty file', () => {
    const header = {
      scalar: f32([], 0, 4),
      empty: { dtype: 'BF16', shape: [0, 5], data_offsets: [4, 4] },
      last: f32([2], 4, 12),
      emptyAtEnd: { dtype: 'U8', shape: [0], data_offsets: [12, 12] },
    };
    const parsed = parse(craftSafetensors(header, 12, { padTo: 301 }));
    assert.equal(parsed.headerLength, 301);
    assert.equal(parsed.tensors.get('empty')?.byteLength, 0);
    assert.deepEqual(parsed.tensors.get('scalar')?.shape, []);
    assert.equal(parse(craftSafetensors({})).tensors.size, 0);
  });
});

describe('parseSafetensorsHeader: rejects', () => {
  it('a file shorter than the 8-byte length', () => {
    assertFormatError(() => parse(new Uint8Array(5)), 'SAFETENSORS_TOO_SHORT', /at least 8 bytes .*found 5/);
  });

  it('a header length of 0', () => {
    assertFormatError(() => parse(lengthPrefix(0n), 100), 'SAFETENSORS_HEADER_LENGTH', /header length is 0/);
  });

  it('a huge header length, from the 8-byte prefix alone and without allocating it', () => {
    // Only 8 bytes are given: any attempt to read or allocate 2^50 bytes would throw something else.
    for (const length of [2n ** 50n, 2n ** 64n - 1n, BigInt(MAX_HEADER_LENGTH) + 1n]) {
      const started = performance.now();
      assertFormatError(
        () => parse(lengthPrefix(length), 2 ** 52),
        'SAFETENSORS_HEADER_LENGTH',
        new RegExp(`header length is ${length} bytes; expected at most ${MAX_HEADER_LENGTH}`),
      );
      assert.ok(performance.now() - started < 50, 'fails fast');
    }
  });

  it('a header length beyond the end of the file', () => {
    const bytes = craftSafetensors('{}', 0, { headerLength: 100n });
    assertFormatError(
      () => parse(bytes),
      'SAFETENSORS_HEADER_LENGTH',
      /100 bytes but only 2 bytes follow .*file size 10/,
    );
  });

  it('a prefix shorter than the header it announces', () => {
    const bytes = craftSafetensors({ a: f32([1], 0, 4) }, 4);
    assertFormatError(
      () => parse(bytes.subarray(0, 12), bytes.byteLength),
      'SAFETENSORS_TRUNCATED',
      /could read only 12/,
    );
  });

  it('malformed JSON', () => {
    assertFormatError(() => parse(craftSafetensors('{"a": ')), 'SAFETENSORS_JSON', /not well-formed JSON/);
  });

  it('JSON that is not an object', () => {
    assertFormatError(
      () => parse(craftSafetensors('[1, 2]')),
      'SAFETENSORS_JSON',
      /starting with '\{', found "\[1, 2\]"/,
    );
    assertFormatError(() => parse(craftSafetensors('"text"')), 'SAFETENSORS_JSON', /JSON object/);
  });

  it('a header that is not UTF-8', () => {
    const bytes = craftSafetensors('{"\u00e9":1}');
    bytes[10] = 0xff;
    assertFormatError(() => parse(bytes), 'SAFETENSORS_JSON', /not valid UTF-8/);
  });

  it('an entry that is not an object or lacks a field', () => {
    assertFormatError(
      () => parse(craftSafetensors({ w: [1, 2] })),
      'SAFETENSORS_ENTRY',
      /tensor 'w': expected an object/,
    );
    assertFormatError(
      () => parse(craftSafetensors({ w: { dtype: 'F32', shape: [1] } }, 4)),
      'SAFETENSORS_ENTRY',
      /tensor 'w': the field 'data_offsets' is missing/,
    );
  });

  it('an unknown dtype', () => {
    assertFormatError(
      () =>
        parse(craftSafetensors({ 'layer.weight': { dtype: 'F128', shape: [1], data_offsets: [0, 16] } }, 16)),
      'SAFETENSORS_DTYPE',
      /tensor 'layer\.weight': expected dtype to be one of F64, .*found "F128"/,
    );
    assertFormatError(
      () => parse(craftSafetensors({ w: { dtype: 'f32', shape: [1], data_offsets: [0, 4] } }, 4)),
      'SAFETENSORS_DTYPE',
      /found "f32"/,
    );
  });

  it('a bad shape', () => {
    for (const shape of [[-1], [1.5], '3', [2 ** 53], [null]]) {
      assertFormatError(
        () => parse(craftSafetensors({ w: { dtype: 'F32', shape, data_offsets: [0, 4] } }, 4)),
        'SAFETENSORS_SHAPE',
        /tensor 'w': expected shape to be an array of non-negative integers/,
      );
    }
  });

  it('malformed data_offsets', () => {
    for (const offsets of [[8, 4], [0], [-4, 0], ['0', '4'], [0, 4, 8], [0.5, 4.5]]) {
      assertFormatError(
        () => parse(craftSafetensors({ w: { dtype: 'F32', shape: [1], data_offsets: offsets } }, 4)),
        'SAFETENSORS_OFFSETS',
        /tensor 'w': expected data_offsets to be \[begin, end\]/,
      );
    }
  });

  it('offsets outside the data section', () => {
    assertFormatError(
      () => parse(craftSafetensors({ a: f32([1], 0, 4), far: f32([1], 1000, 1004) }, 4)),
      'SAFETENSORS_OFFSETS',
      /tensor 'far': data_offsets \[1000, 1004\] lie outside the data section, which holds 4 bytes/,
    );
  });

  it('a truncated data section', () => {
    const bytes = craftSafetensors({ a: f32([2], 0, 8), b: f32([4], 8, 24) }, 24);
    const cut = bytes.subarray(0, bytes.byteLength - 5);
    assertFormatError(
      () => parse(cut),
      'SAFETENSORS_TRUNCATED',
      new RegExp(
        `24 bytes of tensor data .*'b'.*only 19 bytes .*expected a file of ${bytes.byteLength} bytes`,
      ),
    );
  });

  it('overlapping tensors', () => {
    assertFormatError(
      () => parse(craftSafetensors({ a: f32([2], 0, 8), b: f32([2], 4, 12) }, 12)),
      'SAFETENSORS_OVERLAP',
      /tensor 'b' \(data_offsets \[4, 12\]\) overlaps tensor 'a' \(data_offsets \[0, 8\]\); expected it to begin at 8/,
    );
    assertFormatError(
      () => parse(craftSafetensors({ a: f32([1], 0, 4), same: f32([1], 0, 4) }, 4)),
      'SAFETENSORS_OVERLAP',
      /overlaps/,
    );
  });

  it('gaps between tensors and before the first', () => {
    assertFormatError(
      () => parse(craftSafetensors({ a: f32([1], 0, 4), b: f32([1], 8, 12) }, 12)),
      'SAFETENSORS_GAP',
      /bytes \[4, 8\) of the data section belong to no tensor: expected tensor 'b' to begin at 4/,
    );
    assertFormatError(
      () => parse(craftSafetensors({ a: f32([1], 4, 8) }, 8)),
      'SAFETENSORS_GAP',
      /bytes \[0, 4\)/,
    );
  });

  it('trailing bytes after the last tensor', () => {
    assertFormatError(
      () => parse(craftSafetensors({ a: f32([1], 0, 4) }, 7)),
      'SAFETENSORS_TRAILING',
      /end at byte 4 of the data section, but it holds 7 bytes: 3 trailing bytes/,
    );
  });

  it('a byte size that does not match dtype and shape', () => {
    assertFormatError(
      () =>
        parse(craftSafetensors({ 'proj.weight': { dtype: 'BF16', shape: [2, 3], data_offsets: [0, 8] } }, 8)),
      'SAFETENSORS_SIZE',
      /tensor 'proj\.weight': dtype BF16 with shape \[2, 3\] needs 12 bytes, but data_offsets \[0, 8\] span 8/,
    );
  });

  it('metadata that is not a string map', () => {
    assertFormatError(
      () => parse(craftSafetensors({ __metadata__: { format: 'pt', step: 3 } })),
      'SAFETENSORS_METADATA',
      /__metadata__\['step'\] to be a string, found 3/,
    );
    assertFormatError(
      () => parse(craftSafetensors({ __metadata__: ['pt'] })),
      'SAFETENSORS_METADATA',
      /__metadata__ to be an object of strings/,
    );
  });
});

/** Random tensors of every dtype, with lengths chosen so that most offsets end up unaligned. */
function randomTensors(seed: number): Record<string, TensorToWrite> {
  const random = seededUniform(seed);
  const tensors: Record<string, TensorToWrite> = {};
  SAFETENSORS_DTYPES.forEach((dtype, i) => {
    const shape = [1 + (i % 3), 1 + Math.floor(random() * 5)];
    const bytes = new Uint8Array(shape[0] * shape[1] * dtypeByteSize(dtype));
    for (let j = 0; j < bytes.length; j++) bytes[j] = Math.floor(random() * 256);
    tensors[`t${String(i).padStart(2, '0')}.${dtype.toLowerCase()}`] = { dtype, shape, data: bytes };
  });
  tensors['odd.u8'] = { dtype: 'U8', shape: [3], data: new Uint8Array([1, 2, 3]) };
  return tensors;
}

describe('writeSafetensors and SafetensorsFile', () => {
  it('round-trips the bytes of every dtype, with sorted layout and an 8-aligned data section', async () => {
    const dir = await tempDir();
    const path = join(dir, 'all.safetensors');
    const seed = testSeed('safetensors round trip of random tensors');
    const tensors = randomTensors(seed);
    await writeSafetensors(path, tensors, { format: 'pt', seed: String(seed) });

    const file = await SafetensorsFile.open(path);
    try {
      assert.equal(file.header.dataStart % 8, 0);
      assert.deepEqual(file.metadata, { format: 'pt', seed: String(seed) });
      const sortedNames = Object.keys(tensors).sort();
      assert.deepEqual(file.names(), sortedNames, 'file order is sorted name order');
      for (const name of sortedNames) {
        const info = file.info(name);
        assert.equal(info.dtype, tensors[name].dtype);
        assert.deepEqual(info.shape, tensors[name].shape);
        assert.deepEqual(await file.readBytes(name), tensors[name].data, `seed ${seed}: bytes of ${name}`);
      }
    } finally {
      await file.close();
    }
  });

  it('lays out integer-like names in sorted string order', async () => {
    const path = join(await tempDir(), 'numbers.safetensors');
    const one = (value: number) => ({ dtype: 'F32' as const, shape: [1], data: new Float32Array([value]) });
    await writeSafetensors(path, { a: one(3), '9': one(2), '10': one(1) });
    const file = await SafetensorsFile.open(path);
    const offsets = ['10', '9', 'a'].map((name) => file.info(name).fileOffset - file.header.dataStart);
    assert.deepEqual(offsets, [0, 4, 8]);
    assert.deepEqual([...(await file.readFloat32('9'))], [2]);
    await file.close();
  });

  it('writes a file whose bytes match the format byte for byte', async () => {
    const path = join(await tempDir(), 'exact.safetensors');
    await writeSafetensors(path, {
      w: { dtype: 'F16', shape: [2], data: new Uint16Array([0x3c00, 0xc000]) },
    });
    const bytes = new Uint8Array(await readFile(path));
    const json = '{"w":{"dtype":"F16","shape":[2],"data_offsets":[0,4]}}';
    const headerLength = Math.ceil((8 + json.length) / 8) * 8 - 8;
    const expected = craftSafetensors(
      json.padEnd(headerLength, ' '),
      new Uint8Array([0x00, 0x3c, 0x00, 0xc0]),
    );
    assert.deepEqual(bytes, expected);
  });

  it('writes an empty file that reads back', async () => {
    const path = join(await tempDir(), 'empty.safetensors');
    await writeSafetensors(path, {});
    const file = await SafetensorsFile.open(path);
    assert.deepEqual(file.names(), []);
    assert.equal((await readFile(path)).byteLength, 16);
    await file.close();
  });

  it('reads tensors at unaligned offsets as float32', async () => {
    // Built by hand like the ORT experiment (notes §4): odd-length header, tensors at odd offsets.
    const data = new Uint8Array(3 + 8 + 4 + 2 + 16);
    const view = new DataView(data.buffer);
    data.set([7, 8, 9], 0);
    view.setFloat32(3, 1.25, true);
    view.setFloat32(7, -6.5, true);
    view.setUint16(11, 0x3c00, true); // F16 1.0
    view.setUint16(13, 0x0001, true); // F16 2^-24
    view.setUint16(15, 0xc040, true); // BF16 -3
    view.setFloat64(17, Math.PI, true);
    view.setBigInt64(25, -42n, true);
    const header = {
      a_bytes: { dtype: 'U8', shape: [3], data_offsets: [0, 3] },
      b_f32: { dtype: 'F32', shape: [2], data_offsets: [3, 11] },
      c_f16: { dtype: 'F16', shape: [2], data_offsets: [11, 15] },
      d_bf16: { dtype: 'BF16', shape: [1], data_offsets: [15, 17] },
      e_f64: { dtype: 'F64', shape: [1], data_offsets: [17, 25] },
      f_i64: { dtype: 'I64', shape: [1], data_offsets: [25, 33] },
    };
    // Pad the header to N ≡ 2 (mod 4), so the data section starts at 8 + N ≡ 2 (mod 4).
    const json = JSON.stringify(header);
    const bytes = craftSafetensors(header, data, { padTo: json.length + ((6 - (json.length % 4)) % 4) });
    const path = join(await tempDir(), 'unaligned.safetensors');
    await writeFile(path, bytes);

    const file = await SafetensorsFile.open(path);
    // The test only means something if the typed-array views would be misaligned.
    assert.equal(file.header.dataStart % 4, 2);
    assert.notEqual(file.info('b_f32').fileOffset % 4, 0);
    assert.notEqual(file.info('c_f16').fileOffset % 2, 0);
    assert.notEqual(file.info('e_f64').fileOffset % 8, 0);
    assert.deepEqual([...(await file.readFloat32('a_bytes'))], [7, 8, 9]);
    assert.deepEqual([...(await file.readFloat32('b_f32'))], [1.25, -6.5]);
    assert.deepEqual([...(await file.readFloat32('c_f16'))], [1, 2 ** -24]);
    assert.deepEqual([...(await file.readFloat32('d_bf16'))], [-3]);
    assert.deepEqual([...(await file.readFloat32('e_f64'))], [Math.fround(Math.PI)]);
    assert.deepEqual([...(await file.readFloat32('f_i64'))], [-42]);
    await file.close();
  });

  it('reads float32 from f16 written by the writer', async () => {
    const path = join(await tempDir(), 'half.safetensors');
    const bits = new Uint16Array([0x3c00, 0x7bff, 0x8001, 0xfc00]);
    await writeSafetensors(path, { h: { dtype: 'F16', shape: [2, 2], data: bits } });
    const file = await SafetensorsFile.open(path);
    assert.deepEqual([...(await file.readFloat32('h'))], [1, 65504, -(2 ** -24), -Infinity]);
    assert.deepEqual(await file.readFloat32('h'), f16ToF32(bits));
    await file.close();
  });

  it('names the file and suggests close names for a missing tensor', async () => {
    const path = join(await tempDir(), 'names.safetensors');
    const scalar = { dtype: 'F32' as const, shape: [], data: new Float32Array([0]) };
    await writeSafetensors(path, {
      'blocks.0.attn.to_q.weight': scalar,
      'blocks.0.attn.to_k.weight': scalar,
      norm: scalar,
    });
    const file = await SafetensorsFile.open(path);
    assert.equal(file.has('norm'), true);
    assert.equal(file.has('blocks.0.attn.to_q.weigth'), false);
    assert.throws(
      () => file.info('blocks.0.attn.to_q.weigth'),
      (error: unknown) =>
        error instanceof WeightError &&
        error.code === 'WEIGHT_MISSING' &&
        error.message.includes(path) &&
        /Tensor 'blocks\.0\.attn\.to_q\.weigth' is not in .* Did you mean 'blocks\.0\.attn\.to_q\.weight'/.test(
          error.message,
        ),
    );
    await assert.rejects(file.readBytes('transformer.norm.bias'), /is not in/);
    await assert.rejects(file.readBytes('model.norm'), /Did you mean 'norm'\?/);
    await file.close();
  });

  it('reports a file truncated after it was opened', async () => {
    const path = join(await tempDir(), 'shrinks.safetensors');
    await writeSafetensors(path, {
      a: { dtype: 'F32', shape: [4], data: new Float32Array(4) },
      b: { dtype: 'F32', shape: [4], data: new Float32Array(4) },
    });
    const file = await SafetensorsFile.open(path);
    const size = (await readFile(path)).byteLength;
    await truncate(path, size - 6);
    assert.equal((await file.readBytes('a')).byteLength, 16, 'a is still whole');
    await assert.rejects(
      file.readBytes('b'),
      (error: unknown) =>
        error instanceof FileFormatError &&
        error.code === 'SAFETENSORS_TRUNCATED' &&
        new RegExp(
          `tensor 'b' occupies bytes \\[${size - 16}, ${size}\\) but the file now has ${size - 6} bytes`,
        ).test(error.message),
    );
    await file.close();
  });

  it('rejects reads after close', async () => {
    const path = join(await tempDir(), 'closed.safetensors');
    await writeSafetensors(path, { a: { dtype: 'U8', shape: [1], data: new Uint8Array(1) } });
    const file = await SafetensorsFile.open(path);
    await file.close();
    await assert.rejects(
      file.readBytes('a'),
      (error: unknown) => error instanceof WeightError && error.code === 'WEIGHT_FILE_CLOSED',
    );
  });

  it('opening validates the header on disk: missing file, huge length, truncated file', async () => {
    const dir = await tempDir();
    await assert.rejects(
      SafetensorsFile.open(join(dir, 'nope.safetensors')),
      (error: unknown) =>
        error instanceof FileFormatError &&
        error.code === 'FILE_MISSING' &&
        /nope\.safetensors/.test(error.message),
    );
    const hostile = join(dir, 'hostile.safetensors');
    await writeFile(hostile, craftSafetensors('{}', 0, { headerLength: 2n ** 50n }));
    await assert.rejects(
      SafetensorsFile.open(hostile),
      (error: unknown) => (error as FileFormatError).code === 'SAFETENSORS_HEADER_LENGTH',
    );
    const cut = join(dir, 'cut.safetensors');
    const whole = craftSafetensors({ a: f32([4], 0, 16) }, 16);
    await writeFile(cut, whole.subarray(0, whole.byteLength - 4));
    await assert.rejects(
      SafetensorsFile.open(cut),
      (error: unknown) => (error as FileFormatError).code === 'SAFETENSORS_TRUNCATED',
    );
    const tiny = join(dir, 'tiny.safetensors');
    await writeFile(tiny, new Uint8Array(3));
    await assert.rejects(
      SafetensorsFile.open(tiny),
      (error: unknown) => (error as FileFormatError).code === 'SAFETENSORS_TOO_SHORT',
    );
  });

  it('leaves no temporary file behind after a successful write', async () => {
    const dir = await tempDir();
    await writeSafetensors(join(dir, 'clean.safetensors'), {
      a: { dtype: 'I8', shape: [2], data: new Int8Array([-1, 1]) },
    });
    assert.deepEqual(await readdir(dir), ['clean.safetensors']);
  });

  it('refuses a size mismatch before touching the target or leaving a temporary file', async () => {
    const dir = await tempDir();
    const path = join(dir, 'keep.safetensors');
    await writeFile(path, 'previous contents');
    await assert.rejects(
      writeSafetensors(path, {
        good: { dtype: 'F32', shape: [2], data: new Float32Array(2) },
        bad: { dtype: 'F16', shape: [2, 3], data: new Uint16Array(5) },
      }),
      (error: unknown) =>
        error instanceof WeightError &&
        error.code === 'WEIGHT_SIZE' &&
        /Tensor 'bad': dtype F16 with shape \[2, 3\] needs 12 bytes \(6 elements\), but its data has 10 bytes/.test(
          error.message,
        ),
    );
    assert.equal(await readFile(path, 'utf8'), 'previous contents');
    assert.deepEqual(await readdir(dir), ['keep.safetensors']);
  });

  it('refuses bad dtypes, shapes, reserved names and metadata', async () => {
    const path = join(await tempDir(), 'x.safetensors');
    const data = new Uint8Array(4);
    await assert.rejects(
      writeSafetensors(path, { a: { dtype: 'F24' as SafetensorsDtype, shape: [1], data } }),
      (error: unknown) =>
        (error as WeightError).code === 'WEIGHT_DTYPE' && /found "F24"/.test((error as Error).message),
    );
    await assert.rejects(
      writeSafetensors(path, { a: { dtype: 'U8', shape: [-4], data } }),
      /non-negative integers, found \[-4\]/,
    );
    await assert.rejects(
      writeSafetensors(path, { __metadata__: { dtype: 'U8', shape: [4], data } }),
      /reserved/,
    );
    await assert.rejects(
      writeSafetensors(path, {}, { step: 3 as unknown as string }),
      (error: unknown) => error instanceof OptionError && error.code === 'SAFETENSORS_METADATA',
    );
    await assert.rejects(readFile(path), /ENOENT/);
  });
});
