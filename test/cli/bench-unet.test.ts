/**
 * `velodiff bench unet --json` on a tiny one-level SD 1.5-shaped UNet: the contract's keys on the last
 * line, and the step's FLOPs against a count made here by hand from the module shapes of diffusers'
 * UNet2DConditionModel (so the graph counter is checked, not only present). No timing is asserted.
 */
import assert from 'node:assert/strict';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, it } from 'node:test';

import { useTempCacheDir } from '../helpers.js';
import { seededUniform, testSeed } from '../random.js';
import { captureCli } from './capture.js';

interface Tiny {
  channels: number;
  layersPerBlock: number;
  crossAttentionDim: number;
  height: number;
  width: number;
}

/**
 * FLOPs (2 per multiply-add) of one step of a one-level UNet (CrossAttnDownBlock2D,
 * UNetMidBlock2DCrossAttn, CrossAttnUpBlock2D, no resampling), batch 2, 77 text tokens, 8 heads,
 * conv proj_in/proj_out, GEGLU feed-forward: written from the module list, not from the graph.
 */
function handCountedFlops(t: Tiny): { matmul: number; conv: number; attention: number } {
  const B = 2;
  const L = 77;
  const C = t.channels;
  const D = t.crossAttentionDim;
  const N = t.height * t.width;
  const temb = 4 * C; // time_embed_dim = 4 · block_out_channels[0]
  const conv3 = (cin: number, cout: number): number => 2 * B * N * cout * cin * 9;
  const conv1 = (cin: number, cout: number): number => 2 * B * N * cout * cin;
  let matmul = 2 * B * C * temb + 2 * B * temb * temb; // time_embedding.linear_1, linear_2
  let conv = conv3(4, C) + conv3(C, 4); // conv_in, conv_out
  let attention = 0;
  const resnet = (cin: number): void => {
    conv += conv3(cin, C) + conv3(C, C) + (cin !== C ? conv1(cin, C) : 0); // conv1, conv2, conv_shortcut
    matmul += 2 * B * temb * C; // time_emb_proj
  };
  const transformer = (): void => {
    conv += 2 * conv1(C, C); // proj_in, proj_out (1×1 convs)
    matmul +=
      4 * (2 * B * N * C * C) + // attn1 to_q, to_k, to_v, to_out
      2 * (2 * B * N * C * C) + // attn2 to_q, to_out
      2 * (2 * B * L * D * C) + // attn2 to_k, to_v on the text
      2 * B * N * C * 8 * C + // ff GEGLU proj C → 2 · 4C
      2 * B * N * 4 * C * C; // ff out 4C → C
    attention += 2 * 2 * B * N * N * C + 2 * 2 * B * N * L * C; // q·kᵀ and p·v, self then cross
  };
  for (let i = 0; i < t.layersPerBlock; i++) {
    resnet(C);
    transformer();
  }
  // Mid block: resnet, transformer, resnet.
  resnet(C);
  transformer();
  resnet(C);
  // Up block: layers_per_block + 1 resnets, each on its input concatenated with one skip state of C.
  for (let i = 0; i <= t.layersPerBlock; i++) {
    resnet(2 * C);
    transformer();
  }
  return { matmul, conv, attention };
}

const cacheDir = useTempCacheDir('velodiff-bench-unet-');

