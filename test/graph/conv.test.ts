/**
 * conv2d, convTranspose2d, avgPool2d and upsample2d (src/graph/ops/conv.ts) through ONNX Runtime
 * against the float64 loops of test/reference/conv.ts, which follow PyTorch's definitions.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import type { Padding2d } from '../../src/graph/index.js';
import { Graph, avgPool2d, conv2d, convTranspose2d, mul, upsample2d } from '../../src/graph/index.js';
import {
  avgPool2dRef,
  conv2dRef,
  convTranspose2dRef,
  upsampleBilinearRef,
  upsampleNearestRef,
} from '../reference/conv.js';
import { assertMatchesRef, fromHost } from '../reference/layout.js';
import { randomArray, randomTensor, runGraph } from '../helpers.js';
import { seededUniform, testSeed } from '../random.js';

const TOL = { atol: 1e-5, rtol: 1e-5 };

type Pair = [number, number];

function pads4(p: Padding2d): [number, number, number, number] {
  if (typeof p === 'number') return [p, p, p, p];
  if (p.length === 2) return [p[0], p[1], p[0], p[1]];
  return [p[0], p[1], p[2], p[3]];
}

describe('conv2d', () => {
  const cases: {
    name: string;
    x: number[];
    w: number[];
    bias: boolean;
    stride?: Pair;
    padding?: Padding2d;
    dilation?: Pair;
    groups?: number;
    seed: number;
  }[] = [
    {
      name: '3×3, padding 1, with bias',
      x: [2, 3, 7, 6],
      w: [4, 3, 3, 3],
      bias: true,
      padding: 1,
      seed: 201,
    },
    {
      name: 'stride 2, asymmetric padding, no bias',
      x: [1, 2, 9, 8],
      w: [3, 2, 3, 2],
      bias: false,
      stride: [2, 2],
      padding: [1, 0, 2, 1],
      seed: 202,
    },
    {
      name: 'stride [1, 2], dilation [2, 1], padding [2, 1]',
      x: [1, 3, 8, 9],
      w: [2, 3, 3, 3],
      bias: true,
      stride: [1, 2],
      dilation: [2, 1],
      padding: [2, 1],
      seed: 203,
    },
    { name: 'groups = 2', x: [2, 4, 6, 6], w: [6, 2, 3, 3], bias: true, padding: 1, groups: 2, seed: 204 },
    {
      name: 'depthwise with channel multiplier 2, stride 2',
      x: [1, 3, 7, 7],
      w: [6, 1, 3, 3],
      bias: false,
      stride: [2, 2],
      padding: 1,
      groups: 3,
      seed: 205,
    },
    { name: '1×1', x: [2, 5, 3, 4], w: [3, 5, 1, 1], bias: true, seed: 206 },
  ];
  for (const c of cases) {
    it(c.name, async () => {
      const random = seededUniform(c.seed);
      const feeds = {
        x: randomTensor(c.x, random),
        w: randomTensor(c.w, random),
        ...(c.bias ? { b: randomTensor([c.w[0]], random) } : {}),
      };
      const options = { stride: c.stride, padding: c.padding, dilation: c.dilation, groups: c.groups };
      const out = await runGraph((_g, t) => ({ y: conv2d(t.x, t.w, t.b, options) }), feeds);
      const expected = conv2dRef(fromHost(feeds.x), fromHost(feeds.w), feeds.b && fromHost(feeds.b), {
        stride: c.stride ?? [1, 1],
        pads: pads4(c.padding ?? 0),
        dilation: c.dilation ?? [1, 1],
        groups: c.groups ?? 1,
      });
      assertMatchesRef(out.y, expected, 'conv2d', TOL);
    });
  }

  it('with the weight and bias as graph weights (initializers ORT may repack)', async () => {
    const random = seededUniform(207);
    const x = randomTensor([1, 4, 8, 8], random);
    const wValues = randomArray(8 * 2 * 3 * 3, random);
    const bValues = randomArray(8, random);
    const out = await runGraph(
      (g, t) => {
        const w = g.weight('conv.weight', 'float32', [8, 2, 3, 3], {
          kind: 'data',
          data: wValues,
          storedDType: 'float32',
        });
        const b = g.weight('conv.bias', 'float32', [8], {
          kind: 'data',
          data: bValues,
          storedDType: 'float32',
        });
        return { y: conv2d(t.x, w, b, { padding: [0, 1, 2, 1], stride: [2, 1], groups: 2 }) };
      },
      { x },
    );
    const expected = conv2dRef(
      fromHost(x),
      { shape: [8, 2, 3, 3], data: Float64Array.from(wValues) },
      { shape: [8], data: Float64Array.from(bValues) },
      {
        stride: [2, 1],
        pads: [0, 1, 2, 1],
        dilation: [1, 1],
        groups: 2,
      },
    );
    assertMatchesRef(out.y, expected, 'conv2d', TOL);
  });
});

describe('convTranspose2d', () => {
  const cases: {
    name: string;
    x: number[];
    w: number[];
    bias: boolean;
    stride?: Pair;
    padding?: Padding2d;
    outputPadding?: Pair;
    dilation?: Pair;
    groups?: number;
  }[] = [
    { name: '3×3, padding 1, with bias', x: [2, 3, 4, 5], w: [3, 2, 3, 3], bias: true, padding: 1 },
    {
      name: 'stride 2, output padding 1, asymmetric padding',
      x: [1, 2, 4, 3],
      w: [2, 3, 3, 2],
      bias: false,
      stride: [2, 2],
      padding: [1, 0, 0, 1],
      outputPadding: [1, 1],
    },
    {
      name: 'stride [3, 1], dilation [1, 2], groups 2',
      x: [1, 4, 3, 4],
      w: [4, 3, 2, 3],
      bias: true,
      stride: [3, 1],
      dilation: [1, 2],
      groups: 2,
    },
  ];
  for (const c of cases) {
    it(c.name, async () => {
      const random = seededUniform(testSeed(`convTranspose2d ${c.name}`));
      const cout = c.w[1] * (c.groups ?? 1);
      const feeds = {
        x: randomTensor(c.x, random),
        w: randomTensor(c.w, random),
        ...(c.bias ? { b: randomTensor([cout], random) } : {}),
      };
      const options = {
        stride: c.stride,
        padding: c.padding,
        outputPadding: c.outputPadding,
        dilation: c.dilation,
        groups: c.groups,
      };
      const out = await runGraph((_g, t) => ({ y: convTranspose2d(t.x, t.w, t.b, options) }), feeds);
      const expected = convTranspose2dRef(
        fromHost(feeds.x),
        fromHost(feeds.w),
        feeds.b && fromHost(feeds.b),
        {
          stride: c.stride ?? [1, 1],
          pads: pads4(c.padding ?? 0),
          dilation: c.dilation ?? [1, 1],
          groups: c.groups ?? 1,
          outputPadding: c.outputPadding ?? [0, 0],
        },
      );
      assertMatchesRef(out.y, expected, 'convTranspose2d', TOL);
    });
  }

  it('errors: an output padding not below the stride (ONNX Runtime refuses it when run)', () => {
    const g = new Graph('errors');
    const x = g.input('x', 'float32', [1, 2, 4, 4]);
    const w = g.input('w', 'float32', [2, 2, 3, 3]);
    assert.throws(
      () => convTranspose2d(x, w, undefined, { stride: 2, dilation: 3, outputPadding: 2 }),
      /convTranspose2d: output padding \[2, 2\] must be smaller than the stride \[2, 2\]/,
    );
  });
});

describe('avgPool2d (torch semantics)', () => {
  const cases: {
    name: string;
    x: number[];
    kernel: Pair;
    stride?: Pair;
    padding?: Pair;
    countIncludePad?: boolean;
    ceilMode?: boolean;
    seed: number;
  }[] = [
    { name: '2×2, stride = kernel', x: [1, 2, 6, 6], kernel: [2, 2], seed: 211 },
    {
      name: '3×3, stride 2, padding 1, padding counted',
      x: [2, 2, 7, 6],
      kernel: [3, 3],
      stride: [2, 2],
      padding: [1, 1],
      seed: 212,
    },
    {
      name: '3×3, stride 2, padding 1, padding not counted',
      x: [2, 2, 7, 6],
      kernel: [3, 3],
      stride: [2, 2],
      padding: [1, 1],
      countIncludePad: false,
      seed: 213,
    },
    {
      name: 'ceil mode without padding',
      x: [1, 2, 5, 7],
      kernel: [2, 2],
      stride: [2, 2],
      ceilMode: true,
      seed: 214,
    },
    {
      name: 'ceil mode, padding 1, padding counted',
      x: [1, 2, 6, 6],
      kernel: [3, 3],
      stride: [2, 2],
      padding: [1, 1],
      ceilMode: true,
      seed: 215,
    },
    {
      name: 'ceil mode, padding 1, padding not counted',
      x: [1, 2, 6, 6],
      kernel: [3, 3],
      stride: [2, 2],
      padding: [1, 1],
      ceilMode: true,
      countIncludePad: false,
      seed: 216,
    },
    {
      name: 'ceil mode drops a window that would start in the padding',
      x: [1, 1, 5, 5],
      kernel: [2, 2],
      stride: [3, 3],
      padding: [1, 1],
      ceilMode: true,
      seed: 217,
    },
    {
      name: 'rectangular kernel and stride',
      x: [1, 3, 7, 8],
      kernel: [3, 2],
      stride: [2, 1],
      padding: [1, 0],
      seed: 218,
    },
  ];
  for (const c of cases) {
    it(c.name, async () => {
      const x = randomTensor(c.x, seededUniform(c.seed));
      const out = await runGraph(
        (_g, t) => ({
          y: avgPool2d(t.x, c.kernel, {
            stride: c.stride,
            padding: c.padding,
            countIncludePad: c.countIncludePad,
            ceilMode: c.ceilMode,
          }),
        }),
        { x },
      );
      const expected = avgPool2dRef(
        fromHost(x),
        c.kernel,
        c.stride ?? c.kernel,
        c.padding ?? [0, 0],
        c.countIncludePad ?? true,
        c.ceilMode ?? false,
      );
      assertMatchesRef(out.y, expected, 'avgPool2d', TOL);
    });
  }

  it('a dropped ceil-mode window: a later node of the torch size compiles (ONNX infers one more)', async () => {
    const random = seededUniform(testSeed('avgPool2d dropped window'));
    const x = randomTensor([1, 2, 5, 5], random);
    const scale = randomTensor([1, 2, 2, 2], random);
    const out = await runGraph(
      (_g, t) => ({ y: mul(avgPool2d(t.x, 2, { stride: 3, padding: 1, ceilMode: true }), t.scale) }),
      { x, scale },
    );
    const pooled = avgPool2dRef(fromHost(x), [2, 2], [3, 3], [1, 1], true, true);
    const factors = scale.data as Float32Array;
    const expected = { shape: pooled.shape, data: pooled.data.map((v, i) => v * factors[i]) };
    assertMatchesRef(out.y, expected, 'avgPool2d · scale', TOL);
  });
});

/** torch's output size for a scale factor: floor(in · scale). */
function scaledSize(x: number[], scale: Pair): Pair {
  return [Math.floor(x[2] * scale[0]), Math.floor(x[3] * scale[1])];
}

