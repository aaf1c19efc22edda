// Training data: real emoji from the packages (a handful, decoded again by an independent decoder),
// crafted emoji packages for the cache key, crafted image folders with bad files of every kind, the
// split on the whole catalogue, and the loader's resume.
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { PNG } from 'pngjs';
import sharp from 'sharp';
import { encodePng } from '../../src/io/png.js';
import {
  DataLoader,
  DatasetError,
  compositeOnWhite,
  datasetImage,
  decodeImage,
  loadEmojiDataset,
  loadImageFolder,
  readEmojiCatalogue,
  resolveEmojiSources,
  splitIndices,
  splitMembers,
  type Batch,
  type EmojiSources,
  type ImageTextDataset,
} from '../../src/train/data/index.js';
import type { VelodiffWarning } from '../../src/warnings.js';
import { assertExactlyEqual, assertMaxAbsError } from '../compare.js';
import { seededUniform, testSeed } from '../random.js';

let work: string;
before(() => {
  work = mkdtempSync(join(tmpdir(), 'velodiff-data-'));
});
after(() => rmSync(work, { recursive: true, force: true }));

/** A fresh folder under the test's temporary folder. */
function folder(name: string): string {
  const dir = join(work, name);
  mkdirSync(dir, { recursive: true });
  return dir;
}

function writeFile(path: string, data: Uint8Array | string): void {
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(path, data);
}

/** Float64 reference of compositing on white: α·c + (1 − α)·255 per channel, not rounded. */
function compositeReference(rgba: ArrayLike<number>): Float64Array {
  const pixels = rgba.length / 4;
  const out = new Float64Array(pixels * 3);
  for (let p = 0; p < pixels; p++) {
    const alpha = rgba[p * 4 + 3] / 255;
    for (let c = 0; c < 3; c++) out[p * 3 + c] = alpha * rgba[p * 4 + c] + (1 - alpha) * 255;
  }
  return out;
}

/** RGBA test pixels with every alpha class: transparent, opaque and in between, in random colours. */
function randomRgba(width: number, height: number, uniform: () => number): Uint8Array {
  const rgba = new Uint8Array(width * height * 4);
  for (let i = 0; i < rgba.length; i++) rgba[i] = Math.floor(uniform() * 256);
  for (let p = 0; p < width * height; p++) {
    if (p % 5 === 0) rgba[p * 4 + 3] = 0;
    if (p % 5 === 1) rgba[p * 4 + 3] = 255;
  }
  return rgba;
}

/** Solid RGB rectangles side by side, as one RGB image. */
function stripes(
  width: number,
  height: number,
  columns: readonly (readonly [number, readonly number[]])[],
): Uint8Array {
  const rgb = new Uint8Array(width * height * 3);
  for (let y = 0; y < height; y++) {
    let x = 0;
    for (const [span, colour] of columns) {
      for (let k = 0; k < span; k++, x++) rgb.set(colour, (y * width + x) * 3);
    }
  }
  return rgb;
}

const RED = [220, 30, 40];
const BLUE = [20, 60, 200];
const GREEN = [30, 180, 60];

describe('compositing on white', () => {
  it('equals the float64 α·c + (1 − α)·255 within rounding, through PNG decoding', async () => {
    const uniform = seededUniform(testSeed('compositing pixels'));
    const [width, height] = [13, 7];
    const rgba = randomRgba(width, height, uniform);
    const decoded = await decodeImage(encodePng(rgba, width, height, 4));
    assert.deepEqual([decoded.width, decoded.height], [width, height]);
    assertExactlyEqual(decoded.data, rgba, 'decoded RGBA');
    const rgb = compositeOnWhite(decoded);
    // Rounding to the nearest byte: at most half a level from the exact value.
    assertMaxAbsError(rgb, compositeReference(rgba), 0.5 + 1e-9, 'composited RGB');
    // Transparent pixels are white, opaque ones keep their colour.
    for (let p = 0; p < width * height; p += 5)
      assert.deepEqual([...rgb.subarray(p * 3, p * 3 + 3)], [255, 255, 255]);
    assert.deepEqual([...rgb.subarray(3, 6)], [...rgba.subarray(4, 7)]);
  });
});

