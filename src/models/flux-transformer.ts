import { join, resolve } from 'node:path';
import { FileFormatError, OptionError } from '../errors.js';
import type { Tensor } from '../graph/graph.js';
import { Graph } from '../graph/graph.js';
import { add, attention, concat, gelu, mul, neg, reshape, silu, split } from '../graph/ops/index.js';
import { AttentionWeightFiles, resolveAttentionOption } from '../attention/attention-option.js';
import { clearAttention, clearSpatialWeight } from '../attention/clear.js';
import type { AttentionChoice, AttentionOption, TokenGrid } from '../attention/types.js';
import { readConfig } from '../io/diffusers.js';
import type { WeightStore } from '../io/diffusers.js';
import { AdaLayerNormContinuous, adaLayerNormRows, modulatedLayerNorm } from '../nn/ada-layer-norm.js';
import type { StreamHeads, StreamProjectionNames } from '../nn/joint-attention.js';
import {
  CONTEXT_PROJECTIONS,
  IMAGE_PROJECTIONS,
  jointOutputProjections,
  streamHeads,
} from '../nn/joint-attention.js';
import { Linear } from '../nn/layers.js';
import type { LoadedLora } from '../lora/adapters.js';
import { AdapterSet } from '../lora/adapters.js';
import type { Int8Options, LoraProvider } from '../nn/params.js';
import { Params } from '../nn/params.js';
import { FeedForward } from '../nn/transformer-block.js';
import type { TensorSource } from '../nn/weights.js';
import type { RunResult } from '../runtime/backend.js';
import type { HostTensor } from '../runtime/host-tensor.js';
import { hostTensor } from '../runtime/host-tensor.js';
import type { CompiledGraph, Runtime } from '../runtime/runtime.js';
import type { InputSpec } from '../runtime/runnable-model.js';
import { NUMERIC_DTYPES, RunnableModel, asBatch, asFloat32 } from '../runtime/runnable-model.js';
import type { WarningHandler } from '../warnings.js';
import { ConfigReader } from './config.js';
import { CombinedTimestepTextProjEmbeddings } from './embeddings.js';
import type { ModelWeights } from './int8.js';
import { openModelWeights } from './int8.js';
import type { DiffusersModel, LoadOptions } from './model.js';

export interface FluxTransformerConfig {
  patchSize: number;
  inChannels: number;
  /** `out_channels or in_channels`, as diffusers resolves it. */
  outChannels: number;
  /** Double-stream blocks (`transformer_blocks`). */
  numLayers: number;
  /** Single-stream blocks (`single_transformer_blocks`). */
  numSingleLayers: number;
  attentionHeadDim: number;
  numAttentionHeads: number;
  /** Width of encoder_hidden_states (T5's hidden size). */
  jointAttentionDim: number;
  /** Width of pooled_projections (CLIP's pooled output). */
  pooledProjectionDim: number;
  /** FLUX.1-dev's distilled guidance: a `guidance` input and `time_text_embed.guidance_embedder`. */
  guidanceEmbeds: boolean;
  /** RoPE widths per id axis; they add up to attentionHeadDim. */
  axesDimsRope: number[];
  /** numAttentionHeads × attentionHeadDim */
  innerDim: number;
  /** The int8 Linear modules of a folder in velodiff's int8 format (`quantization_config`). */
  int8Modules?: ReadonlySet<string>;
}

/** FluxPosEmbed's theta: FluxTransformer2DModel builds it with 10000 and no config key changes it. */
const ROPE_THETA = 10000;

/**
 * The token count CLEAR's proportional attention measures against: a 1024² image's 64² packed
 * tokens plus 512 text tokens (`train_seq_len = 64 ** 2 + 512` in the authors' attention_processor.py).
 */
export const PROPORTIONAL_ATTENTION_TRAIN_TOKENS = 64 ** 2 + 512;

/**
 * CLEAR's proportional attention (Huage001/CLEAR attention_processor.py, used by its
 * transformer_flux.py for high-resolution SDEdit): the softmax scale
 * sqrt(log_4608(N) / head_dim) for N keys (text + image tokens, pooled keys not counted), and
 * sqrt(log_4608(10·N) / head_dim) in the processor with pooled keys (downFactor > 1) — the ×10 is
 * the authors' code, kept (methods/clear_linfusion.md §1.5, §1.11 item 7).
 */
export function fluxProportionalAttentionScale(keyTokens: number, headDim: number, downFactor = 1): number {
  const tokens = downFactor > 1 ? 10 * keyTokens : keyTokens;
  // Python's math.log(x, base) is log(x) / log(base) in double.
  return Math.sqrt(Math.log(tokens) / Math.log(PROPORTIONAL_ATTENTION_TRAIN_TOKENS) / headDim);
}

/**
 * Checks the NTK factor of FLUX's RoPE (CLEAR's `ntk_factor`: θ multiplied by it on every axis):
 * a finite number > 0; 1 is diffusers' RoPE.
 */
export function checkRopeNtkFactor(value: number, where: string): void {
  if (!(Number.isFinite(value) && value > 0)) {
    throw new OptionError(
      `${where}: ropeNtkFactor must be a finite number > 0 (1 leaves FLUX's RoPE as trained; CLEAR's high-resolution recipe uses 10), got ${value}`,
    );
  }
}

/**
 * Read and validate a FluxTransformer2DModel config.json (diffusers 0.40 keys and defaults). Values
 * diffusers could not run (RoPE widths that do not add up to the head width) are errors here; unused
 * keys go to `onWarning` (ConfigReader), as diffusers logs them.
 */
