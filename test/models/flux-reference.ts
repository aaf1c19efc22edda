/**
 * A float64 FluxTransformer2DModel forward (diffusers 0.40: FluxTransformerBlock,
 * FluxSingleTransformerBlock, FluxAttnProcessor, FluxPosEmbed), written from diffusers' module code
 * as plain loops over the checkpoint's tensors. It shares nothing with src/models: attention goes
 * through test/reference (SDPA, or CLEAR's dense masked form of methods/clear_linfusion.md §1.3–§1.5
 * with each module's `processor.spatial_weight`), RoPE is computed here in float64.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { torchExpFloat32 } from '../../src/random/torch-exp.js';
import type { HostTensor } from '../../src/runtime/host-tensor.js';
import { readAllTensors } from '../helpers.js';
import { attentionRef } from '../reference/attention.js';
import { clearAttentionRef } from '../reference/clear.js';
import type { RefTensor } from '../reference/math.js';
import { geluTanh, layerNorm, linear, rmsNorm, silu } from '../reference/math.js';

/** The config keys the tiny test checkpoints set (config.json, diffusers names). */
interface FluxRefConfig {
  readonly num_attention_heads: number;
  readonly attention_head_dim: number;
  readonly num_layers: number;
  readonly num_single_layers: number;
  readonly axes_dims_rope: readonly number[];
  readonly guidance_embeds: boolean;
}

/** The kernel of every joint attention. */
export type FluxRefAttention =
  | { readonly kind: 'full' }
  | {
      readonly kind: 'clear';
      readonly radius: number;
      readonly downFactor: number;
      /** The packed image-token grid (rows × columns). */
      readonly grid: { readonly height: number; readonly width: number };
    };

/**
 * CLEAR's high-resolution options (Huage001/CLEAR transformer_flux.py and attention_processor.py):
 * `ntk_factor` multiplies RoPE's θ (diffusers' get_1d_rotary_pos_embed: theta = theta · ntk_factor);
 * `proportional_attention` scales the softmax by sqrt(log(N) / log(64² + 512) / head_dim) for N keys,
 * with log(10·N) in the processor that pools keys.
 */
export interface FluxRefScaling {
  readonly ntkFactor?: number;
  readonly proportionalAttention?: boolean;
}

const tensor = (shape: readonly number[], data: Float64Array): RefTensor => ({ shape: [...shape], data });

/** A float32 host tensor as float64 (exact). */
function refOf(t: HostTensor): RefTensor {
  return tensor(t.shape, Float64Array.from(t.data as ArrayLike<number>, Number));
}

function map(t: RefTensor, f: (v: number) => number): RefTensor {
  return tensor(t.shape, t.data.map(f));
}

/** [B, S1, C] and [B, S2, C] → [B, S1 + S2, C] (or along the channels with `channels`). */
function concat(a: RefTensor, b: RefTensor, axis: 1 | 2): RefTensor {
  const [batch, sa, ca] = a.shape;
  const [, sb, cb] = b.shape;
  const shape = axis === 1 ? [batch, sa + sb, ca] : [batch, sa, ca + cb];
  const out = new Float64Array(shape[0] * shape[1] * shape[2]);
  let o = 0;
  for (let i = 0; i < batch; i++) {
    if (axis === 1) {
      out.set(a.data.subarray(i * sa * ca, (i + 1) * sa * ca), o);
      o += sa * ca;
      out.set(b.data.subarray(i * sb * cb, (i + 1) * sb * cb), o);
      o += sb * cb;
    } else {
      for (let s = 0; s < sa; s++) {
        out.set(a.data.subarray((i * sa + s) * ca, (i * sa + s + 1) * ca), o);
        o += ca;
        out.set(b.data.subarray((i * sb + s) * cb, (i * sb + s + 1) * cb), o);
        o += cb;
      }
    }
  }
  return tensor(shape, out);
}

/** Tokens [start, end) of [B, S, C]. */
function tokens(x: RefTensor, start: number, end: number): RefTensor {
  const [batch, s, c] = x.shape;
  const out = new Float64Array(batch * (end - start) * c);
  for (let i = 0; i < batch; i++)
    out.set(x.data.subarray((i * s + start) * c, (i * s + end) * c), i * (end - start) * c);
  return tensor([batch, end - start, c], out);
}

