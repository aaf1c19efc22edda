import { FileFormatError } from '../errors.js';
import { describeJson } from '../io/json.js';
import { parseQuantizationConfig } from '../io/quantize.js';
import type { WarningHandler } from '../warnings.js';
import { VelodiffWarning, emitWarning } from '../warnings.js';

/** JSON values a config key can be pinned to. */
type ConfigScalar = string | number | boolean | null;

/**
 * Typed access to a config.json, and the config rules every model class follows (README "Models"):
 * - a value of the wrong type, or one that would change the math and is not implemented, is a
 *   FileFormatError naming the key, the value, the file and what is supported;
 * - keys the class does not read are accepted with one warning naming them and the file, as
 *   diffusers logs "config attributes {…} were passed to X, but are not expected and will be
 *   ignored"; keys starting with `_` (`_class_name`, `_diffusers_version`, `_name_or_path`) and keys
 *   the parser `accept`s as harmless are silent.
 */
export class ConfigReader {
  private readonly read = new Set<string>();

  constructor(
    readonly raw: Record<string, unknown>,
    /** The config file, for messages. */
    readonly path: string,
    readonly className: string,
  ) {}

  private fail(key: string, expected: string): never {
    throw new FileFormatError(
      `${this.path}: "${key}" is ${JSON.stringify(this.raw[key])}; expected ${expected} for ${this.className}`,
      'CONFIG_VALUE',
      this.path,
    );
  }

  private value(key: string): unknown {
    this.read.add(key);
    return this.raw[key];
  }

  number(key: string, fallback: number): number {
    const v = this.value(key);
    if (v === undefined || v === null) return fallback;
    if (typeof v !== 'number' || !Number.isFinite(v)) this.fail(key, 'a number');
    return v;
  }

  integer(key: string, fallback: number, min = 0): number {
    const v = this.number(key, fallback);
    if (!Number.isInteger(v) || v < min) this.fail(key, `an integer ≥ ${min}`);
    return v;
  }

  optionalNumber(key: string): number | undefined {
    const v = this.value(key);
    if (v === undefined || v === null) return undefined;
    if (typeof v !== 'number' || !Number.isFinite(v)) this.fail(key, 'a number or null');
    return v;
  }

  boolean(key: string, fallback: boolean): boolean {
    const v = this.value(key);
    if (v === undefined || v === null) return fallback;
    if (typeof v !== 'boolean') this.fail(key, 'true or false');
    return v;
  }

  optionalBoolean(key: string): boolean | undefined {
    const v = this.value(key);
    if (v === undefined || v === null) return undefined;
    if (typeof v !== 'boolean') this.fail(key, 'true, false or null');
    return v;
  }

  string<T extends string>(key: string, fallback: T, allowed?: readonly T[]): T {
    const v = this.value(key);
    if (v === undefined || v === null) return fallback;
    if (typeof v !== 'string') this.fail(key, 'a string');
    if (allowed && !allowed.includes(v as T))
      this.fail(
        key,
        `one of ${allowed.map((a) => JSON.stringify(a)).join(', ')} (the values velodiff supports)`,
      );
    return v as T;
  }

  numbers(key: string, fallback: number[]): number[] {
    const v = this.value(key);
    if (v === undefined || v === null) return fallback;
    if (!Array.isArray(v) || v.some((x) => typeof x !== 'number')) this.fail(key, 'a list of numbers');
    return v as number[];
  }

  strings(key: string, fallback: string[]): string[] {
    const v = this.value(key);
    if (v === undefined || v === null) return fallback;
    if (!Array.isArray(v) || v.some((x) => typeof x !== 'string')) this.fail(key, 'a list of strings');
    return v as string[];
  }

  /** The raw value of `key`, marked as read: for parsers that check the value themselves. */
  get(key: string): unknown {
    return this.value(key);
  }

  /**
   * `key` changes the math, and velodiff implements only the `supported` values of it (or its
   * absence, or null): any other value is an error, not a silent difference from diffusers.
   */
  supported(key: string, supported: readonly ConfigScalar[], why = ''): void {
    const v = this.value(key);
    if (v === undefined || v === null || supported.includes(v as ConfigScalar)) return;
    const values = ['absent', 'null', ...supported.map((s) => JSON.stringify(s))].join(', ');
    this.unsupported(key, `${values}${why ? ` (${why})` : ''}`);
  }

