/**
 * An int8 model with a float file overlaid on it (a CLEAR student's trained projections over a
 * teacher quantized at load): the overlaid Linear runs in float with the overlay's weight, as a
 * float64 Linear computes it, and the layers the overlay leaves alone stay int8.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import type { DType } from '../../src/graph/dtype.js';
import type { Tensor } from '../../src/graph/graph.js';
import { Graph } from '../../src/graph/graph.js';
import { Linear } from '../../src/nn/layers.js';
import { Params } from '../../src/nn/params.js';
import type { TensorSource } from '../../src/nn/weights.js';
import { OverlayTensorSource } from '../../src/nn/weights.js';
import { hostTensor } from '../../src/runtime/host-tensor.js';
import { assertClose } from '../compare.js';
import { randomArray, testRuntime } from '../helpers.js';
import { seededUniform, testSeed } from '../random.js';

const [N, C] = [4, 8];

/** Tensors of the given dtypes and shapes as graph inputs, one per name. */
function inputSource(specs: Record<string, { dtype: 'F32' | 'I8'; shape: number[] }>): TensorSource {
  const declared = new Map<string, Tensor>();
  return {
    has: (name) => Object.hasOwn(specs, name),
    info: (name) => ({
      name,
      dtype: specs[name].dtype,
      shape: specs[name].shape,
      byteLength: 0,
      fileOffset: 0,
    }),
    tensor: (graph, name, dtype, shape) =>
      declared.get(name) ?? declared.set(name, graph.input(name, dtype, shape)).get(name)!,
  };
}

/** The overlay with every tensor a graph input (the real one points into files). */
class InputOverlay extends OverlayTensorSource {
  tensor(graph: Graph, name: string, dtype: DType, shape: readonly number[]): Tensor {
    const from = this.overlay.has(name) ? this.overlay : this.base;
    return from.tensor!(graph, name, dtype, shape);
  }
}

describe('nn int8 Linear under a float overlay', () => {
  it('the overlaid module runs in float with the overlay weight; the others stay int8', async () => {
    const random = seededUniform(testSeed('int8 overlay'));
    const base = inputSource({
      'a.weight': { dtype: 'I8', shape: [C, C] },
      'a.weight_scale': { dtype: 'F32', shape: [C] },
      'b.weight': { dtype: 'I8', shape: [C, C] },
      'b.weight_scale': { dtype: 'F32', shape: [C] },
    });
    const overlay = inputSource({ 'a.weight': { dtype: 'F32', shape: [C, C] } });
    const sites: string[] = [];
    const g = new Graph('int8-overlay');
    const x = g.input('x', 'float32', [N, C]);
    const p = Params.of(g, new InputOverlay(base, overlay, 'overlay.safetensors'), {
      int8: { modules: new Set(['a', 'b']), onLayer: (site) => sites.push(site.modulePath) },
    });
    g.output('a', Linear(p.child('a'), x, C, C, false));
    g.output('b', Linear(p.child('b'), x, C, C, false));
    assert.deepEqual(sites, ['a', 'b'], 'both are int8 sites');
    const input = g.inputs.map((t) => t.name).sort();
    assert.deepEqual(input, ['a.weight', 'b.weight', 'b.weight_scale', 'x'], "a's int8 scale is not read");
    const xs = randomArray(N * C, random);
    const wa = randomArray(C * C, random);
    const out = await (
      await testRuntime().compile(g)
    ).run({
      x: hostTensor('float32', [N, C], xs),
      'a.weight': hostTensor('float32', [C, C], wa),
      'b.weight': hostTensor(
        'int8',
        [C, C],
        Int8Array.from({ length: C * C }, () => Math.floor(random() * 255) - 127),
      ),
      'b.weight_scale': hostTensor(
        'float32',
        [C],
        Float32Array.from({ length: C }, () => 0.01),
      ),
    });
    const expected = new Float64Array(N * C);
    for (let n = 0; n < N; n++)
      for (let o = 0; o < C; o++)
        for (let c = 0; c < C; c++) expected[n * C + o] += xs[n * C + c] * wa[o * C + c];
    assertClose(out.a.data as Float32Array, expected, { rtol: 1e-5, atol: 1e-6, what: 'overlaid Linear' });
    assert.equal(out.b.dtype, 'float32');
  });
});
