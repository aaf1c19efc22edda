/**
 * transformers' `CLIPTextModel` (SD 1.x `text_encoder`, SDXL/SD3 `text_encoder`) and
 * `CLIPTextModelWithProjection` (SDXL `text_encoder_2`, SD3 `text_encoder`/`text_encoder_2`):
 * token + position embeddings, pre-norm causal self-attention layers, a final layer norm, the
 * state at the end-of-text token as `pooler_output`, and for the projection class `text_embeds`.
 * Parameter names are the checkpoint's (`text_model.encoder.layers.3.self_attn.q_proj`, …).
 */
import { join, resolve } from 'node:path';

import { FileFormatError, OptionError, RuntimeError } from '../errors.js';
import type { Tensor } from '../graph/graph.js';
import { Graph } from '../graph/graph.js';
import { formatShape } from '../graph/shape.js';
import {
  add,
  attention,
  cast,
  cumsum,
  equal,
  gather,
  gelu,
  max,
  mul,
  not,
  reshape,
  sigmoid,
  sum,
  unsqueeze,
} from '../graph/ops/index.js';
import type { WeightStore } from '../io/diffusers.js';
import { readConfig } from '../io/diffusers.js';
import { describeJson } from '../io/json.js';
import { LayerNorm, Linear } from '../nn/layers.js';
import { Params } from '../nn/params.js';
import type { TensorSource } from '../nn/weights.js';
import type { HostTensor } from '../runtime/host-tensor.js';
import type { CompiledGraph, Runtime } from '../runtime/runtime.js';
import { RunnableModel } from '../runtime/runnable-model.js';
import type { WarningHandler } from '../warnings.js';
import { ConfigReader } from './config.js';
import type { DiffusersModel, LoadOptions } from './model.js';
import { openCheckedWeights } from './model.js';
import { FLOAT32_MIN } from './t5-encoder.js';

/** Activations transformers' ACT2FN maps `hidden_act` to, for the ones CLIP checkpoints use. */
const ACTIVATIONS = ['quick_gelu', 'gelu', 'gelu_new', 'gelu_pytorch_tanh', 'gelu_fast'] as const;
export type CLIPActivation = (typeof ACTIVATIONS)[number];

/** The two classes; both read a CLIPTextConfig and the weights under `text_model.`. */
export type CLIPTextClassName = 'CLIPTextModel' | 'CLIPTextModelWithProjection';
const ARCHITECTURES: readonly CLIPTextClassName[] = ['CLIPTextModel', 'CLIPTextModelWithProjection'];

/**
 * Keys of CLIPTextConfig and of transformers' PretrainedConfig that do not change the text
 * encoder's forward: dropout, initialisation, generation and bookkeeping settings.
 */
const HARMLESS_KEYS = [
  // CLIPTextConfig (and older files' `dropout`)
  'attention_dropout',
  'dropout',
  'initializer_range',
  'initializer_factor',
  'pad_token_id',
  'bos_token_id',
  // PretrainedConfig
  'architectures',
  'model_type',
  'transformers_version',
  'torch_dtype',
  'dtype',
  'use_bfloat16',
  'tie_word_embeddings',
  'tie_encoder_decoder',
  'is_encoder_decoder',
  'is_decoder',
  'add_cross_attention',
  'cross_attention_hidden_size',
  'chunk_size_feed_forward',
  'return_dict',
  'output_hidden_states',
  'output_attentions',
  'torchscript',
  'tf_legacy_loss',
  'gradient_checkpointing',
  'sep_token_id',
  'decoder_start_token_id',
  'task_specific_params',
  'finetuning_task',
  'id2label',
  'label2id',
  'num_labels',
  'problem_type',
  'tokenizer_class',
  'prefix',
  'pruned_heads',
  'max_length',
  'min_length',
  'do_sample',
  'early_stopping',
  'num_beams',
  'num_beam_groups',
  'diversity_penalty',
  'temperature',
  'top_k',
  'top_p',
  'typical_p',
  'repetition_penalty',
  'length_penalty',
  'no_repeat_ngram_size',
  'encoder_no_repeat_ngram_size',
  'bad_words_ids',
  'num_return_sequences',
  'output_scores',
  'return_dict_in_generate',
  'forced_bos_token_id',
  'forced_eos_token_id',
  'remove_invalid_values',
  'exponential_decay_length_penalty',
  'suppress_tokens',
  'begin_suppress_tokens',
];

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
  checkModelKind(raw, path, className);
  const c = new ConfigReader(raw, path, className);
  c.accept(...HARMLESS_KEYS);
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
  c.finish(onWarning);
  return config;
}

