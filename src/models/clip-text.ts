/**
 * transformers' `CLIPTextModel` (SD 1.x `text_encoder`, SDXL/SD3 `text_encoder`) and
 * `CLIPTextModelWithProjection` (SDXL `text_encoder_2`, SD3 `text_encoder`/`text_encoder_2`):
 * token + position embeddings, pre-norm causal self-attention layers, a final layer norm, the
 * state at the end-of-text token as `pooler_output`, and for the projection class `text_embeds`.
 * Parameter names are the checkpoint's (`text_model.encoder.layers.3.self_attn.q_proj`, …).
 */
import { basename, join, resolve } from 'node:path';

import { FileFormatError, OptionError } from '../errors.js';
import type { Tensor } from '../graph/graph.js';
import { Graph } from '../graph/graph.js';
import {
  add,
  attention,
  cast,
  cumsum,
  equal,
  gather,
  max,
  mul,
  not,
  reshape,
  sum,
  unsqueeze,
} from '../graph/ops/index.js';
import type { WeightStore } from '../io/diffusers.js';
import { readConfig } from '../io/diffusers.js';
import type { TransformersActivation } from '../nn/activations.js';
import { transformersActivation } from '../nn/activations.js';
import { LayerNorm, Linear } from '../nn/layers.js';
import type { Int8Options, LoraProvider } from '../nn/params.js';
import { Params } from '../nn/params.js';
import type { LoadedLora } from '../lora/adapters.js';
import { AdapterSet } from '../lora/adapters.js';
import type { LoraComponent } from '../lora/format.js';
import type { TensorSource } from '../nn/weights.js';
import type { HostTensor } from '../runtime/host-tensor.js';
import type { CompiledGraph, Runtime } from '../runtime/runtime.js';
import { RunnableModel } from '../runtime/runnable-model.js';
import type { WarningHandler } from '../warnings.js';
import { ConfigReader, PRETRAINED_CONFIG_KEYS, checkModelKind } from './config.js';
import type { DiffusersModel, LoadOptions } from './model.js';
import type { ModelWeights } from './int8.js';
import { openModelWeights } from './int8.js';
import type { TextEncoderLayout } from './text-encoder.js';
import { FLOAT32_MIN, textEncoderCall } from './text-encoder.js';

/** The `hidden_act` values CLIP checkpoints use (of transformers' ACT2FN). */
const ACTIVATIONS = [
  'quick_gelu',
  'gelu',
  'gelu_new',
  'gelu_pytorch_tanh',
  'gelu_fast',
] as const satisfies readonly TransformersActivation[];
export type CLIPActivation = (typeof ACTIVATIONS)[number];

/** The two classes; both read a CLIPTextConfig and the weights under `text_model.`. */
export type CLIPTextClassName = 'CLIPTextModel' | 'CLIPTextModelWithProjection';
const ARCHITECTURES: readonly CLIPTextClassName[] = ['CLIPTextModel', 'CLIPTextModelWithProjection'];

/** Keys of CLIPTextConfig (and older files' `dropout`) that do not change the forward. */
const CLIP_TEXT_CONFIG_KEYS = ['attention_dropout', 'dropout', 'initializer_range', 'initializer_factor'];

export interface CLIPTextConfig {
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  /** Width of `text_embeds` (text_projection's output), read by the projection class only. */
  projectionDim: number;
  numHiddenLayers: number;
  numAttentionHeads: number;
  maxPositionEmbeddings: number;
  hiddenAct: CLIPActivation;
  layerNormEps: number;
  /**
   * Pooling position: 2 (configs written before transformers PR #24773, SD 1.x and SDXL) pools at
   * argmax(input_ids), which is the end-of-text token of the original 49408-token vocabulary; any
   * other id pools at its first occurrence.
   */
  eosTokenId: number;
  /** The int8 Linear modules of a folder in velodiff's int8 format (`quantization_config`). */
  int8Modules?: ReadonlySet<string>;
}