export function parseFluxTransformerConfig(
  raw: Record<string, unknown>,
  path: string,
  onWarning?: WarningHandler,
): FluxTransformerConfig {
  const c = new ConfigReader(raw, path, 'FluxTransformer2DModel');
  if (raw._class_name !== undefined && raw._class_name !== 'FluxTransformer2DModel') {
    throw new FileFormatError(
      `${path}: _class_name is ${JSON.stringify(raw._class_name)}, expected FluxTransformer2DModel`,
      'CONFIG_CLASS',
      path,
    );
  }
  const inChannels = c.integer('in_channels', 64, 1);
  const numAttentionHeads = c.integer('num_attention_heads', 24, 1);
  const attentionHeadDim = c.integer('attention_head_dim', 128, 1);
  const axesDimsRope = c.numbers('axes_dims_rope', [16, 56, 56]);
  const config: FluxTransformerConfig = {
    patchSize: c.integer('patch_size', 1, 1),
    inChannels,
    // diffusers: `out_channels or in_channels`.
    outChannels: c.optionalNumber('out_channels') || inChannels,
    numLayers: c.integer('num_layers', 19, 0),
    numSingleLayers: c.integer('num_single_layers', 38, 0),
    attentionHeadDim,
    numAttentionHeads,
    jointAttentionDim: c.integer('joint_attention_dim', 4096, 1),
    pooledProjectionDim: c.integer('pooled_projection_dim', 768, 1),
    guidanceEmbeds: c.boolean('guidance_embeds', false),
    axesDimsRope,
    innerDim: numAttentionHeads * attentionHeadDim,
  };
  if (!Number.isInteger(config.outChannels) || config.outChannels < 1) {
    c.unsupported('out_channels', 'null or an integer ≥ 1');
  }
  const int8Modules = c.int8Modules();
  if (int8Modules) config.int8Modules = int8Modules;
  c.finish(onWarning);
  // get_1d_rotary_pos_embed asserts even widths, and the concatenated cos/sin must span a head.
  if (axesDimsRope.length === 0 || axesDimsRope.some((d) => !Number.isInteger(d) || d < 2 || d % 2 !== 0)) {
    c.unsupported('axes_dims_rope', 'a non-empty list of even integers ≥ 2 (one RoPE width per id axis)');
  }
  const ropeWidth = axesDimsRope.reduce((a, b) => a + b, 0);
  if (ropeWidth !== attentionHeadDim) {
    throw new FileFormatError(
      `${path}: "axes_dims_rope" ${JSON.stringify(axesDimsRope)} adds up to ${ropeWidth}, but RoPE rotates ` +
        `whole heads: it must add up to attention_head_dim ${attentionHeadDim}`,
      'CONFIG_VALUE',
      path,
    );
  }
  return config;
}

/**
 * FluxPosEmbed on the host: the RoPE tables cos and sin [S, attention_head_dim] for position ids
 * [S, axes] (row-major), as diffusers computes them — ids as float32, frequencies
 * 1/θ^(2j/d) per axis of width d, angles, cos and sin in float64, each value repeated for the pair
 * of features it rotates (repeat_interleave_real), rounded to float32 at the end. CLEAR's
 * `ntk_factor` is a larger θ here: diffusers' get_1d_rotary_pos_embed takes θ · ntk_factor.
 */
export function fluxRotaryTables(
  ids: ArrayLike<number>,
  axesDims: readonly number[],
  theta = ROPE_THETA,
): { cos: Float32Array; sin: Float32Array } {
  const axes = axesDims.length;
  const width = axesDims.reduce((a, b) => a + b, 0);
  const tokens = ids.length / axes;
  if (!Number.isInteger(tokens)) {
    throw new OptionError(`fluxRotaryTables: ${ids.length} ids do not form rows of ${axes} axes`);
  }
  const frequencies = axesDims.map((d) =>
    Float64Array.from({ length: d / 2 }, (_, j) => 1 / theta ** ((2 * j) / d)),
  );
  const cos = new Float32Array(tokens * width);
  const sin = new Float32Array(tokens * width);
  for (let s = 0; s < tokens; s++) {
    let column = s * width;
    for (let a = 0; a < axes; a++) {
      const position = Math.fround(ids[s * axes + a]);
      for (const frequency of frequencies[a]) {
        const angle = position * frequency;
        cos[column] = cos[column + 1] = Math.cos(angle);
        sin[column] = sin[column + 1] = Math.sin(angle);
        column += 2;
      }
    }
  }
  return { cos, sin };
}

export interface FluxGraphOptions {
  /** Packed image tokens N (hidden_states [B, N, in_channels]). */
  imageTokens: number;
  /** Text tokens L (encoder_hidden_states [B, L, joint_attention_dim]). */
  textTokens: number;
  /** Kernel of every joint attention, double- and single-stream; default full attention. */
  attention?: AttentionChoice;
  /**
   * The packed image-token grid (rows × columns, rows·columns = imageTokens, tokens in raster
   * order): CLEAR's window and pooling cells are laid on it. Required with attention kind 'clear'.
   */
  grid?: TokenGrid;
  /**
   * CLEAR's proportional attention (`fluxProportionalAttentionScale`): every attention's softmax
   * scale grows with the log of its key count. Off (1/√head_dim, diffusers) by default.
   */
  proportionalAttention?: boolean;
}

