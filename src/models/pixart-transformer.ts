import { join, resolve } from 'node:path';
import { FileFormatError, OptionError } from '../errors.js';
import type { Tensor } from '../graph/graph.js';
import { Graph } from '../graph/graph.js';
import {
  add,
  concat,
  gelu,
  layerNorm,
  mul,
  reshape,
  silu,
  split,
  sub,
  transpose,
} from '../graph/ops/index.js';
import type { WeightStore } from '../io/diffusers.js';
import { readConfig } from '../io/diffusers.js';
import { Conv2d, Linear } from '../nn/layers.js';
import { BasicTransformerBlock } from '../nn/transformer-block.js';
import type { LoadedLora } from '../lora/adapters.js';
import { AdapterSet } from '../lora/adapters.js';
import { Params } from '../nn/params.js';
import type { Int8Options } from '../nn/params.js';
import type { HostTensor } from '../runtime/host-tensor.js';
import { hostTensor } from '../runtime/host-tensor.js';
import type { Feed, RunResult, TensorRef } from '../runtime/backend.js';
import type { CompiledGraph, Runtime } from '../runtime/runtime.js';
import { NUMERIC_DTYPES, RunnableModel, asBatch, asFloat32 } from '../runtime/runnable-model.js';
import { AttentionWeightFiles, resolveAttentionOption } from '../attention/attention-option.js';
import type { LinFusionWeights } from '../attention/linfusion.js';
import { selfAttentionModule } from '../attention/self-attention.js';
import type { LayerAction } from '../attention/tgate.js';
import { gatedAttention, isTGateCacheOutput, tgateCacheFeeds } from '../attention/tgate.js';
import type { AttentionChoice, AttentionOption, SelfAttentionLayer, TokenGrid } from '../attention/types.js';
import type { TensorSource } from '../nn/weights.js';
import { ConfigReader } from './config.js';
import { TimestepEmbedding, sincosPositionEmbedding2d, sinusoidalEmbedding } from './embeddings.js';
import type { DiffusersModel, LoadOptions } from './model.js';
import type { ModelWeights } from './int8.js';
import { openModelWeights } from './int8.js';
import type { WarningHandler } from '../warnings.js';

export interface PixArtTransformerConfig {
  numAttentionHeads: number;
  attentionHeadDim: number;
  inChannels: number;
  outChannels: number;
  numLayers: number;
  crossAttentionDim: number;
  attentionBias: boolean;
  sampleSize: number;
  patchSize: number;
  normEps: number;
  captionChannels: number;
  interpolationScale: number;
  useAdditionalConditions: boolean;
  /** numAttentionHeads × attentionHeadDim */
  innerDim: number;
  /** The int8 Linear modules of a folder in velodiff's int8 format (`quantization_config`). */
  int8Modules?: ReadonlySet<string>;
}

/**
 * Read and validate a PixArtTransformer2DModel config.json (diffusers 0.40 keys and defaults). Keys
 * that change the math are implemented or rejected; unused keys go to `onWarning` (ConfigReader).
 */
