/**
 * Pillow's `Image.resize` with its default filter, BICUBIC (libImaging/Resample.c), on image tensors:
 * a separable convolution, horizontal pass then vertical pass, with the cubic convolution kernel of
 * a = −0.5 (Keys 1981) stretched by the scale when shrinking (antialiasing). Output pixel i samples
 * the input around the centre (i + 0.5)·in/out in pixel units, so pixel centres sit at x + 0.5. Taps
 * that fall outside the image are dropped and the remaining weights renormalised to sum 1 (Pillow's
 * edge rule; not an edge clamp). CLEAR's high-resolution recipe resizes its base image this way
 * (methods/clear_linfusion.md §1.7.2 step 2).
 */
import { OptionError } from '../errors.js';
import type { HostTensor } from '../runtime/host-tensor.js';
import { hostTensor } from '../runtime/host-tensor.js';
import { roundHalfEven } from '../random/torch-exp.js';
import { asFloat } from './batch.js';

/** Resample.c's BICUBIC: support 2, a = −0.5. */
const BICUBIC_SUPPORT = 2;

/** Resample.c's `PRECISION_BITS`: 8-bit images are resampled with 22-bit fixed-point weights. */
const PRECISION_BITS = 32 - 8 - 2;

/** Resample.c's `bicubic_filter`: the cubic convolution kernel with a = −0.5. */
export function bicubicKernel(x: number): number {
  const a = -0.5;
  const t = Math.abs(x);
  if (t < 1) return ((a + 2) * t - (a + 3)) * t * t + 1;
  if (t < 2) return (((t - 5) * t + 8) * t - 4) * a;
  return 0;
}

/** The weights of one axis: output i reads `count[i]` inputs from `first[i]` with `weights[i·taps …]`. */
export interface ResampleWeights {
  /** Weights per output (Resample.c's ksize); unused ones are 0. */
  taps: number;
  first: Int32Array;
  count: Int32Array;
  /** Normalised to sum 1 per output, float64. */
  weights: Float64Array;
}

/** Resample.c's `precompute_coeffs` for the whole axis (box 0 … inSize) and the bicubic filter. */
export function bicubicWeights(inSize: number, outSize: number): ResampleWeights {
  const scale = inSize / outSize;
  const filterScale = Math.max(scale, 1);
  const support = BICUBIC_SUPPORT * filterScale;
  const taps = Math.ceil(support) * 2 + 1;
  const first = new Int32Array(outSize);
  const count = new Int32Array(outSize);
  const weights = new Float64Array(outSize * taps);
  // Resample.c multiplies by the reciprocal; dividing could differ in the last bit.
  const stretch = 1 / filterScale;
  for (let i = 0; i < outSize; i++) {
    const center = (i + 0.5) * scale;
    // C's (int) cast truncates toward zero, then the range is cut to the image.
    const lo = Math.max(0, Math.trunc(center - support + 0.5));
    const hi = Math.min(inSize, Math.trunc(center + support + 0.5));
    first[i] = lo;
    count[i] = hi - lo;
    let total = 0;
    for (let x = 0; x < hi - lo; x++) {
      const w = bicubicKernel((x + lo - center + 0.5) * stretch);
      weights[i * taps + x] = w;
      total += w;
    }
    if (total !== 0) for (let x = 0; x < hi - lo; x++) weights[i * taps + x] /= total;
  }
  return { taps, first, count, weights };
}

/**
 * How the pixels are held while resampling, as Pillow holds them:
 * - `uint8`: an 8-bit RGB image, which is what the authors resize (diffusers' `numpy_to_pil`
 *   quantizes [0, 1] to round-half-even(v·255); Pillow resamples with 22-bit fixed-point weights and
 *   rounds to 8 bits after each pass; the result is read back as v / 255, as `pil_to_numpy`);
 * - `float32`: a mode "F" image (float64 sums, float32 after each pass), no quantization.
 */
export type ResamplePrecision = 'uint8' | 'float32';

/**
 * Images [N, C, H, W] float32 in [0, 1] resized to height × width as Pillow's
 * `Image.resize((width, height))` (bicubic) resizes them, channel by channel; `precision` (default
 * 'uint8') says how Pillow holds the pixels. Values outside [0, 1] are clamped first under 'uint8'.
 */
