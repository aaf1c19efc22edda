import type { Tensor } from '../graph.js';
import { UNKNOWN_DIM } from '../graph.js';
import type { OnnxAttr } from '../onnx/model.js';
import { attr } from '../onnx/model.js';
import { apply, defineOp, expectFloat, expectRank, fail } from '../op.js';
import type { Dim } from '../shape.js';
import { dimEquals, dimMul, formatShape } from '../shape.js';

type Pair = readonly [number, number];
/** A padding: one value for all sides, [vertical, horizontal], or [top, left, bottom, right]. */
export type Padding2d = number | Pair | readonly [number, number, number, number];

const pair = (v: number | Pair): Pair => (typeof v === 'number' ? [v, v] : v);

function pads4(p: Padding2d): [number, number, number, number] {
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
function windowOut(
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
    expectFloat(x, 'input');
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
});

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
    expectFloat(x, 'input');
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
    ctx.emit('AveragePool', [ctx.name(node.inputs[0])], [out], {
      kernel_shape: attr.ints(kernel),
      strides: attr.ints(stride),
      pads: attr.ints(pads),
      count_include_pad: attr.int(countIncludePad ? 1 : 0),
      ceil_mode: attr.int(ceilMode ? 1 : 0),
    });
  },
});

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
    expectFloat(x, 'input');
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
});

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
