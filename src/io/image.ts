/**
 * Reading an image file into the tensor image-to-image takes: [1, 3, H, W] float32 in [0, 1], RGB,
 * alpha dropped (as PIL's `convert("RGB")` in diffusers' `load_image`). PNG files (8 or 16 bits,
 * grey, RGB, palette, with or without alpha, not interlaced) are decoded here with node:zlib; JPEG,
 * WebP, interlaced PNG and the rest through the optional `sharp` package.
 */
import { readFile } from 'node:fs/promises';
import { inflateSync } from 'node:zlib';

import { FileFormatError } from '../errors.js';
import type { HostTensor } from '../runtime/host-tensor.js';
import { hostTensor } from '../runtime/host-tensor.js';
import { importOptional } from './optional-package.js';

const PNG_SIGNATURE = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];

/** An 8-bit RGB image, row-major, 3 bytes a pixel. */
export interface RgbImage {
  width: number;
  height: number;
  rgb: Uint8Array;
}

/** The image in `path` as [1, 3, H, W] float32 in [0, 1]. */
export async function readImageFile(path: string): Promise<HostTensor> {
  let bytes: Buffer;
  try {
    bytes = await readFile(path);
  } catch (error) {
    throw new FileFormatError(
      `Cannot read the image ${path}: ${(error as Error).message}`,
      'FILE_UNREADABLE',
      path,
    );
  }
  const image = isPng(bytes)
    ? (decodePng(bytes, path) ?? (await decodeWithSharp(path)))
    : await decodeWithSharp(path);
  return rgbToTensor(image);
}

/** [1, 3, H, W] float32 of v / 255. */
export function rgbToTensor({ width, height, rgb }: RgbImage): HostTensor {
  const plane = width * height;
  const data = new Float32Array(3 * plane);
  for (let i = 0; i < plane; i++) {
    for (let c = 0; c < 3; c++) data[c * plane + i] = rgb[3 * i + c] / 255;
  }
  return hostTensor('float32', [1, 3, height, width], data);
}

function isPng(bytes: Uint8Array): boolean {
  return PNG_SIGNATURE.every((b, i) => bytes[i] === b);
}