  /** Reject the value of `key` as one velodiff does not implement; `supported` says what it does. */
  unsupported(key: string, supported: string): never {
    throw new FileFormatError(
      `${this.path}: "${key}" is ${key in this.raw ? shortJson(this.raw[key]) : 'absent'}, which ${this.className} in velodiff does not ` +
        `implement; supported: ${supported}. The checkpoint needs a model velodiff does not build.`,
      'CONFIG_UNSUPPORTED',
      this.path,
    );
  }

  /** The int8 modules of velodiff's int8 format (io/quantize.ts), or undefined for a float checkpoint. */
  int8Modules(): ReadonlySet<string> | undefined {
    return parseQuantizationConfig(this.value('quantization_config'), this.path);
  }

  /** Mark keys that older or newer versions write and that do not change the model. */
  accept(...keys: string[]): void {
    for (const k of keys) this.read.add(k);
  }

  /**
   * Ends parsing. Rejects what no model class implements (`quantization_config`: quantized weights
   * need their own kernels), then reports keys that were never read or accepted in one warning.
   */
  finish(onWarning: WarningHandler = emitWarning): void {
    if (!this.read.has('quantization_config'))
      this.supported('quantization_config', [], `${this.className} loads float checkpoints only`);
    const unused = Object.keys(this.raw).filter((k) => !k.startsWith('_') && !this.read.has(k));
    if (unused.length === 0) return;
    const attributes = unused.map((k) => `"${k}": ${shortJson(this.raw[k])}`).join(', ');
    const plural = unused.length > 1;
    onWarning(
      new VelodiffWarning(
        `${this.path}: the config attribute${plural ? 's' : ''} {${attributes}} ${plural ? 'were' : 'was'} ` +
          `passed to ${this.className}, but ${plural ? 'are' : 'is'} not expected and will be ignored; check ` +
          'that the folder holds this model, or whether a newer velodiff reads the key',
        'CONFIG_UNUSED_KEYS',
        this.path,
        unused,
      ),
    );
  }
}

function shortJson(value: unknown): string {
  const json = JSON.stringify(value) ?? String(value);
  return json.length > 60 ? `${json.slice(0, 57)}…` : json;
}

/**
 * Keys of transformers' PretrainedConfig that do not change a text encoder's forward: training,
 * generation and bookkeeping settings. A class whose math does depend on one (T5's `is_decoder`,
 * `pruned_heads`) reads it as well, and reading still checks its value.
 */
export const PRETRAINED_CONFIG_KEYS = [
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
  'pruned_heads',
  'pad_token_id',
  'eos_token_id',
  'bos_token_id',
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
  // generation defaults PretrainedConfig used to hold
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
] as const;

/** What a transformers config.json must say to be loaded by one class. */
export interface TransformersModelKind {
  className: string;
  /** What the config is, for messages: 'a T5 config'. */
  description: string;
  /** `model_type` values the class loads; the first is the one transformers writes. */
  modelTypes: readonly string[];
  /** Checkpoint classes whose weights the class reads; `architectures` must name one of them. */
  architectures: readonly string[];
  /** A sentence after the error for another `model_type`: why it is refused, or where to look. */
  modelTypeHint: (modelType: unknown) => string;
}

/**
 * `model_type` and `architectures` of a transformers config.json must name `kind` (at least one of
 * them must be present), so that the folder of another model fails with a FileFormatError naming
 * both and the file.
 */
export function checkModelKind(
  raw: Record<string, unknown>,
  path: string,
  kind: TransformersModelKind,
): void {
  const modelType = raw.model_type;
  const architectures = raw.architectures;
  const [written, ...others] = kind.modelTypes;
  if (modelType !== undefined && !kind.modelTypes.includes(modelType as string)) {
    const alternatives = others.length > 0 ? ` (or ${others.map((t) => JSON.stringify(t)).join(', ')})` : '';
    throw new FileFormatError(
      `${path}: "model_type" is ${describeJson(modelType)}; expected ${JSON.stringify(written)}${alternatives} ` +
        `for ${kind.className}. ${kind.modelTypeHint(modelType)}`,
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
    if (!architectures.some((a) => kind.architectures.includes(a as string))) {
      throw new FileFormatError(
        `${path}: "architectures" is ${describeJson(architectures)}; expected one of ${kind.architectures.join(', ')}`,
        'CONFIG_CLASS',
        path,
      );
    }
  }
  if (modelType === undefined && architectures === undefined) {
    throw new FileFormatError(
      `${path}: neither "model_type" nor "architectures" is set, so nothing says this is ${kind.description}; ` +
        `expected "model_type": ${JSON.stringify(written)} as transformers writes it`,
      'CONFIG_CLASS',
      path,
    );
  }
}
