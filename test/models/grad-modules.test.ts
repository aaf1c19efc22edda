/**
 * Module-level gradient checks: whole modules built from their real builders with every parameter a
 * graph input (test/graph/gradcheck.ts `paramsOf`), differentiated with respect to the parameters and
 * the module input, against central finite differences on sampled coordinates.
 *
 * - the full self-attention module (src/attention/self-attention.ts) and a PixArt transformer block
 *   (adaLN-single modulation, self-attention, masked cross-attention, GELU-tanh MLP): float64, the
 *   harness's 1e-7 tolerance;
 * - ResnetBlock2D (nn/resnet.ts, as the VAE builds it: 1×1 conv shortcut, no time embedding) and the
 *   VAE's mid-block (resnet, attention, resnet):
 *   float32, as ORT has no double Conv or InstanceNormalization; the harness's float32 tolerance
 *   (2e-3 relative, h = 1e-2).
 *
 * And that parameters not asked for cost no gradient nodes: a frozen module upstream of the trained
 * ones gets no backward nodes at all, and one downstream gets exactly the nodes that carry the
 * gradient through it, as many as when its parameters are constant weights.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import type { Graph, Tensor } from '../../src/graph/index.js';
import { Graph as GraphClass, grad, mul, sum } from '../../src/graph/index.js';
import { selfAttentionModule } from '../../src/attention/self-attention.js';
import { parsePixArtConfig, pixArtBlock } from '../../src/models/pixart-transformer.js';
import { UNetMidBlock2D } from '../../src/models/vae/blocks.js';
import { ResnetBlock2D } from '../../src/nn/resnet.js';
import type { VaeBlockSettings } from '../../src/models/vae/blocks.js';
import { Params } from '../../src/nn/params.js';
import { ParameterInputs } from '../../src/nn/weights.js';
import type { GradInputSpec } from '../graph/gradcheck.js';
import { gradCheck, paramsOf } from '../graph/gradcheck.js';

/** Specs of parameters by checkpoint name; norm weights drawn near 1, as trained ones are. */
function parameterSpecs(shapes: Record<string, number[]>): Record<string, GradInputSpec> {
  return Object.fromEntries(
    Object.entries(shapes).map(([name, shape]) => [
      name,
      /(norm\d?|group_norm)\.weight$/.test(name) ? { shape, range: [0.5, 1.5] as const } : { shape },
    ]),
  );
}

/** diffusers `Attention` parameters: to_q/to_k/to_v (+ biases) and to_out.0. */
function attentionShapes(
  prefix: string,
  dim: number,
  contextDim = dim,
  qkvBias = true,
): Record<string, number[]> {
  const shapes: Record<string, number[]> = {
    [`${prefix}to_q.weight`]: [dim, dim],
    [`${prefix}to_k.weight`]: [dim, contextDim],
    [`${prefix}to_v.weight`]: [dim, contextDim],
    [`${prefix}to_out.0.weight`]: [dim, dim],
    [`${prefix}to_out.0.bias`]: [dim],
  };
  if (qkvBias) for (const n of ['to_q', 'to_k', 'to_v']) shapes[`${prefix}${n}.bias`] = [dim];
  return shapes;
}

describe('self-attention module gradient (full attention, float64)', () => {
  for (const qkvBias of [true, false]) {
    it(`2 heads over a 2×3 token grid, ${qkvBias ? 'with' : 'without'} q/k/v biases`, async () => {
      const dim = 6;
      await gradCheck({
        what: `selfAttentionModule full, qkvBias ${qkvBias}`,
        inputs: {
          x: { shape: [2, 6, dim], range: [-2, 2] },
          ...parameterSpecs(attentionShapes('', dim, dim, qkvBias)),
        },
        coordinates: 12,
        build: (g, inputs) =>
          selfAttentionModule(
            {
              params: paramsOf(g, inputs),
              x: inputs.x,
              dim,
              heads: 2,
              qkvBias,
              grid: { height: 2, width: 3 },
              textTokens: 0,
            },
            { kind: 'full' },
          ),
      });
    });
  }
});