/** diffusers' get_timestep_embedding(t, 256, flip_sin_to_cos=True, downscale_freq_shift=0), in float32 as torch computes it. */
function timestepSinusoid(values: readonly number[]): RefTensor {
  const f = Math.fround;
  const out = new Float64Array(values.length * 256);
  values.forEach((t, b) => {
    for (let k = 0; k < 128; k++) {
      const angle = f(f(t) * torchExpFloat32(f(f(f(-Math.log(10000)) * k) / 128)));
      out[b * 256 + k] = f(Math.cos(angle));
      out[b * 256 + 128 + k] = f(Math.sin(angle));
    }
  });
  return tensor([values.length, 256], out);
}

export class FluxReference {
  private constructor(
    readonly config: FluxRefConfig,
    private readonly tensors: Readonly<Record<string, RefTensor>>,
  ) {}

  /** The transformer of a diffusers folder (config.json + diffusion_pytorch_model.safetensors). */
  static async load(dir: string): Promise<FluxReference> {
    const config = JSON.parse(await readFile(join(dir, 'config.json'), 'utf8')) as FluxRefConfig;
    const host = await readAllTensors(join(dir, 'diffusion_pytorch_model.safetensors'));
    const tensors: Record<string, RefTensor> = {};
    for (const [name, t] of Object.entries(host)) tensors[name] = refOf(t);
    return new FluxReference(config, tensors);
  }

  /** The same model with `replaced` tensors put in (or added), as load_state_dict(strict=False) does. */
  with(replaced: Readonly<Record<string, HostTensor>>): FluxReference {
    const tensors = { ...this.tensors };
    for (const [name, t] of Object.entries(replaced)) tensors[name] = refOf(t);
    return new FluxReference(this.config, tensors);
  }

  weight(name: string): RefTensor {
    const t = this.tensors[name];
    if (!t) throw new Error(`reference: the checkpoint has no tensor ${name}`);
    return t;
  }

  private linear(module: string, x: RefTensor): RefTensor {
    return linear(x, this.weight(`${module}.weight`), this.weight(`${module}.bias`));
  }

  /** Linear then SiLU-activated: TimestepEmbedding and PixArtAlphaTextProjection(act 'silu'). */
  private mlp(module: string, x: RefTensor): RefTensor {
    return this.linear(`${module}.linear_2`, map(this.linear(`${module}.linear_1`, x), silu));
  }