export interface FluxExtras {
  /** The int8 Linear modules (src/models/int8.ts). */
  int8?: Int8Options;
  /** LoRA adapters applied to Linear layers (fused, or as switchable side branches). */
  lora?: LoraProvider;
}

/**
 * Build the FluxTransformer2DModel forward graph (diffusers 0.40). Inputs: `hidden_states`
 * [B, N, in_channels], `encoder_hidden_states` [B, L, joint_attention_dim], `pooled_projections`
 * [B, pooled_projection_dim], `timestep` [B] float32 (t/1000, as the pipeline passes it), `guidance`
 * [B] when guidance_embeds, and the RoPE tables `rope_cos`, `rope_sin` [L + N, attention_head_dim]
 * (`fluxRotaryTables` of the text ids then the image ids). Output: `sample` [B, N, p²·out_channels].
 */
export function buildFluxTransformerGraph(
  config: FluxTransformerConfig,
  weights: TensorSource,
  o: FluxGraphOptions,
  extras: FluxExtras = {},
): Graph {
  const g = new Graph('FluxTransformer2DModel');
  const root = Params.of(g, weights, { lora: extras.lora, int8: extras.int8 });
  const tokens = o.textTokens + o.imageTokens;
  const inputs: FluxInputs = {
    hiddenStates: g.input('hidden_states', 'float32', ['B', o.imageTokens, config.inChannels]),
    encoderHiddenStates: g.input('encoder_hidden_states', 'float32', [
      'B',
      o.textTokens,
      config.jointAttentionDim,
    ]),
    pooledProjections: g.input('pooled_projections', 'float32', ['B', config.pooledProjectionDim]),
    timestep: g.input('timestep', 'float32', ['B']),
    ropeCos: g.input('rope_cos', 'float32', [tokens, config.attentionHeadDim]),
    ropeSin: g.input('rope_sin', 'float32', [tokens, config.attentionHeadDim]),
  };
  if (config.guidanceEmbeds) inputs.guidance = g.input('guidance', 'float32', ['B']);
  g.output('sample', fluxTransformer(root, config, inputs, o));
  return g;
}

/** The tensors FluxTransformer2DModel.forward takes, as graph tensors (see `buildFluxTransformerGraph`). */
export interface FluxInputs {
  /** [B, N, in_channels]: packed 2×2 latent patches. */
  hiddenStates: Tensor;
  /** [B, L, joint_attention_dim] */
  encoderHiddenStates: Tensor;
  /** [B, pooled_projection_dim] */
  pooledProjections: Tensor;
  /** [B] float32, t/1000. */
  timestep: Tensor;
  /** [B] float32, the guidance scale; models with guidance_embeds only. */
  guidance?: Tensor;
  /** [L + N, attention_head_dim]: `fluxRotaryTables` of [txt_ids; img_ids]. */
  ropeCos: Tensor;
  ropeSin: Tensor;
}

/**
 * FluxTransformer2DModel's forward, built into the graph of `root` from tensors of that graph: the
 * predicted `sample` [B, N, p²·out_channels]. `buildFluxTransformerGraph` wraps it with graph inputs.
 */
export function fluxTransformer(
  root: Params,
  config: FluxTransformerConfig,
  inputs: FluxInputs,
  o: FluxGraphOptions,
): Tensor {
  const { innerDim: dim } = config;
  let image = Linear(root.child('x_embedder'), inputs.hiddenStates, config.inChannels, dim);
  const temb = timeTextEmbedding(root.child('time_text_embed'), config, inputs);
  let text = Linear(
    root.child('context_embedder'),
    inputs.encoderHiddenStates,
    config.jointAttentionDim,
    dim,
  );

  const rope: Rope = {
    cos: reshape(inputs.ropeCos, [1, o.textTokens + o.imageTokens, 1, config.attentionHeadDim]),
    sin: reshape(inputs.ropeSin, [1, o.textTokens + o.imageTokens, 1, config.attentionHeadDim]),
  };
  const block: FluxBlockContext = {
    config,
    temb,
    rope,
    textTokens: o.textTokens,
    choice: o.attention ?? { kind: 'full' },
    ...(o.grid ? { grid: o.grid } : {}),
    ...(o.proportionalAttention ? { proportionalAttention: true } : {}),
  };
  for (let i = 0; i < config.numLayers; i++) {
    [text, image] = fluxTransformerBlock(root.child('transformer_blocks').child(i), text, image, block);
  }
  // The single-stream blocks work on [text; image]; diffusers splits and rejoins it around each
  // block, which changes no value.
  let joint = concat([text, image], 1);
  for (let i = 0; i < config.numSingleLayers; i++) {
    joint = fluxSingleTransformerBlock(root.child('single_transformer_blocks').child(i), joint, block);
  }
  image = split(joint, [o.textTokens, o.imageTokens], 1)[1];

  const normOut = root.child('norm_out');
  image = AdaLayerNormContinuous(normOut, image, adaLayerNormInput(normOut, temb), dim);
  const p = config.patchSize;
  return Linear(root.child('proj_out'), image, dim, p * p * config.outChannels);
}

/**
 * time_text_embed: CombinedTimestepTextProjEmbeddings, or with guidance_embeds
 * CombinedTimestepGuidanceTextProjEmbeddings, of timestep·1000 (and guidance·1000), as
 * FluxTransformer2DModel.forward scales both in float32 before time_proj. [B, inner_dim].
 */
