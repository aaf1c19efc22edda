/**
 * transformers' `T5EncoderModel`: the text encoder of PixArt-α/Σ, SD3 (`text_encoder_3`) and FLUX
 * (`text_encoder_2`). Both layouts are supported: T5 v1.1 (`feed_forward_proj: "gated-gelu"`,
 * `DenseReluDense.wi_0/wi_1/wo`) and the original T5 (`"relu"`, `DenseReluDense.wi/wo`). Parameter
 * names are the checkpoint's (`encoder.block.3.layer.0.SelfAttention.q`, …).
 */
import { join, resolve } from 'node:path';

import { FileFormatError, OptionError, WeightError } from '../errors.js';
import type { Tensor } from '../graph/graph.js';
import { Graph } from '../graph/graph.js';
import { add, attention, cast, gather, mul, reshape, sub, transpose, unsqueeze } from '../graph/ops/index.js';
import { readConfig } from '../io/diffusers.js';
import { isPlainObject } from '../io/json.js';
import type { TransformersActivation } from '../nn/activations.js';
import { transformersActivation } from '../nn/activations.js';
import { Linear, RMSNorm } from '../nn/layers.js';
import type { Int8Options } from '../nn/params.js';
import { Params } from '../nn/params.js';
import type { HostTensor } from '../runtime/host-tensor.js';
import type { CompiledGraph, Runtime } from '../runtime/runtime.js';
import { RunnableModel } from '../runtime/runnable-model.js';
import { ConfigReader, PRETRAINED_CONFIG_KEYS, checkModelKind } from './config.js';
import type { DiffusersModel, LoadOptions } from './model.js';
import type { ModelWeights } from './int8.js';
import { openModelWeights } from './int8.js';
import type { TextEncoderLayout } from './text-encoder.js';
import { FLOAT32_MIN, textEncoderCall } from './text-encoder.js';
import type { TensorSource } from '../nn/weights.js';
import type { WarningHandler } from '../warnings.js';

/** The `dense_act_fn` values T5 checkpoints use (of transformers' ACT2FN). */
const ACTIVATIONS = [
  'relu',
  'gelu',
  'gelu_new',
  'gelu_pytorch_tanh',
  'gelu_fast',
  'silu',
  'swish',
] as const satisfies readonly TransformersActivation[];
export type T5Activation = (typeof ACTIVATIONS)[number];

/** Checkpoint classes whose weights hold a T5 encoder under `encoder.` with `shared.weight`. */
const ARCHITECTURES = [
  'T5EncoderModel',
  'T5Model',
  'T5ForConditionalGeneration',
  'MT5EncoderModel',
  'MT5Model',
  'MT5ForConditionalGeneration',
];

/** Keys of T5Config that do not change the encoder's math: decoder, training and generation settings. */
const T5_CONFIG_KEYS = [
  'num_decoder_layers',
  'dropout_rate',
  'classifier_dropout',
  'initializer_factor',
  'use_cache',
  'n_positions',
  'output_past',
];

export interface T5EncoderConfig {
  vocabSize: number;
  dModel: number;
  /** Per-head size of q, k, v. */
  dKv: number;
  dFf: number;
  numLayers: number;
  numHeads: number;
  relativeAttentionNumBuckets: number;
  relativeAttentionMaxDistance: number;
  layerNormEpsilon: number;
  /** T5 v1.1 (`gated-…`): act(wi_0·x) ⊙ (wi_1·x); original T5: act(wi·x). */
  isGatedAct: boolean;
  denseActFn: T5Activation;
  /** numHeads × dKv */
  innerDim: number;
  /** The int8 Linear modules of a folder in velodiff's int8 format (`quantization_config`). */
  int8Modules?: ReadonlySet<string>;
}

/**
 * Read and validate a transformers T5 config.json, with T5Config's defaults for absent keys. As in
 * transformers, `dense_act_fn` and `is_gated_act` come from `feed_forward_proj` unless the file
 * sets them itself (PretrainedConfig applies saved keys after T5Config derives them).
 */
