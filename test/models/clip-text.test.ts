/**
 * CLIPTextModel and CLIPTextModelWithProjection (src/models/clip-text.ts) against transformers' golden
 * outputs (SD 1.x layout with quick_gelu; SDXL text_encoder_2 layout with gelu and text_projection),
 * every output including each hidden_states.N, and against an independent float64 loop reference of
 * modeling_clip.py, which is itself checked on the golden cases and then covers what the golden cases
 * do not record: a padding attention_mask combined with the causal mask, and both pooling rules.
 */
import assert from 'node:assert/strict';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

import { FileFormatError, OptionError, RuntimeError, WeightError } from '../../src/errors.js';
import { SafetensorsFile } from '../../src/io/safetensors.js';
import { CLIPTextModel, CLIPTextModelWithProjection } from '../../src/models/clip-text.js';
import { loadModel } from '../../src/models/index.js';
import type { HostTensor } from '../../src/runtime/host-tensor.js';
import { hostTensor } from '../../src/runtime/host-tensor.js';
import { Runtime } from '../../src/runtime/runtime.js';
import type { VelodiffWarning } from '../../src/warnings.js';
import { captureCli } from '../cli/capture.js';
import { assertExactlyEqual, assertScaledMaxAbsError } from '../compare.js';
import { copyModel, editWeights, patchConfig, zeros } from '../fixtures/edit-checkpoint.js';
import { describeCheck, GoldenFixture } from '../golden-fixture.js';
import { readAllTensors } from '../helpers.js';
import { attentionRef } from '../reference/attention.js';
import type { RefTensor } from '../reference/math.js';
import { geluExact, layerNorm, linear, sigmoid } from '../reference/math.js';
import { seededUniform, testSeed } from '../random.js';

const GOLDEN = fileURLToPath(new URL('../golden/text_encoders/', import.meta.url));
const runtime = new Runtime({ worker: false, threads: 1 });
after(() => runtime.dispose());

/** torch.finfo(torch.float32).min, written out here rather than imported from the code under test. */
const F32_MIN = -3.4028234663852886e38;

// ------------------------------------------------------------------------------------------------
// A float64 reference written from modeling_clip.py (transformers 4.45) with plain loops.

interface RefConfig {
  hidden: number;
  heads: number;
  layers: number;
  eps: number;
  act: 'quick_gelu' | 'gelu';
  eosTokenId: number;
  withProjection: boolean;
}

interface RefOutputs {
  hiddenStates: Float64Array[];
  lastHiddenState: Float64Array;
  pooled: Float64Array;
  textEmbeds?: Float64Array;
}

/** The position CLIPTextTransformer pools at: argmax(ids) for eos_token_id 2, else the first eos (0 if none). */
function poolPosition(row: readonly number[], eosTokenId: number): number {
  if (eosTokenId === 2) return row.indexOf(Math.max(...row));
  return Math.max(0, row.indexOf(eosTokenId));
}

