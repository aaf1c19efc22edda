/**
 * The T5 tokenizer of PixArt-α/Σ, SD3 and FLUX prompts: SentencePiece Unigram with `</s>` appended,
 * pad id 0, right padding. Reads a tokenizer folder's `tokenizer.json` (the HF fast tokenizer) or,
 * failing that, its `spiece.model`, and encodes as transformers' `tokenizer(text, max_length=…,
 * padding=…, truncation=…, add_special_tokens=True)` does.
 */
import { readFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';

import { FileFormatError } from '../errors.js';
import { readJsonFile } from '../io/diffusers.js';
import { describeJson } from '../io/json.js';
import type { EncodeOptions, Encoding } from './batch-encoding.js';
import { postProcessorSpecialIds } from './post-processor.js';
import type { PreTrainedTokenizerParts } from './pretrained-tokenizer.js';
import { PreTrainedTokenizer } from './pretrained-tokenizer.js';
import { parseSentencePieceModel, t5TokenizerJsonFromSentencePiece } from './sentencepiece-model.js';
import type { TokenizerModelKind } from './tokenizer-json.js';
import { checkTokenizerJson, createFastTokenizer } from './tokenizer-json.js';
import {
  findTokenizerFolder,
  modelMaxLength,
  readTokenizerConfig,
  tokenContent,
} from './tokenizer-folder.js';

export type { PaddingStrategy } from './batch-encoding.js';
export { toModelInputs } from './batch-encoding.js';
export type T5EncodeOptions = EncodeOptions;
export type T5Encoding = Encoding;

/** T5Tokenizer's default number of `<extra_id_n>` sentinels when tokenizer_config.json does not say. */
const DEFAULT_EXTRA_IDS = 100;

export class T5Tokenizer extends PreTrainedTokenizer {
  private constructor(
    parts: PreTrainedTokenizerParts,
    readonly unkTokenId: number,
  ) {
    super(parts);
  }

  /**
   * Load from `dir` holding tokenizer.json or spiece.model (and optionally tokenizer_config.json),
   * or from a diffusers pipeline folder whose `tokenizer/` holds them. tokenizer.json is preferred
   * when both are there, as transformers' AutoTokenizer prefers the fast tokenizer.
   */
  static async fromPretrained(dir: string): Promise<T5Tokenizer> {
    const folder = await findTokenizerFolder(
      resolve(dir),
      [['tokenizer.json'], ['spiece.model']],
      'Pass the tokenizer folder (e.g. <pipeline>/tokenizer, or tokenizer_3 for SD3) of a T5 model.',
    );
    const config = await readTokenizerConfig(folder.dir);
    const path = join(folder.dir, folder.layout[0]);
    let json: unknown;
    if (folder.layout[0] === 'tokenizer.json') {
      json = await readJsonFile(path, 'the fast tokenizer (tokenizer.json)');
    } else {
      let bytes: Uint8Array;
      try {
        bytes = await readFile(path);
      } catch (error) {
        throw new FileFormatError(
          `Cannot read ${path}: ${(error as Error).message}`,
          'FILE_UNREADABLE',
          path,
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
          `${path} is not a SentencePiece model T5Tokenizer can use: ${(error as Error).message}`,
          'TOKENIZER_INVALID',
          path,
        );
      }
    }
    return T5Tokenizer.fromJson(json, config, path);
  }

  /**
   * A tokenizer from the parsed contents of tokenizer.json and tokenizer_config.json (e.g. ones
   * `buildT5Tokenizer` made in memory); `path` names them in errors.
   */
  static fromJson(tokenizerJson: unknown, config: Record<string, unknown>, path: string): T5Tokenizer {
    const json = checkTokenizerJson(tokenizerJson, path, UNIGRAM_MODEL);
    const fast = createFastTokenizer(json, path);
    const { prefix, suffix } = postProcessorSpecialIds(json, path);
    const padToken = tokenContent(config.pad_token) ?? '<pad>';
    return new T5Tokenizer(
      {
        className: 'T5Tokenizer',
        path,
        fast,
        prefixIds: prefix,
        suffixIds: suffix,
        padTokenId: fast.token_to_id(padToken),
        modelMaxLength: modelMaxLength(config),
        maxLengthHint: 'PixArt-α uses 120, PixArt-Σ 300',
      },
      json.model.unk_id as number,
    );
  }
}

/** A SentencePiece Unigram model: [piece, score] pairs and the id of the unknown piece. */
const UNIGRAM_MODEL: TokenizerModelKind = {
  type: 'Unigram',
  description: 'a T5 tokenizer is a SentencePiece "Unigram" model',
  check: (model, _path, fail) => {
    if (
      !Array.isArray(model.vocab) ||
      model.vocab.some((e) => !Array.isArray(e) || typeof e[0] !== 'string' || typeof e[1] !== 'number')
    ) {
      fail('"model.vocab" must be a list of [piece, score] pairs');
    }
    const vocab = model.vocab as unknown[];
    if (
      typeof model.unk_id !== 'number' ||
      !Number.isInteger(model.unk_id) ||
      model.unk_id < 0 ||
      model.unk_id >= vocab.length
    ) {
      fail(`"model.unk_id" is ${describeJson(model.unk_id)}; expected the id of the unknown piece (T5: 2)`);
    }
    if (model.byte_fallback === true) {
      fail(
        '"model.byte_fallback" is true; T5 tokenizers do not use byte pieces and this reader does not support them',
      );
    }
  },
};