/** Decodes a non-interlaced PNG; undefined for interlaced ones (left to sharp). */
export function decodePng(bytes: Uint8Array, path = '(png)'): RgbImage | undefined {
  const fail = (what: string): never => {
    throw new FileFormatError(`${path}: not a readable PNG: ${what}`, 'IMAGE_INVALID', path);
  };
  if (!isPng(bytes)) fail('the PNG signature is missing');
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let offset = 8;
  let header:
    { width: number; height: number; depth: number; colorType: number; interlace: number } | undefined;
  let palette: Uint8Array | undefined;
  const idat: Uint8Array[] = [];
  while (offset + 8 <= bytes.length) {
    const length = view.getUint32(offset);
    const type = String.fromCharCode(...bytes.subarray(offset + 4, offset + 8));
    const data = bytes.subarray(offset + 8, offset + 8 + length);
    if (data.length !== length) fail(`chunk ${type} is cut short`);
    if (type === 'IHDR') {
      header = {
        width: view.getUint32(offset + 8),
        height: view.getUint32(offset + 12),
        depth: data[8],
        colorType: data[9],
        interlace: data[12],
      };
    } else if (type === 'PLTE') palette = data;
    else if (type === 'IDAT') idat.push(data);
    else if (type === 'IEND') break;
    offset += 12 + length;
  }
  if (!header) return fail('no IHDR chunk');
  const { width, height, depth, colorType, interlace } = header;
  if (interlace !== 0) return undefined;
  const channelsOf: Record<number, number> = { 0: 1, 2: 3, 3: 1, 4: 2, 6: 4 };
  const channels = channelsOf[colorType];
  if (channels === undefined) fail(`color type ${colorType}`);
  if (colorType === 3 ? depth !== 8 : depth !== 8 && depth !== 16) {
    // Low bit depths (1, 2, 4) are rare for photos; sharp reads them.
    return undefined;
  }
  if (colorType === 3 && !palette) fail('a palette image without PLTE');
  let raw: Buffer;
  try {
    raw = inflateSync(Buffer.concat(idat));
  } catch (error) {
    return fail(`the image data does not inflate (${(error as Error).message})`);
  }
  const bytesPerPixel = (channels * depth) / 8;
  const stride = width * bytesPerPixel;
  if (raw.length < height * (stride + 1)) fail('the image data is shorter than its size says');
  const pixels = new Uint8Array(height * stride);
  for (let y = 0; y < height; y++) {
    const filter = raw[y * (stride + 1)];
    const line = raw.subarray(y * (stride + 1) + 1, (y + 1) * (stride + 1));
    const out = pixels.subarray(y * stride, (y + 1) * stride);
    const prev = y > 0 ? pixels.subarray((y - 1) * stride, y * stride) : new Uint8Array(stride);
    for (let x = 0; x < stride; x++) {
      const a = x >= bytesPerPixel ? out[x - bytesPerPixel] : 0;
      const b = prev[x];
      const c = x >= bytesPerPixel ? prev[x - bytesPerPixel] : 0;
      let predictor: number;
      switch (filter) {
        case 0:
          predictor = 0;
          break;
        case 1:
          predictor = a;
          break;
        case 2:
          predictor = b;
          break;
        case 3:
          predictor = (a + b) >> 1;
          break;
        case 4: {
          const p = a + b - c;
          const pa = Math.abs(p - a);
          const pb = Math.abs(p - b);
          const pc = Math.abs(p - c);
          predictor = pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
          break;
        }
        default:
          return fail(`row ${y} has filter type ${filter}`);
      }
      out[x] = (line[x] + predictor) & 0xff;
    }
  }
  const rgb = new Uint8Array(width * height * 3);
  const sampleBytes = depth / 8;
  // 16-bit samples: the high byte (big-endian) rounded, as 8-bit conversion does.
  const sample = (i: number, k: number): number =>
    sampleBytes === 1
      ? pixels[i * bytesPerPixel + k]
      : Math.min(
          255,
          Math.round(
            ((pixels[i * bytesPerPixel + 2 * k] << 8) | pixels[i * bytesPerPixel + 2 * k + 1]) / 257,
          ),
        );
  for (let i = 0; i < width * height; i++) {
    if (colorType === 3) {
      const entry = pixels[i];
      if (3 * entry + 2 >= (palette as Uint8Array).length)
        fail(`palette index ${entry} is outside the palette`);
      rgb.set((palette as Uint8Array).subarray(3 * entry, 3 * entry + 3), 3 * i);
    } else if (colorType === 0 || colorType === 4) {
      const g = sample(i, 0);
      rgb[3 * i] = rgb[3 * i + 1] = rgb[3 * i + 2] = g;
    } else {
      for (let k = 0; k < 3; k++) rgb[3 * i + k] = sample(i, k);
    }
  }
  return { width, height, rgb };
}

async function decodeWithSharp(path: string): Promise<RgbImage> {
  const sharp = (
    await importOptional(() => import('sharp'), ['sharp'], `Reading ${path} (JPEG, WebP or interlaced PNG)`)
  ).default;
  try {
    const { data, info } = await sharp(path)
      .removeAlpha()
      .toColourspace('srgb')
      .raw()
      .toBuffer({ resolveWithObject: true });
    if (info.channels !== 3) {
      throw new Error(`decoded to ${info.channels} channels, expected 3`);
    }
    return {
      width: info.width,
      height: info.height,
      rgb: new Uint8Array(data.buffer, data.byteOffset, data.length),
    };
  } catch (error) {
    throw new FileFormatError(
      `Cannot decode the image ${path}: ${(error as Error).message}`,
      'IMAGE_INVALID',
      path,
    );
  }
}
