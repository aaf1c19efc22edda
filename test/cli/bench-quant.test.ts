/**
 * `velodiff bench quant --tiny --json`: the contract's keys first on the last line, the int8 outputs
 * finite and close to float32's, the encoder's loads run in processes of their own with int8 Linear
 * modules where asked, and the per-layer fit through them. No timing is asserted.
 */
import assert from 'node:assert/strict';
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';

import type { QuantDenoiserRow } from '../../bench/quant.js';
import { cpuInt8FromFlags, relativeL2 } from '../../bench/quant.js';
import { tinyPixArtPipeline } from '../fixtures/tiny-pixart-pipeline.js';
import { useTempCacheDir } from '../helpers.js';
import { seededUniform, testSeed } from '../random.js';
import { captureCli } from './capture.js';

const cacheDir = useTempCacheDir('velodiff-bench-quant-');

type Row = QuantDenoiserRow;

interface T5Row {
  dtype: 'fp32' | 'int8';
  layers: number;
  peak_rss_mb: number;
  load_peak_mb: number;
  encode_peak_mb: number;
  int8_modules: number;
}

interface Fit {
  base_mb: number;
  per_layer_mb: number;
  at_24_mb: number;
}

describe('velodiff bench quant --json', () => {
  it('prints {tokens, fp32_ms, int8_ms, speedup, cpu_int8, …} last, int8 error finite and small', async () => {
    const uniform = seededUniform(testSeed('bench quant tiny'));
    const tokens = [[16, 64], [64], [36, 16]][Math.floor(uniform() * 3)];
    const t5Layers = 2 + Math.floor(uniform() * 2);
    const argv = [
      'bench',
      'quant',
      '--tiny',
      '--tokens',
      tokens.join(','),
      '--layers',
      '2',
      '--image-seeds',
      '0',
    ];
    argv.push('--t5-layers', String(t5Layers), '--reps', '1', '--warmups', '0', '--json');
    const { code, out, err } = await captureCli(argv);
    assert.equal(code, 0, err);
    const result = JSON.parse(out.trim().split('\n').pop() as string) as Record<string, unknown>;
    assert.deepEqual(Object.keys(result).slice(0, 5), [
      'tokens',
      'fp32_ms',
      'int8_ms',
      'speedup',
      'cpu_int8',
    ]);

    // No 1024-token row here: the contract's keys come from the first size.
    assert.equal(result.tokens, tokens[0]);
    const rows = result.rows as Row[];
    assert.deepEqual(
      rows.map((r) => r.tokens),
      tokens,
    );
    for (const r of rows) {
      const side = Math.sqrt(r.tokens) * 2;
      assert.equal(r.latent, `${side}x${side}`, 'patch 2');
      for (const key of ['fp32_ms', 'int8_ms', 'speedup', 'fp32_gflops', 'int8_gflops'] as const)
        assert.ok(Number.isFinite(r[key]) && r[key] > 0, `${key} = ${r[key]}`);
      assert.ok(
        Math.abs(r.speedup - r.fp32_ms / r.int8_ms) <= 1e-9 * r.speedup,
        'speedup = fp32_ms / int8_ms',
      );
      assert.ok(Math.abs(r.int8_gflops - r.flops / r.int8_ms / 1e6) <= 1e-9 * r.int8_gflops);
      // int8 differs from float32 (the Linears did run in int8), by little.
      assert.ok(Number.isFinite(r.rel_l2) && r.rel_l2 > 0 && r.rel_l2 < 0.05, `rel_l2 = ${r.rel_l2}`);
    }
    assert.equal(result.fp32_ms, rows[0].fp32_ms);
    assert.equal(result.rel_l2, rows[0].rel_l2);
    assert.ok((result.int8_modules as number) > 0);

    // The CPU's int8 units, from /proc/cpuinfo as read here.
    if (process.platform === 'linux') {
      const flags =
        /^flags\s*:(.*)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1].trim().split(/\s+/) ?? [];
      const expected = flags.some((f) => f.startsWith('amx_'))
        ? 'amx'
        : flags.includes('avx512_vnni') || flags.includes('avx_vnni')
          ? 'vnni'
          : 'none';
      assert.equal(result.cpu_int8, expected);
    } else assert.equal(result.cpu_int8, 'none');

    // The encoder: fp32 and int8 at 1 and N layers, each load in its own process.
    const t5 = result.t5 as { rows: T5Row[]; fit: { fp32: Fit; int8: Fit }; rel_l2: number };
    assert.deepEqual(
      t5.rows.map((r) => [r.dtype, r.layers]),
      [
        ['fp32', 1],
        ['int8', 1],
        ['fp32', t5Layers],
        ['int8', t5Layers],
      ],
    );
    // T5's seven Linears per block (q, k, v, o, wi_0, wi_1, wo) run on [B, S, ·] inputs: all int8.
    for (const r of t5.rows) {
      assert.equal(r.int8_modules, r.dtype === 'int8' ? 7 * r.layers : 0, `${r.dtype} ${r.layers}`);
      assert.ok(r.peak_rss_mb > 0);
    }
    for (const dtype of ['fp32', 'int8'] as const) {
      const [low, high] = t5.rows.filter((r) => r.dtype === dtype);
      const fit = t5.fit[dtype];
      // Each phase (load, encode) is a line through 1 and N layers; the fit is the phase larger at 24.
      const lines = (['load_peak_mb', 'encode_peak_mb'] as const).map((key) => {
        const perLayer = (high[key] - low[key]) / (t5Layers - 1);
        return { perLayer, base: low[key] - perLayer, at24: low[key] - perLayer + 24 * perLayer };
      });
      const expected = lines[0].at24 >= lines[1].at24 ? lines[0] : lines[1];
      assert.ok(Math.abs(fit.per_layer_mb - expected.perLayer) < 1e-6, dtype);
      assert.ok(Math.abs(fit.base_mb - expected.base) < 1e-6, dtype);
      assert.ok(Math.abs(fit.at_24_mb - (fit.base_mb + 24 * fit.per_layer_mb)) < 1e-6, dtype);
      for (const r of [low, high]) {
        assert.equal(r.peak_rss_mb, Math.max(r.load_peak_mb, r.encode_peak_mb), `${dtype} ${r.layers}`);
      }
    }
    assert.equal(result.t5_int8_rss_24_mb, t5.fit.int8.at_24_mb);
    assert.ok(Number.isFinite(t5.rel_l2) && t5.rel_l2 > 0 && t5.rel_l2 < 0.05, `t5 rel_l2 = ${t5.rel_l2}`);

    // Three cached folders (the denoiser, the encoder at 1 and N layers), none left half-written.
    const folders = readdirSync(join(cacheDir(), 'bench'));
    assert.equal(folders.length, 3, folders.join(', '));
    assert.ok(!folders.some((f) => f.includes('.tmp-')));
    assert.match(String(result.command), /^npx velodiff bench quant --tokens /);
  });

  it('rejects --t5-layers 1, unknown parts and non-square token counts with exit code 2', async () => {
    const one = await captureCli(['bench', 'quant', '--tiny', '--t5-layers', '1', '--image-seeds', '0']);
    assert.equal(one.code, 2);
    assert.match(one.err, /--t5-layers must be 0 \(skip the encoder\) or ≥ 2/);
    const only = await captureCli(['bench', 'quant', '--only', 'vae']);
    assert.equal(only.code, 2);
    assert.match(only.err, /--only must be denoiser, t5 or images, got "vae"/);
    const tokens = await captureCli(['bench', 'quant', '--tokens', '100,50']);
    assert.equal(tokens.code, 2);
    assert.match(tokens.err, /--tokens must be square numbers/);
  });
});

