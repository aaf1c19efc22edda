/**
 * PixArt's resolution binning (diffusers `use_resolution_binning`): a requested size is generated at
 * the trained size of the nearest aspect ratio, and the decoded image is resized and center-cropped
 * back to the requested size. Tables from diffusers 0.40 `pipelines/pixart_alpha/pipeline_pixart_alpha.py`
 * (256, 512, 1024) and `pipeline_pixart_sigma.py` (2048); the two functions mirror
 * `PixArtImageProcessor.classify_height_width_bin` and `resize_and_crop_tensor` (`image_processor.py`).
 */
import { OptionError } from '../errors.js';
import { Graph } from '../graph/graph.js';
import { slice, upsample2d } from '../graph/ops/index.js';
import type { HostTensor } from '../runtime/host-tensor.js';
import type { Runtime } from '../runtime/runtime.js';

/**
 * Aspect ratio (height / width, as diffusers spells it) → [height, width]. Object key order is the
 * tables' order ("1.0" and the like are not array-index keys), which decides ties as Python's `min`.
 */
export type AspectRatioBins = Readonly<Record<string, readonly [height: number, width: number]>>;

export const ASPECT_RATIO_2048_BIN: AspectRatioBins = {
  '0.25': [1024, 4096],
  '0.26': [1024, 3968],
  '0.27': [1024, 3840],
  '0.28': [1024, 3712],
  '0.32': [1152, 3584],
  '0.33': [1152, 3456],
  '0.35': [1152, 3328],
  '0.4': [1280, 3200],
  '0.42': [1280, 3072],
  '0.48': [1408, 2944],
  '0.5': [1408, 2816],
  '0.52': [1408, 2688],
  '0.57': [1536, 2688],
  '0.6': [1536, 2560],
  '0.68': [1664, 2432],
  '0.72': [1664, 2304],
  '0.78': [1792, 2304],
  '0.82': [1792, 2176],
  '0.88': [1920, 2176],
  '0.94': [1920, 2048],
  '1.0': [2048, 2048],
  '1.07': [2048, 1920],
  '1.13': [2176, 1920],
  '1.21': [2176, 1792],
  '1.29': [2304, 1792],
  '1.38': [2304, 1664],
  '1.46': [2432, 1664],
  '1.67': [2560, 1536],
  '1.75': [2688, 1536],
  '2.0': [2816, 1408],
  '2.09': [2944, 1408],
  '2.4': [3072, 1280],
  '2.5': [3200, 1280],
  '2.89': [3328, 1152],
  '3.0': [3456, 1152],
  '3.11': [3584, 1152],
  '3.62': [3712, 1024],
  '3.75': [3840, 1024],
  '3.88': [3968, 1024],
  '4.0': [4096, 1024],
};

export const ASPECT_RATIO_1024_BIN: AspectRatioBins = {
  '0.25': [512, 2048],
  '0.28': [512, 1856],
  '0.32': [576, 1792],
  '0.33': [576, 1728],
  '0.35': [576, 1664],
  '0.4': [640, 1600],
  '0.42': [640, 1536],
  '0.48': [704, 1472],
  '0.5': [704, 1408],
  '0.52': [704, 1344],
  '0.57': [768, 1344],
  '0.6': [768, 1280],
  '0.68': [832, 1216],
  '0.72': [832, 1152],
  '0.78': [896, 1152],
  '0.82': [896, 1088],
  '0.88': [960, 1088],
  '0.94': [960, 1024],
  '1.0': [1024, 1024],
  '1.07': [1024, 960],
  '1.13': [1088, 960],
  '1.21': [1088, 896],
  '1.29': [1152, 896],
  '1.38': [1152, 832],
  '1.46': [1216, 832],
  '1.67': [1280, 768],
  '1.75': [1344, 768],
  '2.0': [1408, 704],
  '2.09': [1472, 704],
  '2.4': [1536, 640],
  '2.5': [1600, 640],
  '3.0': [1728, 576],
  '4.0': [2048, 512],
};