export function parseT5EncoderConfig(
  raw: Record<string, unknown>,
  path: string,
  onWarning?: WarningHandler,
): T5EncoderConfig {
  checkModelKind(raw, path, {
    className: 'T5EncoderModel',
    description: 'a T5 config',
    modelTypes: ['t5', 'mt5'],
    architectures: ARCHITECTURES,
    modelTypeHint: (modelType) =>
      modelType === 'umt5'
        ? 'UMT5 gives every layer its own relative attention bias, which this class does not build.'
        : 'Is this the folder of another text encoder (e.g. text_encoder/ instead of text_encoder_2/)?',
  });
  const c = new ConfigReader(raw, path, 'T5EncoderModel');
  c.accept(...T5_CONFIG_KEYS, ...PRETRAINED_CONFIG_KEYS);
  const feedForwardProj = c.string<string>('feed_forward_proj', 'relu');
  const parts = feedForwardProj.split('-');
  if ((parts.length > 1 && parts[0] !== 'gated') || parts.length > 2) {
    throw new FileFormatError(
      `${path}: "feed_forward_proj" is ${JSON.stringify(feedForwardProj)}; expected "{act}" or "gated-{act}", e.g. "relu" or "gated-gelu"`,
      'CONFIG_VALUE',
      path,
    );
  }
  // transformers maps "gated-gelu" to the tanh approximation for backward compatibility.
  const derivedAct = feedForwardProj === 'gated-gelu' ? 'gelu_new' : parts[parts.length - 1];
  const denseActFn = c.string('dense_act_fn', derivedAct as T5Activation);
  if (!ACTIVATIONS.includes(denseActFn)) {
    const key = raw.dense_act_fn === undefined ? 'feed_forward_proj' : 'dense_act_fn';
    throw new FileFormatError(
      `${path}: "${key}" gives the activation ${JSON.stringify(denseActFn)}; velodiff's T5EncoderModel supports ${ACTIVATIONS.join(', ')}`,
      'CONFIG_VALUE',
      path,
    );
  }
  const numHeads = c.integer('num_heads', 8, 1);
  const dKv = c.integer('d_kv', 64, 1);
  const config: T5EncoderConfig = {
    vocabSize: c.integer('vocab_size', 32128, 1),
    dModel: c.integer('d_model', 512, 1),
    dKv,
    dFf: c.integer('d_ff', 2048, 1),
    numLayers: c.integer('num_layers', 6, 1),
    numHeads,
    relativeAttentionNumBuckets: c.integer('relative_attention_num_buckets', 32, 4),
    relativeAttentionMaxDistance: c.integer('relative_attention_max_distance', 128, 1),
    layerNormEpsilon: c.number('layer_norm_epsilon', 1e-6),
    isGatedAct: c.boolean('is_gated_act', parts[0] === 'gated'),
    denseActFn,
    innerDim: numHeads * dKv,
  };
  if (!(config.layerNormEpsilon >= 0)) {
    throw new FileFormatError(
      `${path}: "layer_norm_epsilon" is ${config.layerNormEpsilon}; expected a number ≥ 0`,
      'CONFIG_VALUE',
      path,
    );
  }
  // The log-spaced buckets divide by log(max_distance / max_exact); it must be positive.
  const maxExact = Math.floor(Math.floor(config.relativeAttentionNumBuckets / 2) / 2);
  if (config.relativeAttentionMaxDistance <= maxExact) {
    throw new FileFormatError(
      `${path}: "relative_attention_max_distance" is ${config.relativeAttentionMaxDistance}; it must exceed ` +
        `${maxExact}, the exact-bucket range that relative_attention_num_buckets=${config.relativeAttentionNumBuckets} gives`,
      'CONFIG_VALUE',
      path,
    );
  }
  if (c.boolean('is_decoder', false)) {
    throw new FileFormatError(
      `${path}: "is_decoder" is true; T5EncoderModel is the bidirectional encoder stack`,
      'CONFIG_VALUE',
      path,
    );
  }
  // Pruned heads leave layers with fewer heads than num_heads, which this graph does not build.
  const pruned = c.get('pruned_heads');
  if (
    pruned !== undefined &&
    pruned !== null &&
    !(isPlainObject(pruned) && Object.keys(pruned).length === 0)
  ) {
    c.unsupported('pruned_heads', '{} (every layer with num_heads heads)');
  }
  const int8Modules = c.int8Modules();
  if (int8Modules) config.int8Modules = int8Modules;
  c.finish(onWarning);
  return config;
}

