/**
 * SentencePiece `spiece.model` files (a serialized `sentencepiece.ModelProto`), read without a
 * protobuf library, and turned into the tokenizer.json that transformers' T5 converter builds from
 * them, so both kinds of tokenizer folder run through one Unigram implementation.
 */
import type { TokenizerJson } from './tokenizer-json.js';

/** ModelProto.SentencePiece.Type */
export const PieceType = { NORMAL: 1, UNKNOWN: 2, CONTROL: 3, USER_DEFINED: 4, UNUSED: 5, BYTE: 6 } as const;

export interface SentencePiece {
  piece: string;
  score: number;
  type: number;
}

/** The fields of ModelProto a Unigram T5 tokenizer needs (sentencepiece_model.proto). */
export interface SentencePieceModel {
  pieces: SentencePiece[];
  trainerSpec: {
    /** 1 UNIGRAM, 2 BPE, 3 WORD, 4 CHAR */
    modelType: number;
    unkId: number;
    bosId: number;
    eosId: number;
    padId: number;
    byteFallback: boolean;
    treatWhitespaceAsSuffix: boolean;
  };
  normalizerSpec: {
    name: string;
    precompiledCharsmap: Uint8Array;
    addDummyPrefix: boolean;
    removeExtraWhitespaces: boolean;
    escapeWhitespaces: boolean;
  };
}

/** A malformed protobuf; the caller names the file. */
export class ProtobufError extends Error {
  override readonly name = 'ProtobufError';
}

/** Protobuf wire format: varints, fixed 32/64-bit values and length-delimited fields. */
class ProtoReader {
  private pos: number;

  constructor(
    private readonly bytes: Uint8Array,
    start = 0,
    private readonly end = bytes.length,
  ) {
    this.pos = start;
  }

  get done(): boolean {
    return this.pos >= this.end;
  }

  varint(): bigint {
    let result = 0n;
    for (let shift = 0n; shift < 70n; shift += 7n) {
      if (this.pos >= this.end) throw new ProtobufError(`truncated varint at byte ${this.pos}`);
      const byte = this.bytes[this.pos++];
      result |= BigInt(byte & 0x7f) << shift;
      if ((byte & 0x80) === 0) return result;
    }
    throw new ProtobufError(`varint longer than 10 bytes at byte ${this.pos}`);
  }

  /** An int32 field: negative values are sign-extended to 64 bits on the wire. */
  int32(): number {
    return Number(BigInt.asIntN(32, this.varint()));
  }

  bool(): boolean {
    return this.varint() !== 0n;
  }

  float(): number {
    this.need(4);
    const value = new DataView(this.bytes.buffer, this.bytes.byteOffset + this.pos, 4).getFloat32(0, true);
    this.pos += 4;
    return value;
  }

  /** A length-delimited field's payload, as a reader over it. */
  sub(): ProtoReader {
    const length = Number(this.varint());
    this.need(length);
    const reader = new ProtoReader(this.bytes, this.pos, this.pos + length);
    this.pos += length;
    return reader;
  }

  bytesField(): Uint8Array {
    const r = this.sub();
    return this.bytes.slice(r.pos, r.end);
  }

  string(): string {
    return new TextDecoder('utf-8', { fatal: true }).decode(this.bytesField());
  }

  /** The next field's number and wire type, or undefined at the end. */
  tag(): { field: number; wire: number } | undefined {
    if (this.done) return undefined;
    const key = Number(this.varint());
    return { field: key >>> 3, wire: key & 7 };
  }

  skip(wire: number): void {
    switch (wire) {
      case 0:
        this.varint();
        return;
      case 1:
        this.need(8);
        this.pos += 8;
        return;
      case 2:
        this.sub();
        return;
      case 5:
        this.need(4);
        this.pos += 4;
        return;
      default:
        throw new ProtobufError(`unsupported wire type ${wire} at byte ${this.pos}`);
    }
  }

  private need(n: number): void {
    if (this.pos + n > this.end)
      throw new ProtobufError(`field of ${n} bytes at byte ${this.pos} runs past its message`);
  }
}

/** Parse a serialized ModelProto; proto2 defaults fill absent fields. */
export function parseSentencePieceModel(bytes: Uint8Array): SentencePieceModel {
  const model: SentencePieceModel = {
    pieces: [],
    trainerSpec: {
      modelType: 1,
      unkId: 0,
      bosId: 1,
      eosId: 2,
      padId: -1,
      byteFallback: false,
      treatWhitespaceAsSuffix: false,
    },
    normalizerSpec: {
      name: '',
      precompiledCharsmap: new Uint8Array(0),
      addDummyPrefix: true,
      removeExtraWhitespaces: true,
      escapeWhitespaces: true,
    },
  };
  const r = new ProtoReader(bytes);
  for (let t = r.tag(); t; t = r.tag()) {
    if (t.field === 1 && t.wire === 2) model.pieces.push(parsePiece(r.sub()));
    else if (t.field === 2 && t.wire === 2) parseTrainerSpec(r.sub(), model.trainerSpec);
    else if (t.field === 3 && t.wire === 2) parseNormalizerSpec(r.sub(), model.normalizerSpec);
    else r.skip(t.wire);
  }
  return model;
}

function parsePiece(r: ProtoReader): SentencePiece {
  const piece: SentencePiece = { piece: '', score: 0, type: PieceType.NORMAL };
  for (let t = r.tag(); t; t = r.tag()) {
    if (t.field === 1 && t.wire === 2) piece.piece = r.string();
    else if (t.field === 2 && t.wire === 5) piece.score = r.float();
    else if (t.field === 3 && t.wire === 0) piece.type = r.int32();
    else r.skip(t.wire);
  }
  return piece;
}