export function parsePixArtConfig(
  raw: Record<string, unknown>,
  path: string,
  onWarning?: WarningHandler,
): PixArtTransformerConfig {
  const c = new ConfigReader(raw, path, 'PixArtTransformer2DModel');
  if (
    raw._class_name !== undefined &&
    raw._class_name !== 'PixArtTransformer2DModel' &&
    raw._class_name !== 'Transformer2DModel'
  ) {
    throw new FileFormatError(
      `${path}: _class_name is ${JSON.stringify(raw._class_name)}, expected PixArtTransformer2DModel`,
      'CONFIG_CLASS',
      path,
    );
  }
  const numAttentionHeads = c.integer('num_attention_heads', 16, 1);
  const attentionHeadDim = c.integer('attention_head_dim', 72, 1);
  const inChannels = c.integer('in_channels', 4, 1);
  const sampleSize = c.integer('sample_size', 128, 1);
  // diffusers: out_channels 8 when absent, in_channels when null.
  const outChannels = raw.out_channels === undefined ? 8 : (c.optionalNumber('out_channels') ?? inChannels);
  c.accept('out_channels');
  // diffusers builds no cross-attention without cross_attention_dim, and no caption projection
  // without caption_channels; velodiff's PixArt always has both.
  if (raw.cross_attention_dim === null) {
    c.unsupported('cross_attention_dim', 'an integer ≥ 1 (with null diffusers builds no cross-attention)');
  }
  if (raw.caption_channels === undefined || raw.caption_channels === null) {
    c.unsupported('caption_channels', 'an integer ≥ 1 (without it diffusers builds no caption projection)');
  }
  const config: PixArtTransformerConfig = {
    numAttentionHeads,
    attentionHeadDim,
    inChannels,
    outChannels,
    numLayers: c.integer('num_layers', 28, 0),
    crossAttentionDim: c.integer('cross_attention_dim', 1152, 1),
    attentionBias: c.boolean('attention_bias', true),
    sampleSize,
    patchSize: c.integer('patch_size', 2, 1),
    normEps: c.number('norm_eps', 1e-6),
    captionChannels: c.integer('caption_channels', 4096, 1),
    interpolationScale: c.optionalNumber('interpolation_scale') ?? Math.max(Math.floor(sampleSize / 64), 1),
    // diffusers turns micro-conditions on for the 1024px PixArt-α (sample_size 128) when unset.
    useAdditionalConditions: c.optionalBoolean('use_additional_conditions') ?? sampleSize === 128,
    innerDim: numAttentionHeads * attentionHeadDim,
  };
  const int8Modules = c.int8Modules();
  if (int8Modules) config.int8Modules = int8Modules;
  c.string('norm_type', 'ada_norm_single', ['ada_norm_single']);
  c.string('activation_fn', 'gelu-approximate', ['gelu-approximate']);
  c.string('attention_type', 'default', ['default']);
  c.supported('norm_elementwise_affine', [false], 'adaLN-single norms have no affine parameters');
  // Keys of the Transformer2DModel era of PixArt checkpoints: diffusers 0.40 ignores them, but a
  // true value there meant another block (cross-attention only, two self-attentions, discrete input).
  c.supported('only_cross_attention', [false]);
  c.supported('double_self_attention', [false]);
  c.supported('num_vector_embeds', [false], 'a number means discrete (VQ) inputs, not latents');
  // Upcasting only changes half-precision runs; velodiff computes attention in float32.
  c.boolean('upcast_attention', false);
  c.number('dropout', 0);
  c.integer('norm_num_groups', 32);
  c.integer('num_embeds_ada_norm', 1000);
  // Only non-patched Transformer2DModel inputs use a linear projection; PixArt's are patched.
  c.accept('use_linear_projection');
  c.finish(onWarning);
  if (config.outChannels !== config.inChannels && config.outChannels !== 2 * config.inChannels) {
    throw new FileFormatError(
      `${path}: out_channels ${config.outChannels} must be in_channels or 2·in_channels (learned sigma)`,
      'CONFIG_VALUE',
      path,
    );
  }
  if (config.innerDim % 4 !== 0) {
    throw new FileFormatError(
      `${path}: hidden size ${config.innerDim} must be divisible by 4 for the 2-D position embedding`,
      'CONFIG_VALUE',
      path,
    );
  }
  return config;
}

export interface PixArtGraphOptions {
  /** Latent height and width (multiples of the patch size). */
  height: number;
  width: number;
  /** Caption length (text tokens). */
  captionLength: number;
  /** Whether an encoder attention mask [B, L] (1 = keep) is an input. */
  withMask: boolean;
  /**
   * T-GATE actions of this step graph. `store` adds the attention module outputs (averaged over the
   * CFG halves with `average`) as T-GATE cache outputs; `reuse` takes them as inputs instead of
   * attending (attention/tgate.ts names both). Reusing cross-attention drops the caption inputs.
   */
  tgate?: { selfAttention: LayerAction; crossAttention: LayerAction; average: boolean };
  /** Kernel of every self-attention (attn1) layer; default full attention. */
  attention?: AttentionChoice;
}

/** Weights an acceleration brings besides the base checkpoint. */
export interface PixArtExtras {
  /** LinFusion modules for `attention: { kind: 'linfusion' }`, by module path. */
  linfusion?: LinFusionWeights;
  /** LoRA adapters applied to Linear/Conv2d layers (fused, or as switchable side branches). */
  lora?: AdapterSet;
  /** The int8 Linear modules (src/models/int8.ts). */
  int8?: Int8Options;
  /**
   * Called with each attention module's output [B, N, inner_dim] (after `to_out`, as the module
   * returns it) while the graph is built: the features distillation losses match.
   */
  onAttention?: (block: number, role: 'attn1' | 'attn2', output: Tensor) => void;
  /**
   * Builds block `block`'s self-attention module in place of the configured kernel: a module whose
   * weights are trained parameters (LinFusion distillation's student) rather than a weights folder.
   */
  selfAttentionOverride?: (block: number, layer: SelfAttentionLayer) => Tensor;
}

