/**
 * Sample grids: a trainer's images laid out in rows (one prompt, or originals above their
 * reconstructions), enlarged by whole pixels so a 64×64 emoji can be judged, with a label above each
 * row, above each column and under each image. The layout is computed here on RGB bytes; the text is
 * an SVG overlay that sharp renders (librsvg), so the labels are real type, not drawn pixels.
 */
import { importOptional } from '../io/optional-package.js';
import { encodePng } from '../io/png.js';
import { OptionError } from '../errors.js';

/** 8-bit RGB pixels, row-major, interleaved. */
export interface RgbImage {
  readonly width: number;
  readonly height: number;
  readonly data: Uint8Array;
}

export interface GridCell {
  readonly image: RgbImage;
  /** A short line under the image (e.g. a classifier's prediction). */
  readonly caption?: string;
}

export interface GridRow {
  /** A line above the row (e.g. its prompt). */
  readonly label?: string;
  readonly cells: readonly GridCell[];
}

export interface SampleGrid {
  /** Lines above the grid (cut to its width). */
  readonly title?: readonly string[];
  /** One line above each column (e.g. 'seed 0'), cut to the column's width. */
  readonly columnLabels?: readonly string[];
  readonly rows: readonly GridRow[];
}

export interface GridLayoutOptions {
  /** Whole-pixel enlargement of every image (default: the factor that makes a tile about 128 px). */
  readonly scale?: number;
  /** Pixels between tiles (default 6). */
  readonly gap?: number;
  /** Font size of the labels in pixels (default 12). */
  readonly fontSize?: number;
}

/** Where each piece of the grid goes, in pixels. */
export interface GridLayout {
  readonly width: number;
  readonly height: number;
  readonly scale: number;
  /** Top-left corner of each tile, by row then column. */
  readonly tiles: readonly (readonly { x: number; y: number }[])[];
  readonly texts: readonly { x: number; y: number; text: string; size: number; bold: boolean }[];
}

const WHITE = 255;
/** An average glyph's width in em (DejaVu Sans is about 0.6), for fitting labels without measuring them. */
const GLYPH_EM = 0.62;

/** The positions of every tile and label of `grid`. Every image must have the same size. */
export function gridLayout(grid: SampleGrid, options: GridLayoutOptions = {}): GridLayout {
  const first = grid.rows.find((row) => row.cells.length > 0)?.cells[0].image;
  if (!first) throw new OptionError('sample grid: no images');
  for (const [r, row] of grid.rows.entries()) {
    for (const [c, cell] of row.cells.entries()) {
      const { width, height, data } = cell.image;
      if (width !== first.width || height !== first.height || data.length !== width * height * 3) {
        throw new OptionError(
          `sample grid: image (row ${r}, column ${c}) is ${width}×${height} with ${data.length} bytes; ` +
            `expected ${first.width}×${first.height} RGB (${first.width * first.height * 3} bytes) like the first`,
        );
      }
    }
  }
  const scale = options.scale ?? Math.max(1, Math.round(128 / Math.max(first.width, first.height)));
  const gap = options.gap ?? 6;
  const fontSize = options.fontSize ?? 12;
  const line = Math.ceil(fontSize * 1.4);
  const tileWidth = first.width * scale;
  const tileHeight = first.height * scale;
  const columns = Math.max(...grid.rows.map((row) => row.cells.length), grid.columnLabels?.length ?? 0);
  const hasCaptions = grid.rows.some((row) => row.cells.some((cell) => cell.caption));
  const texts: GridLayout['texts'][number][] = [];
  let y = gap;
  const width = gap + columns * (tileWidth + gap);
  for (const [i, title] of (grid.title ?? []).entries()) {
    const size = i === 0 ? fontSize + 2 : fontSize;
    for (const part of wrapText(title, width - 2 * gap, size)) {
      texts.push({ x: gap, y: y + size, text: part, size, bold: i === 0 });
      y += Math.ceil(size * 1.4);
    }
  }
  if (grid.title?.length) y += 4;
  if (grid.columnLabels) {
    for (const [c, label] of grid.columnLabels.entries()) {
      texts.push({
        x: gap + c * (tileWidth + gap),
        y: y + fontSize,
        text: fitText(label, tileWidth + gap, fontSize),
        size: fontSize,
        bold: false,
      });
    }
    y += line;
  }
  const tiles: { x: number; y: number }[][] = [];
  for (const row of grid.rows) {
    if (row.label !== undefined) {
      texts.push({ x: gap, y: y + fontSize, text: row.label, size: fontSize, bold: true });
      y += line;
    }
    tiles.push(row.cells.map((_, c) => ({ x: gap + c * (tileWidth + gap), y })));
    y += tileHeight;
    if (hasCaptions) {
      for (const [c, cell] of row.cells.entries()) {
        if (cell.caption) {
          texts.push({
            x: gap + c * (tileWidth + gap),
            y: y + fontSize,
            text: fitText(cell.caption, tileWidth, fontSize - 1),
            size: fontSize - 1,
            bold: false,
          });
        }
      }
      y += line;
    }
    y += gap;
  }
  return { width, height: y, scale, tiles, texts };
}