function clipReference(
  c: RefConfig,
  w: (name: string) => RefTensor,
  ids: number[][],
  mask?: number[][],
): RefOutputs {
  const batch = ids.length;
  const seq = ids[0].length;
  const d = c.hidden;
  const p = 'text_model.';
  const tokens = w(`${p}embeddings.token_embedding.weight`).data;
  const positions = w(`${p}embeddings.position_embedding.weight`).data;
  const embedded = new Float64Array(batch * seq * d);
  for (let b = 0; b < batch; b++) {
    for (let s = 0; s < seq; s++) {
      for (let e = 0; e < d; e++) {
        embedded[(b * seq + s) * d + e] = tokens[ids[b][s] * d + e] + positions[s * d + e];
      }
    }
  }
  // _create_4d_causal_attention_mask + _prepare_4d_attention_mask, added as transformers adds them.
  const additive = new Float64Array(batch * seq * seq);
  for (let b = 0; b < batch; b++) {
    for (let i = 0; i < seq; i++) {
      for (let j = 0; j < seq; j++) {
        let m = j > i ? F32_MIN : 0;
        if (mask && mask[b][j] !== 1) m += F32_MIN;
        additive[(b * seq + i) * seq + j] = m;
      }
    }
  }
  const act = (v: number): number => (c.act === 'gelu' ? geluExact(v) : v * sigmoid(1.702 * v));
  const add = (a: RefTensor, b: RefTensor): RefTensor => ({
    shape: a.shape,
    data: a.data.map((v, i) => v + b.data[i]),
  });
  let x: RefTensor = { shape: [batch, seq, d], data: embedded };
  const hiddenStates = [x.data];
  for (let l = 0; l < c.layers; l++) {
    const layer = `${p}encoder.layers.${l}.`;
    const lin = (name: string, input: RefTensor): RefTensor =>
      linear(input, w(`${layer}${name}.weight`), w(`${layer}${name}.bias`));
    const h = layerNorm(x, -1, w(`${layer}layer_norm1.weight`), w(`${layer}layer_norm1.bias`), c.eps);
    const context = attentionRef(
      lin('self_attn.q_proj', h),
      lin('self_attn.k_proj', h),
      lin('self_attn.v_proj', h),
      c.heads,
      {
        mask: { shape: [batch, 1, seq, seq], data: additive, kind: 'additive' },
      },
    );
    x = add(x, lin('self_attn.out_proj', context));
    const h2 = layerNorm(x, -1, w(`${layer}layer_norm2.weight`), w(`${layer}layer_norm2.bias`), c.eps);
    const inner = lin('mlp.fc1', h2);
    x = add(x, lin('mlp.fc2', { shape: inner.shape, data: inner.data.map(act) }));
    hiddenStates.push(x.data);
  }
  const last = layerNorm(x, -1, w(`${p}final_layer_norm.weight`), w(`${p}final_layer_norm.bias`), c.eps);
  const pooled = new Float64Array(batch * d);
  ids.forEach((row, b) => {
    const at = poolPosition(row, c.eosTokenId);
    pooled.set(last.data.subarray((b * seq + at) * d, (b * seq + at + 1) * d), b * d);
  });
  const textEmbeds = c.withProjection
    ? linear({ shape: [batch, d], data: pooled }, w('text_projection.weight')).data
    : undefined;
  return { hiddenStates, lastHiddenState: last.data, pooled, textEmbeds };
}

async function readWeights(path: string): Promise<(name: string) => RefTensor> {
  const file = await SafetensorsFile.open(path);
  const out = new Map<string, RefTensor>();
  for (const name of file.names()) {
    out.set(name, { shape: file.info(name).shape, data: Float64Array.from(await file.readFloat32(name)) });
  }
  await file.close();
  return (name) => {
    const t = out.get(name);
    assert.ok(t, `reference: no tensor ${name}`);
    return t;
  };
}

function rows(t: HostTensor): number[][] {
  const [b, s] = t.shape;
  return Array.from({ length: b }, (_, i) =>
    Array.from(t.data.subarray(i * s, (i + 1) * s) as ArrayLike<number | bigint>, (v) => Number(v)),
  );
}

const ids64 = (r: number[][]): HostTensor =>
  hostTensor(
    'int64',
    [r.length, r[0].length],
    BigInt64Array.from(r.flat(), (v) => BigInt(v)),
  );

/** The outputs a forward returns, as the reference names them. */
function referenceOutputs(ref: RefOutputs, withProjection: boolean): Record<string, Float64Array> {
  const out: Record<string, Float64Array> = { last_hidden_state: ref.lastHiddenState };
  if (withProjection) out.text_embeds = ref.textEmbeds as Float64Array;
  else out.pooler_output = ref.pooled;
  ref.hiddenStates.forEach((h, i) => (out[`hidden_states.${i}`] = h));
  return out;
}

// ------------------------------------------------------------------------------------------------

const SUBJECTS = [
  {
    golden: 'clip_text_tiny',
    load: (dir: string) => CLIPTextModel.fromPretrained(dir, { runtime }),
    config: {
      hidden: 32,
      heads: 4,
      layers: 3,
      eps: 1e-5,
      act: 'quick_gelu',
      eosTokenId: 999,
      withProjection: false,
    },
  },
  {
    golden: 'clip_text_with_projection_tiny',
    load: (dir: string) => CLIPTextModelWithProjection.fromPretrained(dir, { runtime }),
    config: {
      hidden: 32,
      heads: 4,
      layers: 3,
      eps: 1e-5,
      act: 'gelu',
      eosTokenId: 999,
      withProjection: true,
    },
  },
] as const;

/**
 * Against the float64 reference, relative to max(1, max|reference|): measured ≤ 4.7e-7 over the golden
 * inputs with 36 masks (fixed and fresh random), about torch's own fp32 noise on the golden cases
 * (3e-7 of max|x|); allowed 1e-5.
 */
const REFERENCE_TOLERANCE = 1e-5;