/** What a pipeline resolved from its acceleration options, for building step graphs. */
export interface PixArtAcceleration extends PixArtExtras {
  /** Weights to build from instead of the base checkpoint (e.g. CLEAR's overlaid on it). */
  weights?: TensorSource;
  /** Identifies weights, LinFusion modules and LoRA state, for the compiled-graph cache. */
  key?: string;
}

/**
 * The `pos_embed` input [1, gridH·gridW, inner_dim] for a grid of patch tokens: the 2-D sin-cos
 * embedding on PixArt's base size (sample_size / patch_size) and interpolation scale.
 */
export function pixArtPositionEmbedding(
  config: PixArtTransformerConfig,
  gridH: number,
  gridW: number,
): HostTensor {
  const { innerDim, sampleSize, patchSize, interpolationScale } = config;
  const base = Math.floor(sampleSize / patchSize);
  return hostTensor(
    'float32',
    [1, gridH * gridW, innerDim],
    sincosPositionEmbedding2d(innerDim, gridH, gridW, base, interpolationScale),
  );
}

/**
 * Build the PixArtTransformer2DModel forward graph (diffusers 0.40). Inputs: `hidden_states`
 * [B, C, H, W], `encoder_hidden_states` [B, L, caption_channels], `timestep` [B] float32,
 * `pos_embed` [1, N, D], optionally `encoder_attention_mask` [B, L] float32 and `resolution`
 * [B, 2] / `aspect_ratio` [B, 1]. Output: `sample` [B, out_channels, H, W].
 */
export function buildPixArtGraph(
  config: PixArtTransformerConfig,
  weights: TensorSource,
  o: PixArtGraphOptions,
  extras: PixArtExtras = {},
): Graph {
  const tokens = (o.height / config.patchSize) * (o.width / config.patchSize);
  const g = new Graph('PixArtTransformer2DModel');
  const root = Params.of(g, weights, { lora: extras.lora, int8: extras.int8 });
  const tgate = o.tgate ?? { selfAttention: 'compute', crossAttention: 'compute', average: false };
  const needsText = tgate.crossAttention !== 'reuse';
  const inputs: PixArtInputs = {
    hiddenStates: g.input('hidden_states', 'float32', ['B', config.inChannels, o.height, o.width]),
    timestep: g.input('timestep', 'float32', ['B']),
    posEmbed: g.input('pos_embed', 'float32', [1, tokens, config.innerDim]),
  };
  if (config.useAdditionalConditions) {
    inputs.resolution = g.input('resolution', 'float32', ['B', 2]);
    inputs.aspectRatio = g.input('aspect_ratio', 'float32', ['B', 1]);
  }
  if (needsText) {
    inputs.encoderHiddenStates = g.input('encoder_hidden_states', 'float32', [
      'B',
      o.captionLength,
      config.captionChannels,
    ]);
    if (o.withMask)
      inputs.encoderAttentionMask = g.input('encoder_attention_mask', 'float32', ['B', o.captionLength]);
  }
  g.output('sample', pixArtTransformer(root, config, inputs, o, extras));
  return g;
}

/** The tensors PixArtTransformer2DModel.forward takes, as graph tensors (see `buildPixArtGraph`). */
export interface PixArtInputs {
  /** [B, in_channels, H, W] */
  hiddenStates: Tensor;
  /** [B] float32 */
  timestep: Tensor;
  /** [1, N, inner_dim]: `sincosPositionEmbedding2d` for the token grid. */
  posEmbed: Tensor;
  /** [B, L, caption_channels]; absent only when every cross-attention is reused (T-GATE). */
  encoderHiddenStates?: Tensor;
  /** [B, L] float32, 1 = keep. */
  encoderAttentionMask?: Tensor;
  /** Micro-conditions [B, 2] and [B, 1], for models with use_additional_conditions. */
  resolution?: Tensor;
  aspectRatio?: Tensor;
}

