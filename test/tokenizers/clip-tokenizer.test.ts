/**
 * CLIPTokenizer (src/tokenizers/clip-tokenizer.ts) on a small CLIP-layout vocabulary built here: the
 * 256 byte symbols of GPT-2's byte-to-unicode table in CLIP's order, the same with `</w>`, a few
 * dozen merges and the two special tokens, so single bytes and common words get CLIP's real ids
 * (`a</w>` = 320, `!` = 0). Expected ids are worked out by hand from the BPE rules, and checked
 * again on fresh random text against a plain re-implementation of transformers' slow CLIPTokenizer
 * (text cleaning, CLIP's word pattern, byte encoding, rank-ordered merges). The folder layouts
 * diffusers ships (vocab.json + merges.txt) and a transformers tokenizer.json must give the same ids.
 */
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { FileFormatError, OptionError } from '../../src/errors.js';
import { CLIPTokenizer } from '../../src/tokenizers/clip-tokenizer.js';
import { toModelInputs } from '../../src/tokenizers/t5-tokenizer.js';
import { seededUniform, testSeed } from '../random.js';

// ------------------------------------------------------------------------------------------------
// The vocabulary, laid out as openai/clip-vit-large-patch14's vocab.json is.

/**
 * GPT-2's bytes_to_unicode: printable bytes stand for themselves, the other bytes take U+0100
 * upwards in byte order. CLIP's vocabulary lists the printable ones first, then the others.
 */