export const ASPECT_RATIO_512_BIN: AspectRatioBins = {
  '0.25': [256, 1024],
  '0.28': [256, 928],
  '0.32': [288, 896],
  '0.33': [288, 864],
  '0.35': [288, 832],
  '0.4': [320, 800],
  '0.42': [320, 768],
  '0.48': [352, 736],
  '0.5': [352, 704],
  '0.52': [352, 672],
  '0.57': [384, 672],
  '0.6': [384, 640],
  '0.68': [416, 608],
  '0.72': [416, 576],
  '0.78': [448, 576],
  '0.82': [448, 544],
  '0.88': [480, 544],
  '0.94': [480, 512],
  '1.0': [512, 512],
  '1.07': [512, 480],
  '1.13': [544, 480],
  '1.21': [544, 448],
  '1.29': [576, 448],
  '1.38': [576, 416],
  '1.46': [608, 416],
  '1.67': [640, 384],
  '1.75': [672, 384],
  '2.0': [704, 352],
  '2.09': [736, 352],
  '2.4': [768, 320],
  '2.5': [800, 320],
  '3.0': [864, 288],
  '4.0': [1024, 256],
};

export const ASPECT_RATIO_256_BIN: AspectRatioBins = {
  '0.25': [128, 512],
  '0.28': [128, 464],
  '0.32': [144, 448],
  '0.33': [144, 432],
  '0.35': [144, 416],
  '0.4': [160, 400],
  '0.42': [160, 384],
  '0.48': [176, 368],
  '0.5': [176, 352],
  '0.52': [176, 336],
  '0.57': [192, 336],
  '0.6': [192, 320],
  '0.68': [208, 304],
  '0.72': [208, 288],
  '0.78': [224, 288],
  '0.82': [224, 272],
  '0.88': [240, 272],
  '0.94': [240, 256],
  '1.0': [256, 256],
  '1.07': [256, 240],
  '1.13': [272, 240],
  '1.21': [272, 224],
  '1.29': [288, 224],
  '1.38': [288, 208],
  '1.46': [304, 208],
  '1.67': [320, 192],
  '1.75': [336, 192],
  '2.0': [352, 176],
  '2.09': [368, 176],
  '2.4': [384, 160],
  '2.5': [400, 160],
  '3.0': [432, 144],
  '4.0': [512, 128],
};

/** Transformer sample_size → table, as each diffusers pipeline selects it (only Σ has 2048). */
const BINS_BY_SAMPLE_SIZE: Readonly<Record<string, ReadonlyMap<number, AspectRatioBins>>> = {
  PixArtAlphaPipeline: new Map([
    [128, ASPECT_RATIO_1024_BIN],
    [64, ASPECT_RATIO_512_BIN],
    [32, ASPECT_RATIO_256_BIN],
  ]),
  PixArtSigmaPipeline: new Map([
    [256, ASPECT_RATIO_2048_BIN],
    [128, ASPECT_RATIO_1024_BIN],
    [64, ASPECT_RATIO_512_BIN],
    [32, ASPECT_RATIO_256_BIN],
  ]),
};

/**
 * The bin table a run uses, or undefined when it does not bin.
 *
 * `useResolutionBinning: true` is diffusers exactly: a transformer sample_size without a table is an
 * error (diffusers' "Invalid sample size"). Left unset, it is diffusers' default `True` wherever a
 * table exists (every released PixArt checkpoint) and no binning elsewhere: a caller who never asked
 * for binning gets the size they asked for rather than an error about an option they did not set
 * (e.g. `velodiff generate` on a small test model). `false` never bins.
 */
export function aspectRatioBinsFor(
  pipelineClass: string,
  sampleSize: number,
  useResolutionBinning: boolean | undefined,
): AspectRatioBins | undefined {
  if (useResolutionBinning === false) return undefined;
  const tables = BINS_BY_SAMPLE_SIZE[pipelineClass] ?? BINS_BY_SAMPLE_SIZE.PixArtAlphaPipeline;
  const bins = tables.get(sampleSize);
  if (!bins && useResolutionBinning === true) {
    const sizes = [...tables.keys()].sort((a, b) => a - b);
    throw new OptionError(
      `useResolutionBinning: ${pipelineClass} has aspect-ratio bins for transformer sample_size ${sizes.join(', ')} only (diffusers raises "Invalid sample size"); this transformer's config has sample_size ${sampleSize}. Pass useResolutionBinning: false to generate at the size as given.`,
      'RESOLUTION_BINNING',
    );
  }
  return bins;
}

