/**
 * Flash Diffusion's distillation step (src/train/distill/flash.ts) on the tiny PixArt-α pipeline
 * (teacher, VAE) and a tiny random emoji classifier:
 * - the schedule: the start-index probabilities against the reference values of
 *   methods/tgate_flash.md §2.2, the phases, and which modules the LoRA adapts;
 * - each term of the loss against a float64 recomputation from separate inference runs: the student
 *   as inference runs it (the LoRA written as a diffusers file and loaded by the pipeline), the
 *   teacher without it, the VAE decoder, the classifier's stage activations, and a float64 loop of
 *   the discriminator;
 * - the gradients: of each term by central differences where the term is a plain function of the
 *   parameters, and of the distribution-matching term against the differences of its surrogate
 *   mean((x̂₀(θ) − T)²) with T held; the discriminator gets only L_D's gradient and the LoRA none of it.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { Graph } from '../../src/graph/graph.js';
import { WeightStore, readConfig } from '../../src/io/diffusers.js';
import { emojiClassifierForward, parseEmojiClassifierConfig } from '../../src/models/emoji-classifier.js';
import type { EmojiClassifierConfig } from '../../src/models/emoji-classifier.js';
import { parseAutoencoderKLConfig } from '../../src/models/vae/config.js';
import { Params } from '../../src/nn/params.js';
import { unscaleLatents } from '../../src/pipelines/denoise.js';
import { PixArtPipeline } from '../../src/pipelines/pixart.js';
import type { HostTensor } from '../../src/runtime/host-tensor.js';
import { hostTensor } from '../../src/runtime/host-tensor.js';
import { loadEmojiDataset } from '../../src/train/data/emoji-dataset.js';
import { TEACHER } from '../../src/train/distill/clear.js';
import {
  CLASSIFIER,
  DISCRIMINATOR,
  FLASH_PIXART,
  VAE,
  flashDistillStepSpec,
  flashIndexProbabilities,
  flashLoraModules,
  flashPhase,
  isFlashTarget,
  pickIndex,
} from '../../src/train/distill/flash.js';
import { writeFlashLora } from '../../src/train/distill/flash-trainer.js';
import { TrainStep } from '../../src/train/train-step.js';
import { assertClose } from '../compare.js';
import { tinyEmojiClassifier } from '../fixtures/tiny-emoji-classifier.js';
import { tinyPixArtPipeline } from '../fixtures/tiny-pixart-pipeline.js';
import { testRuntime } from '../helpers.js';
import { seededUniform, testSeed } from '../random.js';

const B = 2;
const L = 6;
const RANK = 2;
const ALPHA = 3;

let work: string;
let pipelineDir: string;
let classifierDir: string;
let classifierConfig: EmojiClassifierConfig;
let spec: ReturnType<typeof flashDistillStepSpec>;
let frozen: Map<string, Float32Array>;
let C: number;
let side: number;
let captionChannels: number;

async function readFolder(dir: string, prefix: string): Promise<Map<string, Float32Array>> {
  const store = await WeightStore.open(dir);
  const out = new Map<string, Float32Array>();
  for (const name of store.names()) out.set(`${prefix}.${name}`, await store.readFloat32(name));
  await store.close();
  return out;
}

before(async () => {
  work = await mkdtemp(join(tmpdir(), 'velodiff-flash-distill-'));
  pipelineDir = await tinyPixArtPipeline();
  const labelNames = (await loadEmojiDataset()).labelNames;
  assert.ok(labelNames);
  classifierDir = await tinyEmojiClassifier(labelNames, testSeed('flash distill classifier'));
  classifierConfig = parseEmojiClassifierConfig(await readConfig(classifierDir), classifierDir);
  const transformerDir = join(pipelineDir, 'transformer');
  const store = await WeightStore.open(transformerDir);
  const teacherShapes = new Map(store.names().map((n) => [n, [...store.info(n).shape]]));
  await store.close();
  const pipe = await PixArtPipeline.fromPretrained(pipelineDir, { runtime: testRuntime() });
  const t = pipe.transformer.config;
  await pipe.close();
  C = t.inChannels;
  side = t.sampleSize;
  captionChannels = t.captionChannels;
  spec = flashDistillStepSpec({
    transformer: t,
    vae: parseAutoencoderKLConfig(await readConfig(join(pipelineDir, 'vae')), 'vae'),
    classifier: classifierConfig,
    latentSize: side,
    textLength: L,
    loraRank: RANK,
    loraAlpha: ALPHA,
    teacherShapes,
  });
  frozen = new Map([
    ...(await readFolder(transformerDir, TEACHER)),
    ...(await readFolder(join(pipelineDir, 'vae'), VAE)),
    ...(await readFolder(classifierDir, CLASSIFIER)),
  ]);
});
after(async () => {
  await rm(work, { recursive: true, force: true });
});

describe('Flash Diffusion schedule', () => {
  it("puts the start index where methods/tgate_flash.md's reference probabilities say (K = 32)", () => {
    const [p0, , p2] = FLASH_PIXART.phases;
    const a = flashIndexProbabilities(32, p0.modeProbs);
    // Phase 0: {530: .053, 499: .393, 468: .053, 280: .053, 249: .393, 218: .053} = indices 15–17, 23–25.
    assertClose([a[15], a[16], a[17], a[23], a[24], a[25]], [0.053, 0.393, 0.053, 0.053, 0.393, 0.053], {
      rtol: 0,
      atol: 1.5e-3,
      what: 'phase 0',
    });
    assert.ok(a[0] < 1e-12 && a[8] < 1e-12);
    const c = flashIndexProbabilities(32, p2.modeProbs);
    // Phase 2: 999/749/499/249 .202 each; their neighbours .027.
    assertClose(
      [c[0], c[1], c[7], c[8], c[9], c[16], c[24]],
      [0.202, 0.027, 0.027, 0.202, 0.027, 0.202, 0.202],
      {
        rtol: 0,
        atol: 1.5e-3,
        what: 'phase 2',
      },
    );
    // PixArt's K = 16: modes at indices 0, 4, 8, 12.
    const k16 = flashIndexProbabilities(16, p0.modeProbs);
    assert.equal(k16.indexOf(Math.max(...k16)), 8);
    assertClose([k16[8]], [k16[12]], { rtol: 1e-12, atol: 0, what: 'symmetric modes' });
  });

  it('picks indices by the inverse CDF, and counts phases by updates', () => {
    const p = [0.2, 0.5, 0.3];
    assert.deepEqual(
      [0, 0.19, 0.2, 0.69, 0.7, 0.999].map((u) => pickIndex(p, u)),
      [0, 0, 1, 1, 2, 2],
    );
    assert.deepEqual(
      [0, 9, 10, 29, 30, 39, 40, 1000].map((s) => flashPhase(s, 10)),
      [0, 0, 1, 2, 3, 3, 3, 3],
    );
  });

  it("adapts flash-pixart's target modules and nothing else", () => {
    for (const yes of [
      'transformer_blocks.0.attn1.to_q',
      'transformer_blocks.1.attn2.to_out.0',
      'transformer_blocks.0.ff.net.0.proj',
      'transformer_blocks.0.ff.net.2',
      'pos_embed.proj',
      'caption_projection.linear_1',
      'adaln_single.linear',
      'adaln_single.emb.timestep_embedder.linear_2',
      'proj_out',
    ])
      assert.ok(isFlashTarget(yes), yes);
    for (const no of [
      'transformer_blocks.0.norm1',
      'transformer_blocks.0.attn1.to_out.1',
      'my_linear',
      'scale_shift_table',
    ])
      assert.ok(!isFlashTarget(no), no);
    const modules = flashLoraModules(
      new Map([
        ['pos_embed.proj.weight', [24, 4, 2, 2]],
        ['pos_embed.proj.bias', [24]],
        ['transformer_blocks.0.attn1.to_q.weight', [24, 24]],
        ['transformer_blocks.0.norm1.weight', [24]],
      ]),
    );
    assert.deepEqual(
      modules.map((m) => m.path),
      ['pos_embed.proj', 'transformer_blocks.0.attn1.to_q'],
    );
    assert.ok(spec.loraModules.length > 10);
    assert.ok(
      spec.trainable.every((n) => n.startsWith('student.lora.') || n.startsWith(`${DISCRIMINATOR}.`)),
    );
    assert.deepEqual(spec.trainable.filter((n) => n.startsWith(`${DISCRIMINATOR}.`)).sort(), [
      'discriminator.blocks.0.conv.weight',
      'discriminator.blocks.0.norm.bias',
      'discriminator.blocks.0.norm.weight',
      'discriminator.out.weight',
    ]);
  });
});

/** Random trained parameters (LoRA B non-zero, so the student differs from the teacher) with the frozen ones. */
function parameters(random: () => number): Map<string, Float32Array> {
  const values = new Map(frozen);
  for (const name of spec.trainable) {
    const shape = spec.shapes.get(name) as number[];
    const n = shape.reduce((a, b) => a * b, 1);
    const scale = name.endsWith('norm.weight') ? 0 : name.includes('lora') ? 0.3 : 0.2;
    values.set(
      name,
      Float32Array.from(
        { length: n },
        () => (name.endsWith('norm.weight') ? 1 : 0) + scale * (2 * random() - 1),
      ),
    );
  }
  for (const name of spec.shapes.keys()) assert.ok(values.has(name), `no value for ${name}`);
  return values;
}