describe('upsample2d', () => {
  const nearest: { name: string; x: number[]; scale?: Pair; size?: Pair; seed: number }[] = [
    { name: 'nearest, scale 2', x: [1, 2, 3, 4], scale: [2, 2], seed: 221 },
    { name: 'nearest, scale [2, 3]', x: [2, 1, 3, 2], scale: [2, 3], seed: 222 },
    { name: 'nearest, size [5, 7] from 3×4', x: [1, 2, 3, 4], size: [5, 7], seed: 223 },
    { name: 'nearest, size [4, 3] from 6×5 (down)', x: [1, 2, 6, 5], size: [4, 3], seed: 224 },
    { name: 'nearest, size [3, 2] from 7×5 (down)', x: [1, 1, 7, 5], size: [3, 2], seed: 225 },
    // floor(5 / 1.3) = 3 but floor(5 · 5 / 6) = 4: a scale maps back by 1/scale, as in torch
    { name: 'nearest, scale [1.3, 2.5] from 5×4', x: [1, 2, 5, 4], scale: [1.3, 2.5], seed: 226 },
  ];
  for (const c of nearest) {
    it(c.name, async () => {
      const x = randomTensor(c.x, seededUniform(c.seed));
      const out = await runGraph(
        (_g, t) => ({ y: upsample2d(t.x, { mode: 'nearest', scale: c.scale, size: c.size }) }),
        { x },
      );
      const size = c.size ?? scaledSize(c.x, c.scale as Pair);
      const ratio: Pair | undefined = c.scale ? [1 / c.scale[0], 1 / c.scale[1]] : undefined;
      assertMatchesRef(out.y, upsampleNearestRef(fromHost(x), size, ratio), 'nearest');
    });
  }

  const bilinear: {
    name: string;
    x: number[];
    scale?: Pair;
    size?: Pair;
    alignCorners: boolean;
    seed: number;
  }[] = [
    { name: 'bilinear, scale 2', x: [1, 2, 3, 4], scale: [2, 2], alignCorners: false, seed: 231 },
    { name: 'bilinear, size [5, 7] from 3×4', x: [2, 1, 3, 4], size: [5, 7], alignCorners: false, seed: 232 },
    {
      name: 'bilinear, scale [1.3, 2.5]',
      x: [1, 2, 5, 4],
      scale: [1.3, 2.5],
      alignCorners: false,
      seed: 238,
    },
    {
      name: 'bilinear align corners, scale [1.3, 2.5]',
      x: [1, 2, 5, 4],
      scale: [1.3, 2.5],
      alignCorners: true,
      seed: 239,
    },
    {
      name: 'bilinear, size [2, 3] from 5×7 (down)',
      x: [1, 2, 5, 7],
      size: [2, 3],
      alignCorners: false,
      seed: 233,
    },
    {
      name: 'bilinear, size [1, 3] from 4×5 (one output row)',
      x: [1, 2, 4, 5],
      size: [1, 3],
      alignCorners: false,
      seed: 234,
    },
    {
      name: 'bilinear align corners, scale 2',
      x: [1, 2, 3, 4],
      scale: [2, 2],
      alignCorners: true,
      seed: 235,
    },
    {
      name: 'bilinear align corners, size [5, 7] from 3×4',
      x: [1, 2, 3, 4],
      size: [5, 7],
      alignCorners: true,
      seed: 236,
    },
    {
      name: 'bilinear align corners, size [1, 3] from 4×5',
      x: [1, 1, 4, 5],
      size: [1, 3],
      alignCorners: true,
      seed: 237,
    },
  ];
  for (const c of bilinear) {
    it(c.name, async () => {
      const x = randomTensor(c.x, seededUniform(c.seed));
      const out = await runGraph(
        (_g, t) => ({
          y: upsample2d(t.x, {
            mode: 'bilinear',
            scale: c.scale,
            size: c.size,
            alignCorners: c.alignCorners,
          }),
        }),
        { x },
      );
      const size = c.size ?? scaledSize(c.x, c.scale as Pair);
      const ratio: Pair | undefined = c.scale ? [1 / c.scale[0], 1 / c.scale[1]] : undefined;
      assertMatchesRef(out.y, upsampleBilinearRef(fromHost(x), size, c.alignCorners, ratio), 'bilinear', TOL);
    });
  }
});
