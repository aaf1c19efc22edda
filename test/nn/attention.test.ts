/**
 * nn/'s diffusers `Attention` (self, cross, qk norms, additive masks, out_dim) and
 * `BasicTransformerBlock` with norm_type 'layer_norm' (the SD UNet's block) against float64 loops of
 * diffusers' definitions (models/attention_processor.py AttnProcessor2_0, models/attention.py), on
 * tiny random inputs and parameters.
 */
import { describe, it } from 'node:test';

import { Attention } from '../../src/nn/attention.js';
import type { FeedForwardActivation } from '../../src/nn/transformer-block.js';
import { BasicTransformerBlock } from '../../src/nn/transformer-block.js';
import { assertClose, maxAbs } from '../compare.js';
import { seededUniform, testSeed } from '../random.js';
import type { RefMask } from '../reference/attention.js';
import { attentionRef } from '../reference/attention.js';
import type { RefTensor } from '../reference/math.js';
import { geluExact, geluTanh, layerNorm, linear, mapBinary, rmsNorm } from '../reference/math.js';
import type { ModuleRun } from './module-harness.js';
import { attentionParameters, runModule } from './module-harness.js';

/**
 * float32 module vs float64 loop, relative to max(1, max|reference|): measured ≤ 2.9e-7 (Attention)
 * and ≤ 2.6e-7 (block) over 10 seeds; leaving out the qk norms, the mask or norm1 is off by 0.28 or
 * more, a 5 % error in the 1/√d scale by 1.4e-2 or more.
 */
const TOLERANCE = 2e-6;

function assertModuleClose(run: ModuleRun, expected: RefTensor, what: string): void {
  assertClose(run.output.data as Float32Array, expected.data, {
    atol: TOLERANCE * Math.max(1, maxAbs(expected.data)),
    rtol: 0,
    what,
  });
}

interface AttentionRefOptions {
  heads: number;
  bias: boolean;
  qkNorm?: 'layer_norm' | 'rms_norm';
  eps?: number;
  mask?: RefMask;
}

/** A norm over each head's features of [B, N, H·D]: the row-major data read as [B, N, H, D]. */
function headNormRef(
  t: RefTensor,
  heads: number,
  kind: 'layer_norm' | 'rms_norm',
  ref: (name: string) => RefTensor,
  prefix: string,
  eps: number,
): RefTensor {
  const [batch, tokens, width] = t.shape;
  const split: RefTensor = { shape: [batch, tokens, heads, width / heads], data: t.data };
  const normed =
    kind === 'layer_norm'
      ? layerNorm(split, -1, ref(`${prefix}weight`), ref(`${prefix}bias`), eps)
      : rmsNorm(split, ref(`${prefix}weight`), eps);
  return { shape: t.shape, data: normed.data };
}

/** diffusers Attention with AttnProcessor2_0, in float64. */
function attentionModuleRef(
  ref: (name: string) => RefTensor,
  prefix: string,
  x: RefTensor,
  context: RefTensor | undefined,
  o: AttentionRefOptions,
): RefTensor {
  const b = (name: string): RefTensor | undefined => (o.bias ? ref(`${prefix}${name}.bias`) : undefined);
  const source = context ?? x;
  let q = linear(x, ref(`${prefix}to_q.weight`), b('to_q'));
  let k = linear(source, ref(`${prefix}to_k.weight`), b('to_k'));
  const v = linear(source, ref(`${prefix}to_v.weight`), b('to_v'));
  if (o.qkNorm) {
    q = headNormRef(q, o.heads, o.qkNorm, ref, `${prefix}norm_q.`, o.eps ?? 1e-5);
    k = headNormRef(k, o.heads, o.qkNorm, ref, `${prefix}norm_k.`, o.eps ?? 1e-5);
  }
  const context2 = attentionRef(q, k, v, o.heads, o.mask ? { mask: o.mask } : {});
  return linear(context2, ref(`${prefix}to_out.0.weight`), ref(`${prefix}to_out.0.bias`));
}

/** An additive mask [B, 1, 1, M]: 0 keeps a key, −10000 drops it; each row keeps at least one. */
function keyMask(batch: number, keys: number, uniform: () => number): Float32Array {
  const data = new Float32Array(batch * keys);
  for (let b = 0; b < batch; b++) {
    for (let j = 0; j < keys; j++) data[b * keys + j] = j > 0 && uniform() < 0.4 ? -10000 : 0;
  }
  return data;
}

