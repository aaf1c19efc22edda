/**
 * T5EncoderModel (src/models/t5-encoder.ts) against transformers' golden outputs (T5 v1.1,
 * gated-gelu) and against an independent float64 loop reference of modeling_t5.py, which is itself
 * checked on the golden case and then covers the original-T5 `relu` layout on fresh random
 * weights.
 */
import assert from 'node:assert/strict';
import { cp, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

import { FileFormatError, RuntimeError, WeightError } from '../../src/errors.js';
import { SafetensorsFile, writeSafetensors } from '../../src/io/safetensors.js';
import type { TensorToWrite } from '../../src/io/safetensors.js';
import { T5EncoderModel, relativePositionBucket } from '../../src/models/t5-encoder.js';
import type { HostTensor } from '../../src/runtime/host-tensor.js';
import { hostTensor } from '../../src/runtime/host-tensor.js';
import { Runtime } from '../../src/runtime/runtime.js';
import { randomArray, readAllTensors } from '../helpers.js';
import { assertClose, assertScaledMaxAbsError } from '../compare.js';
import { describeCheck, GoldenFixture } from '../golden-fixture.js';
import { seededUniform, testSeed } from '../random.js';

const GOLDEN = fileURLToPath(new URL('../golden/text_encoders/t5_encoder_tiny/', import.meta.url));
const runtime = new Runtime({ worker: false, threads: 1 });
after(() => runtime.dispose());

// ------------------------------------------------------------------------------------------------
// A float64 reference written from modeling_t5.py with plain loops.

interface RefConfig {
  dModel: number;
  dKv: number;
  dFf: number;
  numLayers: number;
  numHeads: number;
  numBuckets: number;
  maxDistance: number;
  eps: number;
  gated: boolean;
  act: 'gelu_new' | 'relu';
}

/** T5Attention._relative_position_bucket, bidirectional, in float64. */
function refBucket(relativePosition: number, numBuckets: number, maxDistance: number): number {
  const half = Math.floor(numBuckets / 2);
  let bucket = relativePosition > 0 ? half : 0;
  const n = Math.abs(relativePosition);
  const maxExact = Math.floor(half / 2);
  if (n < maxExact) return bucket + n;
  const large =
    maxExact + Math.trunc((Math.log(n / maxExact) / Math.log(maxDistance / maxExact)) * (half - maxExact));
  bucket += Math.min(large, half - 1);
  return bucket;
}

function refLinear(x: Float64Array, rows: number, w: Float64Array, inF: number, outF: number): Float64Array {
  const y = new Float64Array(rows * outF);
  for (let r = 0; r < rows; r++) {
    for (let o = 0; o < outF; o++) {
      let s = 0;
      for (let i = 0; i < inF; i++) s += x[r * inF + i] * w[o * inF + i];
      y[r * outF + o] = s;
    }
  }
  return y;
}

function refRmsNorm(x: Float64Array, rows: number, dim: number, w: Float64Array, eps: number): Float64Array {
  const y = new Float64Array(x.length);
  for (let r = 0; r < rows; r++) {
    let ss = 0;
    for (let i = 0; i < dim; i++) ss += x[r * dim + i] ** 2;
    const scale = 1 / Math.sqrt(ss / dim + eps);
    for (let i = 0; i < dim; i++) y[r * dim + i] = w[i] * x[r * dim + i] * scale;
  }
  return y;
}

function refAct(v: number, act: RefConfig['act']): number {
  if (act === 'relu') return Math.max(v, 0);
  return 0.5 * v * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (v + 0.044715 * v ** 3)));
}

