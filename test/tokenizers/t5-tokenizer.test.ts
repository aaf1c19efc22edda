/**
 * T5Tokenizer (src/tokenizers/) on tiny tokenizer files built here: a Unigram vocabulary in
 * tokenizer.json form and the same vocabulary as a serialized SentencePiece ModelProto. Expected
 * ids are worked out by hand from the Unigram rules (best total log-probability over all
 * segmentations; unknown characters score min − 10 and a run of them fuses into one <unk>), and
 * checked again on fresh random text against a brute-force enumeration of every segmentation.
 */
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { EOS, PIECES, SPACE, UNK, tokenizerJson } from '../fixtures/tiny-t5-tokenizer.js';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { FileFormatError, OptionError } from '../../src/errors.js';
import { T5Tokenizer, toModelInputs } from '../../src/tokenizers/t5-tokenizer.js';
import { seededUniform, testSeed } from '../random.js';

// A protobuf writer, independent of the reader under test (sentencepiece_model.proto field numbers).
function varint(value: bigint): number[] {
  let v = BigInt.asUintN(64, value);
  const out: number[] = [];
  do {
    let byte = Number(v & 0x7fn);
    v >>= 7n;
    if (v !== 0n) byte |= 0x80;
    out.push(byte);
  } while (v !== 0n);
  return out;
}
const key = (field: number, wire: number): number[] => varint(BigInt((field << 3) | wire));
const intField = (field: number, value: number): number[] => [...key(field, 0), ...varint(BigInt(value))];
function bytesField(field: number, bytes: Uint8Array | number[]): number[] {
  return [...key(field, 2), ...varint(BigInt(bytes.length)), ...bytes];
}
const stringField = (field: number, s: string): number[] => bytesField(field, new TextEncoder().encode(s));
function floatField(field: number, value: number): number[] {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setFloat32(0, value, true);
  return [...key(field, 5), ...b];
}

/** A serialized ModelProto holding PIECES (T5's spiece.model layout: pad 0, eos 1, unk 2, no bos). */
function spieceModel(): Uint8Array {
  const out: number[] = [];
  for (const [piece, score, type] of PIECES) {
    const body = [
      ...stringField(1, piece),
      ...floatField(2, score),
      ...(type === 1 ? [] : intField(3, type)),
    ];
    out.push(...bytesField(1, body));
  }
  // trainer_spec: model_type UNIGRAM, vocab_size, unk 2, bos −1 (a 10-byte varint), eos 1, pad 0,
  // and a field the reader must skip (input = 1, a string).
  const trainer = [
    ...stringField(1, 'c4.txt'),
    ...intField(3, 1),
    ...intField(4, PIECES.length),
    ...intField(40, 2),
    ...intField(41, -1),
    ...intField(42, 1),
    ...intField(43, 0),
  ];
  out.push(...bytesField(2, trainer));
  const normalizer = [
    ...stringField(1, 'nmt_nfkc'),
    ...bytesField(2, [1, 2, 3, 4]),
    ...intField(3, 1),
    ...intField(4, 1),
  ];
  out.push(...bytesField(3, normalizer));
  return Uint8Array.from(out);
}

// ------------------------------------------------------------------------------------------------
// Brute-force Unigram reference: every segmentation of "▁word", best total score, unknown runs fused.

function bestSegmentation(word: string): { ids: number[]; unique: boolean } {
  const vocab = new Map<string, { id: number; score: number }>();
  PIECES.forEach(([p, s, type], id) => type === 1 && vocab.set(p, { id, score: s }));
  const minScore = Math.min(...PIECES.map(([, s]) => s));
  const chars = Array.from(SPACE + word);
  let best = -Infinity;
  let bestIds: number[] = [];
  let ties = 0;
  const walk = (pos: number, score: number, ids: number[]): void => {
    if (pos === chars.length) {
      if (Math.abs(score - best) < 1e-9) ties++;
      else if (score > best) {
        best = score;
        bestIds = ids;
        ties = 0;
      }
      return;
    }
    for (let end = pos + 1; end <= chars.length; end++) {
      const piece = vocab.get(chars.slice(pos, end).join(''));
      if (piece) walk(end, score + piece.score, [...ids, piece.id]);
    }
    // A character with no one-character piece is an unknown node.
    if (!vocab.has(chars[pos])) walk(pos + 1, score + minScore - 10, [...ids, UNK]);
  };
  walk(0, 0, []);
  const fused = bestIds.filter((id, i) => !(id === UNK && bestIds[i - 1] === UNK));
  return { ids: fused, unique: ties === 0 };
}

// ------------------------------------------------------------------------------------------------

