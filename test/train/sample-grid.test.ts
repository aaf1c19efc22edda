import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { PNG } from 'pngjs';

import { OptionError } from '../../src/errors.js';
import {
  gridLayout,
  gridPixels,
  renderSampleGrid,
  tensorImages,
  type RgbImage,
  type SampleGrid,
} from '../../src/train/sample-grid.js';
import { seededUniform, testSeed } from '../random.js';

const random = seededUniform(testSeed('test/train/sample-grid.test.ts'));

function randomImage(size: number): RgbImage {
  return {
    width: size,
    height: size,
    data: Uint8Array.from({ length: size * size * 3 }, () => Math.floor(random() * 256)),
  };
}

function randomGrid(rows: number, columns: number, size: number, labels: boolean): SampleGrid {
  return {
    title: labels ? ['step 7: a title', 'a second line'] : undefined,
    columnLabels: labels ? Array.from({ length: columns }, (_, c) => `seed ${c}`) : undefined,
    rows: Array.from({ length: rows }, (_, r) => ({
      label: labels ? `prompt ${r}` : undefined,
      cells: Array.from({ length: columns }, (_, c) => ({
        image: randomImage(size),
        caption: labels && c === 0 ? 'a caption longer than the tile is wide, cut short' : undefined,
      })),
    })),
  };
}

/** Checks that every tile of `rgb` (width `width`, `channels` per pixel) holds its image enlarged by `scale`. */
function assertTiles(grid: SampleGrid, rgb: Uint8Array, width: number, channels: number): void {
  const layout = gridLayout(grid);
  for (const [r, row] of grid.rows.entries()) {
    for (const [c, cell] of row.cells.entries()) {
      const { x: left, y: top } = layout.tiles[r][c];
      const { image } = cell;
      for (let y = 0; y < image.height * layout.scale; y++) {
        for (let x = 0; x < image.width * layout.scale; x++) {
          const from = (Math.floor(y / layout.scale) * image.width + Math.floor(x / layout.scale)) * 3;
          const to = ((top + y) * width + left + x) * channels;
          for (let k = 0; k < 3; k++) {
            if (rgb[to + k] !== image.data[from + k]) {
              assert.fail(
                `tile (${r}, ${c}) pixel (${x}, ${y}) channel ${k}: ${rgb[to + k]} ≠ ${image.data[from + k]}`,
              );
            }
          }
        }
      }
    }
  }
}

describe('sample grid', () => {
  it('places every image, enlarged by whole pixels, in its tile', () => {
    const size = 8 + Math.floor(random() * 24);
    const grid = randomGrid(2 + Math.floor(random() * 2), 2 + Math.floor(random() * 3), size, true);
    const layout = gridLayout(grid);
    assert.equal(layout.scale, Math.max(1, Math.round(128 / size)));
    const pixels = gridPixels(grid, layout);
    assertTiles(grid, pixels.data, pixels.width, 3);
  });

  it('renders a PNG of the layout size: tiles untouched by the labels, the labels drawn as text', async () => {
    const grid = randomGrid(2, 3, 16, true);
    const layout = gridLayout(grid);
    const image = PNG.sync.read(Buffer.from(await renderSampleGrid(grid)));
    assert.equal(image.width, layout.width);
    assert.equal(image.height, layout.height);
    assertTiles(grid, image.data, image.width, 4);
    // The first row's label sits between the column labels and the first tiles: some dark pixels.
    const label = layout.texts.find((t) => t.text === 'prompt 0');
    assert.ok(label);
    let dark = 0;
    for (let y = label.y - 10; y < label.y + 2; y++) {
      for (let x = label.x; x < label.x + 60; x++) if (image.data[(y * image.width + x) * 4] < 128) dark++;
    }
    assert.ok(dark > 20, `${dark} dark pixels where 'prompt 0' is written`);
    const caption = layout.texts.find((t) => t.text.startsWith('a caption'));
    assert.ok(caption && caption.text.endsWith('…'), 'a caption is cut to the tile width');
  });

  it('cuts a column label to its column (tile and gap: 134 px, 18 characters at 12 px)', () => {
    const grid = randomGrid(1, 2, 16, true);
    const long = 'a column label longer than its column';
    const layout = gridLayout({ ...grid, columnLabels: [long, 'seed 1'] });
    const labels = layout.texts.filter((t) => !t.bold && t.text !== 'a second line').slice(0, 2);
    assert.deepEqual(
      labels.map((t) => t.text),
      [`${long.slice(0, 17)}…`, 'seed 1'],
    );
  });

  it('without labels, the PNG is the tiles alone', async () => {
    const grid = randomGrid(2, 2, 12, false);
    const image = PNG.sync.read(Buffer.from(await renderSampleGrid(grid)));
    const layout = gridLayout(grid);
    assert.deepEqual([image.width, image.height], [layout.width, layout.height]);
    assertTiles(grid, image.data, image.width, 4);
  });

  it('refuses images of another size, naming the row and column', () => {
    const grid = randomGrid(2, 2, 8, false);
    const rows = grid.rows.map((row) => ({ ...row, cells: [...row.cells] }));
    rows[1].cells[1] = { image: randomImage(9) };
    assert.throws(
      () => gridLayout({ rows }),
      (e: unknown) => {
        assert.ok(e instanceof OptionError);
        assert.match(e.message, /image \(row 1, column 1\) is 9×9/);
        return true;
      },
    );
  });

  it('converts float images in [0, 1] and [-1, 1] to bytes', () => {
    const [n, h, w] = [2, 3, 5];
    const data = Float32Array.from({ length: n * 3 * h * w }, () => random() * 2.4 - 1.2);
    for (const range of ['unit', 'signed'] as const) {
      const images = tensorImages(data, [n, 3, h, w], range);
      for (let b = 0; b < n; b++) {
        for (let c = 0; c < 3; c++) {
          for (let i = 0; i < h * w; i++) {
            const v = data[(b * 3 + c) * h * w + i];
            const unit = range === 'unit' ? v : (v + 1) / 2;
            assert.equal(images[b].data[i * 3 + c], Math.round(Math.min(1, Math.max(0, unit)) * 255));
          }
        }
      }
    }
  });
});