/**
 * Read and validate a transformers CLIPTextConfig (config.json of a `text_encoder/` folder), with
 * CLIPTextConfig's defaults for absent keys.
 */
export function parseCLIPTextConfig(
  raw: Record<string, unknown>,
  path: string,
  className: CLIPTextClassName = 'CLIPTextModel',
  onWarning?: WarningHandler,
): CLIPTextConfig {
  if (raw.model_type === 'clip') {
    throw new FileFormatError(
      `${path}: "model_type" is "clip", the config of a whole CLIPModel (text and vision towers); ` +
        `${className} loads a text encoder folder whose config.json has "model_type": "clip_text_model" ` +
        "(a diffusers pipeline's text_encoder/ or text_encoder_2/)",
      'CONFIG_CLASS',
      path,
    );
  }
  checkModelKind(raw, path, {
    className,
    description: 'a CLIP text config',
    modelTypes: ['clip_text_model'],
    architectures: ARCHITECTURES,
    modelTypeHint: () => 'Is this the folder of another text encoder (e.g. text_encoder_3/ holds T5)?',
  });
  const c = new ConfigReader(raw, path, className);
  c.accept(...CLIP_TEXT_CONFIG_KEYS, ...PRETRAINED_CONFIG_KEYS);
  const config: CLIPTextConfig = {
    vocabSize: c.integer('vocab_size', 49408, 1),
    hiddenSize: c.integer('hidden_size', 512, 1),
    intermediateSize: c.integer('intermediate_size', 2048, 1),
    projectionDim: c.integer('projection_dim', 512, 1),
    numHiddenLayers: c.integer('num_hidden_layers', 12, 0),
    numAttentionHeads: c.integer('num_attention_heads', 8, 1),
    maxPositionEmbeddings: c.integer('max_position_embeddings', 77, 1),
    hiddenAct: c.string('hidden_act', 'quick_gelu', ACTIVATIONS),
    layerNormEps: c.number('layer_norm_eps', 1e-5),
    eosTokenId: c.integer('eos_token_id', 49407, 0),
  };
  if (config.hiddenSize % config.numAttentionHeads !== 0) {
    throw new FileFormatError(
      `${path}: "hidden_size" ${config.hiddenSize} is not divisible by "num_attention_heads" ${config.numAttentionHeads}; ` +
        'CLIPAttention splits hidden_size into equal heads',
      'CONFIG_VALUE',
      path,
    );
  }
  // The pooling compares ids as float32, exact below 2^24 (CLIP's vocabulary has 49408 tokens).
  if (config.vocabSize > 2 ** 24) {
    throw new FileFormatError(
      `${path}: "vocab_size" ${config.vocabSize} exceeds 2^24, which the pooled output's float32 id comparison supports`,
      'CONFIG_UNSUPPORTED',
      path,
    );
  }
  if (!(config.layerNormEps >= 0)) {
    throw new FileFormatError(
      `${path}: "layer_norm_eps" is ${config.layerNormEps}; expected a number ≥ 0`,
      'CONFIG_VALUE',
      path,
    );
  }
  const int8Modules = c.int8Modules();
  if (int8Modules) config.int8Modules = int8Modules;
  c.finish(onWarning);
  return config;
}

export interface CLIPTextGraphOptions extends TextEncoderLayout {
  /** CLIPTextModelWithProjection: output `text_embeds` instead of `pooler_output`. */
  withProjection: boolean;
}

/**
 * Build the graph of CLIPTextModel (outputs `last_hidden_state` [B, S, hidden], `pooler_output`
 * [B, hidden]) or, with `withProjection`, CLIPTextModelWithProjection (`last_hidden_state`,
 * `text_embeds` [B, projection_dim]). Inputs: `input_ids` [B, S], optionally `attention_mask` [B, S].
 * With `outputHiddenStates`, `hidden_states.0` is the embeddings output and `hidden_states.i` the
 * output of layer i, before the final layer norm: the states clip-skip picks from.
 */
