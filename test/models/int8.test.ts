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
import { checkQuantizeOption } from '../../src/models/int8.js';
import type { DiffusersModel, LoadOptions } from '../../src/models/model.js';
import { PixArtTransformer2DModel } from '../../src/models/pixart-transformer.js';
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