export function resizeBicubic(
  images: HostTensor,
  size: { height: number; width: number },
  options: { precision?: ResamplePrecision } = {},
): HostTensor {
  const { height, width } = size;
  const precision = options.precision ?? 'uint8';
  if (images.shape.length !== 4) {
    throw new OptionError(`resizeBicubic: expected images [N, C, H, W], got [${images.shape.join(', ')}]`);
  }
  for (const [name, v] of [
    ['height', height],
    ['width', width],
  ] as const) {
    if (!Number.isInteger(v) || v < 1) {
      throw new OptionError(`resizeBicubic: ${name} must be an integer ≥ 1, got ${v}`);
    }
  }
  if (precision !== 'uint8' && precision !== 'float32') {
    throw new OptionError(`resizeBicubic: precision must be 'uint8' or 'float32', got ${String(precision)}`);
  }
  const [batch, channels, inHeight, inWidth] = images.shape;
  const source = asFloat(images).data as Float32Array;
  const horizontal = bicubicWeights(inWidth, width);
  const vertical = bicubicWeights(inHeight, height);
  const out = new Float32Array(batch * channels * height * width);
  const inPlane = inHeight * inWidth;
  for (let plane = 0; plane < batch * channels; plane++) {
    const pixels = source.subarray(plane * inPlane, (plane + 1) * inPlane);
    const target = out.subarray(plane * height * width, (plane + 1) * height * width);
    if (precision === 'uint8') {
      // numpy: (images * 255).round() in float32, halves to even, as io/png.ts writes PNGs.
      const bytes = Uint8Array.from(pixels, (v) =>
        roundHalfEven(Math.fround(Math.min(1, Math.max(0, v)) * 255)),
      );
      const resized = resamplePlane8(bytes, inHeight, inWidth, horizontal, vertical);
      for (let i = 0; i < resized.length; i++) target[i] = resized[i] / 255;
    } else {
      target.set(resamplePlaneFloat(pixels, inHeight, inWidth, horizontal, vertical));
    }
  }
  return hostTensor('float32', [batch, channels, height, width], out);
}

/**
 * Resample.c's `ImagingResampleInner` for one 8-bit channel: the horizontal pass (skipped when the
 * width stays) into 8 bits, then the vertical pass (skipped when the height stays).
 */
function resamplePlane8(
  pixels: Uint8Array,
  inHeight: number,
  inWidth: number,
  horizontal: ResampleWeights,
  vertical: ResampleWeights,
): Uint8Array {
  const outWidth = horizontal.first.length;
  const outHeight = vertical.first.length;
  let rows = pixels;
  if (outWidth !== inWidth) {
    const k = fixedPoint(horizontal);
    rows = new Uint8Array(inHeight * outWidth);
    for (let y = 0; y < inHeight; y++) {
      for (let x = 0; x < outWidth; x++) {
        let sum = 1 << (PRECISION_BITS - 1);
        const from = y * inWidth + horizontal.first[x];
        for (let t = 0; t < horizontal.count[x]; t++) sum += pixels[from + t] * k[x * horizontal.taps + t];
        rows[y * outWidth + x] = clip8(sum);
      }
    }
  }
  if (outHeight === inHeight) return rows;
  const k = fixedPoint(vertical);
  const out = new Uint8Array(outHeight * outWidth);
  for (let y = 0; y < outHeight; y++) {
    for (let x = 0; x < outWidth; x++) {
      let sum = 1 << (PRECISION_BITS - 1);
      for (let t = 0; t < vertical.count[y]; t++) {
        sum += rows[(vertical.first[y] + t) * outWidth + x] * k[y * vertical.taps + t];
      }
      out[y * outWidth + x] = clip8(sum);
    }
  }
  return out;
}

/** Resample.c's `normalize_coeffs_8bpc`: weights to 22-bit fixed point, rounded half away from zero. */
function fixedPoint(w: ResampleWeights): Int32Array {
  const one = 2 ** PRECISION_BITS;
  return Int32Array.from(w.weights, (v) => (v < 0 ? Math.trunc(-0.5 + v * one) : Math.trunc(0.5 + v * one)));
}

/** Resample.c's `clip8`: the fixed-point sum shifted down (floor) and clamped to 0 … 255. */
function clip8(sum: number): number {
  return Math.min(255, Math.max(0, Math.floor(sum / 2 ** PRECISION_BITS)));
}

/** Resample.c's 32-bit float passes: float64 sums, each pass stored in float32. */
function resamplePlaneFloat(
  pixels: Float32Array,
  inHeight: number,
  inWidth: number,
  horizontal: ResampleWeights,
  vertical: ResampleWeights,
): Float32Array {
  const outWidth = horizontal.first.length;
  const outHeight = vertical.first.length;
  let rows = pixels;
  if (outWidth !== inWidth) {
    rows = new Float32Array(inHeight * outWidth);
    for (let y = 0; y < inHeight; y++) {
      for (let x = 0; x < outWidth; x++) {
        let sum = 0;
        const from = y * inWidth + horizontal.first[x];
        for (let t = 0; t < horizontal.count[x]; t++) {
          sum += pixels[from + t] * horizontal.weights[x * horizontal.taps + t];
        }
        rows[y * outWidth + x] = sum;
      }
    }
  }
  if (outHeight === inHeight) return rows;
  const out = new Float32Array(outHeight * outWidth);
  for (let y = 0; y < outHeight; y++) {
    for (let x = 0; x < outWidth; x++) {
      let sum = 0;
      for (let t = 0; t < vertical.count[y]; t++) {
        sum += rows[(vertical.first[y] + t) * outWidth + x] * vertical.weights[y * vertical.taps + t];
      }
      out[y * outWidth + x] = sum;
    }
  }
  return out;
}
