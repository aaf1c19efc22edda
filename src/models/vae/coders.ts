/** diffusers' VAE `Encoder` and `Decoder` (autoencoders/vae.py) as graph builders. */
import type { Tensor } from '../../graph/graph.js';
import { silu } from '../../graph/ops/index.js';
import { Conv2d, GroupNorm } from '../../nn/layers.js';
import type { Params } from '../../nn/params.js';
import type { AutoencoderKLConfig } from './config.js';
import type { VaeBlockSettings } from './blocks.js';
import { DownEncoderBlock2D, UNetMidBlock2D, UpDecoderBlock2D } from './blocks.js';

const VAE_EPS = 1e-6;

function settings(config: AutoencoderKLConfig): VaeBlockSettings {
  return { groups: config.normNumGroups, eps: VAE_EPS, act: config.actFn };
}

/** Image [N, in_channels, H, W] → moments [N, 2·latent_channels, H/f, W/f] (double_z). */
export function Encoder(p: Params, sample: Tensor, config: AutoencoderKLConfig): Tensor {
  const s = settings(config);
  const channels = config.blockOutChannels;
  const last = channels[channels.length - 1];
  let h = Conv2d(p.child('conv_in'), sample, {
    inChannels: config.inChannels,
    outChannels: channels[0],
    kernel: 3,
    padding: 1,
  });
  let outChannels = channels[0];
  channels.forEach((blockChannels, i) => {
    const inChannels = outChannels;
    outChannels = blockChannels;
    h = DownEncoderBlock2D(
      p.child('down_blocks').child(i),
      h,
      { inChannels, outChannels, layers: config.layersPerBlock, addDownsample: i !== channels.length - 1 },
      s,
    );
  });
  h = UNetMidBlock2D(p.child('mid_block'), h, last, config.midBlockAddAttention, s);
  h = GroupNorm(p.child('conv_norm_out'), h, config.normNumGroups, last, VAE_EPS);
  // conv_act is nn.SiLU whatever act_fn says.
  h = p.scope(() => silu(h));
  return Conv2d(p.child('conv_out'), h, {
    inChannels: last,
    outChannels: 2 * config.latentChannels,
    kernel: 3,
    padding: 1,
  });
}

/** Latents [N, latent_channels, h, w] → image [N, out_channels, h·f, w·f]. */
export function Decoder(p: Params, z: Tensor, config: AutoencoderKLConfig): Tensor {
  const s = settings(config);
  const reversed = [...config.blockOutChannels].reverse();
  let h = Conv2d(p.child('conv_in'), z, {
    inChannels: config.latentChannels,
    outChannels: reversed[0],
    kernel: 3,
    padding: 1,
  });
  h = UNetMidBlock2D(p.child('mid_block'), h, reversed[0], config.midBlockAddAttention, s);
  let outChannels = reversed[0];
  reversed.forEach((blockChannels, i) => {
    const inChannels = outChannels;
    outChannels = blockChannels;
    h = UpDecoderBlock2D(
      p.child('up_blocks').child(i),
      h,
      { inChannels, outChannels, layers: config.layersPerBlock + 1, addUpsample: i !== reversed.length - 1 },
      s,
    );
  });
  const first = config.blockOutChannels[0];
  h = GroupNorm(p.child('conv_norm_out'), h, config.normNumGroups, first, VAE_EPS);
  h = p.scope(() => silu(h));
  return Conv2d(p.child('conv_out'), h, {
    inChannels: first,
    outChannels: config.outChannels,
    kernel: 3,
    padding: 1,
  });
}