export function buildCLIPTextGraph(
  config: CLIPTextConfig,
  weights: TensorSource,
  o: CLIPTextGraphOptions,
  extras: { lora?: LoraProvider; int8?: Int8Options } = {},
): Graph {
  const g = new Graph(o.withProjection ? 'CLIPTextModelWithProjection' : 'CLIPTextModel');
  const inputIds = g.input('input_ids', o.idsDType, ['B', o.seqLength]);
  const mask = o.maskDType ? g.input('attention_mask', o.maskDType, ['B', o.seqLength]) : undefined;
  const root = Params.of(g, weights, { lora: extras.lora, int8: extras.int8 });
  const text = clipTextTransformer(root.child('text_model'), config, inputIds, mask);
  g.output('last_hidden_state', text.lastHiddenState);
  if (o.withProjection) {
    const projection = Linear(
      root.child('text_projection'),
      text.pooledOutput,
      config.hiddenSize,
      config.projectionDim,
      false,
    );
    g.output('text_embeds', projection);
  } else {
    g.output('pooler_output', text.pooledOutput);
  }
  if (o.outputHiddenStates) text.hiddenStates.forEach((t, i) => g.output(`hidden_states.${i}`, t));
  return g;
}

export interface CLIPTextOutputs {
  /** The embeddings output, then each layer's output (num_hidden_layers + 1 tensors [B, S, hidden]). */
  hiddenStates: Tensor[];
  /** final_layer_norm of the last layer's output [B, S, hidden]. */
  lastHiddenState: Tensor;
  /** lastHiddenState at the end-of-text position of each sequence [B, hidden]. */
  pooledOutput: Tensor;
}

/**
 * transformers' CLIPTextTransformer built into the graph of `p` (the `text_model` module) from
 * `inputIds` [B, S] and an optional padding `mask` [B, S] (1 = keep), which is combined with the
 * causal mask. A trainer calls it to feed a denoiser in the same graph.
 */
export function clipTextTransformer(
  p: Params,
  config: CLIPTextConfig,
  inputIds: Tensor,
  mask: Tensor | undefined,
): CLIPTextOutputs {
  const { hiddenSize } = config;
  const g = p.graph;
  const length = inputIds.shape[1];
  if (typeof length !== 'number') {
    throw new OptionError(
      `CLIPTextModel: the sequence length of input_ids must be known, got ${inputIds.toString()}`,
    );
  }
  if (length > config.maxPositionEmbeddings) {
    throw new OptionError(
      `${p.fullName('embeddings')}: sequence length ${length} exceeds max_position_embeddings ${config.maxPositionEmbeddings}; ` +
        "truncate the prompt to the tokenizer's model_max_length",
    );
  }

  const embeddings = p.child('embeddings');
  const tokenTable = embeddings.child('token_embedding').get('weight', [config.vocabSize, hiddenSize]);
  const positionTable = embeddings
    .child('position_embedding')
    .get('weight', [config.maxPositionEmbeddings, hiddenSize]);
  let hidden = embeddings.scope(() => {
    const positions = g.constant(
      BigInt64Array.from({ length }, (_, i) => BigInt(i)),
      'int64',
      [length],
    );
    return add(gather(tokenTable, inputIds, 0), gather(positionTable, positions, 0));
  });
  const hiddenStates: Tensor[] = [hidden];

  const attentionMask = p.scope(() => causalMask(g, length, mask));
  const layers = p.child('encoder').child('layers');
  for (let i = 0; i < config.numHiddenLayers; i++) {
    hidden = CLIPEncoderLayer(layers.child(i), hidden, attentionMask, config);
    hiddenStates.push(hidden);
  }
  const lastHiddenState = LayerNorm(p.child('final_layer_norm'), hidden, hiddenSize, {
    eps: config.layerNormEps,
  });
  const pooledOutput = p.scope(() => poolAtEndOfText(lastHiddenState, inputIds, config.eosTokenId));
  return { hiddenStates, lastHiddenState, pooledOutput };
}

