/**
 * The Hugging Face fast-tokenizer file format (`tokenizer.json`) and the part of
 * `@huggingface/tokenizers` (a pure-JS implementation of it, no dependencies) that velodiff uses.
 * The package's type declarations use extensionless relative imports, which NodeNext resolution
 * cannot follow, so they type as `any`; the surface is declared here instead.
 */
import * as tokenizers from '@huggingface/tokenizers';

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

/** A tokenizer running `json`; throws the package's Error for components it does not know. */
export function createFastTokenizer(json: TokenizerJson): FastTokenizer {
  const Tokenizer = (tokenizers as unknown as { Tokenizer: FastTokenizerClass }).Tokenizer;
  // The second argument is tokenizer_config.json; none of its keys changes encoding for T5.
  return new Tokenizer(json, {});
}