/**
 * T5's relative position bucket (Mesh TensorFlow `_relative_position_bucket`): exact buckets for
 * small distances, log-spaced ones up to `maxDistance`, one bucket beyond; bidirectional halves the
 * buckets between keys before and after the query. `relativePosition` is key − query. The
 * log-spaced part follows torch's float32 arithmetic and truncation so buckets agree at the
 * boundaries.
 */
export function relativePositionBucket(
  relativePosition: number,
  options: { bidirectional: boolean; numBuckets: number; maxDistance: number },
): number {
  let numBuckets = options.numBuckets;
  let bucket = 0;
  let distance: number;
  if (options.bidirectional) {
    numBuckets = Math.floor(numBuckets / 2);
    if (relativePosition > 0) bucket += numBuckets;
    distance = Math.abs(relativePosition);
  } else {
    distance = -Math.min(relativePosition, 0);
  }
  const maxExact = Math.floor(numBuckets / 2);
  if (distance < maxExact) return bucket + distance;
  const f32 = Math.fround;
  const logRatio = f32(Math.log(f32(distance / maxExact)));
  const scaled = f32(
    f32(logRatio / f32(Math.log(options.maxDistance / maxExact))) * f32(numBuckets - maxExact),
  );
  return bucket + Math.min(maxExact + Math.trunc(scaled), numBuckets - 1);
}

/** Buckets of every (query, key) pair of a length-`length` encoder sequence, row-major [Sq, Sk]. */
export function relativePositionBuckets(
  length: number,
  numBuckets: number,
  maxDistance: number,
): BigInt64Array {
  const out = new BigInt64Array(length * length);
  for (let q = 0; q < length; q++) {
    for (let k = 0; k < length; k++) {
      out[q * length + k] = BigInt(
        relativePositionBucket(k - q, { bidirectional: true, numBuckets, maxDistance }),
      );
    }
  }
  return out;
}

export type T5EncoderGraphOptions = TextEncoderLayout;

/**
 * Build the T5 encoder graph. Inputs: `input_ids` [B, S] and optionally `attention_mask` [B, S].
 * Outputs: `last_hidden_state` [B, S, d_model]; with `outputHiddenStates`, `hidden_states.0` (the
 * embeddings), `hidden_states.i` (the input of block i) and `hidden_states.{numLayers}` (after
 * final_layer_norm, equal to last_hidden_state) — transformers' tuple, which leaves out the last
 * block's output before the final norm.
 */
export function buildT5EncoderGraph(
  config: T5EncoderConfig,
  weights: TensorSource,
  o: T5EncoderGraphOptions,
  int8?: Int8Options,
): Graph {
  const g = new Graph('T5EncoderModel');
  const inputIds = g.input('input_ids', o.idsDType, ['B', o.seqLength]);
  const mask = o.maskDType ? g.input('attention_mask', o.maskDType, ['B', o.seqLength]) : undefined;
  const hiddenStates = t5Encoder(Params.of(g, weights, { int8 }), config, inputIds, mask);
  g.output('last_hidden_state', hiddenStates[hiddenStates.length - 1]);
  if (o.outputHiddenStates) hiddenStates.forEach((t, i) => g.output(`hidden_states.${i}`, t));
  return g;
}

/**
 * The T5 encoder stack built into the graph of `root` from `inputIds` [B, S] (and an optional
 * `mask` [B, S], 1 = keep): transformers' hidden-states tuple, the last entry being
 * `last_hidden_state` [B, S, d_model]. `buildT5EncoderGraph` wraps it with graph inputs; a trainer
 * calls it to feed a denoiser in the same graph.
 */
