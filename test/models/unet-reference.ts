/**
 * A float64 reference of diffusers' UNet2DConditionModel (unet_2d_condition.py, unet_2d_blocks.py,
 * resnet.py, transformer_2d.py, attention.py, embeddings.py), written from those module
 * definitions over the raw config.json with test/reference's loops; it shares nothing with
 * src/models/unet*. Covers what the golden cases and the odd-size checks use: CrossAttn/plain down
 * and up blocks, UNetMidBlock2DCrossAttn, conv or linear projections, text_time, cond_proj,
 * encoder_attention_mask, center_input_sample, mid_block_scale_factor, forward_upsample_size.
 *
 * The one float32 step kept on purpose: diffusers builds the sinusoidal timestep features in float32
 * even in a float64 run (torch.arange(dtype=float32), `timesteps.float()`), with torch's float32 exp
 * (src/random/torch-exp.ts, itself checked bit for bit against torch); the rest is float64.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';

import { WeightStore } from '../../src/io/diffusers.js';
import { torchExpFloat32 } from '../../src/random/torch-exp.js';
import { attentionRef } from '../reference/attention.js';
import type { RefMask } from '../reference/attention.js';
import { conv2dRef, upsampleNearestRef } from '../reference/conv.js';
import type { RefTensor } from '../reference/math.js';
import {
  geluExact,
  groupNorm,
  layerNorm,
  linear,
  mapBinary,
  mapUnary,
  refTensor,
  silu,
} from '../reference/math.js';

type Raw = Record<string, unknown>;

export interface RefUNetInputs {
  sample: RefTensor;
  /** One value per batch item. */
  timestep: readonly number[];
  encoderHiddenStates: RefTensor;
  encoderAttentionMask?: RefTensor;
  timestepCond?: RefTensor;
  textEmbeds?: RefTensor;
  timeIds?: RefTensor;
}

const f32 = Math.fround;

function perLevel<T>(value: unknown, levels: number, fallback: T): T[] {
  const v = value === undefined || value === null ? fallback : value;
  return Array.isArray(v) ? (v as T[]) : Array.from({ length: levels }, () => v as T);
}

function concatChannels(a: RefTensor, b: RefTensor): RefTensor {
  const [n, ca, h, w] = a.shape;
  const cb = b.shape[1];
  const plane = h * w;
  const data = new Float64Array(n * (ca + cb) * plane);
  for (let i = 0; i < n; i++) {
    data.set(a.data.subarray(i * ca * plane, (i + 1) * ca * plane), i * (ca + cb) * plane);
    data.set(b.data.subarray(i * cb * plane, (i + 1) * cb * plane), (i * (ca + cb) + ca) * plane);
  }
  return { shape: [n, ca + cb, h, w], data };
}

/** [B, C, H, W] ↔ [B, H·W, C]. */
function toTokens(x: RefTensor): RefTensor {
  const [n, c, h, w] = x.shape;
  const out = new Float64Array(x.data.length);
  for (let b = 0; b < n; b++)
    for (let ch = 0; ch < c; ch++)
      for (let p = 0; p < h * w; p++) out[(b * h * w + p) * c + ch] = x.data[(b * c + ch) * h * w + p];
  return { shape: [n, h * w, c], data: out };
}

function toImage(x: RefTensor, h: number, w: number): RefTensor {
  const [n, , c] = x.shape;
  const out = new Float64Array(x.data.length);
  for (let b = 0; b < n; b++)
    for (let ch = 0; ch < c; ch++)
      for (let p = 0; p < h * w; p++) out[(b * c + ch) * h * w + p] = x.data[(b * h * w + p) * c + ch];
  return { shape: [n, c, h, w], data: out };
}

const add = (a: RefTensor, b: RefTensor): RefTensor => mapBinary(a, b, (x, y) => x + y);

export class RefUNet {
  private constructor(
    readonly cfg: Raw,
    private readonly weights: Map<string, RefTensor>,
  ) {}

  static async load(dir: string): Promise<RefUNet> {
    const cfg = JSON.parse(await readFile(join(dir, 'config.json'), 'utf8')) as Raw;
    const store = await WeightStore.open(dir);
    const weights = new Map<string, RefTensor>();
    try {
      for (const name of store.names())
        weights.set(name, refTensor(store.info(name).shape, await store.readFloat32(name)));
    } finally {
      await store.close();
    }
    return new RefUNet(cfg, weights);
  }

  private w(name: string): RefTensor {
    const t = this.weights.get(name);
    assert.ok(t, `reference: no tensor ${name}`);
    return t;
  }

  private num(key: string, fallback: number): number {
    const v = this.cfg[key];
    return typeof v === 'number' ? v : fallback;
  }

  private get groups(): number {
    return this.num('norm_num_groups', 32);
  }
  private get eps(): number {
    return this.num('norm_eps', 1e-5);
  }

  private conv(x: RefTensor, name: string, stride = 1): RefTensor {
    const w = this.w(`${name}.weight`);
    const pad = (w.shape[2] - 1) / 2;
    return conv2dRef(x, w, this.weights.get(`${name}.bias`), {
      stride: [stride, stride],
      pads: [pad, pad, pad, pad],
      dilation: [1, 1],
      groups: 1,
    });
  }

