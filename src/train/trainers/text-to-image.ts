/**
 * The text-to-image trainer: a PixArt-α pipeline (PixArtTransformer2DModel + T5EncoderModel) trained
 * from scratch on an image–text data set, in the latent space of a frozen, already trained VAE.
 *
 * - Text: a T5 Unigram tokenizer built from the training captions (src/tokenizers/build-t5-tokenizer.ts),
 *   and a small T5 encoder trained jointly with the denoiser: both parameter sets are inputs of one
 *   TrainStep graph, T5 → PixArt → loss, so the caption embedding learns what the denoiser needs.
 *   Prompts are lower-cased and stripped as PixArtAlphaPipeline does (`_text_preprocessing`).
 * - Latents: the data set encoded once to the VAE posterior's mean and std (src/train/latent-cache.ts);
 *   each step draws z = (mean + std·ε)·scaling_factor, as diffusers' training scripts do with
 *   `latent_dist.sample() * vae.config.scaling_factor`.
 * - Objective: DDPM with PixArt-α's schedule (linear β 1e-4…0.02, 1000 steps), ε-prediction,
 *   timesteps uniform (or logit-normal: `model.timestepSampling`), min-SNR-γ weights
 *   (src/train/min-snr.ts), caption dropout by the DataLoader (an empty caption: what the pipeline
 *   encodes as its negative prompt for classifier-free guidance).
 *   Padded caption tokens are masked in T5 and in PixArt's cross-attention as the pipeline masks them,
 *   so the encoder's output for a prompt does not depend on the padded length.
 * - Output: a diffusers PixArtAlphaPipeline folder that diffusers and velodiff load unchanged, and
 *   that a later run can start from (`init.pipeline`: readPixArtPipelineWeights).
 */
