/**
 * float64 as a graph dtype: inputs, outputs, constants, number operands and data weights in double
 * through both backends (in-thread and the worker), casts to and from float32, build-time errors
 * for ops whose ONNX Runtime CPU kernel has no double version, and float64 graphs that ORT's
 * float-only fusions would otherwise break.
 */
import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';

import { RuntimeError } from '../../src/errors.js';
import type { Tensor } from '../../src/graph/index.js';
import { add, cast, elu, erf, gelu, Graph, leakyRelu, matmul, mul, silu } from '../../src/graph/index.js';
import { hostTensor } from '../../src/runtime/host-tensor.js';
import { Runtime } from '../../src/runtime/runtime.js';
import { assertClose, assertExactlyEqual } from '../compare.js';
import { testRuntime } from '../helpers.js';
import { assertBuildError } from '../reference/check.js';
import { seededUniform, testSeed } from '../random.js';

const worker = new Runtime({ threads: 1 });
after(() => worker.dispose());

describe('float64 graphs', () => {
  for (const [name, runtime] of [
    ['in-thread', testRuntime()],
    ['worker', worker],
  ] as const) {
    it(`keeps double precision through inputs, constants, weights and outputs (${name})`, async () => {
      const g = new Graph('f64');
      const x = g.input('x', 'float64', [2]);
      const w = g.weight('w', 'float64', [2, 2], {
        kind: 'data',
        data: Float64Array.of(1, 0.1, 0, 1),
        storedDType: 'float64',
      });
      const c = g.constant(Float64Array.of(1e-12, 0), 'float64', [2]);
      g.output('y', add(add(matmul(x, w), c), 0.2));
      const out = await (
        await runtime.compile(g)
      ).run({ x: hostTensor('float64', [2], Float64Array.of(0.1, 2)) });
      assert.equal(out.y.dtype, 'float64');
      assert.ok(out.y.data instanceof Float64Array);
      // Values float32 cannot hold: 0.1 + 1e-12 + 0.2 and 0.1·0.1 + 2 + 0.2 in double.
      assertExactlyEqual(out.y.data, [0.1 + 1e-12 + 0.2, 0.1 * 0.1 + 2 + 0.2], 'y');
    });
  }

  it('casts between float64 and float32 and reads float32 weights as float64', async () => {
    const seed = testSeed('float64 casts');
    const random = seededUniform(seed);
    const values = Float64Array.from({ length: 6 }, () => 4 * random() - 2);
    const g = new Graph('casts');
    const x = g.input('x', 'float64', [6]);
    const w = g.weight('w', 'float64', [6], {
      kind: 'data',
      data: Float32Array.of(0.5, 1, 1.5, 2, 2.5, 3),
      storedDType: 'float32',
    });
    g.output('single', cast(x, 'float32'));
    g.output('double', mul(cast(cast(x, 'float32'), 'float64'), w));
    const out = await (await testRuntime().compile(g)).run({ x: hostTensor('float64', [6], values) });
    assert.ok(out.single.data instanceof Float32Array);
    const rounded = Array.from(values, Math.fround);
    assertExactlyEqual(out.single.data, rounded, `float32 (seed ${seed})`);
    assertExactlyEqual(
      out.double.data as Float64Array,
      rounded.map((v, i) => v * (0.5 + i * 0.5)),
      'double',
    );
  });

  it('checks float64 feeds like any other', async () => {
    const g = new Graph('feeds');
    g.output('y', mul(g.input('x', 'float64', [2]), 2));
    const compiled = await testRuntime().compile(g);
    await assert.rejects(
      compiled.run({ x: hostTensor('float32', [2], Float32Array.of(1, 2)) }),
      RuntimeError,
    );
    assert.throws(() => hostTensor('float64', [2], Float32Array.of(1, 2)), /Float64Array/);
  });

  it('refuses ops that ORT has no double kernel for when the graph is built', () => {
    const g = new Graph('kernels');
    const x = g.input('x', 'float64', [2]);
    assertBuildError(() => erf(x), 'erf', 'no float64 kernel', 'float32');
    assertBuildError(() => gelu(x, 'none'), 'gelu', 'no float64 kernel');
    assert.equal(gelu(x, 'tanh').dtype, 'float64');
  });

  it('runs float64 silu, elu and leakyRelu, which ORT would fuse or lacks kernels for', async () => {
    const g = new Graph('activations');
    const x = g.input('x', 'float64', [4]);
    const build: Record<string, (t: Tensor) => Tensor> = {
      silu,
      elu: (t) => elu(t, 0.5),
      leakyRelu: (t) => leakyRelu(t, 0.25),
    };
    for (const [name, f] of Object.entries(build)) g.output(name, f(x));
    const values = Float64Array.of(-2, -0.5, 0.5, 2);
    const out = await (await testRuntime().compile(g)).run({ x: hostTensor('float64', [4], values) });
    const v = Array.from(values);
    const expected: Record<string, number[]> = {
      silu: v.map((t) => t / (1 + Math.exp(-t))),
      elu: v.map((t) => (t > 0 ? t : 0.5 * Math.expm1(t))),
      leakyRelu: v.map((t) => (t < 0 ? 0.25 * t : t)),
    };
    for (const name of Object.keys(build)) {
      assertClose(out[name].data as Float64Array, expected[name], { atol: 1e-15, rtol: 1e-15, what: name });
    }
  });
});
