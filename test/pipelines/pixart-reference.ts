/**
 * A float64 PixArtTransformer2DModel forward (diffusers 0.40, adaLN-single, no micro-conditions),
 * written from diffusers' module code as plain loops over the checkpoint's tensors. It shares nothing
 * with src/models: attention goes through test/reference (SDPA, CLEAR's dense masked form,
 * LinFusion's row form). Each attention module's output passes through a hook, so a test can cache
 * and reuse it the way T-GATE does and compare the pipeline with a loop it writes itself.
 */
import { torchExpFloat32 } from '../../src/random/torch-exp.js';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { HostTensor } from '../../src/runtime/host-tensor.js';
import { readAllTensors } from '../helpers.js';
import { attentionRef } from '../reference/attention.js';
import { clearAttentionRef } from '../reference/clear.js';
import { linfusionRef } from '../reference/linfusion.js';
import type { RefTensor } from '../reference/math.js';
import { geluTanh, layerNorm, linear, silu } from '../reference/math.js';

/** The config keys the tiny test checkpoints set (config.json, diffusers names). */
interface PixArtRefConfig {
  readonly num_attention_heads: number;
  readonly attention_head_dim: number;
  readonly in_channels: number;
  readonly out_channels: number;
  readonly num_layers: number;
  readonly patch_size: number;
  readonly sample_size: number;
  readonly norm_eps: number;
  readonly interpolation_scale?: number | null;
}

/** The kernel of every self-attention (attn1) module. */
export type RefSelfAttention =
  | { readonly kind: 'full' }
  | { readonly kind: 'clear'; readonly radius: number }
  /** LinFusion module `i` (its tensors `${i}.to_q.weight`, …) replaces `transformer_blocks.i.attn1`. */
  | { readonly kind: 'linfusion'; readonly tensors: Readonly<Record<string, RefTensor>> };

/**
 * Sees every attention module's output: `compute` builds it ([B, N, dim], after to_out.0, before the
 * residual); the hook returns what the block adds instead (itself, or a cached tensor).
 */
export type AttentionHook = (layer: number, role: 'attn1' | 'attn2', compute: () => RefTensor) => RefTensor;

export interface PixArtRefInputs {
  /** [B, C, H, W]. */
  readonly hiddenStates: HostTensor;
  /** One timestep per batch item. */
  readonly timesteps: readonly number[];
  /** [B, L, caption_channels]; may be absent when every cross-attention is taken from the hook. */
  readonly encoderHiddenStates?: HostTensor;
  /** [B, L], 1 = keep. */
  readonly encoderAttentionMask?: HostTensor;
}

/** One low-rank update of a module: W += scale·B·A. */
export interface RefLoraTerm {
  readonly module: string;
  /** A [r, in]. */
  readonly down: RefTensor;
  /** B [out, r]. */
  readonly up: RefTensor;
  readonly scale: number;
}

const tensor = (shape: readonly number[], data: Float64Array): RefTensor => ({ shape: [...shape], data });

/** A float32 host tensor as float64 (exact). */
export function refOf(t: HostTensor): RefTensor {
  return tensor(t.shape, Float64Array.from(t.data as ArrayLike<number>, Number));
}

export class PixArtReference {
  private constructor(
    readonly config: PixArtRefConfig,
    private readonly tensors: Readonly<Record<string, RefTensor>>,
  ) {}

  /** The transformer of a diffusers folder (config.json + diffusion_pytorch_model.safetensors). */
  static async load(dir: string): Promise<PixArtReference> {
    const config = JSON.parse(await readFile(join(dir, 'config.json'), 'utf8')) as PixArtRefConfig;
    // What this reference leaves out: micro-conditions (sample_size 128) and a position-table scale.
    if (config.sample_size === 128 || (config.interpolation_scale ?? 1) !== 1) {
      throw new Error(
        `reference: ${dir} uses micro-conditions or interpolation_scale, which it does not model`,
      );
    }
    const host = await readAllTensors(join(dir, 'diffusion_pytorch_model.safetensors'));
    const tensors: Record<string, RefTensor> = {};
    for (const [name, t] of Object.entries(host)) tensors[name] = refOf(t);
    return new PixArtReference(config, tensors);
  }