function timeTextEmbedding(p: Params, config: FluxTransformerConfig, inputs: FluxInputs): Tensor {
  let guidance: Tensor | undefined;
  if (config.guidanceEmbeds) {
    guidance = inputs.guidance;
    if (!guidance) throw new OptionError('FluxTransformer2DModel with guidance_embeds needs guidance');
  }
  return CombinedTimestepTextProjEmbeddings(
    p,
    { timestep: inputs.timestep, pooledProjections: inputs.pooledProjections, guidance },
    { dim: config.innerDim, pooledProjectionDim: config.pooledProjectionDim, timestepScale: 1000 },
  );
}

/** RoPE tables broadcastable to [B, L + N, heads, head_dim]. */
export interface Rope {
  cos: Tensor;
  sin: Tensor;
}

/** What every FLUX block is built from besides its parameters and its tokens. */
export interface FluxBlockContext {
  config: FluxTransformerConfig;
  /** time_text_embed's output [B, inner_dim]. */
  temb: Tensor;
  rope: Rope;
  /** Text tokens L before the image tokens in the joint sequence. */
  textTokens: number;
  /** The attention kernel (`fluxAttentionKernel`). */
  choice: AttentionChoice;
  /** The packed image-token grid, for CLEAR. */
  grid?: TokenGrid;
  /** CLEAR's proportional attention scale (`FluxGraphOptions.proportionalAttention`). */
  proportionalAttention?: boolean;
}

/**
 * silu(temb), the input of the adaLN module `p`'s linear: FLUX applies it in every module (its
 * linear's scope), as diffusers does.
 */
function adaLayerNormInput(p: Params, temb: Tensor): Tensor {
  return p.child('linear').scope(() => silu(temb));
}

/**
 * The rows the adaLN module `p` makes of silu(temb) (AdaLayerNormZero's 6, AdaLayerNormZeroSingle's 3),
 * each [B, 1, dim] to broadcast over tokens.
 */
function modulationRows(p: Params, temb: Tensor, dim: number, rows: number): Tensor[] {
  return adaLayerNormRows(p, adaLayerNormInput(p, temb), dim, rows);
}

/**
 * FluxTransformerBlock (double stream) on text [B, L, dim] and image [B, N, dim]: each stream has
 * its own AdaLayerNormZero (norm1_context, norm1), projections and feed-forward (ff_context, ff);
 * they meet in one joint attention over [text; image]. Returns [text, image].
 */
export function fluxTransformerBlock(
  p: Params,
  text: Tensor,
  image: Tensor,
  o: FluxBlockContext,
): [Tensor, Tensor] {
  const { innerDim: dim } = o.config;
  const imageTokens = image.shape[1];
  const [shift, scale, gate, shiftMlp, scaleMlp, gateMlp] = modulationRows(p.child('norm1'), o.temb, dim, 6);
  const [cShift, cScale, cGate, cShiftMlp, cScaleMlp, cGateMlp] = modulationRows(
    p.child('norm1_context'),
    o.temb,
    dim,
    6,
  );
  const normedImage = modulatedLayerNorm(p.child('norm1').child('norm'), image, dim, shift, scale);
  const normedText = modulatedLayerNorm(p.child('norm1_context').child('norm'), text, dim, cShift, cScale);

  // FluxAttention with added_kv_proj_dim: text tokens first, then image tokens, in one softmax.
  const attn = p.child('attn');
  const textHeads = headProjections(attn, normedText, o.config, CONTEXT_PROJECTIONS);
  const imageHeads = headProjections(attn, normedImage, o.config, IMAGE_PROJECTIONS);
  const joint = jointAttention(attn, [textHeads, imageHeads], o);
  const [textOut, imageOut] = attn.scope(() => split(joint, [o.textTokens, imageTokens], 1));
  const { image: attnImage, context: attnText } = jointOutputProjections(attn, imageOut, textOut, dim);

  image = p.scope(() => add(image, mul(gate, attnImage)));
  const ffImage = FeedForward(
    p.child('ff'),
    modulatedLayerNorm(p.child('norm2'), image, dim, shiftMlp, scaleMlp),
    { dim, dimOut: dim, activation: 'gelu-approximate' },
  );
  image = p.scope(() => add(image, mul(gateMlp, ffImage)));

  text = p.scope(() => add(text, mul(cGate, attnText)));
  const ffText = FeedForward(
    p.child('ff_context'),
    modulatedLayerNorm(p.child('norm2_context'), text, dim, cShiftMlp, cScaleMlp),
    { dim, dimOut: dim, activation: 'gelu-approximate' },
  );
  text = p.scope(() => add(text, mul(cGateMlp, ffText)));
  return [text, image];
}

/**
 * FluxSingleTransformerBlock on joint [B, L + N, dim] (text first): AdaLayerNormZeroSingle, then
 * attention (no output projection) and an MLP (proj_mlp, GELU tanh) side by side, concatenated
 * through proj_out, gated, residual.
 */
export function fluxSingleTransformerBlock(p: Params, joint: Tensor, o: FluxBlockContext): Tensor {
  const { innerDim: dim } = o.config;
  const mlpDim = 4 * dim;
  const norm = p.child('norm');
  const [shift, scale, gate] = modulationRows(norm, o.temb, dim, 3);
  const normed = modulatedLayerNorm(norm.child('norm'), joint, dim, shift, scale);
  const mlpHidden = Linear(p.child('proj_mlp'), normed, dim, mlpDim);
  const mlp = p.scope(() => gelu(mlpHidden, 'tanh'));
  const attn = p.child('attn');
  const attended = jointAttention(attn, [headProjections(attn, normed, o.config, IMAGE_PROJECTIONS)], o);
  const out = Linear(
    p.child('proj_out'),
    p.scope(() => concat([attended, mlp], 2)),
    dim + mlpDim,
    dim,
  );
  return p.scope(() => add(joint, mul(gate, out)));
}