describe('emoji from the packages', () => {
  const unified = ['2764-FE0F', '1F385', '1F1EF-1F1F5'];
  let cacheDir: string;
  let dataset: ImageTextDataset;
  before(async () => {
    cacheDir = folder('emoji-cache');
    dataset = await loadEmojiDataset({ unified, cacheDir });
  });

  it('has both styles of each, skin tones included, with names first and the style in the caption', () => {
    // red heart and the flag have no skin tones; Santa Claus has five: 1 + 6 + 1 per set.
    assert.equal(dataset.items.length, 16);
    const byId = new Map(dataset.items.map((item) => [item.id, item]));
    assert.deepEqual(byId.get('noto/2764-FE0F')?.captions[0], 'red heart, noto style');
    assert.deepEqual(byId.get('twemoji/2764-FE0F')?.captions[1], 'red heart');
    assert.equal(
      byId.get('twemoji/1F385-1F3FE')?.captions[0],
      'Santa Claus, medium-dark skin tone, twemoji style',
    );
    assert.equal(byId.get('noto/1F1EF-1F1F5')?.captions[0], 'flag: Japan, noto style');
    for (const item of dataset.items) {
      const style = item.id.startsWith('noto/') ? 'noto style' : 'twemoji style';
      assert.ok(item.captions.length >= 4, `${item.id}: ${item.captions.length} caption variants`);
      assert.ok(
        item.captions.some((c) => c.includes(style)),
        `${item.id} never says ${style}`,
      );
      const name = item.captions[1];
      assert.ok(
        item.captions.every((c) => c.startsWith(name.split(',')[0])),
        `${item.id}: ${item.captions.join(' | ')}`,
      );
    }
  });

  it('labels each image with its category, subcategory and style', () => {
    const names = dataset.labelNames;
    assert.ok(names !== undefined);
    assert.equal(names.category.length, 10);
    assert.equal(names.subcategory.length, 99);
    assert.deepEqual(names.style, ['noto', 'twemoji']);
    const heart = dataset.items.find((item) => item.id === 'twemoji/2764-FE0F');
    assert.ok(heart?.labels !== undefined);
    assert.equal(names.category[heart.labels.category], 'Smileys & Emotion');
    assert.equal(names.subcategory[heart.labels.subcategory], 'heart');
    assert.equal(names.style[heart.labels.style], 'twemoji');
    const flag = dataset.items.find((item) => item.id === 'noto/1F1EF-1F1F5');
    assert.equal(names.subcategory[flag?.labels?.subcategory ?? -1], 'country-flag');
  });

  it('has the packages’ pixels on white, as an independent PNG decoder and float64 compositing give them', async () => {
    const catalogue = await readEmojiCatalogue({ unified });
    assert.equal(catalogue.records.length, dataset.items.length);
    catalogue.records.forEach((record, index) => {
      const png = PNG.sync.read(readFileSync(record.imagePath));
      assert.deepEqual([png.width, png.height], [64, 64]);
      assertMaxAbsError(
        datasetImage(dataset, index),
        compositeReference(png.data),
        0.5 + 1e-9,
        record.imagePath,
      );
    });
  });

  it('is read from the cache the second time, with the same pixels, items and split', async () => {
    assert.equal(dataset.fromCache, false);
    const again = await loadEmojiDataset({ unified, cacheDir });
    assert.equal(again.fromCache, true);
    assert.equal(again.cacheEntry, dataset.cacheEntry);
    assertExactlyEqual(again.pixels, dataset.pixels, 'cached pixels');
    assert.deepEqual(again.items, dataset.items);
    assert.deepEqual(again.split, dataset.split);
  });

  it('resizes to another size (32×32) close to a 2×2 average of the 64×64 images', async () => {
    const small = await loadEmojiDataset({ unified: ['2764-FE0F'], size: 32, cacheDir });
    assert.equal(small.fromCache, false);
    assert.equal(small.pixels.length, 2 * 32 * 32 * 3);
    const full = await loadEmojiDataset({ unified: ['2764-FE0F'], cacheDir });
    for (let i = 0; i < 2; i++) {
      const big = datasetImage(full, i);
      const average = new Float64Array(32 * 32 * 3);
      for (let y = 0; y < 32; y++)
        for (let x = 0; x < 32; x++)
          for (let c = 0; c < 3; c++) {
            let sum = 0;
            for (const [dy, dx] of [
              [0, 0],
              [0, 1],
              [1, 0],
              [1, 1],
            ])
              sum += big[((2 * y + dy) * 64 + 2 * x + dx) * 3 + c];
            average[(y * 32 + x) * 3 + c] = sum / 4;
          }
      const resized = datasetImage(small, i);
      let total = 0;
      for (let k = 0; k < average.length; k++) total += Math.abs(resized[k] - average[k]);
      // Lanczos-3 is sharper than a box filter at the heart's edge; inside it they agree.
      assert.ok(total / average.length < 4, `mean |lanczos − box| = ${total / average.length} levels`);
    }
  });
});