  /** The same model with W + Σ scale·B·A (computed here, in float64) for every term's module. */
  withLora(terms: readonly RefLoraTerm[]): PixArtReference {
    const tensors = { ...this.tensors };
    for (const { module, down, up, scale } of terms) {
      const w = this.weight(`${module}.weight`);
      const [out, inFeatures] = w.shape;
      const rank = down.shape[0];
      const merged = Float64Array.from(w.data);
      for (let o = 0; o < out; o++) {
        for (let i = 0; i < inFeatures; i++) {
          let delta = 0;
          for (let k = 0; k < rank; k++) delta += up.data[o * rank + k] * down.data[k * inFeatures + i];
          merged[o * inFeatures + i] += scale * delta;
        }
      }
      tensors[`${module}.weight`] = tensor(w.shape, merged);
    }
    return new PixArtReference(this.config, tensors);
  }

  weight(name: string): RefTensor {
    const t = this.tensors[name];
    if (!t) throw new Error(`reference: the checkpoint has no tensor ${name}`);
    return t;
  }

  private linear(module: string, x: RefTensor, bias = true): RefTensor {
    return linear(x, this.weight(`${module}.weight`), bias ? this.weight(`${module}.bias`) : undefined);
  }

  /** `sample` [B, out_channels, H, W]. */
  forward(
    inputs: PixArtRefInputs,
    options: { selfAttention?: RefSelfAttention; hook?: AttentionHook } = {},
  ): RefTensor {
    const c = this.config;
    const dim = c.num_attention_heads * c.attention_head_dim;
    const p = c.patch_size;
    const [batch, , height, width] = inputs.hiddenStates.shape;
    const gridH = height / p;
    const gridW = width / p;
    const tokens = gridH * gridW;
    const selfAttention = options.selfAttention ?? { kind: 'full' };
    const hook: AttentionHook = options.hook ?? ((_layer, _role, compute) => compute());

    // PatchEmbed: a stride-p convolution, flattened to tokens in raster order, plus the sin-cos table.
    const x = inputs.hiddenStates.data as Float32Array;
    const kernel = this.weight('pos_embed.proj.weight');
    const kernelBias = this.weight('pos_embed.proj.bias');
    const pos = positionTable(dim, gridH, gridW, c.sample_size / p);
    let hidden = tensor([batch, tokens, dim], new Float64Array(batch * tokens * dim));
    for (let b = 0; b < batch; b++) {
      for (let n = 0; n < tokens; n++) {
        const y = Math.floor(n / gridW);
        const xx = n % gridW;
        for (let o = 0; o < dim; o++) {
          let acc = kernelBias.data[o];
          for (let ch = 0; ch < c.in_channels; ch++) {
            for (let i = 0; i < p; i++) {
              for (let j = 0; j < p; j++) {
                acc +=
                  kernel.data[((o * c.in_channels + ch) * p + i) * p + j] *
                  x[((b * c.in_channels + ch) * height + y * p + i) * width + xx * p + j];
              }
            }
          }
          hidden.data[(b * tokens + n) * dim + o] = acc + pos[n * dim + o];
        }
      }
    }

    // adaLN-single: Timesteps(256, flip_sin_to_cos, shift 0) → TimestepEmbedding → SiLU → Linear(6·dim).
    // diffusers' get_timestep_embedding works in float32 (`timesteps.float()`) even in a float64 model.
    const f = Math.fround;
    const sinusoid = new Float64Array(batch * 256);
    for (let b = 0; b < batch; b++) {
      for (let k = 0; k < 128; k++) {
        // torch's float32 exp (SLEEF), not a correctly rounded one: an ulp here is 3e-5 in the angle at t ≈ 1000.
        const angle = f(inputs.timesteps[b] * torchExpFloat32(f(f(f(-Math.log(10000)) * k) / 128)));
        sinusoid[b * 256 + k] = f(Math.cos(angle));
        sinusoid[b * 256 + 128 + k] = f(Math.sin(angle));
      }
    }
    const embedder = 'adaln_single.emb.timestep_embedder';
    const embedded = this.linear(
      `${embedder}.linear_2`,
      map(this.linear(`${embedder}.linear_1`, tensor([batch, 256], sinusoid)), silu),
    );
    const modulation = this.linear('adaln_single.linear', map(embedded, silu)); // [B, 6·dim]

    // Caption projection (Linear, GELU tanh, Linear) and the additive mask (1 − m)·−10000.
    const text = inputs.encoderHiddenStates
      ? this.linear(
          'caption_projection.linear_2',
          map(this.linear('caption_projection.linear_1', refOf(inputs.encoderHiddenStates)), geluTanh),
        )
      : undefined;
    const mask = inputs.encoderAttentionMask
      ? {
          shape: [batch, 1, 1, inputs.encoderAttentionMask.shape[1]],
          data: Float64Array.from(
            inputs.encoderAttentionMask.data as ArrayLike<number>,
            (m) => (1 - Number(m)) * -10000,
          ),
          kind: 'additive' as const,
        }
      : undefined;

    for (let layer = 0; layer < c.num_layers; layer++) {
      const block = `transformer_blocks.${layer}`;
      const table = this.weight(`${block}.scale_shift_table`); // [6, dim]
      // shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (table + modulation).chunk(6)
      const chunk = (k: number, b: number, o: number): number =>
        table.data[k * dim + o] + modulation.data[b * 6 * dim + k * dim + o];
      const modulate = (t: RefTensor, shift: number, scale: number): RefTensor => {
        const normed = layerNorm(t, -1, undefined, undefined, c.norm_eps);
        return tensor(
          normed.shape,
          normed.data.map((v, i) => {
            const b = Math.floor(i / (tokens * dim));
            const o = i % dim;
            return v * (1 + chunk(scale, b, o)) + chunk(shift, b, o);
          }),
        );
      };
      const addGated = (t: RefTensor, update: RefTensor, gate: number | undefined): RefTensor =>
        tensor(
          t.shape,
          t.data.map((v, i) => {
            const b = Math.floor(i / (tokens * dim));
            return v + (gate === undefined ? 1 : chunk(gate, b, i % dim)) * update.data[i];
          }),
        );

      const normed = modulate(hidden, 0, 1);
      const selfOut = hook(layer, 'attn1', () => {
        const attn = `${block}.attn1`;
        if (selfAttention.kind === 'linfusion') {
          const own = (name: string): RefTensor => {
            const t = selfAttention.tensors[`${layer}.${name}`];
            if (!t) throw new Error(`reference: the LinFusion weights have no ${layer}.${name}`);
            return t;
          };
          return linfusionRef(normed, own, c.num_attention_heads);
        }
        const q = this.linear(`${attn}.to_q`, normed);
        const k = this.linear(`${attn}.to_k`, normed);
        const v = this.linear(`${attn}.to_v`, normed);
        const o =
          selfAttention.kind === 'clear'
            ? tensor(
                q.shape,
                clearAttentionRef(q.data, k.data, v.data, batch, dim, {
                  numHeads: c.num_attention_heads,
                  gridHeight: gridH,
                  gridWidth: gridW,
                  radius: selfAttention.radius,
                  textTokens: 0,
                  downFactor: 1,
                }),
              )
            : attentionRef(q, k, v, c.num_attention_heads);
        return this.linear(`${attn}.to_out.0`, o);
      });
      hidden = addGated(hidden, selfOut, 2);

      // PixArt applies no norm before the cross-attention.
      const query = hidden;
      const crossOut = hook(layer, 'attn2', () => {
        if (!text) throw new Error('reference: cross-attention needs encoderHiddenStates');
        const attn = `${block}.attn2`;
        const o = attentionRef(
          this.linear(`${attn}.to_q`, query),
          this.linear(`${attn}.to_k`, text),
          this.linear(`${attn}.to_v`, text),
          c.num_attention_heads,
          mask ? { mask } : {},
        );
        return this.linear(`${attn}.to_out.0`, o);
      });
      hidden = addGated(hidden, crossOut, undefined);

      const ffIn = modulate(hidden, 3, 4);
      const ff = this.linear(`${block}.ff.net.2`, map(this.linear(`${block}.ff.net.0.proj`, ffIn), geluTanh));
      hidden = addGated(hidden, ff, 5);
    }

    // Final layer: (table + embedded) → shift, scale; LayerNorm; modulate; proj_out; unpatchify.
    const table = this.weight('scale_shift_table'); // [2, dim]
    const normed = layerNorm(hidden, -1, undefined, undefined, 1e-6);
    const modulated = tensor(
      normed.shape,
      normed.data.map((v, i) => {
        const b = Math.floor(i / (tokens * dim));
        const o = i % dim;
        const shift = table.data[o] + embedded.data[b * dim + o];
        const scale = table.data[dim + o] + embedded.data[b * dim + o];
        return v * (1 + scale) + shift;
      }),
    );
    const projected = this.linear('proj_out', modulated); // [B, N, p·p·C]
    const channels = c.out_channels;
    const sample = new Float64Array(batch * channels * height * width);
    // einsum nhwpqc → nchpwq
    for (let b = 0; b < batch; b++) {
      for (let n = 0; n < tokens; n++) {
        const y = Math.floor(n / gridW);
        const xx = n % gridW;
        for (let i = 0; i < p; i++) {
          for (let j = 0; j < p; j++) {
            for (let ch = 0; ch < channels; ch++) {
              sample[((b * channels + ch) * height + y * p + i) * width + xx * p + j] =
                projected.data[(b * tokens + n) * p * p * channels + (i * p + j) * channels + ch];
            }
          }
        }
      }
    }
    return tensor([batch, channels, height, width], sample);
  }
}

