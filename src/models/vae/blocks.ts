/**
 * The blocks of diffusers' VAE Encoder and Decoder as graph builders, named and laid out as in
 * diffusers (unet_2d_blocks.py, attention_processor.py) so that parameter paths are the
 * checkpoint's: `down_blocks.1.resnets.0.conv_shortcut`, `mid_block.attentions.0.to_q`, ….
 * The resnets, downsamplers and upsamplers are nn/resnet.ts' (shared with the UNet); the VAE's have
 * no time embedding and output_scale_factor 1.
 */
import type { Tensor } from '../../graph/graph.js';
import { add, reshape, transpose } from '../../graph/ops/index.js';
import { Attention } from '../../nn/attention.js';
import { GroupNorm } from '../../nn/layers.js';
import type { Params } from '../../nn/params.js';
import { Downsample2D, ResnetBlock2D, Upsample2D } from '../../nn/resnet.js';
import type { VaeActivation } from './config.js';

/** What every block of one VAE shares. */
export interface VaeBlockSettings {
  /** GroupNorm groups (config `norm_num_groups`). */
  groups: number;
  /** GroupNorm eps: diffusers' Encoder and Decoder pass resnet_eps=1e-6 everywhere. */
  eps: number;
  act: VaeActivation;
}

/** A VAE resnet: ResnetBlock2D without a time embedding. */
function resnet(p: Params, x: Tensor, inChannels: number, outChannels: number, s: VaeBlockSettings): Tensor {
  return ResnetBlock2D(p, x, undefined, {
    inChannels,
    outChannels,
    groups: s.groups,
    eps: s.eps,
    act: s.act,
  });
}

/** The projection names of checkpoints saved before diffusers 0.14. */
const LEGACY_PROJECTION_NAMES = { q: 'query', k: 'key', v: 'value', out: 'proj_attn' };

/**
 * The mid-block self-attention over the H·W positions: diffusers' Attention(heads=1,
 * dim_head=channels, bias=True) between a group norm and the residual connection
 * (rescale_output_factor=1). Checkpoints saved before diffusers 0.14 name its projections
 * query/key/value/proj_attn; both spellings load.
 */
export function VaeAttention(p: Params, x: Tensor, channels: number, s: VaeBlockSettings): Tensor {
  const [batch, , height, width] = x.shape as readonly number[];
  const legacy = !p.child('to_q').has('weight') && p.child('query').has('weight');
  const normed = GroupNorm(p.child('group_norm'), x, s.groups, channels, s.eps);
  const tokens = p.scope(() => transpose(reshape(normed, [batch, channels, height * width]), [0, 2, 1]));
  const out = Attention(p, tokens, undefined, {
    queryDim: channels,
    heads: 1,
    dimHead: channels,
    bias: true,
    ...(legacy ? { projectionNames: LEGACY_PROJECTION_NAMES } : {}),
  });
  return p.scope(() => add(reshape(transpose(out, [0, 2, 1]), [batch, channels, height, width]), x));
}

/** UNetMidBlock2D with one layer: resnet, (attention), resnet. */
export function UNetMidBlock2D(
  p: Params,
  x: Tensor,
  channels: number,
  addAttention: boolean,
  s: VaeBlockSettings,
): Tensor {
  let h = resnet(p.child('resnets').child(0), x, channels, channels, s);
  if (addAttention) h = VaeAttention(p.child('attentions').child(0), h, channels, s);
  return resnet(p.child('resnets').child(1), h, channels, channels, s);
}

/**
 * DownEncoderBlock2D: `layers` resnets, then (except in the last block) Downsample2D with
 * padding=0, which pads right and bottom by one before its stride-2 3×3 conv.
 */
export function DownEncoderBlock2D(
  p: Params,
  x: Tensor,
  o: { inChannels: number; outChannels: number; layers: number; addDownsample: boolean },
  s: VaeBlockSettings,
): Tensor {
  let h = x;
  for (let i = 0; i < o.layers; i++) {
    h = resnet(p.child('resnets').child(i), h, i === 0 ? o.inChannels : o.outChannels, o.outChannels, s);
  }
  if (!o.addDownsample) return h;
  return Downsample2D(p.child('downsamplers').child(0), h, {
    channels: o.outChannels,
    useConv: true,
    padding: 0,
  });
}

/** UpDecoderBlock2D: `layers` resnets, then (except in the last block) nearest ×2 and a 3×3 conv. */
export function UpDecoderBlock2D(
  p: Params,
  x: Tensor,
  o: { inChannels: number; outChannels: number; layers: number; addUpsample: boolean },
  s: VaeBlockSettings,
): Tensor {
  let h = x;
  for (let i = 0; i < o.layers; i++) {
    h = resnet(p.child('resnets').child(i), h, i === 0 ? o.inChannels : o.outChannels, o.outChannels, s);
  }
  if (!o.addUpsample) return h;
  return Upsample2D(p.child('upsamplers').child(0), h, { channels: o.outChannels, useConv: true });
}
