import assert from 'node:assert/strict';

import { GraphBuildError } from '../../src/errors.js';
import type { DType, Graph, Tensor } from '../../src/graph/index.js';
import type { HostData, HostTensor } from '../../src/runtime/host-tensor.js';
import { hostTensor } from '../../src/runtime/host-tensor.js';
import { assertClose } from '../compare.js';
import { runGraph } from '../helpers.js';
import type { RefTensor } from './math.js';
import { refTensor } from './math.js';

/** Host tensor data as numbers (int64 converted; float16 stays bit patterns). */
export function numbersOf(data: HostData): ArrayLike<number> {
  return data instanceof BigInt64Array ? Array.from(data, Number) : data;
}

/** Build a graph computing one tensor from `feeds` (inputs named after them), run it, return the tensor. */
export async function runOp(
  build: (inputs: Record<string, Tensor>, g: Graph) => Tensor,
  feeds: Record<string, HostTensor>,
): Promise<HostTensor> {
  const outputs = await runGraph((g, inputs) => ({ y: build(inputs, g) }), feeds);
  return outputs.y;
}

/** A graph feed as a float64 reference tensor. */
export function toRef(t: HostTensor): RefTensor {
  return refTensor(t.shape, numbersOf(t.data));
}

/** `count` random integers in [lo, hi] as float32, so that comparisons hit equal values often. */
export function randomIntegers(shape: number[], random: () => number, lo: number, hi: number): HostTensor {
  const count = shape.reduce((a, b) => a * b, 1);
  return hostTensor(
    'float32',
    shape,
    Float32Array.from({ length: count }, () => lo + Math.floor(random() * (hi - lo + 1))),
  );
}

export function randomBools(shape: number[], random: () => number): HostTensor {
  const count = shape.reduce((a, b) => a * b, 1);
  return hostTensor(
    'bool',
    shape,
    Uint8Array.from({ length: count }, () => (random() < 0.5 ? 1 : 0)),
  );
}

/**
 * Assert that a graph output has the reference's shape and dtype, and values within
 * atol + rtol·|expected| (exactly equal for integer and bool outputs).
 */
export function assertMatches(
  actual: HostTensor,
  expected: RefTensor,
  {
    dtype = 'float32',
    atol = 1e-5,
    rtol = 1e-5,
    what = 'output',
  }: { dtype?: DType; atol?: number; rtol?: number; what?: string } = {},
): void {
  assert.equal(actual.dtype, dtype, `${what}: dtype`);
  assert.deepEqual([...actual.shape], [...expected.shape], `${what}: shape`);
  const exact = dtype !== 'float32';
  assertClose(numbersOf(actual.data), expected.data, {
    atol: exact ? 0 : atol,
    rtol: exact ? 0 : rtol,
    what,
  });
}

/** Assert that `build` throws a GraphBuildError whose message contains every fragment. */
export function assertBuildError(build: () => unknown, ...fragments: string[]): void {
  assert.throws(build, (e: unknown) => {
    assert.ok(e instanceof GraphBuildError, `expected a GraphBuildError, got ${String(e)}`);
    // apply() prefixes the op name; a message that repeats it ("add: add: …") reads as a stutter.
    assert.doesNotMatch(e.message, /(^|[\s(])(\w+)\)?: \2:/, 'the op is named once');
    for (const fragment of fragments) {
      assert.ok(e.message.includes(fragment), `message "${e.message}" should mention "${fragment}"`);
    }
    return true;
  });
}
