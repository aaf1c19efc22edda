/** The MatMul reference the model benchmarks time their forward against, and the constant data it is built from. */
import { Graph, linear, sum } from '../src/graph/index.js';
import { hostTensor } from '../src/runtime/host-tensor.js';
import type { Runtime } from '../src/runtime/runtime.js';
import { nowMs } from './stats.js';

/** `n` values of sin(0.37 i + phase): deterministic, finite inputs without a random generator. */
export const fill = (n: number, phase = 0): Float32Array =>
  Float32Array.from({ length: n }, (_, i) => Math.sin(i * 0.37 + phase));

/** A float32 weight of `shape` holding `fill` × 0.01: constant, small values (they do not change the timing). */
export function constantWeight(g: Graph, name: string, shape: number[]): ReturnType<Graph['weight']> {
  const count = shape.reduce((a, b) => a * b, 1);
  return g.weight(name, 'float32', shape, {
    kind: 'data',
    data: fill(count).map((x) => x * 0.01),
    storedDType: 'float32',
  });
}

/**
 * A transformer feed-forward as two MatMuls, [rows, dim]·[dim, 4·dim]·[4·dim, dim] with constant
 * weights, compiled on `runtime`: the rate a model's dominant shape reaches, measured in the same
 * process as the model. The output is summed over rows so that copying a large output does not
 * count against the MatMul; `run` times one run in ms and `flops` counts its two products.
 */
export async function feedForwardReference(
  runtime: Runtime,
  rows: number,
  dim: number,
): Promise<{ flops: number; run: () => Promise<number> }> {
  const g = new Graph('matmul_ref');
  const w1 = constantWeight(g, 'w1', [4 * dim, dim]);
  const w2 = constantWeight(g, 'w2', [dim, 4 * dim]);
  g.output('y', sum(linear(linear(g.input('x', 'float32', [rows, dim]), w1), w2), 0));
  const compiled = await runtime.compile(g);
  const input = { x: hostTensor('float32', [rows, dim], fill(rows * dim)) };
  return {
    flops: 2 * 2 * rows * dim * 4 * dim,
    run: async () => {
      const t0 = nowMs();
      await compiled.run(input);
      return nowMs() - t0;
    },
  };
}
