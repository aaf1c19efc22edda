import { join, resolve } from 'node:path';
import { FileFormatError, GraphBuildError, OptionError } from '../errors.js';
import type { Tensor } from '../graph/graph.js';
import { Graph } from '../graph/graph.js';
import { add, attention, concat, mul, reshape, silu, slice, split, transpose } from '../graph/ops/index.js';
import type { WeightStore } from '../io/diffusers.js';
import { readConfig } from '../io/diffusers.js';
import type { AttentionOption } from '../attention/types.js';
import {
  AdaLayerNormContinuous,
  adaLayerNormRows,
  modulate,
  modulatedLayerNorm,
  nonAffineLayerNorm,
} from '../nn/ada-layer-norm.js';
import { Attention } from '../nn/attention.js';
import type { StreamProjectionNames } from '../nn/joint-attention.js';
import {
  CONTEXT_PROJECTIONS,
  IMAGE_PROJECTIONS,
  jointOutputProjections,
  projectHeads,
} from '../nn/joint-attention.js';
import { Conv2d, Linear } from '../nn/layers.js';
import type { LoadedLora } from '../lora/adapters.js';
import { AdapterSet } from '../lora/adapters.js';
import { Params } from '../nn/params.js';
import type { Int8Options, LoraProvider } from '../nn/params.js';
import { FeedForward } from '../nn/transformer-block.js';
import type { TensorSource } from '../nn/weights.js';
import type { HostTensor } from '../runtime/host-tensor.js';
import type { CompiledGraph, Runtime } from '../runtime/runtime.js';
import { NUMERIC_DTYPES, RunnableModel, asBatch, asFloat32 } from '../runtime/runnable-model.js';
import type { WarningHandler } from '../warnings.js';
import { ConfigReader } from './config.js';
import { CombinedTimestepTextProjEmbeddings } from './embeddings.js';
import type { ModelWeights } from './int8.js';
import { openModelWeights } from './int8.js';
import type { DiffusersModel, LoadOptions } from './model.js';

export interface SD3TransformerConfig {
  sampleSize: number;
  patchSize: number;
  inChannels: number;
  numLayers: number;
  attentionHeadDim: number;
  numAttentionHeads: number;
  jointAttentionDim: number;
  captionProjectionDim: number;
  pooledProjectionDim: number;
  outChannels: number;
  /** Side of the square position-embedding table the patch grid is cropped from. */
  posEmbedMaxSize: number;
  /** Blocks with SD3.5's second, image-only attention (MMDiT-X). */
  dualAttentionLayers: ReadonlySet<number>;
  /** Per-head norm of queries and keys: none (SD3) or RMSNorm (SD3.5). */
  qkNorm: 'rms_norm' | undefined;
  /** numAttentionHeads × attentionHeadDim */
  innerDim: number;
  /** The int8 Linear modules of a folder in velodiff's int8 format (`quantization_config`). */
  int8Modules?: ReadonlySet<string>;
}

/**
 * Read and validate an SD3Transformer2DModel config.json (diffusers 0.40 keys and defaults). Keys
 * that change the math are implemented or rejected; unused keys go to `onWarning` (ConfigReader).
 */
