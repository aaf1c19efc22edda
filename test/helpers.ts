import type { DType, Graph, Tensor } from '../src/graph/index.js';
import { Graph as GraphClass } from '../src/graph/index.js';
import type { HostTensor } from '../src/runtime/host-tensor.js';
import { hostTensor } from '../src/runtime/host-tensor.js';
import { Runtime } from '../src/runtime/runtime.js';
import { SafetensorsFile } from '../src/io/safetensors.js';
import { PNG } from 'pngjs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before } from 'node:test';

/** One in-thread runtime per test file (tests need no worker hop). */
let shared: Runtime | undefined;
export function testRuntime(): Runtime {
  shared ??= new Runtime({ worker: false, threads: 1 });
  return shared;
}

/** Fresh random float32 values in [lo, hi). */
export function randomArray(n: number, random: () => number, lo = -1, hi = 1): Float32Array {
  return Float32Array.from({ length: n }, () => lo + (hi - lo) * random());
}

export function randomTensor(shape: number[], random: () => number, lo = -1, hi = 1): HostTensor {
  return hostTensor(
    'float32',
    shape,
    randomArray(
      shape.reduce((a, b) => a * b, 1),
      random,
      lo,
      hi,
    ),
  );
}

/**
 * Build a graph whose inputs are named after `feeds` (declared with their concrete shapes unless
 * `shapes` gives symbolic ones), compile it, run it once, return the outputs.
 */
export async function runGraph(
  build: (g: Graph, inputs: Record<string, Tensor>) => Record<string, Tensor>,
  feeds: Record<string, HostTensor>,
  shapes: Record<string, (number | string)[]> = {},
): Promise<Record<string, HostTensor>> {
  const g = new GraphClass('test');
  const inputs: Record<string, Tensor> = {};
  for (const [name, t] of Object.entries(feeds)) {
    inputs[name] = g.input(name, t.dtype as DType, shapes[name] ?? [...t.shape]);
  }
  for (const [name, t] of Object.entries(build(g, inputs))) g.output(name, t);
  const compiled = await testRuntime().compile(g);
  return compiled.run(feeds);
}

/** The suite's one comparator (test/compare.ts), re-exported for the files that import it from here. */
export { assertClose } from './compare.js';

/** Every tensor of a safetensors file as host tensors: floats as float32, int64 kept as int64. */
export async function readAllTensors(path: string): Promise<Record<string, HostTensor>> {
  const file = await SafetensorsFile.open(path);
  const out: Record<string, HostTensor> = {};
  try {
    for (const name of file.names()) {
      const info = file.info(name);
      if (info.dtype === 'I64') {
        const bytes = await file.readBytes(name);
        out[name] = hostTensor('int64', info.shape, new BigInt64Array(bytes.slice().buffer));
      } else out[name] = hostTensor('float32', info.shape, await file.readFloat32(name));
    }
  } finally {
    await file.close();
  }
  return out;
}

/** The RGB bytes of a PNG file (dropping alpha). */
export function pngRgb(png: Buffer): Uint8Array {
  const { data, width, height } = PNG.sync.read(png);
  return Uint8Array.from({ length: width * height * 3 }, (_, i) => data[Math.floor(i / 3) * 4 + (i % 3)]);
}

/**
 * The RGB bytes a PNG written by `generate` should hold for the first image of a pipeline's `images`
 * [N, C, H, W] in [0, 1]: mapped to 8 bits as diffusers' numpy_to_pil does ((x·255).round()).
 */
export function imageRgb(images: HostTensor): Uint8Array {
  const [, channels, height, width] = images.shape;
  const data = images.data as Float32Array;
  const rgb = new Uint8Array(height * width * channels);
  for (let c = 0; c < channels; c++) {
    for (let i = 0; i < height * width; i++)
      rgb[i * channels + c] = Math.round(data[c * height * width + i] * 255);
  }
  return rgb;
}

/**
 * Points VELODIFF_CACHE_DIR at a fresh temporary folder for the file's tests (registered with the
 * runner's before/after hooks), restores it and deletes the folder afterwards.
 */
export function useTempCacheDir(prefix: string): () => string {
  let dir = '';
  let saved: string | undefined;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), prefix));
    saved = process.env.VELODIFF_CACHE_DIR;
    process.env.VELODIFF_CACHE_DIR = dir;
  });
  after(async () => {
    if (saved === undefined) delete process.env.VELODIFF_CACHE_DIR;
    else process.env.VELODIFF_CACHE_DIR = saved;
    await rm(dir, { recursive: true, force: true });
  });
  return () => dir;
}