for (const subject of SUBJECTS) {
  const dir = join(GOLDEN, subject.golden);
  const outputName = subject.config.withProjection ? 'text_embeds' : 'pooler_output';

  describe(`${subject.golden}: ${subject.config.withProjection ? 'CLIPTextModelWithProjection' : 'CLIPTextModel'} vs transformers golden`, () => {
    let model: CLIPTextModel | CLIPTextModelWithProjection;
    let inputs: Record<string, HostTensor>;
    let fixture: GoldenFixture;
    let weights: (name: string) => RefTensor;
    before(async () => {
      model = await subject.load(join(dir, 'model'));
      inputs = await readAllTensors(join(dir, 'inputs.safetensors'));
      fixture = await GoldenFixture.load(dir);
      weights = await readWeights(join(dir, 'model', 'model.safetensors'));
    });
    after(() => model.close());

    it('every output (last_hidden_state, the pooled output, each hidden_states.N) within 10× torch’s fp32 noise', async (t) => {
      assert.equal((fixture.meta as { model_class?: string }).model_class, model.className);
      const out = await model.forward(inputs, { kwargs: { output_hidden_states: true } });
      assert.deepEqual(Object.keys(out).sort(), fixture.outputs());
      for (const name of fixture.outputs()) {
        assert.deepEqual(out[name].shape, fixture.shape(name), name);
        t.diagnostic(describeCheck(fixture.check(name, out[name].data as Float32Array)));
      }
    });

    it(`without output_hidden_states gives last_hidden_state and ${outputName} only`, async () => {
      const out = await model.forward(inputs);
      assert.deepEqual(Object.keys(out).sort(), ['last_hidden_state', outputName].sort());
      fixture.check(outputName, out[outputName].data as Float32Array);
    });

    it('the float64 reference of this test reproduces every golden output (it is then trusted below)', (t) => {
      const ref = referenceOutputs(
        clipReference(subject.config, weights, rows(inputs.input_ids)),
        subject.config.withProjection,
      );
      assert.deepEqual(Object.keys(ref).sort(), fixture.outputs());
      for (const name of fixture.outputs()) {
        t.diagnostic(describeCheck(fixture.check(name, ref[name], { what: `reference ${name}` })));
      }
    });

    it('attention_mask: padding (left, right, holes) combined with the causal mask, as the reference', async (t) => {
      const random = seededUniform(testSeed(`${subject.golden} attention_mask`));
      const ids = rows(inputs.input_ids);
      const seq = ids[0].length;
      const masks: number[][][] = [
        // right padding after the text (diffusers' pipelines do not pass it, but transformers takes it)
        ids.map((row) => row.map((_, s) => (s <= row.indexOf(999) ? 1 : 0))),
        // left padding: the first rows' queries see only masked keys and spread evenly over them
        ids.map(() => Array.from({ length: seq }, (_, s) => (s < 4 ? 0 : 1))),
        // random holes
        ids.map(() => Array.from({ length: seq }, () => (random() < 0.3 ? 0 : 1))),
      ];
      for (const [m, mask] of masks.entries()) {
        const out = await model.forward(
          { input_ids: inputs.input_ids, attention_mask: ids64(mask) },
          { kwargs: { output_hidden_states: true } },
        );
        const ref = referenceOutputs(
          clipReference(subject.config, weights, ids, mask),
          subject.config.withProjection,
        );
        let worst = 0;
        for (const [name, expected] of Object.entries(ref)) {
          const c = assertScaledMaxAbsError(
            out[name].data as Float32Array,
            expected,
            REFERENCE_TOLERANCE,
            `mask ${m} ${name}`,
          );
          worst = Math.max(worst, c.maxAbsError / c.scale);
        }
        t.diagnostic(`mask ${m}: max |ours − reference| / max(1, |reference|) = ${worst.toExponential(2)}`);
      }
      // The mask changes the outputs: the test would notice a model that ignored it.
      const unmasked = await model.forward({ input_ids: inputs.input_ids });
      const masked = await model.forward({ input_ids: inputs.input_ids, attention_mask: ids64(masks[1]) });
      assert.notDeepEqual(masked.last_hidden_state.data, unmasked.last_hidden_state.data);
    });

    it('an all-ones mask equals no mask; int32 ids and a bool or float mask build the same computation', async () => {
      const ids = inputs.input_ids;
      const ones = hostTensor('int64', ids.shape, new BigInt64Array(ids.data.length).fill(1n));
      const unmasked = await model.forward({ input_ids: ids });
      const masked = await model.forward({ input_ids: ids, attention_mask: ones });
      assertExactlyEqual(masked[outputName].data as Float32Array, unmasked[outputName].data as Float32Array);
      const mask = rows(ids).map((row) => row.map((_, s) => (s < 10 ? 1 : 0)));
      const expected = await model.forward({ input_ids: ids, attention_mask: ids64(mask) });
      const ids32 = hostTensor('int32', ids.shape, Int32Array.from(ids.data as BigInt64Array, Number));
      for (const other of [
        hostTensor('bool', ids.shape, Uint8Array.from(mask.flat())),
        hostTensor('float32', ids.shape, Float32Array.from(mask.flat())),
      ]) {
        const out = await model.forward({ input_ids: ids32, attention_mask: other });
        assertExactlyEqual(
          out.last_hidden_state.data as Float32Array,
          expected.last_hidden_state.data as Float32Array,
          `${other.dtype} mask`,
        );
      }
    });
  });
}