/** T5EncoderModel.forward in float64: returns transformers' hidden_states tuple (last = output). */
function t5Reference(
  c: RefConfig,
  w: (name: string) => Float64Array,
  embedName: string,
  ids: number[][],
  mask: number[][] | undefined,
): Float64Array[] {
  const batch = ids.length;
  const seq = ids[0].length;
  const d = c.dModel;
  const inner = c.numHeads * c.dKv;
  const table = w(embedName);
  let x: Float64Array = new Float64Array(batch * seq * d);
  ids.forEach((row, b) =>
    row.forEach((id, s) => x.set(table.subarray(id * d, (id + 1) * d), (b * seq + s) * d)),
  );
  const states: Float64Array[] = [x];
  const relBias = w('encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight');
  for (let l = 0; l < c.numLayers; l++) {
    const p = `encoder.block.${l}.layer.`;
    const h = refRmsNorm(x, batch * seq, d, w(`${p}0.layer_norm.weight`), c.eps);
    const q = refLinear(h, batch * seq, w(`${p}0.SelfAttention.q.weight`), d, inner);
    const k = refLinear(h, batch * seq, w(`${p}0.SelfAttention.k.weight`), d, inner);
    const v = refLinear(h, batch * seq, w(`${p}0.SelfAttention.v.weight`), d, inner);
    const ctx = new Float64Array(batch * seq * inner);
    for (let b = 0; b < batch; b++) {
      for (let head = 0; head < c.numHeads; head++) {
        for (let i = 0; i < seq; i++) {
          const scores = new Float64Array(seq);
          for (let j = 0; j < seq; j++) {
            let s = 0;
            for (let e = 0; e < c.dKv; e++)
              s += q[(b * seq + i) * inner + head * c.dKv + e] * k[(b * seq + j) * inner + head * c.dKv + e];
            s += relBias[refBucket(j - i, c.numBuckets, c.maxDistance) * c.numHeads + head];
            if (mask) s += (1 - mask[b][j]) * -3.4028234663852886e38;
            scores[j] = s;
          }
          const top = Math.max(...scores);
          const e = scores.map((s) => Math.exp(s - top));
          const total = e.reduce((a, b2) => a + b2, 0);
          for (let j = 0; j < seq; j++) {
            for (let t = 0; t < c.dKv; t++) {
              ctx[(b * seq + i) * inner + head * c.dKv + t] +=
                (e[j] / total) * v[(b * seq + j) * inner + head * c.dKv + t];
            }
          }
        }
      }
    }
    const attnOut = refLinear(ctx, batch * seq, w(`${p}0.SelfAttention.o.weight`), inner, d);
    x = x.map((val, i) => val + attnOut[i]);
    const h2 = refRmsNorm(x, batch * seq, d, w(`${p}1.layer_norm.weight`), c.eps);
    let ff: Float64Array;
    if (c.gated) {
      const a = refLinear(h2, batch * seq, w(`${p}1.DenseReluDense.wi_0.weight`), d, c.dFf);
      const g = refLinear(h2, batch * seq, w(`${p}1.DenseReluDense.wi_1.weight`), d, c.dFf);
      ff = a.map((val, i) => refAct(val, c.act) * g[i]);
    } else {
      ff = refLinear(h2, batch * seq, w(`${p}1.DenseReluDense.wi.weight`), d, c.dFf).map((val) =>
        refAct(val, c.act),
      );
    }
    const ffOut = refLinear(ff, batch * seq, w(`${p}1.DenseReluDense.wo.weight`), c.dFf, d);
    x = x.map((val, i) => val + ffOut[i]);
    if (l < c.numLayers - 1) states.push(x);
  }
  states.push(refRmsNorm(x, batch * seq, d, w('encoder.final_layer_norm.weight'), c.eps));
  return states;
}

async function readWeights(path: string): Promise<Map<string, Float64Array>> {
  const file = await SafetensorsFile.open(path);
  const out = new Map<string, Float64Array>();
  for (const name of file.names()) out.set(name, Float64Array.from(await file.readFloat32(name)));
  await file.close();
  return out;
}

function rows(t: HostTensor): number[][] {
  const [b, s] = t.shape;
  return Array.from({ length: b }, (_, i) =>
    Array.from(t.data.subarray(i * s, (i + 1) * s) as ArrayLike<number | bigint>, (v) => Number(v)),
  );
}

// ------------------------------------------------------------------------------------------------

