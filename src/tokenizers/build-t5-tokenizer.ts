/**
 * A T5-style tokenizer made from a caption corpus, for a text encoder trained from scratch: a
 * SentencePiece Unigram vocabulary with T5's special ids (pad 0, eos 1, unk 2), written as the
 * three files a transformers T5TokenizerFast folder holds (tokenizer.json, tokenizer_config.json,
 * special_tokens_map.json), laid out as t5-base's tokenizer.json is.
 *
 * The pieces are the corpus's words ("▁heart": a word that starts a whitespace-separated chunk;
 * "ivoire" in "d’ivoire": one that continues it) and punctuation, scored by their unigram
 * log-probability, plus every single character of the corpus and of printable ASCII at scores
 * below every word, so that any text tokenizes and a known word is always one piece. Deterministic:
 * the same corpus gives the same files, byte for byte.
 */
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';

import { OptionError } from '../errors.js';
import { writeFileAtomic } from '../io/atomic.js';
import type { AddedTokenJson, TokenizerJson } from './tokenizer-json.js';

/** SentencePiece's word-boundary marker, which the Metaspace pre-tokenizer puts before each word. */
export const WORD_BOUNDARY = '\u2581';

/** T5's special tokens, in id order (pad 0, eos 1, unk 2). */
const SPECIAL_TOKENS = ['<pad>', '</s>', '<unk>'] as const;
const UNK_ID = 2;
const EOS_ID = 1;

export interface T5TokenizerBuildOptions {
  /** Words and punctuation runs seen fewer times are left to single characters (default 2). */
  minCount?: number;
  /** tokenizer_config.json's model_max_length: what `padding: 'max_length'` pads to by default. */
  modelMaxLength: number;
}

/** The files of a tokenizer folder, as JSON values. */
export interface T5TokenizerFiles {
  'tokenizer.json': TokenizerJson;
  'tokenizer_config.json': Record<string, unknown>;
  'special_tokens_map.json': Record<string, unknown>;
}

/** Letters, marks and digits form words; anything else is a piece of one character. */
const RUN = /[\p{L}\p{M}\p{N}]+|[^\p{L}\p{M}\p{N}]/gu;

/** The pieces the Metaspace pre-tokenizer and a word-level split give `text`, in order. */
function candidatePieces(text: string): string[] {
  const pieces: string[] = [];
  for (const chunk of text.normalize('NFKC').split(/\s+/u)) {
    if (chunk === '') continue;
    const runs = chunk.match(RUN) ?? [];
    runs.forEach((run, i) => pieces.push(i === 0 ? WORD_BOUNDARY + run : run));
  }
  return pieces;
}