describe('velodiff bench unet --json', () => {
  it('prints {latent, ms, gflops, matmul_gflops, fraction, …} last, with the FLOPs counted by hand', async () => {
    const uniform = seededUniform(testSeed('bench unet tiny config'));
    const pick = <T>(choices: readonly T[]): T => choices[Math.floor(uniform() * choices.length)];
    const tiny: Tiny = {
      channels: pick([32, 64]),
      layersPerBlock: pick([1, 2]),
      crossAttentionDim: pick([8, 16, 24]),
      height: pick([5, 8, 9]),
      width: pick([6, 8]),
    };
    const argv = [
      'bench',
      'unet',
      '--channels',
      String(tiny.channels),
      '--levels',
      '1',
      '--layers-per-block',
      String(tiny.layersPerBlock),
      '--cross-attention-dim',
      String(tiny.crossAttentionDim),
      '--latent',
      `${tiny.height}x${tiny.width}`,
      '--reps',
      '1',
      '--json',
    ];
    const { code, out, err } = await captureCli(argv);
    assert.equal(code, 0, err);
    const result = JSON.parse(out.trim().split('\n').pop() as string) as Record<string, unknown>;
    assert.deepEqual(Object.keys(result).slice(0, 5), [
      'latent',
      'ms',
      'gflops',
      'matmul_gflops',
      'fraction',
    ]);
    assert.equal(result.latent, `${tiny.height}x${tiny.width}`);
    const numbers = result as Record<string, number>;
    for (const key of ['ms', 'gflops', 'matmul_gflops', 'fraction', 'conv_gflops', 'peak_rss_mb'])
      assert.ok(Number.isFinite(numbers[key]) && numbers[key] > 0, `${key} = ${numbers[key]}`);
    assert.ok(
      Math.abs(numbers.fraction - numbers.gflops / numbers.matmul_gflops) <= 1e-9 * numbers.fraction,
      'fraction = gflops / matmul_gflops',
    );

    const expected = handCountedFlops(tiny);
    assert.equal(numbers.matmul_flops, expected.matmul, 'MatMul FLOPs');
    assert.equal(numbers.conv_flops, expected.conv, 'Conv FLOPs');
    assert.equal(numbers.attention_flops, expected.attention, 'attention FLOPs');
    assert.equal(numbers.flops, expected.matmul + expected.conv + expected.attention);
    const gflopsFromMs = numbers.flops / numbers.ms / 1e6;
    assert.ok(Math.abs(numbers.gflops - gflopsFromMs) <= 1e-9 * gflopsFromMs, 'gflops = flops / ms');

    // The random model folder is cached by config: a second run reuses it, a new config adds one.
    const folders = await readdir(join(cacheDir(), 'bench'));
    assert.equal(folders.length, 1);
    const again = await captureCli(argv);
    assert.equal(again.code, 0, again.err);
    assert.match(again.err, /reusing random UNet/);
    assert.deepEqual(await readdir(join(cacheDir(), 'bench')), folders);
  });

  it('runs under the ORT settings --optimization-level and --disable-prepacking give, and says so', async () => {
    const uniform = seededUniform(testSeed('bench unet session flags'));
    const level = (['disabled', 'basic', 'extended', 'all'] as const)[Math.floor(uniform() * 4)];
    const prepacking = uniform() < 0.5;
    const argv = ['bench', 'unet', '--channels', '32', '--levels', '1', '--layers-per-block', '1'];
    argv.push('--cross-attention-dim', '8', '--latent', '4x4', '--reps', '1', '--warmups', '0');
    argv.push('--optimization-level', level, ...(prepacking ? [] : ['--disable-prepacking']), '--json');
    const { code, out, err } = await captureCli(argv);
    assert.equal(code, 0, err);
    const result = JSON.parse(out.trim().split('\n').pop() as string) as Record<string, unknown>;
    assert.equal(result.optimization_level, level);
    assert.equal(result.disable_prepacking, !prepacking);
    assert.ok(err.includes(`ORT level ${level}, ${prepacking ? 'prepacking' : 'no prepacking'}`), err);
    if (process.platform === 'linux') {
      const [row] = result.rows as { private_mb: number; peak_rss_mb: number }[];
      assert.ok(row.private_mb > 0 && row.private_mb <= row.peak_rss_mb, `private ${row.private_mb} MB`);
    }

    const bad = await captureCli(['bench', 'unet', '--optimization-level', 'fast', '--json']);
    assert.equal(bad.code, 2);
    assert.match(bad.err, /--optimization-level must be disabled, basic, extended, all, got "fast"/);
    const valued = await captureCli(['bench', 'unet', '--disable-prepacking=1']);
    assert.equal(valued.code, 2);
    assert.match(valued.err, /--disable-prepacking takes no value/);
  });

  it('rejects bad latent sizes and level counts with exit code 2', async () => {
    const latent = await captureCli(['bench', 'unet', '--latent', '64x', '--json']);
    assert.equal(latent.code, 2);
    assert.match(latent.err, /--latent must be sizes HxW/);
    const levels = await captureCli(['bench', 'unet', '--levels', '5', '--json']);
    assert.equal(levels.code, 2);
    assert.match(levels.err, /levels must be 1–4/);
    assert.equal((await captureCli(['bench', 'unet', '--reps', '0'])).code, 2);
  });
});
