/**
 * The T5 tokenizer of PixArt-α/Σ, SD3 and FLUX prompts: SentencePiece Unigram with `</s>` appended,
 * pad id 0, right padding. Reads a tokenizer folder's `tokenizer.json` (the HF fast tokenizer) or,
 * failing that, its `spiece.model`, and encodes as transformers' `tokenizer(text, max_length=…,
 * padding=…, truncation=…, add_special_tokens=True)` does.
 */
import { readFile, readdir } from 'node:fs/promises';
import { join, resolve } from 'node:path';

import { FileFormatError, OptionError } from '../errors.js';
import { readJsonFile } from '../io/diffusers.js';
import { errnoCode } from '../io/errno.js';
import { describeJson, isPlainObject } from '../io/json.js';
import type { HostTensor } from '../runtime/host-tensor.js';
import { hostTensor } from '../runtime/host-tensor.js';
import { parseSentencePieceModel, t5TokenizerJsonFromSentencePiece } from './sentencepiece-model.js';
import type { FastTokenizer, TemplateItem, TemplateProcessingJson, TokenizerJson } from './tokenizer-json.js';
import { createFastTokenizer } from './tokenizer-json.js';

export type PaddingStrategy = 'max_length' | 'longest' | false;

export interface T5EncodeOptions {
  /** Length to truncate and (with padding 'max_length') pad to; default tokenizer_config's model_max_length. */
  maxLength?: number;
  /** 'max_length': pad every sequence to maxLength; 'longest': to the batch's longest; false (default): none. */
  padding?: PaddingStrategy;
  /** Cut sequences to maxLength, keeping the special tokens (`</s>`); default false. */
  truncation?: boolean;
  /** Append `</s>` (the post-processor's special tokens); default true. */
  addSpecialTokens?: boolean;
}

/** One row per text (a single string gives one row); rows differ in length only without padding. */
export interface T5Encoding {
  inputIds: number[][];
  /** 1 for tokens, 0 for padding. */
  attentionMask: number[][];
}

/** T5Tokenizer's default number of `<extra_id_n>` sentinels when tokenizer_config.json does not say. */
const DEFAULT_EXTRA_IDS = 100;

/** transformers' "no limit" model_max_length (VERY_LARGE_INTEGER) and anything near it. */
const NO_LIMIT = 1e20;

export class T5Tokenizer {
  private constructor(
    /** The file the tokenizer was read from (tokenizer.json or spiece.model). */
    readonly path: string,
    private readonly fast: FastTokenizer,
    /** Special token ids the post-processor puts before and after the text (T5: none, `</s>`). */
    private readonly prefixIds: readonly number[],
    private readonly suffixIds: readonly number[],
    readonly padTokenId: number | undefined,
    readonly unkTokenId: number,
    /** tokenizer_config.json's model_max_length (512 for T5), when it sets a real limit. */
    readonly modelMaxLength: number | undefined,
  ) {}

  /**
   * Load from `dir` holding tokenizer.json or spiece.model (and optionally tokenizer_config.json),
   * or from a diffusers pipeline folder whose `tokenizer/` holds them. tokenizer.json is preferred
   * when both are there, as transformers' AutoTokenizer prefers the fast tokenizer.
   */
  static async fromPretrained(dir: string): Promise<T5Tokenizer> {
    const root = resolve(dir);
    const folder = await findTokenizerFolder(root);
    const config = await readTokenizerConfig(folder.dir);
    let json: unknown;
    if (folder.file === 'tokenizer.json') {
      json = await readJsonFile(folder.path, 'the fast tokenizer (tokenizer.json)');
    } else {
      let bytes: Uint8Array;
      try {
        bytes = await readFile(folder.path);
      } catch (error) {
        throw new FileFormatError(
          `Cannot read ${folder.path}: ${(error as Error).message}`,
          'FILE_UNREADABLE',
          folder.path,
        );
      }
      const extraIds = config.extra_ids ?? DEFAULT_EXTRA_IDS;
      if (!Number.isInteger(extraIds) || (extraIds as number) < 0) {
        const configPath = join(folder.dir, 'tokenizer_config.json');
        throw new FileFormatError(
          `${configPath}: "extra_ids" is ${describeJson(extraIds)}; expected an integer ≥ 0`,
          'CONFIG_VALUE',
          configPath,
        );
      }
      try {
        json = t5TokenizerJsonFromSentencePiece(parseSentencePieceModel(bytes), extraIds as number);
      } catch (error) {
        throw new FileFormatError(
          `${folder.path} is not a SentencePiece model T5Tokenizer can use: ${(error as Error).message}`,
          'TOKENIZER_INVALID',
          folder.path,
        );
      }
    }
    return T5Tokenizer.fromJson(json, config, folder.path);
  }