export function parseSD3TransformerConfig(
  raw: Record<string, unknown>,
  path: string,
  onWarning?: WarningHandler,
): SD3TransformerConfig {
  const c = new ConfigReader(raw, path, 'SD3Transformer2DModel');
  if (raw._class_name !== undefined && raw._class_name !== 'SD3Transformer2DModel') {
    throw new FileFormatError(
      `${path}: _class_name is ${JSON.stringify(raw._class_name)}, expected SD3Transformer2DModel`,
      'CONFIG_CLASS',
      path,
    );
  }
  const numAttentionHeads = c.integer('num_attention_heads', 18, 1);
  const attentionHeadDim = c.integer('attention_head_dim', 64, 1);
  const inChannels = c.integer('in_channels', 16, 1);
  const numLayers = c.integer('num_layers', 18, 0);
  // diffusers: in_channels when out_channels is null.
  const outChannels = c.optionalNumber('out_channels') ?? (raw.out_channels === null ? inChannels : 16);
  if (!Number.isInteger(outChannels) || outChannels < 1) {
    c.unsupported('out_channels', 'an integer ≥ 1 or null');
  }
  // Without pos_embed_max_size diffusers computes (and interpolates) a non-persistent table instead
  // of cropping the checkpoint's; every SD3 checkpoint sets it.
  if (raw.pos_embed_max_size === null) {
    c.unsupported('pos_embed_max_size', 'an integer ≥ 1 (the cropped position-embedding table of SD3)');
  }
  const qkNorm = c.get('qk_norm');
  if (qkNorm !== undefined && qkNorm !== null && qkNorm !== 'rms_norm') {
    c.unsupported('qk_norm', 'absent, null, "rms_norm" (SD3.5)');
  }
  const dual = c.numbers('dual_attention_layers', []);
  if (dual.some((i) => !Number.isInteger(i) || i < 0)) {
    c.unsupported('dual_attention_layers', 'a list of block indices (integers ≥ 0)');
  }
  const config: SD3TransformerConfig = {
    sampleSize: c.integer('sample_size', 128, 1),
    patchSize: c.integer('patch_size', 2, 1),
    inChannels,
    numLayers,
    attentionHeadDim,
    numAttentionHeads,
    jointAttentionDim: c.integer('joint_attention_dim', 4096, 1),
    captionProjectionDim: c.integer('caption_projection_dim', 1152, 1),
    pooledProjectionDim: c.integer('pooled_projection_dim', 2048, 1),
    outChannels,
    posEmbedMaxSize: c.integer('pos_embed_max_size', 96, 1),
    // As diffusers (`i in dual_attention_layers`), an index past the last block selects none.
    dualAttentionLayers: new Set(dual),
    qkNorm: qkNorm === 'rms_norm' ? 'rms_norm' : undefined,
    innerDim: numAttentionHeads * attentionHeadDim,
  };
  const int8Modules = c.int8Modules();
  if (int8Modules) config.int8Modules = int8Modules;
  c.finish(onWarning);
  // The blocks read the projected caption at the model width; diffusers fails on the first block otherwise.
  if (config.captionProjectionDim !== config.innerDim) {
    throw new FileFormatError(
      `${path}: caption_projection_dim ${config.captionProjectionDim} must equal num_attention_heads × ` +
        `attention_head_dim = ${config.innerDim} (the width the joint attention reads the caption at)`,
      'CONFIG_VALUE',
      path,
    );
  }
  return config;
}

export interface SD3TransformerGraphOptions {
  /** Latent height and width (multiples of the patch size). */
  height: number;
  width: number;
  /** Caption length (text tokens of encoder_hidden_states). */
  textLength: number;
}

/** What a graph is built with besides the checkpoint. */
export interface SD3TransformerExtras {
  /** The int8 Linear modules (src/models/int8.ts). */
  int8?: Int8Options;
  /** LoRA adapters applied to Linear/Conv2d layers (fused, or as switchable side branches). */
  lora?: LoraProvider;
}

/**
 * Build the SD3Transformer2DModel forward graph (diffusers 0.40). Inputs: `hidden_states`
 * [B, C, H, W], `encoder_hidden_states` [B, L, joint_attention_dim], `pooled_projections`
 * [B, pooled_projection_dim], `timestep` [B] float32. Output: `sample` [B, out_channels, H, W].
 */
export function buildSD3TransformerGraph(
  config: SD3TransformerConfig,
  weights: TensorSource,
  o: SD3TransformerGraphOptions,
  extras: SD3TransformerExtras = {},
): Graph {
  const g = new Graph('SD3Transformer2DModel');
  const root = Params.of(g, weights, { lora: extras.lora, int8: extras.int8 });
  const inputs: SD3TransformerInputs = {
    hiddenStates: g.input('hidden_states', 'float32', ['B', config.inChannels, o.height, o.width]),
    encoderHiddenStates: g.input('encoder_hidden_states', 'float32', [
      'B',
      o.textLength,
      config.jointAttentionDim,
    ]),
    pooledProjections: g.input('pooled_projections', 'float32', ['B', config.pooledProjectionDim]),
    timestep: g.input('timestep', 'float32', ['B']),
  };
  g.output('sample', sd3Transformer(root, config, inputs, o));
  return g;
}

