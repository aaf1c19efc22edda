/**
 * nn/'s LinearToHeads: a Linear(C→C) whose output comes split into heads [B, H, N, C/H]. The plain
 * path (one batched product with the weight as [1, H, C, C/H]) against a float64 Linear split into
 * heads; with LoRA terms and with an int8 weight it must take Linear's path, so adapters and
 * quantization reach the layer as they reach any Linear (LinFusion's q/k/v projections use it).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import type { Tensor } from '../../src/graph/graph.js';
import { Graph } from '../../src/graph/graph.js';
import { reshape, transpose } from '../../src/graph/ops/index.js';
import { Linear, LinearToHeads } from '../../src/nn/layers.js';
import type { Int8Site, LoraProvider } from '../../src/nn/params.js';
import { Params } from '../../src/nn/params.js';
import type { TensorSource } from '../../src/nn/weights.js';
import type { HostTensor } from '../../src/runtime/host-tensor.js';
import { hostTensor } from '../../src/runtime/host-tensor.js';
import { assertClose } from '../compare.js';
import { randomArray, testRuntime } from '../helpers.js';
import { seededUniform, testSeed } from '../random.js';

const [B, N, C, H] = [2, 5, 12, 3];
const D = C / H;
/** float32 products of length C against float64: measured ≤ 3e-7 relative. */
const TOLERANCE = { rtol: 1e-5, atol: 1e-6 };

/** Parameters and inputs as graph inputs of the dtype and shape given (int8 weights too). */
function inputSource(specs: Record<string, { dtype: 'F32' | 'I8'; shape: number[] }>): TensorSource {
  const declared = new Map<string, Tensor>();
  return {
    has: (name) => Object.hasOwn(specs, name),
    info: (name) => {
      const s = specs[name];
      const count = s.shape.reduce((a, b) => a * b, 1);
      return { name, dtype: s.dtype, shape: s.shape, byteLength: count, fileOffset: 0 };
    },
    // One input per name, however many builds read it.
    tensor: (graph, name, dtype, shape) =>
      declared.get(name) ?? declared.set(name, graph.input(name, dtype, shape)).get(name)!,
  };
}

/** y[b, h, n, d] = Σ_c x[b, n, c]·W[h·D + d, c] (+ bias), in float64. */
function headsRef(x: Float32Array, w: ArrayLike<number>, bias?: Float32Array): Float64Array {
  const out = new Float64Array(B * H * N * D);
  for (let b = 0; b < B; b++)
    for (let n = 0; n < N; n++)
      for (let o = 0; o < C; o++) {
        let s = bias ? bias[o] : 0;
        for (let c = 0; c < C; c++) s += x[(b * N + n) * C + c] * w[o * C + c];
        const [h, d] = [Math.floor(o / D), o % D];
        out[((b * H + h) * N + n) * D + d] = s;
      }
  return out;
}

function toHeads(y: Tensor): Tensor {
  return transpose(reshape(y, [B, N, H, D]), [0, 2, 1, 3]);
}

