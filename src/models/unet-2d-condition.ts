/**
 * diffusers' `UNet2DConditionModel` (unets/unet_2d_condition.py): the denoiser of Stable Diffusion
 * 1.x/2.x, SDXL and their LCM variants, loaded from a diffusers `unet/` folder. The config is
 * read by unet/config.ts, the blocks are unet/blocks.ts (on nn/'s resnets, samplers and transformer
 * block); this file builds the forward graph and runs it.
 */
import { join, resolve } from 'node:path';

import { OptionError } from '../errors.js';
import type { Tensor } from '../graph/graph.js';
import { Graph } from '../graph/graph.js';
import { add, concat, mul, reshape, sub } from '../graph/ops/index.js';
import type { Dim } from '../graph/shape.js';
import type { WeightStore } from '../io/diffusers.js';
import { readConfig } from '../io/diffusers.js';
import type { AttentionOption } from '../attention/types.js';
import { AttentionWeightFiles, resolveAttentionOption } from '../attention/attention-option.js';
import type { LinFusionWeights } from '../attention/linfusion.js';
import { selfAttentionModule } from '../attention/self-attention.js';
import type { LoadedLora } from '../lora/adapters.js';
import { AdapterSet } from '../lora/adapters.js';
import type { DeepCacheStep } from '../attention/deepcache.js';
import {
  deepCacheFeaturePath,
  deepCacheFeeds,
  deepCacheInputName,
  deepCacheOutputName,
  deepCacheSkips,
  isDeepCacheOutput,
} from '../attention/deepcache.js';
import type { LayerAction } from '../attention/tgate.js';
import { gatedAttention, isTGateCacheOutput, tgateCacheFeeds } from '../attention/tgate.js';
import { activation } from '../nn/activations.js';
import { Conv2d, GroupNorm } from '../nn/layers.js';
import type { Int8Options, LoraProvider } from '../nn/params.js';
import { Params } from '../nn/params.js';
import type { TensorSource } from '../nn/weights.js';
import type { RunResult, TensorRef } from '../runtime/backend.js';
import type { HostTensor } from '../runtime/host-tensor.js';
import type { CompiledGraph, Runtime } from '../runtime/runtime.js';
import type { InputSpec } from '../runtime/runnable-model.js';
import { NUMERIC_DTYPES, RunnableModel, asBatch, asFloat32 } from '../runtime/runnable-model.js';
import { TimestepEmbedding, sinusoidalEmbedding } from './embeddings.js';
import type { DiffusersModel, LoadOptions } from './model.js';
import type { ModelWeights } from './int8.js';
import { openModelWeights } from './int8.js';
import type { UNetBlockContext, UNetBuildHooks } from './unet/blocks.js';
import { UNetDownBlock, UNetMidBlock, UNetUpBlock } from './unet/blocks.js';
import type { UNet2DConditionConfig } from './unet/config.js';
import { parseUNetConfig } from './unet/config.js';

export type { UNet2DConditionConfig } from './unet/config.js';
export { parseUNetConfig } from './unet/config.js';
export type { UNetBuildHooks, UNetTransformerSite } from './unet/blocks.js';

/** The tensors UNet2DConditionModel.forward takes, as graph tensors. */
export interface UNetInputs {
  /** [B, in_channels, H, W] */
  sample: Tensor;
  /** [B] float32 */
  timestep: Tensor;
  /** [B, L, cross_attention_dim] */
  encoderHiddenStates: Tensor;
  /** [B, L], 1 = keep (diffusers' `encoder_attention_mask`). */
  encoderAttentionMask?: Tensor;
  /** [B, time_cond_proj_dim]: LCM's guidance embedding. */
  timestepCond?: Tensor;
  /** SDXL's added conditions (`added_cond_kwargs`): pooled text [B, T] and time ids [B, n]. */
  textEmbeds?: Tensor;
  timeIds?: Tensor;
}