function feeds(random: () => number, weights: [number, number, number]): Record<string, HostTensor> {
  const latent = (scale = 1): HostTensor =>
    hostTensor(
      'float32',
      [B, C, side, side],
      Float32Array.from({ length: B * C * side * side }, () => scale * (2 * random() - 1)),
    );
  const vec = (values: number[]): HostTensor => hostTensor('float32', [B], Float32Array.from(values));
  const text = (): HostTensor =>
    hostTensor(
      'float32',
      [B, L, captionChannels],
      Float32Array.from({ length: B * L * captionChannels }, () => 2 * random() - 1),
    );
  const mask = (): HostTensor =>
    hostTensor(
      'float32',
      [B, L],
      Float32Array.from({ length: B * L }, (_, i) => Number(i % L < 3 + (i >= L ? 2 : 0))),
    );
  return {
    hidden_states: latent(1.5),
    timestep: vec([749, 749]),
    encoder_hidden_states: text(),
    encoder_attention_mask: mask(),
    negative_encoder_hidden_states: text(),
    negative_encoder_attention_mask: mask(),
    teacher_x0: latent(2),
    real_latents: latent(2),
    c_skip: vec([0.02, 0.02]),
    c_out: vec([0.98, 0.98]),
    x0_a: vec([1.9, 1.9]),
    x0_b: vec([-1.6, -1.6]),
    dmd_timestep: vec([120, 640]),
    dmd_noise: latent(),
    dmd_alpha: vec([0.95, 0.5]),
    dmd_sigma: vec([0.3, 0.86]),
    dmd_x0_a: vec([1.05, 2]),
    dmd_x0_b: vec([-0.32, -1.7]),
    dmd_guidance: vec([4.5, 4.5]),
    gan_timestep: vec([250, 500]),
    gan_noise: latent(),
    gan_alpha: vec([0.8, 0.6]),
    gan_sigma: vec([0.6, 0.8]),
    loss_weights: hostTensor('float32', [3], Float32Array.from(weights)),
  };
}

