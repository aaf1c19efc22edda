/**
 * The Hugging Face fast-tokenizer file format (`tokenizer.json`) and the part of
 * `@huggingface/tokenizers` (a pure-JS implementation of it, no dependencies) that velodiff uses.
 * The package's type declarations use extensionless relative imports, which NodeNext resolution
 * cannot follow, so they type as `any`; the surface is declared here instead.
 */
import * as tokenizers from '@huggingface/tokenizers';

import { FileFormatError } from '../errors.js';
import { describeJson, isPlainObject } from '../io/json.js';

export interface AddedTokenJson {
  id: number;
  content: string;
  special?: boolean;
  normalized?: boolean;
  lstrip?: boolean;
  rstrip?: boolean;
  single_word?: boolean;
}

/** One item of a TemplateProcessing template: a special token, or the sequence A/B. */
export type TemplateItem =
  { SpecialToken: { id: string; type_id: number } } | { Sequence: { id: 'A' | 'B'; type_id: number } };

export interface TemplateProcessingJson {
  type: 'TemplateProcessing';
  single: TemplateItem[];
  pair: TemplateItem[];
  special_tokens: Record<string, { id: string; ids: number[]; tokens: string[] }>;
}

/** The top level of a tokenizer.json; components other than the model and post-processor stay opaque. */
export interface TokenizerJson {
  version?: string;
  /** Encoding-time truncation and padding saved with the tokenizer (null in transformers' files). */
  truncation?: Record<string, unknown> | null;
  padding?: Record<string, unknown> | null;
  added_tokens: AddedTokenJson[];
  normalizer: Record<string, unknown> | null;
  pre_tokenizer: Record<string, unknown> | null;
  post_processor: TemplateProcessingJson | Record<string, unknown> | null;
  decoder: Record<string, unknown> | null;
  model: {
    type: string;
    unk_id?: number | null;
    vocab?: [string, number][];
    byte_fallback?: boolean;
  } & Record<string, unknown>;
}

/** What velodiff calls on a `@huggingface/tokenizers` Tokenizer. */
export interface FastTokenizer {
  encode(text: string, options?: { add_special_tokens?: boolean }): { ids: number[]; tokens: string[] };
  decode(ids: number[], options?: { skip_special_tokens?: boolean }): string;
  token_to_id(token: string): number | undefined;
  id_to_token(id: number): string | undefined;
}

type FastTokenizerClass = new (tokenizerJson: object, tokenizerConfig: object) => FastTokenizer;

/**
 * A tokenizer running `json`, read from `path`; a component the package does not know is a
 * FileFormatError naming the file.
 */
export function createFastTokenizer(json: TokenizerJson, path: string): FastTokenizer {
  const Tokenizer = (tokenizers as unknown as { Tokenizer: FastTokenizerClass }).Tokenizer;
  try {
    // The second argument is tokenizer_config.json; none of its keys changes encoding here.
    return new Tokenizer(json, {});
  } catch (error) {
    throw new FileFormatError(
      `${path}: the tokenizer cannot be built: ${(error as Error).message}`,
      'TOKENIZER_INVALID',
      path,
    );
  }
}

/** What one tokenizer class needs of a tokenizer.json's `model`. */
export interface TokenizerModelKind {
  /** `model.type`, e.g. 'Unigram' or 'BPE'. */
  type: string;
  /** The sentence after a wrong `model.type`: 'a T5 tokenizer is a SentencePiece "Unigram" model'. */
  description: string;
  /** Checks the rest of `model` of the file `path`; `fail` throws the FileFormatError naming it. */
  check: (model: Record<string, unknown>, path: string, fail: (what: string) => never) => void;
}

/**
 * The parsed contents of a tokenizer.json checked before `@huggingface/tokenizers` reads them: an
 * object whose `model` is of `kind`, `added_tokens` a list of {id, content} objects, the pipeline
 * components objects or null. Errors are FileFormatErrors (TOKENIZER_INVALID) naming `path`.
 */
export function checkTokenizerJson(raw: unknown, path: string, kind: TokenizerModelKind): TokenizerJson {
  const fail = (what: string): never => {
    throw new FileFormatError(`${path}: ${what}`, 'TOKENIZER_INVALID', path);
  };
  if (!isPlainObject(raw)) return fail(`expected a JSON object, found ${describeJson(raw)}`);
  const model = raw.model;
  if (!isPlainObject(model)) return fail(`"model" is ${describeJson(model)}; expected an object`);
  if (model.type !== kind.type) {
    return fail(`"model.type" is ${describeJson(model.type)}; ${kind.description}`);
  }
  kind.check(model, path, fail);
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
    added_tokens: added as AddedTokenJson[],
    normalizer: component('normalizer'),
    pre_tokenizer: component('pre_tokenizer'),
    post_processor: component('post_processor'),
    decoder: component('decoder'),
    model: model as TokenizerJson['model'],
  };
}
