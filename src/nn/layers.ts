import type { Tensor } from '../graph/graph.js';
import type { Padding2d } from '../graph/ops/index.js';
import { conv2d, groupNorm, layerNorm, linear, rmsNorm } from '../graph/ops/index.js';
import type { Params } from './params.js';

// torch.nn layers as functions of (parameters, input): each reads its weights under the module's
// path with the shapes the config implies, and builds its graph fragment in that scope.

export function Linear(p: Params, x: Tensor, inFeatures: number, outFeatures: number, bias = true): Tensor {
  const w = p.get('weight', [outFeatures, inFeatures]);
  const b = bias ? p.get('bias', [outFeatures]) : undefined;
  return p.scope(() => linear(x, w, b));
}

export interface Conv2dOptions {
  inChannels: number;
  outChannels: number;
  kernel: number | readonly [number, number];
  stride?: number | readonly [number, number];
  padding?: Padding2d;
  dilation?: number | readonly [number, number];
  groups?: number;
  bias?: boolean;
}

export function Conv2d(p: Params, x: Tensor, o: Conv2dOptions): Tensor {
  const [kh, kw] = typeof o.kernel === 'number' ? [o.kernel, o.kernel] : o.kernel;
  const groups = o.groups ?? 1;
  const w = p.get('weight', [o.outChannels, o.inChannels / groups, kh, kw]);
  const b = o.bias === false ? undefined : p.get('bias', [o.outChannels]);
  return p.scope(() =>
    conv2d(x, w, b, { stride: o.stride, padding: o.padding, dilation: o.dilation, groups }),
  );
}

/** torch.nn.LayerNorm over the last dim; `affine: false` is elementwise_affine=False. */
export function LayerNorm(
  p: Params,
  x: Tensor,
  dim: number,
  options: { eps?: number; affine?: boolean; bias?: boolean } = {},
): Tensor {
  const affine = options.affine ?? true;
  const w = affine ? p.get('weight', [dim]) : undefined;
  const b = affine && options.bias !== false ? p.get('bias', [dim]) : undefined;
  return p.scope(() => layerNorm(x, w, b, { eps: options.eps ?? 1e-5 }));
}

export function GroupNorm(p: Params, x: Tensor, numGroups: number, channels: number, eps = 1e-5): Tensor {
  const w = p.get('weight', [channels]);
  const b = p.get('bias', [channels]);
  return p.scope(() => groupNorm(x, numGroups, w, b, eps));
}

export function RMSNorm(
  p: Params,
  x: Tensor,
  dim: number,
  options: { eps?: number; affine?: boolean } = {},
): Tensor {
  const w = options.affine === false ? undefined : p.get('weight', [dim]);
  return p.scope(() => rmsNorm(x, w, options.eps ?? 1e-6));
}