/**
 * The additive mask [1 or B, 1, S, S]: finfo(float32).min above the diagonal (transformers'
 * `_create_4d_causal_attention_mask`), plus finfo.min at every key whose padding mask is not 1
 * (`_prepare_4d_attention_mask`). Where both apply the sum is −inf, as in transformers' fp32 run.
 */
function causalMask(g: Graph, length: number, mask: Tensor | undefined): Tensor {
  const causal = new Float32Array(length * length);
  for (let q = 0; q < length; q++) causal.fill(FLOAT32_MIN, q * length + q + 1, (q + 1) * length);
  const causalTensor = g.constant(causal, 'float32', [1, 1, length, length]);
  if (!mask) return causalTensor;
  const dropped = cast(not(equal(cast(mask, 'float32'), 1)), 'float32');
  return add(causalTensor, reshape(mul(dropped, FLOAT32_MIN), ['B', 1, 1, length]));
}

/**
 * CLIPTextTransformer's pooled output: the row of `lastHidden` [B, S, D] at argmax(input_ids) when
 * eos_token_id is 2, else at the first position of eos_token_id (position 0 when a sequence has
 * none, as torch's argmax of all zeros). Argmax is composed as "the first position equal to the
 * row's maximum" and the row is picked by a one-hot product, which is exact.
 */
function poolAtEndOfText(lastHidden: Tensor, inputIds: Tensor, eosTokenId: number): Tensor {
  // Token ids are below vocab_size ≤ 2^24 (parseCLIPTextConfig), so float32 holds them exactly.
  const score = eosTokenId === 2 ? cast(inputIds, 'float32') : cast(equal(inputIds, eosTokenId), 'float32');
  const isTop = cast(equal(score, max(score, 1, true)), 'float32');
  const firstTop = mul(isTop, cast(equal(cumsum(isTop, 1), 1), 'float32'));
  return sum(mul(lastHidden, unsqueeze(firstTop, 2)), 1);
}

/** CLIPEncoderLayer: pre-norm self-attention and MLP, each with a residual. */
function CLIPEncoderLayer(p: Params, x: Tensor, mask: Tensor, c: CLIPTextConfig): Tensor {
  const eps = c.layerNormEps;
  const normed = LayerNorm(p.child('layer_norm1'), x, c.hiddenSize, { eps });
  const h = add(x, CLIPAttention(p.child('self_attn'), normed, mask, c));
  const normed2 = LayerNorm(p.child('layer_norm2'), h, c.hiddenSize, { eps });
  return add(h, CLIPMLP(p.child('mlp'), normed2, c));
}

/** CLIPAttention: q_proj, k_proj, v_proj (with biases), scaled dot-product attention, out_proj. */
function CLIPAttention(p: Params, x: Tensor, mask: Tensor, c: CLIPTextConfig): Tensor {
  const d = c.hiddenSize;
  const q = Linear(p.child('q_proj'), x, d, d);
  const k = Linear(p.child('k_proj'), x, d, d);
  const v = Linear(p.child('v_proj'), x, d, d);
  const context = p.scope(() => attention(q, k, v, { numHeads: c.numAttentionHeads, mask }));
  return Linear(p.child('out_proj'), context, d, d);
}

/** CLIPMLP: fc1, the activation, fc2. */
function CLIPMLP(p: Params, x: Tensor, c: CLIPTextConfig): Tensor {
  const inner = Linear(p.child('fc1'), x, c.hiddenSize, c.intermediateSize);
  return Linear(
    p.child('fc2'),
    p.scope(() => transformersActivation(inner, c.hiddenAct)),
    c.intermediateSize,
    c.hiddenSize,
  );
}