  /**
   * `sample` [B, N, out]: diffusers' FluxTransformer2DModel.forward on hidden_states,
   * encoder_hidden_states, pooled_projections, timestep, guidance (dev), img_ids and txt_ids.
   */
  forward(
    inputs: Readonly<Record<string, HostTensor>>,
    attention: FluxRefAttention = { kind: 'full' },
    scaling: FluxRefScaling = {},
  ): RefTensor {
    const c = this.config;
    const heads = c.num_attention_heads;
    const headDim = c.attention_head_dim;
    const dim = heads * headDim;
    const [batch, imageTokens] = inputs.hidden_states.shape;
    const textTokens = inputs.encoder_hidden_states.shape[1];
    const perItem = (t: HostTensor): number[] => {
      const values = Array.from(t.data as ArrayLike<number>, Number);
      return values.length === 1 ? new Array<number>(batch).fill(values[0]) : values;
    };

    let image = this.linear('x_embedder', refOf(inputs.hidden_states));
    let text = this.linear('context_embedder', refOf(inputs.encoder_hidden_states));
    // CombinedTimestep(Guidance)TextProjEmbeddings, the timestep and guidance scaled by 1000 first.
    let temb = this.mlp(
      'time_text_embed.timestep_embedder',
      timestepSinusoid(perItem(inputs.timestep).map((t) => t * 1000)),
    );
    if (c.guidance_embeds) {
      const guided = this.mlp(
        'time_text_embed.guidance_embedder',
        timestepSinusoid(perItem(inputs.guidance).map((g) => g * 1000)),
      );
      temb = tensor(
        temb.shape,
        temb.data.map((v, i) => v + guided.data[i]),
      );
    }
    const pooled = this.mlp('time_text_embed.text_embedder', refOf(inputs.pooled_projections));
    temb = tensor(
      temb.shape,
      temb.data.map((v, i) => v + pooled.data[i]),
    );
    const silTemb = map(temb, silu);

    const rope = this.rope(inputs, textTokens + imageTokens, scaling.ntkFactor ?? 1);
    const keys = textTokens + imageTokens;
    const downFactor = attention.kind === 'clear' ? attention.downFactor : 1;
    // math.log(x, 4608) = ln x / ln 4608; the pooled keys' processor takes log(10 · key.size(2)).
    const scale = scaling.proportionalAttention
      ? Math.sqrt(Math.log(downFactor > 1 ? 10 * keys : keys) / Math.log(64 * 64 + 512) / headDim)
      : 1 / Math.sqrt(headDim);
    // emb = linear(silu(temb)) chunked into rows; row r of batch item b, channel o.
    const rows = (module: string): ((r: number, b: number, o: number) => number) => {
      const emb = this.linear(module, silTemb);
      const width = emb.shape[1];
      return (r, b, o) => emb.data[b * width + r * dim + o];
    };
    // LayerNorm(eps 1e-6, no affine), then x·(1 + scale) + shift.
    const modulate = (
      x: RefTensor,
      row: (r: number, b: number, o: number) => number,
      shift: number,
      scale: number,
    ) => {
      const normed = layerNorm(x, -1, undefined, undefined, 1e-6);
      const perBatch = x.shape[1] * dim;
      return tensor(
        x.shape,
        normed.data.map((v, i) => {
          const b = Math.floor(i / perBatch);
          const o = i % dim;
          return v * (1 + row(scale, b, o)) + row(shift, b, o);
        }),
      );
    };
    const addGated = (
      x: RefTensor,
      update: RefTensor,
      row: (r: number, b: number, o: number) => number,
      gate: number,
    ) => {
      const perBatch = x.shape[1] * dim;
      return tensor(
        x.shape,
        x.data.map((v, i) => v + row(gate, Math.floor(i / perBatch), i % dim) * update.data[i]),
      );
    };
    const project = (attn: string, name: string, norm: string | undefined, x: RefTensor): RefTensor => {
      const y = this.linear(`${attn}.${name}`, x);
      if (!norm) return y;
      const normed = rmsNorm(
        tensor([...y.shape.slice(0, -1), heads, headDim], y.data),
        this.weight(`${attn}.${norm}.weight`),
        1e-6,
      );
      return tensor(y.shape, normed.data);
    };
    const attend = (attn: string, q: RefTensor, k: RefTensor, v: RefTensor): RefTensor => {
      const qr = this.applyRope(q, rope);
      const kr = this.applyRope(k, rope);
      if (attention.kind === 'full') return attentionRef(qr, kr, v, heads, { scale });
      const weight = this.tensors[`${attn}.processor.spatial_weight`];
      return tensor(
        q.shape,
        clearAttentionRef(qr.data, kr.data, v.data, batch, dim, {
          numHeads: heads,
          gridHeight: attention.grid.height,
          gridWidth: attention.grid.width,
          radius: attention.radius,
          textTokens,
          downFactor: attention.downFactor,
          scale,
          ...(weight && attention.downFactor > 1 ? { spatialWeight: weight.data } : {}),
        }),
      );
    };
    const feedForward = (module: string, x: RefTensor): RefTensor =>
      this.linear(`${module}.net.2`, map(this.linear(`${module}.net.0.proj`, x), geluTanh));

    for (let i = 0; i < c.num_layers; i++) {
      const block = `transformer_blocks.${i}`;
      const attn = `${block}.attn`;
      // AdaLayerNormZero rows: shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp.
      const imageRows = rows(`${block}.norm1.linear`);
      const textRows = rows(`${block}.norm1_context.linear`);
      const normedImage = modulate(image, imageRows, 0, 1);
      const normedText = modulate(text, textRows, 0, 1);
      const q = concat(
        project(attn, 'add_q_proj', 'norm_added_q', normedText),
        project(attn, 'to_q', 'norm_q', normedImage),
        1,
      );
      const k = concat(
        project(attn, 'add_k_proj', 'norm_added_k', normedText),
        project(attn, 'to_k', 'norm_k', normedImage),
        1,
      );
      const v = concat(
        project(attn, 'add_v_proj', undefined, normedText),
        project(attn, 'to_v', undefined, normedImage),
        1,
      );
      const o = attend(attn, q, k, v);
      const attnText = this.linear(`${attn}.to_add_out`, tokens(o, 0, textTokens));
      const attnImage = this.linear(`${attn}.to_out.0`, tokens(o, textTokens, textTokens + imageTokens));
      image = addGated(image, attnImage, imageRows, 2);
      image = addGated(image, feedForward(`${block}.ff`, modulate(image, imageRows, 3, 4)), imageRows, 5);
      text = addGated(text, attnText, textRows, 2);
      text = addGated(text, feedForward(`${block}.ff_context`, modulate(text, textRows, 3, 4)), textRows, 5);
    }

    let joint = concat(text, image, 1);
    for (let i = 0; i < c.num_single_layers; i++) {
      const block = `single_transformer_blocks.${i}`;
      const attn = `${block}.attn`;
      // AdaLayerNormZeroSingle rows: shift, scale, gate.
      const r = rows(`${block}.norm.linear`);
      const normed = modulate(joint, r, 0, 1);
      const mlp = map(this.linear(`${block}.proj_mlp`, normed), geluTanh);
      const o = attend(
        attn,
        project(attn, 'to_q', 'norm_q', normed),
        project(attn, 'to_k', 'norm_k', normed),
        project(attn, 'to_v', undefined, normed),
      );
      joint = addGated(joint, this.linear(`${block}.proj_out`, concat(o, mlp, 2)), r, 2);
    }
    image = tokens(joint, textTokens, textTokens + imageTokens);

    // AdaLayerNormContinuous: scale first, then shift.
    const out = rows('norm_out.linear');
    return this.linear('proj_out', modulate(image, out, 1, 0));
  }