/** The tensors SD3Transformer2DModel.forward takes, as graph tensors (see `buildSD3TransformerGraph`). */
export interface SD3TransformerInputs {
  /** [B, in_channels, H, W] */
  hiddenStates: Tensor;
  /** [B, L, joint_attention_dim] */
  encoderHiddenStates: Tensor;
  /** [B, pooled_projection_dim] */
  pooledProjections: Tensor;
  /** [B] float32 */
  timestep: Tensor;
}

/**
 * SD3Transformer2DModel's forward, built into the graph of `root` from tensors of that graph: the
 * predicted `sample` [B, out_channels, H, W].
 */
export function sd3Transformer(
  root: Params,
  config: SD3TransformerConfig,
  inputs: SD3TransformerInputs,
  o: Pick<SD3TransformerGraphOptions, 'height' | 'width'>,
): Tensor {
  const { innerDim: dim, patchSize: p } = config;
  const gridH = o.height / p;
  const gridW = o.width / p;
  if (!Number.isInteger(gridH) || !Number.isInteger(gridW)) {
    throw new GraphBuildError(
      `SD3Transformer2DModel: latent ${o.height}×${o.width} is not a multiple of the patch size ${p}`,
    );
  }

  // PatchEmbed: a stride-p conv, flattened to tokens, plus the checkpoint's position table cropped.
  const pe = root.child('pos_embed');
  const patches = Conv2d(pe.child('proj'), inputs.hiddenStates, {
    inChannels: config.inChannels,
    outChannels: dim,
    kernel: p,
    stride: p,
  });
  const tokens = gridH * gridW;
  let hidden = add(
    transpose(reshape(patches, ['B', dim, tokens]), [0, 2, 1]),
    croppedPositionEmbedding(pe, config, gridH, gridW),
  );

  const temb = CombinedTimestepTextProjEmbeddings(root.child('time_text_embed'), inputs, {
    dim,
    pooledProjectionDim: config.pooledProjectionDim,
  });
  // Every adaLN linear takes silu(temb): computed once for all of them.
  const conditioning = silu(temb);

  let context: Tensor | undefined = Linear(
    root.child('context_embedder'),
    inputs.encoderHiddenStates,
    config.jointAttentionDim,
    config.captionProjectionDim,
  );
  for (let i = 0; i < config.numLayers; i++) {
    if (context === undefined) throw new GraphBuildError(`transformer_blocks.${i}: no caption states`);
    ({ hidden, context } = JointTransformerBlock(root.child('transformer_blocks').child(i), hidden, context, {
      conditioning,
      dim,
      heads: config.numAttentionHeads,
      qkNorm: config.qkNorm,
      contextPreOnly: i === config.numLayers - 1,
      dualAttention: config.dualAttentionLayers.has(i),
    }));
  }

  // norm_out, proj_out, and unpatchify (nhwpqc → nchpwq).
  hidden = AdaLayerNormContinuous(root.child('norm_out'), hidden, conditioning, dim);
  const out = Linear(root.child('proj_out'), hidden, dim, p * p * config.outChannels);
  const grid = reshape(out, ['B', gridH, gridW, p, p, config.outChannels]);
  return reshape(transpose(grid, [0, 5, 1, 3, 2, 4]), ['B', config.outChannels, o.height, o.width]);
}

/**
 * PatchEmbed.cropped_pos_embed: the gridH × gridW centre of the checkpoint's square
 * `pos_embed` [1, max², dim] table, as [1, gridH·gridW, dim].
 */
function croppedPositionEmbedding(
  p: Params,
  config: SD3TransformerConfig,
  gridH: number,
  gridW: number,
): Tensor {
  const { posEmbedMaxSize: max, innerDim: dim } = config;
  if (gridH > max || gridW > max) {
    throw new GraphBuildError(
      `${p.path}: the patch grid ${gridH}×${gridW} exceeds pos_embed_max_size ${max}; ` +
        `latents of at most ${max * config.patchSize}×${max * config.patchSize} fit this model`,
    );
  }
  const table = p.get('pos_embed', [1, max * max, dim]);
  const top = Math.floor((max - gridH) / 2);
  const left = Math.floor((max - gridW) / 2);
  return p.scope(() => {
    const square = reshape(table, [max, max, dim]);
    const crop = slice(square, [
      { axis: 0, start: top, end: top + gridH },
      { axis: 1, start: left, end: left + gridW },
    ]);
    return reshape(crop, [1, gridH * gridW, dim]);
  });
}