describe('Attention vs a float64 loop', () => {
  const seed = testSeed('test/nn/attention.test.ts Attention');
  const batch = 2;
  const tokens = 5;
  const keys = 4;
  const queryDim = 6;
  const contextDim = 7;
  const heads = 2;
  const dimHead = 4;
  const inner = heads * dimHead;

  const cases: {
    what: string;
    cross: boolean;
    bias: boolean;
    qkNorm?: 'layer_norm' | 'rms_norm';
    mask?: boolean;
    outDim?: number;
  }[] = [
    { what: 'self-attention, biases on to_q/to_k/to_v', cross: false, bias: true },
    { what: 'self-attention, no biases, out_dim 3', cross: false, bias: false, outDim: 3 },
    { what: 'cross-attention to a 7-wide context', cross: true, bias: false },
    { what: 'cross-attention with an additive key mask', cross: true, bias: true, mask: true },
    { what: 'self-attention with layer_norm qk norms', cross: false, bias: true, qkNorm: 'layer_norm' },
    { what: 'cross-attention with rms_norm qk norms', cross: true, bias: false, qkNorm: 'rms_norm' },
  ];
  cases.forEach((c, index) => {
    it(c.what, async () => {
      const uniform = seededUniform(seed + index);
      const parameters = attentionParameters('', {
        queryDim,
        contextDim: c.cross ? contextDim : undefined,
        inner,
        bias: c.bias,
        outDim: c.outDim,
      });
      if (c.qkNorm) {
        for (const n of ['norm_q', 'norm_k']) {
          parameters[`${n}.weight`] = [dimHead];
          if (c.qkNorm === 'layer_norm') parameters[`${n}.bias`] = [dimHead];
        }
      }
      const keyCount = c.cross ? keys : tokens;
      const inputs: Record<string, number[]> = { x: [batch, tokens, queryDim] };
      if (c.cross) inputs.context = [batch, keys, contextDim];
      if (c.mask) inputs.mask = [batch, 1, 1, keyCount];
      const maskValues = c.mask ? keyMask(batch, keyCount, uniform) : undefined;
      const run = await runModule({
        parameters,
        inputs,
        values: maskValues ? { mask: maskValues } : {},
        uniform,
        module: (p, t) =>
          Attention(p, t.x, t.context, {
            queryDim,
            crossAttentionDim: c.cross ? contextDim : undefined,
            heads,
            dimHead,
            bias: c.bias,
            ...(c.outDim ? { outDim: c.outDim } : {}),
            ...(c.qkNorm ? { qkNorm: c.qkNorm } : {}),
            ...(t.mask ? { mask: t.mask } : {}),
          }),
      });
      const expected = attentionModuleRef(
        run.ref,
        '',
        run.ref('x'),
        c.cross ? run.ref('context') : undefined,
        {
          heads,
          bias: c.bias,
          qkNorm: c.qkNorm,
          ...(maskValues
            ? { mask: { shape: [batch, 1, 1, keyCount], data: maskValues, kind: 'additive' } }
            : {}),
        },
      );
      assertModuleClose(run, expected, `Attention, ${c.what}`);
    });
  });
});

/** diffusers FeedForward (gelu / gelu-approximate / geglu) in float64. */
function feedForwardRef(
  ref: (name: string) => RefTensor,
  x: RefTensor,
  activation: FeedForwardActivation,
): RefTensor {
  const projected = linear(x, ref('ff.net.0.proj.weight'), ref('ff.net.0.proj.bias'));
  let hidden: RefTensor;
  if (activation === 'geglu') {
    const width = projected.shape[projected.shape.length - 1];
    const inner = width / 2;
    const rows = projected.data.length / width;
    const data = new Float64Array(rows * inner);
    for (let r = 0; r < rows; r++) {
      for (let j = 0; j < inner; j++) {
        data[r * inner + j] =
          projected.data[r * width + j] * geluExact(projected.data[r * width + inner + j]);
      }
    }
    hidden = { shape: [...projected.shape.slice(0, -1), inner], data };
  } else {
    hidden = {
      shape: projected.shape,
      data: projected.data.map(activation === 'gelu' ? geluExact : geluTanh),
    };
  }
  return linear(hidden, ref('ff.net.2.weight'), ref('ff.net.2.bias'));
}

const plus = (a: RefTensor, b: RefTensor): RefTensor => mapBinary(a, b, (x, y) => x + y);