describe('T5EncoderModel vs transformers golden (t5_encoder_tiny, gated-gelu, masked)', () => {
  let model: T5EncoderModel;
  let inputs: Record<string, HostTensor>;
  let fixture: GoldenFixture;
  before(async () => {
    model = await T5EncoderModel.fromPretrained(join(GOLDEN, 'model'), { runtime });
    inputs = await readAllTensors(join(GOLDEN, 'inputs.safetensors'));
    fixture = await GoldenFixture.load(GOLDEN);
  });
  after(() => model.close());

  it('last_hidden_state matches within 10× torch’s fp32 noise, against fp32 and fp64', async (t) => {
    const meta = JSON.parse(await readFile(join(GOLDEN, 'meta.json'), 'utf8')) as { model_class: string };
    assert.equal(meta.model_class, model.className);
    const out = await model.forward(inputs);
    assert.deepEqual(out.last_hidden_state.shape, [2, 12, 32]);
    // torch's fp32 noise 9.0e-7; measured 1.4e-6 against fp32, 1.1e-6 against fp64.
    const check = fixture.check('last_hidden_state', out.last_hidden_state.data as Float32Array);
    t.diagnostic(describeCheck(check));
  });

  it('output_hidden_states gives transformers’ tuple: embeddings, block inputs, final norm', async () => {
    const out = await model.forward(inputs, { kwargs: { output_hidden_states: true } });
    assert.deepEqual(Object.keys(out).sort(), [
      'hidden_states.0',
      'hidden_states.1',
      'hidden_states.2',
      'last_hidden_state',
    ]);
    assert.deepEqual(out['hidden_states.2'].data, out.last_hidden_state.data);
    // hidden_states.0 is the embedding lookup, read straight from the checkpoint.
    const shared = (await readWeights(join(GOLDEN, 'model', 'model.safetensors'))).get(
      'shared.weight',
    ) as Float64Array;
    const ids = inputs.input_ids.data as BigInt64Array;
    const expected = Float32Array.from(
      { length: ids.length * 32 },
      (_, i) => shared[Number(ids[Math.floor(i / 32)]) * 32 + (i % 32)],
    );
    assert.deepEqual(out['hidden_states.0'].data, expected);
  });

  it('the float64 reference of this test reproduces the golden outputs (it is then trusted below)', async (t) => {
    const weights = await readWeights(join(GOLDEN, 'model', 'model.safetensors'));
    const config = {
      dModel: 32,
      dKv: 8,
      dFf: 48,
      numLayers: 2,
      numHeads: 4,
      numBuckets: 8,
      maxDistance: 20,
      eps: 1e-6,
      gated: true,
      act: 'gelu_new',
    } as const;
    const states = t5Reference(
      config,
      (n) => weights.get(n) as Float64Array,
      'shared.weight',
      rows(inputs.input_ids),
      rows(inputs.attention_mask),
    );
    // Measured 5.0e-7 against fp64, not ~1e-15 as for the VAE: transformers' T5LayerNorm computes the
    // variance in float32 even in a float64 run (hidden_states.to(torch.float32)), so its fp64 outputs
    // carry float32 rounding; the reference is within 10× torch's fp32 noise of both runs.
    const referenceCheck = fixture.check('last_hidden_state', states[2], {
      what: 'reference last_hidden_state',
    });
    t.diagnostic(describeCheck(referenceCheck));
    const out = await model.forward(inputs, { kwargs: { output_hidden_states: true } });
    assertClose(out['hidden_states.1'].data as Float32Array, states[1], {
      atol: 1e-5,
      rtol: 1e-5,
      what: 'hidden_states.1',
    });
  });

  it('without attention_mask equals an all-ones mask (transformers fills it with ones)', async () => {
    const ids = inputs.input_ids;
    const ones = hostTensor('int64', ids.shape, new BigInt64Array(ids.data.length).fill(1n));
    const unmasked = await model.forward({ input_ids: ids });
    const masked = await model.forward({ input_ids: ids, attention_mask: ones });
    assertClose(
      unmasked.last_hidden_state.data as Float32Array,
      masked.last_hidden_state.data as Float32Array,
      { atol: 1e-6, rtol: 0 },
    );
    // int32 ids and a bool mask build the same computation.
    const ids32 = hostTensor('int32', ids.shape, Int32Array.from(ids.data as BigInt64Array, Number));
    const boolMask = hostTensor(
      'bool',
      ids.shape,
      Uint8Array.from(inputs.attention_mask.data as BigInt64Array, Number),
    );
    const other = await model.forward({ input_ids: ids32, attention_mask: boolMask });
    const last = other.last_hidden_state.data as Float32Array;
    fixture.check('last_hidden_state', last, { what: 'int32 ids + bool mask' });
  });

  it('rejects token ids outside the vocabulary, naming the position and the range', async () => {
    const ids = hostTensor('int64', [1, 3], [5, 100, 7]);
    await assert.rejects(model.forward({ input_ids: ids }), (e: unknown) => {
      assert.ok(e instanceof RuntimeError);
      assert.match(e.message, /input_ids\[0, 1\] is 100, outside the vocabulary \[0, 100\)/);
      return true;
    });
    await assert.rejects(
      model.forward({ input_ids: hostTensor('int64', [1, 2], [-1, 3]) }),
      /input_ids\[0, 0\] is -1/,
    );
  });

  it('rejects unknown inputs and kwargs, and a mask of another shape', async () => {
    const ids = inputs.input_ids;
    await assert.rejects(
      model.forward({ input_ids: ids, inputs_embeds: ids }),
      /unknown input "inputs_embeds"/,
    );
    await assert.rejects(
      model.forward({ input_ids: ids }, { kwargs: { output_attentions: true } }),
      /unknown kwarg "output_attentions"/,
    );
    const short = hostTensor('int64', [2, 5]);
    await assert.rejects(
      model.forward({ input_ids: ids, attention_mask: short }),
      /T5EncoderModel\.forward \(.*\): input "attention_mask": expected int64, int32, float32 or bool \[B, S\] with S = 12 \(from input "input_ids"\), got int64 \[2, 5\]/,
    );
  });
});