describe('the emoji cache key', () => {
  /** A one-emoji package of each kind, in the packages' layouts, whose image the test can change. */
  function craftSources(dir: string, rgba: Uint8Array): EmojiSources {
    const google = join(dir, 'emoji-datasource-google');
    const entry = {
      name: 'HEAVY BLACK HEART',
      unified: '2764-FE0F',
      image: '2764-fe0f.png',
      short_names: ['heart'],
      category: 'Smileys & Emotion',
      subcategory: 'heart',
      sort_order: 1,
      has_img_google: true,
    };
    writeFile(join(google, 'emoji.json'), JSON.stringify([entry]));
    writeFile(join(google, 'img/google/64/2764-fe0f.png'), encodePng(rgba, 64, 64, 4));
    const emojibase = join(dir, 'emojibase-data');
    writeFile(
      join(emojibase, 'en/data.json'),
      JSON.stringify([{ label: 'red heart', hexcode: '2764', tags: ['love'] }]),
    );
    return { packageDirs: { google }, emojibaseDir: emojibase };
  }

  it('changes with an image’s bytes and with the options, and not otherwise', async () => {
    const uniform = seededUniform(testSeed('crafted emoji'));
    const dir = folder('crafted-emoji');
    const cacheDir = join(dir, 'cache');
    const first = randomRgba(64, 64, uniform);
    const sources = craftSources(dir, first);
    const load = (validationFraction = 0.1) =>
      loadEmojiDataset({ sets: ['google'], sources, cacheDir, validationFraction });
    const a = await load();
    assert.equal(a.fromCache, false);
    assert.deepEqual(a.items[0].captions.slice(0, 2), ['red heart, noto style', 'red heart']);
    assertMaxAbsError(a.pixels, compositeReference(first), 0.5 + 1e-9, 'crafted emoji');
    // The split is computed when loading, so its fraction is not part of the key.
    assert.equal((await load(0.5)).fromCache, true);

    const second = randomRgba(64, 64, uniform);
    writeFile(join(dir, 'emoji-datasource-google/img/google/64/2764-fe0f.png'), encodePng(second, 64, 64, 4));
    const b = await load();
    assert.equal(b.fromCache, false, 'a changed image must be prepared again');
    assert.notEqual(b.cacheEntry, a.cacheEntry);
    assert.notEqual(b.key, a.key);
    assertMaxAbsError(b.pixels, compositeReference(second), 0.5 + 1e-9, 'changed crafted emoji');
    assert.equal((await load()).fromCache, true);

    const sized = await loadEmojiDataset({ sets: ['google'], sources, cacheDir, size: 16 });
    assert.equal(sized.fromCache, false, 'another size is another entry');
  });
});

describe('the split', () => {
  it('keeps every emoji’s styles and skin tones together, has every category, and is deterministic', async () => {
    const { records, categories } = await readEmojiCatalogue();
    assert.equal(records.length, 7572);
    const members = records.map((r) => ({ group: r.baseUnified, stratum: r.category }));
    const split = splitMembers(members, 0.1);
    // Any order of the input gives each member the same side.
    const uniform = seededUniform(testSeed('split order'));
    const order = members.map((_, i) => i).sort(() => uniform() - 0.5);
    const shuffled = splitMembers(
      order.map((i) => members[i]),
      0.1,
    );
    order.forEach((i, k) => assert.equal(shuffled[k], split[i]));

    const sideOfGroup = new Map<string, string>();
    records.forEach((record, i) => {
      const side = sideOfGroup.get(record.baseUnified);
      if (side !== undefined)
        assert.equal(split[i], side, `${record.set}/${record.unified} straddles the split`);
      sideOfGroup.set(record.baseUnified, split[i]);
    });
    for (const category of categories) {
      const groups = new Set(records.filter((r) => r.category === category).map((r) => r.baseUnified));
      const held = [...groups].filter((g) => sideOfGroup.get(g) === 'validation').length;
      assert.equal(
        held,
        Math.max(1, Math.round(0.1 * groups.size)),
        `${category}: ${held} of ${groups.size} held out`,
      );
    }
    assert.ok(splitMembers(members, 0).every((side) => side === 'train'));
  });
});