function parseTrainerSpec(r: ProtoReader, spec: SentencePieceModel['trainerSpec']): void {
  for (let t = r.tag(); t; t = r.tag()) {
    if (t.wire !== 0) {
      r.skip(t.wire);
      continue;
    }
    switch (t.field) {
      case 3:
        spec.modelType = r.int32();
        break;
      case 24:
        spec.treatWhitespaceAsSuffix = r.bool();
        break;
      case 35:
        spec.byteFallback = r.bool();
        break;
      case 40:
        spec.unkId = r.int32();
        break;
      case 41:
        spec.bosId = r.int32();
        break;
      case 42:
        spec.eosId = r.int32();
        break;
      case 43:
        spec.padId = r.int32();
        break;
      default:
        r.skip(t.wire);
    }
  }
}

function parseNormalizerSpec(r: ProtoReader, spec: SentencePieceModel['normalizerSpec']): void {
  for (let t = r.tag(); t; t = r.tag()) {
    if (t.field === 1 && t.wire === 2) spec.name = r.string();
    else if (t.field === 2 && t.wire === 2) spec.precompiledCharsmap = r.bytesField();
    else if (t.field === 3 && t.wire === 0) spec.addDummyPrefix = r.bool();
    else if (t.field === 4 && t.wire === 0) spec.removeExtraWhitespaces = r.bool();
    else if (t.field === 5 && t.wire === 0) spec.escapeWhitespaces = r.bool();
    else r.skip(t.wire);
  }
}

/**
 * What transformers' `T5Converter` makes of a SentencePiece Unigram model: the pieces with their
 * scores as the Unigram vocabulary, `extraIds` sentinel tokens `<extra_id_{n}>` after them (id
 * vocab + extraIds − 1 − n, as T5Tokenizer numbers them), control and unknown pieces as special
 * added tokens, the precompiled normalizer, whitespace split + Metaspace, and `</s>` appended.
 * Throws a plain Error for models T5 does not use (BPE, byte fallback, suffix whitespace).
 */
export function t5TokenizerJsonFromSentencePiece(model: SentencePieceModel, extraIds: number): TokenizerJson {
  const { trainerSpec: trainer, normalizerSpec: normalizer } = model;
  if (trainer.modelType !== 1) {
    const kind = ['', 'UNIGRAM', 'BPE', 'WORD', 'CHAR'][trainer.modelType] ?? String(trainer.modelType);
    throw new Error(`the model type is ${kind}; T5 tokenizers are UNIGRAM models`);
  }
  if (trainer.byteFallback)
    throw new Error(
      'byte_fallback is set; T5 tokenizers do not use byte pieces and this reader does not support them',
    );
  if (trainer.treatWhitespaceAsSuffix)
    throw new Error('treat_whitespace_as_suffix is set; T5 tokenizers mark word starts');
  const size = model.pieces.length;
  if (trainer.unkId < 0 || trainer.unkId >= size)
    throw new Error(`unk_id ${trainer.unkId} is not a piece id (there are ${size} pieces)`);
  const addedTokens: TokenizerJson['added_tokens'] = [];
  model.pieces.forEach((p, id) => {
    if (p.type === PieceType.CONTROL || p.type === PieceType.UNKNOWN) {
      addedTokens.push({
        id,
        content: p.piece,
        special: true,
        normalized: false,
        lstrip: false,
        rstrip: false,
        single_word: false,
      });
    } else if (p.type === PieceType.USER_DEFINED) {
      addedTokens.push({
        id,
        content: p.piece,
        special: false,
        normalized: false,
        lstrip: false,
        rstrip: false,
        single_word: false,
      });
    }
  });
  const vocab: [string, number][] = model.pieces.map((p) => [p.piece, p.score]);
  for (let n = extraIds - 1; n >= 0; n--) {
    const id = vocab.length;
    vocab.push([`<extra_id_${n}>`, 0]);
    addedTokens.push({
      id,
      content: `<extra_id_${n}>`,
      special: true,
      normalized: false,
      lstrip: false,
      rstrip: false,
      single_word: false,
    });
  }
  const eos = trainer.eosId >= 0 && trainer.eosId < size ? model.pieces[trainer.eosId].piece : undefined;
  const charsmap = normalizer.precompiledCharsmap;
  const replacement = '\u2581';
  return {
    version: '1.0',
    added_tokens: addedTokens,
    normalizer: charsmap.length > 0 ? { type: 'Precompiled', precompiled_charsmap: base64(charsmap) } : null,
    pre_tokenizer: {
      type: 'Sequence',
      pretokenizers: [
        { type: 'WhitespaceSplit' },
        { type: 'Metaspace', replacement, prepend_scheme: normalizer.addDummyPrefix ? 'always' : 'never' },
      ],
    },
    post_processor:
      eos === undefined
        ? null
        : {
            type: 'TemplateProcessing',
            single: [{ Sequence: { id: 'A', type_id: 0 } }, { SpecialToken: { id: eos, type_id: 0 } }],
            pair: [
              { Sequence: { id: 'A', type_id: 0 } },
              { SpecialToken: { id: eos, type_id: 0 } },
              { Sequence: { id: 'B', type_id: 0 } },
              { SpecialToken: { id: eos, type_id: 0 } },
            ],
            special_tokens: { [eos]: { id: eos, ids: [trainer.eosId], tokens: [eos] } },
          },
    decoder: { type: 'Metaspace', replacement, prepend_scheme: 'always' },
    model: { type: 'Unigram', unk_id: trainer.unkId, vocab, byte_fallback: false },
  };
}

/** Base64 without Node's Buffer, so the module also runs in browsers. */
function base64(bytes: Uint8Array): string {
  let binary = '';
  for (let i = 0; i < bytes.length; i += 0x8000)
    binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(binary);
}
