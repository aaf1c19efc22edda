import assert from 'node:assert/strict';
import type { DType, Graph, Tensor } from '../src/graph/index.js';
import { Graph as GraphClass } from '../src/graph/index.js';
import type { HostTensor } from '../src/runtime/host-tensor.js';
import { hostTensor } from '../src/runtime/host-tensor.js';
import { Runtime } from '../src/runtime/runtime.js';
import { SafetensorsFile } from '../src/io/safetensors.js';

/** One in-thread runtime per test file (tests need no worker hop). */
let shared: Runtime | undefined;
export function testRuntime(): Runtime {
  shared ??= new Runtime({ worker: false, threads: 1 });
  return shared;
}

/** Seeded uniform random numbers (mulberry32), so failures reproduce. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
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

/** Assert |actual − expected| ≤ atol + rtol·|expected| elementwise, reporting the worst element. */
export function assertClose(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  { atol = 1e-5, rtol = 1e-5, what = 'values' }: { atol?: number; rtol?: number; what?: string } = {},
): void {
  assert.equal(
    actual.length,
    expected.length,
    `${what}: length ${actual.length} vs expected ${expected.length}`,
  );
  let worst = -1;
  let worstExcess = 0;
  for (let i = 0; i < expected.length; i++) {
    const a = actual[i];
    const e = expected[i];
    if (Number.isNaN(e) || Number.isNaN(a)) {
      if (Number.isNaN(e) !== Number.isNaN(a)) assert.fail(`${what}[${i}]: ${a} vs expected ${e}`);
      continue;
    }
    if (e === a) continue;
    const excess = Math.abs(a - e) - (atol + rtol * Math.abs(e));
    if (excess > worstExcess || (excess > 0 && worst < 0)) {
      worst = i;
      worstExcess = excess;
    }
  }
  if (worst >= 0) {
    assert.fail(
      `${what}[${worst}]: ${actual[worst]} vs expected ${expected[worst]} (|diff| ${Math.abs(actual[worst] - expected[worst]).toExponential(3)}, atol ${atol}, rtol ${rtol})`,
    );
  }
}

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