describe('an image folder', () => {
  /** Writes a folder with two good images (PNG with alpha in a subfolder, JPEG) and one bad entry of each kind. */
  async function craftFolder(dir: string, uniform: () => number) {
    const rgba = randomRgba(64, 64, uniform);
    writeFile(join(dir, 'images/nested/alpha.png'), encodePng(rgba, 64, 64, 4));
    // 128×64: a centre crop at 64 is the blue middle, exactly (no scaling).
    const wide = stripes(128, 64, [
      [32, RED],
      [64, BLUE],
      [32, GREEN],
    ]);
    writeFile(join(dir, 'wide.png'), encodePng(wide, 128, 64, 3));
    // A JPEG, tall: the centre crop is its green middle.
    const tall = await sharp(stripes(64, 128, [[64, GREEN]]), {
      raw: { width: 64, height: 128, channels: 3 },
    })
      .jpeg({ quality: 95 })
      .toBuffer();
    writeFile(join(dir, 'photo.jpg'), tall);
    writeFile(join(dir, 'notes.gif'), Uint8Array.from([0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 1, 0, 1, 0]));
    const png = encodePng(rgba, 64, 64, 4);
    writeFile(join(dir, 'broken.png'), png.subarray(0, 60));
    const lines = [
      { file_name: 'images/nested/alpha.png', text: 'a noisy square' },
      { file_name: 'wide.png', text: 'blue in the middle' },
      '{"file_name": "photo.jpg", "text": "green"', // line 3: bad JSON
      { file_name: 'photo.jpg', text: 'all green' },
      { file_name: 'gone.png', text: 'a missing file' },
      { file_name: 'notes.gif', text: 'a GIF' },
      { file_name: 'broken.png', text: 'a truncated PNG' },
      { text: 'no file name' },
      { file_name: 'wide.png' },
      { file_name: '../outside.png', text: 'escapes' },
      { file_name: 'wide.png', text: 'a second caption of wide.png' },
    ];
    writeFile(
      join(dir, 'metadata.jsonl'),
      `${lines.map((l) => (typeof l === 'string' ? l : JSON.stringify(l))).join('\n')}\n\n`,
    );
    return { rgba };
  }

  const expectedBad = [
    { kind: 'bad-json', line: 3 },
    { kind: 'missing-file', line: 5, file: 'gone.png' },
    { kind: 'unsupported-format', line: 6, file: 'notes.gif' },
    { kind: 'undecodable', line: 7, file: 'broken.png' },
    { kind: 'missing-file-name', line: 8 },
    { kind: 'missing-text', line: 9, file: 'wide.png' },
    { kind: 'outside-folder', line: 10, file: '../outside.png' },
  ];

  it('with onBadFile "error" stops, naming every bad entry by line and file with what is wrong', async () => {
    const dir = folder('folder-error');
    await craftFolder(dir, seededUniform(testSeed('image folder (error)')));
    await assert.rejects(loadImageFolder(dir, { cacheDir: join(dir, '.cache') }), (error: unknown) => {
      assert.ok(error instanceof DatasetError);
      assert.equal(error.code, 'DATA_BAD_FILES');
      assert.deepEqual(
        error.badFiles.map((b) => ({
          kind: b.kind,
          line: b.line,
          ...(b.file === undefined ? {} : { file: b.file }),
        })),
        expectedBad,
      );
      for (const text of [
        'metadata.jsonl:3: not valid JSON',
        'metadata.jsonl:5: gone.png: no such file',
        'metadata.jsonl:6: notes.gif: GIF: only PNG and JPEG files are read',
        'metadata.jsonl:7: broken.png: cannot be decoded',
        'metadata.jsonl:8: no "file_name" string',
        'metadata.jsonl:9: wide.png: no "text" caption',
        'metadata.jsonl:10: ../outside.png: file_name leaves the data folder',
        "onBadFile: 'skip'",
      ]) {
        assert.ok(error.message.includes(text), `missing '${text}' in:\n${error.message}`);
      }
      return true;
    });
    // Reported again from the cache, without decoding anything.
    await assert.rejects(loadImageFolder(dir, { cacheDir: join(dir, '.cache') }), /7 of the 11 lines of /);
  });

  it('with onBadFile "skip" trains on the rest, with one warning that lists what was skipped', async () => {
    const dir = folder('folder-skip');
    const { rgba } = await craftFolder(dir, seededUniform(testSeed('image folder (skip)')));
    const warnings: VelodiffWarning[] = [];
    const options = {
      onBadFile: 'skip',
      cacheDir: join(dir, '.cache'),
      onWarning: (w: VelodiffWarning) => warnings.push(w),
    } as const;
    const dataset = await loadImageFolder(dir, options);
    assert.equal(warnings.length, 1);
    assert.equal(warnings[0].code, 'DATA_FILES_SKIPPED');
    assert.match(
      warnings[0].message,
      /^Skipped 7 of the 11 lines of .*metadata\.jsonl:\n {2}metadata\.jsonl:3: not valid JSON/,
    );
    assert.deepEqual(
      dataset.badFiles.map((b) => b.kind),
      expectedBad.map((b) => b.kind),
    );

    assert.deepEqual(
      dataset.items.map((item) => [item.id, item.captions]),
      [
        ['images/nested/alpha.png', ['a noisy square']],
        ['wide.png', ['blue in the middle', 'a second caption of wide.png']],
        ['photo.jpg', ['all green']],
      ],
    );
    assert.equal(dataset.labelNames, undefined);
    assert.ok(dataset.split.every((side) => side === 'train'));
    assertMaxAbsError(datasetImage(dataset, 0), compositeReference(rgba), 0.5 + 1e-9, 'nested PNG on white');
    assertExactlyEqual(datasetImage(dataset, 1), stripes(64, 64, [[64, BLUE]]), 'centre crop of wide.png');
    // JPEG is lossy: a flat colour comes back within a few levels.
    assertMaxAbsError(
      datasetImage(dataset, 2),
      stripes(64, 64, [[64, GREEN]]),
      4,
      'centre crop of photo.jpg',
    );

    const again = await loadImageFolder(dir, options);
    assert.equal(again.fromCache, true);
    assert.equal(warnings.length, 2, 'the skip summary is given again on a cached load');
    assertExactlyEqual(again.pixels, dataset.pixels, 'cached folder pixels');
    // A touched image is a changed input.
    utimesSync(join(dir, 'wide.png'), new Date(), new Date(Date.now() + 5000));
    assert.equal((await loadImageFolder(dir, options)).fromCache, false);
  });

  it('shrinks a larger image so its shorter side fits, then crops the centre', async () => {
    const dir = folder('folder-resize');
    // 256×128: left and right quarters red and green, the middle half blue. At 32 the crop is the blue middle.
    const image = stripes(256, 128, [
      [64, RED],
      [128, BLUE],
      [64, GREEN],
    ]);
    writeFile(join(dir, 'a.png'), encodePng(image, 256, 128, 3));
    writeFile(join(dir, 'metadata.jsonl'), `${JSON.stringify({ file_name: 'a.png', text: 'stripes' })}\n`);
    const dataset = await loadImageFolder(dir, { size: 32, cacheDir: false });
    assert.equal(dataset.cacheEntry, undefined);
    const pixels = datasetImage(dataset, 0);
    // Away from the crop's left and right edges (Lanczos-3 reaches 3 source pixels) it is pure blue.
    const inner: number[] = [];
    const expected: number[] = [];
    for (let y = 0; y < 32; y++)
      for (let x = 3; x < 29; x++) {
        inner.push(...pixels.subarray((y * 32 + x) * 3, (y * 32 + x) * 3 + 3));
        expected.push(...BLUE);
      }
    assertMaxAbsError(inner, expected, 1, 'inner columns of the crop');
  });

  it('without metadata.jsonl is an error that says what the folder needs', async () => {
    const dir = folder('folder-empty');
    await assert.rejects(loadImageFolder(dir, { cacheDir: false }), (error: unknown) => {
      assert.ok(error instanceof DatasetError);
      assert.equal(error.code, 'IMAGEFOLDER_NO_METADATA');
      assert.match(error.message, /metadata\.jsonl cannot be read \(there is no such file\).*"file_name"/s);
      return true;
    });
  });
});