describe('cpuInt8FromFlags and relativeL2', () => {
  it('names AMX before VNNI before none', () => {
    assert.equal(cpuInt8FromFlags(['sse2', 'avx512_vnni', 'amx_tile', 'amx_int8']), 'amx');
    assert.equal(cpuInt8FromFlags(['avx2', 'avx_vnni']), 'vnni');
    assert.equal(cpuInt8FromFlags(['avx512f', 'avx512_vnni']), 'vnni');
    assert.equal(cpuInt8FromFlags(['avx2', 'avx512f', 'avx512_bf16']), 'none');
    assert.equal(cpuInt8FromFlags([]), 'none');
  });

  it('is ‖a − b‖ / ‖b‖', () => {
    assert.equal(relativeL2([3, 4], [0, 5]), Math.sqrt(9 + 1) / 5);
    assert.equal(relativeL2([1, 2], [1, 2]), 0);
  });
});

describe('velodiff bench quant --only images', () => {
  it("gives the PSNR and SSIM of each int8 image against its float32 twin, from the pipeline's own runs", async () => {
    const model = await tinyPixArtPipeline();
    const { code, out, err } = await captureCli([
      'bench',
      'quant',
      '--tiny',
      '--only',
      'images',
      '--image-seeds',
      '2',
      '--image-model',
      model,
      '--json',
    ]);
    assert.equal(code, 0, err);
    const result = JSON.parse(out.trim().split('\n').pop() as string) as Record<string, unknown>;
    assert.equal(result.tokens, null);
    // 2 prompts × 2 seeds; the images differ (int8 ran) but stay close, and the median lies in range.
    const psnr = [result.image_psnr_min, result.image_psnr_median] as number[];
    const ssim = [result.image_ssim_min, result.image_ssim_median] as number[];
    assert.ok(psnr.every(Number.isFinite) && psnr[0] <= psnr[1] && psnr[0] > 10, `PSNR ${psnr.join(', ')}`);
    assert.ok(ssim[0] <= ssim[1] && ssim[1] <= 1 && ssim[0] > 0, `SSIM ${ssim.join(', ')}`);
    assert.match(String(result.command), /^npx velodiff bench quant --only images .*--image-seeds 2 /);
    assert.match(
      out + err,
      /lowest PSNR: "grinning face, noto style" seed [01]|lowest PSNR: "face with tears/,
    );
  });
});

