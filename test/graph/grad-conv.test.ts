/**
 * Gradients of conv2d, convTranspose2d, avgPool2d and upsample2d (src/graph/ops/conv.ts) against
 * central finite differences through test/graph/gradcheck.ts, for every attribute each op has.
 *
 * All in float32: ORT's CPU EP has no double Conv, ConvTranspose, AveragePool or Resize kernel. The
 * harness's float32 step and tolerance apply (h = 1e-2, 2e-3 relative to max(1, max|numeric|)); every
 * op here is linear in each input, so the differences have no truncation error and what is measured
 * is float32 rounding, about 1e-5.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { GraphBuildError } from '../../src/errors.js';
import type { Padding2d } from '../../src/graph/index.js';
import { Graph, avgPool2d, conv2d, convTranspose2d, grad, sum, upsample2d } from '../../src/graph/index.js';
import { gradCheck } from './gradcheck.js';

type Pair = [number, number];

describe('conv2d gradient (float32)', () => {
  const cases: {
    what: string;
    x: number[];
    dims?: (number | string)[];
    w: number[];
    bias: boolean;
    stride?: Pair;
    padding?: Padding2d;
    dilation?: Pair;
    groups?: number;
  }[] = [
    { what: '3×3, padding 1, with bias', x: [2, 3, 5, 4], w: [4, 3, 3, 3], bias: true, padding: 1 },
    {
      // The last windows stop short of the padded end: the input gradient needs an output padding.
      what: 'stride 2, asymmetric padding [1, 0, 2, 1], no bias',
      x: [1, 2, 8, 7],
      w: [3, 2, 3, 2],
      bias: false,
      stride: [2, 2],
      padding: [1, 0, 2, 1],
    },
    {
      what: 'stride [1, 2], dilation [2, 1], padding [2, 1]',
      x: [1, 3, 7, 8],
      w: [2, 3, 3, 3],
      bias: true,
      stride: [1, 2],
      dilation: [2, 1],
      padding: [2, 1],
    },
    { what: 'groups 2', x: [2, 4, 5, 5], w: [6, 2, 3, 3], bias: true, padding: 1, groups: 2 },
    {
      what: 'depthwise with channel multiplier 2, stride 2',
      x: [1, 3, 6, 6],
      w: [6, 1, 3, 3],
      bias: false,
      stride: [2, 2],
      padding: 1,
      groups: 3,
    },
    { what: '1×1', x: [2, 5, 3, 4], w: [3, 5, 1, 1], bias: true },
    // The PixArt patch embedding: kernel = stride, no padding.
    { what: 'patchify, kernel 2 stride 2', x: [2, 4, 4, 6], w: [6, 4, 2, 2], bias: true, stride: [2, 2] },
    {
      what: 'named batch [B, 2, 5, 5]',
      x: [2, 2, 5, 5],
      dims: ['B', 2, 5, 5],
      w: [3, 2, 3, 3],
      bias: true,
      padding: 1,
    },
  ];
  for (const c of cases) {
    it(c.what, async () => {
      await gradCheck({
        what: `conv2d, ${c.what}`,
        dtype: 'float32',
        inputs: {
          x: { shape: c.x, dims: c.dims },
          w: { shape: c.w },
          ...(c.bias ? { b: { shape: [c.w[0]] } } : {}),
        },
        build: (_g, { x, w, b }) =>
          conv2d(x, w, b, { stride: c.stride, padding: c.padding, dilation: c.dilation, groups: c.groups }),
      });
    });
  }

  it('named spatial dims: the input gradient of a same-size conv; the weight gradient is refused', async () => {
    await gradCheck({
      what: 'conv2d [B, 2, H, W], padding 1, input only',
      dtype: 'float32',
      inputs: {
        x: { shape: [2, 2, 4, 5], dims: ['B', 2, 'H', 'W'] },
        w: { shape: [3, 2, 3, 3], grad: false },
      },
      build: (_g, { x, w }) => conv2d(x, w, undefined, { padding: 1 }),
    });
    const g = new Graph('named');
    const w = g.input('w', 'float32', [3, 2, 3, 3]);
    const y = conv2d(g.input('x', 'float32', ['B', 2, 'H', 'W']), w, undefined, { padding: 1 });
    assert.throws(
      () => grad(sum(y, [0, 1, 2, 3]), [w]),
      (e: unknown) =>
        e instanceof GraphBuildError && /weight gradient .* static .*\[B, 2, H, W\]/.test(e.message),
    );
  });

  it('a frozen weight and bias: only the input gradient (a frozen conv inside a trained model)', async () => {
    await gradCheck({
      what: 'conv2d, input only',
      dtype: 'float32',
      inputs: {
        x: { shape: [1, 2, 5, 5] },
        w: { shape: [2, 2, 3, 3], grad: false },
        b: { shape: [2], grad: false },
      },
      build: (_g, { x, w, b }) => conv2d(x, w, b, { padding: 1, stride: 2 }),
    });
  });
});

describe('convTranspose2d gradient (float32)', () => {
  const cases: {
    what: string;
    x: number[];
    w: number[];
    bias: boolean;
    stride?: Pair;
    padding?: Padding2d;
    outputPadding?: Pair;
    dilation?: Pair;
    groups?: number;
  }[] = [
    { what: '3×3, padding 1, with bias', x: [2, 3, 3, 4], w: [3, 2, 3, 3], bias: true, padding: 1 },
    {
      what: 'stride [2, 3], asymmetric padding, output padding [1, 2], groups 2',
      x: [2, 4, 3, 4],
      w: [4, 3, 3, 2],
      bias: true,
      stride: [2, 3],
      padding: [1, 0, 0, 1],
      outputPadding: [1, 2],
      groups: 2,
    },
    { what: 'dilation [2, 1], no bias', x: [1, 2, 4, 3], w: [2, 3, 2, 3], bias: false, dilation: [2, 1] },
  ];
  for (const c of cases) {
    it(c.what, async () => {
      await gradCheck({
        what: `convTranspose2d, ${c.what}`,
        dtype: 'float32',
        inputs: {
          x: { shape: c.x },
          w: { shape: c.w },
          ...(c.bias ? { b: { shape: [c.w[1] * (c.groups ?? 1)] } } : {}),
        },
        build: (_g, { x, w, b }) =>
          convTranspose2d(x, w, b, {
            stride: c.stride,
            padding: c.padding,
            outputPadding: c.outputPadding,
            dilation: c.dilation,
            groups: c.groups,
          }),
      });
    });
  }
});

describe('avgPool2d gradient (float32)', () => {
  const cases: {
    what: string;
    x: number[];
    dims?: (number | string)[];
    kernel: Pair;
    stride?: Pair;
    padding?: Pair;
    countIncludePad?: boolean;
    ceilMode?: boolean;
  }[] = [
    { what: '2×2, stride = kernel', x: [1, 2, 6, 6], kernel: [2, 2] },
    {
      what: '3×3, stride 2, padding 1, padding counted',
      x: [2, 2, 7, 6],
      kernel: [3, 3],
      stride: [2, 2],
      padding: [1, 1],
    },
    {
      what: '3×3, stride 2, padding 1, padding not counted',
      x: [2, 2, 7, 6],
      kernel: [3, 3],
      stride: [2, 2],
      padding: [1, 1],
      countIncludePad: false,
    },
    { what: 'ceil mode without padding', x: [1, 2, 5, 7], kernel: [2, 2], stride: [2, 2], ceilMode: true },
    {
      what: 'ceil mode, padding 1, padding counted',
      x: [1, 2, 6, 6],
      kernel: [3, 3],
      stride: [2, 2],
      padding: [1, 1],
      ceilMode: true,
    },
    {
      what: 'ceil mode, padding 1, padding not counted',
      x: [1, 2, 6, 6],
      kernel: [3, 3],
      stride: [2, 2],
      padding: [1, 1],
      ceilMode: true,
      countIncludePad: false,
    },
    {
      what: 'ceil mode drops a window that would start in the padding',
      x: [1, 1, 5, 5],
      kernel: [2, 2],
      stride: [3, 3],
      padding: [1, 1],
      ceilMode: true,
    },
    {
      what: 'rectangular kernel and stride',
      x: [1, 3, 7, 8],
      kernel: [3, 2],
      stride: [2, 1],
      padding: [1, 0],
    },
    {
      what: 'overlapping windows, named batch',
      x: [2, 2, 5, 5],
      dims: ['B', 2, 5, 5],
      kernel: [3, 3],
      stride: [1, 1],
    },
  ];
  for (const c of cases) {
    it(c.what, async () => {
      await gradCheck({
        what: `avgPool2d, ${c.what}`,
        dtype: 'float32',
        inputs: { x: { shape: c.x, dims: c.dims } },
        build: (_g, { x }) =>
          avgPool2d(x, c.kernel, {
            stride: c.stride,
            padding: c.padding,
            countIncludePad: c.countIncludePad,
            ceilMode: c.ceilMode,
          }),
      });
    });
  }
});

describe('upsample2d gradient (float32)', () => {
  const cases: {
    what: string;
    x: number[];
    dims?: (number | string)[];
    mode: 'nearest' | 'bilinear';
    scale?: number | Pair;
    size?: Pair;
    alignCorners?: boolean;
  }[] = [
    { what: 'nearest, scale 2 (the VAE decoder)', x: [1, 2, 3, 4], mode: 'nearest', scale: 2 },
    { what: 'nearest, scale [2, 3]', x: [2, 1, 3, 2], mode: 'nearest', scale: [2, 3] },
    {
      what: 'nearest, scale 2 over named dims',
      x: [2, 1, 3, 2],
      dims: ['B', 1, 'H', 'W'],
      mode: 'nearest',
      scale: 2,
    },
    { what: 'nearest, size [6, 8] from 3×4 (whole factors)', x: [1, 2, 3, 4], mode: 'nearest', size: [6, 8] },
    { what: 'nearest, size [5, 7] from 3×4', x: [1, 2, 3, 4], mode: 'nearest', size: [5, 7] },
    { what: 'nearest, size [3, 2] from 7×5 (down)', x: [1, 1, 7, 5], mode: 'nearest', size: [3, 2] },
    { what: 'nearest, scale [1.3, 2.5] from 5×4', x: [1, 2, 5, 4], mode: 'nearest', scale: [1.3, 2.5] },
    { what: 'bilinear, scale 2', x: [1, 2, 3, 4], mode: 'bilinear', scale: 2 },
    { what: 'bilinear, size [5, 7] from 3×4', x: [2, 1, 3, 4], mode: 'bilinear', size: [5, 7] },
    { what: 'bilinear, scale [1.3, 2.5]', x: [1, 2, 5, 4], mode: 'bilinear', scale: [1.3, 2.5] },
    { what: 'bilinear, size [2, 3] from 5×7 (down)', x: [1, 2, 5, 7], mode: 'bilinear', size: [2, 3] },
    {
      what: 'bilinear align corners, size [5, 7] from 3×4',
      x: [1, 2, 3, 4],
      mode: 'bilinear',
      size: [5, 7],
      alignCorners: true,
    },
    {
      what: 'bilinear align corners, scale [1.3, 2.5]',
      x: [1, 2, 5, 4],
      mode: 'bilinear',
      scale: [1.3, 2.5],
      alignCorners: true,
    },
    {
      what: 'bilinear align corners, size [1, 3] from 4×5 (one output row)',
      x: [1, 1, 4, 5],
      mode: 'bilinear',
      size: [1, 3],
      alignCorners: true,
    },
  ];
  for (const c of cases) {
    it(c.what, async () => {
      await gradCheck({
        what: `upsample2d, ${c.what}`,
        dtype: 'float32',
        inputs: { x: { shape: c.x, dims: c.dims } },
        build: (_g, { x }) =>
          upsample2d(x, { mode: c.mode, scale: c.scale, size: c.size, alignCorners: c.alignCorners }),
      });
    });
  }
});