// ------------------------------------------------------------------------------------------------

/**
 * Against the float64 reference, relative to max(1, max|reference|): measured ≤ 2.4e-6 over 8 seeds,
 * about torch's own fp32 noise on the golden case (3.5e-7 of max|x|) grown over three layers; allowed 2e-5.
 */
const REFERENCE_TOLERANCE = 2e-5;

describe('T5EncoderModel, original T5 layout (relu, wi/wo) vs the float64 reference', () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'velodiff-t5-relu-'));
  });
  after(() => rm(dir, { recursive: true, force: true }));

  it('matches on random weights, with inner_dim ≠ d_model, log-spaced and clamped buckets, a mask', async (t) => {
    const seed = testSeed('T5 relu layout on random weights');
    const random = seededUniform(seed);
    const c = {
      dModel: 16,
      dKv: 6,
      dFf: 20,
      numLayers: 3,
      numHeads: 2,
      numBuckets: 16,
      maxDistance: 12,
      eps: 1e-6,
      gated: false,
      act: 'relu',
    } as const;
    const vocab = 50;
    const inner = c.numHeads * c.dKv;
    const shapes: Record<string, number[]> = {
      // Only the tied copy's name: T5EncoderModel must find the embedding under either.
      'encoder.embed_tokens.weight': [vocab, c.dModel],
      'encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight': [c.numBuckets, c.numHeads],
      'encoder.final_layer_norm.weight': [c.dModel],
    };
    for (let l = 0; l < c.numLayers; l++) {
      const p = `encoder.block.${l}.layer.`;
      for (const n of ['q', 'k', 'v']) shapes[`${p}0.SelfAttention.${n}.weight`] = [inner, c.dModel];
      shapes[`${p}0.SelfAttention.o.weight`] = [c.dModel, inner];
      shapes[`${p}0.layer_norm.weight`] = [c.dModel];
      shapes[`${p}1.DenseReluDense.wi.weight`] = [c.dFf, c.dModel];
      shapes[`${p}1.DenseReluDense.wo.weight`] = [c.dModel, c.dFf];
      shapes[`${p}1.layer_norm.weight`] = [c.dModel];
    }
    const tensors: Record<string, TensorToWrite> = {};
    const weights = new Map<string, Float64Array>();
    for (const [name, shape] of Object.entries(shapes)) {
      const data = randomArray(
        shape.reduce((a, b) => a * b, 1),
        random,
        -0.6,
        0.6,
      );
      if (name.endsWith('layer_norm.weight')) data.forEach((v, i) => (data[i] = 1 + v));
      tensors[name] = { dtype: 'F32', shape, data };
      weights.set(name, Float64Array.from(data));
    }
    await writeSafetensors(join(dir, 'model.safetensors'), tensors);
    await writeFile(
      join(dir, 'config.json'),
      JSON.stringify({
        architectures: ['T5EncoderModel'],
        model_type: 't5',
        d_model: c.dModel,
        d_kv: c.dKv,
        d_ff: c.dFf,
        num_layers: c.numLayers,
        num_heads: c.numHeads,
        relative_attention_num_buckets: c.numBuckets,
        relative_attention_max_distance: c.maxDistance,
        feed_forward_proj: 'relu',
        vocab_size: vocab,
      }),
    );
    const model = await T5EncoderModel.fromPretrained(dir, { runtime });
    assert.equal(model.config.isGatedAct, false);
    assert.equal(model.config.denseActFn, 'relu');
    const seq = 23;
    const ids = [0, 1].map(() => Array.from({ length: seq }, () => Math.floor(random() * vocab)));
    const mask = [seq, 9].map((len) => Array.from({ length: seq }, (_, i) => (i < len ? 1 : 0)));
    const out = await model.forward(
      {
        input_ids: hostTensor('int64', [2, seq], ids.flat()),
        attention_mask: hostTensor('int64', [2, seq], mask.flat()),
      },
      { kwargs: { output_hidden_states: true } },
    );
    const states = t5Reference(
      c,
      (n) => weights.get(n) as Float64Array,
      'encoder.embed_tokens.weight',
      ids,
      mask,
    );
    assert.equal(states.length, c.numLayers + 1);
    states.forEach((expected, i) => {
      const got = out[`hidden_states.${i}`].data as Float32Array;
      const { maxAbsError, scale } = assertScaledMaxAbsError(
        got,
        expected,
        REFERENCE_TOLERANCE,
        `hidden_states.${i} (seed ${seed})`,
      );
      t.diagnostic(
        `hidden_states.${i}: max |ours − reference| ${(maxAbsError / scale).toExponential(2)}·scale`,
      );
    });
    const last = out.last_hidden_state.data as Float32Array;
    assertScaledMaxAbsError(last, states[c.numLayers], REFERENCE_TOLERANCE, 'last_hidden_state');
    await model.close();
  });
});

