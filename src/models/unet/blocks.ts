/**
 * The blocks of diffusers' UNet2DConditionModel (unets/unet_2d_blocks.py, transformers/
 * transformer_2d.py) as graph builders, named as the checkpoint names them:
 * `down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k`, `up_blocks.0.upsamplers.0.conv`, ….
 * Resnets, samplers and the transformer block are nn/'s, shared with the VAE and PixArt.
 */
import { GraphBuildError } from '../../errors.js';
import type { Graph, Tensor } from '../../graph/graph.js';
import { add, concat, reshape, transpose } from '../../graph/ops/index.js';
import type { Dim } from '../../graph/shape.js';
import { Conv2d, GroupNorm, Linear } from '../../nn/layers.js';
import type { Params } from '../../nn/params.js';
import { Downsample2D, ResnetBlock2D, Upsample2D } from '../../nn/resnet.js';
import type { BlockAttentionRole } from '../../nn/transformer-block.js';
import { BasicTransformerBlock } from '../../nn/transformer-block.js';
import type {
  UNet2DConditionConfig,
  UNetAttentionSettings,
  UNetDownLevel,
  UNetMidLevel,
  UNetUpLevel,
} from './config.js';

/** Where a BasicTransformerBlock sits in the UNet, for the build hooks. */
export interface UNetTransformerSite {
  /** The block's position in forward order over the whole UNet, from 0 (T-GATE's layer number). */
  index: number;
  /** Its module path, e.g. `down_blocks.0.attentions.1.transformer_blocks.0`. */
  path: string;
  /** Token width (heads × dimHead) and heads of its attentions. */
  dim: number;
  heads: number;
  /** The latent grid its H·W tokens come from, row-major. */
  grid: { height: number; width: number };
}

/**
 * Choices made while the graph is built (DESIGN.md: accelerations are build-time choices):
 * - `selfAttention` builds attn1 of every transformer block (`p` is its attn1 module: to_q, to_k,
 *   to_v, to_out.0 without biases on q/k/v) in place of full attention: LinFusion, CLEAR;
 * - `around` wraps each attention module's computation (T-GATE: compute, store or reuse);
 * - `layer` wraps each layer of the down, mid and up paths by module path — `down_blocks.0.resnets.1`,
 *   `mid_block.attentions.0`, `up_blocks.2.upsamplers.0` (an up resnet's computation includes the
 *   skip concat before it) — so that a caller can output a feature (DeepCache stores the high-level
 *   ones) or, not calling `compute`, put a graph input in its place; the layers only it used then
 *   fall out of the serialized graph.
 */
export interface UNetBuildHooks {
  selfAttention?: (site: UNetTransformerSite, p: Params, x: Tensor) => Tensor;
  around?: (site: UNetTransformerSite, role: BlockAttentionRole, compute: () => Tensor) => Tensor;
  layer?: (path: string, compute: () => Tensor, graph: Graph) => Tensor;
}

/** What every block of one forward shares. */
export interface UNetBlockContext {
  config: UNet2DConditionConfig;
  /** The time embedding [B, time_embed_dim] every resnet adds. */
  temb: Tensor;
  /** encoder_hidden_states [B, L, cross_attention_dim]. */
  text: Tensor;
  /** Additive mask of the text tokens, broadcastable to [B, heads, N, L]. */
  crossMask?: Tensor;
  hooks: UNetBuildHooks;
  /** Transformer blocks built so far (numbers the sites in forward order). */
  transformerBlocks: { count: number };
}

function layer(ctx: UNetBlockContext, p: Params, compute: () => Tensor): Tensor {
  return ctx.hooks.layer ? ctx.hooks.layer(p.path, compute, p.graph) : compute();
}

function resnet(
  ctx: UNetBlockContext,
  p: Params,
  x: Tensor,
  inChannels: number,
  outChannels: number,
  outputScaleFactor = 1,
): Tensor {
  const { config } = ctx;
  return ResnetBlock2D(p, x, ctx.temb, {
    inChannels,
    outChannels,
    tembChannels: config.timeEmbedDim,
    groups: config.normNumGroups,
    eps: config.normEps,
    act: config.actFn,
    outputScaleFactor,
  });
}

/**
 * Transformer2DModel on continuous inputs x [B, C, H, W]: GroupNorm (eps 1e-6), proj_in (1×1 conv,
 * or Linear after flattening with use_linear_projection), `layers` BasicTransformerBlocks
 * (layer_norm, GEGLU, no q/k/v biases), proj_out, plus x.
 */
