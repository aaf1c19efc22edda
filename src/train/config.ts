/**
 * The training configuration file of `velodiff train --config FILE`: one JSON object whose `kind`
 * says what is trained ('vae', 'text-to-image', 'classifier'), with the optimizer, schedule, batch,
 * steps, clipping, EMA, checkpoints, samples, data and model. Every key has a default except `kind`
 * and `steps` (TRAIN_DEFAULTS, README "Training configuration").
 *
 * Validation reads the whole file before anything is built and reports every problem at once, each
 * with the file and the key path ("configs/x.json: optimizer.lr: expected a number > 0, found -1");
 * a key no section reads is an error with the closest known key, not a silent default. Model sections
 * are checked by the model classes' own config parsers (a key the model does not read is an error
 * here too), and optimizer, EMA and schedule values by the classes that own them.
 */
import { readFile } from 'node:fs/promises';
import { resolve } from 'node:path';

import { FileFormatError, VelodiffError } from '../errors.js';
import { errnoCode } from '../io/errno.js';
import { describeJson, isPlainObject } from '../io/json.js';
import { didYouMean } from '../io/suggest.js';
import { parseAutoencoderKLConfig } from '../models/vae/config.js';
import { parseEmojiClassifierConfig } from '../models/emoji-classifier.js';
import { parsePixArtConfig } from '../models/pixart-transformer.js';
import { parseT5EncoderConfig } from '../models/t5-encoder.js';
import type { VelodiffWarning } from '../warnings.js';
import { ADAMW_DEFAULTS, AdamW, type AdamWOptions } from './adamw.js';
import { EMA_DEFAULTS, EmaModel, type EmaOptions, type EmaWarmup } from './ema.js';
import type { JsonObject } from './json-value.js';
import { constantWithWarmup, warmupCosine, type LrSchedule } from './lr-schedule.js';
import { weightDecayGroups, type Optimizer, type ParameterGroup } from './optimizer.js';
import { Prodigy, PRODIGY_GLOBAL_DEFAULTS, PRODIGY_GROUP_DEFAULTS, type ProdigyOptions } from './prodigy.js';
import { checkImageSize } from './data/dataset.js';
import { EMOJI_SETS, type EmojiSet } from './data/emoji.js';
import { CLEAR_LOSS_WEIGHTS, type ClearLossWeights } from './distill/clear.js';
import { LINFUSION_LOSS_WEIGHTS, type LinFusionLossWeights } from './distill/linfusion.js';
import { EMOJI_TEXT_TO_IMAGE_MODEL } from './trainers/text-to-image.js';
import { EMOJI_VAE_CONFIG, VAE_KL_WEIGHT } from './trainers/vae.js';

export const TRAIN_KINDS = [
  'vae',
  'text-to-image',
  'classifier',
  'distill-clear',
  'distill-linfusion',
  'distill-flash',
] as const;
export type TrainKind = (typeof TRAIN_KINDS)[number];

/** `optimizer.lrScale`: parameters whose name matches `match` (a regular expression) train at lr × `scale`. */
export interface LrScaleRule {
  readonly match: string;
  readonly scale: number;
}

export type OptimizerConfig = (
  | ({ readonly kind: 'adamw' } & Readonly<AdamWOptions>)
  | ({ readonly kind: 'prodigy' } & Readonly<ProdigyOptions>)
) & {
  /** Per-parameter learning-rate multipliers, the first matching rule applying; undefined: none. */
  readonly lrScale?: readonly LrScaleRule[];
};

export type LrScheduleConfig =
  | { readonly kind: 'constant'; readonly warmupSteps: number }
  /** Decays to minLrRatio at the run's last step (`steps`). */
  | { readonly kind: 'warmup-cosine'; readonly warmupSteps: number; readonly minLrRatio: number };

export interface EmojiDataConfig {
  readonly source: 'emoji';
  readonly size: number;
  readonly sets: readonly EmojiSet[];
  readonly skinTones: 'all' | 'none';
  /** Only these base emoji (emoji-datasource `unified`), for quick runs and tests; undefined: all. */
  readonly unified: readonly string[] | undefined;
  readonly validationFraction: number;
}

export interface FolderDataConfig {
  readonly source: 'folder';
  /** Absolute (a relative path is resolved against the current directory). */
  readonly folder: string;
  readonly size: number;
  readonly onBadFile: 'error' | 'skip';
  readonly captionColumn: string;
  readonly validationFraction: number;
}

/** Where images come from, and what the loader does with them. */
export type DataConfig = (EmojiDataConfig | FolderDataConfig) & {
  readonly captionDropout: number;
  readonly horizontalFlip: boolean;
  /**
   * At most this many images of one group per epoch (emoji: one base emoji's styles and skin tones),
   * drawn afresh each epoch; undefined (left out): every image every epoch. See LoaderOptions.maxPerGroup.
   */
  readonly maxPerGroup?: number;
  /** Prepared data sets are kept here (absolute); undefined: the data module's default cache. */
  readonly cacheDir: string | undefined;
};

export interface CheckpointConfig {
  /** Optimizer updates between checkpoints (one is also written at the end and on SIGINT). */
  readonly every: number;
  /** Checkpoints kept, newest first. */
  readonly keep: number;
}

export interface SampleConfig {
  /** Optimizer updates between sample grids and loss plots (0: only at the end). */
  readonly every: number;
  /** Text-to-image: the grid's prompts (rows). */
  readonly prompts: readonly string[];
  /** Text-to-image: one column per seed. */
  readonly seeds: readonly number[];
  /** Text-to-image: denoising steps and guidance of the samples. */
  readonly steps: number;
  readonly guidance: number;
  /** VAE and classifier: validation images shown (the first ones of the split: the same every time). */
  readonly count: number;
}

export interface LogConfig {
  /** Optimizer updates between plain log lines when stderr is not a terminal. */
  readonly every: number;
}

export interface VaeModelConfig {
  /** AutoencoderKL's diffusers config.json keys. */
  readonly vae: JsonObject;
  /** Weight of the KL term against the reconstruction loss. */
  readonly klWeight: number;
}