/** `model_type` and `architectures` must say CLIP's text model. */
function checkModelKind(raw: Record<string, unknown>, path: string, className: CLIPTextClassName): void {
  const modelType = raw.model_type;
  const architectures = raw.architectures;
  if (modelType === 'clip') {
    throw new FileFormatError(
      `${path}: "model_type" is "clip", the config of a whole CLIPModel (text and vision towers); ` +
        `${className} loads a text encoder folder whose config.json has "model_type": "clip_text_model" ` +
        "(a diffusers pipeline's text_encoder/ or text_encoder_2/)",
      'CONFIG_CLASS',
      path,
    );
  }
  if (modelType !== undefined && modelType !== 'clip_text_model') {
    throw new FileFormatError(
      `${path}: "model_type" is ${describeJson(modelType)}; expected "clip_text_model" for ${className}. ` +
        'Is this the folder of another text encoder (e.g. text_encoder_3/ holds T5)?',
      'CONFIG_CLASS',
      path,
    );
  }
  if (architectures !== undefined) {
    if (!Array.isArray(architectures) || architectures.some((a) => typeof a !== 'string')) {
      throw new FileFormatError(
        `${path}: "architectures" is ${describeJson(architectures)}; expected a list of class names`,
        'CONFIG_VALUE',
        path,
      );
    }
    if (!architectures.some((a) => ARCHITECTURES.includes(a as CLIPTextClassName))) {
      throw new FileFormatError(
        `${path}: "architectures" is ${describeJson(architectures)}; expected one of ${ARCHITECTURES.join(', ')}`,
        'CONFIG_CLASS',
        path,
      );
    }
  }
  if (modelType === undefined && architectures === undefined) {
    throw new FileFormatError(
      `${path}: neither "model_type" nor "architectures" is set, so nothing says this is a CLIP text config; ` +
        'expected "model_type": "clip_text_model" as transformers writes it',
      'CONFIG_CLASS',
      path,
    );
  }
}

export interface CLIPTextGraphOptions {
  /** Sequence length S, at most max_position_embeddings. */
  seqLength: number;
  /** Element type of `input_ids`. */
  idsDType: 'int64' | 'int32';
  /** Element type of `attention_mask` (1 = keep), or undefined when there is none. */
  maskDType?: 'int64' | 'int32' | 'float32' | 'bool';
  /** Also output `hidden_states.0` … `hidden_states.{num_hidden_layers}` as transformers numbers them. */
  outputHiddenStates: boolean;
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
): Graph {
  const g = new Graph(o.withProjection ? 'CLIPTextModelWithProjection' : 'CLIPTextModel');
  const inputIds = g.input('input_ids', o.idsDType, ['B', o.seqLength]);
  const mask = o.maskDType ? g.input('attention_mask', o.maskDType, ['B', o.seqLength]) : undefined;
  const root = Params.of(g, weights);
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
    p.scope(() => activation(inner, c.hiddenAct)),
    c.intermediateSize,
    c.hiddenSize,
  );
}

function activation(x: Tensor, name: CLIPActivation): Tensor {
  switch (name) {
    // OpenAI CLIP's x·σ(1.702·x) (transformers' QuickGELUActivation).
    case 'quick_gelu':
      return mul(x, sigmoid(mul(x, 1.702)));
    case 'gelu':
      return gelu(x, 'none');
    // gelu_new, gelu_pytorch_tanh and gelu_fast are all 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))).
    case 'gelu_new':
    case 'gelu_pytorch_tanh':
    case 'gelu_fast':
      return gelu(x, 'tanh');
  }
}