/** One stream's projections of x split into heads, q and k through their RMSNorms over head_dim (eps 1e-6). */
function headProjections(
  attn: Params,
  x: Tensor,
  config: FluxTransformerConfig,
  names: StreamProjectionNames,
): StreamHeads {
  return streamHeads(attn, x, names, {
    dim: config.innerDim,
    heads: config.numAttentionHeads,
    qkNorm: true,
  });
}

/**
 * FluxAttnProcessor from the projections on: the streams' heads concatenated along the tokens (text
 * first), RoPE on q and k, the attention product. [B, L + N, inner_dim], before any output projection.
 */
function jointAttention(attn: Params, streams: readonly StreamHeads[], o: FluxBlockContext): Tensor {
  const { innerDim: dim, numAttentionHeads: heads } = o.config;
  return attn.scope(() => {
    const joined = (part: keyof StreamHeads): Tensor =>
      concat(
        streams.map((s) => s[part]),
        1,
      );
    const [batch, tokens] = joined('v').shape;
    const packed = (t: Tensor): Tensor => reshape(t, [batch, tokens, dim]);
    const q = packed(applyRotaryEmbedding(joined('q'), o.rope));
    const k = packed(applyRotaryEmbedding(joined('k'), o.rope));
    return fluxAttentionKernel(q, k, packed(joined('v')), {
      heads,
      textTokens: o.textTokens,
      choice: o.choice,
      ...(o.grid ? { grid: o.grid } : {}),
      ...(o.proportionalAttention ? { proportionalAttention: true } : {}),
      attn,
    });
  });
}

/**
 * apply_rotary_emb with use_real and unbind dim −1 on x [B, S, heads, head_dim]: each feature pair
 * (x₀, x₁) becomes (x₀·cos − x₁·sin, x₁·cos + x₀·sin), the tables repeating each angle for its pair.
 */
function applyRotaryEmbedding(x: Tensor, rope: Rope): Tensor {
  const [batch, tokens, heads, headDim] = x.shape;
  const pairs = reshape(x, [batch, tokens, heads, (headDim as number) / 2, 2]);
  const [real, imaginary] = split(pairs, 2, -1);
  const rotated = reshape(concat([neg(imaginary), real], -1), [batch, tokens, heads, headDim]);
  return add(mul(x, rope.cos), mul(rotated, rope.sin));
}

/** Where a FLUX attention product is taken, for the kernel that takes it. */
export interface FluxAttentionSite {
  heads: number;
  /** Text tokens before the image tokens in q, k and v. */
  textTokens: number;
  choice: AttentionChoice;
  /** The packed image-token grid; CLEAR needs it. */
  grid?: TokenGrid;
  /** The softmax scale of CLEAR's proportional attention instead of 1/√head_dim. */
  proportionalAttention?: boolean;
  /**
   * The attention module (`transformer_blocks.3.attn`): its path for errors, and CLEAR's
   * `processor.spatial_weight` under it.
   */
  attn: Params;
}

/**
 * The attention product of every FLUX block, on q, k, v [B, L + N, heads·head_dim] after RoPE,
 * text tokens first: the one place its kernel is chosen. CLEAR runs here as the authors run it on
 * FLUX (methods/clear_linfusion.md §1.3–§1.5), in the double- and the single-stream blocks alike:
 * text queries attend to every text and image key; image queries to every text key, to the image
 * keys within the circle on the packed grid and, with downFactor > 1, to the keys/values pooled
 * after RoPE with this module's `processor.spatial_weight` — all in one softmax per query. The
 * softmax scale is 1/√head_dim, or with `proportionalAttention` CLEAR's, for either kernel.
 */
export function fluxAttentionKernel(q: Tensor, k: Tensor, v: Tensor, site: FluxAttentionSite): Tensor {
  const { choice } = site;
  const downFactor = choice.kind === 'clear' ? (choice.downFactor ?? 1) : 1;
  // Proportional attention counts the keys before pooling, text and image (key.size(2) in the authors' code).
  const scale = site.proportionalAttention
    ? fluxProportionalAttentionScale(k.shape[1] as number, (k.shape[2] as number) / site.heads, downFactor)
    : undefined;
  const scaled = scale === undefined ? {} : { scale };
  switch (choice.kind) {
    case 'full':
      return attention(q, k, v, { numHeads: site.heads, ...scaled });
    case 'clear': {
      if (!site.grid) {
        throw new OptionError(
          `${site.attn.path}: attention kind 'clear' needs the packed image-token grid (FluxGraphOptions.grid), ` +
            "on which CLEAR's window is measured",
        );
      }
      return clearAttention(q, k, v, {
        numHeads: site.heads,
        grid: site.grid,
        radius: choice.radius,
        textTokens: site.textTokens,
        downFactor,
        spatialWeight: clearSpatialWeight(site.attn, downFactor),
        ...scaled,
      });
    }
    case 'linfusion':
      throw new OptionError(`${site.attn.path}: ${LINFUSION_UNAVAILABLE}`);
  }
}

/** Why FLUX refuses attention kind 'linfusion' (methods/clear_linfusion.md §2.1, §3). */
const LINFUSION_UNAVAILABLE =
  "attention kind 'linfusion' is not implemented for FluxTransformer2DModel: LinFusion replaces the " +
  "self-attention (attn1) modules of UNets, and FLUX's attention is joint (text and image tokens in " +
  "one softmax), for which LinFusion has no module or weights; use 'full' or 'clear'";