const isPrintable = (b: number): boolean =>
  (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
const BYTE_TO_SYMBOL = new Map<number, string>();
{
  let next = 256;
  for (let b = 0; b < 256; b++) BYTE_TO_SYMBOL.set(b, String.fromCharCode(isPrintable(b) ? b : next++));
}
const BYTE_ORDER = [...Array(256).keys()].sort(
  (x, y) => Number(isPrintable(y)) - Number(isPrintable(x)) || x - y,
);
const BYTE_SYMBOLS = BYTE_ORDER.map((b) => BYTE_TO_SYMBOL.get(b) as string);

/** Merges in rank order; some compete for the same symbols so that the order matters. */
const MERGES: [string, string][] = [
  ['o', 't'], // 512 "ot"
  ['p', 'h'], // 513 "ph"
  ['ot', 'o</w>'], // 514
  ['ph', 'oto</w>'], // 515 "photo</w>"
  ['a', 't</w>'], // 516
  ['c', 'at</w>'], // 517 "cat</w>"
  ['o', 'f</w>'], // 518 "of</w>"
  ['t', 'h'], // 519
  ['th', 'e</w>'], // 520 "the</w>"
  ['h', 'e'], // 521
  ['l', 'l'], // 522
  ['e', 'l'], // 523 (never wins over "he" in "hello", which ranks lower)
  ['he', 'll'], // 524
  ['hell', 'o</w>'], // 525 "hello</w>"
  ['a', 'n'], // 526
  ['an', 'd</w>'], // 527 "and</w>"
  ['s', 't'], // 528
  ['r', 'e'], // 529
  ['e', 'r</w>'], // 530
  ['st', 'er</w>'], // 531
  ['n', 'o'], // 532
  ['a', 's'], // 533
  ['t', 'o</w>'], // 534
  ['n', 'e'], // 535
  ['o', 'n</w>'], // 536
  ['!', '!'], // 537
  ['!!', '!</w>'], // 538 "!!!</w>"
  ['Ã', '©'], // 539: "é" as its two UTF-8 bytes
  ['a', 'a'], // 540
  ['aa', 'a</w>'], // 541
];
const BOS = 512 + MERGES.length; // 542
const EOS = BOS + 1; // 543

function vocabulary(): Record<string, number> {
  const vocab: Record<string, number> = {};
  BYTE_SYMBOLS.forEach((s, i) => (vocab[s] = i));
  BYTE_SYMBOLS.forEach((s, i) => (vocab[`${s}</w>`] = 256 + i));
  MERGES.forEach(([a, b], i) => (vocab[a + b] = 512 + i));
  vocab['<|startoftext|>'] = BOS;
  vocab['<|endoftext|>'] = EOS;
  return vocab;
}
const VOCAB = vocabulary();

const MERGES_TXT = `#version: 0.2\n${MERGES.map((m) => m.join(' ')).join('\n')}\n`;

/** An AddedToken as transformers serialises it in tokenizer_config.json and special_tokens_map.json. */
const addedToken = (content: string, normalized: boolean, extra: object = {}) => ({
  content,
  lstrip: false,
  normalized,
  rstrip: false,
  single_word: false,
  ...extra,
});

/** special_tokens_map.json of both layouts: only the pad token differs. */
const specialTokensMap = (pad: object | string) => ({
  bos_token: addedToken('<|startoftext|>', true),
  eos_token: addedToken('<|endoftext|>', true),
  pad_token: pad,
  unk_token: addedToken('<|endoftext|>', true),
});

/** SD 1.x's tokenizer folder files (runwayml/stable-diffusion-v1-5/tokenizer), with a shorter limit. */
function sd15Configs(maxLength: number): Record<string, object> {
  const typed = (content: string) => addedToken(content, true, { __type: 'AddedToken' });
  return {
    'tokenizer_config.json': {
      add_prefix_space: false,
      bos_token: typed('<|startoftext|>'),
      do_lower_case: true,
      eos_token: typed('<|endoftext|>'),
      errors: 'replace',
      model_max_length: maxLength,
      pad_token: '<|endoftext|>',
      tokenizer_class: 'CLIPTokenizer',
      unk_token: typed('<|endoftext|>'),
    },
    'special_tokens_map.json': specialTokensMap('<|endoftext|>'),
  };
}

/** SD 2.x / SDXL tokenizer_2's files: pad token "!" (id 0), listed in added_tokens_decoder. */
function sd2Configs(maxLength: number): Record<string, object> {
  const special = (content: string, normalized: boolean) =>
    addedToken(content, normalized, { special: true });
  return {
    'tokenizer_config.json': {
      add_prefix_space: false,
      added_tokens_decoder: {
        '0': special('!', false),
        [String(BOS)]: special('<|startoftext|>', true),
        [String(EOS)]: special('<|endoftext|>', false),
      },
      bos_token: '<|startoftext|>',
      clean_up_tokenization_spaces: true,
      do_lower_case: true,
      eos_token: '<|endoftext|>',
      errors: 'replace',
      model_max_length: maxLength,
      pad_token: '!',
      tokenizer_class: 'CLIPTokenizer',
      unk_token: '<|endoftext|>',
    },
    'special_tokens_map.json': specialTokensMap(addedToken('!', false)),
  };
}

/** The tokenizer.json transformers (CLIPTokenizerFast, 4.4x) saves for this vocabulary, written out. */
function transformersTokenizerJson(): object {
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: [
      {
        id: BOS,
        content: '<|startoftext|>',
        single_word: false,
        lstrip: false,
        rstrip: false,
        normalized: true,
        special: true,
      },
      {
        id: EOS,
        content: '<|endoftext|>',
        single_word: false,
        lstrip: false,
        rstrip: false,
        normalized: true,
        special: true,
      },
    ],
    normalizer: {
      type: 'Sequence',
      normalizers: [
        { type: 'NFC' },
        { type: 'Replace', pattern: { Regex: '\\s+' }, content: ' ' },
        { type: 'Lowercase' },
      ],
    },
    pre_tokenizer: {
      type: 'Sequence',
      pretokenizers: [
        {
          type: 'Split',
          pattern: { Regex: "'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+" },
          behavior: 'Removed',
          invert: true,
        },
        { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
      ],
    },
    post_processor: {
      type: 'RobertaProcessing',
      sep: ['<|endoftext|>', EOS],
      cls: ['<|startoftext|>', BOS],
      trim_offsets: false,
      add_prefix_space: false,
    },
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: '<|endoftext|>',
      continuing_subword_prefix: '',
      end_of_word_suffix: '</w>',
      fuse_unk: false,
      byte_fallback: false,
      vocab: VOCAB,
      // The older "a b" string form of merges, as tokenizers < 0.20 wrote them.
      merges: MERGES.map((m) => m.join(' ')),
    },
  };
}

