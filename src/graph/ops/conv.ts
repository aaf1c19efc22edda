import type { Tensor } from '../graph.js';
import { UNKNOWN_DIM } from '../graph.js';
import type { OnnxAttr } from '../onnx/model.js';
import { attr } from '../onnx/model.js';
import { apply, defineOp, expectFloat, expectRank, fail } from '../op.js';
import type { Dim } from '../shape.js';
import { dimEquals, dimMul, formatShape, isStaticShape } from '../shape.js';
import { asTensor, cast, mul } from './elementwise.js';
import { matmul } from './matmul.js';
import { concat, expand, pad, reshape, slice, transpose } from './movement.js';
import { sum } from './reduce.js';

type Pair = readonly [number, number];
/** A padding: one value for all sides, [vertical, horizontal], or [top, left, bottom, right]. */
export type Padding2d = number | Pair | readonly [number, number, number, number];

const pair = (v: number | Pair): Pair => (typeof v === 'number' ? [v, v] : v);

export function pads4(p: Padding2d): [number, number, number, number] {
  if (typeof p === 'number') return [p, p, p, p];
  if (p.length === 2) return [p[0], p[1], p[0], p[1]];
  return [p[0], p[1], p[2], p[3]];
}

function checkPositive(values: readonly number[], what: string, allowZero = false): void {
  if (values.some((v) => !Number.isInteger(v) || v < (allowZero ? 0 : 1))) {
    fail(
      `${what} must be ${allowZero ? 'non-negative' : 'positive'} integers, got [${values.join(', ')}]`,
      'ATTR',
    );
  }
}

/** Output size of a sliding window along one axis (torch's formula). */
export function windowOut(
  size: Dim,
  padBefore: number,
  padAfter: number,
  kernel: number,
  stride: number,
  dilation: number,
  ceil: boolean,
): Dim {
  const span = dilation * (kernel - 1) + 1;
  if (typeof size !== 'number') {
    if (stride === 1 && padBefore + padAfter === span - 1) return size;
    return UNKNOWN_DIM;
  }
  const room = size + padBefore + padAfter - span;
  if (room < 0)
    fail(`the window (${span}) is larger than the padded input (${size + padBefore + padAfter})`, 'SHAPE');
  let out = (ceil ? Math.ceil(room / stride) : Math.floor(room / stride)) + 1;
  // torch: with ceil_mode the last window must start inside the input or left padding.
  if (ceil && (out - 1) * stride >= size + padBefore) out -= 1;
  return out;
}

// float64 is rejected when a graph is built: ORT's CPU EP has no double Conv, ConvTranspose,
// AveragePool or Resize kernels.

export interface Conv2dAttrs {
  stride: Pair;
  pads: [number, number, number, number];
  dilation: Pair;
  groups: number;
  hasBias: boolean;
}

