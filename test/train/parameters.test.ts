/**
 * Parameters from scratch: discoverParameterShapes against the golden checkpoints (the names and
 * shapes diffusers/transformers saved for the same configs), and initParameters' statistics against
 * PyTorch's default-init formulas, with determinism by seed.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

import { WeightError } from '../../src/errors.js';
import { Graph } from '../../src/graph/graph.js';
import { readConfig } from '../../src/io/diffusers.js';
import { SafetensorsFile } from '../../src/io/safetensors.js';
import { buildAutoencoderKLGraph } from '../../src/models/autoencoder-kl.js';
import { buildPixArtGraph, parsePixArtConfig } from '../../src/models/pixart-transformer.js';
import { buildT5EncoderGraph, parseT5EncoderConfig } from '../../src/models/t5-encoder.js';
import { parseAutoencoderKLConfig } from '../../src/models/vae/config.js';
import { weightFromFile } from '../../src/nn/weights.js';
import { discoverParameterShapes, initParameters } from '../../src/train/parameters.js';
import { assertExactlyEqual } from '../compare.js';
import { testSeed } from '../random.js';

const GOLDEN = fileURLToPath(new URL('../golden/', import.meta.url));

async function checkpointShapes(path: string): Promise<Map<string, number[]>> {
  const file = await SafetensorsFile.open(path);
  try {
    return new Map(file.names().map((name) => [name, [...file.info(name).shape]]));
  } finally {
    await file.close();
  }
}

function sorted(shapes: ReadonlyMap<string, readonly number[]>): [string, readonly number[]][] {
  return [...shapes].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
}

describe('discoverParameterShapes: the names and shapes a checkpoint of the config holds', () => {
  it('PixArt-α tiny', async () => {
    const dir = join(GOLDEN, 'models/pixart_alpha_tiny/model');
    const config = parsePixArtConfig(await readConfig(dir), dir);
    const shapes = discoverParameterShapes((source) =>
      buildPixArtGraph(config, source, { height: 8, width: 8, captionLength: 4, withMask: true }),
    );
    const expected = await checkpointShapes(join(dir, 'diffusion_pytorch_model.safetensors'));
    assert.deepEqual(sorted(shapes), sorted(expected));
  });

  it('AutoencoderKL tiny: encoder and decoder, the current attention names (to_q, not query)', async () => {
    const dir = join(GOLDEN, 'models/vae_kl_tiny/model');
    const config = parseAutoencoderKLConfig(await readConfig(dir), dir);
    const shapes = discoverParameterShapes((source) => {
      buildAutoencoderKLGraph(config, source, 'encode', [1, 3, 8, 8]);
      buildAutoencoderKLGraph(config, source, 'decode', [1, 4, 2, 2]);
    });
    const expected = await checkpointShapes(join(dir, 'diffusion_pytorch_model.safetensors'));
    assert.deepEqual(sorted(shapes), sorted(expected));
    assert.ok(shapes.has('encoder.mid_block.attentions.0.to_q.weight'));
  });

  it('T5EncoderModel tiny: the token embedding as shared.weight (its tied copy left out)', async () => {
    const dir = join(GOLDEN, 'text_encoders/t5_encoder_tiny/model');
    const config = parseT5EncoderConfig(await readConfig(dir), dir);
    const shapes = discoverParameterShapes((source) =>
      buildT5EncoderGraph(config, source, {
        seqLength: 3,
        idsDType: 'int64',
        maskDType: 'int64',
        outputHiddenStates: false,
      }),
    );
    const expected = await checkpointShapes(join(dir, 'model.safetensors'));
    expected.delete('encoder.embed_tokens.weight');
    assert.deepEqual(sorted(shapes), sorted(expected));
  });

  it('refuses a read without an expected shape, and one name read with two shapes', () => {
    assert.throws(
      () => discoverParameterShapes((source) => weightFromFile(new Graph('g'), source, 'proj.weight')),
      (e: unknown) => e instanceof WeightError && e.message.includes("'proj.weight'"),
    );
    assert.throws(
      () =>
        discoverParameterShapes((source) => {
          weightFromFile(new Graph('a'), source, 'proj.weight', { expectedShape: [2, 3] });
          weightFromFile(new Graph('b'), source, 'proj.weight', { expectedShape: [3, 2] });
        }),
      (e: unknown) =>
        e instanceof WeightError && e.message.includes('[2, 3]') && e.message.includes('[3, 2]'),
    );
  });
});

function moments(values: Float32Array): { mean: number; variance: number; min: number; max: number } {
  let sum = 0;
  let min = Infinity;
  let max = -Infinity;
  for (const v of values) {
    sum += v;
    min = Math.min(min, v);
    max = Math.max(max, v);
  }
  const mean = sum / values.length;
  let squares = 0;
  for (const v of values) squares += (v - mean) ** 2;
  return { mean, variance: squares / values.length, min, max };
}

/** U(−b, b): bounds, mean within 6 standard errors of 0, variance b²/3 within 6 standard errors. */
function assertUniform(values: Float32Array, bound: number, what: string): void {
  const n = values.length;
  const { mean, variance, min, max } = moments(values);
  assert.ok(min >= -bound && max <= bound, `${what}: values in [${min}, ${max}] outside ±${bound}`);
  // P(max < b·(1 − ε)) = (1 − ε/2)ⁿ ≈ e^(−nε/2): e^(−20) with ε = 40/n.
  assert.ok(
    max > bound * (1 - 40 / n) && min < -bound * (1 - 40 / n),
    `${what}: [${min}, ${max}] does not reach ±${bound}`,
  );
  const sigma2 = (bound * bound) / 3;
  assert.ok(Math.abs(mean) < 6 * Math.sqrt(sigma2 / n), `${what}: mean ${mean}`);
  // Var of (x² ) for U(−b, b) is 4b⁴/45.
  assert.ok(
    Math.abs(variance - sigma2) < 6 * Math.sqrt((4 * bound ** 4) / 45 / n),
    `${what}: variance ${variance}, expected ${sigma2}`,
  );
}