/** `text_model.final_layer_norm` alone, applied to hidden states [B, S, hidden] given as input. */
function buildFinalLayerNormGraph(config: CLIPTextConfig, weights: TensorSource, seqLength: number): Graph {
  const g = new Graph('CLIPTextModel.final_layer_norm');
  const x = g.input('hidden_states', 'float32', ['B', seqLength, config.hiddenSize]);
  const p = Params.of(g, weights).child('text_model').child('final_layer_norm');
  g.output('last_hidden_state', LayerNorm(p, x, config.hiddenSize, { eps: config.layerNormEps }));
  return g;
}

/** The shared body of CLIPTextModel and CLIPTextModelWithProjection (which differ in one output). */
class CLIPTextModelBase implements DiffusersModel {
  readonly methods: readonly string[] = [];
  /** LoRA adapters on the encoder's linears (diffusers' load_lora_into_text_encoder). */
  readonly adapters = new AdapterSet();
  private readonly runnable: RunnableModel<CLIPTextGraphOptions>;
  private readonly finalNorm: RunnableModel<{ seqLength: number }>;
  /** The checkpoint's tensors (what LoRA modules resolve against). */
  readonly weights: WeightStore;

  protected constructor(
    readonly className: CLIPTextClassName,
    readonly dir: string,
    readonly config: CLIPTextConfig,
    private readonly loaded: ModelWeights,
    runtime: Runtime,
  ) {
    const adapters = this.adapters;
    const weights = loaded.store;
    this.weights = weights;
    this.runnable = new RunnableModel<CLIPTextGraphOptions>({
      className,
      dir,
      runtime,
      build: (layout) =>
        buildCLIPTextGraph(config, loaded.source, layout, {
          lora: adapters.loaded.length > 0 ? adapters : undefined,
          int8: loaded.int8,
        }),
      key: (layout) => JSON.stringify([layout, adapters.graphKey]),
    });
    this.finalNorm = new RunnableModel<{ seqLength: number }>({
      className: 'CLIPTextModel.final_layer_norm',
      dir,
      runtime,
      build: ({ seqLength }) => buildFinalLayerNormGraph(config, weights, seqLength),
    });
  }

  /** The Linear modules that run in int8 (a velodiff int8 folder, or `quantize: 'int8'`); undefined when float. */
  get int8Modules(): ReadonlySet<string> | undefined {
    return this.loaded.int8?.modules;
  }

  /**
   * Load a LoRA (diffusers/PEFT file or folder, kohya file) onto this encoder: the file's keys of
   * `component` (default: `text_encoder_2` for a folder of that name, else `text_encoder`), or its
   * keys without a component prefix. It becomes active with weight 1, unfused.
   */
  loadLoraWeights(
    path: string,
    options: { adapterName?: string; component?: Exclude<LoraComponent, 'denoiser'> } = {},
  ): Promise<LoadedLora> {
    const component =
      options.component ?? (basename(this.dir) === 'text_encoder_2' ? 'text_encoder_2' : 'text_encoder');
    return this.adapters.load(path, {
      adapterName: options.adapterName,
      modelParameters: this.weights,
      component,
    });
  }

  /** Config and checked weights of the folder `dir`, as `className` reads them. */
  protected static async open(
    dir: string,
    className: CLIPTextClassName,
    options: LoadOptions,
  ): Promise<{ dir: string; config: CLIPTextConfig; weights: ModelWeights }> {
    const abs = resolve(dir);
    const config = parseCLIPTextConfig(
      await readConfig(abs),
      join(abs, 'config.json'),
      className,
      options.onWarning,
    );
    const weights = await openModelWeights(abs, {
      className,
      folderInt8: config.int8Modules,
      quantize: options.quantize,
      userKeepFloat: options.keepFloat,
      // The mask input and one token read every weight of the model.
      build: (source, int8) =>
        buildCLIPTextGraph(
          config,
          source,
          {
            seqLength: 1,
            idsDType: 'int64',
            maskDType: 'int64',
            outputHiddenStates: false,
            withProjection: className === 'CLIPTextModelWithProjection',
          },
          { int8 },
        ),
      // Older checkpoints (SD 1.x) saved the position_ids buffer, which transformers ignores.
      ignoreUnused: (name) => name === 'text_model.embeddings.position_ids',
      onWarning: options.onWarning,
    });
    return { dir: abs, config, weights };
  }

