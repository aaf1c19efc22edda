/**
 * nn/'s diffusers `FeedForward` (net.0 = GELU / GELU(tanh) / GEGLU / ApproximateGELU's GEGLU with its
 * `proj`, net.2 the output Linear) against float64 loops of diffusers' definitions
 * (diffusers/models/activations.py), on tiny random inputs and parameters.
 */
import { describe, it } from 'node:test';

import type { FeedForwardActivation } from '../../src/nn/transformer-block.js';
import { FeedForward } from '../../src/nn/transformer-block.js';
import { assertClose, maxAbs } from '../compare.js';
import { seededUniform, testSeed } from '../random.js';
import type { RefTensor } from '../reference/math.js';
import { geluExact, geluTanh, linear, sigmoid } from '../reference/math.js';
import { runModule } from './module-harness.js';

/**
 * float32 module vs float64 loop, relative to max(1, max|reference|): measured ≤ 1e-7 over 18 seeded
 * cases; exact GELU in place of tanh's (or the reverse) is off by 1.7e-4 or more, a wrong GEGLU
 * half, sigmoid factor or bias by more still.
 */
const TOLERANCE = 2e-6;

/** diffusers FeedForward in float64: proj → activation (→ gate) → net.2. */
function feedForwardRef(
  x: RefTensor,
  activation: FeedForwardActivation,
  ref: (name: string) => RefTensor,
  bias: boolean,
): RefTensor {
  const b = (name: string): RefTensor | undefined => (bias ? ref(name) : undefined);
  const projected = linear(x, ref('net.0.proj.weight'), b('net.0.proj.bias'));
  const width = projected.shape[projected.shape.length - 1];
  let hidden: RefTensor;
  if (activation === 'gelu' || activation === 'gelu-approximate') {
    const f = activation === 'gelu' ? geluExact : geluTanh;
    hidden = { shape: projected.shape, data: projected.data.map(f) };
  } else {
    // GEGLU: hidden_states, gate = proj(x).chunk(2, dim=-1); hidden_states * gelu(gate).
    // ApproximateGELU's variant (geglu-approximate): gate · σ(1.702·gate).
    const inner = width / 2;
    const rows = projected.data.length / width;
    const data = new Float64Array(rows * inner);
    for (let r = 0; r < rows; r++) {
      for (let j = 0; j < inner; j++) {
        const value = projected.data[r * width + j];
        const gate = projected.data[r * width + inner + j];
        const activated = activation === 'geglu' ? geluExact(gate) : gate * sigmoid(1.702 * gate);
        data[r * inner + j] = value * activated;
      }
    }
    hidden = { shape: [...projected.shape.slice(0, -1), inner], data };
  }
  return linear(hidden, ref('net.2.weight'), b('net.2.bias'));
}

describe('FeedForward vs a float64 loop', () => {
  const seed = testSeed('test/nn/feed-forward.test.ts');
  const cases: { activation: FeedForwardActivation; bias: boolean; dimOut?: number }[] = [
    { activation: 'gelu', bias: true },
    { activation: 'gelu-approximate', bias: true },
    { activation: 'geglu', bias: true },
    { activation: 'geglu-approximate', bias: true },
    { activation: 'geglu', bias: false, dimOut: 5 },
    { activation: 'gelu', bias: false, dimOut: 3 },
  ];
  cases.forEach(({ activation, bias, dimOut }, index) => {
    const what = `${activation}, ${bias ? 'with' : 'without'} biases${dimOut ? `, dim_out ${dimOut}` : ''}`;
    it(what, async () => {
      const uniform = seededUniform(seed + index);
      const dim = 6;
      const inner = 10;
      const out = dimOut ?? dim;
      const gated = activation.startsWith('geglu');
      const parameters: Record<string, number[]> = {
        'net.0.proj.weight': [gated ? 2 * inner : inner, dim],
        'net.2.weight': [out, inner],
      };
      if (bias) {
        parameters['net.0.proj.bias'] = [gated ? 2 * inner : inner];
        parameters['net.2.bias'] = [out];
      }
      const run = await runModule({
        parameters,
        inputs: { x: [2, 3, dim] },
        uniform,
        module: (p, inputs) =>
          FeedForward(p, inputs.x, { dim, innerDim: inner, activation, bias, ...(dimOut ? { dimOut } : {}) }),
      });
      const expected = feedForwardRef(run.ref('x'), activation, run.ref, bias);
      assertClose(run.output.data as Float32Array, expected.data, {
        atol: TOLERANCE * Math.max(1, maxAbs(expected.data)),
        rtol: 0,
        what: `FeedForward ${what}`,
      });
    });
  });
});