describe('the loader', () => {
  /** A data set of random images with 1–3 caption variants and labels, half of it in validation. */
  function syntheticDataset(count: number, size: number, uniform: () => number): ImageTextDataset {
    const pixels = new Uint8Array(count * size * size * 3);
    for (let i = 0; i < pixels.length; i++) pixels[i] = Math.floor(uniform() * 256);
    const items = Array.from({ length: count }, (_, i) => ({
      id: `image-${i}`,
      captions: Array.from({ length: 1 + (i % 3) }, (_, v) => `image ${i} caption ${v}`),
      group: `image-${i}`,
      labels: { category: i % 4, subcategory: i % 7, style: i % 2 },
    }));
    return {
      size,
      pixels,
      items,
      labelNames: {
        category: ['a', 'b', 'c', 'd'],
        subcategory: ['0', '1', '2', '3', '4', '5', '6'],
        style: ['noto', 'twemoji'],
      },
      split: items.map((_, i) => (i % 5 === 0 ? 'validation' : 'train')),
      badFiles: [],
      key: 'synthetic',
      cacheEntry: undefined,
      fromCache: false,
    };
  }

  function assertSameBatch(actual: Batch, expected: Batch, what: string): void {
    assert.deepEqual(actual.indices, expected.indices, `${what}: indices`);
    assert.deepEqual(actual.captions, expected.captions, `${what}: captions`);
    assert.deepEqual(actual.flipped, expected.flipped, `${what}: flips`);
    assert.deepEqual(actual.labels, expected.labels, `${what}: labels`);
    assert.equal(actual.epoch, expected.epoch, `${what}: epoch`);
    assertExactlyEqual(actual.images, expected.images, `${what}: images`);
  }

  it('gives [B,3,H,W] in [-1, 1], the data set’s bytes channel-first, with labels and captions', () => {
    const uniform = seededUniform(testSeed('loader batches'));
    const dataset = syntheticDataset(40, 6, uniform);
    const loader = new DataLoader(dataset, {
      batchSize: 4,
      seed: Math.floor(uniform() * 2 ** 32),
      captions: 'first',
    });
    const batch = loader.next();
    assert.deepEqual(batch.shape, [4, 3, 6, 6]);
    batch.indices.forEach((index, b) => {
      const bytes = datasetImage(dataset, index);
      const expected = new Float64Array(3 * 36);
      for (let c = 0; c < 3; c++)
        for (let p = 0; p < 36; p++) expected[c * 36 + p] = (bytes[p * 3 + c] * 2) / 255 - 1;
      assertMaxAbsError(batch.images.subarray(b * 108, (b + 1) * 108), expected, 1e-6, `image ${index}`);
      assert.equal(batch.captions[b], dataset.items[index].captions[0]);
      assert.equal(batch.labels?.category[b], index % 4);
      assert.equal(batch.labels?.subcategory[b], index % 7);
      assert.equal(dataset.split[index], 'train');
    });
    assert.ok(
      batch.flipped.every((f) => !f),
      'no flip unless asked',
    );
  });

  it('visits each training image once per epoch, in a new order each epoch, the same for the same seed', () => {
    const uniform = seededUniform(testSeed('loader epochs'));
    const dataset = syntheticDataset(50, 2, uniform);
    const seed = Math.floor(uniform() * 2 ** 32);
    const train = splitIndices(dataset, 'train');
    const epochOrder = (loader: DataLoader) => {
      const seen: number[] = [];
      for (let k = 0; k < loader.batchesPerEpoch; k++) seen.push(...loader.next().indices);
      return seen;
    };
    const loader = new DataLoader(dataset, { batchSize: 8, seed });
    assert.equal(loader.batchesPerEpoch, 5); // 40 training images
    const first = epochOrder(loader);
    const second = epochOrder(loader);
    assert.deepEqual(
      [...first].sort((a, b) => a - b),
      train,
    );
    assert.deepEqual(
      [...second].sort((a, b) => a - b),
      train,
    );
    assert.notDeepEqual(first, second);
    assert.deepEqual(epochOrder(new DataLoader(dataset, { batchSize: 8, seed })), first);
    assert.notDeepEqual(epochOrder(new DataLoader(dataset, { batchSize: 8, seed: (seed + 1) >>> 0 })), first);
    const validation = new DataLoader(dataset, { batchSize: 10, split: 'validation', shuffle: false });
    assert.deepEqual(validation.next().indices, splitIndices(dataset, 'validation'));
  });

  it('resumed from a saved state gives exactly the batches of an uninterrupted run', () => {
    const uniform = seededUniform(testSeed('loader resume'));
    const dataset = syntheticDataset(37, 4, uniform);
    const options = {
      batchSize: 5,
      seed: Math.floor(uniform() * 2 ** 32),
      horizontalFlip: true,
      captionDropout: 0.2,
    };
    const uninterrupted = new DataLoader(dataset, options);
    const reference = Array.from({ length: 20 }, () => uninterrupted.next()); // crosses 3 epochs of 5 batches
    for (const stop of [1, 5, 7, 13]) {
      const first = new DataLoader(dataset, options);
      for (let k = 0; k < stop; k++)
        assertSameBatch(first.next(), reference[k], `batch ${k} before the stop`);
      // Through JSON, as a checkpoint keeps it.
      const state = JSON.parse(JSON.stringify(first.state)) as typeof first.state;
      const resumed = new DataLoader(dataset, { ...options, seed: 12345, state });
      for (let k = stop; k < reference.length; k++)
        assertSameBatch(resumed.next(), reference[k], `batch ${k} resumed at ${stop}`);
    }
    assert.deepEqual(uninterrupted.state.epoch, 3);
  });

  it('mirrors, drops captions and picks caption variants as asked, by seed', () => {
    const uniform = seededUniform(testSeed('loader draws'));
    const dataset = syntheticDataset(300, 3, uniform);
    const loader = new DataLoader(dataset, {
      batchSize: 240,
      seed: 7,
      horizontalFlip: true,
      captionDropout: 0.25,
    });
    const batch = loader.next();
    const flips = batch.flipped.filter(Boolean).length;
    const drops = batch.captions.filter((c) => c === '').length;
    // The synthetic captions are never empty: a caption is "" exactly where the batch says dropped.
    assert.deepEqual(
      batch.dropped,
      batch.captions.map((c) => c === ''),
    );
    assert.ok(flips > 80 && flips < 160, `${flips} of 240 mirrored`);
    assert.ok(drops > 30 && drops < 90, `${drops} of 240 captions dropped`);
    const variants = new Set(batch.captions.filter((c) => c !== '').map((c) => c.slice(-1)));
    assert.deepEqual([...variants].sort(), ['0', '1', '2']);
    batch.indices.forEach((index, b) => {
      if (!batch.flipped[b]) return;
      const bytes = datasetImage(dataset, index);
      for (let y = 0; y < 3; y++)
        for (let x = 0; x < 3; x++)
          assert.equal(
            batch.images[b * 27 + y * 3 + x],
            Math.fround(bytes[(y * 3 + (2 - x)) * 3] / 127.5 - 1),
          );
    });
    const all = new DataLoader(dataset, { batchSize: 240, captionDropout: 1 }).next();
    assert.ok(all.captions.every((c) => c === ''));
    assert.ok(all.dropped.every((d) => d));
    const none = new DataLoader(dataset, { batchSize: 240 }).next();
    assert.ok(none.dropped.every((d) => !d) && none.captions.every((c) => c !== ''));
  });

  it('with maxPerGroup draws at most that many images of each group per epoch, others in turn, resumably', () => {
    const uniform = seededUniform(testSeed('loader maxPerGroup'));
    // Groups of 1 to 12 images, as emoji have (2 styles, or 2 styles × 6 skin tones), all in train.
    const sizes = Array.from({ length: 30 }, () => [1, 2, 2, 12][Math.floor(uniform() * 4)]);
    const base = syntheticDataset(
      sizes.reduce((a, b) => a + b),
      2,
      uniform,
    );
    const groupOf = sizes.flatMap((n, g) => Array.from({ length: n }, () => `group-${g}`));
    const dataset: ImageTextDataset = {
      ...base,
      items: base.items.map((item, i) => ({ ...item, group: groupOf[i] })),
      split: base.items.map(() => 'train'),
    };
    const cap = 2;
    const expectedLength = sizes.reduce((n, size) => n + Math.min(size, cap), 0);
    // dropLast false: every epoch's draw is seen whole.
    const options = {
      batchSize: 4,
      seed: Math.floor(uniform() * 2 ** 32),
      maxPerGroup: cap,
      dropLast: false,
    };
    const loader = new DataLoader(dataset, options);
    assert.equal(loader.epochLength, expectedLength);
    const epochs: number[][] = [];
    for (let e = 0; e < 12; e++) {
      const seen: number[] = [];
      for (let k = 0; k < loader.batchesPerEpoch; k++) seen.push(...loader.next().indices);
      epochs.push(seen);
      // Every group, with min(size, cap) distinct images; nothing drawn twice in an epoch.
      const perGroup = new Map<string, Set<number>>();
      for (const index of seen) {
        const members = perGroup.get(groupOf[index]) ?? new Set<number>();
        assert.ok(!members.has(index), `epoch ${e}: image ${index} twice`);
        perGroup.set(groupOf[index], members.add(index));
      }
      assert.equal(seen.length, expectedLength);
      sizes.forEach((size, g) => assert.equal(perGroup.get(`group-${g}`)?.size, Math.min(size, cap)));
    }
    // A 12-image group shows different members in different epochs, and over 12 epochs most of them.
    const big = sizes.findIndex((n) => n === 12);
    if (big >= 0) {
      const shown = new Set(epochs.flat().filter((i) => groupOf[i] === `group-${big}`));
      assert.ok(shown.size >= 8, `a 12-image group showed ${shown.size} distinct images in 12 epochs`);
    }
    // Resumed mid-run from its state: the same batches.
    const reference = new DataLoader(dataset, options);
    const batches = Array.from({ length: 40 }, () => reference.next());
    const first = new DataLoader(dataset, options);
    for (let k = 0; k < 17; k++) first.next();
    const resumed = new DataLoader(dataset, { ...options, state: first.state });
    for (let k = 17; k < 40; k++) assertSameBatch(resumed.next(), batches[k], `batch ${k} resumed at 17`);
    // No cap: every image; a bad cap: an error.
    assert.equal(new DataLoader(dataset, { batchSize: 4 }).epochLength, dataset.items.length);
    for (const bad of [0, 1.5, -1, Number.NaN]) {
      assert.throws(() => new DataLoader(dataset, { batchSize: 4, maxPerGroup: bad }), /maxPerGroup must be/);
    }
  });

  it('keeps the last, smaller batch with dropLast false and refuses a bad state', () => {
    const dataset = syntheticDataset(10, 2, seededUniform(1));
    const loader = new DataLoader(dataset, { batchSize: 3, dropLast: false }); // 8 training images
    assert.deepEqual(
      [loader.next(), loader.next(), loader.next()].map((b) => b.shape[0]),
      [3, 3, 2],
    );
    assert.equal(loader.next().epoch, 1);
    assert.throws(
      () => new DataLoader(dataset, { batchSize: 3, state: { epoch: 0, index: 9, seed: 0 } }),
      /past the end/,
    );
    assert.throws(() => new DataLoader(dataset, { batchSize: 9 }), /lower the batch size/);
  });
});

describe('emoji package resolution', () => {
  it('finds the installed packages', () => {
    const sources = resolveEmojiSources();
    assert.match(sources.packageDirs.google ?? '', /emoji-datasource-google$/);
    assert.match(sources.packageDirs.twitter ?? '', /emoji-datasource-twitter$/);
    assert.match(sources.emojibaseDir, /emojibase-data$/);
  });
});