  /**
   * A tokenizer from the parsed contents of tokenizer.json and tokenizer_config.json (e.g. ones
   * `buildT5Tokenizer` made in memory); `path` names them in errors.
   */
  static fromJson(tokenizerJson: unknown, config: Record<string, unknown>, path: string): T5Tokenizer {
    const json = checkTokenizerJson(tokenizerJson, path);
    let fast: FastTokenizer;
    try {
      fast = createFastTokenizer(json);
    } catch (error) {
      throw new FileFormatError(
        `${path}: the tokenizer cannot be built: ${(error as Error).message}`,
        'TOKENIZER_INVALID',
        path,
      );
    }
    const { prefix, suffix } = templateSpecialIds(json, path);
    const padToken = tokenContent(config.pad_token) ?? '<pad>';
    const maxLength = config.model_max_length;
    return new T5Tokenizer(
      path,
      fast,
      prefix,
      suffix,
      fast.token_to_id(padToken),
      json.model.unk_id as number,
      typeof maxLength === 'number' && Number.isInteger(maxLength) && maxLength > 0 && maxLength < NO_LIMIT
        ? maxLength
        : undefined,
    );
  }

  /** The id of `</s>`, the end-of-sequence token the post-processor appends. */
  get eosTokenId(): number | undefined {
    return this.suffixIds[this.suffixIds.length - 1];
  }

  /** The pieces of `text` without special tokens, e.g. ['▁a', 'bc'] (unknown runs as their text). */
  tokenize(text: string): string[] {
    checkText(text, 0);
    return this.fast.encode(text, { add_special_tokens: false }).tokens;
  }

  encode(text: string | readonly string[], options: T5EncodeOptions = {}): T5Encoding {
    const texts = typeof text === 'string' ? [text] : text;
    if (!Array.isArray(texts))
      throw new OptionError(
        `T5Tokenizer.encode: expected a string or a list of strings, got ${describeJson(text)}`,
      );
    texts.forEach((t, i) => checkText(t, i));
    const { padding = false, truncation = false, addSpecialTokens = true } = options;
    if (padding !== false && padding !== 'max_length' && padding !== 'longest') {
      throw new OptionError(
        `T5Tokenizer.encode: padding is ${describeJson(padding)}; expected 'max_length', 'longest' or false`,
      );
    }
    if (options.maxLength !== undefined && !(Number.isInteger(options.maxLength) && options.maxLength > 0)) {
      throw new OptionError(
        `T5Tokenizer.encode: maxLength is ${describeJson(options.maxLength)}; expected a positive integer`,
      );
    }
    const maxLength = options.maxLength ?? this.modelMaxLength;
    if (padding === 'max_length' && maxLength === undefined) {
      throw new OptionError(
        `T5Tokenizer.encode: padding 'max_length' needs maxLength, and ${this.path} sets no model_max_length (PixArt-α uses 120, PixArt-Σ 300)`,
      );
    }
    const prefix = addSpecialTokens ? this.prefixIds : [];
    const suffix = addSpecialTokens ? this.suffixIds : [];
    const room = maxLength === undefined ? undefined : maxLength - prefix.length - suffix.length;
    if (truncation && room !== undefined && room < 0) {
      throw new OptionError(
        `T5Tokenizer.encode: maxLength ${maxLength} cannot hold the ${prefix.length + suffix.length} special tokens`,
      );
    }
    const sequences = texts.map((t) => {
      let ids = this.fast.encode(t, { add_special_tokens: false }).ids;
      // Truncation keeps the special tokens: the text is cut, `</s>` still ends the sequence.
      if (truncation && room !== undefined && ids.length > room) ids = ids.slice(0, room);
      return [...prefix, ...ids, ...suffix];
    });
    const target =
      padding === 'max_length'
        ? (maxLength as number)
        : padding === 'longest'
          ? Math.max(0, ...sequences.map((s) => s.length))
          : 0;
    if (padding !== false && this.padTokenId === undefined) {
      throw new OptionError(
        `T5Tokenizer.encode: padding needs a pad token, and ${this.path} has no '<pad>' (or tokenizer_config's pad_token)`,
      );
    }
    const pad = this.padTokenId as number;
    return {
      inputIds: sequences.map((s) =>
        s.length < target ? [...s, ...new Array<number>(target - s.length).fill(pad)] : s,
      ),
      attentionMask: sequences.map((s) => [
        ...new Array<number>(s.length).fill(1),
        ...new Array<number>(Math.max(0, target - s.length)).fill(0),
      ]),
    };
  }