const f64 = (t: HostTensor): Float64Array => Float64Array.from(t.data as Float32Array);
const firstChannels = (out: HostTensor): Float64Array => {
  const [b, c2, h, w] = out.shape as number[];
  const res = new Float64Array(b * C * h * w);
  const d = out.data as Float32Array;
  for (let n = 0; n < b; n++)
    for (let k = 0; k < C * h * w; k++) res[n * C * h * w + k] = d[n * c2 * h * w + k];
  return res;
};
const col = (v: HostTensor, n: number, per: number): number => (v.data as Float32Array)[Math.floor(n / per)];

/** The references: the student and teacher through the inference pipeline, the decoder, the classifier stages. */
class Reference {
  private constructor(
    readonly teacher: PixArtPipeline,
    readonly student: PixArtPipeline,
  ) {}

  static async open(values: ReadonlyMap<string, Float32Array>, name: string): Promise<Reference> {
    const file = join(work, `${name}.safetensors`);
    await writeFlashLora(file, values, spec.loraModules, spec.shapes, ALPHA, 'F32');
    const teacher = await PixArtPipeline.fromPretrained(pipelineDir, { runtime: testRuntime() });
    const student = await PixArtPipeline.fromPretrained(pipelineDir, { runtime: testRuntime() });
    const loaded = await student.loadLoraWeights(file, { adapterName: 'flash' });
    assert.equal(loaded.ignored.length, 0);
    assert.equal(loaded.modules.length, spec.loraModules.length);
    return new Reference(teacher, student);
  }