// ------------------------------------------------------------------------------------------------
// transformers' slow CLIPTokenizer, re-implemented with plain loops (ftfy's fix_text is NFC for this text).

/** transformers' CLIPTokenizer.pat; its bpe cache maps the two special tokens to themselves. */
const WORD = /<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+/giu;

function bpe(token: string): string[] {
  let word = [...token.slice(0, -1)].concat(`${token.slice(-1)}</w>`);
  const rank = new Map(MERGES.map(([a, b], i) => [`${a} ${b}`, i]));
  for (;;) {
    let best: [string, string] | undefined;
    let bestRank = Infinity;
    for (let i = 0; i + 1 < word.length; i++) {
      const r = rank.get(`${word[i]} ${word[i + 1]}`);
      if (r !== undefined && r < bestRank) [best, bestRank] = [[word[i], word[i + 1]], r];
    }
    if (!best) return word;
    const merged: string[] = [];
    for (let i = 0; i < word.length; i++) {
      if (i + 1 < word.length && word[i] === best[0] && word[i + 1] === best[1]) {
        merged.push(best[0] + best[1]);
        i++;
      } else merged.push(word[i]);
    }
    word = merged;
  }
}

/** Ids of `text` without BOS/EOS; `specials` are split out of the raw text first (longest first). */
function referenceIds(text: string, specials: Record<string, number>): number[] {
  const contents = Object.keys(specials).sort((a, b) => b.length - a.length);
  const ids: number[] = [];
  let piece = '';
  const flush = (): void => {
    const cleaned = piece.normalize('NFC').replace(/\s+/g, ' ').trim().toLowerCase();
    for (const word of cleaned.match(WORD) ?? []) {
      if (word === '<|startoftext|>' || word === '<|endoftext|>') {
        ids.push(VOCAB[word]);
        continue;
      }
      const symbols = [...new TextEncoder().encode(word)]
        .map((b) => BYTE_TO_SYMBOL.get(b) as string)
        .join('');
      for (const token of bpe(symbols)) ids.push(VOCAB[token] ?? EOS);
    }
    piece = '';
  };
  for (let i = 0; i < text.length;) {
    const special = contents.find((s) => text.startsWith(s, i));
    if (special) {
      flush();
      ids.push(specials[special]);
      i += special.length;
    } else piece += text[i++];
  }
  flush();
  return ids;
}

// ------------------------------------------------------------------------------------------------

async function writeFolder(dir: string, files: Record<string, object | string>): Promise<string> {
  await mkdir(dir, { recursive: true });
  for (const [name, content] of Object.entries(files)) {
    await writeFile(join(dir, name), typeof content === 'string' ? content : JSON.stringify(content));
  }
  return dir;
}

