/**
 * Image decoding and the two pixel operations of data preparation: alpha compositing on white and
 * fitting to the training square. Decoding and resampling run in sharp (libvips), loaded only when
 * a data set is prepared, so that generating images never loads it; compositing is plain arithmetic
 * here, so its rounding is ours and tested against a float64 reference.
 */
import { DatasetError } from './errors.js';

/** Bumped when preparing pixels changes (decoding, compositing, resampling): part of every cache key. */
export const PREPARE_VERSION = 1;

/** The formats a training folder may hold, by their file signature (not their extension). */
export type ImageFormat = 'png' | 'jpeg';

/** 8-bit RGBA pixels, row-major, interleaved, straight (not premultiplied) alpha. */
export interface RgbaImage {
  readonly width: number;
  readonly height: number;
  readonly data: Uint8Array;
}

const PNG_SIGNATURE = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];
/** Signatures of formats that are recognised only to be named in an "unsupported format" report. */
const OTHER_SIGNATURES: readonly (readonly [string, readonly number[]])[] = [
  ['GIF', [0x47, 0x49, 0x46, 0x38]],
  ['BMP', [0x42, 0x4d]],
  ['TIFF', [0x49, 0x49, 0x2a, 0x00]],
  ['TIFF', [0x4d, 0x4d, 0x00, 0x2a]],
  ['PDF', [0x25, 0x50, 0x44, 0x46]],
];

function startsWith(bytes: Uint8Array, signature: readonly number[], at = 0): boolean {
  if (bytes.length < at + signature.length) return false;
  return signature.every((b, i) => bytes[at + i] === b);
}

/** PNG or JPEG by the file's first bytes; undefined for anything else. */
export function detectImageFormat(bytes: Uint8Array): ImageFormat | undefined {
  if (startsWith(bytes, PNG_SIGNATURE)) return 'png';
  if (startsWith(bytes, [0xff, 0xd8, 0xff])) return 'jpeg';
  return undefined;
}

/** What a file that is neither PNG nor JPEG looks like, for a message: 'WebP', 'GIF', 'empty file', … */
export function describeUnsupportedFormat(bytes: Uint8Array): string {
  if (bytes.length === 0) return 'an empty file';
  if (startsWith(bytes, [0x52, 0x49, 0x46, 0x46]) && startsWith(bytes, [0x57, 0x45, 0x42, 0x50], 8)) {
    return 'WebP';
  }
  if (startsWith(bytes, [0x66, 0x74, 0x79, 0x70], 4)) return 'HEIF/AVIF';
  for (const [name, signature] of OTHER_SIGNATURES) if (startsWith(bytes, signature)) return name;
  const head = new TextDecoder('utf-8', { fatal: false }).decode(bytes.subarray(0, 64));
  if (/^[\t\n\r\x20-\x7e]*$/.test(head)) return 'text, not an image';
  return 'an unknown format';
}

type SharpFactory = (typeof import('sharp'))['default'];

/** sharp, imported on first use; an actionable error where it is not installed or cannot load. */
async function loadSharp(): Promise<SharpFactory> {
  try {
    const module = await import('sharp');
    return module.default;
  } catch (error) {
    throw new DatasetError(
      `Preparing training images needs the 'sharp' package (image decoding and resizing), which ` +
        `could not be loaded: ${(error as Error).message.split('\n')[0]}. It is an optional dependency ` +
        `of velodiff: install it with \`npm install sharp\` (it needs only the npm registry).`,
      'SHARP_MISSING',
    );
  }
}

/**
 * Decodes a PNG or JPEG (any bit depth, palette, grey, CMYK; EXIF orientation applied) into 8-bit
 * sRGB RGBA. Throws sharp's error for data it cannot decode (the caller names the file).
 */
export async function decodeImage(bytes: Uint8Array): Promise<RgbaImage> {
  const sharp = await loadSharp();
  // failOn 'error': a truncated file is a bad file, not an image with grey rows at the bottom.
  const { data, info } = await sharp(bytes, { failOn: 'error', autoOrient: true })
    .toColourspace('srgb')
    .ensureAlpha()
    .raw()
    .toBuffer({ resolveWithObject: true });
  if (info.channels !== 4 || data.length !== info.width * info.height * 4) {
    throw new Error(
      `decoded to ${info.width}×${info.height}×${info.channels} (${data.length} bytes), expected RGBA`,
    );
  }
  return {
    width: info.width,
    height: info.height,
    data: new Uint8Array(data.buffer, data.byteOffset, data.length),
  };
}

/**
 * RGBA → RGB over an opaque white background, in the sRGB-encoded values as a browser draws an emoji
 * on a white page: out = round(α·c + (1 − α)·255) with α = a/255.
 */
export function compositeOnWhite(image: RgbaImage): Uint8Array {
  const pixels = image.width * image.height;
  if (image.data.length !== pixels * 4) {
    throw new Error(
      `compositeOnWhite: ${image.width}×${image.height} RGBA needs ${pixels * 4} bytes, got ${image.data.length}`,
    );
  }
  const rgb = new Uint8Array(pixels * 3);
  const source = image.data;
  for (let p = 0; p < pixels; p++) {
    const alpha = source[p * 4 + 3];
    for (let c = 0; c < 3; c++) {
      // (a·v + (255 − a)·255) / 255 in integers is exact, so only the final rounding remains.
      rgb[p * 3 + c] = Math.round((alpha * source[p * 4 + c] + (255 - alpha) * 255) / 255);
    }
  }
  return rgb;
}

/**
 * Fits RGB pixels to size×size: scaled so the shorter side is `size` (Lanczos-3, sharp's default,
 * antialiased when shrinking), then the centre cropped, as Hugging Face's training scripts' Resize +
 * CenterCrop do. A square image of the right size is returned unchanged.
 */
export async function fitToSquare(
  rgb: Uint8Array,
  width: number,
  height: number,
  size: number,
): Promise<Uint8Array> {
  if (width === size && height === size) return rgb;
  const sharp = await loadSharp();
  const data = await sharp(rgb, { raw: { width, height, channels: 3 } })
    .resize(size, size, { fit: 'cover', position: 'centre', kernel: 'lanczos3' })
    .raw()
    .toBuffer();
  if (data.length !== size * size * 3) {
    throw new Error(`fitToSquare: resized to ${data.length} bytes, expected ${size * size * 3}`);
  }
  return new Uint8Array(data.buffer, data.byteOffset, data.length);
}