/** What one JointTransformerBlock is built from besides its parameters and its input tokens. */
export interface JointTransformerBlockOptions {
  /** silu(temb) [B, dim]: the input of every adaLN linear. */
  conditioning: Tensor;
  dim: number;
  heads: number;
  qkNorm: 'rms_norm' | undefined;
  /** The last block: the caption stream ends after the joint attention (no to_add_out, no ff_context). */
  contextPreOnly: boolean;
  /** SD3.5's MMDiT-X block: SD35AdaLayerNormZeroX and a second, image-only attention attn2. */
  dualAttention: boolean;
}

/**
 * diffusers JointTransformerBlock (MMDiT) on image tokens `hidden` [B, N, dim] and caption tokens
 * `context` [B, M, dim]; returns both streams (`context` undefined after a context_pre_only block).
 */
export function JointTransformerBlock(
  p: Params,
  hidden: Tensor,
  context: Tensor,
  o: JointTransformerBlockOptions,
): { hidden: Tensor; context: Tensor | undefined } {
  const { dim, heads, conditioning } = o;

  // norm1: AdaLayerNormZero (shift, scale, gate of attention; shift, scale, gate of the MLP), with
  // SD35AdaLayerNormZeroX's shift, scale, gate of attn2 after them.
  const norm1 = p.child('norm1');
  const rows = adaLayerNormRows(norm1, conditioning, dim, o.dualAttention ? 9 : 6);
  const [shiftMsa, scaleMsa, gateMsa, shiftMlp, scaleMlp, gateMlp] = rows;
  const normedHidden = nonAffineLayerNorm(norm1, hidden, dim);
  const attnInput = norm1.scope(() => modulate(normedHidden, shiftMsa, scaleMsa));

  const norm1Context = p.child('norm1_context');
  let contextRows: Tensor[] | undefined;
  let attnContext: Tensor;
  if (o.contextPreOnly) {
    attnContext = AdaLayerNormContinuous(norm1Context, context, conditioning, dim);
  } else {
    contextRows = adaLayerNormRows(norm1Context, conditioning, dim, 6);
    const [cShift, cScale] = contextRows;
    attnContext = modulatedLayerNorm(norm1Context, context, dim, cShift, cScale);
  }

  const joint = JointAttention(p.child('attn'), attnInput, attnContext, {
    dim,
    heads,
    qkNorm: o.qkNorm,
    contextPreOnly: o.contextPreOnly,
  });
  hidden = p.scope(() => add(hidden, mul(gateMsa, joint.hidden)));

  if (o.dualAttention) {
    const [shiftMsa2, scaleMsa2, gateMsa2] = rows.slice(6);
    const attn2Input = norm1.scope(() => modulate(normedHidden, shiftMsa2, scaleMsa2));
    const attn2 = Attention(p.child('attn2'), attn2Input, undefined, {
      queryDim: dim,
      heads,
      dimHead: dim / heads,
      bias: true,
      qkNorm: o.qkNorm,
      eps: 1e-6,
    });
    hidden = p.scope(() => add(hidden, mul(gateMsa2, attn2)));
  }

  const ffInput = modulatedLayerNorm(p.child('norm2'), hidden, dim, shiftMlp, scaleMlp);
  const ff = FeedForward(p.child('ff'), ffInput, { dim, activation: 'gelu-approximate' });
  hidden = p.scope(() => add(hidden, mul(gateMlp, ff)));

  if (contextRows === undefined || joint.context === undefined) return { hidden, context: undefined };
  const [, , cGateMsa, cShiftMlp, cScaleMlp, cGateMlp] = contextRows;
  const contextAttn = joint.context;
  context = p.scope(() => add(context, mul(cGateMsa, contextAttn)));
  const contextFfInput = modulatedLayerNorm(p.child('norm2_context'), context, dim, cShiftMlp, cScaleMlp);
  const contextFf = FeedForward(p.child('ff_context'), contextFfInput, {
    dim,
    activation: 'gelu-approximate',
  });
  context = p.scope(() => add(context, mul(cGateMlp, contextFf)));
  return { hidden, context };
}