// ------------------------------------------------------------------------------------------------

describe('CLIPTextModel pooling: argmax(input_ids) when eos_token_id is 2, else the first eos_token_id', () => {
  const source = join(GOLDEN, 'clip_text_tiny', 'model');

  /** Rows of `pooler_output` must be the rows of `last_hidden_state` at `positions`, bit for bit. */
  function assertPooledAt(out: Record<string, HostTensor>, positions: number[], what: string): void {
    const [, seq, d] = out.last_hidden_state.shape;
    const last = out.last_hidden_state.data as Float32Array;
    const expected = new Float32Array(positions.length * d);
    positions.forEach((s, b) => expected.set(last.subarray((b * seq + s) * d, (b * seq + s + 1) * d), b * d));
    assertExactlyEqual(out.pooler_output.data as Float32Array, expected, what);
  }

  // Row 0: 2 at 2 and 5, 999 first at 4 and again at 6, 998 before it. Row 1: no 999; its maximum 950
  // comes after a 2. Row 2: two 950s (argmax takes the first), 2 at 0, no 999. The first-eos rule
  // with eos 2 would pick [2, 1, 0] and argmax with eos 999 [4, 3, 1]: every row tells the rules apart.
  const ids = [
    [998, 5, 2, 7, 999, 2, 999, 12],
    [1, 2, 3, 950, 4, 2, 6, 7],
    [2, 950, 3, 4, 950, 7, 1, 1],
  ];

  it('eos_token_id 999 (transformers ≥ 4.31 configs): the first 999, position 0 when a row has none', async () => {
    const model = await CLIPTextModel.fromPretrained(source, { runtime });
    try {
      assertPooledAt(await model.forward({ input_ids: ids64(ids) }), [4, 0, 0], 'first eos');
    } finally {
      await model.close();
    }
  });

  it('eos_token_id 2 (SD 1.x and SDXL configs): argmax of the ids, the first of equal maxima', async () => {
    const dir = await copyModel(source);
    await patchConfig(dir, { eos_token_id: 2 });
    const model = await CLIPTextModel.fromPretrained(dir, { runtime });
    try {
      assertPooledAt(await model.forward({ input_ids: ids64(ids) }), [4, 3, 1], 'argmax');
    } finally {
      await model.close();
    }
  });

  it('both rules on fresh random ids, against the positions computed here', async () => {
    const random = seededUniform(testSeed('CLIP pooling on random ids'));
    const vocab = 1000;
    const dir = await copyModel(source);
    for (const eosTokenId of [2, 999, 17]) {
      await patchConfig(dir, { eos_token_id: eosTokenId });
      const model = await CLIPTextModel.fromPretrained(dir, { runtime });
      try {
        // Small ids make repeats (and rows with and without eos) likely.
        const randomIds = Array.from({ length: 6 }, () =>
          Array.from({ length: 16 }, () => Math.floor(random() * (random() < 0.5 ? 20 : vocab))),
        );
        const positions = randomIds.map((row) => poolPosition(row, eosTokenId));
        assertPooledAt(await model.forward({ input_ids: ids64(randomIds) }), positions, `eos ${eosTokenId}`);
      } finally {
        await model.close();
      }
    }
  });
});

// ------------------------------------------------------------------------------------------------

