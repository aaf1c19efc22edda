/**
 * What transformers' `tokenizer(texts, max_length=…, padding=…, truncation=…)` does after the text
 * is tokenized, for tokenizers whose special tokens sit before and after one sequence: truncation
 * that cuts the text and keeps the special tokens, and right padding with an attention mask.
 */
import { OptionError } from '../errors.js';
import { describeJson } from '../io/json.js';
import type { HostTensor } from '../runtime/host-tensor.js';
import { hostTensor } from '../runtime/host-tensor.js';

export type PaddingStrategy = 'max_length' | 'longest' | false;

export interface EncodeOptions {
  /** Length to truncate and (with padding 'max_length') pad to; default tokenizer_config's model_max_length. */
  maxLength?: number;
  /** 'max_length': pad every sequence to maxLength; 'longest': to the batch's longest; false (default): none. */
  padding?: PaddingStrategy;
  /** Cut sequences to maxLength, keeping the special tokens; default false. */
  truncation?: boolean;
  /** Put the special tokens around the text (the post-processor's); default true. */
  addSpecialTokens?: boolean;
}

/** One row per text (a single string gives one row); rows differ in length only without padding. */
export interface Encoding {
  inputIds: number[][];
  /** 1 for tokens, 0 for padding. */
  attentionMask: number[][];
}

/** The texts of `encode(text | texts)`, each checked to be a string. */
export function textsOf(text: unknown, tokenizer: string): string[] {
  const texts = typeof text === 'string' ? [text] : text;
  if (!Array.isArray(texts)) {
    throw new OptionError(
      `${tokenizer}.encode: expected a string or a list of strings, got ${describeJson(text)}`,
    );
  }
  texts.forEach((t: unknown, i) => {
    if (typeof t !== 'string') {
      throw new OptionError(`${tokenizer}: text ${i} is ${describeJson(t)}; expected a string`);
    }
  });
  return texts as string[];
}

/**
 * Assemble a batch from the texts' token ids (without special tokens): `prefix` + text + `suffix`,
 * cut and padded as `options` say. `tokenizer` names the class in messages; `maxLengthHint` says
 * what maxLength the models usually take when none is known.
 */
export function assembleBatch(
  textIds: readonly (readonly number[])[],
  options: EncodeOptions,
  t: {
    tokenizer: string;
    path: string;
    prefix: readonly number[];
    suffix: readonly number[];
    modelMaxLength: number | undefined;
    padTokenId: number | undefined;
    maxLengthHint: string;
  },
): Encoding {
  const { padding = false, truncation = false, addSpecialTokens = true } = options;
  if (padding !== false && padding !== 'max_length' && padding !== 'longest') {
    throw new OptionError(
      `${t.tokenizer}.encode: padding is ${describeJson(padding)}; expected 'max_length', 'longest' or false`,
    );
  }
  if (options.maxLength !== undefined && !(Number.isInteger(options.maxLength) && options.maxLength > 0)) {
    throw new OptionError(
      `${t.tokenizer}.encode: maxLength is ${describeJson(options.maxLength)}; expected a positive integer`,
    );
  }
  const maxLength = options.maxLength ?? t.modelMaxLength;
  if (padding === 'max_length' && maxLength === undefined) {
    throw new OptionError(
      `${t.tokenizer}.encode: padding 'max_length' needs maxLength, and ${t.path} sets no model_max_length (${t.maxLengthHint})`,
    );
  }
  const prefix = addSpecialTokens ? t.prefix : [];
  const suffix = addSpecialTokens ? t.suffix : [];
  const room = maxLength === undefined ? undefined : maxLength - prefix.length - suffix.length;
  if (truncation && room !== undefined && room < 0) {
    throw new OptionError(
      `${t.tokenizer}.encode: maxLength ${maxLength} cannot hold the ${prefix.length + suffix.length} special tokens`,
    );
  }
  const sequences = textIds.map((ids) => [
    ...prefix,
    ...(truncation && room !== undefined && ids.length > room ? ids.slice(0, room) : ids),
    ...suffix,
  ]);
  const target =
    padding === 'max_length'
      ? (maxLength as number)
      : padding === 'longest'
        ? Math.max(0, ...sequences.map((s) => s.length))
        : 0;
  if (padding !== false && t.padTokenId === undefined) {
    throw new OptionError(
      `${t.tokenizer}.encode: padding needs a pad token, and ${t.path} has none in its vocabulary (tokenizer_config's pad_token)`,
    );
  }
  const pad = t.padTokenId as number;
  const fill = (n: number, value: number): number[] => new Array<number>(Math.max(0, n)).fill(value);
  return {
    inputIds: sequences.map((s) => [...s, ...fill(target - s.length, pad)]),
    attentionMask: sequences.map((s) => [...fill(s.length, 1), ...fill(target - s.length, 0)]),
  };
}

/** An encoding as the int64 `input_ids` and `attention_mask` [B, L] that text encoders' forward takes. */
export function toModelInputs(encoding: Encoding): { input_ids: HostTensor; attention_mask: HostTensor } {
  const batch = encoding.inputIds.length;
  const length = batch > 0 ? encoding.inputIds[0].length : 0;
  encoding.inputIds.forEach((row, i) => {
    if (row.length !== length || encoding.attentionMask[i]?.length !== length) {
      throw new OptionError(
        `toModelInputs: row ${i} has ${row.length} tokens but row 0 has ${length}; encode with padding 'max_length' or 'longest' to get a rectangular batch`,
      );
    }
  });
  const flat = (rows: number[][]): BigInt64Array => BigInt64Array.from(rows.flat(), (v) => BigInt(v));
  return {
    input_ids: hostTensor('int64', [batch, length], flat(encoding.inputIds)),
    attention_mask: hostTensor('int64', [batch, length], flat(encoding.attentionMask)),
  };
}