/** N(0, σ²): mean and variance within 6 standard errors. */
function assertNormal(values: Float32Array, std: number, what: string): void {
  const n = values.length;
  const { mean, variance } = moments(values);
  assert.ok(Math.abs(mean) < (6 * std) / Math.sqrt(n), `${what}: mean ${mean}`);
  assert.ok(
    Math.abs(variance - std * std) < 6 * std * std * Math.sqrt(2 / n),
    `${what}: variance ${variance}, expected ${std * std}`,
  );
}

const SHAPES = new Map<string, readonly number[]>([
  ['blocks.0.attn1.to_q.weight', [96, 64]],
  ['blocks.0.attn1.to_q.bias', [96]],
  ['conv_in.weight', [48, 12, 3, 3]],
  ['conv_in.bias', [48]],
  ['blocks.0.norm1.weight', [64]],
  ['blocks.0.norm1.bias', [64]],
  ['shared.weight', [300, 32]],
  ['encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight', [32, 4]],
  ['scale_shift_table', [2, 400]],
]);

describe('initParameters: PyTorch default init by layer kind', () => {
  it('Linear and Conv weights and biases U(±1/√fan_in); norms 1 and 0; embeddings N(0, 1); scale_shift_table N(0, 1/dim)', () => {
    const seed = testSeed('initParameters statistics');
    const params = initParameters(SHAPES, { seed });
    assertUniform(params.get('blocks.0.attn1.to_q.weight')!, 1 / Math.sqrt(64), 'Linear weight');
    // A bias of 96 values: bounds only are tight; the moments are checked on the weights.
    const bias = moments(params.get('blocks.0.attn1.to_q.bias')!);
    assert.ok(
      bias.min >= -1 / 8 && bias.max <= 1 / 8 && bias.max - bias.min > 1 / 8,
      'Linear bias U(±1/√64)',
    );
    assertUniform(params.get('conv_in.weight')!, 1 / Math.sqrt(12 * 9), 'Conv weight');
    const convBias = moments(params.get('conv_in.bias')!);
    const convBound = 1 / Math.sqrt(108);
    assert.ok(
      convBias.min >= -convBound && convBias.max <= convBound && convBias.max - convBias.min > convBound,
      'Conv bias',
    );
    assertExactlyEqual(params.get('blocks.0.norm1.weight')!, new Array(64).fill(1), 'norm weight');
    assertExactlyEqual(params.get('blocks.0.norm1.bias')!, new Array(64).fill(0), 'norm bias');
    assertNormal(params.get('shared.weight')!, 1, 'embedding');
    assertNormal(
      params.get('encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight')!,
      1,
      'relative attention bias embedding',
    );
    assertNormal(params.get('scale_shift_table')!, 1 / Math.sqrt(400), 'scale_shift_table');
  });

  it('is deterministic by seed, and each parameter depends on its own name only', () => {
    const seed = testSeed('initParameters determinism');
    const a = initParameters(SHAPES, { seed });
    const b = initParameters(SHAPES, { seed });
    for (const name of SHAPES.keys()) assertExactlyEqual(a.get(name)!, b.get(name)!, name);
    const other = initParameters(SHAPES, { seed: (seed + 1) % 2 ** 32 });
    assert.notDeepEqual(other.get('conv_in.weight'), a.get('conv_in.weight'));
    const fewer = initParameters(new Map([['conv_in.weight', [48, 12, 3, 3]]]), { seed });
    assertExactlyEqual(
      fewer.get('conv_in.weight')!,
      a.get('conv_in.weight')!,
      'independent of the other parameters',
    );
  });

  it('rules: first match wins; zeros, ones, normal, uniform, default', () => {
    const seed = testSeed('initParameters rules');
    const params = initParameters(SHAPES, {
      seed,
      rules: [
        { match: /to_q\.bias$/, init: 'ones' },
        { match: /to_q\./, init: 'zeros' },
        { match: /^conv_in\.weight$/, init: { normal: 0.02 } },
        { match: /^conv_in\.bias$/, init: { uniform: 0.5 } },
        { match: /^shared\./, init: 'default' },
      ],
    });
    assertExactlyEqual(params.get('blocks.0.attn1.to_q.bias')!, new Array(96).fill(1), 'first rule');
    assertExactlyEqual(params.get('blocks.0.attn1.to_q.weight')!, new Array(96 * 64).fill(0), 'second rule');
    assertNormal(params.get('conv_in.weight')!, 0.02, 'normal rule');
    const bias = moments(params.get('conv_in.bias')!);
    assert.ok(bias.min >= -0.5 && bias.max <= 0.5 && bias.max - bias.min > 0.5, 'uniform rule');
    assertNormal(params.get('shared.weight')!, 1, "'default' keeps the layer's init");
  });

  it('names a parameter it cannot classify', () => {
    assert.throws(
      () => initParameters(new Map([['pos_embed.table', [4, 4]]]), { seed: 1 }),
      (e: unknown) =>
        e instanceof Error && e.message.includes("'pos_embed.table'") && e.message.includes('rule'),
    );
  });
});