export const Conv2dOp = defineOp<Conv2dAttrs>({
  name: 'conv2d',
  infer([x, w, b], { stride, pads, dilation, groups, hasBias }) {
    expectFloat(x, 'input', { float64: false });
    expectRank(x, 4, 'input [N, C, H, W]');
    expectRank(w, 4, 'weight [Cout, Cin/groups, kH, kW]');
    if (w.dtype !== x.dtype) fail(`weight dtype ${w.dtype} differs from input ${x.dtype}`, 'DTYPE');
    checkPositive([...stride, ...dilation, groups], 'stride, dilation and groups');
    checkPositive(pads, 'padding', true);
    const [cout, cinPerGroup, kh, kw] = w.shape;
    if (typeof kh !== 'number' || typeof kw !== 'number' || typeof cout !== 'number') {
      fail(`weight shape ${formatShape(w.shape)} must be static`, 'SHAPE');
    }
    if (!dimEquals(x.shape[1], dimMul(cinPerGroup, groups))) {
      fail(
        `input ${formatShape(x.shape)} has ${String(x.shape[1])} channels, weight ${formatShape(w.shape)} with groups=${groups} expects ${String(dimMul(cinPerGroup, groups))}`,
        'SHAPE',
      );
    }
    if (cout % groups !== 0) fail(`${cout} output channels do not split into ${groups} groups`, 'SHAPE');
    if (hasBias && (b.shape.length !== 1 || b.shape[0] !== cout)) {
      fail(`bias must be [${cout}], got ${formatShape(b.shape)}`, 'SHAPE');
    }
    const h = windowOut(x.shape[2], pads[0], pads[2], kh, stride[0], dilation[0], false);
    const wd = windowOut(x.shape[3], pads[1], pads[3], kw, stride[1], dilation[1], false);
    return [{ dtype: x.dtype, shape: [x.shape[0], cout, h, wd] }];
  },
  lower(ctx, node, [out]) {
    const { stride, pads, dilation, groups } = node.attrs;
    const w = node.inputs[1];
    ctx.emit(
      'Conv',
      node.inputs.map((t) => ctx.name(t)),
      [out],
      {
        strides: attr.ints(stride),
        pads: attr.ints(pads),
        dilations: attr.ints(dilation),
        group: attr.int(groups),
        kernel_shape: attr.ints(w.shape.slice(2) as number[]),
      },
    );
  },
  vjp({ inputs: [x, w], attrs, needsGrad }, [dy]) {
    if (!dy) return [];
    const kernel = w.shape.slice(2) as [number, number];
    return [
      // The input gradient is the transposed convolution with the same weight, sized back to x.
      needsGrad[0] ? convTranspose2dSized(dy, w, attrs, x, kernel) : undefined,
      needsGrad[1] ? convWeightGrad(x, dy, attrs, kernel) : undefined,
      attrs.hasBias && needsGrad[2] ? sum(dy, [0, 2, 3]) : undefined,
    ];
  },
});

/** What the gradients of a convolution depend on. */
type ConvGeometry = Pick<Conv2dAttrs, 'stride' | 'pads' | 'dilation' | 'groups'>;

/**
 * dW[o, i, a, b] = Σ_{n,y,x} dY[n, o, y, x] · X[n, i, y·s + a·d − p, x·s + b·d − p]. Ungrouped, as one
 * MatMul per batch entry over the kernel's kH·kW shifted views of X (im2col), summed over the batch:
 * MatMul runs at the engine's full rate, where ORT's Conv with dY as a kernel the size of the output
 * map ran 3.6× slower than the forward convolution of the same FLOPs (the emoji VAE step, measured with
 * bench/profile-train.ts). Grouped convolutions take the convolution form (convWeightGradAsConv).
 */
function convWeightGrad(input: Tensor, outGrad: Tensor, a: ConvGeometry, kernel: Pair): Tensor {
  const [n, channels] = input.shape;
  const outChannels = outGrad.shape[1];
  if (
    typeof channels !== 'number' ||
    typeof outChannels !== 'number' ||
    !isStaticShape(outGrad.shape.slice(2))
  ) {
    fail(
      `the weight gradient of a convolution needs static channels and output sizes, got input ${formatShape(input.shape)} and output gradient ${formatShape(outGrad.shape)}; declare the spatial dims as numbers`,
      'SHAPE',
    );
  }
  if (a.groups !== 1) return convWeightGradAsConv(input, outGrad, a, kernel);
  const [oh, ow] = outGrad.shape.slice(2) as number[];
  const [top, left, bottom, right] = a.pads;
  const padded = a.pads.some((p) => p > 0)
    ? pad(input, [
        [0, 0],
        [0, 0],
        [top, bottom],
        [left, right],
      ])
    : input;
  // The view of X under kernel tap (a, b): rows a·d, a·d + s, …, oh of them; columns likewise.
  const taps: Tensor[] = [];
  for (let row = 0; row < kernel[0]; row++) {
    for (let column = 0; column < kernel[1]; column++) {
      const y0 = row * a.dilation[0];
      const x0 = column * a.dilation[1];
      taps.push(
        slice(padded, [
          { axis: 2, start: y0, end: y0 + a.stride[0] * (oh - 1) + 1, step: a.stride[0] },
          { axis: 3, start: x0, end: x0 + a.stride[1] * (ow - 1) + 1, step: a.stride[1] },
        ]),
      );
    }
  }
  const taps2d = kernel[0] * kernel[1];
  // [N, kH·kW·C, oh·ow], rows ordered (a, b, i).
  const columns = reshape(taps.length === 1 ? taps[0] : concat(taps, 1), [n, taps2d * channels, oh * ow]);
  const perImage = matmul(reshape(outGrad, [n, outChannels, oh * ow]), transpose(columns, [0, 2, 1]));
  const dw = reshape(sum(perImage, 0), [outChannels, kernel[0], kernel[1], channels]);
  return transpose(dw, [0, 3, 1, 2]);
}