describe('CLIP text encoders: load checks and forward errors', () => {
  const source = join(GOLDEN, 'clip_text_tiny', 'model');
  const sourceWithProjection = join(GOLDEN, 'clip_text_with_projection_tiny', 'model');

  async function loadCollecting(dir: string): Promise<VelodiffWarning[]> {
    const warnings: VelodiffWarning[] = [];
    const model = await loadModel(dir, { runtime, onWarning: (w) => warnings.push(w) });
    await model.close();
    return warnings;
  }

  it('loadModel picks the class from architectures; the golden folders load without a warning', async () => {
    for (const [dir, className] of [
      [source, 'CLIPTextModel'],
      [sourceWithProjection, 'CLIPTextModelWithProjection'],
    ]) {
      const warnings: VelodiffWarning[] = [];
      const model = await loadModel(dir, { runtime, onWarning: (w) => warnings.push(w) });
      assert.equal(model.className, className);
      assert.deepEqual(warnings, []);
      await model.close();
    }
  });

  it('a missing tensor fails the load, naming the tensor, the file and the expected shape', async () => {
    const dir = await copyModel(source);
    const missing = 'text_model.encoder.layers.2.self_attn.v_proj.bias';
    await editWeights(join(dir, 'model.safetensors'), (tensors) => tensors.delete(missing));
    await assert.rejects(CLIPTextModel.fromPretrained(dir, { runtime }), (e: unknown) => {
      assert.ok(e instanceof WeightError, String(e));
      assert.equal(e.code, 'WEIGHT_MISSING');
      for (const part of [`'${missing}'`, join(dir, 'model.safetensors'), '[32]'])
        assert.ok(e.message.includes(part), `${e.message} lacks ${part}`);
      return true;
    });
  });

  it('a tensor of the wrong shape fails the load, naming the tensor, the file and both shapes', async () => {
    const dir = await copyModel(source);
    const name = 'text_model.encoder.layers.0.mlp.fc1.weight';
    await editWeights(join(dir, 'model.safetensors'), (tensors) => tensors.set(name, zeros('F32', [37, 33])));
    await assert.rejects(CLIPTextModel.fromPretrained(dir, { runtime }), (e: unknown) => {
      assert.ok(e instanceof WeightError, String(e));
      assert.equal(e.code, 'WEIGHT_SHAPE');
      for (const part of [`'${name}'`, join(dir, 'model.safetensors'), '[37, 32]', '[37, 33]'])
        assert.ok(e.message.includes(part), `${e.message} lacks ${part}`);
      return true;
    });
  });

  it('CLIPTextModelWithProjection needs text_projection.weight; CLIPTextModel warns that it ignores it', async () => {
    await assert.rejects(CLIPTextModelWithProjection.fromPretrained(source, { runtime }), (e: unknown) => {
      assert.ok(e instanceof WeightError, String(e));
      assert.match(e.message, /'text_projection\.weight'/);
      return true;
    });
    const warnings: VelodiffWarning[] = [];
    const model = await CLIPTextModel.fromPretrained(sourceWithProjection, {
      runtime,
      onWarning: (w) => warnings.push(w),
    });
    await model.close();
    assert.equal(warnings.length, 1);
    assert.equal(warnings[0].code, 'WEIGHTS_UNUSED');
    assert.deepEqual(warnings[0].names, ['text_projection.weight']);
  });

  it('the position_ids buffer older checkpoints saved is ignored silently; other extra tensors warn', async () => {
    const dir = await copyModel(source);
    await editWeights(join(dir, 'model.safetensors'), (tensors) => {
      tensors.set('text_model.embeddings.position_ids', zeros('I64', [1, 16]));
      tensors.set('velodiff_test.extra', zeros('F32', [3]));
    });
    const warnings = await loadCollecting(dir);
    assert.equal(warnings.length, 1);
    assert.deepEqual(warnings[0].names, ['velodiff_test.extra']);
  });

  it('an unknown config key warns, naming it and the file', async () => {
    const dir = await copyModel(source);
    await patchConfig(dir, { frobnicate: 3, _name_or_path: 'x', dropout: 0.0 });
    const warnings = await loadCollecting(dir);
    assert.equal(warnings.length, 1, warnings.map((w) => w.message).join('\n'));
    assert.equal(warnings[0].code, 'CONFIG_UNUSED_KEYS');
    assert.deepEqual(warnings[0].names, ['frobnicate']);
    assert.ok(warnings[0].message.includes(join(dir, 'config.json')));
  });

  it('config errors name the key, the value and the file', async () => {
    const cases: [string, Record<string, unknown>, RegExp][] = [
      ['t5', { model_type: 't5' }, /"model_type" is "t5"; expected "clip_text_model" for CLIPTextModel/],
      ['clip', { model_type: 'clip' }, /"model_type" is "clip", the config of a whole CLIPModel/],
      [
        'arch',
        { architectures: ['BertModel'] },
        /"architectures" is \["BertModel"\]; expected one of CLIPTextModel/,
      ],
      ['act', { hidden_act: 'relu' }, /"hidden_act" is "relu"; expected one of "quick_gelu", "gelu"/],
      ['heads', { num_attention_heads: 5 }, /"hidden_size" 32 is not divisible by "num_attention_heads" 5/],
      ['type', { hidden_size: '32' }, /"hidden_size" is "32"; expected a number/],
      ['eos', { eos_token_id: -1 }, /"eos_token_id" is -1; expected an integer ≥ 0/],
    ];
    for (const [name, patch, message] of cases) {
      const dir = await copyModel(source);
      await patchConfig(dir, patch);
      await assert.rejects(CLIPTextModel.fromPretrained(dir, { runtime }), (e: unknown) => {
        assert.ok(e instanceof FileFormatError, `${name}: ${String(e)}`);
        assert.match(e.message, message);
        assert.ok(e.message.includes(join(dir, 'config.json')), e.message);
        return true;
      });
    }
  });

  it('forward rejects ids outside the vocabulary, sequences beyond max_position_embeddings and bad inputs', async () => {
    const model = await CLIPTextModel.fromPretrained(source, { runtime });
    try {
      await assert.rejects(
        model.forward({ input_ids: hostTensor('int64', [1, 3], [5, 1000, 7]) }),
        (e: unknown) => {
          assert.ok(e instanceof RuntimeError);
          assert.match(e.message, /input_ids\[0, 1\] is 1000, outside the vocabulary \[0, 1000\)/);
          return true;
        },
      );
      await assert.rejects(
        model.forward({ input_ids: hostTensor('int64', [1, 2], [-1, 3]) }),
        /input_ids\[0, 0\] is -1/,
      );
      await assert.rejects(
        model.forward({ input_ids: hostTensor('int64', [1, 17]) }),
        /input "input_ids": expected 1 to 16 tokens \(max_position_embeddings\), got \[1, 17\]/,
      );
      await assert.rejects(
        model.forward({ input_ids: hostTensor('float32', [1, 4]) }),
        /input "input_ids": expected int64 or int32 \[B, S\], got float32 \[1, 4\]/,
      );
      const ids = hostTensor('int64', [2, 4]);
      await assert.rejects(
        model.forward({ input_ids: ids, attention_mask: hostTensor('int64', [2, 5]) }),
        /input "attention_mask": expected .* \[B, S\] with S = 4 \(from input "input_ids"\), got int64 \[2, 5\]/,
      );
      await assert.rejects(model.forward({ input_ids: ids, inputs_embeds: ids }), (e: unknown) => {
        assert.ok(e instanceof OptionError);
        assert.match(e.message, /CLIPTextModel\.forward \(.*\): unknown input "inputs_embeds"/);
        return true;
      });
      await assert.rejects(
        model.forward({ input_ids: ids }, { kwargs: { output_attentions: true } }),
        /unknown kwarg "output_attentions"/,
      );
      await assert.rejects(model.forward({ attention_mask: ids }), /missing input "input_ids"/);
      await assert.rejects(model.forward({ input_ids: ids }, { method: 'encode' }), /has no method "encode"/);
    } finally {
      await model.close();
    }
  });
});

// ------------------------------------------------------------------------------------------------

describe('velodiff forward on CLIP text encoder folders', () => {
  for (const subject of SUBJECTS) {
    it(`${subject.golden}: writes every golden output, named as transformers names them`, async () => {
      const dir = join(GOLDEN, subject.golden);
      const out = join(await mkdtemp(join(tmpdir(), 'velodiff-clip-fwd-')), 'out.safetensors');
      const r = await captureCli([
        'forward',
        join(dir, 'model'),
        '--inputs',
        join(dir, 'inputs.safetensors'),
        '--out',
        out,
        '--kwargs',
        '{"output_hidden_states": true}',
        '--threads',
        '1',
      ]);
      assert.equal(r.code, 0, r.err);
      const fixture = await GoldenFixture.load(dir);
      const ours = await readAllTensors(out);
      assert.deepEqual(Object.keys(ours).sort(), fixture.outputs());
      for (const name of fixture.outputs()) fixture.check(name, ours[name].data as Float32Array);
    });
  }
});