export interface JointAttentionOptions {
  dim: number;
  heads: number;
  qkNorm: 'rms_norm' | undefined;
  /** No to_add_out: the caption tokens' attention output is not used. */
  contextPreOnly: boolean;
}

/**
 * diffusers Attention with added_kv_proj_dim and JointAttnProcessor2_0: image tokens `x` [B, N, dim]
 * (to_q/to_k/to_v, norm_q/norm_k) and caption tokens `context` [B, M, dim] (add_q_proj/add_k_proj/
 * add_v_proj, norm_added_q/norm_added_k) attend together, image tokens first; the output is split
 * back into to_out.0 and to_add_out.
 */
export function JointAttention(
  p: Params,
  x: Tensor,
  context: Tensor,
  o: JointAttentionOptions,
): { hidden: Tensor; context: Tensor | undefined } {
  const { dim, heads } = o;
  // q, k, v of both streams, each [B, tokens, dim]; queries and keys RMS-normed per head with qk_norm.
  const project = (input: Tensor, names: StreamProjectionNames, part: 'q' | 'k' | 'v'): Tensor => {
    if (o.qkNorm === undefined || part === 'v') return Linear(p.child(names[part]), input, dim, dim);
    const normed = projectHeads(p, input, names, part, { dim, heads, qkNorm: true });
    const [batch, length] = normed.shape;
    return p.scope(() => reshape(normed, [batch, length, dim]));
  };
  const joined = (part: 'q' | 'k' | 'v'): Tensor =>
    concat([project(x, IMAGE_PROJECTIONS, part), project(context, CONTEXT_PROJECTIONS, part)], 1);
  const q = joined('q');
  const k = joined('k');
  const v = joined('v');
  const [imageOut, contextOut] = p.scope(() =>
    split(attention(q, k, v, { numHeads: heads }), [x.shape[1], context.shape[1]], 1),
  );
  const out = jointOutputProjections(p, imageOut, o.contextPreOnly ? undefined : contextOut, dim);
  return { hidden: out.image, context: out.context };
}

/** Linear layers quantization at load keeps in float32 (README "int8"): the last layer. */
const SD3_FLOAT_LINEARS: ReadonlySet<string> = new Set(['proj_out']);

/**
 * The adaLN modulation Linears (norm1, norm1_context, norm_out: `linear` on silu(conditioning)),
 * int8 at load although their input is a [B, C] vector: about a third of SD3's and SD3.5's weights
 * (README "int8").
 */
const SD3_MODULATION_LINEAR = /^(.*\.)?(norm1|norm1_context|norm_out)\.linear$/;

/** Stable Diffusion 3 / 3.5 MMDiT denoiser, loaded from a diffusers `transformer/` folder. */
export class SD3Transformer2DModel implements DiffusersModel {
  readonly className = 'SD3Transformer2DModel';
  readonly methods = ['forward'] as const;
  /** LoRA adapters (diffusers' load_lora_weights / set_adapters / fuse_lora …). */
  readonly adapters = new AdapterSet();
  private readonly runnable: RunnableModel<SD3TransformerGraphOptions>;
  /** The checkpoint's tensors. */
  readonly weights: WeightStore;

  private constructor(
    readonly dir: string,
    readonly config: SD3TransformerConfig,
    private readonly loaded: ModelWeights,
    runtime: Runtime,
  ) {
    this.weights = loaded.store;
    const adapters = this.adapters;
    this.runnable = new RunnableModel<SD3TransformerGraphOptions>({
      className: this.className,
      dir,
      runtime,
      build: (layout) =>
        buildSD3TransformerGraph(config, loaded.source, layout, {
          int8: loaded.int8,
          lora: adapters.loaded.length > 0 ? adapters : undefined,
        }),
      // Loading, fusing or unloading an adapter changes the graph; setAdapters only its scale feeds.
      key: (layout) => JSON.stringify([layout, adapters.graphKey]),
    });
  }

