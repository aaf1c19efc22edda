/**
 * What T5Tokenizer and CLIPTokenizer share once their tokenizer.json is read, as transformers'
 * `PreTrainedTokenizerFast` does: tokenizing, encoding batches with the post-processor's special
 * tokens, padding and truncation, and decoding, all run by `@huggingface/tokenizers`.
 */
import type { EncodeOptions, Encoding } from './batch-encoding.js';
import { assembleBatch, textsOf } from './batch-encoding.js';
import type { FastTokenizer } from './tokenizer-json.js';

export interface PreTrainedTokenizerParts {
  /** The class, first word of errors. */
  className: string;
  /** The file the tokenizer was read from (tokenizer.json, spiece.model or vocab.json). */
  path: string;
  fast: FastTokenizer;
  /** Special token ids the post-processor puts before and after the text. */
  prefixIds: readonly number[];
  suffixIds: readonly number[];
  padTokenId: number | undefined;
  /** tokenizer_config.json's model_max_length, when it sets a real limit. */
  modelMaxLength: number | undefined;
  /** What maxLength the models usually take, said when none is known ('CLIP text encoders take 77'). */
  maxLengthHint: string;
}

export class PreTrainedTokenizer {
  readonly path: string;
  readonly padTokenId: number | undefined;
  readonly modelMaxLength: number | undefined;
  protected readonly fast: FastTokenizer;
  protected readonly prefixIds: readonly number[];
  protected readonly suffixIds: readonly number[];
  private readonly className: string;
  private readonly maxLengthHint: string;

  protected constructor(parts: PreTrainedTokenizerParts) {
    this.className = parts.className;
    this.path = parts.path;
    this.fast = parts.fast;
    this.prefixIds = parts.prefixIds;
    this.suffixIds = parts.suffixIds;
    this.padTokenId = parts.padTokenId;
    this.modelMaxLength = parts.modelMaxLength;
    this.maxLengthHint = parts.maxLengthHint;
  }

  /** The id of the end-of-sequence token the post-processor appends. */
  get eosTokenId(): number | undefined {
    return this.suffixIds[this.suffixIds.length - 1];
  }

  /** The tokens of `text` without special tokens (unknown runs as their text). */
  tokenize(text: string): string[] {
    const [checked] = textsOf([text], this.className);
    return this.fast.encode(checked, { add_special_tokens: false }).tokens;
  }

  /** transformers' `tokenizer(text, max_length=…, padding=…, truncation=…, add_special_tokens=…)`. */
  encode(text: string | readonly string[], options: EncodeOptions = {}): Encoding {
    const texts = textsOf(text, this.className);
    return assembleBatch(
      texts.map((t) => this.fast.encode(t, { add_special_tokens: false }).ids),
      options,
      {
        tokenizer: this.className,
        path: this.path,
        prefix: this.prefixIds,
        suffix: this.suffixIds,
        modelMaxLength: this.modelMaxLength,
        padTokenId: this.padTokenId,
        maxLengthHint: this.maxLengthHint,
      },
    );
  }

  /** Text of `ids`; `skipSpecialTokens` drops the special tokens (end of sequence, padding, …). */
  decode(ids: readonly number[], options: { skipSpecialTokens?: boolean } = {}): string {
    if (ids.length === 0) return '';
    return this.fast.decode([...ids], { skip_special_tokens: options.skipSpecialTokens ?? false });
  }
}
