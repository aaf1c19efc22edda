import assert from 'node:assert/strict';
import { mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';

import {
  WORD_BOUNDARY,
  buildT5Tokenizer,
  t5TokenizerVocabSize,
  writeT5TokenizerFolder,
} from '../../src/tokenizers/build-t5-tokenizer.js';
import { T5Tokenizer } from '../../src/tokenizers/t5-tokenizer.js';
import { seededUniform, testSeed } from '../random.js';

const WORDS = [
  'red',
  'heart',
  'grinning',
  'face',
  'flag',
  'japan',
  'dog',
  'pizza',
  'rocket',
  'noto',
  'twemoji',
  'style',
];

/** Captions like the emoji set's: words, commas, a colon, a hyphen; `count` of them from `random`. */
function captions(random: () => number, count: number): string[] {
  const pick = (): string => WORDS[Math.floor(random() * WORDS.length)];
  return Array.from({ length: count }, () => {
    const name = Array.from({ length: 1 + Math.floor(random() * 3) }, pick).join(' ');
    const extra = random() < 0.3 ? `: ${pick()}-${pick()}` : '';
    return `${name}${extra}, ${random() < 0.5 ? 'noto' : 'twemoji'} style`;
  });
}

const folders: string[] = [];
after(async () => {
  for (const dir of folders) await rm(dir, { recursive: true, force: true });
});

async function written(corpus: string[], modelMaxLength = 16): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'velodiff-built-t5-'));
  folders.push(dir);
  await writeT5TokenizerFolder(dir, buildT5Tokenizer(corpus, { modelMaxLength }));
  return dir;
}

describe('buildT5Tokenizer', () => {
  it('writes the three files of a T5TokenizerFast folder in the layout of t5-base', async () => {
    const dir = await written(captions(seededUniform(1), 50));
    assert.deepEqual((await readdir(dir)).sort(), [
      'special_tokens_map.json',
      'tokenizer.json',
      'tokenizer_config.json',
    ]);
    const json = JSON.parse(await readFile(join(dir, 'tokenizer.json'), 'utf8'));
    assert.deepEqual(
      json.added_tokens.map((t: { id: number; content: string; special: boolean }) => [
        t.id,
        t.content,
        t.special,
      ]),
      [
        [0, '<pad>', true],
        [1, '</s>', true],
        [2, '<unk>', true],
      ],
    );
    assert.deepEqual(json.pre_tokenizer, {
      type: 'Sequence',
      pretokenizers: [
        { type: 'WhitespaceSplit' },
        { type: 'Metaspace', replacement: WORD_BOUNDARY, add_prefix_space: true },
      ],
    });
    assert.deepEqual(json.decoder, { type: 'Metaspace', replacement: WORD_BOUNDARY, add_prefix_space: true });
    assert.equal(json.post_processor.type, 'TemplateProcessing');
    assert.deepEqual(json.post_processor.special_tokens['</s>'].ids, [1]);
    assert.equal(json.model.type, 'Unigram');
    assert.equal(json.model.unk_id, 2);
    assert.deepEqual(json.model.vocab.slice(0, 3), [
      ['<pad>', 0],
      ['</s>', 0],
      ['<unk>', 0],
    ]);
    const config = JSON.parse(await readFile(join(dir, 'tokenizer_config.json'), 'utf8'));
    assert.equal(config.model_max_length, 16);
    assert.equal(config.extra_ids, 0, 'no <extra_id_n> sentinels past the vocabulary');
    assert.deepEqual(JSON.parse(await readFile(join(dir, 'special_tokens_map.json'), 'utf8')), {
      eos_token: '</s>',
      pad_token: '<pad>',
      unk_token: '<unk>',
    });
  });

  it('round-trips fresh captions, each known word one piece, pads to model_max_length', async () => {
    const random = seededUniform(testSeed('built T5 tokenizer captions'));
    const corpus = captions(random, 200);
    const tokenizer = await T5Tokenizer.fromPretrained(await written(corpus, 24));
    assert.equal(tokenizer.modelMaxLength, 24);
    assert.equal(tokenizer.eosTokenId, 1);
    assert.equal(tokenizer.padTokenId, 0);
    for (const text of corpus.slice(0, 50)) {
      const ids = tokenizer.encode(text).inputIds[0];
      assert.equal(ids[ids.length - 1], 1, 'ends with </s>');
      assert.ok(!ids.includes(2), `no <unk> in "${text}"`);
      assert.equal(tokenizer.decode(ids, { skipSpecialTokens: true }), text);
      const words = text.split(' ').map((w) => w.replace(/[,:].*$/, '').split('-')[0]);
      const pieces = tokenizer.tokenize(text);
      for (const word of words)
        assert.ok(pieces.includes(WORD_BOUNDARY + word), `"${word}" is one piece in ${pieces.join(' ')}`);
      const padded = tokenizer.encode(text, { padding: 'max_length', truncation: true });
      assert.equal(padded.inputIds[0].length, 24, 'model_max_length is the default max length');
    }
  });

  it('tokenizes any text: unseen ASCII by characters, unseen characters as <unk>', async () => {
    const tokenizer = await T5Tokenizer.fromPretrained(await written(captions(seededUniform(2), 100)));
    const unseen = tokenizer.encode('zyx!').inputIds[0];
    assert.ok(!unseen.includes(2), 'printable ASCII is always in the vocabulary');
    assert.equal(tokenizer.decode(unseen, { skipSpecialTokens: true }), 'zyx!');
    const ids = tokenizer.encode('red 😀 heart').inputIds[0];
    assert.ok(ids.includes(2), `an emoji character is <unk>: ${ids.join(',')}`);
    assert.deepEqual(
      tokenizer.tokenize('red 😀 heart').filter((p) => p.startsWith(WORD_BOUNDARY) && p.length > 1),
      [`${WORD_BOUNDARY}red`, `${WORD_BOUNDARY}heart`],
    );
    assert.deepEqual(tokenizer.encode('').inputIds[0], [1], 'the empty caption (CFG) is </s> alone');
  });

  it('is deterministic: the same corpus gives the same files', () => {
    const corpus = captions(seededUniform(3), 80);
    const a = buildT5Tokenizer(corpus, { modelMaxLength: 32 });
    const b = buildT5Tokenizer([...corpus], { modelMaxLength: 32 });
    assert.equal(JSON.stringify(a), JSON.stringify(b));
    // Each word of the corpus becomes a piece at once it appears twice (minCount 2).
    const vocab = a['tokenizer.json'].model.vocab ?? [];
    assert.equal(t5TokenizerVocabSize(a), vocab.length);
    const pieces = new Set(vocab.map(([piece]) => piece));
    for (const word of WORDS)
      if (corpus.join(' ').split(word).length > 2) assert.ok(pieces.has(WORD_BOUNDARY + word), word);
  });

  it('rejects a model_max_length that cannot hold a token and </s>', () => {
    assert.throws(() => buildT5Tokenizer(['a'], { modelMaxLength: 1 }), /modelMaxLength/);
  });
});
