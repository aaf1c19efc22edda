/**
 * `quantize: 'int8'` at load (src/models/int8.ts) on every model class that quantizes, on the golden
 * tiny models: which Linear layers become int8, the error against diffusers' fp32 and float64
 * outputs (bounded at about 3× what was measured, README "int8"), and the temporary int8 file's
 * lifetime.
 */
import assert from 'node:assert/strict';
import { existsSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

import { OptionError } from '../../src/errors.js';
import { AutoencoderKL } from '../../src/models/autoencoder-kl.js';
import type { VelodiffWarning } from '../../src/warnings.js';
import { CLIPTextModel, CLIPTextModelWithProjection } from '../../src/models/clip-text.js';
import { FluxTransformer2DModel } from '../../src/models/flux-transformer.js';
import { INT8_CONV_MIN_CHANNELS, checkQuantizeOption, selectInt8Layers } from '../../src/models/int8.js';
import { int8QuantizationConfig, quantizeInt8Rows } from '../../src/io/quantize.js';
import { copyModel, editWeights, patchConfig } from '../fixtures/edit-checkpoint.js';
import type { DiffusersModel, LoadOptions } from '../../src/models/model.js';
import { PixArtTransformer2DModel } from '../../src/models/pixart-transformer.js';
import { SD3Transformer2DModel } from '../../src/models/sd3-transformer.js';
import { T5EncoderModel } from '../../src/models/t5-encoder.js';
import { UNet2DConditionModel } from '../../src/models/unet-2d-condition.js';
import type { HostTensor } from '../../src/runtime/host-tensor.js';
import { Runtime } from '../../src/runtime/runtime.js';
import { GoldenFixture } from '../golden-fixture.js';
import { readAllTensors } from '../helpers.js';

const GOLDEN = fileURLToPath(new URL('../golden/', import.meta.url));
const runtime = new Runtime({ worker: false, threads: 1 });
after(() => runtime.dispose());

type Loader = (
  dir: string,
  options: LoadOptions,
) => Promise<DiffusersModel & { int8Modules?: ReadonlySet<string> }>;

interface Case {
  fixture: string;
  load: Loader;
  /** The output to check, and the forward kwargs. */
  output: string;
  kwargs?: Record<string, unknown>;
  /** Bound on max |int8 − golden| / max |golden|, about 3× the measured figure. */
  relBound: number;
  /** Linear modules that must stay float (time embeddings, the last layer). */
  float: RegExp;
  /** Linear modules that must be int8. */
  int8: RegExp;
}

const CASES: Case[] = [
  {
    fixture: 'models/pixart_alpha_tiny',
    load: (d, o) => PixArtTransformer2DModel.fromPretrained(d, o),
    output: 'sample',
    relBound: 0.01, // measured 2.4e-3
    float: /^(proj_out|adaln_single\..*)$/,
    int8: /^transformer_blocks\.0\.(attn1\.to_q|attn2\.to_k|ff\.net\.2)$/,
  },
  {
    fixture: 'models/pixart_sigma_tiny',
    load: (d, o) => PixArtTransformer2DModel.fromPretrained(d, o),
    output: 'sample',
    relBound: 0.01, // measured 2.1e-3
    float: /^(proj_out|adaln_single\..*)$/,
    int8: /^transformer_blocks\.1\.attn1\.to_out\.0$/,
  },
  {
    fixture: 'models/sd3_transformer_tiny',
    load: (d, o) => SD3Transformer2DModel.fromPretrained(d, o),
    output: 'sample',
    relBound: 0.01, // measured 2.3e-3
    float: /^(proj_out|time_text_embed\..*)$/,
    // The adaLN modulations are int8 although their input is a [B, C] vector (memory: README "int8").
    int8: /^transformer_blocks\.0\.(attn\.add_k_proj|norm1\.linear|norm1_context\.linear)$/,
  },
  {
    fixture: 'models/sd35_transformer_tiny',
    load: (d, o) => SD3Transformer2DModel.fromPretrained(d, o),
    output: 'sample',
    relBound: 0.01, // measured 3.4e-3
    float: /^(proj_out|time_text_embed\..*)$/,
    int8: /^(norm_out\.linear|transformer_blocks\.1\.ff\.net\.2)$/,
  },
  {
    fixture: 'models/flux_transformer_tiny',
    load: (d, o) => FluxTransformer2DModel.fromPretrained(d, o),
    output: 'sample',
    relBound: 0.05, // measured 1.4e-2
    float: /^(proj_out|time_text_embed\..*)$/,
    int8: /^single_transformer_blocks\.1\.(norm\.linear|proj_mlp)$/,
  },
  {
    fixture: 'models/flux_schnell_transformer_tiny',
    load: (d, o) => FluxTransformer2DModel.fromPretrained(d, o),
    output: 'sample',
    relBound: 0.03, // measured 8.6e-3
    float: /^(proj_out|time_text_embed\..*)$/,
    int8: /^transformer_blocks\.1\.norm1_context\.linear$/,
  },
  {
    fixture: 'models/unet2d_sd15_tiny',
    load: (d, o) => UNet2DConditionModel.fromPretrained(d, o),
    output: 'sample',
    relBound: 0.02, // measured 5.8e-3
    float: /^(time_embedding\..*|.*\.time_emb_proj)$/,
    int8: /^down_blocks\.0\.attentions\.0\.transformer_blocks\.0\.attn2\.to_q$/,
  },
  {
    fixture: 'models/unet2d_sdxl_tiny',
    load: (d, o) => UNet2DConditionModel.fromPretrained(d, o),
    output: 'sample',
    relBound: 0.03, // measured 1.1e-2
    float: /^(time_embedding\..*|add_embedding\..*|.*\.time_emb_proj)$/,
    int8: /\.proj_in$/,
  },
  {
    fixture: 'text_encoders/t5_encoder_tiny',
    load: (d, o) => T5EncoderModel.fromPretrained(d, o),
    output: 'last_hidden_state',
    relBound: 0.1, // measured 3.3e-2
    float: /^$/,
    int8: /^encoder\.block\.0\.layer\.(0\.SelfAttention\.q|1\.DenseReluDense\.wo)$/,
  },
  {
    fixture: 'text_encoders/clip_text_tiny',
    load: (d, o) => CLIPTextModel.fromPretrained(d, o),
    output: 'last_hidden_state',
    relBound: 0.07, // measured 2.2e-2
    float: /^$/,
    int8: /^text_model\.encoder\.layers\.0\.(self_attn\.k_proj|mlp\.fc2)$/,
  },
  {
    fixture: 'text_encoders/clip_text_with_projection_tiny',
    load: (d, o) => CLIPTextModelWithProjection.fromPretrained(d, o),
    output: 'text_embeds',
    relBound: 0.07, // measured 2.5e-2
    float: /^text_projection$/,
    int8: /^text_model\.encoder\.layers\.1\.self_attn\.out_proj$/,
  },
];

function relativeError(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let err = 0;
  let ref = 0;
  for (let i = 0; i < b.length; i++) {
    err = Math.max(err, Math.abs(a[i] - b[i]));
    ref = Math.max(ref, Math.abs(b[i]));
  }
  return err / ref;
}

/** Module paths of every Linear weight in a model's checkpoint ([out, in] tensors named `….weight`). */
function linearLike(
  model: DiffusersModel & { weights?: { names(): string[]; info(n: string): { shape: number[] } } },
): string[] {
  const weights = model.weights;
  if (!weights) return [];
  return weights
    .names()
    .filter((n) => n.endsWith('.weight') && weights.info(n).shape.length === 2)
    .map((n) => n.slice(0, -'.weight'.length));
}

describe("quantize: 'int8' at load, on the golden tiny models", () => {
  for (const c of CASES) {
    it(`${c.fixture}: int8 Linears, error vs diffusers' fp32 and float64 outputs`, async (t) => {
      const dir = join(GOLDEN, c.fixture);
      const inputs: Record<string, HostTensor> = await readAllTensors(join(dir, 'inputs.safetensors'));
      const golden = await GoldenFixture.load(dir);
      const float = await c.load(join(dir, 'model'), { runtime });
      const int8 = await c.load(join(dir, 'model'), { runtime, quantize: 'int8' });
      try {
        assert.equal(float.int8Modules, undefined);
        const modules = int8.int8Modules;
        assert.ok(modules && modules.size > 0, 'some Linear layers are int8');
        for (const m of modules) assert.doesNotMatch(m, c.float, `${m} should stay float`);
        assert.ok(
          [...modules].some((m) => c.int8.test(m)),
          `an int8 module matches ${String(c.int8)}`,
        );
        // Every Linear-shaped weight the policy skipped is one the case expects to stay float, or an
        // embedding table (2-D, but not a Linear).
        const skipped = linearLike(int8).filter((m) => !modules.has(m));
        t.diagnostic(`${modules.size} int8 Linears; float: ${skipped.join(', ')}`);

        const f = (await float.forward(inputs, { kwargs: c.kwargs }))[c.output].data as Float32Array;
        const q = (await int8.forward(inputs, { kwargs: c.kwargs }))[c.output].data as Float32Array;
        const fp64 = golden.check(c.output, f).errorVsFp64;
        const scale = Math.max(...Array.from(f, Math.abs));
        const rel = relativeError(q, f);
        const check = golden.check(c.output, q, { bound: c.relBound * scale, what: `${c.fixture} int8` });
        t.diagnostic(
          `int8 vs fp32 (ours): max rel ${rel.toExponential(2)}; vs fp64 golden ${(check.errorVsFp64 / scale).toExponential(2)} ` +
            `(fp32 vs fp64 ${(fp64 / scale).toExponential(2)}); bound ${c.relBound}`,
        );
        // int8 really ran: its error is far above fp32 rounding.
        assert.ok(rel > 1e-4, `int8 output differs from fp32 by only ${rel}`);
      } finally {
        await float.close();
        await int8.close();
      }
    });
  }
});

describe('the int8 file of a quantization at load', () => {
  it('lives in the temporary folder while the model is open, and is removed by close()', async () => {
    const before = new Set(readdirSync(tmpdir()).filter((n) => n.startsWith('velodiff-int8-')));
    const model = await PixArtTransformer2DModel.fromPretrained(
      join(GOLDEN, 'models/pixart_alpha_tiny/model'),
      {
        runtime,
        quantize: 'int8',
      },
    );
    const added = readdirSync(tmpdir()).filter((n) => n.startsWith('velodiff-int8-') && !before.has(n));
    assert.equal(added.length, 1);
    const folder = join(tmpdir(), added[0]);
    assert.ok(existsSync(join(folder, 'int8.safetensors')));
    await model.close();
    assert.ok(!existsSync(folder), `${folder} removed`);
  });

  it('keepFloat leaves the modules it names float, beyond the class’s own choice', async () => {
    const dir = join(GOLDEN, 'models/pixart_alpha_tiny/model');
    const all = await PixArtTransformer2DModel.fromPretrained(dir, { runtime, quantize: 'int8' });
    const some = await PixArtTransformer2DModel.fromPretrained(dir, {
      runtime,
      quantize: 'int8',
      keepFloat: (m) => m.endsWith('.ff.net.2') || m === 'transformer_blocks.0.attn1.to_q',
    });
    try {
      const kept = [...(all.int8Modules ?? [])].filter(
        (m) => m.endsWith('.ff.net.2') || m === 'transformer_blocks.0.attn1.to_q',
      );
      assert.ok(kept.length >= 2, 'the default quantizes them');
      assert.deepEqual(
        [...(some.int8Modules ?? [])].sort(),
        [...(all.int8Modules ?? [])].filter((m) => !kept.includes(m)).sort(),
      );
    } finally {
      await all.close();
      await some.close();
    }
  });

  it("rejects a quantize value other than 'int8'", async () => {
    assert.throws(
      () => checkQuantizeOption('int4', 'generate'),
      (e: unknown) => {
        assert.ok(e instanceof OptionError);
        assert.match(e.message, /generate: quantize must be 'int8' or absent, got "int4"/);
        return true;
      },
    );
    await assert.rejects(
      PixArtTransformer2DModel.fromPretrained(join(GOLDEN, 'models/pixart_alpha_tiny/model'), {
        runtime,
        quantize: 'int4' as 'int8',
      }),
      /quantize must be 'int8' or absent, got "int4"/,
    );
  });
});

describe("AutoencoderKL and quantize: 'int8'", () => {
  it('stays float32 and says so in a QUANTIZE_IGNORED warning; a bad value is an error', async () => {
    const dir = join(GOLDEN, 'models/vae_kl_tiny/model');
    const warnings: VelodiffWarning[] = [];
    const vae = await AutoencoderKL.fromPretrained(dir, {
      runtime,
      quantize: 'int8',
      onWarning: (w) => warnings.push(w),
    });
    await vae.close();
    assert.deepEqual(
      warnings.map((w) => w.code),
      ['QUANTIZE_IGNORED'],
    );
    assert.match(warnings[0].message, /the VAE stays float32/);
    const quiet: VelodiffWarning[] = [];
    await (await AutoencoderKL.fromPretrained(dir, { runtime, onWarning: (w) => quiet.push(w) })).close();
    assert.equal(quiet.length, 0);
    await assert.rejects(
      AutoencoderKL.fromPretrained(dir, { runtime, quantize: 'fp8' as 'int8' }),
      /quantize must be 'int8' or absent, got "fp8"/,
    );
  });
});

describe('int8 convolutions', () => {
  it('are chosen where they pay: k×k (k > 1), stride 1, no groups, ≥ 64 channels each side, not kept float', () => {
    const conv = (modulePath: string, inF: number, outF: number, k: number, capable = true) => ({
      modulePath,
      inFeatures: inF,
      outFeatures: outF,
      inputRank: 4,
      kernel: [k, k] as const,
      int8Capable: capable,
    });
    const sites = [
      conv('conv_in', 4, 320, 3),
      conv('down_blocks.0.resnets.0.conv1', 320, 320, 3),
      conv('down_blocks.0.resnets.0.conv1', 320, 320, 3), // met twice (two step graphs): once
      conv('down_blocks.0.downsamplers.0.conv', 320, 320, 3, false), // stride 2
      conv('down_blocks.1.resnets.0.conv_shortcut', 320, 640, 1),
      conv('up_blocks.3.resnets.2.conv2', 320, 320, 3),
      conv('conv_out', 320, 4, 3),
      conv('small', INT8_CONV_MIN_CHANNELS - 1, 320, 3),
      { modulePath: 'proj', inFeatures: 320, outFeatures: 320, inputRank: 3 },
    ];
    const chosen = selectInt8Layers(sites, (m) => m.startsWith('up_blocks.3'));
    assert.deepEqual(
      chosen.map((s) => s.modulePath),
      ['down_blocks.0.resnets.0.conv1', 'proj'],
    );
  });

  it('a Linear on [B, C] vectors is int8 only where the class names it (vectorInt8), and keepFloat still wins', () => {
    const linear = (modulePath: string, inputRank: number) => ({
      modulePath,
      inFeatures: 32,
      outFeatures: 192,
      inputRank,
    });
    const sites = [
      linear('time_text_embed.timestep_embedder.linear_1', 2),
      linear('transformer_blocks.0.norm1.linear', 2),
      linear('transformer_blocks.1.norm1.linear', 2),
      linear('transformer_blocks.0.attn.to_q', 3),
    ];
    const modulation = (m: string): boolean => m.endsWith('.norm1.linear');
    assert.deepEqual(
      selectInt8Layers(sites, () => false).map((s) => s.modulePath),
      ['transformer_blocks.0.attn.to_q'],
    );
    assert.deepEqual(
      selectInt8Layers(sites, (m) => m.startsWith('transformer_blocks.1'), modulation).map(
        (s) => s.modulePath,
      ),
      ['transformer_blocks.0.norm1.linear', 'transformer_blocks.0.attn.to_q'],
    );
  });

  it('a UNet folder with int8 resnet convolutions (velodiff format) loads and stays near diffusers’ output', async (t) => {
    // The tiny UNet is 8–16 channels wide, under the at-load threshold: its resnet convolutions are
    // quantized here by hand, as `velodiff quantize` writes them, and loaded from the folder.
    const fixture = join(GOLDEN, 'models/unet2d_sd15_tiny');
    const dir = await copyModel(join(fixture, 'model'));
    const modules: string[] = [];
    await editWeights(join(dir, 'diffusion_pytorch_model.safetensors'), (tensors) => {
      for (const [name, t] of [...tensors]) {
        if (!/resnets\.\d+\.conv[12]\.weight$/.test(name)) continue;
        assert.equal(t.dtype, 'F32');
        const [out, inC, kh, kw] = t.shape;
        const w = new Float32Array(t.bytes.slice().buffer);
        const { q, scale } = quantizeInt8Rows(w, out, inC * kh * kw, name);
        tensors.set(name, { dtype: 'I8', shape: t.shape, bytes: new Uint8Array(q.buffer) });
        tensors.set(`${name}_scale`, { dtype: 'F32', shape: [out], bytes: new Uint8Array(scale.buffer) });
        modules.push(name.slice(0, -'.weight'.length));
      }
    });
    assert.ok(modules.length >= 10, `${modules.length} resnet convolutions`);
    await patchConfig(dir, { quantization_config: int8QuantizationConfig(modules) });
    const model = await UNet2DConditionModel.fromPretrained(dir, { runtime });
    const float = await UNet2DConditionModel.fromPretrained(join(fixture, 'model'), { runtime });
    try {
      assert.deepEqual([...(model.int8Modules ?? [])].sort(), [...modules].sort());
      const inputs: Record<string, HostTensor> = await readAllTensors(join(fixture, 'inputs.safetensors'));
      const golden = await GoldenFixture.load(fixture);
      const q = (await model.forward(inputs)).sample.data as Float32Array;
      const f = (await float.forward(inputs)).sample.data as Float32Array;
      const scale = Math.max(...Array.from(f, Math.abs));
      const rel = relativeError(q, f);
      golden.check('sample', q, { bound: 0.05 * scale, what: 'UNet with int8 convolutions' });
      t.diagnostic(
        `int8 convolutions vs fp32: max rel ${rel.toExponential(2)} (bound 0.05, about 3× the 1.85e-2 measured)`,
      );
      assert.ok(rel > 1e-4, `the int8 convolutions ran: the output differs from fp32 by only ${rel}`);
    } finally {
      await model.close();
      await float.close();
    }
  });
});