function compareCodePoints(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** Build the tokenizer files from `corpus` (texts as the pipeline will pass them: PixArt lower-cases prompts). */
export function buildT5Tokenizer(
  corpus: readonly string[],
  options: T5TokenizerBuildOptions,
): T5TokenizerFiles {
  const minCount = options.minCount ?? 2;
  if (!Number.isInteger(minCount) || minCount < 1) {
    throw new OptionError(`buildT5Tokenizer: minCount must be an integer ≥ 1, got ${minCount}`);
  }
  const maxLength = options.modelMaxLength;
  if (!Number.isInteger(maxLength) || maxLength < 2) {
    throw new OptionError(
      `buildT5Tokenizer: modelMaxLength must be an integer ≥ 2 (a token and </s>), got ${maxLength}`,
    );
  }
  const pieceCounts = new Map<string, number>();
  const charCounts = new Map<string, number>();
  let total = 0;
  for (const text of corpus) {
    for (const piece of candidatePieces(text)) {
      pieceCounts.set(piece, (pieceCounts.get(piece) ?? 0) + 1);
      total += 1;
      for (const char of piece)
        if (char !== WORD_BOUNDARY) charCounts.set(char, (charCounts.get(char) ?? 0) + 1);
    }
  }
  // Printable ASCII is always there, so English text never meets <unk>.
  for (let code = 0x21; code <= 0x7e; code++) {
    const char = String.fromCharCode(code);
    if (!charCounts.has(char)) charCounts.set(char, 0);
  }

  const scores = new Map<string, number>();
  for (const [piece, count] of pieceCounts) {
    if (count >= minCount) scores.set(piece, Math.log(count / total));
  }
  // Single characters score below every word, so a word in the vocabulary is never split; among
  // themselves they keep their frequency order.
  const lowest = Math.min(0, ...scores.values());
  const mostFrequentChar = Math.max(...charCounts.values());
  const fallback = (count: number): number => lowest - 1 - Math.log((mostFrequentChar + 1) / (count + 1));
  if (!scores.has(WORD_BOUNDARY)) scores.set(WORD_BOUNDARY, fallback(mostFrequentChar));
  for (const [char, count] of charCounts) if (!scores.has(char)) scores.set(char, fallback(count));

  const pieces = [...scores].sort((a, b) => b[1] - a[1] || compareCodePoints(a[0], b[0]));
  const vocab: [string, number][] = [
    ...SPECIAL_TOKENS.map((token): [string, number] => [token, 0]),
    ...pieces.map(([piece, score]): [string, number] => [piece, Math.fround(score)]),
  ];
  const addedTokens: AddedTokenJson[] = SPECIAL_TOKENS.map((content, id) => ({
    id,
    content,
    single_word: false,
    lstrip: false,
    rstrip: false,
    normalized: false,
    special: true,
  }));
  const endOfSequence = SPECIAL_TOKENS[EOS_ID];
  const tokenizer: TokenizerJson = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: addedTokens,
    // t5-base's Precompiled charsmap is SentencePiece's nmt_nfkc, NFKC plus whitespace folding that
    // WhitespaceSplit does here; an empty charsmap is an error in the Rust tokenizers, so NFKC itself.
    normalizer: { type: 'NFKC' },
    pre_tokenizer: {
      type: 'Sequence',
      pretokenizers: [
        { type: 'WhitespaceSplit' },
        { type: 'Metaspace', replacement: WORD_BOUNDARY, add_prefix_space: true },
      ],
    },
    post_processor: {
      type: 'TemplateProcessing',
      single: [{ Sequence: { id: 'A', type_id: 0 } }, { SpecialToken: { id: endOfSequence, type_id: 0 } }],
      pair: [
        { Sequence: { id: 'A', type_id: 0 } },
        { SpecialToken: { id: endOfSequence, type_id: 0 } },
        { Sequence: { id: 'B', type_id: 0 } },
        { SpecialToken: { id: endOfSequence, type_id: 0 } },
      ],
      special_tokens: { [endOfSequence]: { id: endOfSequence, ids: [EOS_ID], tokens: [endOfSequence] } },
    },
    decoder: { type: 'Metaspace', replacement: WORD_BOUNDARY, add_prefix_space: true },
    model: { type: 'Unigram', unk_id: UNK_ID, vocab },
  };
  const addedTokensDecoder = Object.fromEntries(addedTokens.map(({ id, ...token }) => [String(id), token]));
  return {
    'tokenizer.json': tokenizer,
    'tokenizer_config.json': {
      added_tokens_decoder: addedTokensDecoder,
      additional_special_tokens: [],
      clean_up_tokenization_spaces: true,
      eos_token: SPECIAL_TOKENS[EOS_ID],
      // No <extra_id_n> sentinels: T5TokenizerFast would otherwise add 100 ids past the vocabulary.
      extra_ids: 0,
      model_max_length: maxLength,
      pad_token: SPECIAL_TOKENS[0],
      tokenizer_class: 'T5Tokenizer',
      unk_token: SPECIAL_TOKENS[UNK_ID],
    },
    'special_tokens_map.json': {
      eos_token: SPECIAL_TOKENS[EOS_ID],
      pad_token: SPECIAL_TOKENS[0],
      unk_token: SPECIAL_TOKENS[UNK_ID],
    },
  };
}

/** The vocabulary size of built tokenizer files (the text encoder's vocab_size). */
export function t5TokenizerVocabSize(files: T5TokenizerFiles): number {
  return (files['tokenizer.json'].model.vocab ?? []).length;
}

/** Write the files into `dir` (created if needed), each atomically. */
export async function writeT5TokenizerFolder(dir: string, files: T5TokenizerFiles): Promise<void> {
  await mkdir(dir, { recursive: true });
  for (const [name, json] of Object.entries(files)) {
    await writeFileAtomic(join(dir, name), `${JSON.stringify(json, null, 2)}\n`);
  }
}