/**
 * UNet2DConditionModel's forward, built into the graph of `root` from tensors of that graph: the
 * predicted `sample` [B, out_channels, H, W]. H and W must be static.
 */
export function unet2DCondition(
  root: Params,
  config: UNet2DConditionConfig,
  inputs: UNetInputs,
  hooks: UNetBuildHooks = {},
): Tensor {
  let sample = inputs.sample;
  const [batch, , height, width] = sample.shape as [Dim, Dim, number, number];

  // diffusers passes each up block the size of the skip states when the latent does not halve evenly
  // at every level (forward_upsample_size).
  const upsamplers = config.up.filter((level) => level.addUpsample).length;
  const forwardUpsampleSize = [height, width].some((d) => d % 2 ** upsamplers !== 0);

  let crossMask: Tensor | undefined;
  const mask = inputs.encoderAttentionMask;
  if (mask) {
    const length = inputs.encoderHiddenStates.shape[1];
    crossMask = root.scope(() => reshape(mul(sub(1, mask), -10000), [batch, 1, 1, length]));
  }
  if (config.centerInputSample) sample = root.scope(() => sub(mul(sample, 2), 1));

  // Time embedding: sinusoidal features of t (float32, torch's exp), TimestepEmbedding with LCM's
  // cond_proj, plus SDXL's embedding of the pooled text and the time ids.
  const features = root.scope(() =>
    sinusoidalEmbedding(inputs.timestep, config.timestepInputDim, {
      flipSinToCos: config.flipSinToCos,
      downscaleFreqShift: config.freqShift,
    }),
  );
  let condition: { tensor: Tensor; condProjDim: number } | undefined;
  if (inputs.timestepCond) {
    if (config.timeCondProjDim === null) {
      throw new OptionError(
        'UNet2DConditionModel: timestep_cond was given, but this UNet has no time_embedding.cond_proj (time_cond_proj_dim is null)',
      );
    }
    condition = { tensor: inputs.timestepCond, condProjDim: config.timeCondProjDim };
  }
  let temb = TimestepEmbedding(
    root.child('time_embedding'),
    features,
    config.timestepInputDim,
    config.timeEmbedDim,
    { act: config.actFn, ...(condition ? { condition } : {}) },
  );
  if (config.textTime) {
    const { textEmbeds, timeIds } = inputs;
    if (!textEmbeds || !timeIds) {
      throw new OptionError(
        "UNet2DConditionModel with addition_embed_type 'text_time' needs text_embeds and time_ids (added_cond_kwargs)",
      );
    }
    const { timeEmbedDim, projectionInputDim } = config.textTime;
    const count = timeIds.shape[1] as number;
    const added = root.child('add_embedding');
    const combined = root.scope(() => {
      const flat = sinusoidalEmbedding(reshape(timeIds, [-1]), timeEmbedDim, {
        flipSinToCos: config.flipSinToCos,
        downscaleFreqShift: config.freqShift,
      });
      return concat([textEmbeds, reshape(flat, [batch, count * timeEmbedDim])], 1);
    });
    // add_embedding is a TimestepEmbedding with diffusers' default SiLU, whatever act_fn says.
    const augmented = TimestepEmbedding(added, combined, projectionInputDim, config.timeEmbedDim);
    temb = root.scope(() => add(temb, augmented));
  }

  const ctx: UNetBlockContext = {
    config,
    temb,
    text: inputs.encoderHiddenStates,
    ...(crossMask ? { crossMask } : {}),
    hooks,
    transformerBlocks: { count: 0 },
  };

  const first = config.blockOutChannels[0];
  let h = Conv2d(root.child('conv_in'), sample, {
    inChannels: config.inChannels,
    outChannels: first,
    kernel: config.convInKernel,
    padding: (config.convInKernel - 1) / 2,
  });
  const residuals: Tensor[] = [h];
  config.down.forEach((level, i) => {
    const out = UNetDownBlock(ctx, root.child('down_blocks').child(i), h, level);
    h = out.hidden;
    residuals.push(...out.residuals);
  });
  if (config.mid) h = UNetMidBlock(ctx, root.child('mid_block'), h, config.mid);
  config.up.forEach((level, i) => {
    // The skip states this block does not take: the last of them has the size to upsample to.
    const next = residuals[residuals.length - level.layers - 1];
    const upsampleSize =
      forwardUpsampleSize && level.addUpsample && next
        ? ([next.shape[2], next.shape[3]] as [number, number])
        : undefined;
    h = UNetUpBlock(ctx, root.child('up_blocks').child(i), h, residuals, level, upsampleSize);
  });

  h = GroupNorm(root.child('conv_norm_out'), h, config.normNumGroups, first, config.normEps);
  const activated = h;
  h = root.scope(() => activation(activated, config.actFn));
  return Conv2d(root.child('conv_out'), h, {
    inChannels: first,
    outChannels: config.outChannels,
    kernel: config.convOutKernel,
    padding: (config.convOutKernel - 1) / 2,
  });
}