/**
 * The weight gradient as a convolution of X with dY as its kernel, over the batch (X's channels become
 * the batch, and each group's batch entries its channels), with stride and dilation swapped; windows
 * past the kernel size are cut off.
 */
function convWeightGradAsConv(input: Tensor, outGrad: Tensor, a: ConvGeometry, kernel: Pair): Tensor {
  const [n, channels, h, w] = input.shape as [Dim, number, Dim, Dim];
  const outChannels = outGrad.shape[1] as number;
  const g = a.groups;
  const [oh, ow] = outGrad.shape.slice(2) as number[];
  const inputAsBatch = reshape(transpose(reshape(input, [n, g, channels / g, h, w]), [2, 1, 0, 3, 4]), [
    channels / g,
    dimMul(g, n),
    h,
    w,
  ]);
  const gradAsKernel = reshape(
    transpose(reshape(outGrad, [n, g, outChannels / g, oh, ow]), [1, 2, 0, 3, 4]),
    [outChannels, n, oh, ow],
  );
  let dw = conv2d(inputAsBatch, gradAsKernel, undefined, {
    stride: a.dilation,
    padding: a.pads,
    dilation: a.stride,
    groups: g,
  });
  if (dw.shape[2] !== kernel[0] || dw.shape[3] !== kernel[1]) {
    dw = slice(dw, [
      { axis: 2, end: kernel[0] },
      { axis: 3, end: kernel[1] },
    ]);
  }
  return transpose(dw, [1, 0, 2, 3]);
}

/**
 * The pads and output padding along one axis that make a transposed convolution of `outSize`
 * windows produce `inSize` values again: the forward's windows may stop short of the padded end
 * (floor) or run past it (ceil mode).
 */
function transposedPads(
  inSize: Dim,
  outSize: Dim,
  kernel: number,
  stride: number,
  dilation: number,
  padBefore: number,
  padAfter: number,
): { after: number; outputPadding: number } {
  if (typeof inSize !== 'number' || typeof outSize !== 'number') {
    // Only a stride-1 window keeps a named dim (windowOut), and then the pads are the forward's.
    if (stride === 1) return { after: padAfter, outputPadding: 0 };
    fail(`the gradient of a strided window over a named dim (${String(inSize)}) is not supported`, 'SHAPE');
  }
  const after = stride * (outSize - 1) + dilation * (kernel - 1) + 1 - inSize - padBefore;
  return after >= 0 ? { after, outputPadding: 0 } : { after: 0, outputPadding: -after };
}