  /** Text of `ids`; `skipSpecialTokens` drops `</s>`, `<pad>` and the other special tokens. */
  decode(ids: readonly number[], options: { skipSpecialTokens?: boolean } = {}): string {
    if (ids.length === 0) return '';
    return this.fast.decode([...ids], { skip_special_tokens: options.skipSpecialTokens ?? false });
  }
}

/** An encoding as the int64 `input_ids` and `attention_mask` [B, L] that T5EncoderModel.forward takes. */
export function toModelInputs(encoding: T5Encoding): { input_ids: HostTensor; attention_mask: HostTensor } {
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

function checkText(text: unknown, index: number): void {
  if (typeof text !== 'string') {
    throw new OptionError(`T5Tokenizer: text ${index} is ${describeJson(text)}; expected a string`);
  }
}

const TOKENIZER_FILES = ['tokenizer.json', 'spiece.model'] as const;

/** `dir` itself when it holds a tokenizer file, else its `tokenizer/` subfolder (diffusers layout). */
async function findTokenizerFolder(
  dir: string,
): Promise<{ dir: string; file: (typeof TOKENIZER_FILES)[number]; path: string }> {
  const looked: string[] = [];
  for (const candidate of [dir, join(dir, 'tokenizer')]) {
    const entries = await listIfFolder(candidate);
    if (entries === undefined) continue;
    looked.push(candidate);
    for (const file of TOKENIZER_FILES) {
      if (entries.includes(file)) return { dir: candidate, file, path: join(candidate, file) };
    }
  }
  if (looked.length === 0) {
    throw new FileFormatError(
      `Expected a tokenizer folder at ${dir}, but it does not exist or is not a folder.`,
      'FILE_MISSING',
      dir,
    );
  }
  throw new FileFormatError(
    `No T5 tokenizer found: expected tokenizer.json or spiece.model in ${looked.join(' or ')}. ` +
      'Pass the tokenizer folder (e.g. <pipeline>/tokenizer, or tokenizer_3 for SD3) of a T5 model.',
    'TOKENIZER_MISSING',
    dir,
  );
}

async function listIfFolder(dir: string): Promise<string[] | undefined> {
  try {
    return await readdir(dir);
  } catch (error) {
    const code = errnoCode(error);
    if (code === 'ENOENT' || code === 'ENOTDIR') return undefined;
    throw error;
  }
}

/** tokenizer_config.json, or {} when the folder has none. */
async function readTokenizerConfig(dir: string): Promise<Record<string, unknown>> {
  const path = join(dir, 'tokenizer_config.json');
  const entries = await readdir(dir);
  if (!entries.includes('tokenizer_config.json')) return {};
  const config = await readJsonFile(path, 'the tokenizer configuration (tokenizer_config.json)');
  if (!isPlainObject(config)) {
    throw new FileFormatError(
      `Expected ${path} to hold a JSON object, found ${describeJson(config)}.`,
      'CONFIG_INVALID',
      path,
    );
  }
  return config;
}

/** A special token as tokenizer_config.json writes it: a string or an AddedToken object. */
function tokenContent(value: unknown): string | undefined {
  if (typeof value === 'string') return value;
  if (isPlainObject(value) && typeof value.content === 'string') return value.content;
  return undefined;
}

function checkTokenizerJson(raw: unknown, path: string): TokenizerJson {
  const fail = (what: string): never => {
    throw new FileFormatError(`${path}: ${what}`, 'TOKENIZER_INVALID', path);
  };
  if (!isPlainObject(raw)) return fail(`expected a JSON object, found ${describeJson(raw)}`);
  const model = raw.model;
  if (!isPlainObject(model)) return fail(`"model" is ${describeJson(model)}; expected an object`);
  if (model.type !== 'Unigram') {
    return fail(
      `"model.type" is ${describeJson(model.type)}; a T5 tokenizer is a SentencePiece "Unigram" model`,
    );
  }
  if (
    !Array.isArray(model.vocab) ||
    model.vocab.some((e) => !Array.isArray(e) || typeof e[0] !== 'string' || typeof e[1] !== 'number')
  ) {
    return fail('"model.vocab" must be a list of [piece, score] pairs');
  }
  if (
    typeof model.unk_id !== 'number' ||
    !Number.isInteger(model.unk_id) ||
    model.unk_id < 0 ||
    model.unk_id >= model.vocab.length
  ) {
    return fail(
      `"model.unk_id" is ${describeJson(model.unk_id)}; expected the id of the unknown piece (T5: 2)`,
    );
  }
  if (model.byte_fallback === true)
    return fail(
      '"model.byte_fallback" is true; T5 tokenizers do not use byte pieces and this reader does not support them',
    );
  const added = raw.added_tokens ?? [];
  if (
    !Array.isArray(added) ||
    added.some((t) => !isPlainObject(t) || typeof t.id !== 'number' || typeof t.content !== 'string')
  ) {
    return fail('"added_tokens" must be a list of {id, content, …} objects');
  }
  const component = (key: string): Record<string, unknown> | null => {
    const value = raw[key];
    if (value === undefined || value === null) return null;
    return isPlainObject(value)
      ? value
      : fail(`"${key}" is ${describeJson(value)}; expected an object or null`);
  };
  return {
    ...raw,
    added_tokens: added as TokenizerJson['added_tokens'],
    normalizer: component('normalizer'),
    pre_tokenizer: component('pre_tokenizer'),
    post_processor: component('post_processor'),
    decoder: component('decoder'),
    model: model as TokenizerJson['model'],
  };
}

/** The special token ids a TemplateProcessing `single` template puts around sequence A. */
function templateSpecialIds(json: TokenizerJson, path: string): { prefix: number[]; suffix: number[] } {
  const post = json.post_processor;
  if (post === null) return { prefix: [], suffix: [] };
  if (post.type !== 'TemplateProcessing') {
    throw new FileFormatError(
      `${path}: post_processor type ${describeJson(post.type)} is not supported; T5 appends </s> with a TemplateProcessing`,
      'TOKENIZER_INVALID',
      path,
    );
  }
  const template = post as TemplateProcessingJson;
  const prefix: number[] = [];
  const suffix: number[] = [];
  let seenSequence = false;
  for (const item of template.single as TemplateItem[]) {
    if ('Sequence' in item) {
      seenSequence = true;
      continue;
    }
    const special = template.special_tokens?.[item.SpecialToken.id];
    if (!special || !Array.isArray(special.ids)) {
      throw new FileFormatError(
        `${path}: post_processor template uses ${describeJson(item.SpecialToken.id)}, which its special_tokens does not list`,
        'TOKENIZER_INVALID',
        path,
      );
    }
    (seenSequence ? suffix : prefix).push(...special.ids);
  }
  return { prefix, suffix };
}