  /**
   * FluxPosEmbed in float64: per id axis of width d, angles id·θ^(−2j/d) with θ = 10000 · ntkFactor,
   * each used by one feature pair.
   */
  private rope(
    inputs: Readonly<Record<string, HostTensor>>,
    count: number,
    ntkFactor: number,
  ): { cos: Float64Array; sin: Float64Array } {
    const axes = this.config.axes_dims_rope;
    const ids = [
      ...Array.from(inputs.txt_ids.data as ArrayLike<number>, Number),
      ...Array.from(inputs.img_ids.data as ArrayLike<number>, Number),
    ];
    const width = this.config.attention_head_dim;
    const cos = new Float64Array((count * width) / 2);
    const sin = new Float64Array((count * width) / 2);
    for (let s = 0; s < count; s++) {
      let pair = s * (width / 2);
      axes.forEach((d, axis) => {
        for (let j = 0; j < d / 2; j++) {
          const angle = ids[s * axes.length + axis] * (10000 * ntkFactor) ** (-(2 * j) / d);
          cos[pair] = Math.cos(angle);
          sin[pair] = Math.sin(angle);
          pair++;
        }
      });
    }
    return { cos, sin };
  }

  /** apply_rotary_emb on [B, S, H·D]: pair (x₀, x₁) of each head → (x₀·cos − x₁·sin, x₁·cos + x₀·sin). */
  private applyRope(x: RefTensor, rope: { cos: Float64Array; sin: Float64Array }): RefTensor {
    const [batch, count] = x.shape;
    const headDim = this.config.attention_head_dim;
    const heads = this.config.num_attention_heads;
    const out = new Float64Array(x.data.length);
    for (let b = 0; b < batch; b++) {
      for (let s = 0; s < count; s++) {
        for (let h = 0; h < heads; h++) {
          for (let j = 0; j < headDim / 2; j++) {
            const at = ((b * count + s) * heads + h) * headDim + 2 * j;
            const c = rope.cos[s * (headDim / 2) + j];
            const sn = rope.sin[s * (headDim / 2) + j];
            out[at] = x.data[at] * c - x.data[at + 1] * sn;
            out[at + 1] = x.data[at + 1] * c + x.data[at] * sn;
          }
        }
      }
    }
    return tensor(x.shape, out);
  }
}