/** convTranspose2d(dy, w) with pads chosen so that the result has the spatial size of `like`. */
function convTranspose2dSized(dy: Tensor, w: Tensor, a: ConvGeometry, like: Tensor, kernel: Pair): Tensor {
  const rows = transposedPads(
    like.shape[2],
    dy.shape[2],
    kernel[0],
    a.stride[0],
    a.dilation[0],
    a.pads[0],
    a.pads[2],
  );
  const cols = transposedPads(
    like.shape[3],
    dy.shape[3],
    kernel[1],
    a.stride[1],
    a.dilation[1],
    a.pads[1],
    a.pads[3],
  );
  return apply(ConvTranspose2dOp, [dy, w], {
    stride: a.stride,
    pads: [a.pads[0], a.pads[1], rows.after, cols.after],
    dilation: a.dilation,
    groups: a.groups,
    outputPadding: [rows.outputPadding, cols.outputPadding],
    hasBias: false,
  })[0];
}

/** 2-D convolution over NCHW (torch.nn.functional.conv2d). */
export function conv2d(
  x: Tensor,
  weight: Tensor,
  bias?: Tensor,
  options: { stride?: number | Pair; padding?: Padding2d; dilation?: number | Pair; groups?: number } = {},
): Tensor {
  const attrs: Conv2dAttrs = {
    stride: pair(options.stride ?? 1),
    pads: pads4(options.padding ?? 0),
    dilation: pair(options.dilation ?? 1),
    groups: options.groups ?? 1,
    hasBias: bias !== undefined,
  };
  return apply(Conv2dOp, bias ? [x, weight, bias] : [x, weight], attrs)[0];
}

export interface ConvTranspose2dAttrs extends Conv2dAttrs {
  /** Extra rows and columns at the bottom and right of the output (torch output_padding). */
  outputPadding: Pair;
}

/** Output size of a transposed convolution along one axis: (in − 1)·s − pads + d·(k − 1) + 1 + outputPadding. */
function transposedOut(
  size: Dim,
  padBefore: number,
  padAfter: number,
  kernel: number,
  stride: number,
  dilation: number,
  outputPadding: number,
): Dim {
  const growth = dilation * (kernel - 1) + outputPadding - padBefore - padAfter;
  if (typeof size !== 'number') return stride === 1 && growth === 0 ? size : UNKNOWN_DIM;
  const out = (size - 1) * stride + 1 + growth;
  if (out < 1) fail(`the padding (${padBefore} + ${padAfter}) leaves no output of ${size} values`, 'SHAPE');
  return out;
}

/**
 * The transposed convolution (torch.nn.functional.conv_transpose2d): the adjoint of conv2d with the
 * same weight, [Cin, Cout/groups, kH, kW], and geometry. It is conv2d's input gradient, and conv2d
 * is its own.
 */