/** The graph's name for forward's `sample`: ONNX forbids an input named like the output. */
export const SAMPLE_INPUT = 'x';

/** The input layout one compiled graph serves. */
export interface UNetGraphOptions {
  /** Latent height and width. */
  height: number;
  width: number;
  /** Text tokens (encoder_hidden_states' second dimension). */
  textLength: number;
  /** Whether `encoder_attention_mask` [B, L] is an input. */
  withEncoderMask?: boolean;
  /** Whether `timestep_cond` is an input (UNets with time_cond_proj_dim; optional there as in diffusers). */
  withTimestepCond?: boolean;
  /** text_time UNets: the number of time ids (6 for SDXL, 5 for its refiner). */
  timeIds?: number;
  /** The LinFusion folder (absolute path) whose modules replace every attn1 (attention kind 'linfusion'). */
  linfusion?: string;
  /**
   * T-GATE actions of this step graph (attention/tgate.ts): `store` makes every attention output of
   * the role a graph output (averaged over the CFG halves with `average`), `reuse` a graph input.
   */
  tgate?: { selfAttention: LayerAction; crossAttention: LayerAction; average: boolean };
  /**
   * DeepCache (attention/deepcache.ts): a full step also outputs the branch's deep feature; a skip
   * step reads it as an input and builds only the shallow branch and the up path from there.
   */
  deepCache?: { cacheBranchId: number; step: DeepCacheStep };
}

/**
 * The build hooks of a step graph's accelerations, around the caller's `base` hooks: T-GATE's
 * gated attentions, and DeepCache's feature output (full step) or input (skip step). On a skip step
 * the layers DeepCache skips are still built, then fall out of the serialized graph as nothing
 * live reads them; their attentions are built plain, so that no T-GATE cache keeps them alive.
 */
function stepHooks(
  graph: Graph,
  config: UNet2DConditionConfig,
  o: UNetGraphOptions,
  base: UNetBuildHooks = {},
): UNetBuildHooks {
  const { tgate, deepCache } = o;
  if (!tgate && !deepCache) return base;
  let live = true;
  const dead = (compute: () => Tensor): Tensor => {
    const was = live;
    live = false;
    try {
      return compute();
    } finally {
      live = was;
    }
  };
  const hooks: UNetBuildHooks = { ...base };
  if (tgate) {
    hooks.around = (site, role, compute) => {
      const run = (): Tensor => (base.around ? base.around(site, role, compute) : compute());
      if (!live) return run();
      const action = role === 'attn1' ? tgate.selfAttention : tgate.crossAttention;
      const tokens = site.grid.height * site.grid.width;
      return gatedAttention(
        graph,
        { layer: site.index, role },
        action,
        tgate.average,
        ['B', tokens, site.dim],
        run,
      );
    };
  }
  if (deepCache) {
    const { cacheBranchId, step } = deepCache;
    const featurePath = deepCacheFeaturePath(config, cacheBranchId);
    hooks.layer = (path, compute, g) => {
      const run = (): Tensor => (base.layer ? base.layer(path, compute, g) : compute());
      if (step === 'full') {
        const out = run();
        if (path === featurePath) g.output(deepCacheOutputName, out);
        return out;
      }
      if (path === featurePath) return g.input(deepCacheInputName, 'float32', dead(run).shape);
      return deepCacheSkips(config, cacheBranchId, path) ? dead(run) : run();
    };
  }
  return hooks;
}