  /** The graph for one input layout, compiled once. */
  compile(o: Omit<CLIPTextGraphOptions, 'withProjection'>): Promise<CompiledGraph> {
    return this.runnable.compile(this.layout(o));
  }

  private layout(o: Omit<CLIPTextGraphOptions, 'withProjection'>): CLIPTextGraphOptions {
    return { ...o, withProjection: this.className === 'CLIPTextModelWithProjection' };
  }

  /**
   * transformers' `forward(input_ids, attention_mask=None)`: `input_ids` [B, S] (int64 or int32,
   * each in [0, vocab_size), S ≤ max_position_embeddings), `attention_mask` [B, S] (1 = attend;
   * int64, int32, float32 or bool), combined with the causal mask. kwargs: `output_hidden_states:
   * true` adds `hidden_states.0` … `hidden_states.{num_hidden_layers}`.
   */
  async forward(
    inputs: Record<string, HostTensor>,
    options: { method?: string; kwargs?: Record<string, unknown> } = {},
  ): Promise<Record<string, HostTensor>> {
    const call = textEncoderCall(this.runnable, inputs, options, {
      vocabSize: this.config.vocabSize,
      maxLength: this.config.maxPositionEmbeddings,
      encoder: 'the CLIP text encoder',
    });
    const result = await this.runnable.run(this.layout(call.layout), call.feeds, {
      // Unfused LoRA adapters: their weights are inputs, so switching them needs no new graph.
      graphFeeds: (compiled) => this.adapters.scaleFeeds(compiled.inputs),
    });
    return result.host;
  }

  /**
   * `text_model.final_layer_norm(hidden_states)` for hidden_states [B, S, hidden]: Stable Diffusion
   * 1.x/2.x apply it to an earlier layer's output for clip-skip (diffusers' `encode_prompt`:
   * `text_encoder.text_model.final_layer_norm(hidden_states[-(clip_skip + 1)])`).
   */
  async finalLayerNorm(hiddenStates: HostTensor): Promise<HostTensor> {
    const dims = this.finalNorm.checkInputs(
      { hidden_states: hiddenStates },
      { hidden_states: { dtypes: ['float32'], shape: ['B', 'S', hiddenStates.shape[2]] } },
    );
    const out = await this.finalNorm.run({ seqLength: dims.S }, { hidden_states: hiddenStates });
    return out.host.last_hidden_state;
  }

  async close(): Promise<void> {
    this.runnable.clear();
    this.finalNorm.clear();
    await this.loaded.close();
  }
}

/** CLIP text encoder loaded from a transformers folder (`config.json` + `model.safetensors`). */
export class CLIPTextModel extends CLIPTextModelBase {
  static async fromPretrained(dir: string, options: LoadOptions): Promise<CLIPTextModel> {
    const opened = await CLIPTextModelBase.open(dir, 'CLIPTextModel', options);
    return new CLIPTextModel('CLIPTextModel', opened.dir, opened.config, opened.weights, options.runtime);
  }
}

/** CLIP text encoder with `text_projection` (no bias): outputs `text_embeds` instead of `pooler_output`. */
export class CLIPTextModelWithProjection extends CLIPTextModelBase {
  static async fromPretrained(dir: string, options: LoadOptions): Promise<CLIPTextModelWithProjection> {
    const opened = await CLIPTextModelBase.open(dir, 'CLIPTextModelWithProjection', options);
    return new CLIPTextModelWithProjection(
      'CLIPTextModelWithProjection',
      opened.dir,
      opened.config,
      opened.weights,
      options.runtime,
    );
  }
}
