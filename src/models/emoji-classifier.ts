/**
 * velodiff's emoji classifier (`VelodiffEmojiClassifier`): a small CNN whose penultimate layer is the
 * feature space of FED and whose heads give the category and subcategory an emoji image shows, for
 * `velodiff eval` (src/train/eval/). It is velodiff's own model, not a diffusers class; its folder is
 * laid out as one (config.json + diffusion_pytorch_model.safetensors).
 *
 *   pixel_values [N, 3, 64, 64] in [-1, 1]
 *   → conv_in (3×3) → SiLU
 *   → stages.i: downsample (3×3, stride 2) → norm1 → SiLU → conv (3×3) → norm2 → SiLU   (×4: 32, 16, 8, 4 px)
 *   → mean over H, W → feature_proj (Linear) = features [N, feature_dim]
 *   → SiLU → heads.<label> (Linear) = <label>_logits [N, classes]
 *
 * The features are taken before the activation: a Fréchet distance models them as Gaussian, which
 * a linear projection of pooled activations is closer to than its SiLU.
 */
import { join, resolve } from 'node:path';

import { FileFormatError, RuntimeError } from '../errors.js';
import { Graph } from '../graph/graph.js';
import type { Tensor } from '../graph/graph.js';
import { mean, silu } from '../graph/ops/index.js';
import { readConfig } from '../io/diffusers.js';
import type { ModelConfig, WeightStore } from '../io/diffusers.js';
import { describeJson, isPlainObject } from '../io/json.js';
import { Conv2d, GroupNorm, Linear } from '../nn/layers.js';
import { Params } from '../nn/params.js';
import { ParameterInputs } from '../nn/weights.js';
import type { TensorSource } from '../nn/weights.js';
import type { HostTensor } from '../runtime/host-tensor.js';
import { hostTensor } from '../runtime/host-tensor.js';
import type { Runtime } from '../runtime/runtime.js';
import type { InputSpecs } from '../runtime/runnable-model.js';
import { RunnableModel } from '../runtime/runnable-model.js';
import type { WarningHandler } from '../warnings.js';
import { ConfigReader } from './config.js';
import type { DiffusersModel, LoadOptions } from './model.js';
import { openCheckedWeights } from './model.js';

export const EMOJI_CLASSIFIER_CLASS = 'VelodiffEmojiClassifier';

/** One classification head: the label it predicts and its class names, in index order. */
export interface EmojiClassifierHead {
  readonly label: string;
  readonly classes: readonly string[];
}

export interface EmojiClassifierConfig {
  readonly inChannels: number;
  /** Side of the square input images. */
  readonly sampleSize: number;
  readonly stemChannels: number;
  /** Output channels of each stride-2 stage. */
  readonly blockOutChannels: readonly number[];
  readonly normNumGroups: number;
  readonly normEps: number;
  /** Width of the feature layer (FED's space). */
  readonly featureDim: number;
  /** config `heads`: {"category": [names…], "subcategory": [names…]}; empty until a trainer fills it from the data. */
  readonly heads: readonly EmojiClassifierHead[];
  readonly raw: Readonly<ModelConfig>;
}

/** The defaults velodiff trains with (configs may change any of them). */
export const EMOJI_CLASSIFIER_DEFAULTS = {
  in_channels: 3,
  sample_size: 64,
  stem_channels: 32,
  block_out_channels: [32, 64, 128, 256],
  norm_num_groups: 8,
  norm_eps: 1e-5,
  feature_dim: 128,
} as const;