export function t5Encoder(
  root: Params,
  config: T5EncoderConfig,
  inputIds: Tensor,
  mask: Tensor | undefined,
): Tensor[] {
  const { dModel, numHeads } = config;
  const g = root.graph;
  const length = inputIds.shape[1];
  if (typeof length !== 'number') {
    throw new OptionError(
      `T5EncoderModel: the sequence length of input_ids must be known, got ${inputIds.toString()}`,
    );
  }

  // `shared` and `encoder.embed_tokens` are tied; transformers saves whichever it keeps.
  const embedName =
    root.has('shared.weight') || !root.has('encoder.embed_tokens.weight')
      ? 'shared.weight'
      : 'encoder.embed_tokens.weight';
  const table = root.get(embedName, [config.vocabSize, dModel]);
  let hidden = g.scope(root.fullName('encoder.embed_tokens'), () => gather(table, inputIds, 0));
  const hiddenStates: Tensor[] = [hidden];

  const encoder = root.child('encoder');
  const blocks = encoder.child('block');
  // The first layer's relative position bias [1, H, S, S] is shared by every layer (T5Stack).
  const biasParams = blocks
    .child(0)
    .child('layer')
    .child(0)
    .child('SelfAttention')
    .child('relative_attention_bias');
  const biasTable = biasParams.get('weight', [config.relativeAttentionNumBuckets, numHeads]);
  let positionBias = biasParams.scope(() => {
    const buckets = g.constant(
      relativePositionBuckets(
        length,
        config.relativeAttentionNumBuckets,
        config.relativeAttentionMaxDistance,
      ),
      'int64',
      [length, length],
    );
    return unsqueeze(transpose(gather(biasTable, buckets, 0), [2, 0, 1]), 0);
  });
  if (mask) {
    // transformers: (1 − mask)·finfo(float32).min, added to the bias, so masked keys stay finite.
    const inverted = g.scope(root.fullName('attention_mask'), () =>
      reshape(mul(sub(1, cast(mask, 'float32')), FLOAT32_MIN), ['B', 1, 1, length]),
    );
    positionBias = add(positionBias, inverted);
  }

  for (let i = 0; i < config.numLayers; i++) {
    const layer = blocks.child(i).child('layer');
    const selfAttention = layer.child(0);
    const normed = T5LayerNorm(selfAttention.child('layer_norm'), hidden, config);
    hidden = add(hidden, T5Attention(selfAttention.child('SelfAttention'), normed, positionBias, config));
    const feedForward = layer.child(1);
    const ffNormed = T5LayerNorm(feedForward.child('layer_norm'), hidden, config);
    hidden = add(hidden, T5DenseReluDense(feedForward.child('DenseReluDense'), ffNormed, config));
    if (i < config.numLayers - 1) hiddenStates.push(hidden);
  }
  hiddenStates.push(T5LayerNorm(encoder.child('final_layer_norm'), hidden, config));
  return hiddenStates;
}

/** T5LayerNorm: RMS norm with a weight, no mean subtraction and no bias (float32 throughout here). */
function T5LayerNorm(p: Params, x: Tensor, c: T5EncoderConfig): Tensor {
  return RMSNorm(p, x, c.dModel, { eps: c.layerNormEpsilon });
}

/** Self-attention with the shared position bias (+ mask) added to the scores. */
function T5Attention(p: Params, x: Tensor, positionBias: Tensor, c: T5EncoderConfig): Tensor {
  const q = Linear(p.child('q'), x, c.dModel, c.innerDim, false);
  const k = Linear(p.child('k'), x, c.dModel, c.innerDim, false);
  const v = Linear(p.child('v'), x, c.dModel, c.innerDim, false);
  // Mesh TensorFlow folds 1/√d_kv into the initialisation of q, so the scores are not scaled.
  const context = p.scope(() => attention(q, k, v, { numHeads: c.numHeads, scale: 1, mask: positionBias }));
  return Linear(p.child('o'), context, c.innerDim, c.dModel, false);
}