export const ConvTranspose2dOp = defineOp<ConvTranspose2dAttrs>({
  name: 'convTranspose2d',
  infer([x, w, b], { stride, pads, dilation, groups, outputPadding, hasBias }) {
    expectFloat(x, 'input', { float64: false });
    expectRank(x, 4, 'input [N, C, H, W]');
    expectRank(w, 4, 'weight [Cin, Cout/groups, kH, kW]');
    if (w.dtype !== x.dtype) fail(`weight dtype ${w.dtype} differs from input ${x.dtype}`, 'DTYPE');
    checkPositive([...stride, ...dilation, groups], 'stride, dilation and groups');
    checkPositive([...pads, ...outputPadding], 'padding and output padding', true);
    // torch also allows padding below the dilation; ONNX Runtime refuses it at run time.
    if (outputPadding.some((p, i) => p >= stride[i])) {
      fail(
        `output padding [${outputPadding.join(', ')}] must be smaller than the stride [${stride.join(', ')}]`,
        'ATTR',
      );
    }
    const [cin, coutPerGroup, kh, kw] = w.shape;
    if (typeof kh !== 'number' || typeof kw !== 'number' || typeof coutPerGroup !== 'number') {
      fail(`weight shape ${formatShape(w.shape)} must be static`, 'SHAPE');
    }
    if (!dimEquals(x.shape[1], cin)) {
      fail(
        `input ${formatShape(x.shape)} has ${String(x.shape[1])} channels, weight ${formatShape(w.shape)} expects ${String(cin)}`,
        'SHAPE',
      );
    }
    if (typeof cin === 'number' && cin % groups !== 0)
      fail(`${cin} input channels do not split into ${groups} groups`, 'SHAPE');
    const cout = coutPerGroup * groups;
    if (hasBias && (b.shape.length !== 1 || b.shape[0] !== cout)) {
      fail(`bias must be [${cout}], got ${formatShape(b.shape)}`, 'SHAPE');
    }
    const h = transposedOut(x.shape[2], pads[0], pads[2], kh, stride[0], dilation[0], outputPadding[0]);
    const wd = transposedOut(x.shape[3], pads[1], pads[3], kw, stride[1], dilation[1], outputPadding[1]);
    return [{ dtype: x.dtype, shape: [x.shape[0], cout, h, wd] }];
  },
  lower(ctx, node, [out]) {
    const { stride, pads, dilation, groups, outputPadding } = node.attrs;
    ctx.emit(
      'ConvTranspose',
      node.inputs.map((t) => ctx.name(t)),
      [out],
      {
        strides: attr.ints(stride),
        pads: attr.ints(pads),
        dilations: attr.ints(dilation),
        group: attr.int(groups),
        output_padding: attr.ints(outputPadding),
        kernel_shape: attr.ints(node.inputs[1].shape.slice(2) as number[]),
      },
    );
  },
  vjp({ inputs: [x, w], attrs, needsGrad }, [dz]) {
    if (!dz) return [];
    const kernel = w.shape.slice(2) as [number, number];
    const { stride, pads, dilation, groups } = attrs;
    return [
      // conv2d with the same weight: with the output padding below the stride, it has x's size.
      needsGrad[0] ? conv2d(dz, w, undefined, { stride, padding: pads, dilation, groups }) : undefined,
      // Z = Wᵀ ⋆ X has the weight gradient of a convolution of dZ whose output gradient is X.
      needsGrad[1] ? convWeightGrad(dz, x, attrs, kernel) : undefined,
      attrs.hasBias && needsGrad[2] ? sum(dz, [0, 2, 3]) : undefined,
    ];
  },
});

/** Transposed 2-D convolution over NCHW (torch.nn.functional.conv_transpose2d); weight [Cin, Cout/groups, kH, kW]. */
export function convTranspose2d(
  x: Tensor,
  weight: Tensor,
  bias?: Tensor,
  options: {
    stride?: number | Pair;
    padding?: Padding2d;
    outputPadding?: number | Pair;
    dilation?: number | Pair;
    groups?: number;
  } = {},
): Tensor {
  const attrs: ConvTranspose2dAttrs = {
    stride: pair(options.stride ?? 1),
    pads: pads4(options.padding ?? 0),
    dilation: pair(options.dilation ?? 1),
    groups: options.groups ?? 1,
    outputPadding: pair(options.outputPadding ?? 0),
    hasBias: bias !== undefined,
  };
  return apply(ConvTranspose2dOp, bias ? [x, weight, bias] : [x, weight], attrs)[0];
}

export interface AvgPool2dAttrs {
  kernel: Pair;
  stride: Pair;
  pads: [number, number, number, number];
  countIncludePad: boolean;
  ceilMode: boolean;
}