  async close(): Promise<void> {
    await this.teacher.close();
    await this.student.close();
  }

  async predict(
    pipe: PixArtPipeline,
    x: Float64Array,
    t: HostTensor,
    text: HostTensor,
    mask: HostTensor,
  ): Promise<Float64Array> {
    // The pipeline's acceleration carries its loaded LoRA adapters.
    const { attention, acceleration } = await pipe.transformer.resolveAcceleration(undefined);
    const out = await pipe.transformer.step(
      {
        hidden_states: hostTensor('float32', [B, C, side, side], Float32Array.from(x)),
        timestep: t,
        encoder_hidden_states: text,
        encoder_attention_mask: mask,
      },
      { attention, acceleration },
    );
    return firstChannels(out.host.sample);
  }

  async x0Hat(f: Record<string, HostTensor>): Promise<Float64Array> {
    const xt = f64(f.hidden_states);
    const out = await this.predict(
      this.student,
      xt,
      f.timestep,
      f.encoder_hidden_states,
      f.encoder_attention_mask,
    );
    const per = C * side * side;
    return xt.map((x, i) => {
      const x0 = col(f.x0_a, i, per) * x + col(f.x0_b, i, per) * out[i];
      return col(f.c_skip, i, per) * x + col(f.c_out, i, per) * x0;
    });
  }

  async decoded(z: Float64Array): Promise<Float32Array> {
    const vae = this.teacher.vae!;
    const out = await vae.decode(
      unscaleLatents(vae, hostTensor('float32', [B, C, side, side], Float32Array.from(z))),
    );
    return Float32Array.from(out.sample.data as Float32Array, (v) => Math.min(1, Math.max(-1, v)));
  }
}

async function classifierStages(images: Float32Array, size: number): Promise<HostTensor[]> {
  const store = await WeightStore.open(classifierDir);
  try {
    const g = new Graph('stages');
    const x = g.input('pixel_values', 'float32', [B, 3, size, size]);
    emojiClassifierForward(Params.of(g, store), x, classifierConfig, (i, h) => g.output(`stage${i}`, h));
    const out = await (
      await testRuntime().compile(g)
    ).run({ pixel_values: hostTensor('float32', [B, 3, size, size], images) });
    return classifierConfig.blockOutChannels.map((_, i) => out[`stage${i}`]);
  } finally {
    await store.close();
  }
}

/** LPIPS' form, unit channel weights, per image: Σ_stages mean_hw Σ_c (unit(a) − unit(b))². */
function lpipsForm(a: HostTensor[], b: HostTensor[]): number[] {
  const result = new Array(B).fill(0);
  a.forEach((ta, s) => {
    const [, c, h, w] = ta.shape as number[];
    const da = ta.data as Float32Array;
    const db = b[s].data as Float32Array;
    for (let n = 0; n < B; n++) {
      let total = 0;
      for (let p = 0; p < h * w; p++) {
        let na = 0;
        let nb = 0;
        for (let k = 0; k < c; k++) {
          na += da[(n * c + k) * h * w + p] ** 2;
          nb += db[(n * c + k) * h * w + p] ** 2;
        }
        na = Math.sqrt(na) + 1e-10;
        nb = Math.sqrt(nb) + 1e-10;
        for (let k = 0; k < c; k++) {
          const i = (n * c + k) * h * w + p;
          total += (da[i] / na - db[i] / nb) ** 2;
        }
      }
      result[n] += total / (h * w);
    }
  });
  return result;
}

