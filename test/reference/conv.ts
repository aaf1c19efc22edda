/**
 * Float64 references for NCHW convolution, pooling and resizing, following PyTorch's definitions
 * (torch.nn.functional.conv2d, conv_transpose2d, avg_pool2d, interpolate) as direct loops.
 */
import type { RefArray } from './layout.js';
import { at, generate } from './layout.js';

export interface RefConv2d {
  stride: [number, number];
  /** [top, left, bottom, right] */
  pads: [number, number, number, number];
  dilation: [number, number];
  groups: number;
}

export function conv2dRef(x: RefArray, w: RefArray, bias: RefArray | undefined, o: RefConv2d): RefArray {
  const [n, cin, h, wd] = x.shape;
  const [cout, cinPerGroup, kh, kw] = w.shape;
  const [sh, sw] = o.stride;
  const [pt, pl, pb, pr] = o.pads;
  const [dh, dw] = o.dilation;
  const oh = Math.floor((h + pt + pb - dh * (kh - 1) - 1) / sh) + 1;
  const ow = Math.floor((wd + pl + pr - dw * (kw - 1) - 1) / sw) + 1;
  const coutPerGroup = cout / o.groups;
  if (cinPerGroup * o.groups !== cin) throw new Error('conv2dRef: channel mismatch');
  return generate([n, cout, oh, ow], ([b, co, y, xo]) => {
    const group = Math.floor(co / coutPerGroup);
    let sum = bias ? bias.data[co] : 0;
    for (let ci = 0; ci < cinPerGroup; ci++) {
      for (let ky = 0; ky < kh; ky++) {
        const iy = y * sh - pt + ky * dh;
        if (iy < 0 || iy >= h) continue;
        for (let kx = 0; kx < kw; kx++) {
          const ix = xo * sw - pl + kx * dw;
          if (ix < 0 || ix >= wd) continue;
          sum += at(x, [b, group * cinPerGroup + ci, iy, ix]) * at(w, [co, ci, ky, kx]);
        }
      }
    }
    return sum;
  });
}

/**
 * torch.nn.functional.conv_transpose2d: every input value scatters its kernel window into the output,
 * weight [Cin, Cout/groups, kH, kW]; `outputPadding` extends the bottom and right.
 */
export function convTranspose2dRef(
  x: RefArray,
  w: RefArray,
  bias: RefArray | undefined,
  o: RefConv2d & { outputPadding: [number, number] },
): RefArray {
  const [n, cin, h, wd] = x.shape;
  const [, coutPerGroup, kh, kw] = w.shape;
  const [sh, sw] = o.stride;
  const [pt, pl, pb, pr] = o.pads;
  const [dh, dw] = o.dilation;
  const oh = (h - 1) * sh - pt - pb + dh * (kh - 1) + o.outputPadding[0] + 1;
  const ow = (wd - 1) * sw - pl - pr + dw * (kw - 1) + o.outputPadding[1] + 1;
  const cout = coutPerGroup * o.groups;
  const cinPerGroup = cin / o.groups;
  const out = generate([n, cout, oh, ow], ([, co]) => (bias ? bias.data[co] : 0));
  for (let b = 0; b < n; b++)
    for (let ci = 0; ci < cin; ci++) {
      const group = Math.floor(ci / cinPerGroup);
      for (let iy = 0; iy < h; iy++)
        for (let ix = 0; ix < wd; ix++) {
          const v = at(x, [b, ci, iy, ix]);
          for (let c = 0; c < coutPerGroup; c++)
            for (let ky = 0; ky < kh; ky++) {
              const y = iy * sh - pt + ky * dh;
              if (y < 0 || y >= oh) continue;
              for (let kx = 0; kx < kw; kx++) {
                const xo = ix * sw - pl + kx * dw;
                if (xo < 0 || xo >= ow) continue;
                const co = group * coutPerGroup + c;
                out.data[((b * cout + co) * oh + y) * ow + xo] += v * at(w, [ci, c, ky, kx]);
              }
            }
        }
    }
  return out;
}