// A PixArt block as the tiny test models have it: 2 heads of 4, cross-attention to 3 caption tokens.
const pixArt = parsePixArtConfig(
  {
    num_attention_heads: 2,
    attention_head_dim: 4,
    in_channels: 4,
    out_channels: 8,
    num_layers: 1,
    cross_attention_dim: 8,
    caption_channels: 8,
    sample_size: 8,
    patch_size: 2,
  },
  'pixart test config',
);
const DIM = pixArt.innerDim;

function pixArtBlockShapes(): Record<string, number[]> {
  return {
    scale_shift_table: [6, DIM],
    ...attentionShapes('attn1.', DIM),
    ...attentionShapes('attn2.', DIM, pixArt.crossAttentionDim),
    'ff.net.0.proj.weight': [4 * DIM, DIM],
    'ff.net.0.proj.bias': [4 * DIM],
    'ff.net.2.weight': [DIM, 4 * DIM],
    'ff.net.2.bias': [DIM],
  };
}

/** The block on [B, 4 tokens, DIM] with caption [B, 3, DIM], modulation [B, 6, DIM] and an additive caption mask. */
function buildPixArtBlock(g: Graph, inputs: Record<string, Tensor>, params: Params): Tensor {
  return pixArtBlock(params, inputs.hidden, {
    index: 0,
    text: inputs.text,
    modulation: inputs.modulation,
    crossMask: inputs.mask,
    config: pixArt,
    tgate: { selfAttention: 'compute', crossAttention: 'compute', average: false },
    selfAttention: { choice: { kind: 'full' }, grid: { height: 2, width: 2 }, extras: {} },
  });
}

const pixArtBlockInputs: Record<string, GradInputSpec> = {
  hidden: { shape: [2, 4, DIM], range: [-2, 2] },
  text: { shape: [2, 3, DIM], range: [-2, 2] },
  modulation: { shape: [2, 6, DIM], range: [-0.5, 0.5] },
  // (1 − mask)·−10000 in the model; here a bias the gradient also reaches.
  mask: { shape: [2, 1, 1, 3], range: [-3, 0] },
};

describe('PixArt transformer block gradient (float64)', () => {
  it('every parameter, the hidden states, the caption, the modulation and the additive mask', async () => {
    await gradCheck({
      what: 'pixArtBlock',
      inputs: { ...pixArtBlockInputs, ...parameterSpecs(pixArtBlockShapes()) },
      coordinates: 10,
      build: (g, inputs) => buildPixArtBlock(g, inputs, paramsOf(g, inputs)),
    });
  });
});

describe('VAE block gradients (float32: ORT has no double Conv or InstanceNormalization)', () => {
  const settings: VaeBlockSettings = { groups: 2, eps: 1e-6, act: 'silu' };

  function resnetShapes(prefix: string, cin: number, cout: number): Record<string, number[]> {
    const shapes: Record<string, number[]> = {
      [`${prefix}norm1.weight`]: [cin],
      [`${prefix}norm1.bias`]: [cin],
      [`${prefix}conv1.weight`]: [cout, cin, 3, 3],
      [`${prefix}conv1.bias`]: [cout],
      [`${prefix}norm2.weight`]: [cout],
      [`${prefix}norm2.bias`]: [cout],
      [`${prefix}conv2.weight`]: [cout, cout, 3, 3],
      [`${prefix}conv2.bias`]: [cout],
    };
    if (cin !== cout) {
      shapes[`${prefix}conv_shortcut.weight`] = [cout, cin, 1, 1];
      shapes[`${prefix}conv_shortcut.bias`] = [cout];
    }
    return shapes;
  }

  it('ResnetBlock2D 2 → 4 channels (conv shortcut), silu', async () => {
    await gradCheck({
      what: 'ResnetBlock2D 2→4',
      dtype: 'float32',
      inputs: { x: { shape: [2, 2, 4, 4] }, ...parameterSpecs(resnetShapes('', 2, 4)) },
      coordinates: 10,
      build: (g, inputs) =>
        ResnetBlock2D(paramsOf(g, inputs), inputs.x, undefined, {
          inChannels: 2,
          outChannels: 4,
          ...settings,
        }),
    });
  });

  it('UNetMidBlock2D with attention: resnet, single-head attention over H·W, resnet', async () => {
    const channels = 4;
    await gradCheck({
      what: 'UNetMidBlock2D with attention',
      dtype: 'float32',
      inputs: {
        x: { shape: [1, channels, 3, 3] },
        ...parameterSpecs({
          ...resnetShapes('resnets.0.', channels, channels),
          'attentions.0.group_norm.weight': [channels],
          'attentions.0.group_norm.bias': [channels],
          ...attentionShapes('attentions.0.', channels),
          ...resnetShapes('resnets.1.', channels, channels),
        }),
      },
      coordinates: 8,
      build: (g, inputs) => UNetMidBlock2D(paramsOf(g, inputs), inputs.x, channels, true, settings),
    });
  });
});