function map(t: RefTensor, f: (v: number) => number): RefTensor {
  return tensor(t.shape, t.data.map(f));
}

/**
 * diffusers' get_2d_sincos_pos_embed(dim, (h, w), base_size, interpolation_scale 1): coordinates
 * arange(n)/(n/base); the first half of each row encodes the column, the second the row, each as
 * [sin(pos·ω), cos(pos·ω)] with ω_k = 10000^(−k/(dim/4)).
 */
function positionTable(dim: number, gridH: number, gridW: number, base: number): Float64Array {
  const quarter = dim / 4;
  const table = new Float64Array(gridH * gridW * dim);
  for (let y = 0; y < gridH; y++) {
    for (let x = 0; x < gridW; x++) {
      const row = (y * gridW + x) * dim;
      const coordinates = [x / (gridW / base), y / (gridH / base)];
      coordinates.forEach((coordinate, half) => {
        for (let k = 0; k < quarter; k++) {
          const angle = coordinate / 10000 ** (k / quarter);
          table[row + half * 2 * quarter + k] = Math.sin(angle);
          table[row + half * 2 * quarter + quarter + k] = Math.cos(angle);
        }
      });
    }
  }
  return table;
}

/** What T-GATE does with one role's attention output at a step (methods/tgate_flash.md §1.3–§1.4). */
export interface RefGateStep {
  readonly attn1: 'compute' | 'store' | 'reuse';
  readonly attn2: 'compute' | 'store' | 'reuse';
  /** Keep the mean of the batch halves [uncond; cond] instead of the whole batch. */
  readonly average: boolean;
  /** Whether the step runs the CFG batch [uncond; cond] (T-GATE drops it from the gate on, §1.5). */
  readonly cfg: boolean;
}