describe('velodiff bench quant-unet --json', () => {
  it('times fp32, int8 Linears only and int8 with 3×3 convolutions; int8 outputs finite and near fp32', async () => {
    const { code, out, err } = await captureCli([
      'bench',
      'quant-unet',
      '--levels',
      '1',
      '--channels',
      '64',
      '--layers-per-block',
      '1',
      '--latent',
      '8x6',
      '--cross-attention-dim',
      '64',
      '--heads',
      '2',
      '--norm-groups',
      '8',
      '--reps',
      '1',
      '--warmups',
      '0',
      '--threads',
      '1',
      '--json',
    ]);
    assert.equal(code, 0, err);
    const result = JSON.parse(out.trim().split('\n').pop() as string) as {
      latent: string;
      speedup: number;
      rel_l2: number;
      convs: { channels: number; size: string; speedup: number; rel_l2: number }[];
      steps: {
        variant: string;
        int8_modules: number;
        int8_convolutions: number;
        rel_l2: number;
        ms: number;
      }[];
    };
    assert.deepEqual(Object.keys(result).slice(0, 6), [
      'latent',
      'fp32_ms',
      'int8_ms',
      'speedup',
      'linears_only_speedup',
      'rel_l2',
    ]);
    assert.equal(result.latent, '8x6');
    assert.deepEqual(
      result.convs.map((c) => [c.channels, c.size]),
      [[64, '8x6']],
    );
    assert.ok(
      result.convs[0].rel_l2 > 0 && result.convs[0].rel_l2 < 0.05,
      `conv rel L2 ${result.convs[0].rel_l2}`,
    );
    const [fp32, linears, int8] = result.steps;
    assert.deepEqual(
      result.steps.map((s) => s.variant),
      ['fp32', 'int8 linears', 'int8'],
    );
    assert.equal(fp32.int8_modules, 0);
    assert.equal(linears.int8_convolutions, 0);
    assert.ok(linears.int8_modules > 0);
    // One level, one layer: down resnet, mid's two, two up resnets, each conv1 and conv2 (64 → 64, 3×3).
    assert.equal(int8.int8_convolutions, 10);
    assert.equal(int8.int8_modules, linears.int8_modules + 10);
    for (const s of [linears, int8]) {
      assert.ok(Number.isFinite(s.ms) && s.ms > 0);
      assert.ok(s.rel_l2 > 1e-4 && s.rel_l2 < 0.1, `${s.variant}: rel L2 ${s.rel_l2}`);
    }
    assert.ok(int8.rel_l2 > linears.rel_l2, 'quantizing the convolutions too adds error');
  });
});