describe('frozen parameters add no gradient nodes', () => {
  /**
   * The PixArt block with its parameters as inputs, except `constant` ones, which are graph weights
   * holding values (as a frozen, loaded module's are); then grad of Σ output w.r.t. `trained`.
   * Returns the backward nodes' module paths.
   */
  function backwardScopes(trained: (name: string) => boolean, constant: (name: string) => boolean): string[] {
    const g = new GraphClass('frozen');
    const inputs: Record<string, Tensor> = {};
    for (const [name, spec] of Object.entries(pixArtBlockInputs))
      inputs[name] = g.input(name, 'float64', spec.shape);
    const shapes = pixArtBlockShapes();
    const parameterInputs = ParameterInputs.fromShapes(shapes);
    const params = Params.of(
      g,
      {
        has: (name) => parameterInputs.has(name),
        info: (name) => parameterInputs.info(name),
        tensor: (graph, name, dtype, shape) =>
          constant(name)
            ? graph.weight(name, dtype, shape, {
                kind: 'data',
                data: new Float64Array(shape.reduce((a, b) => a * b, 1)),
                storedDType: 'float64',
              })
            : parameterInputs.tensor(graph, name, dtype, shape),
      },
      { dtype: 'float64' },
    );
    const y = buildPixArtBlock(g, inputs, params);
    const forwardNodes = g.nodes.length;
    const asked = Object.entries(parameterInputs.inputsOf(g)).filter(([name]) => trained(name));
    grad(
      sum(mul(y, y), [0, 1, 2]),
      asked.map(([, t]) => t),
    );
    return g.nodes.slice(forwardNodes).map((n) => n.scope);
  }

  const under = (scopes: string[], module: string): number =>
    scopes.filter((s) => s === `grad/${module}` || s.startsWith(`grad/${module}.`)).length;

  it('a frozen module before the trained ones: none in its scope', () => {
    const scopes = backwardScopes(
      (name) => name.startsWith('ff.'),
      () => false,
    );
    assert.ok(under(scopes, 'ff') > 0, 'the trained feed-forward has backward nodes');
    assert.equal(under(scopes, 'attn1'), 0, 'backward nodes in the frozen self-attention');
    assert.equal(under(scopes, 'attn2'), 0, 'backward nodes in the frozen cross-attention');
  });

  it('a frozen module after the trained ones: only what carries the gradient through it', () => {
    const trained = (name: string): boolean => name.startsWith('attn1.');
    const frozenInputs = backwardScopes(trained, () => false);
    const frozenWeights = backwardScopes(trained, (name) => name.startsWith('ff.'));
    const allTrained = backwardScopes(
      (name) => name.startsWith('attn1.') || name.startsWith('ff.'),
      () => false,
    );
    assert.ok(under(frozenInputs, 'ff') > 0, 'the gradient passes through the frozen feed-forward');
    assert.equal(
      under(frozenInputs, 'ff'),
      under(frozenWeights, 'ff'),
      'the frozen feed-forward has as many backward nodes with its parameters as inputs as with them as constants',
    );
    assert.ok(under(allTrained, 'ff') > under(frozenInputs, 'ff'), 'training it adds its weight gradients');
  });
});