/**
 * PixArtTransformer2DModel's forward, built into the graph of `root` from tensors of that graph:
 * the predicted `sample` [B, out_channels, H, W]. `buildPixArtGraph` wraps it with graph inputs;
 * a trainer calls it with the text encoder's output to train both in one graph.
 */
export function pixArtTransformer(
  root: Params,
  config: PixArtTransformerConfig,
  inputs: PixArtInputs,
  o: Pick<PixArtGraphOptions, 'height' | 'width' | 'tgate' | 'attention'>,
  extras: PixArtExtras = {},
): Tensor {
  const { innerDim: dim, patchSize: p } = config;
  const h = o.height / p;
  const w = o.width / p;
  const tokens = h * w;
  const x = inputs.hiddenStates;
  const tgate = o.tgate ?? { selfAttention: 'compute', crossAttention: 'compute', average: false };
  const needsText = tgate.crossAttention !== 'reuse';

  // Patch embedding: a stride-p conv, flattened to tokens, plus the 2-D sin-cos position embedding.
  const patches = Conv2d(root.child('pos_embed').child('proj'), x, {
    inChannels: config.inChannels,
    outChannels: dim,
    kernel: p,
    stride: p,
  });
  let hidden = add(transpose(reshape(patches, ['B', dim, tokens]), [0, 2, 1]), inputs.posEmbed);

  // adaLN-single: one timestep (+ micro-condition) embedding shared by every block.
  const ada = root.child('adaln_single');
  const emb = ada.child('emb');
  let embedded = TimestepEmbedding(
    emb.child('timestep_embedder'),
    sinusoidalEmbedding(inputs.timestep, 256, { flipSinToCos: true, downscaleFreqShift: 0 }),
    256,
    dim,
  );
  if (config.useAdditionalConditions) {
    const sizeDim = Math.floor(dim / 3);
    const condition = (input: Tensor | undefined, name: string, count: number): Tensor => {
      if (!input) throw new OptionError(`PixArtTransformer2DModel with micro-conditions needs ${name}`);
      const s = sinusoidalEmbedding(reshape(input, [-1]), 256, { flipSinToCos: true, downscaleFreqShift: 0 });
      return reshape(TimestepEmbedding(emb.child(name), s, 256, sizeDim), ['B', count * sizeDim]);
    };
    const micro = [
      condition(inputs.resolution, 'resolution_embedder', 2),
      condition(inputs.aspectRatio, 'aspect_ratio_embedder', 1),
    ];
    embedded = add(embedded, concat(micro, 1));
  }
  const timestepMod = Linear(ada.child('linear'), silu(embedded), dim, 6 * dim); // [B, 6·dim]

  // Caption projection to the model width (not needed when every cross-attention is reused).
  let text: Tensor | undefined;
  let crossMask: Tensor | undefined;
  if (needsText) {
    const captions = inputs.encoderHiddenStates;
    if (!captions) throw new OptionError('PixArtTransformer2DModel needs encoder_hidden_states');
    const cp = root.child('caption_projection');
    text = Linear(
      cp.child('linear_2'),
      gelu(Linear(cp.child('linear_1'), captions, config.captionChannels, dim), 'tanh'),
      dim,
      dim,
    );
    const mask = inputs.encoderAttentionMask;
    // (1 − mask)·−10000 added to the cross-attention scores, as PixArtTransformer2DModel does.
    if (mask) crossMask = reshape(mul(sub(1, mask), -10000), ['B', 1, 1, captions.shape[1]]);
  }

  const modulation = reshape(timestepMod, ['B', 6, dim]);
  for (let i = 0; i < config.numLayers; i++) {
    hidden = pixArtBlock(root.child('transformer_blocks').child(i), hidden, {
      index: i,
      text,
      modulation,
      crossMask,
      config,
      tgate,
      selfAttention: {
        choice: o.attention ?? { kind: 'full' },
        grid: { height: h, width: w },
        extras,
      },
    });
  }

  // Final adaLN modulation, projection, and unpatchify (nhwpqc → nchpwq).
  const table = root.get('scale_shift_table', [2, dim]);
  const [shift, scale] = split(add(reshape(table, [1, 2, dim]), reshape(embedded, ['B', 1, dim])), 2, 1);
  hidden = layerNorm(hidden, undefined, undefined, { eps: 1e-6 });
  hidden = add(mul(hidden, add(scale, 1)), shift);
  const out = Linear(root.child('proj_out'), hidden, dim, p * p * config.outChannels);
  const grid = reshape(out, ['B', h, w, p, p, config.outChannels]);
  return reshape(transpose(grid, [0, 5, 1, 3, 2, 4]), ['B', config.outChannels, o.height, o.width]);
}