describe('nn LinearToHeads', () => {
  for (const bias of [true, false]) {
    it(`plain float weight${bias ? ' with bias' : ''}: the Linear's output in heads`, async () => {
      const random = seededUniform(testSeed(`linear to heads ${bias}`));
      const specs: Record<string, { dtype: 'F32'; shape: number[] }> = {
        'm.weight': { dtype: 'F32', shape: [C, C] },
        ...(bias ? { 'm.bias': { dtype: 'F32' as const, shape: [C] } } : {}),
      };
      const g = new Graph('heads');
      const x = g.input('x', 'float32', [B, N, C]);
      const p = Params.of(g, inputSource(specs));
      g.output('y', LinearToHeads(p.child('m'), x, C, H, bias));
      const feeds: Record<string, HostTensor> = {
        x: hostTensor('float32', [B, N, C], randomArray(B * N * C, random)),
        'm.weight': hostTensor('float32', [C, C], randomArray(C * C, random)),
      };
      if (bias) feeds['m.bias'] = hostTensor('float32', [C], randomArray(C, random));
      const { y } = await (await testRuntime().compile(g)).run(feeds);
      assert.deepEqual(y.shape, [B, H, N, D]);
      const expected = headsRef(
        feeds.x.data as Float32Array,
        feeds['m.weight'].data as Float32Array,
        bias ? (feeds['m.bias'].data as Float32Array) : undefined,
      );
      assertClose(y.data as Float32Array, expected, { ...TOLERANCE, what: 'LinearToHeads' });
    });
  }

  it('with LoRA terms: W + scale·B·A, as Linear applies them', async () => {
    const random = seededUniform(testSeed('linear to heads lora'));
    const rank = 2;
    const scale = 0.7;
    const values = {
      x: randomArray(B * N * C, random),
      w: randomArray(C * C, random),
      down: randomArray(rank * C, random),
      up: randomArray(C * rank, random),
    };
    const lora: LoraProvider = {
      termsFor: (graph, modulePath) =>
        modulePath === 'm'
          ? {
              fused: [
                {
                  down: graph.constant(values.down, 'float32', [rank, C]),
                  up: graph.constant(values.up, 'float32', [C, rank]),
                  scale,
                },
              ],
              switchable: [],
            }
          : undefined,
    };
    const g = new Graph('heads-lora');
    const x = g.input('x', 'float32', [B, N, C]);
    const p = Params.of(g, inputSource({ 'm.weight': { dtype: 'F32', shape: [C, C] } }), { lora });
    g.output('y', LinearToHeads(p.child('m'), x, C, H, false));
    const { y } = await (
      await testRuntime().compile(g)
    ).run({
      x: hostTensor('float32', [B, N, C], values.x),
      'm.weight': hostTensor('float32', [C, C], values.w),
    });
    const merged = Float64Array.from(values.w, (w, i) => {
      const [o, c] = [Math.floor(i / C), i % C];
      let s = 0;
      for (let r = 0; r < rank; r++) s += values.up[o * rank + r] * values.down[r * C + c];
      return w + scale * s;
    });
    assertClose(y.data as Float32Array, headsRef(values.x, merged), { ...TOLERANCE, what: 'LoRA' });
    // Without the LoRA term the output differs: the check above sees the adapter.
    const plain = headsRef(values.x, values.w);
    assert.ok(
      (y.data as Float32Array).some((v, i) => Math.abs(v - plain[i]) > 1e-3),
      'the LoRA term changes the output',
    );
  });

  it("int8 weight: reported to the int8 hook as a Linear site and run as Linear's int8 product", async () => {
    const random = seededUniform(testSeed('linear to heads int8'));
    const sites: Int8Site[] = [];
    const g = new Graph('heads-int8');
    const x = g.input('x', 'float32', [B, N, C]);
    const source = inputSource({
      'm.weight': { dtype: 'I8', shape: [C, C] },
      'm.weight_scale': { dtype: 'F32', shape: [C] },
    });
    const int8 = { modules: new Set(['m']), onLayer: (site: Int8Site) => sites.push(site) };
    const heads = LinearToHeads(Params.of(g, source, { int8 }).child('m'), x, C, H, false);
    // Linear on the same inputs, split into heads afterwards: the same int8 op, so equal outputs.
    const viaLinear = toHeads(
      Linear(Params.of(g, source, { int8: { modules: int8.modules } }).child('m'), x, C, C, false),
    );
    g.output('heads', heads);
    g.output('linear', viaLinear);
    assert.deepEqual(sites, [{ modulePath: 'm', outFeatures: C, inFeatures: C, inputRank: 3 }]);
    const weight = Int8Array.from({ length: C * C }, () => Math.floor(random() * 255) - 127);
    const out = await (
      await testRuntime().compile(g)
    ).run({
      x: hostTensor('float32', [B, N, C], randomArray(B * N * C, random)),
      'm.weight': hostTensor('int8', [C, C], weight),
      'm.weight_scale': hostTensor(
        'float32',
        [C],
        Float32Array.from({ length: C }, () => 0.01 + 0.01 * random()),
      ),
    });
    assert.deepEqual(out.heads.shape, [B, H, N, D]);
    assert.deepEqual(Array.from(out.heads.data as Float32Array), Array.from(out.linear.data as Float32Array));
    assert.ok((out.heads.data as Float32Array).some((v) => v !== 0));
  });
});