// ------------------------------------------------------------------------------------------------

describe('relativePositionBucket', () => {
  const t5 = { bidirectional: true, numBuckets: 32, maxDistance: 128 };
  it('gives exact buckets below max_exact, keys after the query in the upper half', () => {
    // num_buckets 32 bidirectional: 16 per direction, distances 0..7 exact.
    assert.deepEqual(
      [0, -1, -7, 1, 7].map((r) => relativePositionBucket(r, t5)),
      [0, 1, 7, 17, 23],
    );
  });

  it('gives log-spaced buckets, worked by hand: 8 + trunc(log(n/8) / log(16) · 8)', () => {
    // n=8: log 1 = 0 → 8. n=11: 0.3185/2.7726·8 = 0.919 → 8. n=12: 0.4055/2.7726·8 = 1.170 → 9.
    // n=15: 1.814 → 9. n=45: 1.7272/2.7726·8 = 4.984 → 12. n=90: 2.4204/2.7726·8 = 6.984 → 14.
    assert.deepEqual(
      [-8, -11, -12, -15, -45, -90].map((r) => relativePositionBucket(r, t5)),
      [8, 8, 9, 9, 12, 14],
    );
    assert.deepEqual(
      [8, 12, 45].map((r) => relativePositionBucket(r, t5)),
      [24, 25, 28],
    );
  });

  it('lands on the whole number where log(n/max_exact)/log(max_distance/max_exact)·k is one', () => {
    // n = 16, 32, 64 with the T5 config: exactly 2, 4, 6.
    assert.deepEqual(
      [-16, -32, -64].map((r) => relativePositionBucket(r, t5)),
      [10, 12, 14],
    );
    // 8 buckets, max_distance 18: n=6 gives 2 + log 3 / log 9 · 2 = 2 + 1 = 3 exactly; 32 buckets,
    // max_distance 72: n=24 gives 8 + log 3 / log 9 · 8 = 12. torch's float32 quotient is exact
    // here, while a float64 one falls just below the whole number and truncates one bucket low.
    assert.equal(relativePositionBucket(-6, { bidirectional: true, numBuckets: 8, maxDistance: 18 }), 3);
    assert.equal(relativePositionBucket(6, { bidirectional: true, numBuckets: 8, maxDistance: 18 }), 7);
    assert.equal(relativePositionBucket(-24, { bidirectional: true, numBuckets: 32, maxDistance: 72 }), 12);
    assert.equal(refBucket(-6, 8, 18), 2, 'the float64 formula is one low here, so the case discriminates');
  });

  it('clamps at max_distance and beyond to the last bucket of each half', () => {
    assert.deepEqual(
      [-127, -128, -5000, 128, 5000].map((r) => relativePositionBucket(r, t5)),
      [15, 15, 15, 31, 31],
    );
  });

  it('agrees with the float64 formula away from those boundaries (golden config: 8 buckets, distance 20)', () => {
    for (let r = -40; r <= 40; r++) {
      assert.equal(
        relativePositionBucket(r, { bidirectional: true, numBuckets: 8, maxDistance: 20 }),
        refBucket(r, 8, 20),
        `r=${r}`,
      );
    }
  });
});