/** What one PixArt block is built from besides its parameters and its input tokens. */
export interface PixArtBlockOptions {
  /** The block's place in transformer_blocks, which names its T-GATE cache entries. */
  index: number;
  /** The projected caption [B, M, inner_dim]; absent when the graph has no encoder_hidden_states. */
  text: Tensor | undefined;
  /** adaLN-single's per-sample shift, scale and gate rows [B, 6, inner_dim]. */
  modulation: Tensor;
  /** Additive caption mask [B, 1, 1, M], or undefined when every caption token is attended. */
  crossMask: Tensor | undefined;
  config: PixArtTransformerConfig;
  tgate: NonNullable<PixArtGraphOptions['tgate']>;
  /** The self-attention kernel choice, the token grid it works on and the method weights it reads. */
  selfAttention: { choice: AttentionChoice; grid: TokenGrid; extras: PixArtExtras };
}

/**
 * BasicTransformerBlock with norm_type 'ada_norm_single' (PixArt) on `hidden` [B, N, inner_dim].
 * Exported for the module-level gradient checks (test/models/grad-modules.test.ts).
 */
export function pixArtBlock(p: Params, hidden: Tensor, o: PixArtBlockOptions): Tensor {
  const { index, text, modulation, crossMask, config, tgate, selfAttention } = o;
  const dim = config.innerDim;
  const heads = config.numAttentionHeads;
  return BasicTransformerBlock(p, hidden, text, {
    dim,
    heads,
    dimHead: dim / heads,
    crossAttentionDim: config.crossAttentionDim,
    attentionBias: config.attentionBias,
    normType: 'ada_norm_single',
    normEps: config.normEps,
    normElementwiseAffine: false,
    activation: 'gelu-approximate',
    modulation,
    crossMask,
    selfAttention: (params, x) => {
      const layer: SelfAttentionLayer = {
        params,
        x,
        dim,
        heads,
        qkvBias: config.attentionBias,
        grid: selfAttention.grid,
        textTokens: 0,
      };
      const override = selfAttention.extras.selfAttentionOverride;
      return override
        ? override(index, layer)
        : selfAttentionModule(layer, selfAttention.choice, selfAttention.extras);
    },
    around: (role, compute) =>
      gatedAttention(
        p.graph,
        { layer: index, role },
        role === 'attn1' ? tgate.selfAttention : tgate.crossAttention,
        tgate.average,
        ['B', hidden.shape[1], dim],
        () => {
          const output = compute();
          selfAttention.extras.onAttention?.(index, role, output);
          return output;
        },
      ),
  });
}

/** What one compiled step graph is built for: its input layout and the acceleration's weights. */
interface PixArtLayout {
  graph: PixArtGraphOptions;
  acceleration: PixArtAcceleration;
}

/** Whether a step graph stores or reuses T-GATE's attention caches (one that computes all is the plain graph). */
function isTGateStepGraph(graph: PixArtGraphOptions): boolean {
  const t = graph.tgate;
  return t !== undefined && (t.selfAttention !== 'compute' || t.crossAttention !== 'compute');
}

/** Linear layers quantization at load keeps in float32 (README "int8"): the last layer. */
const PIXART_FLOAT_LINEARS: ReadonlySet<string> = new Set(['proj_out']);

/** PixArt-α/Σ denoiser, loaded from a diffusers `transformer/` folder. */
export class PixArtTransformer2DModel implements DiffusersModel {
  readonly className = 'PixArtTransformer2DModel';
  readonly methods = ['forward'] as const;
  readonly attentionKinds = ['full', 'clear', 'linfusion'] as const;
  private readonly posEmbeds = new Map<string, HostTensor>();
  /** LoRA adapters (diffusers' loadLoraWeights / setAdapters / fuseLora …). */
  readonly adapters = new AdapterSet();
  /** CLEAR and LinFusion weights opened for attention options, kept while the model is open. */
  private readonly attentionFiles = new AttentionWeightFiles();
  private readonly runnable: RunnableModel<PixArtLayout>;
  /** The checkpoint's tensors. */
  readonly weights: WeightStore;