/** The feed-forward: gated (wi_0, wi_1, wo) for T5 v1.1, plain (wi, wo) for the original T5. */
function T5DenseReluDense(p: Params, x: Tensor, c: T5EncoderConfig): Tensor {
  const inner = c.isGatedAct
    ? p.scope(() =>
        mul(
          transformersActivation(Linear(p.child('wi_0'), x, c.dModel, c.dFf, false), c.denseActFn),
          Linear(p.child('wi_1'), x, c.dModel, c.dFf, false),
        ),
      )
    : p.scope(() => transformersActivation(Linear(p.child('wi'), x, c.dModel, c.dFf, false), c.denseActFn));
  return Linear(p.child('wo'), inner, c.dFf, c.dModel, false);
}

/** T5 text encoder loaded from a transformers folder (`config.json` + `model.safetensors`). */
export class T5EncoderModel implements DiffusersModel {
  readonly className = 'T5EncoderModel';
  readonly methods: readonly string[] = [];
  private readonly runnable: RunnableModel<T5EncoderGraphOptions>;

  private constructor(
    readonly dir: string,
    readonly config: T5EncoderConfig,
    private readonly loaded: ModelWeights,
    runtime: Runtime,
  ) {
    this.runnable = new RunnableModel<T5EncoderGraphOptions>({
      className: this.className,
      dir,
      runtime,
      build: (layout) => buildT5EncoderGraph(config, loaded.source, layout, loaded.int8),
    });
  }

  /** The Linear modules that run in int8 (a velodiff int8 folder, or `quantize: 'int8'`); undefined when float. */
  get int8Modules(): ReadonlySet<string> | undefined {
    return this.loaded.int8?.modules;
  }

  static async fromPretrained(dir: string, options: LoadOptions): Promise<T5EncoderModel> {
    const abs = resolve(dir);
    const config = parseT5EncoderConfig(await readConfig(abs), join(abs, 'config.json'), options.onWarning);
    const loaded = await openModelWeights(abs, {
      className: 'T5EncoderModel',
      folderInt8: config.int8Modules,
      quantize: options.quantize,
      userKeepFloat: options.keepFloat,
      build: (source, int8, store) => {
        if (!source.has('shared.weight') && !source.has('encoder.embed_tokens.weight')) {
          throw new WeightError(
            `Tensor 'shared.weight' (or its tied copy 'encoder.embed_tokens.weight') is not in the weights of ${abs} ` +
              `(from ${store.sourcePath}); the token embedding of T5EncoderModel is missing`,
            'WEIGHT_MISSING',
          );
        }
        // The mask input and one token read every weight of the encoder.
        buildT5EncoderGraph(
          config,
          source,
          { seqLength: 1, idsDType: 'int64', maskDType: 'int64', outputHiddenStates: false },
          int8,
        );
      },
      // transformers' T5EncoderModel: the embedding copy is tied to `shared`, and a full T5
      // checkpoint's decoder is ignored (_keys_to_ignore_on_load_unexpected).
      ignoreUnused: (name) => name === 'encoder.embed_tokens.weight' || name.startsWith('decoder.'),
      onWarning: options.onWarning,
    });
    return new T5EncoderModel(abs, config, loaded, options.runtime);
  }

  /** The graph for one input layout, compiled once. */
  compile(o: T5EncoderGraphOptions): Promise<CompiledGraph> {
    return this.runnable.compile(o);
  }

  /**
   * transformers' `T5EncoderModel.forward(input_ids, attention_mask=None)`: `input_ids` [B, S]
   * (int64 or int32, each in [0, vocab_size)), `attention_mask` [B, S] (1 = attend; int64, int32,
   * float32 or bool). kwargs: `output_hidden_states: true` adds `hidden_states.0` …
   * `hidden_states.{num_layers}`. Masked positions still get outputs, as in transformers.
   */
  async forward(
    inputs: Record<string, HostTensor>,
    options: { method?: string; kwargs?: Record<string, unknown> } = {},
  ): Promise<Record<string, HostTensor>> {
    const { layout, feeds } = textEncoderCall(this.runnable, inputs, options, {
      vocabSize: this.config.vocabSize,
      encoder: 'the T5 encoder',
    });
    const result = await this.runnable.run(layout, feeds);
    return result.host;
  }

  async close(): Promise<void> {
    this.runnable.clear();
    await this.loaded.close();
  }
}