export const AvgPool2dOp = defineOp<AvgPool2dAttrs>({
  name: 'avgPool2d',
  infer([x], { kernel, stride, pads, ceilMode }) {
    expectFloat(x, 'input', { float64: false });
    expectRank(x, 4, 'input [N, C, H, W]');
    checkPositive([...kernel, ...stride], 'kernel and stride');
    checkPositive(pads, 'padding', true);
    if (pads[0] * 2 > kernel[0] || pads[1] * 2 > kernel[1])
      fail(`padding must be at most half the kernel`, 'ATTR');
    const h = windowOut(x.shape[2], pads[0], pads[2], kernel[0], stride[0], 1, ceilMode);
    const w = windowOut(x.shape[3], pads[1], pads[3], kernel[1], stride[1], 1, ceilMode);
    return [{ dtype: x.dtype, shape: [x.shape[0], x.shape[1], h, w] }];
  },
  lower(ctx, node, [out]) {
    const { kernel, stride, pads, countIncludePad, ceilMode } = node.attrs;
    const x = node.inputs[0];
    // ONNX's shape inference keeps a ceil-mode window that would start in the end padding, which
    // torch and ORT's kernel drop; a later node checked against the larger size fails at session
    // creation. A Slice to the true size states it.
    const cut = [0, 1].filter((i) => {
      const [d, o] = [x.shape[2 + i], node.outputs[0].shape[2 + i]];
      const onnxSize =
        typeof d === 'number' ? Math.ceil((d + pads[i] + pads[i + 2] - kernel[i]) / stride[i]) + 1 : o;
      return ceilMode && o !== onnxSize;
    });
    const pooled = cut.length > 0 ? ctx.fresh('pooled') : out;
    ctx.emit('AveragePool', [ctx.name(x)], [pooled], {
      kernel_shape: attr.ints(kernel),
      strides: attr.ints(stride),
      pads: attr.ints(pads),
      count_include_pad: attr.int(countIncludePad ? 1 : 0),
      ceil_mode: attr.int(ceilMode ? 1 : 0),
    });
    if (cut.length > 0) {
      const ends = cut.map((i) => node.outputs[0].shape[2 + i] as number);
      const zeros = cut.map(() => 0);
      ctx.emit(
        'Slice',
        [pooled, ctx.int64s(zeros), ctx.int64s(ends), ctx.int64s(cut.map((i) => 2 + i))],
        [out],
      );
    }
  },
  vjp({ inputs: [x], attrs }, [dy]) {
    if (!dy) return [undefined];
    const { kernel, stride, pads, countIncludePad, ceilMode } = attrs;
    const channels = x.shape[1];
    if (typeof channels !== 'number')
      fail(`the gradient needs a static channel count, got ${formatShape(x.shape)}`, 'SHAPE');
    // y = window sum / divisor(position), so dx is the transposed all-ones depthwise convolution
    // of dy / divisor.
    let perWindow: Tensor;
    if (countIncludePad && !ceilMode) perWindow = mul(dy, 1 / (kernel[0] * kernel[1]));
    else {
      const [h, w] = x.shape.slice(2);
      const [oh, ow] = dy.shape.slice(2);
      if (
        typeof h !== 'number' ||
        typeof w !== 'number' ||
        typeof oh !== 'number' ||
        typeof ow !== 'number'
      ) {
        fail(
          `the gradient with ceil mode or uncounted padding needs static sizes, got ${formatShape(x.shape)}`,
          'SHAPE',
        );
      }
      perWindow = mul(dy, constantLike(dy, poolReciprocalDivisors(h, w, oh, ow, attrs), [oh, ow]));
    }
    const ones = expand(asTensor(1, dy), [channels, 1, kernel[0], kernel[1]]);
    const geometry = { stride, pads, dilation: [1, 1] as const, groups: channels };
    return [convTranspose2dSized(perWindow, ones, geometry, x, kernel)];
  },
});

/**
 * 1 / divisor of each output position as torch's avg_pool2d divides (aten AvgPool2d): the window
 * clipped to the padded input, then, without count_include_pad, to the input.
 */
function poolReciprocalDivisors(
  h: number,
  w: number,
  oh: number,
  ow: number,
  a: AvgPool2dAttrs,
): Float64Array {
  const extent = (o: number, axis: 0 | 1, size: number): number => {
    const start = o * a.stride[axis] - a.pads[axis];
    const end = Math.min(start + a.kernel[axis], size + a.pads[axis + 2]);
    return a.countIncludePad ? end - start : Math.min(end, size) - Math.max(start, 0);
  };
  const out = new Float64Array(oh * ow);
  for (let y = 0; y < oh; y++)
    for (let x = 0; x < ow; x++) out[y * ow + x] = 1 / (extent(y, 0, h) * extent(x, 1, w));
  return out;
}