  private constructor(
    readonly dir: string,
    readonly config: PixArtTransformerConfig,
    private readonly loaded: ModelWeights,
    runtime: Runtime,
  ) {
    const weights = loaded.store;
    this.weights = weights;
    this.runnable = new RunnableModel<PixArtLayout>({
      className: this.className,
      dir,
      runtime,
      build: ({ graph, acceleration }) =>
        buildPixArtGraph(config, acceleration.weights ?? loaded.source, graph, {
          ...acceleration,
          int8: loaded.int8,
        }),
      key: ({ graph, acceleration }) =>
        JSON.stringify([graph, acceleration.key ?? '', acceleration.lora?.graphKey ?? '']),
      // T-GATE's store and reuse step graphs are sessions beside the plain forward: as the UNet's,
      // they read a float32 checkpoint in place rather than holding a packed copy each.
      settings: ({ graph, acceleration }) =>
        acceleration.weights === undefined &&
        loaded.int8 === undefined &&
        weights.readsInPlace() &&
        isTGateStepGraph(graph)
          ? runtime.sharedWeightSettings
          : {},
    });
  }

  /** The Linear modules that run in int8 (a velodiff int8 folder, or `quantize: 'int8'`); undefined when float. */
  get int8Modules(): ReadonlySet<string> | undefined {
    return this.loaded.int8?.modules;
  }

  /** What graphs read: the checkpoint, with the int8 weights of a quantization at load over it. */
  get source(): TensorSource {
    return this.loaded.source;
  }

  /** Load a LoRA (diffusers/PEFT file or folder, kohya file); it becomes active with weight 1. */
  loadLoraWeights(path: string, options: { adapterName?: string } = {}): Promise<LoadedLora> {
    return this.adapters.load(path, { adapterName: options.adapterName, modelParameters: this.weights });
  }

  static async fromPretrained(dir: string, options: LoadOptions): Promise<PixArtTransformer2DModel> {
    const abs = resolve(dir);
    const raw = await readConfig(abs);
    const config = parsePixArtConfig(raw, join(abs, 'config.json'), options.onWarning);
    // A minimal graph with every optional input reads every weight the config implies.
    const p = config.patchSize;
    const loaded = await openModelWeights(abs, {
      className: 'PixArtTransformer2DModel',
      folderInt8: config.int8Modules,
      quantize: options.quantize,
      userKeepFloat: options.keepFloat,
      keepFloat: (module) => PIXART_FLOAT_LINEARS.has(module),
      build: (source, int8) =>
        buildPixArtGraph(config, source, { height: p, width: p, captionLength: 1, withMask: true }, { int8 }),
      onWarning: options.onWarning,
    });
    return new PixArtTransformer2DModel(abs, config, loaded, options.runtime);
  }

  /**
   * Resolve a self-attention option (attention/'s resolveAttentionOption, which opens the method's
   * weights once per file) together with the loaded LoRA adapters into what step graphs are built with.
   */
  async resolveAcceleration(
    option: AttentionOption | undefined,
  ): Promise<{ attention?: AttentionChoice; acceleration: PixArtAcceleration }> {
    const resolved = await resolveAttentionOption(option, this.loaded.source, this.attentionFiles);
    const acceleration: PixArtAcceleration = {};
    if (resolved.weights) acceleration.weights = resolved.weights;
    if (resolved.linfusion) acceleration.linfusion = resolved.linfusion;
    if (resolved.key) acceleration.key = resolved.key;
    if (this.adapters.loaded.length > 0) acceleration.lora = this.adapters;
    return { ...(resolved.choice ? { attention: resolved.choice } : {}), acceleration };
  }

  /** The graph for one input layout, compiled once (the runtime caches sessions by signature). */
  compile(o: PixArtGraphOptions, acceleration: PixArtAcceleration = {}): Promise<CompiledGraph> {
    return this.runnable.compile({ graph: o, acceleration });
  }

  private positionEmbedding(gridH: number, gridW: number): HostTensor {
    const key = `${gridH}x${gridW}`;
    let t = this.posEmbeds.get(key);
    if (!t) {
      t = pixArtPositionEmbedding(this.config, gridH, gridW);
      this.posEmbeds.set(key, t);
    }
    return t;
  }