  private linear(x: RefTensor, name: string): RefTensor {
    return linear(x, this.w(`${name}.weight`), this.weights.get(`${name}.bias`));
  }

  private groupNorm(x: RefTensor, name: string, eps: number): RefTensor {
    return groupNorm(x, this.groups, this.w(`${name}.weight`), this.w(`${name}.bias`), eps);
  }

  /** get_timestep_embedding as diffusers computes it (float32 features, see the file comment). */
  private static timestepFeatures(
    t: readonly number[],
    dim: number,
    flip: boolean,
    shift: number,
  ): RefTensor {
    const half = Math.floor(dim / 2);
    const freqs = Array.from({ length: half }, (_, i) =>
      torchExpFloat32(f32(f32(f32(-Math.log(10000)) * i) / f32(half - shift))),
    );
    const data = new Float64Array(t.length * dim);
    t.forEach((value, b) => {
      for (let i = 0; i < half; i++) {
        const arg = f32(f32(value) * freqs[i]);
        const [first, second] = flip ? [Math.cos(arg), Math.sin(arg)] : [Math.sin(arg), Math.cos(arg)];
        data[b * dim + i] = f32(first);
        data[b * dim + half + i] = f32(second);
      }
    });
    return { shape: [t.length, dim], data };
  }

  /** TimestepEmbedding: (+ cond_proj(condition)), linear_1, SiLU, linear_2. */
  private timestepEmbedding(x: RefTensor, name: string, condition?: RefTensor): RefTensor {
    const input = condition ? add(x, linear(condition, this.w(`${name}.cond_proj.weight`))) : x;
    return this.linear(mapUnary(this.linear(input, `${name}.linear_1`), silu), `${name}.linear_2`);
  }

  private resnet(x: RefTensor, temb: RefTensor, name: string, outputScale = 1): RefTensor {
    let h = this.conv(mapUnary(this.groupNorm(x, `${name}.norm1`, this.eps), silu), `${name}.conv1`);
    const t = this.linear(mapUnary(temb, silu), `${name}.time_emb_proj`);
    const [, c, hh, ww] = h.shape;
    h = {
      shape: h.shape,
      data: h.data.map(
        (v, i) => v + t.data[Math.floor(i / (c * hh * ww)) * c + (Math.floor(i / (hh * ww)) % c)],
      ),
    };
    h = this.conv(mapUnary(this.groupNorm(h, `${name}.norm2`, this.eps), silu), `${name}.conv2`);
    const shortcut = this.weights.has(`${name}.conv_shortcut.weight`)
      ? this.conv(x, `${name}.conv_shortcut`)
      : x;
    return mapBinary(shortcut, h, (a, b) => (a + b) / outputScale);
  }

  private attention(
    x: RefTensor,
    context: RefTensor,
    name: string,
    heads: number,
    mask?: RefMask,
  ): RefTensor {
    const q = linear(x, this.w(`${name}.to_q.weight`));
    const k = linear(context, this.w(`${name}.to_k.weight`));
    const v = linear(context, this.w(`${name}.to_v.weight`));
    return this.linear(attentionRef(q, k, v, heads, mask ? { mask } : {}), `${name}.to_out.0`);
  }

  /** BasicTransformerBlock, norm_type layer_norm, GEGLU feed-forward. */
  private transformerBlock(
    x: RefTensor,
    text: RefTensor,
    name: string,
    heads: number,
    onlyCross: boolean,
    mask?: RefMask,
  ): RefTensor {
    const ln = (t: RefTensor, n: string): RefTensor =>
      layerNorm(t, -1, this.w(`${n}.weight`), this.w(`${n}.bias`), 1e-5);
    const n1 = ln(x, `${name}.norm1`);
    let h = add(
      x,
      this.attention(n1, onlyCross ? text : n1, `${name}.attn1`, heads, onlyCross ? mask : undefined),
    );
    h = add(h, this.attention(ln(h, `${name}.norm2`), text, `${name}.attn2`, heads, mask));
    const projected = this.linear(ln(h, `${name}.norm3`), `${name}.ff.net.0.proj`);
    const width = projected.shape[2] / 2;
    const gated = refTensor(
      [...projected.shape.slice(0, 2), width],
      Array.from({ length: projected.data.length / 2 }, (_, i) => {
        const row = Math.floor(i / width);
        const j = i % width;
        return projected.data[row * 2 * width + j] * geluExact(projected.data[row * 2 * width + width + j]);
      }),
    );
    return add(h, this.linear(gated, `${name}.ff.net.2`));
  }