/**
 * The packed image-token grid that `img_ids` [N, axes] describe, as FluxPipeline lays them out
 * (_prepare_latent_image_ids): token n at row y0 + ⌊n / W⌋ (id axis 1), column x0 + n mod W
 * (axis 2). A string saying what is wrong when the ids are not such a raster.
 */
export function fluxImageGrid(imgIds: ArrayLike<number>, axes: number): TokenGrid | string {
  const tokens = imgIds.length / axes;
  if (axes < 3 || !Number.isInteger(tokens) || tokens < 1) {
    return `expected [N, ≥ 3] ids (row on axis 1, column on axis 2), got ${imgIds.length} values in rows of ${axes}`;
  }
  const row = (n: number): number => imgIds[n * axes + 1];
  const column = (n: number): number => imgIds[n * axes + 2];
  let width = 1;
  while (width < tokens && row(width) === row(0)) width++;
  if (tokens % width !== 0) {
    return `the first row has ${width} tokens, which does not divide the ${tokens} image tokens`;
  }
  for (let n = 0; n < tokens; n++) {
    const y = row(0) + Math.floor(n / width);
    const x = column(0) + (n % width);
    if (row(n) !== y || column(n) !== x) {
      return (
        `token ${n} has (row, column) ids (${row(n)}, ${column(n)}), but a raster of rows of ${width} ` +
        `from (${row(0)}, ${column(0)}) puts it at (${y}, ${x})`
      );
    }
  }
  return { height: tokens / width, width };
}

/** Linear layers quantization at load keeps in float32 (README "int8"): the last layer. */
const FLUX_FLOAT_LINEARS: ReadonlySet<string> = new Set(['proj_out']);

/**
 * The adaLN modulation Linears (norm1, norm1_context, the single blocks' norm, norm_out: `linear` on
 * silu(temb)), int8 at load although their input is a [B, C] vector: FLUX.1-dev's are 3.25 G of its
 * 11.9 G parameters, 13 GB as float32 once the bf16 checkpoint's Cast is folded (README "int8").
 */
const FLUX_MODULATION_LINEAR = /^(.*\.)?(norm|norm1|norm1_context|norm_out)\.linear$/;

/** What an attention option and the loaded LoRA adapters bring, for building step graphs. */
export interface FluxAcceleration {
  /** Weights to build from instead of the checkpoint (a CLEAR file overlaid on it, non-strictly). */
  weights?: TensorSource;
  /** Identifies those weights, for the compiled-graph cache. */
  key?: string;
  /** LoRA adapters (fused, or switchable side branches); `graphKey` joins the compiled-graph key. */
  lora?: AdapterSet;
}

/**
 * CLEAR's high-resolution changes to FLUX's positions and softmax (Huage001/CLEAR
 * transformer_flux.py `ntk_factor`, `proportional_attention`; methods/clear_linfusion.md §1.5).
 */
export interface FluxPositionScaling {
  /** RoPE's θ is multiplied by it on every axis (NTK-aware scaling); default 1, diffusers' RoPE. */
  ropeNtkFactor?: number;
  /** Softmax scale sqrt(log_4608(keys) / head_dim) (`fluxProportionalAttentionScale`); default off. */
  proportionalAttention?: boolean;
}

/** What one compiled graph is built for: its input layout and the acceleration's weights. */
interface FluxLayout {
  graph: FluxGraphOptions;
  acceleration: FluxAcceleration;
}

/** The FLUX.1 denoiser (dev or schnell), loaded from a diffusers `transformer/` folder. */
export class FluxTransformer2DModel implements DiffusersModel {
  readonly className = 'FluxTransformer2DModel';
  readonly methods = ['forward'] as const;
  readonly attentionKinds = ['full', 'clear'] as const;
  /** LoRA adapters (diffusers' load_lora_weights / set_adapters / fuse_lora …). */
  readonly adapters = new AdapterSet();
  private readonly runnable: RunnableModel<FluxLayout>;
  /** CLEAR weight files opened for attention options, kept while the model is open. */
  private readonly attentionFiles = new AttentionWeightFiles();
  /** The checkpoint's tensors. */
  readonly weights: WeightStore;

  private constructor(
    readonly dir: string,
    readonly config: FluxTransformerConfig,
    private readonly loaded: ModelWeights,
    runtime: Runtime,
  ) {
    this.weights = loaded.store;
    this.runnable = new RunnableModel<FluxLayout>({
      className: this.className,
      dir,
      runtime,
      build: ({ graph, acceleration }) =>
        buildFluxTransformerGraph(config, acceleration.weights ?? loaded.source, graph, {
          int8: loaded.int8,
          lora: acceleration.lora,
        }),
      key: ({ graph, acceleration }) =>
        JSON.stringify([graph, acceleration.key ?? '', acceleration.lora?.graphKey ?? '']),
    });
  }

  /**
   * Load a LoRA (diffusers `transformer.`-prefixed file, PEFT folder, or kohya file in diffusers'
   * module names); it becomes active with weight 1. Keys that match no module are in `ignored`.
   */
  loadLoraWeights(path: string, options: { adapterName?: string } = {}): Promise<LoadedLora> {
    return this.adapters.load(path, { adapterName: options.adapterName, modelParameters: this.weights });
  }

  /** The Linear modules that run in int8 (a velodiff int8 folder, or `quantize: 'int8'`); undefined when float. */
  get int8Modules(): ReadonlySet<string> | undefined {
    return this.loaded.int8?.modules;
  }