/** Checks `raw` (read from `path`) and fills in the defaults; `heads` may be absent (a training config). */
export function parseEmojiClassifierConfig(
  raw: Record<string, unknown>,
  path: string,
  onWarning?: WarningHandler,
): EmojiClassifierConfig {
  const c = new ConfigReader(raw, path, EMOJI_CLASSIFIER_CLASS);
  const d = EMOJI_CLASSIFIER_DEFAULTS;
  const inChannels = c.integer('in_channels', d.in_channels, 1);
  const stemChannels = c.integer('stem_channels', d.stem_channels, 1);
  const normNumGroups = c.integer('norm_num_groups', d.norm_num_groups, 1);
  const blockOutChannels = c.numbers('block_out_channels', [...d.block_out_channels]);
  const stages = blockOutChannels.length;
  const sampleSize = c.integer('sample_size', d.sample_size, 1);
  const invalid = (key: string, expected: string): never => {
    throw new FileFormatError(
      `${path}: "${key}" is ${describeJson(raw[key])}; expected ${expected} for ${EMOJI_CLASSIFIER_CLASS}`,
      'CONFIG_VALUE',
      path,
    );
  };
  if (stages === 0 || blockOutChannels.some((ch) => !Number.isSafeInteger(ch) || ch < 1)) {
    invalid('block_out_channels', 'a non-empty list of positive integers');
  }
  for (const [key, channels] of [
    ['stem_channels', [stemChannels]],
    ['block_out_channels', blockOutChannels],
  ] as const) {
    if (channels.some((ch) => ch % normNumGroups !== 0)) {
      invalid(key, `channel counts divisible by norm_num_groups (${normNumGroups})`);
    }
  }
  if (sampleSize % 2 ** stages !== 0) {
    invalid('sample_size', `a multiple of 2^${stages} (each of the ${stages} stages halves the image)`);
  }
  const normEps = c.number('norm_eps', d.norm_eps);
  if (!(normEps > 0)) invalid('norm_eps', 'a number > 0');
  const featureDim = c.integer('feature_dim', d.feature_dim, 1);
  const rawHeads = c.get('heads');
  const heads: EmojiClassifierHead[] = [];
  if (rawHeads !== undefined && rawHeads !== null) {
    if (!isPlainObject(rawHeads)) invalid('heads', 'an object of label → list of class names');
    for (const [label, classes] of Object.entries(rawHeads as Record<string, unknown>)) {
      if (!Array.isArray(classes) || classes.length < 2 || classes.some((n) => typeof n !== 'string')) {
        invalid('heads', `for "${label}" a list of at least 2 class names`);
      }
      if (!/^[a-z_][a-z0-9_]*$/.test(label))
        invalid('heads', `label names of lowercase letters, digits and _ (got "${label}")`);
      heads.push({ label, classes: classes as string[] });
    }
  }
  c.finish(onWarning);
  return {
    inChannels,
    sampleSize,
    stemChannels,
    blockOutChannels,
    normNumGroups,
    normEps,
    featureDim,
    heads,
    raw: raw as ModelConfig,
  };
}

/** config.json of a classifier: the snake_case keys `parseEmojiClassifierConfig` reads. */
export function emojiClassifierConfigJson(config: EmojiClassifierConfig): Record<string, unknown> {
  return {
    _class_name: EMOJI_CLASSIFIER_CLASS,
    in_channels: config.inChannels,
    sample_size: config.sampleSize,
    stem_channels: config.stemChannels,
    block_out_channels: [...config.blockOutChannels],
    norm_num_groups: config.normNumGroups,
    norm_eps: config.normEps,
    feature_dim: config.featureDim,
    heads: Object.fromEntries(config.heads.map((h) => [h.label, [...h.classes]])),
  };
}

/** What the classifier computes for a batch: features and one logits tensor per head. */
export interface EmojiClassifierOutputs {
  readonly features: Tensor;
  readonly logits: Readonly<Record<string, Tensor>>;
}

/** The network on `pixels` [N, C, S, S], its parameters read from `p`: for inference graphs and training steps. */
export function emojiClassifierForward(
  p: Params,
  pixels: Tensor,
  config: EmojiClassifierConfig,
  /** Called with each stage's output [N, C_i, S/2^(i+1), S/2^(i+1)] (after its last SiLU). */
  onStage?: (stage: number, h: Tensor) => void,
): EmojiClassifierOutputs {
  const { normNumGroups: groups, normEps: eps } = config;
  let h = silu(
    Conv2d(p.child('conv_in'), pixels, {
      inChannels: config.inChannels,
      outChannels: config.stemChannels,
      kernel: 3,
      padding: 1,
    }),
  );
  let channels = config.stemChannels;
  config.blockOutChannels.forEach((out, i) => {
    const s = p.child('stages').child(i);
    h = Conv2d(s.child('downsample'), h, {
      inChannels: channels,
      outChannels: out,
      kernel: 3,
      stride: 2,
      padding: 1,
    });
    h = silu(GroupNorm(s.child('norm1'), h, groups, out, eps));
    h = Conv2d(s.child('conv'), h, { inChannels: out, outChannels: out, kernel: 3, padding: 1 });
    h = silu(GroupNorm(s.child('norm2'), h, groups, out, eps));
    onStage?.(i, h);
    channels = out;
  });
  const pooled = p.scope(() => mean(h, [2, 3]));
  const features = Linear(p.child('feature_proj'), pooled, channels, config.featureDim);
  const activated = silu(features);
  const logits: Record<string, Tensor> = {};
  for (const head of config.heads) {
    logits[head.label] = Linear(
      p.child('heads').child(head.label),
      activated,
      config.featureDim,
      head.classes.length,
    );
  }
  return { features, logits };
}