export interface TextToImageModelConfig {
  /** PixArtTransformer2DModel's diffusers config.json keys. */
  readonly transformer: JsonObject;
  /** T5EncoderModel's transformers config.json keys (trained jointly). */
  readonly textEncoder: JsonObject;
  /** A trained AutoencoderKL folder, e.g. a vae run's model/ (absolute; relative to the current directory). */
  readonly vae: string;
  /** Min-SNR-γ loss weighting (Hang et al. 2023, eq. 6); 0: off. */
  readonly minSnrGamma: number;
  /** Tokens of a caption, padded or cut. */
  readonly maxTextLength: number;
  /**
   * How caption_projection's two linears start: `pixart`, N(0, 0.02) as PixArt's `initialize_weights`
   * (sized for T5-XXL's 4096-wide output); `fan-in`, N(0, 1/fan_in), which keeps the text's scale
   * through a narrow encoder (at 256 wide, PixArt's init leaves cross-attention keys and values at
   * about 0.05 RMS, and the prompt is barely learnt).
   */
  readonly captionProjectionInit: CaptionProjectionInit;
  /**
   * What the denoiser predicts: ε (left out, the default) or `v_prediction`, v = √ᾱ·ε − √(1 − ᾱ)·x₀,
   * whose loss weighs errors in x₀ at high noise fully where ε's weighs them by the SNR (≈ 0.002 at
   * t = 800 on PixArt's schedule). Written to the saved scheduler's `prediction_type`. Present only
   * when not ε, so runs from before the key resume unchanged.
   */
  readonly predictionType?: 'v_prediction';
  /**
   * How training timesteps are drawn: uniformly (left out, the default) or logit-normally
   * (LogitNormalSampling). Present only when not uniform, so runs from before the key resume unchanged.
   */
  readonly timestepSampling?: LogitNormalSampling;
  /**
   * Word dropout on the captions: each token of a caption but its closing `</s>` is deleted with this
   * probability (the rest close up; at least one word is kept), so that the denoiser cannot lean on one
   * word of a caption alone. Present only when > 0, so runs from before the key resume unchanged.
   */
  readonly tokenDropout?: number;
}

export type CaptionProjectionInit = 'pixart' | 'fan-in';

/**
 * `model.timestepSampling` of SD3 (Esser et al. 2024, §3.1): t = min(T − 1, ⌊T·sigmoid(mean + std·n)⌋),
 * n ~ N(0, 1); a positive mean draws more timesteps at high noise.
 */
export interface LogitNormalSampling {
  readonly kind: 'logit-normal';
  readonly mean: number;
  /** > 0. */
  readonly std: number;
}

/** `distill-clear`: a CLEAR student of a PixArt teacher (src/train/distill/clear.ts). */
export interface ClearDistillModelConfig {
  /** The teacher: a PixArt pipeline folder (absolute; relative to the current directory in the file). */
  readonly teacher: string;
  /** CLEAR's window radius in latent tokens. */
  readonly radius: number;
  /** Side of the pooling cells of the down-sampled keys/values; 1: none. */
  readonly downFactor: number;
  /** Blocks whose self-attention outputs are matched; null: every fourth from 0, as the authors. */
  readonly featureLayers: readonly number[] | null;
  /** How the teacher draws its samples (one per training image's caption): steps and guidance. */
  readonly teacherSteps: number;
  readonly teacherGuidance: number;
  /**
   * The loss terms' weights; left out when not given (CLEAR's: denoise 1, distill 0.5, attention
   * 0.5), so that runs from before the key resume unchanged.
   */
  readonly lossWeights?: ClearLossWeights;
}

/** `distill-linfusion`: a LinFusion student of a PixArt teacher (src/train/distill/linfusion.ts). */
export interface LinFusionDistillModelConfig {
  /** The teacher: a PixArt pipeline folder (absolute; relative to the current directory in the file). */
  readonly teacher: string;
  /** The input MLPs' width is the model width divided by this (LinFusion-XL's --mid_dim_scale; 1: LinFusion-1-5's m = C). */
  readonly midDimScale: number;
  /**
   * The loss terms' weights; left out when not given (LinFusion's: simple 1, kd 0.5, feat 0.5), so
   * that runs from before the key resume unchanged.
   */
  readonly lossWeights?: LinFusionLossWeights;
}

/** `distill-flash`: a Flash Diffusion LoRA student of a PixArt teacher (src/train/distill/flash.ts). */
export interface FlashDistillModelConfig {
  /** The teacher: a PixArt pipeline folder (absolute; relative to the current directory in the file). */
  readonly teacher: string;
  /** The emoji classifier whose activations the distillation distance compares (null: the shipped one). */
  readonly classifier: string | null;
  readonly loraRank: number;
  readonly loraAlpha: number;
  /** Updates per phase of the schedule (null: a quarter of the run's steps). */
  readonly phaseSteps: number | null;
  /** The teacher's DPM-Solver++ steps (the authors' PixArt K = 16) and guidance range. */
  readonly teacherSteps: number;
  readonly guidance: readonly [number, number];
}

export interface ClassifierModelConfig {
  /** VelodiffEmojiClassifier's config.json keys (its `heads` come from `labels` and the data). */
  readonly classifier: JsonObject;
  /** Which labels it predicts, one head each. */
  readonly labels: readonly ('category' | 'subcategory' | 'style')[];
  /** Largest random shift of a training image in pixels, each way (augmentation; 0: none). */
  readonly maxShift: number;
}

interface CommonConfig {
  /** The run folder (absolute); `--out` overrides. Default: runs/<config file name without .json>. */
  readonly output: string;
  readonly seed: number;
  /** Optimizer updates of the whole run (a resumed run continues to this step). */
  readonly steps: number;
  /** Images per micro-batch. */
  readonly batchSize: number;
  /** Micro-batches per optimizer update. */
  readonly accumulation: number;
  /** Largest global gradient norm (clipGradNorm); null: no clipping. */
  readonly clip: number | null;
  readonly optimizer: OptimizerConfig;
  readonly lrSchedule: LrScheduleConfig;
  /** An exponential moving average of the weights, saved beside them; null: none. */
  readonly ema: Readonly<EmaOptions> | null;
  readonly checkpoint: CheckpointConfig;
  readonly sample: SampleConfig;
  readonly log: LogConfig;
  readonly data: DataConfig;
  /** Start from another run's weights rather than from random ones; undefined (left out): random. */
  readonly init?: InitConfig;
}

/**
 * `init`: a run that starts from the weights of an earlier run of the same model, with its own
 * optimizer, schedule and steps (a warm restart: `--resume` continues a run; this starts a new one).
 * The optimizer state, the schedule's position and the data position start afresh.
 */
export type InitConfig = CheckpointInit | PipelineInit | StudentInit;

/** `init.checkpoint`: a checkpoint of a run on the same data. */
export interface CheckpointInit {
  /** A `checkpoint-<step>` folder (absolute; relative to the current directory in the file). */
  readonly checkpoint: string;
  /** Which weights: 'ema' (the average, what was shipped; default) or 'model' (the last update's). */
  readonly weights: 'ema' | 'model';
}

/**
 * `init.pipeline` (text-to-image only): a PixArt pipeline folder as the trainer writes it (such as the
 * shipped models/emoji), whose models, tokenizer and VAE must be this run's.
 */
export interface PipelineInit {
  /** The folder (absolute; relative to the current directory in the file). */
  readonly pipeline: string;
}

/**
 * `init.student` (distillation runs only): a student folder of the run's method, as `distill` exports it
 * (such as models/emoji-students/linfusion), whose trained tensors must be this run's. The student may
 * come from another teacher (a warm start after the teacher changed); what the folder does not hold
 * (Flash's discriminator) starts as the method starts it.
 */