  private transformer(
    x: RefTensor,
    text: RefTensor,
    name: string,
    heads: number,
    onlyCross: boolean,
    mask?: RefMask,
  ): RefTensor {
    const [, , h, w] = x.shape;
    const linearProjection = this.cfg['use_linear_projection'] === true;
    const normed = this.groupNorm(x, `${name}.norm`, 1e-6);
    let tokens = linearProjection
      ? this.linear(toTokens(normed), `${name}.proj_in`)
      : toTokens(this.conv(normed, `${name}.proj_in`));
    for (let j = 0; this.weights.has(`${name}.transformer_blocks.${j}.norm1.weight`); j++)
      tokens = this.transformerBlock(tokens, text, `${name}.transformer_blocks.${j}`, heads, onlyCross, mask);
    const out = linearProjection
      ? toImage(this.linear(tokens, `${name}.proj_out`), h, w)
      : this.conv(toImage(tokens, h, w), `${name}.proj_out`);
    return add(out, x);
  }

  forward(inputs: RefUNetInputs): RefTensor {
    const cfg = this.cfg;
    const channels = cfg['block_out_channels'] as number[];
    const levels = channels.length;
    const downTypes = cfg['down_block_types'] as string[];
    const upTypes = cfg['up_block_types'] as string[];
    const heads = perLevel<number>(cfg['attention_head_dim'], levels, 8);
    const layers = perLevel<number>(cfg['layers_per_block'], levels, 2);
    const onlyCross = perLevel<boolean>(cfg['only_cross_attention'], levels, false);
    const flip = cfg['flip_sin_to_cos'] !== false;
    const shift = this.num('freq_shift', 0);

    let sample = inputs.sample;
    const [, , height, width] = sample.shape;
    const factor = 2 ** (levels - 1);
    const forwardUpsampleSize = height % factor !== 0 || width % factor !== 0;
    let mask: RefMask | undefined;
    if (inputs.encoderAttentionMask) {
      const m = inputs.encoderAttentionMask;
      mask = {
        shape: [m.shape[0], 1, 1, m.shape[1]],
        data: m.data.map((v) => (1 - v) * -10000),
        kind: 'additive',
      };
    }
    if (cfg['center_input_sample'] === true) sample = mapUnary(sample, (v) => 2 * v - 1);

    let temb = this.timestepEmbedding(
      RefUNet.timestepFeatures(inputs.timestep, channels[0], flip, shift),
      'time_embedding',
      inputs.timestepCond,
    );
    if (cfg['addition_embed_type'] === 'text_time') {
      const ids = inputs.timeIds as RefTensor;
      const pooled = inputs.textEmbeds as RefTensor;
      const dim = cfg['addition_time_embed_dim'] as number;
      const features = RefUNet.timestepFeatures(Array.from(ids.data), dim, flip, shift);
      const [batch, count] = ids.shape;
      const width2 = pooled.shape[1] + count * dim;
      const joined = refTensor(
        [batch, width2],
        Array.from({ length: batch * width2 }, (_, i) => {
          const b = Math.floor(i / width2);
          const j = i % width2;
          return j < pooled.shape[1]
            ? pooled.data[b * pooled.shape[1] + j]
            : features.data[b * count * dim + j - pooled.shape[1]];
        }),
      );
      temb = add(temb, this.timestepEmbedding(joined, 'add_embedding'));
    }
    const text = inputs.encoderHiddenStates;

    let h = this.conv(sample, 'conv_in');
    const skips: RefTensor[] = [h];
    for (let i = 0; i < levels; i++) {
      const name = `down_blocks.${i}`;
      for (let j = 0; j < layers[i]; j++) {
        h = this.resnet(h, temb, `${name}.resnets.${j}`);
        if (downTypes[i] === 'CrossAttnDownBlock2D')
          h = this.transformer(h, text, `${name}.attentions.${j}`, heads[i], onlyCross[i], mask);
        skips.push(h);
      }
      if (i < levels - 1) {
        h = this.conv(h, `${name}.downsamplers.0.conv`, 2);
        skips.push(h);
      }
    }
    const midScale = this.num('mid_block_scale_factor', 1);
    h = this.resnet(h, temb, 'mid_block.resnets.0', midScale);
    h = this.transformer(h, text, 'mid_block.attentions.0', heads[levels - 1], false, mask);
    h = this.resnet(h, temb, 'mid_block.resnets.1', midScale);
    for (let i = 0; i < levels; i++) {
      const name = `up_blocks.${i}`;
      const level = levels - 1 - i;
      for (let j = 0; j <= layers[level]; j++) {
        h = this.resnet(concatChannels(h, skips.pop() as RefTensor), temb, `${name}.resnets.${j}`);
        if (upTypes[i] === 'CrossAttnUpBlock2D')
          h = this.transformer(h, text, `${name}.attentions.${j}`, heads[level], onlyCross[level], mask);
      }
      if (i < levels - 1) {
        const next = skips[skips.length - 1];
        const size: [number, number] = forwardUpsampleSize
          ? [next.shape[2], next.shape[3]]
          : [2 * h.shape[2], 2 * h.shape[3]];
        h = this.conv(upsampleNearestRef(h, size), `${name}.upsamplers.0.conv`);
      }
    }
    h = mapUnary(this.groupNorm(h, 'conv_norm_out', this.eps), silu);
    return this.conv(h, 'conv_out');
  }
}
