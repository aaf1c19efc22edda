/**
 * AutoencoderKL against diffusers 0.40 golden fixtures (test/golden/models/vae_*), and, for
 * configurations the fixtures do not cover (no mid-block attention, one quant conv, odd batch and
 * non-square sizes), against a float64 reference written here from diffusers' module definitions.
 */
import assert from 'node:assert/strict';
import { copyFile, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { TestContext } from 'node:test';
import { fileURLToPath } from 'node:url';

import { FileFormatError, OptionError, RuntimeError, WeightError } from '../../src/errors.js';
import { WeightStore } from '../../src/io/diffusers.js';
import { SafetensorsFile, writeSafetensors } from '../../src/io/safetensors.js';
import type { TensorToWrite } from '../../src/io/safetensors.js';
import { AutoencoderKL } from '../../src/models/autoencoder-kl.js';
import type { HostTensor } from '../../src/runtime/host-tensor.js';
import { hostTensor } from '../../src/runtime/host-tensor.js';
import { Runtime } from '../../src/runtime/runtime.js';
import type { VelodiffWarning } from '../../src/warnings.js';
import { assertScaledMaxAbsError } from '../compare.js';
import { describeCheck, GoldenFixture } from '../golden-fixture.js';
import { randomTensor } from '../helpers.js';
import { seededUniform, testSeed } from '../random.js';

const GOLDEN = fileURLToPath(new URL('../golden/models/', import.meta.url));
const CASES = ['vae_kl_tiny', 'vae_kl_sd3_16ch_tiny'] as const;

let runtime: Runtime;
let scratch: string;
before(async () => {
  runtime = new Runtime({ worker: false, threads: 1 });
  scratch = await mkdtemp(join(tmpdir(), 'velodiff-vae-'));
});
after(async () => {
  await runtime.dispose();
  await rm(scratch, { recursive: true, force: true });
});

// ---------------------------------------------------------------------------------------------
// Comparison.

/**
 * Against the float64 reference, which matches diffusers' float64 run to 3e-15 (below): measured
 * max |ours − reference| ≤ 2.3e-6·max(1, max|reference|) over 7 seeds of both variants, about torch's
 * own fp32 noise on the golden VAE cases (4e-7 to 1.5e-6 of max|x|); allowed 2e-5, under 10× that.
 */
const REFERENCE_TOLERANCE = 2e-5;

function assertNear(
  t: TestContext,
  what: string,
  ours: HostTensor,
  shape: readonly number[],
  expected: ArrayLike<number>,
): number {
  assert.deepEqual(ours.shape, [...shape], `${what}: shape`);
  const data = ours.data as Float32Array;
  const { maxAbsError, scale } = assertScaledMaxAbsError(data, expected, REFERENCE_TOLERANCE, what);
  const tolerance = REFERENCE_TOLERANCE * scale;
  t.diagnostic(
    `${what}: max |ours − expected| = ${maxAbsError.toExponential(3)} (tolerance ${tolerance.toExponential(2)})`,
  );
  return maxAbsError;
}

async function readTensors(path: string): Promise<Map<string, { shape: number[]; data: Float32Array }>> {
  const file = await SafetensorsFile.open(path);
  try {
    const out = new Map<string, { shape: number[]; data: Float32Array }>();
    for (const name of file.names())
      out.set(name, { shape: file.info(name).shape, data: await file.readFloat32(name) });
    return out;
  } finally {
    await file.close();
  }
}

function fixtureTensor(
  tensors: Map<string, { shape: number[]; data: Float32Array }>,
  name: string,
): HostTensor {
  const t = tensors.get(name);
  assert.ok(t, `fixture tensor ${name}`);
  return hostTensor('float32', t.shape, t.data);
}

// ---------------------------------------------------------------------------------------------
// Model folders derived from a fixture.

type RawConfig = Record<string, unknown>;

async function fixtureConfig(fixture: string): Promise<RawConfig> {
  return JSON.parse(await readFile(join(GOLDEN, fixture, 'model', 'config.json'), 'utf8')) as RawConfig;
}

let folders = 0;
/**
 * A copy of a fixture's model folder with `patch` merged into its config (undefined deletes a key) and,
 * when given, `edit` applied to its tensors before they are written back.
 */
async function derivedModel(
  fixture: string,
  patch: RawConfig,
  edit?: (tensors: Map<string, TensorToWrite>) => void,
): Promise<string> {
  const dir = join(scratch, `model-${folders++}`);
  await mkdir(dir);
  const config = { ...(await fixtureConfig(fixture)), ...patch };
  for (const [k, v] of Object.entries(patch)) if (v === undefined) delete config[k];
  await writeFile(join(dir, 'config.json'), JSON.stringify(config, null, 2));
  const weights = join(GOLDEN, fixture, 'model', 'diffusion_pytorch_model.safetensors');
  if (!edit) {
    await copyFile(weights, join(dir, 'diffusion_pytorch_model.safetensors'));
    return dir;
  }
  const tensors = new Map<string, TensorToWrite>();
  for (const [name, t] of await readTensors(weights))
    tensors.set(name, { dtype: 'F32', shape: t.shape, data: t.data });
  edit(tensors);
  await writeSafetensors(join(dir, 'diffusion_pytorch_model.safetensors'), Object.fromEntries(tensors));
  return dir;
}

// ---------------------------------------------------------------------------------------------
// A float64 reference of diffusers' AutoencoderKL (vae.py, unet_2d_blocks.py, resnet.py,
// attention_processor.py), by plain loops over NCHW arrays.

interface Nd {
  shape: number[];
  data: Float64Array;
}

const nd = (shape: number[]): Nd => ({ shape, data: new Float64Array(shape.reduce((a, b) => a * b, 1)) });

class RefVae {
  private constructor(
    private readonly cfg: RawConfig,
    private readonly weights: Map<string, Nd>,
  ) {}

  static async load(dir: string): Promise<RefVae> {
    const cfg = JSON.parse(await readFile(join(dir, 'config.json'), 'utf8')) as RawConfig;
    const store = await WeightStore.open(dir);
    const weights = new Map<string, Nd>();
    for (const name of store.names()) {
      weights.set(name, {
        shape: store.info(name).shape,
        data: Float64Array.from(await store.readFloat32(name)),
      });
    }
    await store.close();
    return new RefVae(cfg, weights);
  }

  private w(name: string): Nd {
    const t = this.weights.get(name);
    assert.ok(t, `reference: no tensor ${name}`);
    return t;
  }

  private get channels(): number[] {
    return this.cfg['block_out_channels'] as number[];
  }
  private get groups(): number {
    return this.cfg['norm_num_groups'] as number;
  }
  private get layers(): number {
    return this.cfg['layers_per_block'] as number;
  }
  private flag(key: string): boolean {
    return this.cfg[key] !== false;
  }

  conv(x: Nd, name: string, stride = 1, pads: [number, number, number, number] | number = -1): Nd {
    const w = this.w(`${name}.weight`);
    const b = this.w(`${name}.bias`);
    const [n, c, h, wd] = x.shape;
    const [o, ci, kh, kw] = w.shape;
    assert.equal(ci, c, `reference ${name}: channels`);
    const [pt, pl, pb, pr] =
      typeof pads === 'number'
        ? pads < 0
          ? [(kh - 1) / 2, (kw - 1) / 2, (kh - 1) / 2, (kw - 1) / 2]
          : [pads, pads, pads, pads]
        : pads;
    const ho = Math.floor((h + pt + pb - kh) / stride) + 1;
    const wo = Math.floor((wd + pl + pr - kw) / stride) + 1;
    const y = nd([n, o, ho, wo]);
    for (let b0 = 0; b0 < n; b0++)
      for (let oc = 0; oc < o; oc++)
        for (let i = 0; i < ho; i++)
          for (let j = 0; j < wo; j++) {
            let s = b.data[oc];
            for (let ic = 0; ic < c; ic++)
              for (let u = 0; u < kh; u++) {
                const yi = i * stride + u - pt;
                if (yi < 0 || yi >= h) continue;
                for (let v = 0; v < kw; v++) {
                  const xj = j * stride + v - pl;
                  if (xj < 0 || xj >= wd) continue;
                  s += x.data[((b0 * c + ic) * h + yi) * wd + xj] * w.data[((oc * c + ic) * kh + u) * kw + v];
                }
              }
            y.data[((b0 * o + oc) * ho + i) * wo + j] = s;
          }
    return y;
  }

  groupNorm(x: Nd, name: string): Nd {
    const w = this.w(`${name}.weight`).data;
    const b = this.w(`${name}.bias`).data;
    const [n, c, h, wd] = x.shape;
    const per = (c / this.groups) * h * wd;
    const y = nd(x.shape);
    for (let b0 = 0; b0 < n; b0++)
      for (let g = 0; g < this.groups; g++) {
        const start = (b0 * c + (g * c) / this.groups) * h * wd;
        let mean = 0;
        for (let k = 0; k < per; k++) mean += x.data[start + k];
        mean /= per;
        let variance = 0;
        for (let k = 0; k < per; k++) variance += (x.data[start + k] - mean) ** 2;
        variance /= per;
        for (let k = 0; k < per; k++) {
          const ch = (g * c) / this.groups + Math.floor(k / (h * wd));
          y.data[start + k] = ((x.data[start + k] - mean) / Math.sqrt(variance + 1e-6)) * w[ch] + b[ch];
        }
      }
    return y;
  }

  static silu(x: Nd): Nd {
    return { shape: x.shape, data: x.data.map((v) => v / (1 + Math.exp(-v))) };
  }

  static add(a: Nd, b: Nd): Nd {
    return { shape: a.shape, data: a.data.map((v, i) => v + b.data[i]) };
  }

  resnet(x: Nd, name: string): Nd {
    let h = this.conv(RefVae.silu(this.groupNorm(x, `${name}.norm1`)), `${name}.conv1`);
    h = this.conv(RefVae.silu(this.groupNorm(h, `${name}.norm2`)), `${name}.conv2`);
    const shortcut = this.weights.has(`${name}.conv_shortcut.weight`)
      ? this.conv(x, `${name}.conv_shortcut`)
      : x;
    return RefVae.add(shortcut, h);
  }

  attention(x: Nd, name: string): Nd {
    const [n, c, h, wd] = x.shape;
    const p = h * wd;
    const normed = this.groupNorm(x, `${name}.group_norm`);
    const project = (tokens: Float64Array, layer: string): Float64Array => {
      const w = this.w(`${name}.${layer}.weight`).data;
      const b = this.w(`${name}.${layer}.bias`).data;
      const out = new Float64Array(p * c);
      for (let i = 0; i < p; i++)
        for (let o = 0; o < c; o++) {
          let s = b[o];
          for (let k = 0; k < c; k++) s += tokens[i * c + k] * w[o * c + k];
          out[i * c + o] = s;
        }
      return out;
    };
    const y = nd(x.shape);
    for (let b0 = 0; b0 < n; b0++) {
      const tokens = new Float64Array(p * c);
      for (let ch = 0; ch < c; ch++)
        for (let i = 0; i < p; i++) tokens[i * c + ch] = normed.data[(b0 * c + ch) * p + i];
      const q = project(tokens, 'to_q');
      const k = project(tokens, 'to_k');
      const v = project(tokens, 'to_v');
      const context = new Float64Array(p * c);
      for (let i = 0; i < p; i++) {
        const scores = new Float64Array(p);
        for (let j = 0; j < p; j++) {
          let s = 0;
          for (let d = 0; d < c; d++) s += q[i * c + d] * k[j * c + d];
          scores[j] = s / Math.sqrt(c);
        }
        const top = Math.max(...scores);
        const e = scores.map((s) => Math.exp(s - top));
        const total = e.reduce((a, b) => a + b, 0);
        for (let j = 0; j < p; j++)
          for (let d = 0; d < c; d++) context[i * c + d] += (e[j] / total) * v[j * c + d];
      }
      const out = project(context, 'to_out.0');
      for (let ch = 0; ch < c; ch++)
        for (let i = 0; i < p; i++)
          y.data[(b0 * c + ch) * p + i] = out[i * c + ch] + x.data[(b0 * c + ch) * p + i];
    }
    return y;
  }

  mid(x: Nd, name: string): Nd {
    let h = this.resnet(x, `${name}.resnets.0`);
    if (this.flag('mid_block_add_attention')) h = this.attention(h, `${name}.attentions.0`);
    return this.resnet(h, `${name}.resnets.1`);
  }

  static upsample(x: Nd): Nd {
    const [n, c, h, w] = x.shape;
    const y = nd([n, c, 2 * h, 2 * w]);
    for (let k = 0; k < n * c; k++)
      for (let i = 0; i < 2 * h; i++)
        for (let j = 0; j < 2 * w; j++)
          y.data[(k * 2 * h + i) * 2 * w + j] = x.data[(k * h + (i >> 1)) * w + (j >> 1)];
    return y;
  }

  /** Returns mean, clamped logvar and std. */
  encode(image: Nd): { mean: Nd; logvar: Nd; std: Nd } {
    let h = this.conv(image, 'encoder.conv_in');
    this.channels.forEach((_, i) => {
      for (let r = 0; r < this.layers; r++) h = this.resnet(h, `encoder.down_blocks.${i}.resnets.${r}`);
      if (i < this.channels.length - 1)
        h = this.conv(h, `encoder.down_blocks.${i}.downsamplers.0.conv`, 2, [0, 0, 1, 1]);
    });
    h = this.mid(h, 'encoder.mid_block');
    h = this.conv(RefVae.silu(this.groupNorm(h, 'encoder.conv_norm_out')), 'encoder.conv_out');
    if (this.flag('use_quant_conv')) h = this.conv(h, 'quant_conv');
    const [n, c2, hh, ww] = h.shape;
    const c = c2 / 2;
    const mean = nd([n, c, hh, ww]);
    const logvar = nd([n, c, hh, ww]);
    const plane = c * hh * ww;
    for (let b0 = 0; b0 < n; b0++) {
      mean.data.set(h.data.subarray(b0 * 2 * plane, b0 * 2 * plane + plane), b0 * plane);
      logvar.data.set(h.data.subarray(b0 * 2 * plane + plane, (b0 + 1) * 2 * plane), b0 * plane);
    }
    logvar.data = logvar.data.map((v) => Math.min(20, Math.max(-30, v)));
    return { mean, logvar, std: { shape: logvar.shape, data: logvar.data.map((v) => Math.exp(0.5 * v)) } };
  }

  decode(z: Nd): Nd {
    let h = this.flag('use_post_quant_conv') ? this.conv(z, 'post_quant_conv') : z;
    h = this.conv(h, 'decoder.conv_in');
    h = this.mid(h, 'decoder.mid_block');
    this.channels.forEach((_, i) => {
      for (let r = 0; r <= this.layers; r++) h = this.resnet(h, `decoder.up_blocks.${i}.resnets.${r}`);
      if (i < this.channels.length - 1)
        h = this.conv(RefVae.upsample(h), `decoder.up_blocks.${i}.upsamplers.0.conv`);
    });
    return this.conv(RefVae.silu(this.groupNorm(h, 'decoder.conv_norm_out')), 'decoder.conv_out');
  }
}

const toNd = (t: HostTensor): Nd => ({
  shape: [...t.shape],
  data: Float64Array.from(t.data as Float32Array),
});

// ---------------------------------------------------------------------------------------------

describe('AutoencoderKL against the diffusers golden fixtures', () => {
  for (const fixture of CASES) {
    it(`${fixture}: encode and decode match every recorded output`, async (t) => {
      const base = join(GOLDEN, fixture);
      const meta = JSON.parse(await readFile(join(base, 'meta.json'), 'utf8')) as {
        model_class: string;
        extra_kwargs: Record<string, unknown>;
        outputs: Record<string, unknown>;
      };
      assert.equal(meta.model_class, 'AutoencoderKL');
      assert.deepEqual(meta.extra_kwargs, {});
      const inputs = await readTensors(join(base, 'inputs.safetensors'));
      const golden = await GoldenFixture.load(base);
      // Every recorded output is checked below: the encode posterior and the decode of `latents`.
      assert.deepEqual(golden.outputs(), ['decoded', 'latent_logvar', 'latent_mean', 'latent_std']);
      assert.deepEqual(Object.keys(meta.outputs).sort(), golden.outputs());

      const vae = await AutoencoderKL.fromPretrained(join(base, 'model'), { runtime });
      try {
        const image = fixtureTensor(inputs, 'image');
        const latents = fixtureTensor(inputs, 'latents');
        const encoded = await vae.encode(image);
        const decoded = await vae.decode(latents);
        // 10× torch's fp32 noise per output; measured 1.3–1.5× it against fp32, 0.65–1.4× against fp64.
        const check = (name: string, ours: HostTensor): void => {
          assert.deepEqual(ours.shape, golden.shape(name), `${fixture} ${name}: shape`);
          const what = `${fixture} ${name}`;
          t.diagnostic(describeCheck(golden.check(name, ours.data as Float32Array, { what })));
        };
        check('latent_mean', encoded.latentMean);
        check('latent_logvar', encoded.latentLogvar);
        check('latent_std', encoded.latentStd);
        check('decoded', decoded.sample);

        // forward, called with the fixture's input names, runs the same graphs.
        const viaForward = await vae.forward({ image }, { method: 'encode', kwargs: { return_dict: true } });
        assert.deepEqual(Object.keys(viaForward).sort(), ['latent_logvar', 'latent_mean', 'latent_std']);
        assert.deepEqual(viaForward['latent_mean'].data, encoded.latentMean.data);
        assert.deepEqual(viaForward['latent_std'].data, encoded.latentStd.data);
        const decodedViaForward = await vae.forward({ latents }, { method: 'decode' });
        assert.deepEqual(Object.keys(decodedViaForward), ['sample']);
        assert.deepEqual(decodedViaForward['sample'].data, decoded.sample.data);
        const zViaForward = await vae.forward({ z: latents }, { method: 'decode' });
        assert.deepEqual(zViaForward['sample'].data, decoded.sample.data);
      } finally {
        await vae.close();
      }
    });
  }

  it('exposes the config with diffusers defaults and the pipeline factors', async () => {
    const sd = await AutoencoderKL.fromPretrained(join(GOLDEN, 'vae_kl_tiny', 'model'), { runtime });
    const sd3 = await AutoencoderKL.fromPretrained(join(GOLDEN, 'vae_kl_sd3_16ch_tiny', 'model'), {
      runtime,
    });
    try {
      assert.equal(sd.className, 'AutoencoderKL');
      assert.deepEqual(sd.methods, ['encode', 'decode']);
      assert.equal(sd.config.latentChannels, 4);
      assert.equal(sd.config.scalingFactor, 0.18215);
      assert.equal(sd.config.shiftFactor, null);
      assert.equal(sd.config.useQuantConv, true);
      assert.deepEqual(sd.config.blockOutChannels, [8, 16, 32]);
      assert.equal(sd.config.normNumGroups, 4);
      assert.equal(sd.config.layersPerBlock, 1);
      assert.equal(sd.vaeScaleFactor, 4);
      assert.equal(sd3.config.latentChannels, 16);
      assert.equal(sd3.config.scalingFactor, 1.5305);
      assert.equal(sd3.config.shiftFactor, 0.0609);
      assert.equal(sd3.config.useQuantConv, false);
      assert.equal(sd3.config.usePostQuantConv, false);
      assert.equal(sd3.vaeScaleFactor, 2);
    } finally {
      await sd.close();
      await sd3.close();
    }
  });
});

describe('AutoencoderKL against a float64 reference', () => {
  it('the reference reproduces the golden outputs (so it can judge other configurations)', async (t) => {
    const base = join(GOLDEN, 'vae_kl_sd3_16ch_tiny');
    const ref = await RefVae.load(join(base, 'model'));
    const inputs = await readTensors(join(base, 'inputs.safetensors'));
    const golden = await GoldenFixture.load(base);
    const encoded = ref.encode(toNd(fixtureTensor(inputs, 'image')));
    const decoded = ref.decode(toNd(fixtureTensor(inputs, 'latents')));
    for (const [name, reference] of [
      ['latent_mean', encoded.mean],
      ['latent_logvar', encoded.logvar],
      ['latent_std', encoded.std],
      ['decoded', decoded],
    ] as const) {
      assert.deepEqual(reference.shape, golden.shape(name), `reference ${name}: shape`);
      // Float64 against float64: measured 2.4e-15 to 3.1e-15, the same computation up to summation order.
      const check = golden.check(name, reference.data, { what: `reference ${name}`, boundVsFp64: 1e-12 });
      t.diagnostic(describeCheck(check));
    }
  });

  const variants: {
    title: string;
    fixture: string;
    patch: RawConfig;
    /** The checkpoint's tensors that the patched config leaves unused (reported in one warning). */
    unusedTensors?: RegExp;
    image: number[];
    latents: number[];
  }[] = [
    {
      title: 'no mid-block attention, post_quant_conv off, non-square, batch 3',
      fixture: 'vae_kl_tiny',
      patch: { mid_block_add_attention: false, use_post_quant_conv: false },
      unusedTensors: /^(en|de)coder\.mid_block\.attentions\.0\.|^post_quant_conv\./,
      image: [3, 3, 12, 20],
      latents: [3, 4, 5, 3],
    },
    {
      title: '16 latent channels, quant_conv off, attention on, odd latent sizes',
      fixture: 'vae_kl_sd3_16ch_tiny',
      patch: {},
      image: [2, 3, 6, 14],
      latents: [2, 16, 3, 7],
    },
  ];
  for (const variant of variants) {
    it(variant.title, async (t) => {
      const seed = testSeed(`AutoencoderKL vs float64 reference: ${variant.title}`);
      t.diagnostic(`seed ${seed}`);
      const random = seededUniform(seed);
      const dir = await derivedModel(variant.fixture, variant.patch);
      const ref = await RefVae.load(dir);
      const warnings: VelodiffWarning[] = [];
      const vae = await AutoencoderKL.fromPretrained(dir, { runtime, onWarning: (w) => warnings.push(w) });
      try {
        if (variant.unusedTensors === undefined) assert.deepEqual(warnings, []);
        else {
          const pattern = variant.unusedTensors;
          assert.deepEqual(
            warnings.map((w) => w.code),
            ['WEIGHTS_UNUSED'],
          );
          assert.ok(warnings[0].names.length > 0);
          for (const name of warnings[0].names) assert.match(name, pattern);
        }
        const image = randomTensor(variant.image, random);
        const latents = randomTensor(variant.latents, random, -3, 3);
        const encoded = await vae.encode(image);
        const expected = ref.encode(toNd(image));
        assertNear(t, 'latent_mean', encoded.latentMean, expected.mean.shape, expected.mean.data);
        assertNear(t, 'latent_logvar', encoded.latentLogvar, expected.logvar.shape, expected.logvar.data);
        assertNear(t, 'latent_std', encoded.latentStd, expected.std.shape, expected.std.data);
        const decoded = await vae.decode(latents);
        const expectedImage = ref.decode(toNd(latents));
        assertNear(t, 'sample', decoded.sample, expectedImage.shape, expectedImage.data);
        // diffusers' forward(sample): the decode of the posterior mean.
        const roundTrip = await vae.forward({ sample: image });
        const expectedRoundTrip = ref.decode(expected.mean);
        assertNear(t, 'forward sample', roundTrip['sample'], expectedRoundTrip.shape, expectedRoundTrip.data);
      } finally {
        await vae.close();
      }
    });
  }

  it('loads checkpoints that use the pre-0.14 attention names (query, key, value, proj_attn)', async () => {
    const renames: [string, string][] = [
      ['to_q', 'query'],
      ['to_k', 'key'],
      ['to_v', 'value'],
      ['to_out.0', 'proj_attn'],
    ];
    const dir = await derivedModel('vae_kl_sd3_16ch_tiny', {}, (tensors) => {
      for (const [name, t] of [...tensors]) {
        for (const [current, old] of renames) {
          const prefix = `.attentions.0.${current}.`;
          if (!name.includes(prefix)) continue;
          tensors.delete(name);
          tensors.set(name.replace(prefix, `.attentions.0.${old}.`), t);
        }
      }
    });
    const current = await AutoencoderKL.fromPretrained(join(GOLDEN, 'vae_kl_sd3_16ch_tiny', 'model'), {
      runtime,
    });
    const legacy = await AutoencoderKL.fromPretrained(dir, { runtime });
    try {
      assert.ok(legacy.weights.has('decoder.mid_block.attentions.0.proj_attn.weight'));
      const latents = randomTensor([1, 16, 3, 2], seededUniform(11));
      assert.deepEqual(
        (await legacy.decode(latents)).sample.data,
        (await current.decode(latents)).sample.data,
      );
    } finally {
      await current.close();
      await legacy.close();
    }
  });

  it('compiles once per method and shape', async () => {
    const vae = await AutoencoderKL.fromPretrained(join(GOLDEN, 'vae_kl_sd3_16ch_tiny', 'model'), {
      runtime,
    });
    try {
      const random = seededUniform(7);
      const latents = randomTensor([1, 16, 2, 2], random);
      const first = await vae.decode(latents);
      const sessions = runtime.cachedSessions;
      const again = await vae.decode(latents);
      assert.equal(runtime.cachedSessions, sessions);
      assert.deepEqual(again.sample.data, first.sample.data);
      await vae.decode(randomTensor([1, 16, 2, 3], random));
      assert.equal(runtime.cachedSessions, sessions + 1);
    } finally {
      await vae.close();
    }
  });
});

// ---------------------------------------------------------------------------------------------

function rejectsWith<E extends Error>(
  type: new (...args: never[]) => E,
  code: string,
  ...fragments: (string | RegExp)[]
) {
  return (error: unknown): boolean => {
    assert.ok(error instanceof type, `expected ${type.name}, got ${String(error)}`);
    assert.equal((error as E & { code: string }).code, code, (error as Error).message);
    for (const f of fragments) {
      if (typeof f === 'string')
        assert.ok((error as Error).message.includes(f), `"${(error as Error).message}" lacks "${f}"`);
      else assert.match((error as Error).message, f);
    }
    return true;
  };
}

describe('AutoencoderKL errors', () => {
  it('a missing weight tensor names the tensor and the file', async () => {
    const dir = await derivedModel('vae_kl_tiny', {}, (tensors) =>
      tensors.delete('decoder.mid_block.attentions.0.to_k.weight'),
    );
    await assert.rejects(
      AutoencoderKL.fromPretrained(dir, { runtime }),
      rejectsWith(
        WeightError,
        'WEIGHT_MISSING',
        "'decoder.mid_block.attentions.0.to_k.weight'",
        join(dir, 'diffusion_pytorch_model.safetensors'),
      ),
    );
  });

  it('quant convs the config asks for must be in the checkpoint', async () => {
    const dir = await derivedModel('vae_kl_sd3_16ch_tiny', { use_quant_conv: true });
    await assert.rejects(
      AutoencoderKL.fromPretrained(dir, { runtime }),
      rejectsWith(WeightError, 'WEIGHT_MISSING', "'quant_conv.weight'"),
    );
  });

  it('a tensor of the wrong shape names the tensor, the file and both shapes', async () => {
    const dir = await derivedModel('vae_kl_tiny', {}, (tensors) => {
      tensors.set('encoder.down_blocks.1.resnets.0.conv_shortcut.weight', {
        dtype: 'F32',
        shape: [16, 8, 3, 3],
        data: new Float32Array(16 * 8 * 9),
      });
    });
    await assert.rejects(
      AutoencoderKL.fromPretrained(dir, { runtime }),
      rejectsWith(
        WeightError,
        'WEIGHT_SHAPE',
        "'encoder.down_blocks.1.resnets.0.conv_shortcut.weight'",
        join(dir, 'diffusion_pytorch_model.safetensors'),
        '[16, 8, 1, 1]',
        '[16, 8, 3, 3]',
      ),
    );
  });

  it('bad configs name the key and the file', async () => {
    const cases: [RawConfig, string, ...string[]][] = [
      [
        { _class_name: 'UNet2DConditionModel' },
        'CONFIG_CLASS_MISMATCH',
        '"_class_name"',
        'UNet2DConditionModel',
      ],
      [{ _class_name: undefined }, 'CONFIG_INVALID', '"_class_name"'],
      [
        { down_block_types: ['DownEncoderBlock2D', 'AttnDownEncoderBlock2D', 'DownEncoderBlock2D'] },
        'CONFIG_UNSUPPORTED',
        'down_block_types[1]',
        'AttnDownEncoderBlock2D',
      ],
      [
        { up_block_types: ['UpDecoderBlock2D', 'UpDecoderBlock2D', 'AttnUpDecoderBlock2D'] },
        'CONFIG_UNSUPPORTED',
        'up_block_types[2]',
      ],
      [
        { up_block_types: ['UpDecoderBlock2D', 'UpDecoderBlock2D'] },
        'CONFIG_INVALID',
        '"up_block_types"',
        '"block_out_channels"',
      ],
      [{ block_out_channels: [8, 16.5, 32] }, 'CONFIG_INVALID', '"block_out_channels"'],
      [{ norm_num_groups: 3 }, 'CONFIG_INVALID', '"norm_num_groups"'],
      [{ latent_channels: 0 }, 'CONFIG_INVALID', '"latent_channels"'],
      [{ use_quant_conv: 'yes' }, 'CONFIG_INVALID', '"use_quant_conv"'],
      [{ act_fn: 'tanh' }, 'CONFIG_INVALID', '"act_fn"'],
      [{ shift_factor: 'none' }, 'CONFIG_INVALID', '"shift_factor"'],
      [{ latents_mean: [0, 1] }, 'CONFIG_INVALID', '"latents_mean"'],
    ];
    for (const [patch, code, ...fragments] of cases) {
      const dir = await derivedModel('vae_kl_tiny', patch);
      await assert.rejects(
        AutoencoderKL.fromPretrained(dir, { runtime }),
        rejectsWith(FileFormatError, code, join(dir, 'config.json'), ...fragments),
        JSON.stringify(patch),
      );
    }
  });

  it('accepts keys diffusers accepts that velodiff does not use', async () => {
    const dir = await derivedModel('vae_kl_tiny', {
      latents_mean: [0.1, 0.2, 0.3, 0.4],
      latents_std: [1, 2, 3, 4],
      force_upcast: false,
      sample_size: [32, 48],
      _name_or_path: 'somewhere',
      some_future_option: { enabled: true },
    });
    const warnings: VelodiffWarning[] = [];
    const vae = await AutoencoderKL.fromPretrained(dir, { runtime, onWarning: (w) => warnings.push(w) });
    try {
      // Only the key no diffusers AutoencoderKL reads is reported; `_`-keys and the others are silent.
      assert.deepEqual(
        warnings.map((w) => [w.code, w.names]),
        [['CONFIG_UNUSED_KEYS', ['some_future_option']]],
      );
      assert.deepEqual(vae.config.latentsMean, [0.1, 0.2, 0.3, 0.4]);
      assert.equal(vae.config.forceUpcast, false);
      assert.deepEqual(vae.config.raw['some_future_option'], { enabled: true });
    } finally {
      await vae.close();
    }
  });

  it('rejects images whose size is not a multiple of the downsampling factor, and wrong inputs', async () => {
    const vae = await AutoencoderKL.fromPretrained(join(GOLDEN, 'vae_kl_tiny', 'model'), { runtime });
    try {
      const random = seededUniform(3);
      await assert.rejects(
        vae.encode(randomTensor([1, 3, 30, 32], random)),
        rejectsWith(RuntimeError, 'SHAPE', 'multiples of 4', '30×32'),
      );
      await assert.rejects(
        vae.encode(randomTensor([1, 4, 32, 32], random)),
        rejectsWith(RuntimeError, 'SHAPE', '[N, 3, H, W]'),
      );
      await assert.rejects(
        vae.decode(randomTensor([1, 16, 4, 4], random)),
        rejectsWith(RuntimeError, 'SHAPE', '[N, 4, h, w]'),
      );
      await assert.rejects(
        vae.decode(hostTensor('float16', [1, 4, 2, 2])),
        rejectsWith(RuntimeError, 'DTYPE', 'float32'),
      );
      const latents = randomTensor([1, 4, 2, 2], random);
      await assert.rejects(
        vae.forward({ sample: latents }, { method: 'decode' }),
        rejectsWith(RuntimeError, 'INPUT', '"z" or "latents"'),
      );
      await assert.rejects(
        vae.forward({ z: latents }, { method: 'upsample' }),
        rejectsWith(OptionError, 'METHOD', 'upsample'),
      );
      await assert.rejects(
        vae.forward({ sample: randomTensor([1, 3, 8, 8], random) }, { kwargs: { sample_posterior: true } }),
        rejectsWith(OptionError, 'KWARG', 'sample_posterior'),
      );
      await assert.rejects(
        vae.forward({ z: latents }, { method: 'decode', kwargs: { generator: 1 } }),
        rejectsWith(OptionError, 'KWARG', 'generator'),
      );
    } finally {
      await vae.close();
    }
  });
});