describe('T5Tokenizer', () => {
  let root: string;
  const loaded: Record<string, T5Tokenizer> = {};
  before(async () => {
    root = await mkdtemp(join(tmpdir(), 'velodiff-t5tok-'));
    // A diffusers pipeline folder whose tokenizer/ holds tokenizer.json.
    await mkdir(join(root, 'pipeline', 'tokenizer'), { recursive: true });
    await writeFile(join(root, 'pipeline', 'tokenizer', 'tokenizer.json'), JSON.stringify(tokenizerJson()));
    await writeFile(
      join(root, 'pipeline', 'tokenizer', 'tokenizer_config.json'),
      JSON.stringify({ model_max_length: 512, pad_token: '<pad>' }),
    );
    // A tokenizer folder with only spiece.model (as PixArt's is), with 3 sentinels.
    await mkdir(join(root, 'spiece'));
    await writeFile(join(root, 'spiece', 'spiece.model'), spieceModel());
    await writeFile(
      join(root, 'spiece', 'tokenizer_config.json'),
      JSON.stringify({ extra_ids: 3, eos_token: { content: '</s>' } }),
    );
    loaded.json = await T5Tokenizer.fromPretrained(join(root, 'pipeline'));
    loaded.spiece = await T5Tokenizer.fromPretrained(join(root, 'spiece'));
  });
  after(() => rm(root, { recursive: true, force: true }));

  for (const kind of ['json', 'spiece']) {
    describe(`from ${kind === 'json' ? 'tokenizer.json' : 'spiece.model'}`, () => {
      const ids = (text: string | string[], options = {}): number[][] =>
        loaded[kind].encode(text, options).inputIds;

      it('picks the best-scoring segmentation, not the longest match', () => {
        // ▁abc: [▁abc] −9.7, [▁ab c] −11.5, [▁a bc] −6.4, [▁ a bc] −9.6, [▁a b c] −13.8 → ▁a bc.
        assert.deepEqual(ids('abc'), [[4, 10, EOS]]);
        // ▁bat: [▁b at] −8.2, [▁ b at] −10.6, [▁b a t] −12.6 → ▁b at.
        assert.deepEqual(ids('bat'), [[11, 20, EOS]]);
        // ▁the −4.4 (vs ▁t h e −15.5); ▁cat . −9.7 (vs ▁c at . −13.0).
        assert.deepEqual(ids('the cat.'), [[16, 13, 15, EOS]]);
        assert.equal(loaded[kind].eosTokenId, EOS);
      });

      it('maps unknown characters to <unk>, one per run, and normalises with NFKC', () => {
        // ▁a x x b: ▁a, then two unknown nodes (min − 10 = −19.7 each) fused into one, then b.
        assert.deepEqual(ids('axxb'), [[4, UNK, 6, EOS]]);
        assert.deepEqual(ids('xé'), [[3, UNK, EOS]]);
        assert.deepEqual(loaded[kind].tokenize('axxb'), [`${SPACE}a`, 'xx', 'b']);
        // Full-width letters become ASCII under NFKC, as T5's nmt_nfkc normaliser does.
        assert.deepEqual(ids('\uff41\uff42\uff43'), [[4, 10, EOS]]);
        // Runs of whitespace only separate words.
        assert.deepEqual(ids('  abc \t  cat '), [[4, 10, 13, EOS]]);
        assert.deepEqual(ids(''), [[EOS]]);
        // Special tokens in the text are kept whole.
        assert.deepEqual(ids('a</s>'), [[4, EOS, EOS]]);
      });

      it("pads with id 0 and mask 0 to max_length; truncation keeps '</s>'", () => {
        const enc = loaded[kind].encode(['abc', 'the cat.'], {
          maxLength: 6,
          padding: 'max_length',
          truncation: true,
        });
        assert.deepEqual(enc.inputIds, [
          [4, 10, EOS, 0, 0, 0],
          [16, 13, 15, EOS, 0, 0],
        ]);
        assert.deepEqual(enc.attentionMask, [
          [1, 1, 1, 0, 0, 0],
          [1, 1, 1, 1, 0, 0],
        ]);
        // the cat. abc = ▁the ▁cat . ▁a bc </s> (6 ids): cut to 4, the last is still </s>.
        const cut = loaded[kind].encode('the cat. abc', {
          maxLength: 4,
          padding: 'max_length',
          truncation: true,
        });
        assert.deepEqual(cut, { inputIds: [[16, 13, 15, EOS]], attentionMask: [[1, 1, 1, 1]] });
        assert.deepEqual(ids('the cat. abc', { maxLength: 1, truncation: true }), [[EOS]]);
        // Without truncation a longer text stays whole, as transformers leaves it.
        assert.deepEqual(ids('the cat. abc', { maxLength: 4, padding: 'max_length' }), [
          [16, 13, 15, 4, 10, EOS],
        ]);
      });

      it("pads to the longest with 'longest', not at all with false", () => {
        const longest = loaded[kind].encode(['bat', 'the cat. abc'], { padding: 'longest' });
        assert.deepEqual(longest.inputIds, [
          [11, 20, EOS, 0, 0, 0],
          [16, 13, 15, 4, 10, EOS],
        ]);
        assert.deepEqual(longest.attentionMask[0], [1, 1, 1, 0, 0, 0]);
        const ragged = loaded[kind].encode(['bat', 'the cat.']);
        assert.deepEqual(ragged.inputIds, [
          [11, 20, EOS],
          [16, 13, 15, EOS],
        ]);
        assert.throws(() => toModelInputs(ragged), /row 1 has 4 tokens but row 0 has 3/);
        assert.deepEqual(ids('bat', { addSpecialTokens: false }), [[11, 20]]);
      });

      it('gives int64 input_ids and attention_mask tensors for T5EncoderModel', () => {
        const t = toModelInputs(
          loaded[kind].encode(['abc', 'bat'], { maxLength: 5, padding: 'max_length', truncation: true }),
        );
        assert.deepEqual(t.input_ids.shape, [2, 5]);
        assert.equal(t.input_ids.dtype, 'int64');
        assert.deepEqual(Array.from(t.input_ids.data as BigInt64Array, Number), [
          4,
          10,
          EOS,
          0,
          0,
          11,
          20,
          EOS,
          0,
          0,
        ]);
        assert.deepEqual(
          Array.from(t.attention_mask.data as BigInt64Array, Number),
          [1, 1, 1, 0, 0, 1, 1, 1, 0, 0],
        );
      });

      it('agrees with a brute-force enumeration of segmentations on random text', () => {
        const seed = testSeed('t5 tokenizer segmentations on random text');
        const random = seededUniform(seed);
        const alphabet = ['a', 'b', 'c', 't', 'h', 'e', '.', 'x'];
        let checked = 0;
        for (let trial = 0; trial < 200; trial++) {
          const words = Array.from({ length: 1 + Math.floor(random() * 3) }, () =>
            Array.from(
              { length: 1 + Math.floor(random() * 7) },
              () => alphabet[Math.floor(random() * alphabet.length)],
            ).join(''),
          );
          const expected = words.map(bestSegmentation);
          if (expected.some((e) => !e.unique)) continue;
          checked++;
          assert.deepEqual(
            ids(words.join(' ')),
            [[...expected.flatMap((e) => e.ids), EOS]],
            `seed ${seed}, text "${words.join(' ')}"`,
          );
        }
        assert.ok(checked > 150, `only ${checked} texts had a unique best segmentation`);
      });

      it('decodes back to text', () => {
        assert.equal(
          loaded[kind].decode([16, 13, 15, 4, 10, EOS, 0], { skipSpecialTokens: true }),
          'the cat. abc',
        );
        assert.equal(loaded[kind].decode([]), '');
      });

      it('rejects bad options with what was expected', () => {
        const tok = loaded[kind];
        assert.throws(() => tok.encode('abc', { maxLength: 0 }), OptionError);
        assert.throws(() => tok.encode('abc', { padding: 'longer' as 'longest' }), /padding is "longer"/);
        assert.throws(() => tok.encode([3 as unknown as string]), /text 0 is 3; expected a string/);
      });
    });
  }

  it('reads model_max_length and the sentinels of each source', () => {
    assert.equal(loaded.json.modelMaxLength, 512);
    assert.equal(loaded.spiece.modelMaxLength, undefined);
    assert.throws(
      () => loaded.spiece.encode('abc', { padding: 'max_length' }),
      /padding 'max_length' needs maxLength/,
    );
    // 21 pieces, then <extra_id_2> = 21, <extra_id_1> = 22, <extra_id_0> = 23 (T5Tokenizer's order).
    assert.deepEqual(loaded.spiece.encode('<extra_id_0> a<extra_id_2>').inputIds, [[23, 4, 21, EOS]]);
    assert.equal(loaded.spiece.padTokenId, 0);
    assert.equal(loaded.spiece.unkTokenId, UNK);
  });

  it('says what it looked for when a folder has neither tokenizer.json nor spiece.model', async () => {
    const empty = join(root, 'empty');
    await mkdir(join(empty, 'tokenizer'), { recursive: true });
    await writeFile(join(empty, 'tokenizer', 'vocab.txt'), 'a\n');
    await assert.rejects(T5Tokenizer.fromPretrained(empty), (e: unknown) => {
      assert.ok(e instanceof FileFormatError);
      assert.equal(e.code, 'TOKENIZER_MISSING');
      assert.match(e.message, /expected tokenizer\.json or spiece\.model in .*empty or .*empty\/tokenizer/);
      return true;
    });
    await assert.rejects(T5Tokenizer.fromPretrained(join(root, 'nowhere')), /does not exist/);
  });

  it('rejects tokenizer files that are not T5 Unigram tokenizers, naming the file', async () => {
    const bpe = join(root, 'bpe');
    await mkdir(bpe);
    await writeFile(
      join(bpe, 'tokenizer.json'),
      JSON.stringify({ ...tokenizerJson(), model: { type: 'BPE', vocab: {}, merges: [] } }),
    );
    await assert.rejects(
      T5Tokenizer.fromPretrained(bpe),
      /tokenizer\.json: "model\.type" is "BPE"; a T5 tokenizer is a SentencePiece "Unigram" model/,
    );
    const broken = join(root, 'broken');
    await mkdir(broken);
    await writeFile(join(broken, 'spiece.model'), Uint8Array.from([0x0a, 0x20, 0x01]));
    await assert.rejects(
      T5Tokenizer.fromPretrained(broken),
      /spiece\.model is not a SentencePiece model T5Tokenizer can use: field of 32 bytes/,
    );
  });
});
