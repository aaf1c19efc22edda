/**
 * LinFusion's distillation step on the golden tiny PixArt-α (2 blocks, learned σ, 4×4 tokens) as
 * teacher:
 * - it trains exactly one LinFusion module per self-attention, in the authors' tensor layout;
 * - its loss and each term equal the terms recomputed in float64 from two separate forward graphs:
 *   the teacher with full attention, and the student as inference runs it, from the authors' folder
 *   layout (writeLinFusionFolder → LinFusionWeights, `attention: linfusion`), self-attention outputs
 *   from T-GATE's store outputs;
 * - its gradients w.r.t. sampled student coordinates match central finite differences;
 * - the initial module is the teacher's projections (biases folded) under LinFusion's attention,
 *   checked against a float64 loop of the row form of §2.2;
 * - bad options say what was expected.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

import { LinFusionWeights, linfusionAttention } from '../../src/attention/linfusion.js';
import { tgateCacheName } from '../../src/attention/tgate.js';
import { Graph } from '../../src/graph/graph.js';
import { readConfig } from '../../src/io/diffusers.js';
import type { PixArtTransformerConfig } from '../../src/models/pixart-transformer.js';
import {
  buildPixArtGraph,
  parsePixArtConfig,
  pixArtPositionEmbedding,
} from '../../src/models/pixart-transformer.js';
import { Params } from '../../src/nn/params.js';
import { ParameterInputs } from '../../src/nn/weights.js';
import { TorchGenerator } from '../../src/random/torch-generator.js';
import type { HostTensor } from '../../src/runtime/host-tensor.js';
import { hostTensor } from '../../src/runtime/host-tensor.js';
import { TEACHER } from '../../src/train/distill/clear.js';
import {
  LINFUSION_PREFIX,
  linfusionDistillStepSpec,
  linfusionMidDim,
  linfusionModulesList,
  linfusionStudentInit,
  solveLinear,
  writeLinFusionFolder,
} from '../../src/train/distill/linfusion.js';
import { TrainStep } from '../../src/train/train-step.js';
import { assertClose } from '../compare.js';
import { readAllTensors, testRuntime } from '../helpers.js';
import { seededUniform, testSeed } from '../random.js';

const DIR = fileURLToPath(new URL('../golden/models/pixart_alpha_tiny/model', import.meta.url));
const WEIGHTS = `${DIR}/diffusion_pytorch_model.safetensors`;
const BATCH = 2;
const TEXT = 6;
const LATENT = 8;
const MID = 5;

let config: PixArtTransformerConfig;
let teacher: Map<string, Float32Array>;
let work: string;

before(async () => {
  config = parsePixArtConfig(await readConfig(DIR), DIR);
  const tensors = await readAllTensors(WEIGHTS);
  teacher = new Map(Object.entries(tensors).map(([k, t]) => [k, t.data as Float32Array]));
  work = await mkdtemp(join(tmpdir(), 'velodiff-linfusion-distill-'));
});
after(async () => {
  await rm(work, { recursive: true, force: true });
});

function spec(weights?: {
  simple: number;
  kd: number;
  feat: number;
}): ReturnType<typeof linfusionDistillStepSpec> {
  return linfusionDistillStepSpec({
    transformer: config,
    latentSize: LATENT,
    textLength: TEXT,
    midDim: MID,
    ...(weights ? { weights } : {}),
  });
}

function batch(random: () => number): Record<string, HostTensor> {
  const values = (n: number, scale = 1): Float32Array =>
    Float32Array.from({ length: n }, () => scale * (2 * random() - 1));
  const latent = BATCH * config.inChannels * LATENT * LATENT;
  return {
    hidden_states: hostTensor('float32', [BATCH, config.inChannels, LATENT, LATENT], values(latent, 2)),
    target: hostTensor('float32', [BATCH, config.inChannels, LATENT, LATENT], values(latent)),
    timestep: hostTensor('float32', [BATCH], Float32Array.from([123, 702])),
    encoder_hidden_states: hostTensor(
      'float32',
      [BATCH, TEXT, config.captionChannels],
      values(BATCH * TEXT * config.captionChannels, 2),
    ),
    encoder_attention_mask: hostTensor(
      'float32',
      [BATCH, TEXT],
      Float32Array.from({ length: BATCH * TEXT }, (_, i) => Number(i % TEXT < 3 + 3 * Math.floor(i / TEXT))),
    ),
  };
}

/** ε (first in_channels) and each block's self-attention output of one forward through the inference graph. */
async function forwardReference(
  feeds: Record<string, HostTensor>,
  linfusion?: LinFusionWeights,
): Promise<{ epsilon: Float64Array; features: Float64Array[] }> {
  const params = ParameterInputs.fromShapes(
    Object.fromEntries(
      [...teacher.keys()].map((n) => [n, [...(spec().shapes.get(`${TEACHER}.${n}`) ?? [])]]),
    ),
  );
  const g = buildPixArtGraph(
    config,
    params,
    {
      height: LATENT,
      width: LATENT,
      captionLength: TEXT,
      withMask: true,
      attention: linfusion ? { kind: 'linfusion' } : { kind: 'full' },
      tgate: { selfAttention: 'store', crossAttention: 'compute', average: false },
    },
    linfusion ? { linfusion } : {},
  );
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
    const shape = spec().shapes.get(`${TEACHER}.${name}`);
    if (!shape) throw new Error(`no shape for ${name}`);
    inputFeeds[name] = hostTensor('float32', [...shape], teacher.get(name) as Float32Array);
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

function meanSquare(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += (a[i] - b[i]) ** 2;
  return s / a.length;
}

describe('LinFusion distillation step (tiny PixArt-α teacher)', () => {
  it("trains exactly one LinFusion module per self-attention, in the authors' layout", () => {
    const s = spec();
    const C = config.innerDim;
    const expected = new Map<string, number[]>();
    for (let i = 0; i < config.numLayers; i++) {
      for (const p of ['to_q', 'to_k', 'to_v']) expected.set(`${i}.${p}.weight`, [C, C]);
      expected.set(`${i}.to_out.0.weight`, [C, C]);
      expected.set(`${i}.to_out.0.bias`, [C]);
      for (const p of ['to_q_', 'to_k_']) {
        expected.set(`${i}.${p}.0.weight`, [MID, C]);
        expected.set(`${i}.${p}.0.bias`, [MID]);
        expected.set(`${i}.${p}.1.weight`, [MID]);
        expected.set(`${i}.${p}.1.bias`, [MID]);
        expected.set(`${i}.${p}.3.weight`, [C, MID]);
        expected.set(`${i}.${p}.3.bias`, [C]);
      }
    }
    const trained = new Map(
      s.trainable.map((n) => [n.slice(LINFUSION_PREFIX.length + 1), [...(s.shapes.get(n) as number[])]]),
    );
    assert.deepEqual(new Map([...trained].sort()), new Map([...expected].sort()));
    assert.deepEqual(linfusionModulesList(config, MID)[1], {
      module_name: 'transformer_blocks.1.attn1',
      dim_n: C,
      heads: config.numAttentionHeads,
      projection_mid_dim: MID,
    });
  });

  it('loss terms equal float64 sums over the teacher and the saved student run as inference runs it; gradients match central differences', async () => {
    const seed = testSeed('linfusion distill step');
    const random = seededUniform(seed);
    const s = spec();
    const { values } = linfusionStudentInit(teacher, s, new TorchGenerator(seed));
    // Move every student tensor off its initial value, so that every term and gradient is non-trivial.
    for (const [name, value] of values) {
      if (name.startsWith(`${LINFUSION_PREFIX}.`))
        values.set(
          name,
          Float32Array.from(value, (v) => v + 0.05 * (2 * random() - 1)),
        );
    }
    const feeds = batch(random);
    const step = await TrainStep.compile(testRuntime(), s);
    const result = await step.run(values, feeds);

    const folder = join(work, 'student');
    await writeLinFusionFolder(folder, values, s.shapes, linfusionModulesList(config, MID), 'F32');
    const weights = await LinFusionWeights.open(folder);
    try {
      const teacherRef = await forwardReference(feeds);
      const studentRef = await forwardReference(feeds, weights);
      const simple = meanSquare(studentRef.epsilon, feeds.target.data as Float32Array);
      const kd = meanSquare(studentRef.epsilon, teacherRef.epsilon);
      const feat =
        (meanSquare(studentRef.features[0], teacherRef.features[0]) +
          meanSquare(studentRef.features[1], teacherRef.features[1])) /
        2;
      assert.ok(kd > 1e-6 && feat > 1e-6, `terms too small to test: ${kd}, ${feat}`);
      const tol = { rtol: 1e-4, atol: 1e-7 };
      assertClose([result.metrics.simple], [simple], { ...tol, what: 'L_simple' });
      assertClose([result.metrics.kd], [kd], { ...tol, what: 'L_kd' });
      assertClose([result.metrics.feat], [feat], { ...tol, what: 'L_feat' });
      assertClose([result.loss], [simple + 0.5 * kd + 0.5 * feat], { ...tol, what: 'L' });
      // Other weights (model.lossWeights): the same terms, weighted as asked.
      const w = { simple: Math.round(random() * 4) / 4, kd: 0.25 + random(), feat: 0.25 + random() };
      const weighted = await (await TrainStep.compile(testRuntime(), spec(w))).run(values, feeds);
      assertClose([weighted.loss], [w.simple * simple + w.kd * kd + w.feat * feat], {
        ...tol,
        what: `L weighted ${JSON.stringify(w)}`,
      });
    } finally {
      await weights.close();
    }
    assert.deepEqual([...result.grads.keys()].sort(), [...s.trainable].sort());

    const names = [...s.trainable].filter((_, i) => i % 4 === 1);
    const h = 1e-2;
    for (const name of names) {
      const value = values.get(name) as Float32Array;
      const k = Math.floor(random() * value.length);
      const at = (delta: number): Map<string, Float32Array> => {
        const moved = Float32Array.from(value);
        moved[k] += delta;
        return new Map([...values, [name, moved]]);
      };
      const plus = at(h);
      const minus = at(-h);
      const step2 = (plus.get(name) as Float32Array)[k] - (minus.get(name) as Float32Array)[k];
      const numeric = ((await step.run(plus, feeds)).loss - (await step.run(minus, feeds)).loss) / step2;
      const analytic = (result.grads.get(name) as Float32Array)[k];
      assertClose([analytic], [numeric], { rtol: 0, atol: 2e-4, what: `∂L/∂${name}[${k}] (seed ${seed})` });
    }
  });

  it("starts as the teacher's projections, biases included, under LinFusion's attention (float64 row form)", async () => {
    const seed = testSeed('linfusion init');
    const random = seededUniform(seed);
    const s = spec();
    const { values, unfolded } = linfusionStudentInit(teacher, s, new TorchGenerator(seed));
    assert.deepEqual(unfolded, []);
    // The MLPs' last Linear is zero: the MLP is its bias alone. The first Linear is random.
    assert.ok((values.get(`${LINFUSION_PREFIX}.0.to_q_.3.weight`) as Float32Array).every((v) => v === 0));
    assert.ok((values.get(`${LINFUSION_PREFIX}.0.to_q_.0.weight`) as Float32Array).some((v) => v !== 0));

    const C = config.innerDim;
    const heads = config.numAttentionHeads;
    const d = C / heads;
    const N = 7;
    const layer = 1;
    const x = Float32Array.from({ length: N * C }, () => 2 * random() - 1);
    const g = new Graph('linfusion-init');
    const input = g.input('x', 'float32', [1, N, C]);
    const modules = Params.of(
      g,
      ParameterInputs.fromShapes(
        Object.fromEntries([...s.shapes].filter(([n]) => n.startsWith(LINFUSION_PREFIX))),
      ),
      { prefix: LINFUSION_PREFIX },
    );
    g.output('y', linfusionAttention(modules.child(layer), input, { dim: C, heads, midDim: MID }));
    const compiled = await testRuntime().compile(g);
    const feeds: Record<string, HostTensor> = { x: hostTensor('float32', [1, N, C], x) };
    for (const { name } of compiled.inputs) {
      if (name !== 'x')
        feeds[name] = hostTensor(
          'float32',
          [...(s.shapes.get(name) as number[])],
          values.get(name) as Float32Array,
        );
    }
    const y = (await compiled.run(feeds)).y.data as Float32Array;

    // The teacher's projections with their biases, then §2.2's row form, in float64.
    const attn = `transformer_blocks.${layer}.attn1`;
    const linear = (name: string, v: ArrayLike<number>, bias = true): Float64Array => {
      const w = teacher.get(`${attn}.${name}.weight`) as Float32Array;
      const b = bias ? teacher.get(`${attn}.${name}.bias`) : undefined;
      const out = new Float64Array(N * C);
      for (let n = 0; n < N; n++)
        for (let o = 0; o < C; o++) {
          let sum = b ? b[o] : 0;
          for (let i = 0; i < C; i++) sum += w[o * C + i] * v[n * C + i];
          out[n * C + o] = sum;
        }
      return out;
    };
    const phi = (u: number): number => (u > 0 ? u + 1 : Math.exp(u));
    const q = linear('to_q', x);
    const k = linear('to_k', x);
    const v = linear('to_v', x);
    const o = new Float64Array(N * C);
    for (let h = 0; h < heads; h++)
      for (let i = 0; i < N; i++) {
        let z = 0;
        const acc = new Float64Array(d);
        for (let j = 0; j < N; j++) {
          let a = 0;
          for (let e = 0; e < d; e++) a += phi(q[i * C + h * d + e]) * phi(k[j * C + h * d + e]);
          z += a;
          for (let e = 0; e < d; e++) acc[e] += a * v[j * C + h * d + e];
        }
        for (let e = 0; e < d; e++) o[i * C + h * d + e] = acc[e] / (z + 1e-4 * N);
      }
    const expected = linear('to_out.0', o);
    // v's bias passes through the attention exactly where its weights sum to 1; they sum to
    // z / (z + 1e-4·N), hence the looser tolerance than fp32 noise.
    assertClose(y, expected, {
      rtol: 1e-4,
      atol: 1e-4,
      what: `LinFusion at init vs the teacher's projections (seed ${seed})`,
    });
  });

  it('solveLinear solves W·c = b and reports a singular W', () => {
    const w = Float64Array.from([2, 1, 0, 1, 3, 1, 0, 1, 4]);
    const c = solveLinear(w, [3, 5, 5]) as Float64Array;
    assertClose(c, [1, 1, 1], { rtol: 0, atol: 1e-12, what: 'c' });
    assert.equal(solveLinear(Float64Array.from([1, 2, 2, 4]), [1, 1]), undefined);
  });

  it('bad options say what was expected', () => {
    const base = { transformer: config, latentSize: LATENT, textLength: TEXT };
    assert.throws(
      () => linfusionDistillStepSpec({ ...base, midDim: 0 }),
      /MLP width must be an integer ≥ 1, got 0/,
    );
    assert.throws(() => linfusionMidDim(192, 0), /midDimScale must be an integer ≥ 1, got 0/);
    assert.equal(linfusionMidDim(192, 16), 12);
    assert.equal(linfusionMidDim(192, 1), 192);
  });
});
