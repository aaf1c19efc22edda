/**
 * The CLIP tokenizer of SD 1.x/2.x, SDXL, SD3 and FLUX prompts: byte-level BPE with a `</w>`
 * end-of-word suffix over lower-cased, whitespace-collapsed text, `<|startoftext|>` before and
 * `<|endoftext|>` after, right padding with tokenizer_config's pad token (`<|endoftext|>` in SD 1.x,
 * `!` = id 0 in SD 2.x and SDXL's tokenizer_2). Reads a tokenizer folder's `tokenizer.json` or,
 * as diffusers pipelines ship it, `vocab.json` + `merges.txt`, which become the tokenizer.json that
 * transformers' CLIP converter writes, run by `@huggingface/tokenizers`.
 */
import { readFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';

import { FileFormatError } from '../errors.js';
import { readJsonFile } from '../io/diffusers.js';
import { describeJson, isPlainObject } from '../io/json.js';
import type { EncodeOptions, Encoding } from './batch-encoding.js';
import { postProcessorSpecialIds } from './post-processor.js';
import { PreTrainedTokenizer } from './pretrained-tokenizer.js';
import type { AddedTokenJson, TokenizerJson, TokenizerModelKind } from './tokenizer-json.js';
import { checkTokenizerJson, createFastTokenizer } from './tokenizer-json.js';
import {
  findTokenizerFolder,
  modelMaxLength,
  readTokenizerConfig,
  tokenContent,
} from './tokenizer-folder.js';

export type CLIPEncodeOptions = EncodeOptions;
export type CLIPEncoding = Encoding;

/** CLIPTokenizer's defaults when tokenizer_config.json names no special token. */
const DEFAULT_SPECIAL_TOKENS = {
  bos_token: '<|startoftext|>',
  eos_token: '<|endoftext|>',
  unk_token: '<|endoftext|>',
  pad_token: '<|endoftext|>',
} as const;
type SpecialTokenKey = keyof typeof DEFAULT_SPECIAL_TOKENS;

/**
 * The word pattern of CLIP's `simple_tokenizer` (and transformers' CLIPTokenizer): contractions,
 * letter runs, single digits, runs of other non-space characters. Whitespace between them is dropped.
 */
export const CLIP_WORD_PATTERN = String.raw`'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+`;

/**
 * transformers' slow CLIPTokenizer reads merges.txt as `text.strip().split("\n")[1:48895]`: the
 * first line (the `#version` header) is always skipped and at most 49152 − 256 − 2 merges are kept.
 */
const MAX_MERGES = 49152 - 256 - 2;

/** A BPE tokenizer.json model; tokenizer-json.ts's TokenizerJson types only the Unigram vocabulary. */
interface BpeModelJson {
  type: 'BPE';
  dropout: null;
  unk_token: string;
  continuing_subword_prefix: string;
  end_of_word_suffix: string;
  fuse_unk: boolean;
  byte_fallback: boolean;
  vocab: Record<string, number>;
  merges: [string, string][];
}

/**
 * The tokenizer.json transformers' CLIPConverter writes for `vocab` and `merges`: NFC, `\s+` → ' ',
 * lower case; split on CLIP's word pattern; byte-level; BPE with `</w>`; `<|startoftext|>` $A
 * `<|endoftext|>`. `specialTokens` become added tokens, matched in the text before all of that.
 */
export function clipTokenizerJson(
  vocab: Record<string, number>,
  merges: readonly (readonly [string, string])[],
  specialTokens: { bos: string; eos: string; unk: string; added: readonly AddedTokenJson[] },
): object {
  const id = (token: string): number => {
    const value = vocab[token];
    if (value === undefined)
      throw new Error(`the special token ${JSON.stringify(token)} is not in the vocabulary`);
    return value;
  };
  const model: BpeModelJson = {
    type: 'BPE',
    dropout: null,
    unk_token: specialTokens.unk,
    continuing_subword_prefix: '',
    end_of_word_suffix: '</w>',
    fuse_unk: false,
    byte_fallback: false,
    vocab,
    merges: merges.map(([a, b]) => [a, b]),
  };
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: specialTokens.added,
    normalizer: {
      type: 'Sequence',
      normalizers: [
        { type: 'NFC' },
        { type: 'Replace', pattern: { Regex: String.raw`\s+` }, content: ' ' },
        { type: 'Lowercase' },
      ],
    },
    pre_tokenizer: {
      type: 'Sequence',
      pretokenizers: [
        { type: 'Split', pattern: { Regex: CLIP_WORD_PATTERN }, behavior: 'Removed', invert: true },
        { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
      ],
    },
    post_processor: {
      type: 'RobertaProcessing',
      sep: [specialTokens.eos, id(specialTokens.eos)],
      cls: [specialTokens.bos, id(specialTokens.bos)],
      trim_offsets: false,
      add_prefix_space: false,
    },
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model,
  };
}

/**
 * merges.txt as transformers' CLIPTokenizer reads it (the first line skipped, at most 48894
 * merges), each line a pair of symbols separated by whitespace.
 */
export function parseMerges(text: string, path: string): [string, string][] {
  const lines = text
    .trim()
    .split('\n')
    .slice(1, MAX_MERGES + 1);
  return lines.map((line, i) => {
    const parts = line.split(/\s+/).filter((s) => s.length > 0);
    if (parts.length !== 2) {
      throw new FileFormatError(
        `${path}: line ${i + 2} is ${JSON.stringify(line)}; expected two symbols separated by a space (e.g. "t h")`,
        'TOKENIZER_INVALID',
        path,
      );
    }
    return [parts[0], parts[1]];
  });
}

export class CLIPTokenizer extends PreTrainedTokenizer {
  /**
   * Load from `dir` holding tokenizer.json or vocab.json + merges.txt (with tokenizer_config.json and
   * special_tokens_map.json), or from a diffusers pipeline folder whose `tokenizer/` holds them.
   * tokenizer.json is preferred when both are there, as transformers' AutoTokenizer prefers the fast
   * tokenizer.
   */
  static async fromPretrained(dir: string): Promise<CLIPTokenizer> {
    const folder = await findTokenizerFolder(
      resolve(dir),
      [['tokenizer.json'], ['vocab.json', 'merges.txt']],
      'Pass the tokenizer folder of a CLIP text encoder (e.g. <pipeline>/tokenizer, or tokenizer_2 for SDXL).',
    );
    const config = await readTokenizerConfig(folder.dir);
    if (folder.layout[0] === 'tokenizer.json') {
      const path = join(folder.dir, 'tokenizer.json');
      return CLIPTokenizer.fromTokenizerJson(
        await readJsonFile(path, 'the fast tokenizer (tokenizer.json)'),
        config,
        path,
      );
    }
    const vocabPath = join(folder.dir, 'vocab.json');
    const mergesPath = join(folder.dir, 'merges.txt');
    const vocab = await readJsonFile(vocabPath, 'the BPE vocabulary (vocab.json)');
    let mergesText: string;
    try {
      mergesText = await readFile(mergesPath, 'utf8');
    } catch (error) {
      throw new FileFormatError(
        `Cannot read ${mergesPath}: ${(error as Error).message}`,
        'FILE_UNREADABLE',
        mergesPath,
      );
    }
    return CLIPTokenizer.fromVocabAndMerges(vocab, parseMerges(mergesText, mergesPath), config, vocabPath);
  }

  /**
   * A tokenizer from vocab.json's contents (token → id), merges.txt's pairs and the merged
   * tokenizer_config.json + special_tokens_map.json; `path` names them in errors.
   */
  static fromVocabAndMerges(
    vocab: unknown,
    merges: readonly (readonly [string, string])[],
    config: Record<string, unknown>,
    path: string,
  ): CLIPTokenizer {
    const table = checkVocab(vocab, path);
    const specials = specialTokens(config);
    const added = addedTokens(config, specials, (token) => table[token], path);
    let json: object;
    try {
      json = clipTokenizerJson(table, merges, {
        bos: specials.bos_token,
        eos: specials.eos_token,
        unk: specials.unk_token,
        added,
      });
    } catch (error) {
      throw new FileFormatError(`${path}: ${(error as Error).message}`, 'TOKENIZER_INVALID', path);
    }
    return CLIPTokenizer.fromTokenizerJson(json, config, path);
  }

  /**
   * A tokenizer from the parsed contents of a BPE tokenizer.json and the merged tokenizer_config.json +
   * special_tokens_map.json; the config's special tokens (e.g. SD 2.x's pad token `!`) are added to the
   * file's added tokens, as transformers adds them when it loads the tokenizer.
   */
  static fromTokenizerJson(
    tokenizerJson: unknown,
    config: Record<string, unknown>,
    path: string,
  ): CLIPTokenizer {
    const json = checkTokenizerJson(tokenizerJson, path, BPE_MODEL);
    // checkTokenizerJson checked it; TokenizerJson types only a Unigram vocabulary.
    const vocab = checkVocab((json.model as Record<string, unknown>).vocab, path);
    const known = new Set(json.added_tokens.map((t) => t.content));
    const specials = specialTokens(config);
    const added = addedTokens(config, specials, (token) => vocab[token], path, false).filter(
      (t) => !known.has(t.content),
    );
    const full: TokenizerJson = { ...json, added_tokens: [...json.added_tokens, ...added] };
    const fast = createFastTokenizer(full, path);
    const { prefix, suffix } = postProcessorSpecialIds(full, path);
    return new CLIPTokenizer({
      className: 'CLIPTokenizer',
      path,
      fast,
      prefixIds: prefix,
      suffixIds: suffix,
      padTokenId: fast.token_to_id(specials.pad_token),
      modelMaxLength: modelMaxLength(config),
      maxLengthHint: 'CLIP text encoders take 77',
    });
  }

  /** The id of `<|startoftext|>`, which the post-processor puts first. */
  get bosTokenId(): number | undefined {
    return this.prefixIds[0];
  }

  /** Text of `ids`; `skipSpecialTokens` drops `<|startoftext|>`, `<|endoftext|>` and the pad token. */
  override decode(ids: readonly number[], options: { skipSpecialTokens?: boolean } = {}): string {
    // transformers' CLIPTokenizer strips the space the last `</w>` leaves.
    return super.decode(ids, options).trim();
  }
}

/** The special tokens the config names, with CLIPTokenizer's defaults. */
function specialTokens(config: Record<string, unknown>): Record<SpecialTokenKey, string> {
  const out = { ...DEFAULT_SPECIAL_TOKENS } as Record<SpecialTokenKey, string>;
  for (const key of Object.keys(DEFAULT_SPECIAL_TOKENS) as SpecialTokenKey[]) {
    const content = tokenContent(config[key]);
    if (content !== undefined) out[key] = content;
  }
  return out;
}

/**
 * The added tokens of a CLIP tokenizer: tokenizer_config.json's `added_tokens_decoder` and the special
 * tokens, split out of the text before the rest is tokenized, as transformers' CLIPTokenizer does.
 * BOS and EOS are matched in the normalized (lower-cased) text too, as the slow tokenizer's word
 * pattern finds `<|startoftext|>` and `<|endoftext|>` in any case; others (SD 2.x's "!") only as
 * written. Ids come from added_tokens_decoder or the vocabulary; a special token in neither is an
 * error when `strict` (vocab.json route), else left out (the tokenizer.json route, where the pad
 * token may be absent and is only needed to pad).
 */
function addedTokens(
  config: Record<string, unknown>,
  specials: Record<SpecialTokenKey, string>,
  vocabId: (token: string) => number | undefined,
  path: string,
  strict = true,
): AddedTokenJson[] {
  const byContent = new Map<string, AddedTokenJson>();
  const normalized = (content: string): boolean =>
    content === specials.bos_token || content === specials.eos_token;
  const decoder = config.added_tokens_decoder;
  if (decoder !== undefined && decoder !== null) {
    if (!isPlainObject(decoder)) {
      throw new FileFormatError(
        `${path}: tokenizer_config's "added_tokens_decoder" is ${describeJson(decoder)}; expected an object of id → token`,
        'CONFIG_VALUE',
        path,
      );
    }
    for (const [key, value] of Object.entries(decoder)) {
      const id = Number(key);
      const content = tokenContent(value);
      if (!Number.isInteger(id) || id < 0 || content === undefined) {
        throw new FileFormatError(
          `${path}: added_tokens_decoder entry ${JSON.stringify(key)} is ${describeJson(value)}; expected an integer id and {"content": …}`,
          'CONFIG_VALUE',
          path,
        );
      }
      const flags = value as Record<string, unknown>;
      byContent.set(content, {
        id,
        content,
        special: flags.special !== false,
        normalized: normalized(content),
        lstrip: flags.lstrip === true,
        rstrip: flags.rstrip === true,
        single_word: false,
      });
    }
  }
  for (const [key, content] of Object.entries(specials)) {
    if (byContent.has(content)) continue;
    const id = vocabId(content);
    if (id === undefined) {
      if (!strict) continue;
      throw new FileFormatError(
        `${path}: the ${key} ${JSON.stringify(content)} is not in the vocabulary; CLIPTokenizer needs it there ` +
          '(check tokenizer_config.json and special_tokens_map.json)',
        'TOKENIZER_INVALID',
        path,
      );
    }
    byContent.set(content, {
      id,
      content,
      special: true,
      normalized: normalized(content),
      lstrip: false,
      rstrip: false,
      single_word: false,
    });
  }
  return [...byContent.values()].sort((a, b) => a.id - b.id);
}

function checkVocab(raw: unknown, path: string): Record<string, number> {
  if (!isPlainObject(raw)) {
    throw new FileFormatError(
      `${path}: expected a JSON object of token → id, found ${describeJson(raw)}`,
      'TOKENIZER_INVALID',
      path,
    );
  }
  for (const [token, id] of Object.entries(raw)) {
    if (typeof id !== 'number' || !Number.isInteger(id) || id < 0) {
      throw new FileFormatError(
        `${path}: the id of ${JSON.stringify(token)} is ${describeJson(id)}; expected an integer ≥ 0`,
        'TOKENIZER_INVALID',
        path,
      );
    }
  }
  return raw as Record<string, number>;
}

/** A byte-level BPE model: a token → id vocabulary and a list of merges. */
const BPE_MODEL: TokenizerModelKind = {
  type: 'BPE',
  description: 'a CLIP tokenizer is a byte-level "BPE" model',
  check: (model, path, fail) => {
    checkVocab(model.vocab, `${path} "model.vocab"`);
    if (!Array.isArray(model.merges)) fail('"model.merges" must be a list of merges');
  },
};