/**
 * T-GATE's per-module slots (§1.4), written from the spec: `store` keeps the module's output (or
 * 0.5·(uncond + cond) with `average`), `reuse` returns what the slot holds instead of attending.
 */
export class TGateSlots {
  readonly slots = new Map<string, RefTensor>();

  hook(step: RefGateStep): AttentionHook {
    return (layer, role, compute) => {
      const key = `${layer}.${role}`;
      if (step[role] === 'reuse') {
        const kept = this.slots.get(key);
        if (!kept) throw new Error(`reference: ${key} is reused before anything was stored`);
        return kept;
      }
      const out = compute();
      if (step[role] === 'store') this.slots.set(key, step.average ? halfMean(out) : out);
      return out;
    };
  }
}

/** 0.5·(x[:B] + x[B:]) over the batch axis. */
export function halfMean(x: RefTensor): RefTensor {
  const half = x.data.length / 2;
  const data = new Float64Array(half);
  for (let i = 0; i < half; i++) data[i] = 0.5 * (x.data[i] + x.data[half + i]);
  return tensor([x.shape[0] / 2, ...x.shape.slice(1)], data);
}

/** The reference inputs of a recorded denoiser call (diffusers' argument names). */
export function refInputs(inputs: Readonly<Record<string, HostTensor>>): PixArtRefInputs {
  return {
    hiddenStates: inputs.hidden_states,
    timesteps: Array.from(inputs.timestep.data as ArrayLike<number>, Number),
    encoderHiddenStates: inputs.encoder_hidden_states,
    encoderAttentionMask: inputs.encoder_attention_mask,
  };
}