export interface StudentInit {
  /** The folder (absolute; relative to the current directory in the file). */
  readonly student: string;
}

export type TrainConfig =
  | (CommonConfig & { readonly kind: 'vae'; readonly model: VaeModelConfig })
  | (CommonConfig & { readonly kind: 'text-to-image'; readonly model: TextToImageModelConfig })
  | (CommonConfig & { readonly kind: 'classifier'; readonly model: ClassifierModelConfig })
  | (CommonConfig & { readonly kind: 'distill-clear'; readonly model: ClearDistillModelConfig })
  | (CommonConfig & { readonly kind: 'distill-linfusion'; readonly model: LinFusionDistillModelConfig })
  | (CommonConfig & { readonly kind: 'distill-flash'; readonly model: FlashDistillModelConfig });

/** Prompts of the default sample grid: the categories the issue's targets name. */
export const DEFAULT_SAMPLE_PROMPTS: readonly string[] = [
  'grinning face, noto style',
  'red heart, noto style',
  'flag: Japan, twemoji style',
  'dog face, noto style',
  'pizza, twemoji style',
  'rocket, noto style',
];

/**
 * Every default, for the README's reference and the tests. Model sections left out mean the model
 * class's own defaults for each key the file does not give.
 */
export const TRAIN_DEFAULTS = {
  seed: 0,
  batchSize: 32,
  accumulation: 1,
  clip: 1.0,
  optimizer: { kind: 'adamw', ...ADAMW_DEFAULTS },
  lrSchedule: { kind: 'constant', warmupSteps: 0 },
  ema: null,
  /** What `ema: {}` (or any partial object) is completed with. */
  emaOptions: { ...EMA_DEFAULTS },
  checkpoint: { every: 500, keep: 3 },
  sample: { every: 500, prompts: DEFAULT_SAMPLE_PROMPTS, seeds: [0, 1], steps: 25, guidance: 4.5, count: 8 },
  log: { every: 50 },
  data: {
    source: 'emoji',
    size: 64,
    sets: EMOJI_SETS,
    skinTones: 'all',
    validationFraction: { emoji: 0.1, folder: 0 },
    captionDropout: {
      'text-to-image': 0.1,
      vae: 0,
      classifier: 0,
      'distill-clear': 0,
      'distill-linfusion': 0,
      'distill-flash': 0,
    },
    horizontalFlip: false,
    onBadFile: 'error',
    captionColumn: 'text',
  },
  model: {
    vae: { klWeight: VAE_KL_WEIGHT },
    'text-to-image': { minSnrGamma: 5, maxTextLength: 32, captionProjectionInit: 'pixart' },
    classifier: { labels: ['category', 'subcategory'], maxShift: 4 },
    'distill-clear': { downFactor: 1, featureLayers: null, teacherSteps: 25, teacherGuidance: 4.5 },
    'distill-linfusion': { midDimScale: 16 },
    'distill-flash': { loraRank: 16, loraAlpha: 2, teacherSteps: 16, guidance: [2, 9] as const },
  },
} as const;

/** A configuration file that does not validate: every problem, each with its key path. */
export class TrainConfigError extends FileFormatError {
  override readonly name: string = 'TrainConfigError';
  constructor(
    path: string,
    /** 'key.path: what is wrong', one per problem. */
    readonly problems: readonly string[],
  ) {
    super(
      problems.length === 1
        ? `${path}: ${problems[0]}`
        : `${path}: ${problems.length} problems:\n${problems.map((p) => `  ${p}`).join('\n')}`,
      'TRAIN_CONFIG',
      path,
    );
  }
}

/** Reads one section of the file, tracking which keys were read and collecting problems. */
class Section {
  readonly #read = new Set<string>();

  constructor(
    readonly raw: Record<string, unknown>,
    /** 'optimizer', 'data', '' for the top level. */
    readonly path: string,
    readonly problems: string[],
  ) {}

  keyPath(key: string): string {
    return this.path ? `${this.path}.${key}` : key;
  }

  problem(key: string, expected: string, found: unknown): void {
    this.problems.push(`${this.keyPath(key)}: expected ${expected}, found ${describeJson(found)}`);
  }

  has(key: string): boolean {
    return this.raw[key] !== undefined;
  }

  value(key: string): unknown {
    this.#read.add(key);
    return this.raw[key];
  }

  number(
    key: string,
    fallback: number,
    check: (n: number) => boolean = () => true,
    expected = 'a number',
  ): number {
    const v = this.value(key);
    if (v === undefined) return fallback;
    if (typeof v !== 'number' || !Number.isFinite(v) || !check(v)) {
      this.problem(key, expected, v);
      return fallback;
    }
    return v;
  }

  integer(key: string, fallback: number, min: number): number {
    return this.number(key, fallback, (n) => Number.isSafeInteger(n) && n >= min, `an integer ≥ ${min}`);
  }

  boolean(key: string, fallback: boolean): boolean {
    const v = this.value(key);
    if (v === undefined) return fallback;
    if (typeof v !== 'boolean') {
      this.problem(key, 'true or false', v);
      return fallback;
    }
    return v;
  }

  string(key: string, fallback: string): string {
    const v = this.value(key);
    if (v === undefined) return fallback;
    if (typeof v !== 'string' || v === '') {
      this.problem(key, 'a non-empty string', v);
      return fallback;
    }
    return v;
  }

  oneOf<T extends string>(key: string, fallback: T, allowed: readonly T[]): T {
    const v = this.value(key);
    if (v === undefined) return fallback;
    if (typeof v !== 'string' || !allowed.includes(v as T)) {
      this.problem(key, `one of ${allowed.map((a) => `'${a}'`).join(', ')}`, v);
      return fallback;
    }
    return v as T;
  }

  list<T>(
    key: string,
    fallback: readonly T[],
    isItem: (x: unknown) => x is T,
    expected: string,
  ): readonly T[] {
    const v = this.value(key);
    if (v === undefined) return fallback;
    if (!Array.isArray(v) || !v.every(isItem)) {
      this.problem(key, expected, v);
      return fallback;
    }
    return v;
  }

  /** A nested section; undefined (and a problem) when the value is not an object. */
  section(key: string): Section | undefined {
    const v = this.value(key);
    if (v === undefined) return new Section({}, this.keyPath(key), this.problems);
    if (!isPlainObject(v)) {
      this.problem(key, 'an object', v);
      return undefined;
    }
    return new Section(v, this.keyPath(key), this.problems);
  }

  /** The object under `key` as JSON, for sections another parser checks. */
  object(key: string): JsonObject {
    const v = this.value(key);
    if (v === undefined) return {};
    if (!isPlainObject(v)) {
      this.problem(key, 'an object', v);
      return {};
    }
    return v as JsonObject;
  }

