/**
 * diffusers' convolutional building blocks (resnet.py, downsampling.py, upsampling.py) as graph
 * builders, shared by the VAE's encoder/decoder and the UNet: `ResnetBlock2D`, `Downsample2D`,
 * `Upsample2D`. Parameter paths are the checkpoint's (`resnets.0.time_emb_proj`,
 * `downsamplers.0.conv`, `upsamplers.0.conv`).
 */
import { GraphBuildError } from '../errors.js';
import type { Tensor } from '../graph/graph.js';
import { add, avgPool2d, div, mul, reshape, split, upsample2d } from '../graph/ops/index.js';
import type { Activation } from './activations.js';
import { activation } from './activations.js';
import { Conv2d, GroupNorm, Linear } from './layers.js';
import type { Params } from './params.js';

/** diffusers `ResnetBlock2D`'s constructor arguments that change its parameters or its graph. */
export interface ResnetBlock2DOptions {
  inChannels: number;
  /** `out_channels`, inChannels by default. */
  outChannels?: number;
  /** Width of the time embedding (`temb_channels`); absent: no `time_emb_proj` (the VAE's blocks). */
  tembChannels?: number;
  /** GroupNorm groups of norm1 (`groups`) and of norm2 (`groups_out`, groups by default). */
  groups: number;
  groupsOut?: number;
  /** eps of both GroupNorms (`eps`). */
  eps: number;
  /** `non_linearity`, applied after each norm and to the time embedding. */
  act: Activation;
  /**
   * `time_embedding_norm`: 'default' adds the projected embedding before norm2; 'scale_shift'
   * projects to 2·out channels and applies norm2(h)·(1 + scale) + shift.
   */
  timeEmbeddingNorm?: 'default' | 'scale_shift';
  /** The output is (shortcut + h) / outputScaleFactor (`output_scale_factor`, 1 by default). */
  outputScaleFactor?: number;
  /** `use_in_shortcut`: a 1×1 `conv_shortcut`; by default exactly when the channel count changes. */
  useInShortcut?: boolean;
  /** Bias of conv_shortcut (`conv_shortcut_bias`, true by default). */
  convShortcutBias?: boolean;
  /** `skip_time_act`: project the time embedding without the activation first. */
  skipTimeAct?: boolean;
}

/**
 * diffusers `ResnetBlock2D` on x [B, in, H, W] with an optional time embedding temb [B, temb]:
 * norm1 → act → conv1 (+ time_emb_proj(act(temb))) → norm2 → act → conv2, plus the shortcut.
 */
export function ResnetBlock2D(
  p: Params,
  x: Tensor,
  temb: Tensor | undefined,
  o: ResnetBlock2DOptions,
): Tensor {
  const inChannels = o.inChannels;
  const outChannels = o.outChannels ?? inChannels;
  const norm = o.timeEmbeddingNorm ?? 'default';
  if ((temb === undefined) !== (o.tembChannels === undefined)) {
    throw new GraphBuildError(
      o.tembChannels === undefined
        ? `${p.path}: a time embedding was given to a ResnetBlock2D built without temb_channels`
        : `${p.path}: ResnetBlock2D with temb_channels ${o.tembChannels} needs the time embedding`,
    );
  }
  let h = GroupNorm(p.child('norm1'), x, o.groups, inChannels, o.eps);
  h = p.scope(() => activation(h, o.act));
  h = Conv2d(p.child('conv1'), h, { inChannels, outChannels, kernel: 3, padding: 1 });

  let timeScaleShift: [Tensor, Tensor] | undefined;
  if (temb !== undefined && o.tembChannels !== undefined) {
    const projected = norm === 'scale_shift' ? 2 * outChannels : outChannels;
    const t = o.skipTimeAct ? temb : p.scope(() => activation(temb, o.act));
    const embedded = Linear(p.child('time_emb_proj'), t, o.tembChannels, projected);
    const broadcast = p.scope(() => reshape(embedded, [embedded.shape[0], projected, 1, 1]));
    if (norm === 'default') h = p.scope(() => add(h, broadcast));
    else timeScaleShift = p.scope(() => split(broadcast, 2, 1) as [Tensor, Tensor]);
  }
  h = GroupNorm(p.child('norm2'), h, o.groupsOut ?? o.groups, outChannels, o.eps);
  if (timeScaleShift) {
    const [scale, shift] = timeScaleShift;
    h = p.scope(() => add(mul(h, add(scale, 1)), shift));
  }
  h = p.scope(() => activation(h, o.act));
  // Dropout is the identity at inference.
  h = Conv2d(p.child('conv2'), h, { inChannels: outChannels, outChannels, kernel: 3, padding: 1 });

  const useShortcut = o.useInShortcut ?? inChannels !== outChannels;
  const shortcut = useShortcut
    ? Conv2d(p.child('conv_shortcut'), x, {
        inChannels,
        outChannels,
        kernel: 1,
        bias: o.convShortcutBias ?? true,
      })
    : x;
  const scale = o.outputScaleFactor ?? 1;
  return p.scope(() => {
    const sum = add(shortcut, h);
    return scale === 1 ? sum : div(sum, scale);
  });
}