describe('velodiff bench quant-pipeline --tiny --json', () => {
  it('generates in fp32 and int8 in processes of their own: times, peaks, extrapolation and PSNR', async () => {
    const { code, out, err } = await captureCli([
      'bench',
      'quant-pipeline',
      '--tiny',
      '--layers',
      '2',
      '--t5-layers',
      '2',
      '--size',
      '32',
      '--steps',
      '3',
      '--threads',
      '1',
      '--json',
    ]);
    assert.equal(code, 0, err);
    const result = JSON.parse(out.trim().split('\n').pop() as string) as {
      rows: {
        dtype: string;
        step_ms: number;
        generate_ms: number;
        peak_rss_mb: number;
        peak_rss_at_24_mb: number;
        transformer_int8_modules: number;
      }[];
      speedup: number;
      psnr_db: number;
      t5_layers: number;
      steps: number;
    };
    assert.deepEqual(
      result.rows.map((r) => r.dtype),
      ['fp32', 'int8'],
    );
    const [fp32, int8] = result.rows;
    assert.equal(fp32.transformer_int8_modules, 0);
    assert.ok(int8.transformer_int8_modules > 0);
    for (const r of result.rows) {
      assert.ok(r.step_ms > 0 && r.generate_ms > r.step_ms, `${r.dtype}: times`);
      assert.ok(r.peak_rss_mb > 0 && r.peak_rss_at_24_mb > r.peak_rss_mb, `${r.dtype}: extrapolated up`);
    }
    // Different images (int8 ran), close ones (same seed, small error).
    assert.ok(Number.isFinite(result.psnr_db) && result.psnr_db > 25, `PSNR ${result.psnr_db}`);
    assert.equal(result.t5_layers, 2);
    assert.equal(result.steps, 3);
  });
});

describe('velodiff bench quant-layers --json', () => {
  it('measures each int8 Linear alone, all of them, all but the worst, and per kind', async () => {
    const dir = await tinyPixArtPipeline();
    const { code, out, err } = await captureCli([
      'bench',
      'quant-layers',
      '--model',
      dir,
      '--max-length',
      '8',
      '--worst',
      '2',
      '--threads',
      '1',
      '--json',
    ]);
    assert.equal(code, 0, err);
    const result = JSON.parse(out.trim().split('\n').pop() as string) as {
      components: {
        component: string;
        modules: number;
        all: number;
        all_but_worst: number;
        layers: { module: string; alone: number }[];
        kinds: { kind: string; modules: number; all_but_kind: number; weight_share: number }[];
        worst_share: number;
      }[];
    };
    assert.deepEqual(
      result.components.map((c) => c.component),
      ['transformer', 'text_encoder'],
    );
    for (const c of result.components) {
      assert.equal(c.layers.length, c.modules);
      assert.ok(c.modules > 2);
      // Worst first; every error positive (each module alone changes the output) and below all of them.
      for (let i = 1; i < c.layers.length; i++) assert.ok(c.layers[i - 1].alone >= c.layers[i].alone);
      for (const l of c.layers) assert.ok(l.alone > 0 && l.alone < 0.2, `${l.module}: ${l.alone}`);
      assert.ok(c.all >= c.layers[0].alone * 0.5, 'all int8 is not far below its worst single layer');
      assert.ok(c.all_but_worst < c.all, 'keeping the worst float helps');
      assert.equal(
        c.kinds.reduce((n, k) => n + k.modules, 0),
        c.modules,
      );
      const shares = c.kinds.reduce((n, k) => n + k.weight_share, 0);
      assert.ok(Math.abs(shares - 1) < 1e-9, `weight shares sum to ${shares}`);
      assert.ok(c.worst_share > 0 && c.worst_share <= 1);
    }
  });
});