/** The discriminator in float64: (conv 4×4 s2 p1 → GroupNorm(4) → SiLU) per stage, conv 4×4 → logit. */
function discriminator(values: ReadonlyMap<string, Float32Array>, x: Float64Array): number[] {
  let h = x;
  let c = C;
  let s = side;
  const conv = (
    input: Float64Array,
    cin: number,
    size: number,
    w: Float32Array,
    cout: number,
    stride: number,
    pad: number,
  ) => {
    const out = Math.floor((size + 2 * pad - 4) / stride) + 1;
    const y = new Float64Array(B * cout * out * out);
    for (let n = 0; n < B; n++)
      for (let o = 0; o < cout; o++)
        for (let i = 0; i < out; i++)
          for (let j = 0; j < out; j++) {
            let acc = 0;
            for (let k = 0; k < cin; k++)
              for (let u = 0; u < 4; u++)
                for (let v = 0; v < 4; v++) {
                  const r = i * stride - pad + u;
                  const q = j * stride - pad + v;
                  if (r < 0 || q < 0 || r >= size || q >= size) continue;
                  acc += w[((o * cin + k) * 4 + u) * 4 + v] * input[((n * cin + k) * size + r) * size + q];
                }
            y[((n * cout + o) * out + i) * out + j] = acc;
          }
    return { y, out };
  };
  for (let stage = 0; stage < Math.log2(side / 4); stage++) {
    const cout = 64 * 2 ** stage;
    const { y, out } = conv(h, c, s, values.get(`${DISCRIMINATOR}.blocks.${stage}.conv.weight`)!, cout, 2, 1);
    const gamma = values.get(`${DISCRIMINATOR}.blocks.${stage}.norm.weight`)!;
    const beta = values.get(`${DISCRIMINATOR}.blocks.${stage}.norm.bias`)!;
    const per = (cout / 4) * out * out;
    for (let n = 0; n < B; n++)
      for (let grp = 0; grp < 4; grp++) {
        const from = (n * cout + grp * (cout / 4)) * out * out;
        let m = 0;
        for (let i = 0; i < per; i++) m += y[from + i];
        m /= per;
        let v = 0;
        for (let i = 0; i < per; i++) v += (y[from + i] - m) ** 2;
        v /= per;
        for (let i = 0; i < per; i++) {
          const ch = grp * (cout / 4) + Math.floor(i / (out * out));
          const z = ((y[from + i] - m) / Math.sqrt(v + 1e-5)) * gamma[ch] + beta[ch];
          y[from + i] = z / (1 + Math.exp(-z));
        }
      }
    h = y;
    c = cout;
    s = out;
  }
  const { y } = conv(h, c, s, values.get(`${DISCRIMINATOR}.out.weight`)!, 1, 1, 0);
  return Array.from(y);
}

const sigmoid = (v: number): number => 1 / (1 + Math.exp(-v));
const meanOf = (a: ArrayLike<number>): number => Array.from(a).reduce((x, y) => x + y, 0) / a.length;

