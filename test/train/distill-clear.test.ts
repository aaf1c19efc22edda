/**
 * CLEAR's distillation step on the golden tiny PixArt-α (2 blocks, learned σ, 4×4 tokens) as teacher:
 * - what it trains is exactly each self-attention's projections (and pooling weights with d > 1);
 * - its loss and each term equal the terms recomputed in float64 from two separate forward graphs
 *   (teacher: full attention; student: CLEAR attention on the student's weights), whose self-attention
 *   outputs come from T-GATE's store outputs, not from the step's own feature hook;
 * - its gradients w.r.t. sampled student coordinates match central finite differences of that loss;
 * - bad options fail with messages that say what was expected.
 */
import assert from 'node:assert/strict';
import { before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

import { tgateCacheName } from '../../src/attention/tgate.js';
import { readConfig } from '../../src/io/diffusers.js';
import type { PixArtTransformerConfig } from '../../src/models/pixart-transformer.js';
import {
  buildPixArtGraph,
  parsePixArtConfig,
  pixArtPositionEmbedding,
} from '../../src/models/pixart-transformer.js';
import { ParameterInputs } from '../../src/nn/weights.js';
import { TorchGenerator } from '../../src/random/torch-generator.js';
import type { HostTensor } from '../../src/runtime/host-tensor.js';
import { hostTensor } from '../../src/runtime/host-tensor.js';
import {
  STUDENT,
  TEACHER,
  clearDistillBatch,
  clearDistillStepSpec,
  clearStudentInit,
  isClearTrained,
} from '../../src/train/distill/clear.js';
import { TrainStep } from '../../src/train/train-step.js';
import { assertClose } from '../compare.js';
import { readAllTensors, testRuntime } from '../helpers.js';
import { seededUniform, testSeed } from '../random.js';

const DIR = fileURLToPath(new URL('../golden/models/pixart_alpha_tiny/model', import.meta.url));
const WEIGHTS = `${DIR}/diffusion_pytorch_model.safetensors`;
const BATCH = 2;
const TEXT = 6;
const LATENT = 8;
const RADIUS = 2;

let config: PixArtTransformerConfig;
let teacher: Map<string, Float32Array>;

before(async () => {
  config = parsePixArtConfig(await readConfig(DIR), DIR);
  const tensors = await readAllTensors(WEIGHTS);
  teacher = new Map(Object.entries(tensors).map(([k, t]) => [k, t.data as Float32Array]));
});

function batch(random: () => number): Record<string, HostTensor> {
  const values = (n: number, scale = 1): Float32Array =>
    Float32Array.from({ length: n }, () => scale * (2 * random() - 1));
  const latent = BATCH * config.inChannels * LATENT * LATENT;
  return {
    hidden_states: hostTensor('float32', [BATCH, config.inChannels, LATENT, LATENT], values(latent, 2)),
    target: hostTensor('float32', [BATCH, config.inChannels, LATENT, LATENT], values(latent)),
    timestep: hostTensor('float32', [BATCH], Float32Array.from([37, 811])),
    encoder_hidden_states: hostTensor(
      'float32',
      [BATCH, TEXT, config.captionChannels],
      values(BATCH * TEXT * config.captionChannels, 2),
    ),
    // Captions of 4 and 6 tokens.
    encoder_attention_mask: hostTensor(
      'float32',
      [BATCH, TEXT],
      Float32Array.from({ length: BATCH * TEXT }, (_, i) => Number(i % TEXT < 4 + 2 * Math.floor(i / TEXT))),
    ),
  };
}

/** Student weights moved off the teacher's, so that every term of the loss is non-zero. */
function perturbedParams(
  spec: { shapes: ReadonlyMap<string, readonly number[]> },
  random: () => number,
): Map<string, Float32Array> {
  const params = clearStudentInit(teacher, spec);
  for (const [name, value] of params) {
    if (!name.startsWith(`${STUDENT}.`)) continue;
    params.set(
      name,
      Float32Array.from(value, (v) => v + 0.05 * (2 * random() - 1)),
    );
  }
  return params;
}

/**
 * One forward of the model on `weights` (local names) through its own graph: ε (first in_channels)
 * and each block's self-attention output, from T-GATE's store outputs.
 */
async function forwardReference(
  weights: ReadonlyMap<string, Float32Array>,
  feeds: Record<string, HostTensor>,
  attention: { kind: 'full' } | { kind: 'clear'; radius: number; downFactor?: number },
): Promise<{ epsilon: Float64Array; features: Float64Array[] }> {
  const params = ParameterInputs.fromShapes(
    Object.fromEntries([...weights.keys()].map((n) => [n, localShape(n)])),
  );
  const g = buildPixArtGraph(config, params, {
    height: LATENT,
    width: LATENT,
    captionLength: TEXT,
    withMask: true,
    attention,
    tgate: { selfAttention: 'store', crossAttention: 'compute', average: false },
  });
  const compiled = await testRuntime().compile(g);
  const grid = LATENT / config.patchSize;
  const inputFeeds: Record<string, HostTensor> = {
    hidden_states: feeds.hidden_states,
    timestep: feeds.timestep,
    encoder_hidden_states: feeds.encoder_hidden_states,
    encoder_attention_mask: feeds.encoder_attention_mask,
    pos_embed: pixArtPositionEmbedding(config, grid, grid),
  };
  for (const { name } of compiled.inputs) {
    if (inputFeeds[name]) continue;
    inputFeeds[name] = hostTensor('float32', localShape(name), weights.get(name) as Float32Array);
  }
  const out = await compiled.run(inputFeeds);
  const sample = out.sample;
  const [b, , h, w] = sample.shape as number[];
  const c = config.inChannels;
  const epsilon = new Float64Array(b * c * h * w);
  const data = sample.data as Float32Array;
  for (let n = 0; n < b; n++)
    for (let k = 0; k < c * h * w; k++) epsilon[n * c * h * w + k] = data[n * config.outChannels * h * w + k];
  const features = Array.from({ length: config.numLayers }, (_, i) =>
    Float64Array.from(out[tgateCacheName(i, 'attn1')].data as Float32Array),
  );
  return { epsilon, features };
}

/** The shape of a parameter by its local name, from the step spec (set by the test that compares). */
let shapeTable: Map<string, readonly number[]>;
function localShape(name: string): number[] {
  const shape = shapeTable.get(name);
  if (!shape) throw new Error(`no shape for ${name}`);
  return [...shape];
}

/** The step on the tiny teacher at radius RADIUS. */
function tinySpec(o: {
  downFactor: number;
  featureLayers?: number[];
  weights?: { denoise: number; distill: number; attention: number };
}): ReturnType<typeof clearDistillStepSpec> {
  return clearDistillStepSpec({
    transformer: config,
    radius: RADIUS,
    latentSize: LATENT,
    textLength: TEXT,
    ...o,
  });
}

function meanSquare(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += (a[i] - b[i]) ** 2;
  return s / a.length;
}

describe('CLEAR distillation step (tiny PixArt-α teacher)', () => {
  for (const downFactor of [1, 2]) {
    it(`trains exactly the self-attention projections${downFactor > 1 ? ' and pooling weights' : ''} (d = ${downFactor})`, () => {
      const spec = tinySpec({ downFactor });
      const expected: string[] = [];
      for (let i = 0; i < config.numLayers; i++) {
        for (const m of ['to_q', 'to_k', 'to_v', 'to_out.0'])
          for (const p of ['weight', 'bias'])
            expected.push(`${STUDENT}.transformer_blocks.${i}.attn1.${m}.${p}`);
        if (downFactor > 1)
          expected.push(`${STUDENT}.transformer_blocks.${i}.attn1.processor.spatial_weight`);
      }
      assert.deepEqual([...spec.trainable].sort(), expected.sort());
      assert.deepEqual(
        [...spec.shapes.keys()]
          .filter((n) => n.startsWith(`${TEACHER}.`))
          .map((n) => n.slice(TEACHER.length + 1))
          .sort(),
        [...teacher.keys()].sort(),
        'the teacher is fed whole',
      );
      assert.ok(!isClearTrained('transformer_blocks.0.attn2.to_q.weight'));
      assert.ok(!isClearTrained('transformer_blocks.0.attn1.norm_q.weight'));
    });

    it(`loss and terms equal float64 terms from separate teacher and student forwards (d = ${downFactor}, feature layers 0 and 1)`, async () => {
      const random = seededUniform(testSeed(`clear distill loss d${downFactor}`));
      const spec = tinySpec({ downFactor, featureLayers: [0, 1] });
      shapeTable = new Map(
        [...spec.shapes].flatMap(([n, s]) => [[n.replace(/^(teacher|student)\./, ''), s] as const]),
      );
      const params = perturbedParams(spec, random);
      const feeds = batch(random);
      const step = await TrainStep.compile(testRuntime(), spec);
      const result = await step.run(params, feeds);

      const local = (prefix: string): Map<string, Float32Array> =>
        new Map(
          [...params]
            .filter(([n]) => n.startsWith(`${prefix}.`))
            .map(([n, v]) => [n.slice(prefix.length + 1), v]),
        );
      const teacherRef = await forwardReference(local(TEACHER), feeds, { kind: 'full' });
      const studentWeights = new Map([...local(TEACHER), ...local(STUDENT)]);
      const studentRef = await forwardReference(studentWeights, feeds, {
        kind: 'clear',
        radius: RADIUS,
        ...(downFactor > 1 ? { downFactor } : {}),
      });
      const denoise = meanSquare(studentRef.epsilon, feeds.target.data as Float32Array);
      const distill = meanSquare(studentRef.epsilon, teacherRef.epsilon);
      const attention =
        (meanSquare(studentRef.features[0], teacherRef.features[0]) +
          meanSquare(studentRef.features[1], teacherRef.features[1])) /
        2;
      assert.ok(distill > 1e-6 && attention > 1e-6, `terms too small to test: ${distill}, ${attention}`);
      const tol = { rtol: 1e-4, atol: 1e-7 };
      assertClose([result.metrics.denoise], [denoise], { ...tol, what: 'L_denoise' });
      assertClose([result.metrics.distill], [distill], { ...tol, what: 'L_distill' });
      assertClose([result.metrics.attention], [attention], { ...tol, what: 'L_attention' });
      assertClose([result.loss], [denoise + 0.5 * distill + 0.5 * attention], { ...tol, what: 'L' });
      assert.deepEqual([...result.grads.keys()].sort(), [...spec.trainable].sort());
      // Other weights (model.lossWeights): the same terms, weighted as asked.
      const w = {
        denoise: Math.round(random() * 4) / 4,
        distill: 0.25 + random(),
        attention: 0.25 + random(),
      };
      const weightedStep = await TrainStep.compile(
        testRuntime(),
        tinySpec({ downFactor, featureLayers: [0, 1], weights: w }),
      );
      const weighted = await weightedStep.run(params, feeds);
      assertClose([weighted.loss], [w.denoise * denoise + w.distill * distill + w.attention * attention], {
        ...tol,
        what: `L weighted ${JSON.stringify(w)}`,
      });

      // Central differences of the step's own loss on sampled student coordinates.
      const names = [...spec.trainable].filter((_, i) => i % 3 === 0);
      const h = 1e-2;
      for (const name of names) {
        const value = params.get(name) as Float32Array;
        const k = Math.floor(random() * value.length);
        const at = (delta: number): Map<string, Float32Array> => {
          const moved = Float32Array.from(value);
          moved[k] += delta;
          return new Map([...params, [name, moved]]);
        };
        const plus = at(h);
        const minus = at(-h);
        const step2 = (plus.get(name) as Float32Array)[k] - (minus.get(name) as Float32Array)[k];
        const numeric = ((await step.run(plus, feeds)).loss - (await step.run(minus, feeds)).loss) / step2;
        const analytic = (result.grads.get(name) as Float32Array)[k];
        assertClose([analytic], [numeric], { rtol: 0, atol: 2e-4, what: `∂L/∂${name}[${k}]` });
      }
    });
  }

  it('batches: x_t from the teacher latents, noise and uniform timesteps drawn in order, captions gathered', () => {
    const count = 5;
    const [c, h, w, L, D] = [2, 3, 3, 4, 6];
    const random = seededUniform(testSeed('clear distill batch'));
    const fill = (n: number): Float32Array => Float32Array.from({ length: n }, () => 2 * random() - 1);
    const samples = {
      latents: hostTensor('float32', [count, c, h, w], fill(count * c * h * w)),
      promptEmbeds: hostTensor('float32', [count, L, D], fill(count * L * D)),
      promptAttentionMask: hostTensor('float32', [count, L], fill(count * L)),
    };
    const alphas = Float32Array.from({ length: 10 }, (_, t) => 1 - 0.09 * t);
    const indices = [3, 0, 3];
    const feeds = clearDistillBatch(samples, indices, new TorchGenerator(7), alphas);
    const again = new TorchGenerator(7);
    const noise = again.randn([indices.length, c, h, w]);
    const u = again.rand([indices.length]);
    const per = c * h * w;
    const expected = new Float64Array(indices.length * per);
    indices.forEach((index, b) => {
      const t = Math.floor(u[b] * 10);
      assert.equal((feeds.timestep.data as Float32Array)[b], t);
      const a = alphas[t];
      for (let i = 0; i < per; i++) {
        const x0 = (samples.latents.data as Float32Array)[index * per + i];
        expected[b * per + i] = Math.sqrt(a) * x0 + Math.sqrt(1 - a) * noise[b * per + i];
      }
    });
    assertClose(feeds.hidden_states.data as Float32Array, expected, { rtol: 1e-6, atol: 1e-6, what: 'x_t' });
    assert.deepEqual(feeds.target.data, noise);
    // A v-prediction teacher: the same draws, target v = √ᾱ·ε − √(1 − ᾱ)·x₀.
    const vFeeds = clearDistillBatch(samples, indices, new TorchGenerator(7), alphas, 'v_prediction');
    assert.deepEqual(vFeeds.hidden_states.data, feeds.hidden_states.data);
    const expectedV = new Float64Array(indices.length * per);
    indices.forEach((index, b) => {
      const a = alphas[Math.floor(u[b] * 10)];
      for (let i = 0; i < per; i++) {
        const x0 = (samples.latents.data as Float32Array)[index * per + i];
        expectedV[b * per + i] = Math.sqrt(a) * noise[b * per + i] - Math.sqrt(1 - a) * x0;
      }
    });
    assertClose(vFeeds.target.data as Float32Array, expectedV, { rtol: 1e-6, atol: 1e-6, what: 'v' });
    assert.deepEqual(
      [...(feeds.encoder_hidden_states.data as Float32Array).subarray(L * D, 2 * L * D)],
      [...(samples.promptEmbeds.data as Float32Array).subarray(0, L * D)],
    );
    assert.deepEqual(feeds.encoder_attention_mask.shape, [3, L]);
    assert.throws(
      () => clearDistillBatch(samples, [5], new TorchGenerator(0), alphas),
      /sample indices 5 are outside the 5 teacher samples/,
    );

    // Dropped captions: those rows take the unconditional encoding; everything else, draws included, is unchanged.
    const unconditional = { embeds: fill(L * D), mask: fill(L) };
    const dropped = [false, true, false];
    const withDrop = clearDistillBatch(samples, indices, new TorchGenerator(7), alphas, 'epsilon', {
      dropped,
      unconditional,
    });
    assert.deepEqual(withDrop.hidden_states.data, feeds.hidden_states.data);
    assert.deepEqual(withDrop.target.data, feeds.target.data);
    assert.deepEqual(withDrop.timestep.data, feeds.timestep.data);
    dropped.forEach((isDropped, b) => {
      const rows = (name: 'encoder_hidden_states' | 'encoder_attention_mask', size: number) => [
        ...(withDrop[name].data as Float32Array).subarray(b * size, (b + 1) * size),
      ];
      const source = isDropped
        ? { embeds: unconditional.embeds, mask: unconditional.mask }
        : {
            embeds: (samples.promptEmbeds.data as Float32Array).subarray(
              indices[b] * L * D,
              (indices[b] + 1) * L * D,
            ),
            mask: (samples.promptAttentionMask.data as Float32Array).subarray(
              indices[b] * L,
              (indices[b] + 1) * L,
            ),
          };
      assert.deepEqual(rows('encoder_hidden_states', L * D), [...source.embeds], `row ${b} encoding`);
      assert.deepEqual(rows('encoder_attention_mask', L), [...source.mask], `row ${b} mask`);
    });
    assert.throws(
      () =>
        clearDistillBatch(samples, indices, new TorchGenerator(7), alphas, 'epsilon', {
          dropped: [true],
          unconditional: { embeds: fill(L * D + 1), mask: fill(L) },
        }),
      /caption dropout got 1 dropped-caption flags for a batch of 3; an unconditional encoding of 25 values, expected 4×6/,
    );
  });

  it('bad options say what was expected', () => {
    const base = { transformer: config, latentSize: LATENT, textLength: TEXT };
    assert.throws(() => clearDistillStepSpec({ ...base, radius: 0.5 }), /radius must be a finite number ≥ 1/);
    assert.throws(
      () => clearDistillStepSpec({ ...base, radius: 2, downFactor: 3 }),
      /down factor 3 does not divide the 4×4 token grid/,
    );
    assert.throws(
      () => clearDistillStepSpec({ ...base, radius: 2, featureLayers: [2] }),
      /feature layers 2 are not blocks of this 2-block transformer \(0–1\)/,
    );
  });

  it('the student starts as the teacher, pooling weights at 1/d²', () => {
    const spec = tinySpec({ downFactor: 2 });
    const init = clearStudentInit(teacher, spec);
    const q = `transformer_blocks.1.attn1.to_q.weight`;
    assert.deepEqual(init.get(`${STUDENT}.${q}`), teacher.get(q));
    assert.notEqual(init.get(`${STUDENT}.${q}`), teacher.get(q), 'a copy, not the teacher array');
    assert.deepEqual(
      [...(init.get(`${STUDENT}.transformer_blocks.0.attn1.processor.spatial_weight`) as Float32Array)],
      [0.25, 0.25, 0.25, 0.25],
    );
  });
});