export function Transformer2DModel(
  ctx: UNetBlockContext,
  p: Params,
  x: Tensor,
  channels: number,
  attention: UNetAttentionSettings,
  layers: number,
): Tensor {
  const { config, hooks } = ctx;
  const [batch, , height, width] = x.shape as [Dim, Dim, number, number];
  if (typeof height !== 'number' || typeof width !== 'number') {
    throw new GraphBuildError(`${p.path}: the UNet is built for a static latent height and width`);
  }
  const tokens = height * width;
  const inner = attention.heads * attention.dimHead;
  const toTokens = (t: Tensor, c: number): Tensor =>
    p.scope(() => reshape(transpose(t, [0, 2, 3, 1]), [batch, tokens, c]));
  const toImage = (t: Tensor, c: number): Tensor =>
    p.scope(() => transpose(reshape(t, [batch, height, width, c]), [0, 3, 1, 2]));

  const normed = GroupNorm(p.child('norm'), x, config.normNumGroups, channels, 1e-6);
  let hidden = config.useLinearProjection
    ? Linear(p.child('proj_in'), toTokens(normed, channels), channels, inner)
    : toTokens(
        Conv2d(p.child('proj_in'), normed, { inChannels: channels, outChannels: inner, kernel: 1 }),
        inner,
      );
  for (let j = 0; j < layers; j++) {
    const block = p.child('transformer_blocks').child(j);
    const site: UNetTransformerSite = {
      index: ctx.transformerBlocks.count++,
      path: block.path,
      dim: inner,
      heads: attention.heads,
      grid: { height, width },
    };
    const selfAttention = hooks.selfAttention;
    const around = hooks.around;
    hidden = BasicTransformerBlock(block, hidden, ctx.text, {
      dim: inner,
      heads: attention.heads,
      dimHead: attention.dimHead,
      crossAttentionDim: attention.crossAttentionDim,
      onlyCrossAttention: attention.onlyCrossAttention,
      normType: 'layer_norm',
      activation: 'geglu',
      crossMask: ctx.crossMask,
      ...(selfAttention
        ? { selfAttention: (attn1: Params, h: Tensor) => selfAttention(site, attn1, h) }
        : {}),
      ...(around
        ? { around: (role: BlockAttentionRole, compute: () => Tensor) => around(site, role, compute) }
        : {}),
    });
  }
  const out = config.useLinearProjection
    ? toImage(Linear(p.child('proj_out'), hidden, inner, channels), channels)
    : Conv2d(p.child('proj_out'), toImage(hidden, inner), {
        inChannels: inner,
        outChannels: channels,
        kernel: 1,
      });
  return p.scope(() => add(out, x));
}

/**
 * CrossAttnDownBlock2D / DownBlock2D: resnets (each followed by a transformer in the cross-attention
 * block), then the stride-2 conv except on the last level. Returns the output and the states the up
 * path concatenates (each layer's output, then the downsampler's).
 */
export function UNetDownBlock(
  ctx: UNetBlockContext,
  p: Params,
  x: Tensor,
  level: UNetDownLevel,
): { hidden: Tensor; residuals: Tensor[] } {
  let h = x;
  const residuals: Tensor[] = [];
  for (let j = 0; j < level.layers; j++) {
    const input = h;
    const rp = p.child('resnets').child(j);
    const inChannels = j === 0 ? level.inChannels : level.outChannels;
    h = layer(ctx, rp, () => resnet(ctx, rp, input, inChannels, level.outChannels));
    const attention = level.attention;
    if (attention) {
      const ap = p.child('attentions').child(j);
      const resnetOut = h;
      h = layer(ctx, ap, () =>
        Transformer2DModel(ctx, ap, resnetOut, level.outChannels, attention, attention.transformerLayers[j]),
      );
    }
    residuals.push(h);
  }
  if (level.addDownsample) {
    const dp = p.child('downsamplers').child(0);
    const input = h;
    h = layer(ctx, dp, () =>
      Downsample2D(dp, input, {
        channels: level.outChannels,
        useConv: true,
        padding: ctx.config.downsamplePadding,
      }),
    );
    residuals.push(h);
  }
  return { hidden: h, residuals };
}

/** UNetMidBlock2DCrossAttn (resnet, transformer, resnet) or UNetMidBlock2D (one resnet). */
export function UNetMidBlock(ctx: UNetBlockContext, p: Params, x: Tensor, level: UNetMidLevel): Tensor {
  const c = level.channels;
  const first = p.child('resnets').child(0);
  let h = layer(ctx, first, () => resnet(ctx, first, x, c, c, level.outputScaleFactor));
  const attention = level.attention;
  if (!attention) return h;
  const ap = p.child('attentions').child(0);
  const resnetOut = h;
  h = layer(ctx, ap, () =>
    Transformer2DModel(ctx, ap, resnetOut, c, attention, attention.transformerLayers[0]),
  );
  const second = p.child('resnets').child(1);
  const attended = h;
  return layer(ctx, second, () => resnet(ctx, second, attended, c, c, level.outputScaleFactor));
}

/**
 * CrossAttnUpBlock2D / UpBlock2D: for each resnet, concatenate the last remaining skip state
 * (`residuals` is consumed from its end), resnet, transformer; then nearest ×2 (or to
 * `upsampleSize`, diffusers' forward_upsample_size for odd latents) and a 3×3 conv.
 */
export function UNetUpBlock(
  ctx: UNetBlockContext,
  p: Params,
  x: Tensor,
  residuals: Tensor[],
  level: UNetUpLevel,
  upsampleSize: readonly [number, number] | undefined,
): Tensor {
  let h = x;
  for (let j = 0; j < level.layers; j++) {
    const skip = residuals.pop();
    if (skip === undefined) throw new GraphBuildError(`${p.path}: no skip connection left for resnet ${j}`);
    const skipChannels = j === level.layers - 1 ? level.inChannels : level.outChannels;
    const inChannels = (j === 0 ? level.prevOutputChannels : level.outChannels) + skipChannels;
    const rp = p.child('resnets').child(j);
    const below = h;
    h = layer(ctx, rp, () => {
      const joined = rp.scope(() => concat([below, skip], 1));
      return resnet(ctx, rp, joined, inChannels, level.outChannels);
    });
    const attention = level.attention;
    if (attention) {
      const ap = p.child('attentions').child(j);
      const resnetOut = h;
      h = layer(ctx, ap, () =>
        Transformer2DModel(ctx, ap, resnetOut, level.outChannels, attention, attention.transformerLayers[j]),
      );
    }
  }
  if (!level.addUpsample) return h;
  const up = p.child('upsamplers').child(0);
  const input = h;
  return layer(ctx, up, () =>
    Upsample2D(up, input, {
      channels: level.outChannels,
      useConv: true,
      ...(upsampleSize ? { outputSize: upsampleSize } : {}),
    }),
  );
}