describe('Flash Diffusion distillation step (tiny PixArt-α teacher)', () => {
  it('each term equals its float64 recomputation from separate inference runs', async () => {
    const seed = testSeed('flash distill terms');
    const random = seededUniform(seed);
    const values = parameters(random);
    const f = feeds(random, [1, 0.3, 0.05]);
    const step = await TrainStep.compile(testRuntime(), spec);
    const result = await step.run(values, f);

    const ref = await Reference.open(values, 'terms');
    try {
      const per = C * side * side;
      const x0Hat = await ref.x0Hat(f);
      const size = side * ref.teacher.vaeScaleFactor;
      const distillPer = lpipsForm(
        await classifierStages(await ref.decoded(x0Hat), size),
        await classifierStages(await ref.decoded(f64(f.teacher_x0)), size),
      );
      const distill = meanOf(distillPer);

      const xTau = x0Hat.map(
        (v, i) =>
          col(f.dmd_alpha, i, per) * v + col(f.dmd_sigma, i, per) * (f.dmd_noise.data as Float32Array)[i],
      );
      const u = await ref.predict(
        ref.teacher,
        xTau,
        f.dmd_timestep,
        f.negative_encoder_hidden_states,
        f.negative_encoder_attention_mask,
      );
      const c = await ref.predict(
        ref.teacher,
        xTau,
        f.dmd_timestep,
        f.encoder_hidden_states,
        f.encoder_attention_mask,
      );
      const fake = await ref.predict(
        ref.student,
        xTau,
        f.dmd_timestep,
        f.encoder_hidden_states,
        f.encoder_attention_mask,
      );
      const x0Real = xTau.map(
        (x, i) =>
          col(f.dmd_x0_a, i, per) * x +
          col(f.dmd_x0_b, i, per) * (u[i] + col(f.dmd_guidance, i, per) * (c[i] - u[i])),
      );
      const x0Fake = xTau.map((x, i) => col(f.dmd_x0_a, i, per) * x + col(f.dmd_x0_b, i, per) * fake[i]);
      let dmd = 0;
      for (let n = 0; n < B; n++) {
        let m = 0;
        for (let i = n * per; i < (n + 1) * per; i++) m += Math.abs(x0Hat[i] - x0Real[i]);
        const weight = 1 / (m / per + 1e-5);
        for (let i = n * per; i < (n + 1) * per; i++) dmd += (weight * (x0Fake[i] - x0Real[i])) ** 2;
      }
      dmd /= B * per;

      const noised = (x: Float64Array): Float64Array =>
        x.map(
          (v, i) =>
            col(f.gan_alpha, i, per) * v + col(f.gan_sigma, i, per) * (f.gan_noise.data as Float32Array)[i],
        );
      const featsFake = await ref.predict(
        ref.teacher,
        noised(x0Hat),
        f.gan_timestep,
        f.encoder_hidden_states,
        f.encoder_attention_mask,
      );
      const featsReal = await ref.predict(
        ref.teacher,
        noised(f64(f.real_latents)),
        f.gan_timestep,
        f.encoder_hidden_states,
        f.encoder_attention_mask,
      );
      const dFake = discriminator(values, featsFake).map(sigmoid);
      const dReal = discriminator(values, featsReal).map(sigmoid);
      const ganG = meanOf(dFake.map((d) => (d - 1) ** 2));
      const ganD = 0.5 * (meanOf(dReal.map((d) => (d - 1) ** 2)) + meanOf(dFake.map((d) => d * d)));

      assert.ok(distill > 1e-4 && dmd > 1e-4, `terms too small to test: ${distill}, ${dmd}`);
      const tol = { rtol: 2e-3, atol: 1e-6 };
      assertClose([result.metrics.distill], [distill], { ...tol, what: `L_distill (seed ${seed})` });
      assertClose([result.metrics.dmd], [dmd], { ...tol, what: `L_DMD (seed ${seed})` });
      assertClose([result.metrics.gan_g], [ganG], { ...tol, what: `L_G (seed ${seed})` });
      assertClose([result.metrics.gan_d], [ganD], { ...tol, what: `L_D (seed ${seed})` });
      assertClose([result.loss], [distill + 0.3 * dmd + 0.05 * ganG + ganD], { ...tol, what: 'L' });
    } finally {
      await ref.close();
    }
  });

  it('gradients: central differences of each term; L_G leaves the discriminator and L_D the LoRA alone', async () => {
    const seed = testSeed('flash distill gradients');
    const random = seededUniform(seed);
    const values = parameters(random);
    const base = feeds(random, [1, 0, 0]);
    const withWeights = (w: [number, number, number]): Record<string, HostTensor> => ({
      ...base,
      loss_weights: hostTensor('float32', [3], Float32Array.from(w)),
    });
    const step = await TrainStep.compile(testRuntime(), spec);
    const lora = spec.trainable.filter((n) => n.startsWith('student.lora.'));
    const disc = spec.trainable.filter((n) => n.startsWith(`${DISCRIMINATOR}.`));
    const pick = (names: string[], count: number): [string, number][] =>
      Array.from({ length: count }, () => {
        const name = names[Math.floor(random() * names.length)];
        return [name, Math.floor(random() * (values.get(name) as Float32Array).length)];
      });
    const moved = (name: string, k: number, delta: number): Map<string, Float32Array> => {
      const v = Float32Array.from(values.get(name) as Float32Array);
      v[k] += delta;
      return new Map([...values, [name, v]]);
    };
    const h = 1e-2;
    const fd = async (
      name: string,
      k: number,
      metric: string,
      f: Record<string, HostTensor>,
    ): Promise<number> => {
      const plus = await step.run(moved(name, k, h), f);
      const minus = await step.run(moved(name, k, -h), f);
      return (plus.metrics[metric] - minus.metrics[metric]) / (2 * h);
    };

    const distillOnly = await step.run(values, withWeights([1, 0, 0]));
    const advOnly = await step.run(values, withWeights([0, 0, 1]));
    const none = await step.run(values, withWeights([0, 0, 0]));
    for (const name of lora)
      assert.ok(
        (none.grads.get(name) as Float32Array).every((g) => g === 0),
        `L_D reaches ${name}`,
      );
    for (const name of disc)
      assert.deepEqual(advOnly.grads.get(name), distillOnly.grads.get(name), `L_G reaches ${name}`);

    for (const [name, k] of pick(lora, 3)) {
      const numeric = await fd(name, k, 'distill', withWeights([1, 0, 0]));
      assertClose([(distillOnly.grads.get(name) as Float32Array)[k]], [numeric], {
        rtol: 0.02,
        atol: 2e-4,
        what: `∂L_distill/∂${name}[${k}] (seed ${seed})`,
      });
    }
    for (const [name, k] of pick(lora, 3)) {
      const numeric = await fd(name, k, 'gan_g', withWeights([0, 0, 1]));
      assertClose([(advOnly.grads.get(name) as Float32Array)[k]], [numeric], {
        rtol: 0.02,
        atol: 2e-4,
        what: `∂L_G/∂${name}[${k}] (seed ${seed})`,
      });
    }
    for (const [name, k] of pick(disc, 3)) {
      const numeric = await fd(name, k, 'gan_d', withWeights([1, 0, 0]));
      assertClose([(distillOnly.grads.get(name) as Float32Array)[k]], [numeric], {
        rtol: 0.02,
        atol: 2e-4,
        what: `∂L_D/∂${name}[${k}] (seed ${seed})`,
      });
    }

    // L_DMD: its gradient is that of mean((x̂₀(θ) − T)²) with T = sg(x̂₀ − weight·(x₀_fake − x₀_real)) held.
    const dmdOnly = await step.run(values, withWeights([0, 1, 0]));
    const ref = await Reference.open(values, 'dmd');
    let x0Hat: Float64Array;
    try {
      x0Hat = await ref.x0Hat(base);
    } finally {
      await ref.close();
    }
    // T from the step's own value: with weight·coeff = x̂₀ − T, L_DMD = mean((x̂₀ − T)²); recompute T as in the terms test.
    const targetRef = await Reference.open(values, 'dmd-target');
    const per = C * side * side;
    const target = new Float64Array(x0Hat.length);
    try {
      const f = base;
      const xTau = x0Hat.map(
        (v, i) =>
          col(f.dmd_alpha, i, per) * v + col(f.dmd_sigma, i, per) * (f.dmd_noise.data as Float32Array)[i],
      );
      const u = await targetRef.predict(
        targetRef.teacher,
        xTau,
        f.dmd_timestep,
        f.negative_encoder_hidden_states,
        f.negative_encoder_attention_mask,
      );
      const c = await targetRef.predict(
        targetRef.teacher,
        xTau,
        f.dmd_timestep,
        f.encoder_hidden_states,
        f.encoder_attention_mask,
      );
      const fake = await targetRef.predict(
        targetRef.student,
        xTau,
        f.dmd_timestep,
        f.encoder_hidden_states,
        f.encoder_attention_mask,
      );
      for (let n = 0; n < B; n++) {
        let m = 0;
        const real = new Float64Array(per);
        for (let i = 0; i < per; i++) {
          const j = n * per + i;
          real[i] =
            col(f.dmd_x0_a, j, per) * xTau[j] +
            col(f.dmd_x0_b, j, per) * (u[j] + col(f.dmd_guidance, j, per) * (c[j] - u[j]));
          m += Math.abs(x0Hat[j] - real[i]);
        }
        const weight = 1 / (m / per + 1e-5);
        for (let i = 0; i < per; i++) {
          const j = n * per + i;
          const x0Fake = col(f.dmd_x0_a, j, per) * xTau[j] + col(f.dmd_x0_b, j, per) * fake[j];
          target[j] = x0Hat[j] - weight * (x0Fake - real[i]);
        }
      }
    } finally {
      await targetRef.close();
    }
    for (const [name, k] of pick(lora, 2)) {
      const surrogate = async (delta: number): Promise<number> => {
        const r = await Reference.open(moved(name, k, delta), `dmd-${delta}`);
        try {
          const x = await r.x0Hat(base);
          return meanOf(x.map((v, i) => (v - target[i]) ** 2));
        } finally {
          await r.close();
        }
      };
      const numeric = ((await surrogate(h)) - (await surrogate(-h))) / (2 * h);
      assertClose([(dmdOnly.grads.get(name) as Float32Array)[k]], [numeric], {
        rtol: 0.03,
        atol: 1e-3,
        what: `∂L_DMD/∂${name}[${k}] (seed ${seed})`,
      });
    }
  });
});