/** The graph input: images [N, C, S, S] in [-1, 1]. */
export const EMOJI_CLASSIFIER_INPUT = 'pixel_values';

/** Output name of a head's logits. */
export function logitsOutputName(label: string): string {
  return `${label}_logits`;
}

/** The inference graph for a batch of `batch` images: outputs `features` and `<label>_logits` per head. */
export function buildEmojiClassifierGraph(
  config: EmojiClassifierConfig,
  source: TensorSource,
  batch: number,
): Graph {
  const graph = new Graph(EMOJI_CLASSIFIER_CLASS);
  const pixels = graph.input(EMOJI_CLASSIFIER_INPUT, 'float32', [
    batch,
    config.inChannels,
    config.sampleSize,
    config.sampleSize,
  ]);
  const { features, logits } = emojiClassifierForward(Params.of(graph, source), pixels, config);
  graph.output('features', features);
  for (const [label, t] of Object.entries(logits)) graph.output(logitsOutputName(label), t);
  return graph;
}

/** A classification of N images: features [N, feature_dim] and logits [N, classes] per head, row-major. */
export interface EmojiClassification {
  readonly count: number;
  readonly features: Float32Array;
  readonly logits: Readonly<Record<string, Float32Array>>;
}

/** Images per compiled run: batches are cut or padded to it, so one session serves every count. */
const RUN_BATCH = 32;

/**
 * The classifier, from a folder (`fromPretrained`) or from parameters in memory (`fromParameters`,
 * for evaluating during training: the parameters are fed as graph inputs, so one compiled graph
 * serves every step).
 */
export class VelodiffEmojiClassifier implements DiffusersModel {
  readonly className = EMOJI_CLASSIFIER_CLASS;
  readonly methods: readonly string[] = [];
  /** One layout: batches are cut or padded to RUN_BATCH images. */
  private readonly runnable: RunnableModel<{ batch: number }>;

  private constructor(
    readonly dir: string,
    readonly config: EmojiClassifierConfig,
    source: TensorSource,
    /** Fed with every run when the parameters are graph inputs. */
    private readonly parameterFeeds: Record<string, HostTensor>,
    private readonly weights: WeightStore | undefined,
    runtime: Runtime,
  ) {
    this.runnable = new RunnableModel({
      className: EMOJI_CLASSIFIER_CLASS,
      dir,
      runtime,
      build: ({ batch }: { batch: number }) => buildEmojiClassifierGraph(config, source, batch),
    });
  }

  static async fromPretrained(dir: string, options: LoadOptions): Promise<VelodiffEmojiClassifier> {
    const abs = resolve(dir);
    const path = join(abs, 'config.json');
    const config = parseEmojiClassifierConfig(await readConfig(abs), path, options.onWarning);
    if (config.heads.length === 0) {
      throw new FileFormatError(
        `${path}: "heads" is missing; a trained ${EMOJI_CLASSIFIER_CLASS} names its labels and classes there`,
        'CONFIG_VALUE',
        path,
      );
    }
    const weights = await openCheckedWeights(abs, {
      className: EMOJI_CLASSIFIER_CLASS,
      build: (source) => buildEmojiClassifierGraph(config, source, 1),
      onWarning: options.onWarning,
    });
    return new VelodiffEmojiClassifier(abs, config, weights, {}, weights, options.runtime);
  }