/** diffusers `Downsample2D`'s constructor arguments. */
export interface Downsample2DOptions {
  channels: number;
  /** `out_channels`, channels by default (must equal it without a conv). */
  outChannels?: number;
  /** A stride-2 conv (`use_conv`), or else a 2×2 average pool. */
  useConv: boolean;
  /**
   * The conv's padding (`padding`, 1 by default); 0 means torch's F.pad(x, (0, 1, 0, 1)) before an
   * unpadded conv, as the VAE's encoder does.
   */
  padding?: number;
  /** Conv kernel size (`kernel_size`, 3 by default). */
  kernel?: number;
}

/** diffusers `Downsample2D` on x [B, channels, H, W]: [B, out, ⌊(H + 2p − k)/2⌋ + 1, …]. */
export function Downsample2D(p: Params, x: Tensor, o: Downsample2DOptions): Tensor {
  const outChannels = o.outChannels ?? o.channels;
  if (!o.useConv) {
    if (outChannels !== o.channels) {
      throw new GraphBuildError(
        `${p.path}: Downsample2D without a conv keeps the channels (${o.channels}), got out_channels ${outChannels}`,
      );
    }
    return p.scope(() => avgPool2d(x, 2, { stride: 2 }));
  }
  const padding = o.padding ?? 1;
  // The layer registers its conv as `conv` whatever diffusers' `name` says ('op', 'conv', 'Conv2d_0').
  return Conv2d(p.child('conv'), x, {
    inChannels: o.channels,
    outChannels,
    kernel: o.kernel ?? 3,
    stride: 2,
    // [top, left, bottom, right]: padding 0 is F.pad(x, (0, 1, 0, 1)), folded into the conv.
    padding: padding === 0 ? [0, 0, 1, 1] : padding,
  });
}

/** diffusers `Upsample2D`'s constructor arguments (interpolation then an optional conv). */
export interface Upsample2DOptions {
  channels: number;
  outChannels?: number;
  /** A conv after the interpolation (`use_conv`). */
  useConv: boolean;
  /** Conv kernel and padding (`kernel_size` 3, `padding` 1 by default). */
  kernel?: number;
  padding?: number;
  /**
   * The interpolated size (forward's `output_size`), for inputs whose size is not a multiple of the
   * overall downsampling (the UNet's `upsample_size`); nearest ×2 when absent.
   */
  outputSize?: readonly [number, number];
}

/** diffusers `Upsample2D` on x [B, channels, h, w]: nearest ×2 (or to `outputSize`), then the conv. */
export function Upsample2D(p: Params, x: Tensor, o: Upsample2DOptions): Tensor {
  const size = o.outputSize;
  const upsampled = p.scope(() =>
    size === undefined
      ? upsample2d(x, { scale: 2, mode: 'nearest' })
      : upsample2d(x, { size: [size[0], size[1]], mode: 'nearest' }),
  );
  if (!o.useConv) return upsampled;
  return Conv2d(p.child('conv'), upsampled, {
    inChannels: o.channels,
    outChannels: o.outChannels ?? o.channels,
    kernel: o.kernel ?? 3,
    padding: o.padding ?? 1,
  });
}