  /** What graphs read: the checkpoint, with the int8 weights of a quantization at load over it. */
  get source(): TensorSource {
    return this.loaded.source;
  }

  static async fromPretrained(dir: string, options: LoadOptions): Promise<FluxTransformer2DModel> {
    const abs = resolve(dir);
    const raw = await readConfig(abs);
    const config = parseFluxTransformerConfig(raw, join(abs, 'config.json'), options.onWarning);
    // One image and one text token read every weight the config implies.
    const loaded = await openModelWeights(abs, {
      className: 'FluxTransformer2DModel',
      folderInt8: config.int8Modules,
      quantize: options.quantize,
      userKeepFloat: options.keepFloat,
      keepFloat: (module) => FLUX_FLOAT_LINEARS.has(module),
      vectorInt8: (module) => FLUX_MODULATION_LINEAR.test(module),
      build: (source, int8) =>
        buildFluxTransformerGraph(config, source, { imageTokens: 1, textTokens: 1 }, { int8 }),
      onWarning: options.onWarning,
    });
    return new FluxTransformer2DModel(abs, config, loaded, options.runtime);
  }

  /**
   * Resolve an attention option (attention/'s resolveAttentionOption: CLEAR's window checked, its
   * weights file opened once and overlaid non-strictly on the checkpoint) together with the loaded
   * LoRA adapters into what step graphs are built with. LinFusion has no FLUX form and is refused.
   */
  async resolveAcceleration(
    option: AttentionOption | undefined,
  ): Promise<{ attention?: AttentionChoice; acceleration: FluxAcceleration }> {
    if (option?.kind === 'linfusion') {
      throw new OptionError(`${this.runnable.where()}: ${LINFUSION_UNAVAILABLE}`);
    }
    const resolved = await resolveAttentionOption(option, this.loaded.source, this.attentionFiles);
    const acceleration: FluxAcceleration = {};
    if (resolved.weights) acceleration.weights = resolved.weights;
    if (resolved.key) acceleration.key = resolved.key;
    if (this.adapters.loaded.length > 0) acceleration.lora = this.adapters;
    return { ...(resolved.choice ? { attention: resolved.choice } : {}), acceleration };
  }

  /** The graph for one input layout, compiled once (the runtime caches sessions by signature). */
  compile(layout: FluxGraphOptions, acceleration: FluxAcceleration = {}): Promise<CompiledGraph> {
    return this.runnable.compile({ graph: layout, acceleration });
  }

  /**
   * One denoiser call with diffusers' argument names: `hidden_states` [B, N, in_channels],
   * `encoder_hidden_states` [B, L, joint_attention_dim], `pooled_projections` [B, pooled_projection_dim],
   * `timestep` (t/1000; 0-d, [1] or [B], any numeric dtype), `img_ids` [N, axes] and `txt_ids`
   * [L, axes], and `guidance` (like timestep) exactly when the model has guidance_embeds. Returns
   * `sample` [B, N, p²·out_channels]. `attention` CLEAR (`{ kind: 'clear', radius, downFactor?,
   * weights? }`) lays its window on the packed grid `grid`, by default the one img_ids describe.
   * `ropeNtkFactor` and `proportionalAttention` are CLEAR's high-resolution `ntk_factor` and
   * `proportional_attention` (see `step`).
   */
  async forward(
    inputs: Record<string, HostTensor>,
    options: {
      method?: string;
      kwargs?: Record<string, unknown>;
      attention?: AttentionOption;
      grid?: TokenGrid;
    } & FluxPositionScaling = {},
  ): Promise<Record<string, HostTensor>> {
    const { runnable } = this;
    runnable.checkMethod(options.method, ['forward']);
    const kwargs = options.kwargs ?? {};
    // `guidance: null` is diffusers' default (no guidance); a guidance value is the tensor input.
    if (kwargs.guidance !== undefined && kwargs.guidance !== null) {
      throw new OptionError(
        `${runnable.where()}: kwarg "guidance" must be null; give the guidance scale as the input tensor "guidance"`,
        'KWARG',
      );
    }
    runnable.checkKwargs(kwargs, ['return_dict', 'guidance']);
    const { attention, acceleration } = await this.resolveAcceleration(options.attention);
    const { ropeNtkFactor, proportionalAttention } = options;
    return (
      await this.step(inputs, {
        attention,
        acceleration,
        ...(options.grid ? { grid: options.grid } : {}),
        ...(ropeNtkFactor === undefined ? {} : { ropeNtkFactor }),
        ...(proportionalAttention === undefined ? {} : { proportionalAttention }),
      })
    ).host;
  }