/**
 * The UNet2DConditionModel forward graph. Inputs: `x` (forward's sample) [B, C, H, W], `timestep` [B] float32,
 * `encoder_hidden_states` [B, L, D], optionally `encoder_attention_mask` [B, L] float32,
 * `timestep_cond` [B, time_cond_proj_dim], and for text_time UNets `text_embeds` [B, T] and
 * `time_ids` [B, n] float32. Output: `sample` [B, out_channels, H, W].
 */
export function buildUNetGraph(
  config: UNet2DConditionConfig,
  weights: TensorSource,
  o: UNetGraphOptions,
  extras: { hooks?: UNetBuildHooks; lora?: LoraProvider; int8?: Int8Options } = {},
): Graph {
  const g = new Graph('UNet2DConditionModel');
  const root = Params.of(g, weights, { lora: extras.lora, int8: extras.int8 });
  const inputs: UNetInputs = {
    sample: g.input(SAMPLE_INPUT, 'float32', ['B', config.inChannels, o.height, o.width]),
    timestep: g.input('timestep', 'float32', ['B']),
    encoderHiddenStates: g.input('encoder_hidden_states', 'float32', [
      'B',
      o.textLength,
      config.encoderHiddenSize,
    ]),
  };
  if (o.withEncoderMask)
    inputs.encoderAttentionMask = g.input('encoder_attention_mask', 'float32', ['B', o.textLength]);
  if (o.withTimestepCond && config.timeCondProjDim !== null)
    inputs.timestepCond = g.input('timestep_cond', 'float32', ['B', config.timeCondProjDim]);
  if (config.textTime) {
    const count = o.timeIds ?? 6;
    const textWidth = config.textTime.projectionInputDim - count * config.textTime.timeEmbedDim;
    inputs.textEmbeds = g.input('text_embeds', 'float32', ['B', textWidth]);
    inputs.timeIds = g.input('time_ids', 'float32', ['B', count]);
  }
  g.output('sample', unet2DCondition(root, config, inputs, stepHooks(g, config, o, extras.hooks)));
  return g;
}

/**
 * The build hook of attention kind 'linfusion': every attn1 of the UNet's transformer blocks is
 * LinFusion's module for its path (methods/clear_linfusion.md §2.1), attn2 stays full attention.
 */
export function linfusionHooks(weights: LinFusionWeights): UNetBuildHooks {
  return {
    selfAttention: (site, params, x) =>
      selfAttentionModule(
        { params, x, dim: site.dim, heads: site.heads, qkvBias: false, grid: site.grid, textTokens: 0 },
        { kind: 'linfusion' },
        { linfusion: weights },
      ),
  };
}

/**
 * Whether a layout's graph reads the checkpoint in place (the runtime's weight-sharing settings)
 * rather than holding its own copy of the weights as ORT lays them out (faster convolutions: NCHWc).
 * Own copies: the plain graph (a T-GATE step that computes every attention is the plain graph), and
 * DeepCache's own steps without T-GATE — a DeepCache loop runs only its full and skip steps, never the
 * plain graph, so its full step's copy takes the plain graph's place, and the skip step reads only the
 * layers above the cache branch. In place: T-GATE's graphs that store or reuse attention (five
 * sessions of full-size weights otherwise), and DeepCache's full steps under T-GATE.
 */
function readsWeightsInPlace(layout: UNetGraphOptions): boolean {
  const { tgate, deepCache } = layout;
  const gated =
    tgate !== undefined && (tgate.selfAttention !== 'compute' || tgate.crossAttention !== 'compute');
  if (deepCache !== undefined) return deepCache.step === 'full' && gated;
  return gated;
}