  /** Reports the keys nothing read, with the closest known key. */
  finish(known: readonly string[]): void {
    for (const key of Object.keys(this.raw)) {
      if (this.#read.has(key) || key.startsWith('$') || key.startsWith('//')) continue;
      this.problems.push(
        `${this.keyPath(key)}: unknown key.${didYouMean(key, known)} Known keys here: ${known.join(', ')}`,
      );
    }
  }
}

const isString = (x: unknown): x is string => typeof x === 'string' && x !== '';
const isInteger = (x: unknown): x is number => Number.isSafeInteger(x);
const isEmojiSet = (x: unknown): x is EmojiSet => EMOJI_SETS.includes(x as EmojiSet);
const isLabel = (x: unknown): x is 'category' | 'subcategory' | 'style' =>
  x === 'category' || x === 'subcategory' || x === 'style';

/** Runs a check owned by another module (optimizer, EMA, schedule) and keeps its message as a problem. */
function ownedCheck(problems: string[], path: string, check: () => void): void {
  try {
    check();
  } catch (error) {
    if (!(error instanceof VelodiffError)) throw error;
    problems.push(`${path}: ${error.message}`);
  }
}

function isPair(x: unknown): x is readonly [number, number] {
  return Array.isArray(x) && x.length === 2 && x.every((n) => typeof n === 'number' && Number.isFinite(n));
}

/** `betas`: two numbers. */
function readBetas(s: Section, fallback: readonly [number, number]): readonly [number, number] {
  const v = s.value('betas');
  if (v === undefined) return fallback;
  if (!isPair(v)) {
    s.problem('betas', 'two numbers [β1, β2]', v);
    return fallback;
  }
  return v;
}

/** `lrScale`: a list of {match, scale}, each regular expression valid and each scale > 0; left out when not given. */
function readLrScale(s: Section): { lrScale?: readonly LrScaleRule[] } {
  if (!s.has('lrScale')) return (s.value('lrScale'), {});
  const v = s.value('lrScale');
  const expected = 'a list of {"match": "<regular expression>", "scale": <number > 0>}';
  if (!Array.isArray(v)) {
    s.problem('lrScale', expected, v);
    return {};
  }
  const rules: LrScaleRule[] = [];
  v.forEach((item: unknown, i) => {
    const rule = item as Record<string, unknown>;
    const keys = isPlainObject(item) ? Object.keys(item).sort().join(',') : '';
    if (keys !== 'match,scale' || typeof rule.match !== 'string' || typeof rule.scale !== 'number') {
      s.problem(`lrScale[${i}]`, expected.replace('a list of ', ''), item);
      return;
    }
    try {
      new RegExp(rule.match);
    } catch (error) {
      s.problem(`lrScale[${i}].match`, `a regular expression (${(error as Error).message})`, rule.match);
      return;
    }
    if (!(Number.isFinite(rule.scale) && rule.scale > 0)) {
      s.problem(`lrScale[${i}].scale`, 'a number > 0', rule.scale);
      return;
    }
    rules.push({ match: rule.match, scale: rule.scale });
  });
  return { lrScale: rules };
}

function readOptimizer(s: Section): OptimizerConfig {
  const lrScale = readLrScale(s);
  const kind = s.oneOf('kind', 'adamw', ['adamw', 'prodigy']);
  const positive = (n: number): boolean => n > 0;
  const nonNegative = (n: number): boolean => n >= 0;
  if (kind === 'adamw') {
    const d = ADAMW_DEFAULTS;
    const options: AdamWOptions = {
      lr: s.number('lr', d.lr, nonNegative, 'a number ≥ 0'),
      betas: readBetas(s, d.betas),
      eps: s.number('eps', d.eps, positive, 'a number > 0'),
      weightDecay: s.number('weightDecay', d.weightDecay, nonNegative, 'a number ≥ 0'),
      amsgrad: s.boolean('amsgrad', d.amsgrad),
      maximize: s.boolean('maximize', d.maximize),
    };
    s.finish(['kind', 'lrScale', ...Object.keys(d)]);
    ownedCheck(s.problems, s.path, () => new AdamW(['a parameter'], options));
    return { kind, ...options, ...lrScale };
  }
  const defaults: ProdigyOptions = { ...PRODIGY_GROUP_DEFAULTS, ...PRODIGY_GLOBAL_DEFAULTS };
  const beta3Value = s.value('beta3');
  if (beta3Value !== undefined && beta3Value !== null && typeof beta3Value !== 'number') {
    s.problem('beta3', 'a number, or null for √β2', beta3Value);
  }
  const options: ProdigyOptions = {
    lr: s.number('lr', defaults.lr, nonNegative, 'a number ≥ 0'),
    weightDecay: s.number('weightDecay', defaults.weightDecay, nonNegative, 'a number ≥ 0'),
    eps: s.number('eps', defaults.eps, positive, 'a number > 0'),
    safeguardWarmup: s.boolean('safeguardWarmup', defaults.safeguardWarmup),
    sliceP: s.integer('sliceP', defaults.sliceP, 1),
    betas: readBetas(s, defaults.betas),
    beta3: typeof beta3Value === 'number' ? beta3Value : undefined,
    decouple: s.boolean('decouple', defaults.decouple),
    useBiasCorrection: s.boolean('useBiasCorrection', defaults.useBiasCorrection),
    d0: s.number('d0', defaults.d0, positive, 'a number > 0'),
    dCoef: s.number('dCoef', defaults.dCoef, positive, 'a number > 0'),
    // JSON has no Infinity: a growth rate left out is unbounded.
    growthRate: s.number('growthRate', defaults.growthRate, positive, 'a number > 0'),
  };
  s.finish(['kind', 'lrScale', ...Object.keys(defaults)]);
  ownedCheck(s.problems, s.path, () => new Prodigy(['a parameter'], options));
  return { kind, ...options, ...lrScale };
}

function readLrSchedule(s: Section, steps: number): LrScheduleConfig {
  const kind = s.oneOf('kind', 'constant', ['constant', 'warmup-cosine']);
  const warmupSteps = s.integer('warmupSteps', 0, 0);
  if (kind === 'constant') {
    s.finish(['kind', 'warmupSteps']);
    ownedCheck(s.problems, s.path, () => constantWithWarmup({ warmupSteps }));
    return { kind, warmupSteps };
  }
  const minLrRatio = s.number('minLrRatio', 0, (n) => n >= 0 && n <= 1, 'a number in [0, 1]');
  s.finish(['kind', 'warmupSteps', 'minLrRatio']);
  ownedCheck(s.problems, s.path, () => warmupCosine({ warmupSteps, totalSteps: steps, minLrRatio }));
  return { kind, warmupSteps, minLrRatio };
}

function readEma(parent: Section): Readonly<EmaOptions> | null {
  const value = parent.raw.ema;
  if (value === null || value === false) {
    parent.value('ema');
    return null;
  }
  if (value === undefined) {
    parent.value('ema');
    return TRAIN_DEFAULTS.ema;
  }
  const s = parent.section('ema');
  if (!s) return null;
  const d = EMA_DEFAULTS;
  const options: EmaOptions = {
    decay: s.number('decay', d.decay, (n) => n >= 0 && n <= 1, 'a number in [0, 1]'),
    minDecay: s.number('minDecay', d.minDecay, (n) => n >= 0 && n <= 1, 'a number in [0, 1]'),
    updateAfterStep: s.integer('updateAfterStep', d.updateAfterStep, 0),
    warmup: s.oneOf<EmaWarmup>('warmup', d.warmup, ['diffusers', 'power', 'none']),
    invGamma: s.number('invGamma', d.invGamma, (n) => n > 0, 'a number > 0'),
    power: s.number('power', d.power, (n) => n > 0, 'a number > 0'),
  };
  s.finish(Object.keys(d));
  ownedCheck(s.problems, s.path, () => new EmaModel(new Map(), options));
  return options;
}

/** Keys of `data` that only the emoji source reads, and only an image folder. */
const EMOJI_DATA_KEYS = ['sets', 'skinTones', 'unified'];
const LOADER_KEYS = ['captionDropout', 'horizontalFlip', 'maxPerGroup', 'cacheDir'];
/** The kinds whose batches use `captionDropout`: those with a prompt-conditioned prediction sampled with CFG. */
const DROPOUT_KINDS: readonly TrainKind[] = ['text-to-image', 'distill-clear', 'distill-linfusion'];
const FOLDER_DATA_KEYS = ['onBadFile', 'captionColumn'];

function readData(
  parent: Section,
  kind: TrainKind,
  baseDir: string,
  dataOverride: string | undefined,
): DataConfig {
  // "data": "emoji" or "data": "some/folder" is short for {"source": …}.
  const raw = parent.raw.data;
  const s =
    typeof raw === 'string'
      ? (parent.value('data'), new Section({ source: raw }, 'data', parent.problems))
      : parent.section('data');
  const d = TRAIN_DEFAULTS.data;
  if (!s) return { ...emojiDefaults(), ...loaderDefaults(kind) };
  const sourceValue = dataOverride ?? s.string('source', d.source);
  if (dataOverride !== undefined) s.value('source');
  const size = s.integer('size', d.size, 8);
  ownedCheck(s.problems, s.keyPath('size'), () => checkImageSize(size));
  const common = {
    captionDropout: s.number(
      'captionDropout',
      d.captionDropout[kind],
      (n) => n >= 0 && n <= 1,
      'a number in [0, 1]',
    ),
    horizontalFlip: s.boolean('horizontalFlip', d.horizontalFlip),
    // Left out of the configuration when not given, so runs from before the key resume unchanged.
    ...(s.has('maxPerGroup') ? { maxPerGroup: s.integer('maxPerGroup', 1, 1) } : {}),
    cacheDir: s.has('cacheDir')
      ? resolve(baseDir, s.string('cacheDir', ''))
      : (s.value('cacheDir'), undefined),
  };
  if (common.captionDropout > 0 && !DROPOUT_KINDS.includes(kind)) {
    s.problems.push(
      `${s.keyPath('captionDropout')}: a ${kind} run has no use for dropped captions ` +
        `(only ${DROPOUT_KINDS.join(', ')} runs train the unconditional prediction of classifier-free guidance); expected 0, found ${common.captionDropout}`,
    );
  }
  const fraction = (fallback: number): number =>
    s.number('validationFraction', fallback, (n) => n >= 0 && n < 1, 'a number in [0, 1)');
  // --data replaces the file's source: the keys of the source it replaces no longer apply.
  if (dataOverride !== undefined) {
    for (const key of [...EMOJI_DATA_KEYS, ...FOLDER_DATA_KEYS]) s.value(key);
  }
  if (sourceValue === 'emoji') {
    const config: DataConfig = {
      source: 'emoji',
      size,
      sets: s.list('sets', d.sets, isEmojiSet, `a list of ${EMOJI_SETS.map((x) => `'${x}'`).join(', ')}`),
      skinTones: s.oneOf('skinTones', d.skinTones, ['all', 'none']),
      unified: s.has('unified')
        ? s.list('unified', [], isString, 'a list of emoji code points such as "2764-FE0F"')
        : (s.value('unified'), undefined),
      validationFraction: fraction(d.validationFraction.emoji),
      ...common,
    };
    s.finish(['source', 'size', 'sets', 'skinTones', 'unified', 'validationFraction', ...LOADER_KEYS]);
    return config;
  }
  const folder = dataOverride !== undefined ? resolve(dataOverride) : resolve(baseDir, sourceValue);
  const config: DataConfig = {
    source: 'folder',
    folder,
    size,
    onBadFile: s.oneOf('onBadFile', d.onBadFile, ['error', 'skip']),
    captionColumn: s.string('captionColumn', d.captionColumn),
    validationFraction: fraction(d.validationFraction.folder),
    ...common,
  };
  s.finish(['source', 'size', 'onBadFile', 'captionColumn', 'validationFraction', ...LOADER_KEYS]);
  return config;

  function emojiDefaults(): EmojiDataConfig {
    return {
      source: 'emoji',
      size: d.size,
      sets: d.sets,
      skinTones: d.skinTones,
      unified: undefined,
      validationFraction: d.validationFraction.emoji,
    };
  }
  function loaderDefaults(k: TrainKind) {
    return { captionDropout: d.captionDropout[k], horizontalFlip: d.horizontalFlip, cacheDir: undefined };
  }
}

/**
 * `model.lossWeights` of a distillation: any of the method's terms (the rest keep the authors'
 * weights), each a number ≥ 0, not all 0. Nothing when the key is not given: the configuration then
 * hashes as it did before the key existed.
 */
function readLossWeights<W extends Record<string, number>>(
  parent: Section,
  defaults: W,
): { lossWeights?: W } {
  if (!parent.has('lossWeights')) return (parent.value('lossWeights'), {});
  const s = parent.section('lossWeights');
  if (!s) return {};
  const terms = Object.keys(defaults);
  const weights = Object.fromEntries(
    terms.map((term) => [term, s.number(term, defaults[term], (n) => n >= 0, 'a number ≥ 0')]),
  ) as W;
  s.finish(terms);
  if (terms.every((term) => weights[term] === 0))
    parent.problem('lossWeights', 'at least one weight above 0', weights);
  return { lossWeights: weights };
}

/** `model.timestepSampling`: 'uniform' (left out) or a logit-normal density. */
function readTimestepSampling(parent: Section): 'uniform' | LogitNormalSampling {
  const raw = parent.raw.timestepSampling;
  if (raw === undefined || raw === 'uniform') return (parent.value('timestepSampling'), 'uniform');
  const expected = `'uniform' or {"kind": "logit-normal", "mean": <number>, "std": <number > 0>}`;
  if (!isPlainObject(raw)) {
    parent.problem('timestepSampling', expected, parent.value('timestepSampling'));
    return 'uniform';
  }
  const s = parent.section('timestepSampling') as Section;
  const kind = s.oneOf<'logit-normal'>('kind', 'logit-normal', ['logit-normal']);
  if (!s.has('kind')) s.problem('kind', "'logit-normal'", undefined);
  // SD3's defaults (diffusers' train_dreambooth_sd3.py --logit_mean 0 --logit_std 1).
  const sampling: LogitNormalSampling = {
    kind,
    mean: s.number('mean', 0),
    std: s.number('std', 1, (n) => n > 0, 'a number > 0'),
  };
  s.finish(['kind', 'mean', 'std']);
  return sampling;
}

/**
 * `init`: left out of the configuration when not given, so runs from before the key resume unchanged.
 * Exactly one of `checkpoint` (with `weights`), `pipeline` (text-to-image runs only) and `student`
 * (distillation runs only).
 */
function readInit(parent: Section, kind: TrainKind, baseDir: string): { init?: InitConfig } {
  if (!parent.has('init')) return (parent.value('init'), {});
  const s = parent.section('init');
  if (!s) return {};
  const sources = (['checkpoint', 'pipeline', 'student'] as const).filter((key) => s.has(key));
  if (sources.length > 1) {
    parent.problem(
      'init',
      "exactly one of 'checkpoint' (an earlier run's checkpoint folder), 'pipeline' (a pipeline folder) " +
        "and 'student' (a student folder)",
      s.raw,
    );
  }
  const folderKey = sources.length === 1 && sources[0] !== 'checkpoint' ? sources[0] : undefined;
  if (folderKey !== undefined) {
    const folder = s.string(folderKey, '');
    const allowed = folderKey === 'pipeline' ? kind === 'text-to-image' : kind.startsWith('distill-');
    if (!allowed) {
      s.problem(
        folderKey,
        folderKey === 'pipeline'
          ? `init.checkpoint instead (only a text-to-image run starts from a pipeline folder; this run is '${kind}')`
          : `init.checkpoint instead (only a distillation run starts from a student folder; this run is '${kind}')`,
        folder,
      );
    }
    if (s.has('weights')) {
      s.problem(
        'weights',
        `nothing beside init.${folderKey} (the folder holds one set of weights: the ones it ships)`,
        s.value('weights'),
      );
    }
    s.finish([folderKey, 'weights']);
    const path = resolve(baseDir, folder);
    return { init: folderKey === 'pipeline' ? { pipeline: path } : { student: path } };
  }
  const checkpoint = s.string('checkpoint', '');
  if (checkpoint === '' && !s.has('checkpoint')) {
    s.problem(
      'checkpoint',
      "a checkpoint folder of an earlier run, such as 'runs/x/checkpoint-4000'" +
        (kind === 'text-to-image' ? " (or init.pipeline: a pipeline folder such as 'models/emoji')" : '') +
        (kind.startsWith('distill-')
          ? " (or init.student: a student folder such as 'models/emoji-students/linfusion')"
          : ''),
      undefined,
    );
  }
  const weights = s.oneOf<'ema' | 'model'>('weights', 'ema', ['ema', 'model']);
  // A second source was reported above: read, so that it is not reported again as an unknown key.
  for (const key of ['pipeline', 'student']) s.value(key);
  s.finish(['checkpoint', 'weights', 'pipeline', 'student']);
  return { init: { checkpoint: resolve(baseDir, checkpoint), weights } };
}

function readSample(s: Section, kind: TrainKind): SampleConfig {
  const d = TRAIN_DEFAULTS.sample;
  const every = s.integer('every', d.every, 0);
  if (
    kind === 'text-to-image' ||
    kind === 'distill-clear' ||
    kind === 'distill-linfusion' ||
    kind === 'distill-flash'
  ) {
    const config = {
      every,
      prompts: s.list('prompts', d.prompts, isString, 'a list of non-empty strings'),
      seeds: s.list('seeds', d.seeds, isInteger, 'a list of integers'),
      steps: s.integer('steps', d.steps, 1),
      guidance: s.number('guidance', d.guidance, (n) => n >= 0, 'a number ≥ 0'),
      count: d.count,
    };
    if (config.prompts.length === 0) s.problem('prompts', 'at least one prompt', []);
    if (config.seeds.length === 0) s.problem('seeds', 'at least one seed', []);
    s.finish(['every', 'prompts', 'seeds', 'steps', 'guidance']);
    return config;
  }
  const config = { ...d, every, count: s.integer('count', d.count, 1) };
  s.finish(['every', 'count']);
  return config;
}

/** Runs a model class's config parser on a section; its errors and unused-key warnings become problems. */
function modelSection(
  problems: string[],
  file: string,
  keyPath: string,
  raw: JsonObject,
  parse: (raw: Record<string, unknown>, path: string, onWarning: (w: VelodiffWarning) => void) => unknown,
  /** What a saved config.json says of its class (`_class_name`, `model_type`), which a section may leave out. */
  identity: JsonObject = {},
): void {
  const where = `${file} (${keyPath})`;
  try {
    parse({ ...identity, ...raw }, where, (warning) => {
      if (warning.code === 'CONFIG_UNUSED_KEYS') {
        for (const name of warning.names) problems.push(`${keyPath}.${name}: unknown key for this model`);
      } else problems.push(`${keyPath}: ${warning.message}`);
    });
  } catch (error) {
    if (!(error instanceof VelodiffError)) throw error;
    problems.push(`${keyPath}: ${error.message.replace(`${where}: `, '')}`);
  }
}

function readModel(s: Section, kind: TrainKind, file: string, baseDir: string): TrainConfig['model'] {
  if (kind === 'vae') {
    const vae = s.object('vae');
    // The trainer builds the file's keys over the emoji VAE's (EMOJI_VAE_CONFIG): checked the same way.
    modelSection(s.problems, file, s.keyPath('vae'), vae, parseAutoencoderKLConfig, {
      _class_name: 'AutoencoderKL',
      ...(EMOJI_VAE_CONFIG as JsonObject),
    });
    const klWeight = s.number('klWeight', TRAIN_DEFAULTS.model.vae.klWeight, (n) => n >= 0, 'a number ≥ 0');
    s.finish(['vae', 'klWeight']);
    return { vae, klWeight };
  }
  if (kind === 'text-to-image') {
    const d = TRAIN_DEFAULTS.model['text-to-image'];
    const transformer = s.object('transformer');
    // Keys the trainer derives from the VAE and the text encoder (caption_channels, sample_size, …) may
    // be left out: a stand-in lets the parser check the rest; the trainer checks any that are given.
    // The trainer builds the file's keys over the emoji model's (EMOJI_TEXT_TO_IMAGE_MODEL).
    modelSection(s.problems, file, s.keyPath('transformer'), transformer, parsePixArtConfig, {
      caption_channels: 1,
      ...EMOJI_TEXT_TO_IMAGE_MODEL.transformer,
    });
    const textEncoder = s.object('textEncoder');
    modelSection(s.problems, file, s.keyPath('textEncoder'), textEncoder, parseT5EncoderConfig, {
      model_type: 't5',
      ...EMOJI_TEXT_TO_IMAGE_MODEL.textEncoder,
    });
    const vae = s.string('vae', '');
    if (vae === '' && !s.has('vae'))
      s.problem('vae', 'the folder of a trained AutoencoderKL (a vae run’s model/)', undefined);
    const config = {
      transformer,
      textEncoder,
      vae: vae === '' ? '' : resolve(baseDir, vae),
      minSnrGamma: s.number('minSnrGamma', d.minSnrGamma, (n) => n >= 0, 'a number ≥ 0 (0: off)'),
      maxTextLength: s.integer('maxTextLength', d.maxTextLength, 1),
      captionProjectionInit: s.oneOf<CaptionProjectionInit>(
        'captionProjectionInit',
        d.captionProjectionInit,
        ['pixart', 'fan-in'],
      ),
    };
    const predictionType = s.oneOf<'epsilon' | 'v_prediction'>('predictionType', 'epsilon', [
      'epsilon',
      'v_prediction',
    ]);
    const timestepSampling = readTimestepSampling(s);
    const tokenDropout = s.number('tokenDropout', 0, (n) => n >= 0 && n < 1, 'a probability in [0, 1)');
    s.finish([
      'transformer',
      'textEncoder',
      'vae',
      'minSnrGamma',
      'maxTextLength',
      'captionProjectionInit',
      'predictionType',
      'timestepSampling',
      'tokenDropout',
    ]);
    // Keys at their defaults are left out, so runs from before them resume unchanged.
    return {
      ...config,
      ...(predictionType === 'v_prediction' ? { predictionType } : {}),
      ...(timestepSampling === 'uniform' ? {} : { timestepSampling }),
      ...(tokenDropout > 0 ? { tokenDropout } : {}),
    };
  }
  if (kind === 'distill-flash') {
    const d = TRAIN_DEFAULTS.model['distill-flash'];
    const teacher = s.string('teacher', '');
    if (teacher === '' && !s.has('teacher'))
      s.problem('teacher', 'the teacher: a PixArt pipeline folder such as models/emoji', undefined);
    const classifier = s.has('classifier') ? s.string('classifier', '') : '';
    const guidance = s.list(
      'guidance',
      d.guidance,
      (v): v is number => typeof v === 'number' && Number.isFinite(v) && v >= 0,
      'two numbers [min, max] ≥ 0',
    );
    if (guidance.length !== 2 || guidance[0] > guidance[1])
      s.problem('guidance', 'two numbers [min, max] with min ≤ max', guidance);
    const config = {
      teacher: teacher === '' ? '' : resolve(baseDir, teacher),
      classifier: classifier === '' ? null : resolve(baseDir, classifier),
      loraRank: s.integer('loraRank', d.loraRank, 1),
      loraAlpha: s.number('loraAlpha', d.loraAlpha, (n) => n > 0, 'a number > 0'),
      phaseSteps: s.has('phaseSteps') ? s.integer('phaseSteps', 1, 1) : null,
      teacherSteps: s.integer('teacherSteps', d.teacherSteps, 4),
      guidance: [guidance[0] ?? d.guidance[0], guidance[1] ?? d.guidance[1]] as const,
    };
    s.finish(['teacher', 'classifier', 'loraRank', 'loraAlpha', 'phaseSteps', 'teacherSteps', 'guidance']);
    return config;
  }
  if (kind === 'distill-linfusion') {
    const teacher = s.string('teacher', '');
    if (teacher === '' && !s.has('teacher'))
      s.problem('teacher', 'the teacher: a PixArt pipeline folder such as models/emoji', undefined);
    const config = {
      teacher: teacher === '' ? '' : resolve(baseDir, teacher),
      midDimScale: s.integer('midDimScale', TRAIN_DEFAULTS.model['distill-linfusion'].midDimScale, 1),
      ...readLossWeights(s, LINFUSION_LOSS_WEIGHTS),
    };
    s.finish(['teacher', 'midDimScale', 'lossWeights']);
    return config;
  }
  if (kind === 'distill-clear') {
    const d = TRAIN_DEFAULTS.model['distill-clear'];
    const teacher = s.string('teacher', '');
    if (teacher === '' && !s.has('teacher'))
      s.problem('teacher', 'the teacher: a PixArt pipeline folder such as models/emoji', undefined);
    const featureLayers = s.has('featureLayers')
      ? s.list(
          'featureLayers',
          [],
          (v): v is number => isInteger(v) && (v as number) >= 0,
          'a list of block indices',
        )
      : d.featureLayers;
    if (featureLayers !== null && featureLayers.length === 0)
      s.problem('featureLayers', 'at least one block', []);
    const config = {
      teacher: teacher === '' ? '' : resolve(baseDir, teacher),
      radius: s.number('radius', 0, (n) => n >= 1, 'a window radius ≥ 1 (latent tokens)'),
      downFactor: s.integer('downFactor', d.downFactor, 1),
      featureLayers,
      teacherSteps: s.integer('teacherSteps', d.teacherSteps, 1),
      teacherGuidance: s.number('teacherGuidance', d.teacherGuidance, (n) => n >= 0, 'a number ≥ 0'),
      ...readLossWeights(s, CLEAR_LOSS_WEIGHTS),
    };
    if (!s.has('radius')) s.problem('radius', 'a window radius ≥ 1 (latent tokens)', undefined);
    s.finish([
      'teacher',
      'radius',
      'downFactor',
      'featureLayers',
      'teacherSteps',
      'teacherGuidance',
      'lossWeights',
    ]);
    return config;
  }
  const labels = s.list(
    'labels',
    TRAIN_DEFAULTS.model.classifier.labels,
    isLabel,
    "a list of 'category', 'subcategory', 'style'",
  );
  if (labels.length === 0) s.problem('labels', 'at least one label', []);
  const classifier = s.object('classifier');
  modelSection(s.problems, file, s.keyPath('classifier'), classifier, parseEmojiClassifierConfig);
  const config = {
    classifier,
    labels,
    maxShift: s.integer('maxShift', TRAIN_DEFAULTS.model.classifier.maxShift, 0),
  };
  s.finish(['classifier', 'labels', 'maxShift']);
  return config;
}

export interface ParseTrainConfigOptions {
  /** The file's path, for messages and for the default output folder's name. */
  readonly path: string;
  /** `--data DIR`: replaces data.source. */
  readonly data?: string;
  /** `--out DIR`: replaces output. */
  readonly output?: string;
}

const TOP_KEYS = [
  'kind',
  'output',
  'seed',
  'steps',
  'batchSize',
  'accumulation',
  'clip',
  'optimizer',
  'lrSchedule',
  'ema',
  'checkpoint',
  'sample',
  'log',
  'data',
  'model',
  'init',
] as const;

/** Checks a parsed configuration file and fills in every default; throws TrainConfigError listing all problems. */
export function parseTrainConfig(raw: unknown, options: ParseTrainConfigOptions): TrainConfig {
  const file = options.path;
  // Paths in the file are relative to the current directory, as paths on the command line are.
  const baseDir = process.cwd();
  const problems: string[] = [];
  if (!isPlainObject(raw))
    throw new TrainConfigError(file, [`expected a JSON object, found ${describeJson(raw)}`]);
  const top = new Section(raw, '', problems);
  const kindValue = top.value('kind');
  if (!TRAIN_KINDS.includes(kindValue as TrainKind)) {
    problems.push(
      `kind: expected one of ${TRAIN_KINDS.map((k) => `'${k}'`).join(', ')}, found ${describeJson(kindValue)}`,
    );
    throw new TrainConfigError(file, problems);
  }
  const kind = kindValue as TrainKind;
  const stepsValue = top.value('steps');
  if (stepsValue === undefined) problems.push('steps: required: the optimizer updates of the whole run');
  const steps = top.integer('steps', 1, 1);
  const defaultOutput = resolve('runs', file.replace(/^.*[\\/]/, '').replace(/\.json$/i, ''));
  const outputValue = top.has('output')
    ? resolve(baseDir, top.string('output', '.'))
    : (top.value('output'), defaultOutput);
  const clipValue = top.value('clip');
  let clip: number | null = TRAIN_DEFAULTS.clip;
  if (clipValue === null) clip = null;
  else if (clipValue !== undefined)
    clip = top.number('clip', TRAIN_DEFAULTS.clip, (n) => n > 0, 'a number > 0, or null for none');
  const section = (key: string): Section => top.section(key) ?? new Section({}, key, problems);
  const checkpointSection = section('checkpoint');
  const checkpoint = {
    every: checkpointSection.integer('every', TRAIN_DEFAULTS.checkpoint.every, 1),
    keep: checkpointSection.integer('keep', TRAIN_DEFAULTS.checkpoint.keep, 1),
  };
  checkpointSection.finish(['every', 'keep']);
  const logSection = section('log');
  const log = { every: logSection.integer('every', TRAIN_DEFAULTS.log.every, 1) };
  logSection.finish(['every']);
  const common = {
    output: options.output !== undefined ? resolve(options.output) : outputValue,
    seed: top.integer('seed', TRAIN_DEFAULTS.seed, 0),
    steps,
    batchSize: top.integer('batchSize', TRAIN_DEFAULTS.batchSize, 1),
    accumulation: top.integer('accumulation', TRAIN_DEFAULTS.accumulation, 1),
    clip,
    optimizer: readOptimizer(section('optimizer')),
    lrSchedule: readLrSchedule(section('lrSchedule'), steps),
    ema: readEma(top),
    checkpoint,
    sample: readSample(section('sample'), kind),
    log,
    data: readData(top, kind, baseDir, options.data),
    ...readInit(top, kind, baseDir),
  };
  const model = readModel(section('model'), kind, file, baseDir);
  top.finish(TOP_KEYS);
  if (problems.length > 0) throw new TrainConfigError(file, problems);
  return { kind, ...common, model } as TrainConfig;
}

/** Reads and checks a configuration file (parseTrainConfig), naming the file when it is missing or not JSON. */
export async function readTrainConfig(
  path: string,
  overrides: Omit<ParseTrainConfigOptions, 'path'> = {},
): Promise<TrainConfig> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (error) {
    const code = errnoCode(error);
    throw new FileFormatError(
      code === 'ENOENT'
        ? `${path}: no such training configuration file (see configs/ for examples)`
        : `${path}: cannot read the training configuration (${code ?? (error as Error).message})`,
      'TRAIN_CONFIG_MISSING',
      path,
    );
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (error) {
    throw new FileFormatError(
      `${path}: not valid JSON: ${(error as Error).message}`,
      'TRAIN_CONFIG_JSON',
      path,
    );
  }
  return parseTrainConfig(raw, { ...overrides, path });
}

/** The configuration as JSON (Infinity, which JSON lacks, as the string "Infinity"): the run folder's config.json. */
export function trainConfigJson(config: TrainConfig): JsonObject {
  return JSON.parse(
    JSON.stringify(config, (_key, value: unknown) => (value === Infinity ? 'Infinity' : value)),
  ) as JsonObject;
}

/**
 * What a resumed run must share with the run it continues (the checkpoints' training configuration):
 * everything that changes the weights. Where the run folder is, how often it logs, samples and saves
 * may change; so may `steps` under a constant schedule, so that a run can be continued for longer.
 */
export function resumeIdentity(config: TrainConfig): JsonObject {
  const { output, log, sample, checkpoint, steps, ...identity } = trainConfigJson(config);
  void output;
  void log;
  void sample;
  void checkpoint;
  return config.lrSchedule.kind === 'constant' ? identity : { ...identity, steps };
}

/**
 * The configured optimizer over `trainable`, biases and norm weights without weight decay (the usual
 * split, as diffusers' and PixArt's training scripts make it).
 */
export function optimizerFromConfig(config: OptimizerConfig, trainable: readonly string[]): Optimizer {
  const { kind, lrScale, ...options } = config;
  const groups = scaledGroups(
    weightDecayGroups<{ weightDecay: number; lr: number }>(trainable),
    lrScale ?? [],
    options.lr,
  );
  return kind === 'adamw'
    ? new AdamW(groups as ParameterGroup<AdamWOptions>[], options as AdamWOptions)
    : new Prodigy(groups as ParameterGroup<ProdigyOptions>[], options as ProdigyOptions);
}

/**
 * Each group split by the first `lrScale` rule its parameters match: the matched ones in a group of
 * their own at lr × scale, with the group's other options. Groups come out in a fixed order (the
 * input's, then the rules'), and empty ones are left out.
 */
export function scaledGroups<G extends { lr: number }>(
  groups: readonly ParameterGroup<G>[],
  rules: readonly LrScaleRule[],
  lr: number,
): ParameterGroup<G>[] {
  if (rules.length === 0) return [...groups];
  const patterns = rules.map((r) => new RegExp(r.match));
  const out: ParameterGroup<G>[] = [];
  for (const group of groups) {
    const buckets: string[][] = rules.map(() => []);
    const rest: string[] = [];
    for (const name of group.params) {
      const k = patterns.findIndex((p) => p.test(name));
      (k < 0 ? rest : buckets[k]).push(name);
    }
    if (rest.length > 0) out.push({ ...group, params: rest });
    buckets.forEach((params, k) => {
      const base = group.options?.lr ?? lr;
      if (params.length > 0)
        out.push({ params, options: { ...group.options, lr: base * rules[k].scale } as Partial<G> });
    });
  }
  return out;
}

/** The configured lr schedule of a run of `steps` updates. */
export function scheduleFromConfig(config: LrScheduleConfig, steps: number): LrSchedule {
  return config.kind === 'constant'
    ? constantWithWarmup({ warmupSteps: config.warmupSteps })
    : warmupCosine({ warmupSteps: config.warmupSteps, totalSteps: steps, minLrRatio: config.minLrRatio });
}