/** torch's pooling output size (aten/src/ATen/native/Pool.h, pooling_output_shape). */
function poolOut(size: number, kernel: number, pad: number, stride: number, ceilMode: boolean): number {
  const numerator = size + 2 * pad - kernel + (ceilMode ? stride - 1 : 0);
  let out = Math.floor(numerator / stride) + 1;
  if (ceilMode && (out - 1) * stride >= size + pad) out -= 1;
  return out;
}

/** torch.nn.functional.avg_pool2d (aten AvgPool2d: divisor clipped to the padded input). */
export function avgPool2dRef(
  x: RefArray,
  kernel: [number, number],
  stride: [number, number],
  pad: [number, number],
  countIncludePad: boolean,
  ceilMode: boolean,
): RefArray {
  const [n, c, h, w] = x.shape;
  const oh = poolOut(h, kernel[0], pad[0], stride[0], ceilMode);
  const ow = poolOut(w, kernel[1], pad[1], stride[1], ceilMode);
  return generate([n, c, oh, ow], ([b, ch, y, xo]) => {
    let hStart = y * stride[0] - pad[0];
    let wStart = xo * stride[1] - pad[1];
    let hEnd = Math.min(hStart + kernel[0], h + pad[0]);
    let wEnd = Math.min(wStart + kernel[1], w + pad[1]);
    const paddedCount = (hEnd - hStart) * (wEnd - wStart);
    hStart = Math.max(hStart, 0);
    wStart = Math.max(wStart, 0);
    hEnd = Math.min(hEnd, h);
    wEnd = Math.min(wEnd, w);
    let sum = 0;
    for (let iy = hStart; iy < hEnd; iy++)
      for (let ix = wStart; ix < wEnd; ix++) sum += at(x, [b, ch, iy, ix]);
    return sum / (countIncludePad ? paddedCount : (hEnd - hStart) * (wEnd - wStart));
  });
}

/**
 * torch 'nearest': source index floor(dst · in / out), computed exactly; `ratio` overrides in/out
 * (torch uses 1/scale_factor when a scale is given).
 */
export function upsampleNearestRef(x: RefArray, size: [number, number], ratio?: [number, number]): RefArray {
  const [n, c, h, w] = x.shape;
  const src = (dst: number, inSize: number, outSize: number, r: number | undefined): number =>
    Math.min(Math.floor(r === undefined ? (dst * inSize) / outSize : dst * r), inSize - 1);
  return generate([n, c, size[0], size[1]], ([b, ch, y, xo]) =>
    at(x, [b, ch, src(y, h, size[0], ratio?.[0]), src(xo, w, size[1], ratio?.[1])]),
  );
}

/**
 * torch 'bilinear'. alignCorners=false: half-pixel centres, src = (dst + 0.5)·in/out − 0.5 clamped
 * at 0; alignCorners=true: src = dst·(in − 1)/(out − 1). `ratio` overrides in/out (torch uses
 * 1/scale_factor when a scale is given).
 */
export function upsampleBilinearRef(
  x: RefArray,
  size: [number, number],
  alignCorners: boolean,
  ratio?: [number, number],
): RefArray {
  const [n, c, h, w] = x.shape;
  const source = (
    dst: number,
    inSize: number,
    outSize: number,
    r: number | undefined,
  ): [number, number, number] => {
    let s: number;
    if (alignCorners) s = outSize > 1 ? (dst * (inSize - 1)) / (outSize - 1) : 0;
    else s = Math.max((dst + 0.5) * (r ?? inSize / outSize) - 0.5, 0);
    const i0 = Math.min(Math.floor(s), inSize - 1);
    const i1 = Math.min(i0 + 1, inSize - 1);
    return [i0, i1, s - i0];
  };
  return generate([n, c, size[0], size[1]], ([b, ch, y, xo]) => {
    const [y0, y1, ly] = source(y, h, size[0], ratio?.[0]);
    const [x0, x1, lx] = source(xo, w, size[1], ratio?.[1]);
    const v = (iy: number, ix: number): number => at(x, [b, ch, iy, ix]);
    return (1 - ly) * ((1 - lx) * v(y0, x0) + lx * v(y0, x1)) + ly * ((1 - lx) * v(y1, x0) + lx * v(y1, x1));
  });
}