// ------------------------------------------------------------------------------------------------

describe('T5EncoderModel.fromPretrained errors', () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'velodiff-t5-err-'));
  });
  after(() => rm(dir, { recursive: true, force: true }));

  async function folderWith(name: string, config: Record<string, unknown>, drop?: string): Promise<string> {
    const target = join(dir, name);
    await cp(join(GOLDEN, 'model'), target, { recursive: true });
    const original = JSON.parse(await readFile(join(target, 'config.json'), 'utf8')) as Record<
      string,
      unknown
    >;
    await writeFile(join(target, 'config.json'), JSON.stringify({ ...original, ...config }));
    if (drop) {
      const file = await SafetensorsFile.open(join(GOLDEN, 'model', 'model.safetensors'));
      const tensors: Record<string, TensorToWrite> = {};
      for (const n of file.names()) {
        if (n !== drop)
          tensors[n] = { dtype: 'F32', shape: file.info(n).shape, data: await file.readFloat32(n) };
      }
      await file.close();
      await writeSafetensors(join(target, 'model.safetensors'), tensors);
    }
    return target;
  }

  it('a missing tensor is a WeightError at load naming the tensor and the file', async () => {
    const missing = 'encoder.block.1.layer.1.DenseReluDense.wi_1.weight';
    const target = await folderWith('missing', {}, missing);
    await assert.rejects(T5EncoderModel.fromPretrained(target, { runtime }), (e: unknown) => {
      assert.ok(e instanceof WeightError, String(e));
      assert.match(e.message, new RegExp(missing.replaceAll('.', '\\.')));
      assert.ok(e.message.includes(join(target, 'model.safetensors')), e.message);
      return true;
    });
  });

  it('a missing embedding is reported at load, naming both tied names', async () => {
    const target = await folderWith('no-embedding', {}, 'shared.weight');
    await assert.rejects(T5EncoderModel.fromPretrained(target, { runtime }), (e: unknown) => {
      assert.ok(e instanceof WeightError);
      assert.match(e.message, /'shared\.weight' \(or its tied copy 'encoder\.embed_tokens\.weight'\)/);
      assert.ok(e.message.includes('model.safetensors'));
      return true;
    });
  });

  it('config errors name the key and the file', async () => {
    const cases: [string, Record<string, unknown>, RegExp][] = [
      [
        'clip',
        { model_type: 'clip_text_model', architectures: ['CLIPTextModel'] },
        /"model_type" is "clip_text_model"; expected "t5"/,
      ],
      ['umt5', { model_type: 'umt5' }, /UMT5 gives every layer its own relative attention bias/],
      [
        'arch',
        { architectures: ['BertModel'] },
        /"architectures" is \["BertModel"\]; expected one of T5EncoderModel/,
      ],
      [
        'ffproj',
        { feed_forward_proj: 'gated-gelu-x', dense_act_fn: undefined },
        /"feed_forward_proj" is "gated-gelu-x"/,
      ],
      ['act', { dense_act_fn: 'mish' }, /"dense_act_fn" gives the activation "mish"/],
      ['heads', { num_heads: 0 }, /"num_heads" is 0; expected an integer ≥ 1/],
      [
        'distance',
        { relative_attention_max_distance: 2 },
        /"relative_attention_max_distance" is 2; it must exceed 2/,
      ],
    ];
    for (const [name, patch, message] of cases) {
      const target = await folderWith(name, patch);
      await assert.rejects(T5EncoderModel.fromPretrained(target, { runtime }), (e: unknown) => {
        assert.ok(e instanceof FileFormatError, `${name}: ${String(e)}`);
        assert.match(e.message, message);
        assert.ok(e.message.includes(join(target, 'config.json')), e.message);
        return true;
      });
    }
  });
});