/** The [height, width] of the bin whose aspect ratio is nearest height / width; ties go to the first bin. */
export function classifyHeightWidthBin(
  height: number,
  width: number,
  ratios: AspectRatioBins,
): [height: number, width: number] {
  const aspectRatio = height / width;
  let closest: readonly [number, number] | undefined;
  let closestDistance = Infinity;
  for (const [ratio, size] of Object.entries(ratios)) {
    const distance = Math.abs(Number(ratio) - aspectRatio);
    if (distance < closestDistance) {
      closest = size;
      closestDistance = distance;
    }
  }
  if (!closest) throw new OptionError('classifyHeightWidthBin: the bin table is empty');
  return [Math.trunc(closest[0]), Math.trunc(closest[1])];
}

export interface ResizeAndCrop {
  resizedHeight: number;
  resizedWidth: number;
  /** First row and column of the center crop in the resized image. */
  top: number;
  left: number;
}

/**
 * The sizes of `resize_and_crop_tensor`: scale so that both sides cover the target, truncate as
 * Python's int(), then center-crop; undefined when the image already has the target size.
 */
export function resizeAndCropPlan(
  origHeight: number,
  origWidth: number,
  newHeight: number,
  newWidth: number,
): ResizeAndCrop | undefined {
  if (origHeight === newHeight && origWidth === newWidth) return undefined;
  const ratio = Math.max(newHeight / origHeight, newWidth / origWidth);
  // Deliberate deviation: orig · (new / orig) can round to just under new (1856 · (248 / 1856) =
  // 247.999…), and diffusers' crop then starts at −1, which Python reads from the end, yielding a
  // 1-pixel side. The side is exactly new in real arithmetic, so take new.
  const resizedHeight = Math.max(newHeight, Math.trunc(origHeight * ratio));
  const resizedWidth = Math.max(newWidth, Math.trunc(origWidth * ratio));
  return {
    resizedHeight,
    resizedWidth,
    top: Math.floor((resizedHeight - newHeight) / 2),
    left: Math.floor((resizedWidth - newWidth) / 2),
  };
}

/**
 * Resize images [N, C, H, W] bilinearly (torch align_corners=False, no antialias) so they cover
 * newHeight × newWidth, then center-crop to it; compiled through `runtime` as an ORT graph.
 * Argument order as diffusers' `resize_and_crop_tensor(samples, new_width, new_height)`.
 */
export async function resizeAndCropTensor(
  runtime: Runtime,
  samples: HostTensor,
  newWidth: number,
  newHeight: number,
): Promise<HostTensor> {
  if (samples.shape.length !== 4 || samples.dtype !== 'float32') {
    throw new OptionError(
      `resizeAndCropTensor: expected float32 images [N, C, H, W], got ${samples.dtype} [${samples.shape.join(', ')}]`,
    );
  }
  for (const [name, v] of [
    ['newWidth', newWidth],
    ['newHeight', newHeight],
  ] as const) {
    if (!Number.isInteger(v) || v < 1)
      throw new OptionError(`resizeAndCropTensor: ${name} must be an integer ≥ 1, got ${v}`);
  }
  const plan = resizeAndCropPlan(samples.shape[2], samples.shape[3], newHeight, newWidth);
  if (!plan) return samples;
  const graph = new Graph('resize_and_crop_tensor');
  const input = graph.input('samples', 'float32', samples.shape);
  const resized = upsample2d(input, {
    mode: 'bilinear',
    size: [plan.resizedHeight, plan.resizedWidth],
    alignCorners: false,
  });
  graph.output(
    'image',
    slice(resized, [
      { axis: 2, start: plan.top, end: plan.top + newHeight },
      { axis: 3, start: plan.left, end: plan.left + newWidth },
    ]),
  );
  // The runtime caches sessions by graph signature: each size pair compiles once.
  const compiled = await runtime.compile(graph);
  return (await compiled.run({ samples })).image;
}