/** Breaks `text` at spaces into lines that fit `width` pixels at `size`; a word too long is cut. */
function wrapText(text: string, width: number, size: number): string[] {
  const fits = Math.max(1, Math.floor(width / (size * GLYPH_EM)));
  const lines: string[] = [];
  let current = '';
  for (const word of text.split(' ')) {
    const next = current === '' ? word : `${current} ${word}`;
    if (next.length <= fits || current === '') current = next;
    else {
      lines.push(current);
      current = word;
    }
  }
  lines.push(current);
  return lines.map((line) => fitText(line, width, size));
}

/** Cuts `text` to what fits `width` pixels at `size`. */
function fitText(text: string, width: number, size: number): string {
  const fits = Math.max(1, Math.floor(width / (size * GLYPH_EM)));
  return text.length <= fits ? text : `${text.slice(0, fits - 1)}…`;
}

/** The grid's pixels without the labels: white, with every image enlarged into its tile. */
export function gridPixels(grid: SampleGrid, layout: GridLayout): RgbImage {
  const { width, height, scale } = layout;
  const data = new Uint8Array(width * height * 3).fill(WHITE);
  for (const [r, row] of grid.rows.entries()) {
    for (const [c, cell] of row.cells.entries()) {
      const { x: left, y: top } = layout.tiles[r][c];
      const image = cell.image;
      for (let y = 0; y < image.height * scale; y++) {
        const source = Math.floor(y / scale) * image.width;
        const target = ((top + y) * width + left) * 3;
        for (let x = 0; x < image.width * scale; x++) {
          const from = (source + Math.floor(x / scale)) * 3;
          const to = target + x * 3;
          data[to] = image.data[from];
          data[to + 1] = image.data[from + 1];
          data[to + 2] = image.data[from + 2];
        }
      }
    }
  }
  return { width, height, data };
}

function escapeXml(text: string): string {
  return text.replace(/[<>&'"]/g, (c) => `&#${c.charCodeAt(0)};`);
}

/** The labels as an SVG the size of the grid, transparent elsewhere. */
export function gridLabelsSvg(layout: GridLayout): string {
  const texts = layout.texts.map(
    (t) =>
      `<text x="${t.x}" y="${t.y}" font-size="${t.size}"${t.bold ? ' font-weight="bold"' : ''}>${escapeXml(t.text)}</text>`,
  );
  return (
    `<svg xmlns="http://www.w3.org/2000/svg" width="${layout.width}" height="${layout.height}">` +
    `<g font-family="DejaVu Sans, Helvetica, Arial, sans-serif" fill="#222">${texts.join('')}</g></svg>`
  );
}

/** The grid as PNG bytes: the tiles, and the labels rendered by sharp where there are any. */
export async function renderSampleGrid(
  grid: SampleGrid,
  options: GridLayoutOptions = {},
): Promise<Uint8Array> {
  const layout = gridLayout(grid, options);
  const pixels = gridPixels(grid, layout);
  if (layout.texts.length === 0) return encodePng(pixels.data, pixels.width, pixels.height);
  const sharp = (await importOptional(() => import('sharp'), ['sharp'], 'Labelling the sample grid')).default;
  const png = await sharp(pixels.data, { raw: { width: pixels.width, height: pixels.height, channels: 3 } })
    .composite([{ input: Buffer.from(gridLabelsSvg(layout)), top: 0, left: 0 }])
    .png()
    .toBuffer();
  return new Uint8Array(png);
}

/**
 * Float images [N, 3, H, W] in [0, 1] (a pipeline's output) or [-1, 1] (`range: 'signed'`, the data
 * loader's and the VAE's) → one RgbImage each.
 */
export function tensorImages(
  data: Float32Array,
  shape: readonly number[],
  range: 'unit' | 'signed' = 'unit',
): RgbImage[] {
  const [count, channels, height, width] = shape;
  if (shape.length !== 4 || channels !== 3 || data.length !== count * 3 * height * width) {
    throw new OptionError(
      `tensorImages: expected [N, 3, H, W] float images with N·3·H·W values, found shape [${shape.join(', ')}] with ${data.length}`,
    );
  }
  const plane = height * width;
  return Array.from({ length: count }, (_, n) => {
    const rgb = new Uint8Array(plane * 3);
    for (let c = 0; c < 3; c++) {
      const base = (n * 3 + c) * plane;
      for (let i = 0; i < plane; i++) {
        const unit = range === 'signed' ? data[base + i] / 2 + 0.5 : data[base + i];
        rgb[i * 3 + c] = Math.round(Math.min(1, Math.max(0, unit)) * 255);
      }
    }
    return { width, height, data: rgb };
  });
}

/**
 * The prompts of the README's grid of the shipped model (scripts/sample-grid.ts), also the prompts
 * `bench quant` compares int8 and float32 images on.
 */
export const README_GRID_PROMPTS: readonly string[] = [
  'grinning face, noto style',
  'face with tears of joy, twemoji style',
  'smiling face with sunglasses, noto style',
  'red heart, noto style',
  'blue heart, twemoji style',
  'flag: Japan, twemoji style',
  'flag: Germany, noto style',
  'dog face, noto style',
  'cat face, twemoji style',
  'pizza, twemoji style',
  'red apple, noto style',
  'rocket, noto style',
];