const KWARGS = ['output_hidden_states', 'return_dict'];
/** transformers' attention masks: 1 = attend, in any of these dtypes. */
const MASK_DTYPES = ['int64', 'int32', 'float32', 'bool'] as const;

/** The shared body of CLIPTextModel and CLIPTextModelWithProjection (which differ in one output). */
class CLIPTextModelBase implements DiffusersModel {
  readonly methods: readonly string[] = [];
  private readonly runnable: RunnableModel<CLIPTextGraphOptions>;

  protected constructor(
    readonly className: CLIPTextClassName,
    readonly dir: string,
    readonly config: CLIPTextConfig,
    private readonly weights: WeightStore,
    runtime: Runtime,
  ) {
    this.runnable = new RunnableModel<CLIPTextGraphOptions>({
      className,
      dir,
      runtime,
      build: (layout) => buildCLIPTextGraph(config, weights, layout),
    });
  }

  /** Config and checked weights of the folder `dir`, as `className` reads them. */
  protected static async open(
    dir: string,
    className: CLIPTextClassName,
    options: LoadOptions,
  ): Promise<{ dir: string; config: CLIPTextConfig; weights: WeightStore }> {
    const abs = resolve(dir);
    const config = parseCLIPTextConfig(
      await readConfig(abs),
      join(abs, 'config.json'),
      className,
      options.onWarning,
    );
    const weights = await openCheckedWeights(abs, {
      className,
      // The mask input and one token read every weight of the model.
      build: (source) =>
        buildCLIPTextGraph(config, source, {
          seqLength: 1,
          idsDType: 'int64',
          maskDType: 'int64',
          outputHiddenStates: false,
          withProjection: className === 'CLIPTextModelWithProjection',
        }),
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
    this.runnable.checkMethod(options.method, ['forward']);
    const kwargs = options.kwargs ?? {};
    this.runnable.checkKwargs(kwargs, KWARGS);
    const dims = this.runnable.checkInputs(inputs, {
      input_ids: { dtypes: ['int64', 'int32'], shape: ['B', 'S'] },
      attention_mask: { dtypes: MASK_DTYPES, shape: ['B', 'S'], optional: true },
    });
    const ids = inputs.input_ids;
    const maxLength = this.config.maxPositionEmbeddings;
    if (dims.S < 1 || dims.S > maxLength) {
      throw this.runnable.inputError(
        'input_ids',
        `expected 1 to ${maxLength} tokens (max_position_embeddings), got ${formatShape(ids.shape)}; ` +
          "truncate the prompt to the tokenizer's model_max_length",
      );
    }
    checkTokenIds(ids, this.config.vocabSize, this.dir);
    const mask = inputs.attention_mask;
    const layout = this.layout({
      seqLength: dims.S,
      idsDType: ids.dtype as CLIPTextGraphOptions['idsDType'],
      ...(mask ? { maskDType: mask.dtype as CLIPTextGraphOptions['maskDType'] } : {}),
      outputHiddenStates: kwargs.output_hidden_states === true,
    });
    const result = await this.runnable.run(
      layout,
      mask ? { input_ids: ids, attention_mask: mask } : { input_ids: ids },
    );
    return result.host;
  }

  async close(): Promise<void> {
    this.runnable.clear();
    await this.weights.close();
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

/** torch's embedding rejects ids outside the table; ORT's Gather would read negative ids from the end. */
function checkTokenIds(ids: HostTensor, vocabSize: number, dir: string): void {
  const data = ids.data;
  for (let i = 0; i < data.length; i++) {
    const id = Number(data[i]);
    if (id >= 0 && id < vocabSize) continue;
    const seq = ids.shape[1];
    throw new RuntimeError(
      `input_ids[${Math.floor(i / seq)}, ${i % seq}] is ${id}, outside the vocabulary [0, ${vocabSize}) of the CLIP text encoder in ${dir}; ` +
        'the ids come from a tokenizer with a larger vocabulary than this model (vocab_size in config.json)',
      'INPUT_RANGE',
    );
  }
}