/** The time ids a load-time build assumes: SDXL's 6 when they fit the add_embedding, else 1. */
function defaultTimeIds(config: UNet2DConditionConfig): number {
  const t = config.textTime;
  if (!t) return 0;
  return t.projectionInputDim > 6 * t.timeEmbedDim ? 6 : 1;
}

/** Stable Diffusion's denoiser, loaded from a diffusers `unet/` folder. */
export class UNet2DConditionModel implements DiffusersModel {
  readonly className = 'UNet2DConditionModel';
  readonly methods: readonly string[] = [];
  readonly attentionKinds = ['full', 'linfusion'] as const;
  /** LoRA adapters on the UNet's linears and convs (diffusers' load_lora_weights / set_adapters / fuse_lora …). */
  readonly adapters = new AdapterSet();
  /** LinFusion folders opened for attention options, kept while the model is open. */
  private readonly attentionFiles = new AttentionWeightFiles();
  private readonly linfusions = new Map<string, LinFusionWeights>();
  private readonly runnable: RunnableModel<UNetGraphOptions>;
  /** The checkpoint, read in place by the compiled graphs. */
  readonly weights: WeightStore;

  private constructor(
    readonly dir: string,
    readonly config: UNet2DConditionConfig,
    private readonly loaded: ModelWeights,
    runtime: Runtime,
  ) {
    const weights = loaded.store;
    this.weights = weights;
    // Each step graph T-GATE or DeepCache adds is a session, which at the runtime's default settings
    // holds its own copy of the weights as ORT lays them out (3.6 GB at SD 1.5 width; T-GATE adds 4):
    // T-GATE's read the checkpoint in place instead, where it is stored as float32 (readsWeightsInPlace).
    // An int8 model's packed weights are a quarter of that, and its int8 kernels need them packed.
    const sharesWeights = loaded.int8 === undefined && weights.readsInPlace();
    this.runnable = new RunnableModel<UNetGraphOptions>({
      className: this.className,
      dir,
      runtime,
      build: (layout) =>
        buildUNetGraph(config, loaded.source, layout, { ...this.buildExtras(layout), int8: loaded.int8 }),
      key: (layout) => JSON.stringify([layout, this.adapters.graphKey]),
      settings: (layout) =>
        sharesWeights && readsWeightsInPlace(layout) ? runtime.sharedWeightSettings : {},
    });
  }

  /** The Linear modules that run in int8 (a velodiff int8 folder, or `quantize: 'int8'`); undefined when float. */
  get int8Modules(): ReadonlySet<string> | undefined {
    return this.loaded.int8?.modules;
  }

  /** Load a LoRA (diffusers/PEFT file or folder, kohya file) onto the UNet; it becomes active with weight 1. */
  loadLoraWeights(path: string, options: { adapterName?: string } = {}): Promise<LoadedLora> {
    return this.adapters.load(path, { adapterName: options.adapterName, modelParameters: this.weights });
  }

  /**
   * Resolve a self-attention option (attention/'s resolveAttentionOption, which opens LinFusion's
   * folder once) into the layout field step graphs are built with. CLEAR is for DiTs only.
   */
  async resolveAttention(option: AttentionOption | undefined): Promise<Pick<UNetGraphOptions, 'linfusion'>> {
    if (option && option.kind === 'clear') {
      throw new OptionError(
        `${this.runnable.where()}: attention kind 'clear' is not available for UNets (CLEAR is a DiT method); use full or linfusion`,
      );
    }
    const resolved = await resolveAttentionOption(option, this.loaded.source, this.attentionFiles);
    if (!resolved.linfusion) return {};
    this.linfusions.set(resolved.linfusion.dir, resolved.linfusion);
    return { linfusion: resolved.linfusion.dir };
  }