describe('CLIPTokenizer', () => {
  let root: string;
  let sd15: CLIPTokenizer;
  let sd2: CLIPTokenizer;
  let sd15Json: CLIPTokenizer;
  let sd2Json: CLIPTokenizer;
  before(async () => {
    root = await mkdtemp(join(tmpdir(), 'velodiff-clip-tok-'));
    const bpeFiles = { 'vocab.json': VOCAB, 'merges.txt': MERGES_TXT };
    // A diffusers pipeline folder: the tokenizer sits in tokenizer/.
    await writeFolder(join(root, 'sd15', 'tokenizer'), { ...bpeFiles, ...sd15Configs(12) });
    await writeFolder(join(root, 'sd2'), { ...bpeFiles, ...sd2Configs(12) });
    await writeFolder(join(root, 'sd15-json'), {
      'tokenizer.json': transformersTokenizerJson(),
      ...sd15Configs(12),
    });
    await writeFolder(join(root, 'sd2-json'), {
      'tokenizer.json': transformersTokenizerJson(),
      ...sd2Configs(12),
    });
    sd15 = await CLIPTokenizer.fromPretrained(join(root, 'sd15'));
    sd2 = await CLIPTokenizer.fromPretrained(join(root, 'sd2'));
    sd15Json = await CLIPTokenizer.fromPretrained(join(root, 'sd15-json'));
    sd2Json = await CLIPTokenizer.fromPretrained(join(root, 'sd2-json'));
  });
  after(() => rm(root, { recursive: true, force: true }));

  it('reads the files of each layout, the special ids and model_max_length', () => {
    assert.equal(sd15.path, join(root, 'sd15', 'tokenizer', 'vocab.json'));
    assert.equal(sd15Json.path, join(root, 'sd15-json', 'tokenizer.json'));
    for (const t of [sd15, sd2, sd15Json, sd2Json]) {
      assert.equal(t.bosTokenId, BOS);
      assert.equal(t.eosTokenId, EOS);
      assert.equal(t.modelMaxLength, 12);
    }
    assert.equal(sd15.padTokenId, EOS);
    assert.equal(sd2.padTokenId, 0);
    assert.equal(sd2Json.padTokenId, 0);
  });

  it('gives the ids worked out by hand from the merges', () => {
    // "a photo of a cat!": a</w> = 256 + 64 (byte 0x61 is the 65th printable); photo: o·t (512),
    // p·h (513), ot·o</w> (514), ph·oto</w> (515); of</w> 518; cat: a·t</w> (516), c·at</w> (517);
    // "!" is its own word: !</w> = 256.
    assert.deepEqual(sd15.tokenize('a photo of a cat!'), [
      'a</w>',
      'photo</w>',
      'of</w>',
      'a</w>',
      'cat</w>',
      '!</w>',
    ]);
    assert.deepEqual(sd15.encode('a photo of a cat!').inputIds, [[BOS, 320, 515, 518, 320, 517, 256, EOS]]);
    // Lower case, whitespace collapsed, "'s" split off: the</w> 520 (t·h, th·e</w>), cat</w>, ' = 6, s</w> = 256 + 82.
    assert.deepEqual(sd15.encode("  THE\tCat's  ").inputIds[0], [BOS, 520, 517, 6, 338, EOS]);
    // "hello": h·e (521) ranks before e·l (523), then l·l (522), he·ll (524), hell·o</w> (525).
    assert.deepEqual(sd15.tokenize('Hello'), ['hello</w>']);
    // Digits are single words: "12" → 1</w> 2</w> (bytes 0x31, 0x32 → 16, 17); "!!!" merges to !!!</w>.
    assert.deepEqual(sd15.encode('12 !!!').inputIds[0], [BOS, 256 + 16, 256 + 17, 538, EOS]);
    // é is two bytes (Ã ©) merged by rank 539; then x</w>.
    assert.deepEqual(sd15.encode('éx').inputIds[0], [BOS, 539, 256 + 87, EOS]);
    // An emoji's four bytes have no merges: four byte symbols, the last with </w>.
    const emoji = [...new TextEncoder().encode('😀')].map((b) =>
      BYTE_SYMBOLS.indexOf(BYTE_TO_SYMBOL.get(b) as string),
    );
    assert.deepEqual(sd15.encode('😀').inputIds[0], [BOS, ...emoji.slice(0, 3), 256 + emoji[3], EOS]);
  });

  it('splits special tokens out of the text; SD 2.x’s pad token "!" is one of them (id 0), as in transformers', () => {
    assert.deepEqual(sd15.encode('cat<|endoftext|>cat').inputIds[0], [BOS, 517, EOS, 517, EOS]);
    // In any case, as the slow tokenizer's word pattern (case-insensitive) finds them.
    assert.deepEqual(sd15.encode('cat <|ENDOFTEXT|>').inputIds[0], [BOS, 517, EOS, EOS]);
    // diffusers issue #4153: with pad_token "!", transformers' CLIPTokenizer gives "!" its pad id.
    assert.deepEqual(sd2.encode('cat! !!').inputIds[0], [BOS, 517, 0, 0, 0, EOS]);
    // SD 1.x: "!" is a word (!</w> = 256) and "!!" is ! (0) + !</w>, no merge of rank 537 or 538 applying.
    assert.deepEqual(sd15.encode('cat! !!').inputIds[0], [BOS, 517, 256, 0, 256, EOS]);
  });

  it("pads to max_length with the config's pad token and mask 0; truncation keeps BOS and EOS", () => {
    const texts = ['a cat', 'the cat and the cat and the cat and the cat'];
    const sd15Batch = sd15.encode(texts, { padding: 'max_length', truncation: true });
    assert.deepEqual(sd15Batch.inputIds, [
      [BOS, 320, 517, EOS, EOS, EOS, EOS, EOS, EOS, EOS, EOS, EOS],
      [BOS, 520, 517, 527, 520, 517, 527, 520, 517, 527, 520, EOS],
    ]);
    assert.deepEqual(sd15Batch.attentionMask, [
      [1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0],
      [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
    ]);
    const sd2Batch = sd2.encode(texts, { padding: 'max_length', truncation: true });
    assert.deepEqual(sd2Batch.inputIds[0], [BOS, 320, 517, EOS, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert.deepEqual(sd2Batch.inputIds[1], sd15Batch.inputIds[1]);
    // Without truncation a long text keeps every token; 'longest' pads to the batch's longest.
    const longest = sd15.encode(texts, { padding: 'longest' });
    assert.equal(longest.inputIds[1].length, 2 + 11);
    assert.deepEqual(longest.inputIds[0].slice(4), new Array(9).fill(EOS));
    assert.deepEqual(sd15.encode('a cat', { maxLength: 5, padding: 'max_length' }).inputIds[0], [
      BOS,
      320,
      517,
      EOS,
      EOS,
    ]);
    assert.deepEqual(sd15.encode('a cat', { addSpecialTokens: false }).inputIds[0], [320, 517]);
  });

  it('gives the int64 input_ids and attention_mask CLIPTextModel.forward takes', () => {
    const inputs = toModelInputs(
      sd2.encode(['a cat', 'the cat'], { padding: 'max_length', truncation: true }),
    );
    assert.deepEqual(inputs.input_ids.shape, [2, 12]);
    assert.equal(inputs.input_ids.dtype, 'int64');
    assert.deepEqual(Array.from(inputs.input_ids.data as BigInt64Array, Number).slice(0, 5), [
      BOS,
      320,
      517,
      EOS,
      0,
    ]);
    assert.deepEqual(
      Array.from(inputs.attention_mask.data as BigInt64Array, Number).slice(12, 16),
      [1, 1, 1, 1],
    );
  });

  it('agrees with the slow-tokenizer reference on random text, and both file layouts agree', (t) => {
    const random = seededUniform(testSeed('CLIP tokenizer on random text'));
    const alphabet = [
      ...'aehlnoprstcdf',
      ...'AEHLOST',
      ...'0123456789',
      ...' \t\n',
      ...'.,!?\'-_()"',
      'é',
      'É',
      '😀',
      "'s",
      "'re",
      "'LL",
    ];
    // Special tokens in other cases only after a space: the slow tokenizer finds those with its word
    // pattern, which "_<|ENDOFTEXT|>" would match as "_<|" first, while the fast one (and velodiff)
    // matches them anywhere in the normalized text.
    const specials = [' <|endoftext|>', '<|startoftext|>', ' <|EndOfText|>', ' <|STARTOFTEXT|>'];
    let compared = 0;
    for (let n = 0; n < 200; n++) {
      let text = '';
      const length = Math.floor(random() * 30);
      for (let i = 0; i < length; i++) {
        text +=
          random() < 0.03
            ? specials[Math.floor(random() * specials.length)]
            : alphabet[Math.floor(random() * alphabet.length)];
      }
      const sd15Expected = referenceIds(text, { '<|startoftext|>': BOS, '<|endoftext|>': EOS });
      const sd2Expected = referenceIds(text, { '<|startoftext|>': BOS, '<|endoftext|>': EOS, '!': 0 });
      assert.deepEqual(
        sd15.encode(text, { addSpecialTokens: false }).inputIds[0],
        sd15Expected,
        JSON.stringify(text),
      );
      assert.deepEqual(
        sd15Json.encode(text, { addSpecialTokens: false }).inputIds[0],
        sd15Expected,
        JSON.stringify(text),
      );
      assert.deepEqual(
        sd2.encode(text, { addSpecialTokens: false }).inputIds[0],
        sd2Expected,
        JSON.stringify(text),
      );
      assert.deepEqual(
        sd2Json.encode(text, { addSpecialTokens: false }).inputIds[0],
        sd2Expected,
        JSON.stringify(text),
      );
      compared += sd15Expected.length;
    }
    t.diagnostic(`${compared} tokens compared`);
  });

  it('decodes back to lower-cased text', () => {
    const ids = sd15.encode('A photo of a CAT', { padding: 'max_length' }).inputIds[0];
    assert.equal(sd15.decode(ids, { skipSpecialTokens: true }), 'a photo of a cat');
    assert.equal(sd15.decode([]), '');
  });

  it('rejects bad options with what was expected', () => {
    assert.throws(
      () => sd15.encode('a', { padding: 'left' as never }),
      /padding is "left"; expected 'max_length', 'longest' or false/,
    );
    assert.throws(() => sd15.encode('a', { maxLength: 0 }), /maxLength is 0; expected a positive integer/);
    assert.throws(
      () => sd15.encode('a', { maxLength: 1, truncation: true }),
      /maxLength 1 cannot hold the 2 special tokens/,
    );
    assert.throws(
      () => sd15.encode([3 as never]),
      (e: unknown) => e instanceof OptionError && /text 0 is 3; expected a string/.test(e.message),
    );
  });

  it('without model_max_length, padding max_length asks for maxLength', async () => {
    const dir = await writeFolder(join(root, 'no-limit'), { 'vocab.json': VOCAB, 'merges.txt': MERGES_TXT });
    const tokenizer = await CLIPTokenizer.fromPretrained(dir);
    assert.equal(tokenizer.modelMaxLength, undefined);
    assert.equal(tokenizer.padTokenId, EOS, "CLIPTokenizer's default pad token is <|endoftext|>");
    assert.throws(
      () => tokenizer.encode('a', { padding: 'max_length' }),
      /padding 'max_length' needs maxLength/,
    );
  });

  it('says what it looked for, and names the file it cannot use', async () => {
    const empty = await writeFolder(join(root, 'empty'), { 'vocab.json': VOCAB });
    await assert.rejects(CLIPTokenizer.fromPretrained(empty), (e: unknown) => {
      assert.ok(e instanceof FileFormatError);
      assert.match(e.message, /expected tokenizer\.json or vocab\.json \+ merges\.txt in/);
      return true;
    });
    const badMerges = await writeFolder(join(root, 'bad-merges'), {
      'vocab.json': VOCAB,
      'merges.txt': '#version: 0.2\na b c\n',
    });
    await assert.rejects(
      CLIPTokenizer.fromPretrained(badMerges),
      /merges\.txt: line 2 is "a b c"; expected two symbols/,
    );
    const unigram = await writeFolder(join(root, 'unigram'), {
      'tokenizer.json': {
        ...transformersTokenizerJson(),
        model: { type: 'Unigram', vocab: [['a', 0]], unk_id: 0 },
      },
    });
    await assert.rejects(CLIPTokenizer.fromPretrained(unigram), (e: unknown) => {
      assert.ok(e instanceof FileFormatError);
      assert.match(e.message, /"model\.type" is "Unigram"; a CLIP tokenizer is a byte-level "BPE" model/);
      assert.ok(e.message.includes(join(unigram, 'tokenizer.json')));
      return true;
    });
    const noBos = await writeFolder(join(root, 'no-bos'), {
      'vocab.json': VOCAB,
      'merges.txt': MERGES_TXT,
      'tokenizer_config.json': { bos_token: '<s>' },
    });
    await assert.rejects(CLIPTokenizer.fromPretrained(noBos), /the bos_token "<s>" is not in the vocabulary/);
  });
});