import { mkdir, mkdtemp, rename, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';

import { FileFormatError, OptionError, WeightError } from '../../errors.js';
import type { Tensor } from '../../graph/graph.js';
import { Graph } from '../../graph/graph.js';
import { mean, mul, sub } from '../../graph/ops/index.js';
import { readJsonFile, readModelIndex, WeightStore } from '../../io/diffusers.js';
import { readConfig } from '../../io/diffusers.js';
import { isPlainObject } from '../../io/json.js';
import { imagesToRgb } from '../../io/png.js';
import {
  bf16ToF32,
  toFloat32 as bytesToFloat32,
  f16ToF32,
  f32ToBf16,
  f32ToF16,
  type SafetensorsDtype,
} from '../../io/dtypes.js';
import type { PixArtTransformerConfig } from '../../models/pixart-transformer.js';
import {
  parsePixArtConfig,
  pixArtPositionEmbedding,
  pixArtTransformer,
} from '../../models/pixart-transformer.js';
import type { T5EncoderConfig } from '../../models/t5-encoder.js';
import { parseT5EncoderConfig, t5Encoder } from '../../models/t5-encoder.js';
import { Params } from '../../nn/params.js';
import type { ParameterInputs, TensorSource } from '../../nn/weights.js';
import { DiffusionPipeline, PixArtPipeline } from '../../pipelines/index.js';
import type { PixArtRunOptions } from '../../pipelines/pixart.js';
import { TorchGenerator } from '../../random/torch-generator.js';
import type { ModelConfig } from '../../io/diffusers.js';
import type { HostTensor } from '../../runtime/host-tensor.js';
import { hostTensor } from '../../runtime/host-tensor.js';
import type { Runtime } from '../../runtime/runtime.js';
import { logitNormalTimesteps, noisedLatents, uniformTimesteps, velocity } from '../noising.js';
import { DPMSolverMultistepScheduler } from '../../schedulers/dpm-solver-multistep.js';
import { parsePythonJson } from '../../schedulers/config.js';
import type { T5TokenizerFiles } from '../../tokenizers/build-t5-tokenizer.js';
import {
  buildT5Tokenizer,
  t5TokenizerVocabSize,
  writeT5TokenizerFolder,
} from '../../tokenizers/build-t5-tokenizer.js';
import { T5Tokenizer } from '../../tokenizers/t5-tokenizer.js';
import { listNames, type WarningHandler } from '../../warnings.js';
import type { CaptionProjectionInit, TextToImageModelConfig } from '../config.js';
import { defaultCacheDir } from '../data/cache.js';
import type { Batch } from '../data/loader.js';
import type { ImageTextDataset } from '../data/dataset.js';
import { splitIndices } from '../data/dataset.js';
import type { StatefulGenerator } from '../loop.js';
import type { RunTrainer } from '../run-trainers.js';
import type { SampleGrid } from '../sample-grid.js';
import { describeDifferences, type JsonObject } from '../json-value.js';
import type { DatasetLatents } from '../latent-cache.js';
import { encodeDatasetLatents } from '../latent-cache.js';
import { readExactWeights } from '../init-weights.js';
import { dropTokens } from '../token-dropout.js';
import { minSnrWeights } from '../min-snr.js';
import type { InitRule } from '../parameters.js';
import { discoverParameterShapes, initParameters } from '../parameters.js';
import { DIFFUSERS_VERSION, saveModelFolder } from '../save-model.js';
import type { TrainStepSpec } from '../train-step.js';

/** Parameter names in the training graph: each model's checkpoint names under its pipeline folder's name. */
export const TRANSFORMER_PREFIX = 'transformer';
export const TEXT_ENCODER_PREFIX = 'text_encoder';

/**
 * The scheduler PixArt-α ships (PixArt-alpha/PixArt-XL-2-1024-MS: DPM-Solver++ 2M over the training
 * schedule), as diffusers 0.40 saves it; kept as text because `-Infinity` is not JSON.
 */
export const PIXART_ALPHA_SCHEDULER_CONFIG = `{
  "_class_name": "DPMSolverMultistepScheduler",
  "_diffusers_version": "0.40.0",
  "algorithm_type": "dpmsolver++",
  "beta_end": 0.02,
  "beta_schedule": "linear",
  "beta_start": 0.0001,
  "dynamic_thresholding_ratio": 0.995,
  "euler_at_final": false,
  "final_sigmas_type": "zero",
  "flow_shift": 1.0,
  "lambda_min_clipped": -Infinity,
  "lower_order_final": true,
  "num_train_timesteps": 1000,
  "prediction_type": "epsilon",
  "rescale_betas_zero_snr": false,
  "sample_max_value": 1.0,
  "solver_order": 2,
  "solver_type": "midpoint",
  "steps_offset": 0,
  "thresholding": false,
  "time_shift_type": "exponential",
  "timestep_spacing": "linspace",
  "trained_betas": null,
  "use_beta_sigmas": false,
  "use_dynamic_shifting": false,
  "use_exponential_sigmas": false,
  "use_flow_sigmas": false,
  "use_karras_sigmas": false,
  "use_lu_lambdas": false,
  "variance_type": null
}
`;

/**
 * The embedded emoji model's sizes. PixArt: 8 blocks of width 192 (6 heads × 32) on the 16×16 latent
 * grid with patch 1 (256 tokens: the ≥ 16×16 grid local attention needs), 5.15 M parameters. T5 v1.1:
 * d_model 256, 4 layers of 8 heads × 32, gated-GELU d_ff 512, 3.65 M parameters with the emoji
 * captions' 4,005-piece vocabulary. With the 0.95 M-parameter VAE and the tokenizer the fp16 pipeline
 * folder is 19.8 MB (the package allows 30). A training sample costs 8.6 GFLOP forward + backward
 * (TrainStep's count; T5 on 32 tokens is under 0.5 of it); width 256 would cost 14.1 GFLOP and 25.5
 * MB, 6 blocks of 192 6.6 GFLOP: on two cores the samples per hour decide how many epochs a run gets,
 * so the width stays at the recipe's low end and the depth at its high end. Keys the trainer derives
 * (sample_size, in/out channels, caption_channels, cross_attention_dim, vocab_size) are left out.
 */
export const EMOJI_TEXT_TO_IMAGE_MODEL: Readonly<{ transformer: JsonObject; textEncoder: JsonObject }> = {
  transformer: {
    num_layers: 8,
    num_attention_heads: 6,
    attention_head_dim: 32,
    patch_size: 1,
  },
  textEncoder: {
    d_model: 256,
    d_kv: 32,
    num_heads: 8,
    d_ff: 512,
    num_layers: 4,
    feed_forward_proj: 'gated-gelu',
  },
};

/** Every key of PixArtTransformer2DModel's config as diffusers 0.40 saves it, with its defaults. */
const PIXART_CONFIG_DEFAULTS: JsonObject = {
  activation_fn: 'gelu-approximate',
  attention_bias: true,
  attention_head_dim: 72,
  attention_type: 'default',
  caption_channels: 4096,
  cross_attention_dim: 1152,
  dropout: 0.0,
  in_channels: 4,
  interpolation_scale: null,
  norm_elementwise_affine: false,
  norm_eps: 1e-6,
  norm_num_groups: 32,
  norm_type: 'ada_norm_single',
  num_attention_heads: 16,
  num_embeds_ada_norm: 1000,
  num_layers: 28,
  out_channels: 8,
  patch_size: 2,
  sample_size: 128,
  upcast_attention: false,
  use_additional_conditions: false,
};

/** transformers' T5Config keys for an encoder-only T5 v1.1 model, with T5Config's defaults. */
const T5_CONFIG_DEFAULTS: JsonObject = {
  architectures: ['T5EncoderModel'],
  classifier_dropout: 0.0,
  d_ff: 2048,
  d_kv: 64,
  d_model: 512,
  // Trained without dropout (a small model on short captions); transformers would apply 0.1.
  dropout_rate: 0.0,
  eos_token_id: 1,
  feed_forward_proj: 'gated-gelu',
  initializer_factor: 1.0,
  is_encoder_decoder: false,
  layer_norm_epsilon: 1e-6,
  model_type: 't5',
  num_heads: 8,
  num_layers: 6,
  pad_token_id: 0,
  relative_attention_max_distance: 128,
  relative_attention_num_buckets: 32,
  tie_word_embeddings: false,
  use_cache: false,
  vocab_size: 32128,
};

export interface TextToImageTrainerOptions {
  model: TextToImageModelConfig;
  dataset: ImageTextDataset;
  runtime: Runtime;
  /** Seed of the noise, posterior and timestep draws of makeBatch (its generator is checkpointed). */
  seed: number;
  /** The sample grid's fixed prompts and seeds, steps and guidance (config `sample`). */
  sample?: Partial<SampleOptions>;
  /** Latent cache root (default: the data cache, `defaultCacheDir()`); false: encode in memory. */
  cacheDir?: string | false;
  onWarning?: WarningHandler;
  /** Progress of encoding the data set with the VAE (not called when the cache has it). */
  onEncodeProgress?: (done: number, total: number) => void;
}

/** What makeBatch feeds the training graph. */
export interface TextToImageBatch {
  /** x_t [B, C, h, w]: the noised latents. */
  hidden_states: HostTensor;
  /** [B] float32 integer timesteps in [0, 1000). */
  timestep: HostTensor;
  /** [B, L] int64 token ids and float32 mask (1 = token), padded to maxTextLength. */
  input_ids: HostTensor;
  attention_mask: HostTensor;
  /** ε [B, C, h, w]: the noise the model predicts. */
  target: HostTensor;
  /** [B] min-SNR-γ weight of each sample's MSE. */
  weights: HostTensor;
}

export interface SampleOptions {
  prompts: readonly string[];
  /** One grid column per seed: the initial latents of torch.Generator().manual_seed(seed) on CPU. */
  seeds: readonly number[];
  /** Default 25. */
  steps: number;
  /** Default 4.5 (PixArt-α's). */
  guidance: number;
  /** Weights' dtype in the temporary pipeline folder (default float32). */
  dtype?: 'float32' | 'float16';
}

/** Default sample settings: PixArt-α's guidance, 25 DPM-Solver++ steps. */
export const TEXT_TO_IMAGE_SAMPLE_DEFAULTS: SampleOptions = {
  prompts: ['red heart, noto style', 'grinning face, twemoji style'],
  seeds: [0, 1],
  steps: 25,
  guidance: 4.5,
};

/** The text-to-image trainer: what `velodiff train` drives (RunTrainer) and what tests look into. */
export interface TextToImageTrainer extends RunTrainer {
  /** The same for every update: its draws come from the checkpointed generator. */
  makeBatch(batch: Batch): Record<string, HostTensor>;
  /** The full config.json of each trained model, as written into the pipeline folder. */
  readonly transformerConfig: JsonObject;
  readonly textEncoderConfig: JsonObject;
  readonly transformer: PixArtTransformerConfig;
  readonly textEncoder: T5EncoderConfig;
  readonly tokenizerFiles: T5TokenizerFiles;
  readonly tokenizer: T5Tokenizer;
  readonly latents: DatasetLatents;
  /** Every parameter (prefixed `transformer.` or `text_encoder.`) with its shape; all are trained. */
  readonly shapes: ReadonlyMap<string, readonly number[]>;
  /** ᾱ_t of the training schedule and each timestep's loss weight. */
  readonly alphasCumprod: Float32Array;
  readonly lossWeights: Float64Array;
  /** Image side in pixels, latent side, and caption tokens. */
  readonly imageSize: number;
  readonly latentSize: number;
  readonly maxTextLength: number;
  /** makeBatch's generator (posterior ε, noise, timesteps), saved in checkpoints. */
  readonly generators: Readonly<{ noise: TorchGenerator & StatefulGenerator }>;
  /** Write the whole diffusers pipeline folder (atomically replacing `dir`). Default dtype float16. */
  writePipeline(
    dir: string,
    weights: ReadonlyMap<string, Float32Array>,
    options?: { dtype?: 'float32' | 'float16' | 'bfloat16' },
  ): Promise<void>;
  /** Every parameter of a folder writePipeline wrote for this run's model (readPixArtPipelineWeights). */
  readPipeline(dir: string): Promise<Map<string, Float32Array>>;
  /** Generate the images (rows: prompts, columns: seeds) with `weights` through PixArtPipeline. */
  renderSamples(
    weights: ReadonlyMap<string, Float32Array>,
    options?: Partial<SampleOptions>,
  ): Promise<{ images: Uint8Array[][]; options: SampleOptions }>;
}

/** Prompts as PixArtAlphaPipeline preprocesses them without caption cleaning: lower-cased, stripped. */
export function preprocessCaption(text: string): string {
  return text.toLowerCase().trim();
}

/**
 * The transformer's and text encoder's full configs: the user's keys over the emoji model's over the
 * classes' defaults, with the keys
 * that follow from the data, the VAE and the tokenizer filled in (and checked when given).
 */
export function resolveTextToImageConfigs(
  model: Pick<TextToImageModelConfig, 'transformer' | 'textEncoder'>,
  derived: { latentChannels: number; latentSize: number; vocabSize: number },
): { transformer: JsonObject; textEncoder: JsonObject } {
  const textEncoder: JsonObject = {
    ...T5_CONFIG_DEFAULTS,
    ...EMOJI_TEXT_TO_IMAGE_MODEL.textEncoder,
    ...model.textEncoder,
  };
  const transformer: JsonObject = {
    ...PIXART_CONFIG_DEFAULTS,
    ...EMOJI_TEXT_TO_IMAGE_MODEL.transformer,
    ...model.transformer,
  };
  const innerDim = Number(transformer.num_attention_heads) * Number(transformer.attention_head_dim);
  const fill = (
    config: JsonObject,
    which: string,
    key: string,
    value: number | boolean,
    why: string,
  ): void => {
    const given = which === 'transformer' ? model.transformer[key] : model.textEncoder[key];
    if (given !== undefined && given !== null && given !== value) {
      throw new OptionError(
        `model.${which}.${key} is ${JSON.stringify(given)}, but ${why} makes it ${value}; leave the key out`,
        'TRAIN_CONFIG',
      );
    }
    config[key] = value;
  };
  fill(textEncoder, 'textEncoder', 'vocab_size', derived.vocabSize, 'the tokenizer built from the captions');
  fill(transformer, 'transformer', 'sample_size', derived.latentSize, "the image size over the VAE's factor");
  fill(transformer, 'transformer', 'in_channels', derived.latentChannels, "the VAE's latent_channels");
  fill(transformer, 'transformer', 'out_channels', derived.latentChannels, 'ε-prediction without learned σ');
  fill(
    transformer,
    'transformer',
    'caption_channels',
    Number(textEncoder.d_model),
    "the text encoder's d_model",
  );
  fill(
    transformer,
    'transformer',
    'cross_attention_dim',
    innerDim,
    'num_attention_heads × attention_head_dim',
  );
  fill(
    transformer,
    'transformer',
    'use_additional_conditions',
    false,
    'one resolution (no micro-conditions)',
  );
  return { transformer: sortKeys(transformer), textEncoder: sortKeys(textEncoder) };
}

function sortKeys(config: JsonObject): JsonObject {
  return Object.fromEntries(Object.entries(config).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
}

/**
 * The forward pass the step trains, built into `g`: batch inputs `input_ids`, `attention_mask`,
 * `hidden_states`, `timestep`; T5's last hidden state feeds PixArt's cross-attention with the same
 * mask; returns PixArt's ε prediction [B, C, h, w]. Parameters come from `source` under the prefixes
 * `text_encoder.` and `transformer.` (a ParameterInputs makes them graph inputs).
 */
export function textToImageForward(
  g: Graph,
  source: TensorSource,
  transformer: PixArtTransformerConfig,
  textEncoder: T5EncoderConfig,
  sizes: { latentSize: number; maxTextLength: number },
): { prediction: Tensor } {
  const { latentSize: side, maxTextLength: length } = sizes;
  const inputIds = g.input('input_ids', 'int64', ['B', length]);
  const mask = g.input('attention_mask', 'float32', ['B', length]);
  const hiddenStates = t5Encoder(
    Params.of(g, source, { prefix: TEXT_ENCODER_PREFIX }),
    textEncoder,
    inputIds,
    mask,
  );
  const grid = side / transformer.patchSize;
  const pos = pixArtPositionEmbedding(transformer, grid, grid);
  const posEmbed = g.constant(pos.data as Float32Array, 'float32', pos.shape);
  const prediction = pixArtTransformer(
    Params.of(g, source, { prefix: TRANSFORMER_PREFIX }),
    transformer,
    {
      hiddenStates: g.input('hidden_states', 'float32', ['B', transformer.inChannels, side, side]),
      timestep: g.input('timestep', 'float32', ['B']),
      posEmbed,
      encoderHiddenStates: hiddenStates[hiddenStates.length - 1],
      encoderAttentionMask: mask,
    },
    { height: side, width: side },
  );
  return { prediction };
}

/**
 * Initialisation as the two models' own code does it: PixArt's `initialize_weights` (xavier-uniform
 * Linear and patch-embedding weights, zero biases, N(0, 0.02) timestep and caption MLPs and adaLN
 * linear, zero cross-attention output and final projection, so a fresh model adds nothing to its
 * input stream) and transformers' `T5PreTrainedModel._init_weights` (factor 1).
 */
export function textToImageInitRules(
  shapes: ReadonlyMap<string, readonly number[]>,
  textEncoder: T5EncoderConfig,
  captionProjectionInit: CaptionProjectionInit = 'pixart',
): InitRule[] {
  const t = `^${TRANSFORMER_PREFIX}\\.`;
  const e = `^${TEXT_ENCODER_PREFIX}\\.`;
  const { dModel, dKv, numHeads, dFf } = textEncoder;
  const rules: InitRule[] = [
    {
      match: new RegExp(`${t}transformer_blocks\\.\\d+\\.attn2\\.to_out\\.0\\.(weight|bias)$`),
      init: 'zeros',
    },
    { match: new RegExp(`${t}proj_out\\.(weight|bias)$`), init: 'zeros' },
    {
      match: new RegExp(`${t}adaln_single\\.emb\\.timestep_embedder\\.linear_[12]\\.weight$`),
      init: { normal: 0.02 },
    },
    { match: new RegExp(`${t}adaln_single\\.linear\\.weight$`), init: { normal: 0.02 } },
    ...[1, 2].map((i) => {
      const name = `${TRANSFORMER_PREFIX}.caption_projection.linear_${i}.weight`;
      const fanIn = shapes.get(name)?.[1] ?? 1;
      return {
        match: new RegExp(`^${name.replace(/\./g, '\\.')}$`),
        init: { normal: captionProjectionInit === 'fan-in' ? fanIn ** -0.5 : 0.02 },
      };
    }),
    { match: new RegExp(`${t}.*\\.bias$`), init: 'zeros' },
    { match: new RegExp(`${e}shared\\.weight$`), init: { normal: 1 } },
    { match: new RegExp(`${e}.*SelfAttention\\.q\\.weight$`), init: { normal: (dModel * dKv) ** -0.5 } },
    { match: new RegExp(`${e}.*SelfAttention\\.[kv]\\.weight$`), init: { normal: dModel ** -0.5 } },
    { match: new RegExp(`${e}.*SelfAttention\\.o\\.weight$`), init: { normal: (numHeads * dKv) ** -0.5 } },
    { match: new RegExp(`${e}.*relative_attention_bias\\.weight$`), init: { normal: dModel ** -0.5 } },
    { match: new RegExp(`${e}.*DenseReluDense\\.wi(_[01])?\\.weight$`), init: { normal: dModel ** -0.5 } },
    { match: new RegExp(`${e}.*DenseReluDense\\.wo\\.weight$`), init: { normal: dFf ** -0.5 } },
  ];
  // Xavier-uniform bounds depend on each weight's fans, so one exact-name rule per weight.
  for (const [name, shape] of shapes) {
    if (!name.startsWith(`${TRANSFORMER_PREFIX}.`) || !name.endsWith('.weight') || shape.length < 2) continue;
    const receptive = shape.slice(2).reduce((a, b) => a * b, 1);
    const bound = Math.sqrt(6 / (shape[1] * receptive + shape[0]));
    rules.push({ match: new RegExp(`^${name.replace(/\./g, '\\.')}$`), init: { uniform: bound } });
  }
  return rules;
}

/** The parameters of one model of the pipeline, under its checkpoint names. */
export function componentParameters<T>(all: ReadonlyMap<string, T>, prefix: string): Map<string, T> {
  const out = new Map<string, T>();
  for (const [name, value] of all)
    if (name.startsWith(`${prefix}.`)) out.set(name.slice(prefix.length + 1), value);
  return out;
}

/**
 * The training step's graph for these models: T5 → PixArt → min-SNR-weighted MSE, over every
 * parameter of both (prefixed `text_encoder.` and `transformer.`). Batch inputs: `input_ids` [B, L]
 * int64, `attention_mask` [B, L] float32, `hidden_states` and `target` [B, C, h, w], `timestep` and
 * `weights` [B] float32 (what makeBatch returns).
 */
export function textToImageStepSpec(o: {
  transformer: PixArtTransformerConfig;
  textEncoder: T5EncoderConfig;
  latentSize: number;
  maxTextLength: number;
}): TrainStepSpec & { shapes: Map<string, number[]> } {
  const { transformer, textEncoder, latentSize } = o;
  const channels = transformer.inChannels;
  const shapes = discoverParameterShapes((source) =>
    textToImageForward(new Graph('text-to-image'), source, transformer, textEncoder, o),
  );
  return {
    shapes,
    trainable: [...shapes.keys()],
    build(g: Graph, params: ParameterInputs) {
      const { prediction } = textToImageForward(g, params, transformer, textEncoder, o);
      const target = g.input('target', 'float32', ['B', channels, latentSize, latentSize]);
      const weights = g.input('weights', 'float32', ['B']);
      // diffusers: mse_loss(reduction='none').mean(dims 1..) · weight, then the batch mean.
      const error = sub(prediction, target);
      const mse = mean(mul(error, error), [1, 2, 3]);
      return { loss: mean(mul(mse, weights), [0]), metrics: { mse: mean(mse, [0]) } };
    },
  };
}

export async function textToImageTrainer(o: TextToImageTrainerOptions): Promise<TextToImageTrainer> {
  const { model, dataset } = o;
  const maxTextLength = model.maxTextLength;
  // The tokenizer learns the training captions only, as the models do.
  let members = splitIndices(dataset, 'train');
  if (members.length === 0) members = splitIndices(dataset, 'all');
  const corpus = members.flatMap((i) => dataset.items[i].captions.map(preprocessCaption));
  const tokenizerFiles = buildT5Tokenizer(corpus, { modelMaxLength: maxTextLength });
  const tokenizer = T5Tokenizer.fromJson(
    tokenizerFiles['tokenizer.json'],
    tokenizerFiles['tokenizer_config.json'],
    'the tokenizer built from the training captions',
  );

  const vaeDir = resolve(model.vae);
  const latents = await encodeDatasetLatents(dataset, vaeDir, {
    runtime: o.runtime,
    cacheDir: o.cacheDir === false ? false : (o.cacheDir ?? defaultCacheDir()),
    onProgress: o.onEncodeProgress,
    onWarning: o.onWarning,
  });
  const [, latentChannels, latentSize] = latents.shape;
  const configs = resolveTextToImageConfigs(model, {
    latentChannels,
    latentSize,
    vocabSize: t5TokenizerVocabSize(tokenizerFiles),
  });
  const transformer = parsePixArtConfig(configs.transformer, 'model.transformer', o.onWarning);
  const textEncoder = parseT5EncoderConfig(configs.textEncoder, 'model.textEncoder', o.onWarning);
  if (latentSize % transformer.patchSize !== 0) {
    throw new OptionError(
      `model.transformer.patch_size ${transformer.patchSize} does not divide the ${latentSize}×${latentSize} latents`,
      'TRAIN_CONFIG',
    );
  }
  const spec = textToImageStepSpec({ transformer, textEncoder, latentSize, maxTextLength });
  const { shapes } = spec;

  const schedulerConfig = parsePythonJson(PIXART_ALPHA_SCHEDULER_CONFIG) as Record<string, unknown>;
  const alphasCumprod = new DPMSolverMultistepScheduler(schedulerConfig).alphasCumprod;
  const prediction = model.predictionType ?? 'epsilon';
  const lossWeights = minSnrWeights(alphasCumprod, model.minSnrGamma, prediction);
  const weightTable = Float32Array.from(lossWeights);
  const scalingFactor = latents.scalingFactor;
  const latentItem = latentChannels * latentSize * latentSize;

  const generator = new TorchGenerator(o.seed);
  const sampleOptions = (overrides: Partial<SampleOptions> = {}): SampleOptions => ({
    ...TEXT_TO_IMAGE_SAMPLE_DEFAULTS,
    ...o.sample,
    ...overrides,
  });
  const modelConfig: ModelConfig = {
    _class_name: 'PixArtAlphaPipeline',
    transformer: configs.transformer,
    text_encoder: configs.textEncoder,
    // The latents the model learns are this VAE's: another VAE is another model.
    vae_sha256: latents.vaeHash,
    max_text_length: maxTextLength,
  };

  const trainer: TextToImageTrainer = {
    modelConfig,
    transformerConfig: configs.transformer,
    textEncoderConfig: configs.textEncoder,
    transformer,
    textEncoder,
    tokenizerFiles,
    tokenizer,
    latents,
    shapes,
    alphasCumprod,
    lossWeights,
    imageSize: dataset.size,
    latentSize,
    maxTextLength,
    generators: { noise: generator },

    initialParameters(seed) {
      return initParameters(shapes, {
        seed,
        rules: textToImageInitRules(shapes, textEncoder, model.captionProjectionInit),
      });
    },

    stepSpec(batchSize) {
      return { ...spec, dims: { B: batchSize } };
    },

    makeBatch(batch) {
      if (batch.flipped.some(Boolean)) {
        throw new OptionError(
          'text-to-image training reads cached latents of the unflipped images: set data.horizontalFlip to false',
          'TRAIN_CONFIG',
        );
      }
      const n = batch.indices.length;
      const shape = [n, latentChannels, latentSize, latentSize];
      // Draw order fixed (posterior ε, noise, timesteps) so a restored generator repeats a run.
      const posterior = generator.randn(shape);
      const noise = generator.randn(shape);
      const timesteps =
        model.timestepSampling === undefined
          ? uniformTimesteps(generator.rand([n]), alphasCumprod)
          : logitNormalTimesteps(generator.randn([n]), alphasCumprod, model.timestepSampling);
      const z = new Float32Array(n * latentItem);
      batch.indices.forEach((index, b) => {
        const from = index * latentItem;
        for (let i = 0; i < latentItem; i++) {
          const at = b * latentItem + i;
          const sample = Math.fround(
            latents.mean[from + i] + Math.fround(latents.std[from + i] * posterior[at]),
          );
          z[at] = Math.fround(sample * scalingFactor);
        }
      });
      const noisy = noisedLatents(z, noise, shape, timesteps, alphasCumprod);
      const tokenized = tokenizer.encode(batch.captions.map(preprocessCaption), {
        maxLength: maxTextLength,
        padding: 'max_length',
        truncation: true,
      });
      // Drawn last, and only when on, so that runs without word dropout draw as before.
      const encoding =
        model.tokenDropout === undefined
          ? tokenized
          : dropTokens(tokenized, generator.rand([n * maxTextLength]), model.tokenDropout);
      const feeds: TextToImageBatch = {
        hidden_states: hostTensor('float32', shape, noisy),
        timestep: hostTensor('float32', [n], Float32Array.from(timesteps)),
        input_ids: hostTensor(
          'int64',
          [n, maxTextLength],
          BigInt64Array.from(encoding.inputIds.flat(), BigInt),
        ),
        attention_mask: hostTensor(
          'float32',
          [n, maxTextLength],
          Float32Array.from(encoding.attentionMask.flat()),
        ),
        target: hostTensor(
          'float32',
          shape,
          prediction === 'epsilon' ? noise : velocity(z, noise, shape, timesteps, alphasCumprod),
        ),
        weights: hostTensor(
          'float32',
          [n],
          Float32Array.from(timesteps, (t) => weightTable[t]),
        ),
      };
      return { ...feeds };
    },

    async writePipeline(dir, weights, options = {}) {
      await writePixArtPipelineFolder(resolve(dir), {
        params: weights,
        shapes,
        transformerConfig: configs.transformer,
        textEncoderConfig: configs.textEncoder,
        tokenizerFiles,
        vaeDir,
        dtype: options.dtype ?? 'float16',
        predictionType: prediction,
      });
    },

    readPipeline(dir) {
      return readPixArtPipelineWeights(resolve(dir), {
        shapes,
        transformerConfig: configs.transformer,
        textEncoderConfig: configs.textEncoder,
        tokenizerFiles,
        vaeDir,
      });
    },

    saveModel(dir, weights) {
      return trainer.writePipeline(dir, weights);
    },

    async renderSamples(weights, overrides) {
      const options = sampleOptions(overrides);
      const root = await mkdtemp(join(tmpdir(), 'velodiff-samples-'));
      try {
        const dir = join(root, 'pipeline');
        await trainer.writePipeline(dir, weights, { dtype: options.dtype ?? 'float32' });
        const images = await renderImages(dir, o.runtime, {
          ...options,
          size: dataset.size,
          latentShape: [latentChannels, latentSize, latentSize],
          maxTextLength,
          onWarning: o.onWarning,
        });
        return { images, options };
      } finally {
        await rm(root, { recursive: true, force: true });
      }
    },

    async sampleGrid(weights, step): Promise<SampleGrid> {
      const { images, options } = await trainer.renderSamples(weights);
      const size = dataset.size;
      return {
        title: [`step ${step}`, `${options.steps} steps, CFG ${options.guidance}`],
        columnLabels: options.seeds.map((seed) => `seed ${seed}`),
        rows: options.prompts.map((prompt, row) => ({
          label: prompt,
          cells: images[row].map((data) => ({ image: { width: size, height: size, data } })),
        })),
      };
    },
  };
  return trainer;
}

/**
 * One image per (prompt, seed) of the pipeline folder `dir`, from one pipeline run:
 * `images[row][column]`, 8-bit RGB. `runOptions` passes an acceleration (a distilled student's
 * attention) through.
 */
export async function renderImages(
  dir: string,
  runtime: Runtime,
  o: SampleOptions & {
    size: number;
    latentShape: readonly [number, number, number];
    maxTextLength: number;
    onWarning?: WarningHandler;
    runOptions?: Partial<PixArtRunOptions>;
    /** Called with the loaded pipeline before it runs (e.g. to load a LoRA). */
    prepare?: (pipe: PixArtPipeline) => Promise<void>;
  },
): Promise<Uint8Array[][]> {
  const pipe = await DiffusionPipeline.fromPretrained(dir, { runtime, onWarning: o.onWarning });
  try {
    if (o.prepare) {
      if (!(pipe instanceof PixArtPipeline))
        throw new OptionError(`${dir}: sample grids with a prepared pipeline need a PixArt folder`);
      await o.prepare(pipe);
    }
    const prompts: string[] = [];
    const item = o.latentShape.reduce((a, b) => a * b, 1);
    const latents = new Float32Array(o.prompts.length * o.seeds.length * item);
    o.prompts.forEach((prompt, row) => {
      o.seeds.forEach((seed, column) => {
        prompts.push(prompt);
        // Each cell's latents are those of a batch-1 run with its seed, as diffusers would draw them.
        latents.set(
          new TorchGenerator(seed).randn([1, ...o.latentShape]),
          (row * o.seeds.length + column) * item,
        );
      });
    });
    const out = await pipe.run({
      ...o.runOptions,
      prompt: prompts,
      latents: hostTensor('float32', [prompts.length, ...o.latentShape], latents),
      numInferenceSteps: o.steps,
      guidanceScale: o.guidance,
      height: o.size,
      width: o.size,
      useResolutionBinning: false,
      maxSequenceLength: o.maxTextLength,
    });
    const images = out.images as HostTensor;
    const rgb = imagesToRgb(images.data as Float32Array, images.shape);
    return o.prompts.map((_, row) => rgb.slice(row * o.seeds.length, (row + 1) * o.seeds.length));
  } finally {
    await pipe.close();
  }
}

/** What a PixArtAlphaPipeline folder is written from. */
export interface PixArtPipelineFolderOptions {
  /** Both models' parameters, prefixed `transformer.` and `text_encoder.`. */
  params: ReadonlyMap<string, Float32Array>;
  shapes: ReadonlyMap<string, readonly number[]>;
  transformerConfig: JsonObject;
  textEncoderConfig: JsonObject;
  tokenizerFiles: T5TokenizerFiles;
  /** The trained VAE folder, copied with its weights converted to `dtype`. */
  vaeDir: string;
  dtype: 'float32' | 'float16' | 'bfloat16';
  /** The scheduler's `prediction_type` (default epsilon). */
  predictionType?: 'epsilon' | 'v_prediction';
}

/**
 * Write a diffusers PixArtAlphaPipeline folder: model_index.json, transformer/, text_encoder/,
 * tokenizer/, vae/ and scheduler/. Built beside `dir` and renamed over it, so `dir` is either the old
 * folder or the complete new one.
 */
export async function writePixArtPipelineFolder(dir: string, o: PixArtPipelineFolderOptions): Promise<void> {
  const partial = join(dirname(dir), `.${basename(dir)}.partial-${process.pid}-${Date.now()}`);
  await rm(partial, { recursive: true, force: true });
  await mkdir(partial, { recursive: true });
  try {
    const componentShapes = (prefix: string): Map<string, readonly number[]> =>
      componentParameters(o.shapes, prefix);
    await saveModelFolder(join(partial, 'transformer'), {
      className: 'PixArtTransformer2DModel',
      config: o.transformerConfig,
      params: componentParameters(o.params, TRANSFORMER_PREFIX),
      shapes: componentShapes(TRANSFORMER_PREFIX),
      dtype: o.dtype,
      library: 'diffusers',
    });
    await saveModelFolder(join(partial, 'text_encoder'), {
      className: 'T5EncoderModel',
      config: o.textEncoderConfig,
      params: componentParameters(o.params, TEXT_ENCODER_PREFIX),
      shapes: componentShapes(TEXT_ENCODER_PREFIX),
      dtype: o.dtype,
      library: 'transformers',
    });
    await writeT5TokenizerFolder(join(partial, 'tokenizer'), o.tokenizerFiles);
    await copyVae(o.vaeDir, join(partial, 'vae'), o.dtype);
    await mkdir(join(partial, 'scheduler'));
    await writeFile(
      join(partial, 'scheduler', 'scheduler_config.json'),
      PIXART_ALPHA_SCHEDULER_CONFIG.replace(
        '"prediction_type": "epsilon"',
        `"prediction_type": "${o.predictionType ?? 'epsilon'}"`,
      ),
    );
    const index = {
      _class_name: 'PixArtAlphaPipeline',
      _diffusers_version: DIFFUSERS_VERSION,
      scheduler: ['diffusers', 'DPMSolverMultistepScheduler'],
      text_encoder: ['transformers', 'T5EncoderModel'],
      // The fast class: the folder has tokenizer.json and no spiece.model for the slow T5Tokenizer.
      tokenizer: ['transformers', 'T5TokenizerFast'],
      transformer: ['diffusers', 'PixArtTransformer2DModel'],
      vae: ['diffusers', 'AutoencoderKL'],
    };
    await writeFile(join(partial, 'model_index.json'), `${JSON.stringify(index, null, 2)}\n`);
    const old = `${partial}.old`;
    let hadOld = false;
    try {
      await rename(dir, old);
      hadOld = true;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
    }
    await mkdir(dirname(dir), { recursive: true });
    await rename(partial, dir);
    if (hadOld) await rm(old, { recursive: true, force: true });
  } catch (error) {
    await rm(partial, { recursive: true, force: true });
    throw error;
  }
}

/** The VAE folder re-saved with its weights in `dtype` (its config unchanged). */
async function copyVae(
  source: string,
  target: string,
  dtype: 'float32' | 'float16' | 'bfloat16',
): Promise<void> {
  const raw = await readConfig(source);
  const store = await WeightStore.open(source);
  const params = new Map<string, Float32Array>();
  const shapes = new Map<string, readonly number[]>();
  try {
    for (const file of store.files) {
      for (const name of file.names()) {
        const info = file.info(name);
        params.set(name, bytesToFloat32(await file.readBytes(name), info.dtype));
        shapes.set(name, info.shape);
      }
    }
  } finally {
    await store.close();
  }
  const config = Object.fromEntries(Object.entries(raw).filter(([key]) => !key.startsWith('_')));
  await saveModelFolder(target, {
    className: 'AutoencoderKL',
    config,
    params,
    shapes,
    dtype,
    library: 'diffusers',
  });
}

/** What a pipeline folder must hold to start a run from (readPixArtPipelineWeights): the run's model. */
export type PixArtPipelineExpectation = Pick<
  PixArtPipelineFolderOptions,
  'shapes' | 'transformerConfig' | 'textEncoderConfig' | 'tokenizerFiles' | 'vaeDir'
>;

/**
 * Every parameter of a folder writePixArtPipelineFolder wrote, under the training graph's names
 * (`transformer.<diffusers key>`, `text_encoder.<transformers key>`), fp16 and bf16 widened to float32:
 * the writer inverted. The folder must be the model `expected` describes, or the run would train
 * something else than it says: its tokenizer the one built from this run's captions (token ids mean
 * the same words), each model's config.json every key of this run's, its VAE this run's VAE in the
 * folder's dtype (the latents the denoiser learnt), each model's weights exactly this run's parameters
 * with their shapes, all finite. Throws FileFormatError or WeightError naming the file and what differs.
 */
export async function readPixArtPipelineWeights(
  dir: string,
  expected: PixArtPipelineExpectation,
): Promise<Map<string, Float32Array>> {
  const index = await readModelIndex(dir);
  if (index.className !== 'PixArtAlphaPipeline') {
    const path = join(dir, 'model_index.json');
    throw new FileFormatError(
      `${path}: expected a PixArtAlphaPipeline folder (what the text-to-image trainer writes), found a ${index.className}`,
      'INIT_PIPELINE_CLASS',
      path,
    );
  }
  await checkPipelineTokenizer(join(dir, 'tokenizer'), expected.tokenizerFiles);
  await checkPipelineConfig(join(dir, TRANSFORMER_PREFIX), expected.transformerConfig, 'model.transformer');
  await checkPipelineConfig(join(dir, TEXT_ENCODER_PREFIX), expected.textEncoderConfig, 'model.textEncoder');
  await checkPipelineVae(join(dir, 'vae'), expected.vaeDir);
  const weights = new Map<string, Float32Array>();
  for (const prefix of [TRANSFORMER_PREFIX, TEXT_ENCODER_PREFIX]) {
    // The component folders are named as the parameters' prefixes (writePixArtPipelineFolder).
    const component = await readExactWeights(
      join(dir, prefix),
      componentParameters(expected.shapes, prefix),
      'INIT_PIPELINE',
    );
    for (const [name, values] of component) weights.set(`${prefix}.${name}`, values);
  }
  return weights;
}

/** JSON as it is written to a file and read back (undefined members dropped). */
function asWritten(value: unknown): unknown {
  return JSON.parse(JSON.stringify(value)) as unknown;
}

/**
 * The folder's tokenizer files against the ones this run builds. `model_max_length` (the run's
 * maxTextLength) may differ: it sets the padded length, not what a token id means.
 */
async function checkPipelineTokenizer(dir: string, files: T5TokenizerFiles): Promise<void> {
  for (const [name, built] of Object.entries(files)) {
    const path = join(dir, name);
    const ours = asWritten(built);
    const theirs = await readJsonFile(path, 'a file of the T5 tokenizer');
    const differences: string[] = [];
    if (name === 'tokenizer.json') {
      const vocabulary = (json: unknown): unknown[] => {
        const model = isPlainObject(json) ? json.model : undefined;
        return isPlainObject(model) && Array.isArray(model.vocab) ? model.vocab : [];
      };
      const [a, b] = [vocabulary(ours), vocabulary(theirs)];
      const first = Array.from({ length: Math.max(a.length, b.length) }, (_, i) => i).find(
        (i) => JSON.stringify(a[i]) !== JSON.stringify(b[i]),
      );
      if (first !== undefined) {
        differences.push(
          `vocabulary: this run's ${a.length} pieces, the folder's ${b.length}; the first difference is ` +
            `id ${first}: this run ${JSON.stringify(a[first]) ?? 'nothing'}, the folder ${JSON.stringify(b[first]) ?? 'nothing'}`,
        );
      }
      const withoutVocabulary = (json: unknown): unknown =>
        isPlainObject(json) && isPlainObject(json.model)
          ? { ...json, model: { ...json.model, vocab: undefined } }
          : json;
      differences.push(
        ...describeDifferences(withoutVocabulary(ours), withoutVocabulary(theirs), [
          'this run',
          'the folder',
        ]),
      );
    } else {
      const withoutLength = (json: unknown): unknown =>
        isPlainObject(json) ? { ...json, model_max_length: undefined } : json;
      const [a, b] =
        name === 'tokenizer_config.json' ? [withoutLength(ours), withoutLength(theirs)] : [ours, theirs];
      differences.push(...describeDifferences(a, b, ['this run', 'the folder']));
    }
    if (differences.length > 0) {
      throw new FileFormatError(
        `${path}: not the tokenizer this run builds from its training captions, so the folder's token ids ` +
          `would mean other words (${differences.join('; ')}). Train on the data the folder's model was ` +
          'trained on (the same captions and split).',
        'INIT_PIPELINE_TOKENIZER',
        path,
      );
    }
  }
}

/** The component's config.json must have every key of this run's model config, with the same value. */
async function checkPipelineConfig(dir: string, expected: JsonObject, configKey: string): Promise<void> {
  const found = await readConfig(dir);
  const path = join(dir, 'config.json');
  const shared = Object.fromEntries(Object.keys(expected).map((key) => [key, found[key]]));
  const differences = describeDifferences(expected, shared, ['this run', 'the folder']);
  if (differences.length > 0) {
    throw new FileFormatError(
      `${path}: not this run's model (${differences.join('; ')}). Give ${configKey} the folder's keys ` +
        '(the ones the trainer derives follow from the VAE, the image size and the tokenizer).',
      'INIT_PIPELINE_CONFIG',
      path,
    );
  }
}

/** What `values` become stored as `dtype`: the writer rounds float32 to it. */
function storedAs(values: Float32Array, dtype: SafetensorsDtype): Float32Array {
  if (dtype === 'F16') return f16ToF32(f32ToF16(values));
  if (dtype === 'BF16') return bf16ToF32(f32ToBf16(values));
  return values;
}

/**
 * The folder's VAE must be the run's (`model.vae`) as writePixArtPipelineFolder copies it: the same
 * config, the same tensors, each value the run's rounded to the folder's dtype.
 */
async function checkPipelineVae(dir: string, runVae: string): Promise<void> {
  const userKeys = (config: Record<string, unknown>): Record<string, unknown> =>
    Object.fromEntries(Object.entries(config).filter(([key]) => !key.startsWith('_')));
  const advice = `The denoiser learnt this VAE's latents: set model.vae to ${dir}.`;
  const path = join(dir, 'config.json');
  const configDifferences = describeDifferences(
    userKeys(await readConfig(runVae)),
    userKeys(await readConfig(dir)),
    ['model.vae', 'the folder'],
  );
  if (configDifferences.length > 0) {
    throw new FileFormatError(
      `${path}: not this run's VAE ${runVae} (${configDifferences.join('; ')}). ${advice}`,
      'INIT_PIPELINE_VAE',
      path,
    );
  }
  const [ours, theirs] = [await WeightStore.open(runVae), await WeightStore.open(dir)];
  try {
    const [a, b] = [ours.names().sort(), theirs.names().sort()];
    if (JSON.stringify(a) !== JSON.stringify(b)) {
      throw new WeightError(
        `${theirs.sourcePath}: not the tensors of this run's VAE ${ours.sourcePath} ` +
          `(only in model.vae: ${listNames(a.filter((n) => !theirs.has(n)))}; ` +
          `only in the folder: ${listNames(b.filter((n) => !ours.has(n)))}). ${advice}`,
        'INIT_PIPELINE_VAE',
      );
    }
    for (const name of a) {
      const stored = theirs.info(name).dtype;
      const want = storedAs(await ours.readFloat32(name), stored);
      const got = await theirs.readFloat32(name);
      const at = want.length === got.length ? want.findIndex((v, i) => !Object.is(v, got[i])) : 0;
      if (at >= 0) {
        throw new WeightError(
          `${theirs.sourcePath}: tensor '${name}' is not this run's VAE's (${ours.sourcePath}) in ${stored} ` +
            `(index ${at}: model.vae ${want[at]}, the folder ${got[at]}). ${advice}`,
          'INIT_PIPELINE_VAE',
        );
      }
    }
  } finally {
    await Promise.all([ours.close(), theirs.close()]);
  }
}