/** Values computed when the graph is built, as a constant of `like`'s dtype. */
function constantLike(like: Tensor, values: ArrayLike<number>, shape: readonly number[]): Tensor {
  return cast(like.graph.constant(Float32Array.from(values), 'float32', shape), like.dtype);
}

/** Average pooling over NCHW (torch.nn.functional.avg_pool2d; count_include_pad defaults to true as in torch). */
export function avgPool2d(
  x: Tensor,
  kernel: number | Pair,
  options: {
    stride?: number | Pair;
    padding?: number | Pair;
    countIncludePad?: boolean;
    ceilMode?: boolean;
  } = {},
): Tensor {
  const k = pair(kernel);
  const p = pair(options.padding ?? 0);
  return apply(AvgPool2dOp, [x], {
    kernel: k,
    stride: pair(options.stride ?? k),
    pads: [p[0], p[1], p[0], p[1]],
    countIncludePad: options.countIncludePad ?? true,
    ceilMode: options.ceilMode ?? false,
  })[0];
}

export interface Upsample2dAttrs {
  mode: 'nearest' | 'bilinear';
  scale?: Pair;
  size?: Pair;
  alignCorners: boolean;
}

export const Upsample2dOp = defineOp<Upsample2dAttrs>({
  name: 'upsample2d',
  infer([x], { mode, scale, size, alignCorners }) {
    expectFloat(x, 'input', { float64: false });
    expectRank(x, 4, 'input [N, C, H, W]');
    if (mode !== 'nearest' && mode !== 'bilinear')
      fail(`mode must be 'nearest' or 'bilinear', got ${String(mode)}`, 'ATTR');
    if (alignCorners && mode === 'nearest') fail(`alignCorners applies to bilinear only`, 'ATTR');
    if ((scale === undefined) === (size === undefined)) fail('give exactly one of scale and size', 'ATTR');
    if (size) {
      checkPositive(size, 'size');
      return [{ dtype: x.dtype, shape: [x.shape[0], x.shape[1], size[0], size[1]] }];
    }
    const s = scale as Pair;
    if (s.some((v) => !(v > 0))) fail(`scale must be positive, got [${s.join(', ')}]`, 'ATTR');
    const out = (d: Dim, f: number): Dim =>
      typeof d === 'number' ? Math.floor(d * f) : Number.isInteger(f) ? dimMul(d, f) : UNKNOWN_DIM;
    return [
      { dtype: x.dtype, shape: [x.shape[0], x.shape[1], out(x.shape[2], s[0]), out(x.shape[3], s[1])] },
    ];
  },
  lower(ctx, node, [out]) {
    const { mode, scale, size, alignCorners } = node.attrs;
    const x = node.inputs[0];
    const attrs: Record<string, OnnxAttr> =
      mode === 'nearest'
        ? // torch 'nearest': src = floor(dst / scale)
          {
            mode: attr.string('nearest'),
            coordinate_transformation_mode: attr.string('asymmetric'),
            nearest_mode: attr.string('floor'),
          }
        : {
            mode: attr.string('linear'),
            coordinate_transformation_mode: attr.string(alignCorners ? 'align_corners' : 'half_pixel'),
          };
    if (scale) {
      ctx.emit('Resize', [ctx.name(x), '', ctx.float32s([1, 1, scale[0], scale[1]])], [out], attrs);
    } else {
      const sizes = ctx.shapeOf([x.shape[0], x.shape[1], (size as Pair)[0], (size as Pair)[1]]);
      ctx.emit('Resize', [ctx.name(x), '', '', sizes], [out], attrs);
    }
  },
  vjp({ inputs: [x], attrs }, [dy]) {
    if (!dy) return [undefined];
    const [n, c, h, w] = x.shape;
    const [oh, ow] = dy.shape.slice(2);
    // Nearest with whole factors copies each pixel into an f×f block; its adjoint sums the block.
    const factors =
      attrs.mode === 'nearest' ? wholeFactors(x.shape.slice(2), dy.shape.slice(2), attrs.scale) : undefined;
    if (factors) return [sum(reshape(dy, [n, c, h, factors[0], w, factors[1]]), [3, 5])];
    // Otherwise the resize is separable, y = A_h · x · A_wᵀ with matrices fixed by the sizes, so
    // dx = A_hᵀ · dy · A_w.
    if (typeof h !== 'number' || typeof w !== 'number' || typeof oh !== 'number' || typeof ow !== 'number') {
      fail(
        `the gradient of a ${attrs.mode} resize by other than whole factors needs static sizes, got ${formatShape(x.shape)} → ${formatShape(dy.shape)}`,
        'SHAPE',
      );
    }
    const rows = resizeMatrix(h, oh, attrs, attrs.scale?.[0], true);
    const cols = resizeMatrix(w, ow, attrs, attrs.scale?.[1], false);
    return [matmul(matmul(constantLike(dy, rows, [h, oh]), dy), constantLike(dy, cols, [ow, w]))];
  },
});