/** diffusers BasicTransformerBlock, norm_type 'layer_norm', in float64. */
function blockRef(
  ref: (name: string) => RefTensor,
  hidden: RefTensor,
  text: RefTensor | undefined,
  o: { heads: number; bias: boolean; eps: number; activation: FeedForwardActivation; mask?: RefMask },
): RefTensor {
  const norm = (name: string, x: RefTensor): RefTensor =>
    layerNorm(x, -1, ref(`${name}.weight`), ref(`${name}.bias`), o.eps);
  // The mask is the text's: attn2 only.
  const { mask, ...unmasked } = o;
  let h = plus(hidden, attentionModuleRef(ref, 'attn1.', norm('norm1', hidden), undefined, unmasked));
  if (text) {
    h = plus(
      h,
      attentionModuleRef(ref, 'attn2.', norm('norm2', h), text, { ...unmasked, ...(mask ? { mask } : {}) }),
    );
  }
  return plus(h, feedForwardRef(ref, norm('norm3', h), o.activation));
}

describe("BasicTransformerBlock, norm_type 'layer_norm', vs a float64 loop", () => {
  const seed = testSeed('test/nn/attention.test.ts BasicTransformerBlock');
  const batch = 2;
  const tokens = 6;
  const textTokens = 3;
  const dim = 8;
  const textDim = 5;
  const heads = 2;
  const ffInner = 12;

  const cases: {
    what: string;
    cross: boolean;
    activation: FeedForwardActivation;
    bias: boolean;
    mask?: boolean;
  }[] = [
    { what: 'self- and cross-attention, GEGLU (SD 1.x/2.x)', cross: true, activation: 'geglu', bias: false },
    {
      what: 'with attention biases and a text mask, GELU',
      cross: true,
      activation: 'gelu',
      bias: true,
      mask: true,
    },
    { what: 'self-attention only, GELU(tanh)', cross: false, activation: 'gelu-approximate', bias: false },
  ];
  cases.forEach((c, index) => {
    it(c.what, async () => {
      const uniform = seededUniform(seed + index);
      const gated = c.activation === 'geglu';
      const parameters: Record<string, number[]> = {
        ...attentionParameters('attn1.', { queryDim: dim, inner: dim, bias: c.bias }),
        'norm1.weight': [dim],
        'norm1.bias': [dim],
        'norm3.weight': [dim],
        'norm3.bias': [dim],
        'ff.net.0.proj.weight': [gated ? 2 * ffInner : ffInner, dim],
        'ff.net.0.proj.bias': [gated ? 2 * ffInner : ffInner],
        'ff.net.2.weight': [dim, ffInner],
        'ff.net.2.bias': [dim],
      };
      if (c.cross) {
        Object.assign(
          parameters,
          attentionParameters('attn2.', { queryDim: dim, contextDim: textDim, inner: dim, bias: c.bias }),
        );
        parameters['norm2.weight'] = [dim];
        parameters['norm2.bias'] = [dim];
      }
      const inputs: Record<string, number[]> = { hidden: [batch, tokens, dim] };
      if (c.cross) inputs.text = [batch, textTokens, textDim];
      if (c.mask) inputs.mask = [batch, 1, 1, textTokens];
      const maskValues = c.mask ? keyMask(batch, textTokens, uniform) : undefined;
      const eps = 1e-5;
      const run = await runModule({
        parameters,
        inputs,
        values: maskValues ? { mask: maskValues } : {},
        uniform,
        module: (p, t) =>
          BasicTransformerBlock(p, t.hidden, t.text, {
            dim,
            heads,
            dimHead: dim / heads,
            ...(c.cross ? { crossAttentionDim: textDim } : {}),
            attentionBias: c.bias,
            normType: 'layer_norm',
            normEps: eps,
            activation: c.activation,
            ffInnerDim: ffInner,
            ...(t.mask ? { crossMask: t.mask } : {}),
          }),
      });
      const expected = blockRef(run.ref, run.ref('hidden'), c.cross ? run.ref('text') : undefined, {
        heads,
        bias: c.bias,
        eps,
        activation: c.activation,
        ...(maskValues
          ? { mask: { shape: [batch, 1, 1, textTokens], data: maskValues, kind: 'additive' } }
          : {}),
      });
      assertModuleClose(run, expected, `BasicTransformerBlock, ${c.what}`);
    });
  });
});