  /** The classifier with the parameters `params` (named as in its folder), held in memory. */
  static fromParameters(
    config: EmojiClassifierConfig,
    params: ReadonlyMap<string, Float32Array>,
    shapes: ReadonlyMap<string, readonly number[]>,
    runtime: Runtime,
  ): VelodiffEmojiClassifier {
    const record = Object.fromEntries(shapes);
    const source = ParameterInputs.fromShapes(record);
    const feeds: Record<string, HostTensor> = {};
    for (const [name, shape] of shapes) {
      const values = params.get(name);
      if (values === undefined) {
        throw new RuntimeError(
          `${EMOJI_CLASSIFIER_CLASS}.fromParameters: parameter '${name}' is missing`,
          'INPUT',
        );
      }
      feeds[name] = hostTensor('float32', [...shape], values);
    }
    return new VelodiffEmojiClassifier('(in memory)', config, source, feeds, undefined, runtime);
  }

  /** Images [N, C, S, S] in [-1, 1] → features and logits, run RUN_BATCH images at a time. */
  async classify(pixels: HostTensor): Promise<EmojiClassification> {
    const { inChannels: c, sampleSize: s } = this.config;
    try {
      this.runnable.checkInputs({ [EMOJI_CLASSIFIER_INPUT]: pixels }, this.inputSpecs, 'classify');
    } catch (error) {
      if (!(error instanceof RuntimeError)) throw error;
      throw new RuntimeError(
        `${error.message}; resize the images to ${s}×${s}, in [-1, 1], first (classifierInput does)`,
        error.code,
      );
    }
    const count = pixels.shape[0];
    const data = pixels.data as Float32Array;
    const perImage = c * s * s;
    const features = new Float32Array(count * this.config.featureDim);
    const logits: Record<string, Float32Array> = {};
    for (const head of this.config.heads) logits[head.label] = new Float32Array(count * head.classes.length);
    for (let start = 0; start < count; start += RUN_BATCH) {
      const n = Math.min(RUN_BATCH, count - start);
      // The last chunk is padded with zeros (grey images) whose outputs are dropped.
      const chunk = new Float32Array(RUN_BATCH * perImage);
      chunk.set(data.subarray(start * perImage, (start + n) * perImage));
      const { host: out } = await this.runnable.run(
        { batch: RUN_BATCH },
        {
          ...this.parameterFeeds,
          [EMOJI_CLASSIFIER_INPUT]: hostTensor('float32', [RUN_BATCH, c, s, s], chunk),
        },
        { method: 'classify' },
      );
      const f = this.config.featureDim;
      features.set((out['features'].data as Float32Array).subarray(0, n * f), start * f);
      for (const head of this.config.heads) {
        const k = head.classes.length;
        const values = out[logitsOutputName(head.label)].data as Float32Array;
        logits[head.label].set(values.subarray(0, n * k), start * k);
      }
    }
    return { count, features, logits };
  }

  /** DiffusersModel: `pixel_values` → `features` and `<label>_logits`. */
  async forward(
    inputs: Record<string, HostTensor>,
    options: { method?: string } = {},
  ): Promise<Record<string, HostTensor>> {
    this.runnable.checkMethod(options.method, ['forward']);
    this.runnable.checkInputs(inputs, this.inputSpecs);
    const result = await this.classify(inputs[EMOJI_CLASSIFIER_INPUT]);
    const out: Record<string, HostTensor> = {
      features: hostTensor('float32', [result.count, this.config.featureDim], result.features),
    };
    for (const head of this.config.heads) {
      out[logitsOutputName(head.label)] = hostTensor(
        'float32',
        [result.count, head.classes.length],
        result.logits[head.label],
      );
    }
    return out;
  }

  async close(): Promise<void> {
    this.runnable.clear();
    await this.weights?.close();
  }

  /** `pixel_values`: float32 images [N, C, S, S] at the classifier's size. */
  private get inputSpecs(): InputSpecs {
    const { inChannels: c, sampleSize: s } = this.config;
    return { [EMOJI_CLASSIFIER_INPUT]: { dtypes: ['float32'], shape: ['N', c, s, s] } };
  }
}