/** The whole per-axis factors of a resize, when both are whole numbers. */
function wholeFactors(from: readonly Dim[], to: readonly Dim[], scale: Pair | undefined): Pair | undefined {
  const factor = (i: number): number | undefined => {
    if (scale) return Number.isInteger(scale[i]) ? scale[i] : undefined;
    const [a, b] = [from[i], to[i]];
    return typeof a === 'number' && typeof b === 'number' && b % a === 0 ? b / a : undefined;
  };
  const [fh, fw] = [factor(0), factor(1)];
  return fh !== undefined && fw !== undefined ? [fh, fw] : undefined;
}

/**
 * The interpolation matrix of one axis, A[out, in] (or its transpose [in, out]), with the source
 * coordinates of the forward (torch's: nearest floor(dst · in/out), or dst / scale when a scale is
 * given; bilinear half-pixel clamped at 0, or align_corners).
 */
function resizeMatrix(
  inSize: number,
  outSize: number,
  a: Upsample2dAttrs,
  scale: number | undefined,
  transposed: boolean,
): Float64Array {
  const m = new Float64Array(inSize * outSize);
  const put = (dst: number, src: number, weight: number): void => {
    m[transposed ? src * outSize + dst : dst * inSize + src] += weight;
  };
  const ratio = scale === undefined ? inSize / outSize : 1 / scale;
  for (let dst = 0; dst < outSize; dst++) {
    if (a.mode === 'nearest') {
      put(
        dst,
        Math.min(Math.floor(scale === undefined ? (dst * inSize) / outSize : dst / scale), inSize - 1),
        1,
      );
      continue;
    }
    const src = a.alignCorners
      ? outSize > 1
        ? (dst * (inSize - 1)) / (outSize - 1)
        : 0
      : Math.max((dst + 0.5) * ratio - 0.5, 0);
    const i0 = Math.min(Math.floor(src), inSize - 1);
    const i1 = Math.min(i0 + 1, inSize - 1);
    const frac = src - i0;
    put(dst, i0, 1 - frac);
    put(dst, i1, frac);
  }
  return m;
}

/** Resize NCHW by a scale factor or to a size (torch.nn.functional.interpolate, nearest or bilinear). */
export function upsample2d(
  x: Tensor,
  options: { scale?: number | Pair; size?: Pair; mode?: 'nearest' | 'bilinear'; alignCorners?: boolean },
): Tensor {
  return apply(Upsample2dOp, [x], {
    mode: options.mode ?? 'nearest',
    scale: options.scale === undefined ? undefined : pair(options.scale),
    size: options.size,
    alignCorners: options.alignCorners ?? false,
  })[0];
}