  /**
   * Load a LoRA (diffusers `transformer.`-prefixed file, PEFT folder such as jasperai/flash-sd3, or
   * kohya file); it becomes active with weight 1. Keys that match no module are in `ignored`.
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

  static async fromPretrained(dir: string, options: LoadOptions): Promise<SD3Transformer2DModel> {
    const abs = resolve(dir);
    const raw = await readConfig(abs);
    const config = parseSD3TransformerConfig(raw, join(abs, 'config.json'), options.onWarning);
    // A one-patch graph reads every weight the config implies.
    const p = config.patchSize;
    const loaded = await openModelWeights(abs, {
      className: 'SD3Transformer2DModel',
      folderInt8: config.int8Modules,
      quantize: options.quantize,
      userKeepFloat: options.keepFloat,
      keepFloat: (module) => SD3_FLOAT_LINEARS.has(module),
      vectorInt8: (module) => SD3_MODULATION_LINEAR.test(module),
      build: (source, int8) =>
        buildSD3TransformerGraph(config, source, { height: p, width: p, textLength: 1 }, { int8 }),
      onWarning: options.onWarning,
    });
    return new SD3Transformer2DModel(abs, config, loaded, options.runtime);
  }

  /** The graph for one input layout, compiled once (the runtime caches sessions by signature). */
  compile(o: SD3TransformerGraphOptions): Promise<CompiledGraph> {
    return this.runnable.compile(o);
  }

  /**
   * One denoiser call with diffusers' argument names: `hidden_states` [B, C, H, W],
   * `encoder_hidden_states` [B, L, joint_attention_dim], `pooled_projections`
   * [B, pooled_projection_dim] and `timestep` ([B] or scalar, any numeric dtype; the pipeline passes
   * σ·1000). Returns `sample` [B, out_channels, H, W].
   */
  async forward(
    inputs: Record<string, HostTensor>,
    options: { method?: string; kwargs?: Record<string, unknown>; attention?: AttentionOption } = {},
  ): Promise<Record<string, HostTensor>> {
    const { runnable } = this;
    runnable.checkMethod(options.method, this.methods);
    runnable.checkKwargs(options.kwargs ?? {}, ['return_dict']);
    if (options.attention !== undefined) {
      throw new OptionError(
        `${runnable.where()}: attention options (CLEAR, LinFusion) are not implemented for SD3Transformer2DModel`,
      );
    }
    const { inChannels, patchSize, posEmbedMaxSize, jointAttentionDim, pooledProjectionDim } = this.config;
    const dims = runnable.checkInputs(inputs, {
      hidden_states: { dtypes: ['float32'], shape: ['B', inChannels, 'H', 'W'] },
      encoder_hidden_states: { dtypes: ['float32'], shape: ['B', 'L', jointAttentionDim] },
      pooled_projections: { dtypes: ['float32'], shape: ['B', pooledProjectionDim] },
      timestep: { dtypes: NUMERIC_DTYPES, shape: { oneOf: [[], [1], ['B']] } },
    });
    const { B: batch, H: height, W: width, L: textLength } = dims;
    if (height % patchSize || width % patchSize) {
      throw runnable.inputError(
        'hidden_states',
        `height and width (${height}×${width}) must be multiples of the patch size ${patchSize}`,
      );
    }
    const largest = posEmbedMaxSize * patchSize;
    if (height > largest || width > largest) {
      throw runnable.inputError(
        'hidden_states',
        `height and width (${height}×${width}) must be at most pos_embed_max_size × patch_size = ${largest}`,
      );
    }
    const feeds = {
      hidden_states: inputs.hidden_states,
      encoder_hidden_states: inputs.encoder_hidden_states,
      pooled_projections: inputs.pooled_projections,
      timestep: asBatch(asFloat32(inputs.timestep), batch),
    };
    return (
      await runnable.run({ height, width, textLength }, feeds, {
        // Unfused LoRA adapters: their weights are inputs, so switching them needs no new graph.
        graphFeeds: (compiled) => this.adapters.scaleFeeds(compiled.inputs),
      })
    ).host;
  }

  async close(): Promise<void> {
    this.runnable.clear();
    await this.loaded.close();
  }
}