  /** The LoRA provider and LinFusion hook a layout's graph is built with. */
  private buildExtras(layout: UNetGraphOptions): { hooks?: UNetBuildHooks; lora?: LoraProvider } {
    const extras: { hooks?: UNetBuildHooks; lora?: LoraProvider } = {};
    if (this.adapters.loaded.length > 0) extras.lora = this.adapters;
    if (layout.linfusion !== undefined) {
      const weights = this.linfusions.get(layout.linfusion);
      if (!weights)
        throw new OptionError(
          `${this.runnable.where()}: LinFusion folder ${layout.linfusion} was not opened`,
        );
      extras.hooks = linfusionHooks(weights);
    }
    return extras;
  }

  /**
   * Loads `<dir>/config.json` and the weights, and checks every tensor the config implies (presence
   * and shape) before returning.
   */
  static async fromPretrained(dir: string, options: LoadOptions): Promise<UNet2DConditionModel> {
    const abs = resolve(dir);
    const raw = await readConfig(abs);
    const config = parseUNetConfig(raw, join(abs, 'config.json'), options.onWarning);
    // The smallest latent every level can halve, with every optional input: reads every weight.
    const side = 2 ** config.up.filter((level) => level.addUpsample).length;
    const loaded = await openModelWeights(abs, {
      className: 'UNet2DConditionModel',
      folderInt8: config.int8Modules,
      quantize: options.quantize,
      userKeepFloat: options.keepFloat,
      build: (source, int8) =>
        buildUNetGraph(
          config,
          source,
          {
            height: side,
            width: side,
            textLength: 1,
            withTimestepCond: true,
            timeIds: defaultTimeIds(config),
          },
          { int8 },
        ),
      onWarning: options.onWarning,
    });
    return new UNet2DConditionModel(abs, config, loaded, options.runtime);
  }

  /** The graph for one input layout, compiled once. */
  compile(layout: UNetGraphOptions): Promise<CompiledGraph> {
    return this.runnable.compile(layout);
  }

  /**
   * One denoiser call with diffusers' argument names: `sample`, `timestep` (0-d, [1] or [B], any
   * numeric dtype), `encoder_hidden_states`, and where the model takes them `encoder_attention_mask`,
   * `timestep_cond`, and added_cond_kwargs' `text_embeds` and `time_ids`. Returns `sample`.
   */
  async forward(
    inputs: Record<string, HostTensor>,
    options: { method?: string; kwargs?: Record<string, unknown>; attention?: AttentionOption } = {},
  ): Promise<Record<string, HostTensor>> {
    const { runnable } = this;
    runnable.checkMethod(options.method, ['forward']);
    runnable.checkKwargs(options.kwargs ?? {}, ['return_dict']);
    return (await this.step(inputs, { attention: options.attention })).host;
  }

