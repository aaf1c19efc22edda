import { GraphBuildError } from '../errors.js';
import type { Tensor } from '../graph/graph.js';
import type { Padding2d } from '../graph/ops/index.js';
import {
  add,
  conv2d,
  groupNorm,
  int8Conv2d,
  int8Linear,
  layerNorm,
  linear,
  matmul,
  mul,
  reshape,
  rmsNorm,
  transpose,
  unsqueeze,
} from '../graph/ops/index.js';
import type { LoraModuleTerms, Params } from './params.js';

// torch.nn layers as functions of (parameters, input): each reads its weights under the module's
// path with the shapes the config implies, and builds its graph fragment in that scope.

export function Linear(p: Params, x: Tensor, inFeatures: number, outFeatures: number, bias = true): Tensor {
  return linearLayer(p, x, inFeatures, outFeatures, bias);
}

/**
 * A Linear(C→C) of x [B, N, C] with its output split into heads, [B, H, N, C/H], as attention
 * kernels take it. A plain float weight is applied as [1, H, C, C/H] in one batched product: the
 * Linear's FLOPs without the transpose its [B, N, C] output would need (ORT folds the weight's
 * reshape and transpose into a new initializer at session creation). An int8 weight or LoRA terms
 * take Linear's path, then the transpose, so quantization and adapters apply as everywhere.
 */
export function LinearToHeads(p: Params, x: Tensor, dim: number, heads: number, bias = true): Tensor {
  const headDim = dim / heads;
  return linearLayer(p, x, dim, dim, bias, {
    plain: (w, b) => {
      const y = matmul(unsqueeze(x, 1), transpose(reshape(w, [1, heads, headDim, dim]), [0, 1, 3, 2]));
      return b === undefined ? y : add(y, reshape(b, [1, heads, 1, headDim]));
    },
    after: (y) => transpose(reshape(y, [x.shape[0], x.shape[1], heads, headDim]), [0, 2, 1, 3]),
  });
}

/**
 * A Linear's weights read once (int8 when the loader made the module int8, else float; its LoRA
 * terms), built as `linear` or, for a plain float weight without LoRA, as `layout.plain`; the int8
 * and LoRA paths' output goes through `layout.after`.
 */
function linearLayer(
  p: Params,
  x: Tensor,
  inFeatures: number,
  outFeatures: number,
  bias: boolean,
  layout?: { plain: (w: Tensor, b: Tensor | undefined) => Tensor; after: (y: Tensor) => Tensor },
): Tensor {
  const q = p.int8Linear(outFeatures, inFeatures, x.rank);
  const w = q?.weight ?? p.get('weight', [outFeatures, inFeatures]);
  const b = bias ? p.get('bias', [outFeatures]) : undefined;
  const after = layout?.after ?? ((y: Tensor): Tensor => y);
  return p.scope(() => {
    const lora = p.loraTerms();
    if (q) return after(int8LinearWithLora(x, q.weight, q.scale, b, lora));
    if (lora !== undefined) return after(linearWithLora(x, w, b, lora));
    return layout ? layout.plain(w, b) : linear(x, w, b);
  });
}

/** An int8 Linear; LoRA cannot fold into int8 weights, so every term runs as a side branch. */
function int8LinearWithLora(
  x: Tensor,
  w: Tensor,
  scale: Tensor,
  b: Tensor | undefined,
  lora: LoraModuleTerms | undefined,
): Tensor {
  let y = int8Linear(x, w, scale, b);
  for (const term of [...(lora?.fused ?? []), ...(lora?.switchable ?? [])])
    y = add(y, linear(mul(linear(x, term.down), term.scale), term.up));
  return y;
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
  const ones = (v: number | readonly [number, number] | undefined): boolean =>
    v === undefined || (typeof v === 'number' ? v === 1 : v[0] === 1 && v[1] === 1);
  const unitSteps = ones(o.stride) && ones(o.dilation);
  const q = groups === 1 ? p.int8Conv(o.outChannels, o.inChannels, [kh, kw], unitSteps) : undefined;
  if (q && !unitSteps) {
    throw new GraphBuildError(
      `${p.path}: the weight is int8, and int8 convolutions run with stride 1 and dilation 1 only ` +
        `(this one has stride ${String(o.stride)}, dilation ${String(o.dilation ?? 1)}): the folder's ` +
        'quantization_config lists a module that must stay float',
    );
  }
  const w = q?.weight ?? p.get('weight', [o.outChannels, o.inChannels / groups, kh, kw]);
  const b = o.bias === false ? undefined : p.get('bias', [o.outChannels]);
  const options = { stride: o.stride, padding: o.padding, dilation: o.dilation, groups };
  return p.scope(() => {
    const lora = p.loraTerms();
    if (q) return int8Conv2dWithLora(x, q.weight, q.scale, b, options, lora);
    return lora === undefined ? conv2d(x, w, b, options) : conv2dWithLora(x, w, b, options, lora, p.path);
  });
}

/** An int8 Conv2d; LoRA cannot fold into int8 weights, so every term runs as a side branch. */
function int8Conv2dWithLora(
  x: Tensor,
  weight: Tensor,
  scale: Tensor,
  b: Tensor | undefined,
  options: { padding?: Padding2d },
  lora: LoraModuleTerms | undefined,
): Tensor {
  let y = int8Conv2d(x, weight, scale, b, { padding: options.padding });
  for (const term of [...(lora?.fused ?? []), ...(lora?.switchable ?? [])]) {
    // A is a conv with the base kernel and padding; B is 1×1.
    y = add(y, conv2d(mul(conv2d(x, term.down, undefined, options), term.scale), term.up));
  }
  return y;
}

// --- LoRA (terms from Params.loraTerms; see src/lora/) ---------------------------------------
// Fused: W' = W + s·B·A from weights and constants only, folded by ORT into one initializer.
// Switchable: y += s·B(A(x)), with s read from a graph input at run time.

function linearWithLora(x: Tensor, w: Tensor, b: Tensor | undefined, lora: LoraModuleTerms): Tensor {
  let weight = w;
  for (const term of lora.fused) weight = add(weight, mul(matmul(term.up, term.down), term.scale));
  let y = linear(x, weight, b);
  for (const term of lora.switchable) y = add(y, linear(mul(linear(x, term.down), term.scale), term.up));
  return y;
}

function conv2dWithLora(
  x: Tensor,
  w: Tensor,
  b: Tensor | undefined,
  options: Parameters<typeof conv2d>[3] & { groups: number },
  lora: LoraModuleTerms,
  path: string,
): Tensor {
  if (options.groups !== 1) {
    throw new GraphBuildError(
      `${path}: LoRA on a grouped convolution (groups=${options.groups}) is not supported`,
    );
  }
  const [outChannels, inChannels, kh, kw] = w.shape as number[];
  let weight = w;
  for (const term of lora.fused) {
    // ΔW = reshape(B, [out, r]) · reshape(A, [r, in·kh·kw]), back to [out, in, kh, kw].
    const rank = term.down.shape[0] as number;
    const delta = matmul(
      reshape(term.up, [outChannels, rank]),
      reshape(term.down, [rank, inChannels * kh * kw]),
    );
    weight = add(weight, mul(reshape(delta, [outChannels, inChannels, kh, kw]), term.scale));
  }
  let y = conv2d(x, weight, b, options);
  for (const term of lora.switchable) {
    // A is a conv with the base kernel, stride and padding; B is 1×1.
    const low = mul(conv2d(x, term.down, undefined, options), term.scale);
    y = add(y, conv2d(low, term.up));
  }
  return y;
}
// --- end LoRA ---------------------------------------------------------------------------------

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