  /**
   * One denoiser call for a sampler: `forward`'s inputs, with the attention already resolved
   * (`resolveAcceleration`, once per run). With CLEAR the packed image-token grid is `grid`, or
   * else the raster img_ids lay out. `ropeNtkFactor` multiplies RoPE's θ (CLEAR's `ntk_factor`,
   * default 1) and `proportionalAttention` sets CLEAR's log-length softmax scale (default off).
   */
  async step(
    inputs: Record<string, HostTensor>,
    options: {
      attention?: AttentionChoice;
      acceleration?: FluxAcceleration;
      grid?: TokenGrid;
    } & FluxPositionScaling = {},
  ): Promise<RunResult> {
    const { runnable, config } = this;
    const ntkFactor = options.ropeNtkFactor ?? 1;
    checkRopeNtkFactor(ntkFactor, runnable.where());
    // diffusers fails inside time_text_embed with a TypeError either way; said plainly here.
    if (config.guidanceEmbeds && !inputs.guidance) {
      throw new OptionError(
        `${runnable.where()}: missing input "guidance": this model has guidance_embeds (FLUX.1-dev style), ` +
          'so it takes the guidance scale as an input ([B], e.g. 3.5)',
        'INPUT',
      );
    }
    if (!config.guidanceEmbeds && inputs.guidance) {
      throw new OptionError(
        `${runnable.where()}: guidance was given, but this model has no guidance_embedder ` +
          '(guidance_embeds is false, FLUX.1-schnell style); leave it out',
        'INPUT',
      );
    }
    const axes = config.axesDimsRope.length;
    const specs: Record<string, InputSpec> = {
      hidden_states: { dtypes: ['float32'], shape: ['B', 'N', config.inChannels] },
      encoder_hidden_states: { dtypes: ['float32'], shape: ['B', 'L', config.jointAttentionDim] },
      pooled_projections: { dtypes: ['float32'], shape: ['B', config.pooledProjectionDim] },
      timestep: { dtypes: NUMERIC_DTYPES, shape: { oneOf: [[], [1], ['B']] } },
      img_ids: {
        dtypes: NUMERIC_DTYPES,
        shape: {
          oneOf: [
            ['N', axes],
            ['batch', 'N', axes],
          ],
        },
      },
      txt_ids: {
        dtypes: NUMERIC_DTYPES,
        shape: {
          oneOf: [
            ['L', axes],
            ['batch', 'L', axes],
          ],
        },
      },
    };
    if (config.guidanceEmbeds)
      specs.guidance = { dtypes: NUMERIC_DTYPES, shape: { oneOf: [[], [1], ['B']] } };
    const dims = runnable.checkInputs(inputs, specs);
    for (const name of ['txt_ids', 'img_ids']) {
      // diffusers still takes ids[0] of 3-D ids, with a deprecation warning; velodiff asks for the 2-D form.
      if (inputs[name].shape.length === 3) {
        throw runnable.inputError(
          name,
          `3-D ids ${JSON.stringify(inputs[name].shape)} (with a batch dim) are deprecated in diffusers, ` +
            `which uses only ${name}[0]; pass ${name}[0] as [${name === 'img_ids' ? 'N' : 'L'}, ${axes}]`,
        );
      }
    }
    // FluxPosEmbed reads ids.float(): float32 values, text ids first.
    const imgIds = asFloat32(inputs.img_ids).data as Float32Array;
    const ids = new Float32Array((dims.L + dims.N) * axes);
    ids.set(asFloat32(inputs.txt_ids).data as Float32Array);
    ids.set(imgIds, dims.L * axes);
    const { cos, sin } = fluxRotaryTables(ids, config.axesDimsRope, ROPE_THETA * ntkFactor);
    const tokens = dims.L + dims.N;
    const feeds: Record<string, HostTensor> = {
      hidden_states: inputs.hidden_states,
      encoder_hidden_states: inputs.encoder_hidden_states,
      pooled_projections: inputs.pooled_projections,
      timestep: asBatch(asFloat32(inputs.timestep), dims.B),
      rope_cos: hostTensor('float32', [tokens, config.attentionHeadDim], cos),
      rope_sin: hostTensor('float32', [tokens, config.attentionHeadDim], sin),
    };
    if (config.guidanceEmbeds) feeds.guidance = asBatch(asFloat32(inputs.guidance), dims.B);
    const layout: FluxGraphOptions = { imageTokens: dims.N, textTokens: dims.L };
    const attention = options.attention;
    if (attention && attention.kind !== 'full') {
      layout.attention = attention;
      if (attention.kind === 'clear') layout.grid = this.imageGrid(options.grid, imgIds, dims.N);
    }
    // Only when on, so that the default layout (and its compiled-graph key) stays as it was.
    if (options.proportionalAttention) layout.proportionalAttention = true;
    const acceleration = options.acceleration ?? {};
    return runnable.run({ graph: layout, acceleration }, feeds, {
      // Unfused LoRA adapters: their weights are inputs, so switching them needs no new graph.
      graphFeeds: (compiled) => acceleration.lora?.scaleFeeds(compiled.inputs) ?? {},
    });
  }

  /** CLEAR's packed grid: the one given, which must hold the N image tokens, or the one img_ids lay out. */
  private imageGrid(grid: TokenGrid | undefined, imgIds: Float32Array, imageTokens: number): TokenGrid {
    if (grid) {
      const { height, width } = grid;
      if (!(Number.isInteger(height) && Number.isInteger(width) && height * width === imageTokens)) {
        throw new OptionError(
          `${this.runnable.where()}: grid ${height}×${width} does not hold the ${imageTokens} image tokens ` +
            'of hidden_states; give the packed latent grid (image height/16 × width/16 for FLUX.1)',
        );
      }
      return grid;
    }
    const fromIds = fluxImageGrid(imgIds, this.config.axesDimsRope.length);
    if (typeof fromIds === 'string') {
      throw this.runnable.inputError(
        'img_ids',
        `attention kind 'clear' lays its window on the packed image-token grid, read from img_ids ` +
          `as FluxPipeline builds them, but ${fromIds}; pass the grid (option grid) explicitly`,
        'VALUE',
      );
    }
    return fromIds;
  }

  async close(): Promise<void> {
    this.runnable.clear();
    await this.attentionFiles.close();
    await this.loaded.close();
  }
}