  /**
   * One denoiser call with diffusers' argument names: `hidden_states`, `encoder_hidden_states`,
   * `timestep` ([B] or scalar, any numeric dtype), optional `encoder_attention_mask` [B, L]
   * (1 = keep) and, for micro-conditioned models, `resolution` and `aspect_ratio`.
   */
  async forward(
    inputs: Record<string, HostTensor>,
    options: { attention?: AttentionOption } = {},
  ): Promise<Record<string, HostTensor>> {
    const { attention, acceleration } = await this.resolveAcceleration(options.attention);
    return (await this.step(inputs, { attention, acceleration })).host;
  }

  /**
   * One denoiser call for a sampler: like `forward`, plus a T-GATE step kind. The attention outputs
   * this step stores come back as `retained` TensorRefs (T-GATE's cache outputs, kept where the
   * session runs); the ones it reuses are read from `cached`, by the names earlier steps returned
   * them under (attention/tgate.ts's TGateCaches keeps them).
   */
  async step(
    inputs: Record<string, HostTensor>,
    options: {
      tgate?: PixArtGraphOptions['tgate'];
      cached?: Readonly<Record<string, TensorRef>>;
      attention?: AttentionChoice;
      acceleration?: PixArtAcceleration;
    } = {},
  ): Promise<RunResult> {
    const tgate = options.tgate;
    const needsText = tgate?.crossAttention !== 'reuse';
    const { inChannels, patchSize, captionChannels, useAdditionalConditions } = this.config;
    const dims = this.runnable.checkInputs(inputs, {
      hidden_states: { dtypes: ['float32'], shape: ['B', inChannels, 'H', 'W'] },
      timestep: { dtypes: NUMERIC_DTYPES, shape: { oneOf: [[], [1], ['B']] } },
      // Not fed while T-GATE reuses every cross-attention output.
      encoder_hidden_states: {
        dtypes: ['float32'],
        shape: ['B', 'L', captionChannels],
        optional: !needsText,
      },
      encoder_attention_mask: { dtypes: NUMERIC_DTYPES, shape: ['B', 'L'], optional: true },
      // Micro-conditions: read only by models with use_additional_conditions.
      resolution: { dtypes: NUMERIC_DTYPES, shape: ['B', 2], optional: !useAdditionalConditions },
      aspect_ratio: { dtypes: NUMERIC_DTYPES, shape: ['B', 1], optional: !useAdditionalConditions },
    });
    const { B: batch, H: height, W: width } = dims;
    if (height % patchSize || width % patchSize) {
      throw this.runnable.inputError(
        'hidden_states',
        `height and width (${height}×${width}) must be multiples of the patch size ${patchSize}`,
      );
    }
    const feeds: Record<string, Feed> = {
      hidden_states: inputs.hidden_states,
      timestep: asBatch(asFloat32(inputs.timestep), batch),
      pos_embed: this.positionEmbedding(height / patchSize, width / patchSize),
    };
    const text = needsText ? inputs.encoder_hidden_states : undefined;
    const mask = text ? inputs.encoder_attention_mask : undefined;
    if (text) feeds.encoder_hidden_states = text;
    if (mask) feeds.encoder_attention_mask = asFloat32(mask);
    if (useAdditionalConditions) {
      feeds.resolution = asFloat32(inputs.resolution);
      feeds.aspect_ratio = asFloat32(inputs.aspect_ratio);
    }
    const graph: PixArtGraphOptions = {
      height,
      width,
      captionLength: text ? dims.L : 0,
      withMask: mask !== undefined,
      ...(tgate ? { tgate } : {}),
      ...(options.attention && options.attention.kind !== 'full' ? { attention: options.attention } : {}),
    };
    const acceleration = options.acceleration ?? {};
    return this.runnable.run({ graph, acceleration }, feeds, {
      retain: isTGateCacheOutput,
      graphFeeds: (compiled) => ({
        ...tgateCacheFeeds(compiled.inputs, options.cached ?? {}),
        // Unfused LoRA adapters: their weights are inputs, so switching them needs no new graph.
        ...(acceleration.lora?.scaleFeeds(compiled.inputs) ?? {}),
      }),
    });
  }

  async close(): Promise<void> {
    this.runnable.clear();
    await this.attentionFiles.close();
    await this.loaded.close();
  }
}