  /**
   * One denoiser call for a sampler: like `forward`, plus a step kind (T-GATE's actions, DeepCache's
   * full or skip step). The caches this step stores come back as `retained` TensorRefs, kept where
   * the session runs; the ones it reads are taken from `cached`, by the names earlier steps returned
   * them under (attention/tgate.ts's TGateCaches and attention/deepcache.ts's DeepCacheFeature keep them).
   */
  async step(
    inputs: Record<string, HostTensor>,
    options: {
      tgate?: UNetGraphOptions['tgate'];
      deepCache?: UNetGraphOptions['deepCache'];
      cached?: Readonly<Record<string, TensorRef>>;
      /** Self-attention kind: full (default) or LinFusion from its folder. */
      attention?: AttentionOption;
    } = {},
  ): Promise<RunResult> {
    const attention = await this.resolveAttention(options.attention);
    const { config, runnable } = this;
    // Inputs of modules this UNet does not have: said so, rather than "unknown input".
    const absent = (name: string, why: string): void => {
      if (inputs[name]) throw new OptionError(`${runnable.where()}: ${name} was given, but ${why}`, 'INPUT');
    };
    if (config.timeCondProjDim === null)
      absent('timestep_cond', 'this UNet has no time_embedding.cond_proj (time_cond_proj_dim is null)');
    const textTime = config.textTime;
    if (!textTime) {
      for (const name of ['text_embeds', 'time_ids'])
        absent(name, 'this UNet has no added embedding (addition_embed_type is null)');
    } else {
      for (const name of ['text_embeds', 'time_ids']) {
        if (!inputs[name])
          throw new OptionError(
            `${runnable.where()}: missing input "${name}", which a UNet with addition_embed_type 'text_time' takes (added_cond_kwargs)`,
            'INPUT',
          );
      }
    }
    const specs: Record<string, InputSpec> = {
      sample: { dtypes: ['float32'], shape: ['B', config.inChannels, 'H', 'W'] },
      timestep: { dtypes: NUMERIC_DTYPES, shape: { oneOf: [[], [1], ['B']] } },
      encoder_hidden_states: { dtypes: ['float32'], shape: ['B', 'L', config.encoderHiddenSize] },
      encoder_attention_mask: { dtypes: NUMERIC_DTYPES, shape: ['B', 'L'], optional: true },
    };
    if (config.timeCondProjDim !== null)
      specs.timestep_cond = { dtypes: ['float32'], shape: ['B', config.timeCondProjDim], optional: true };
    if (textTime) {
      specs.time_ids = { dtypes: NUMERIC_DTYPES, shape: ['B', 'N'] };
      specs.text_embeds = { dtypes: ['float32'], shape: ['B', 'T'] };
    }
    const dims = runnable.checkInputs(inputs, specs);
    const layout: UNetGraphOptions = { height: dims.H, width: dims.W, textLength: dims.L };
    const feeds: Record<string, HostTensor> = {
      [SAMPLE_INPUT]: inputs.sample,
      timestep: asBatch(asFloat32(inputs.timestep), dims.B),
      encoder_hidden_states: inputs.encoder_hidden_states,
    };
    if (inputs.encoder_attention_mask) {
      feeds.encoder_attention_mask = asFloat32(inputs.encoder_attention_mask);
      layout.withEncoderMask = true;
    }
    if (inputs.timestep_cond) {
      feeds.timestep_cond = inputs.timestep_cond;
      layout.withTimestepCond = true;
    }
    if (textTime) {
      // add_embedding reads text_embeds and the ids' features concatenated: their widths must add up.
      const textWidth = textTime.projectionInputDim - dims.N * textTime.timeEmbedDim;
      if (dims.T !== textWidth) {
        throw runnable.inputError(
          'text_embeds',
          `expected [B, ${textWidth}] beside ${dims.N} time ids (projection_class_embeddings_input_dim ` +
            `${textTime.projectionInputDim} = text_embeds + time_ids × addition_time_embed_dim ${textTime.timeEmbedDim}), ` +
            `got [${dims.B}, ${dims.T}]`,
        );
      }
      feeds.text_embeds = inputs.text_embeds;
      feeds.time_ids = asFloat32(inputs.time_ids);
      layout.timeIds = dims.N;
    }
    if (attention.linfusion !== undefined) layout.linfusion = attention.linfusion;
    if (options.tgate) layout.tgate = options.tgate;
    if (options.deepCache) layout.deepCache = options.deepCache;
    const cached = options.cached ?? {};
    return runnable.run(layout, feeds, {
      retain: (name) => isTGateCacheOutput(name) || isDeepCacheOutput(name),
      graphFeeds: (compiled) => ({
        ...tgateCacheFeeds(compiled.inputs, cached),
        ...deepCacheFeeds(compiled.inputs, cached),
        // Unfused LoRA adapters: their weights are inputs, so switching them needs no new graph.
        ...this.adapters.scaleFeeds(compiled.inputs),
      }),
    });
  }

  async close(): Promise<void> {
    this.runnable.clear();
    this.linfusions.clear();
    await this.attentionFiles.close();
    await this.loaded.close();
  }
}
