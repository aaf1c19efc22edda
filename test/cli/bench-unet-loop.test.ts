/**
 * `velodiff bench unet-loop --json` on a tiny one-level SD 1.5-shaped UNet: the rows' keys, the step
 * graphs each variant ran against schedules written here from methods/tgate_flash.md §1.3 and §1.6
 * (T-GATE's plan, DeepCache's full/skip steps and their restarts at the gate), and every step's
 * FLOPs against a count made by hand from the module shapes of diffusers' UNet2DConditionModel.
 * No timing is asserted beyond the ratios being the ones the row's own figures give.
 */
import assert from 'node:assert/strict';
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
  cacheBranchId: number;
}

/** What one step of a loop runs: its batch, T-GATE's actions, DeepCache's step kind. */
interface StepKind {
  batch: number;
  tgate: { selfAttention: string; crossAttention: string; average: boolean } | null;
  deep: 'full' | 'skip' | null;
}

const STEPS = 7;
const GATE = 5;
const INTERVAL = 2;

const plainStep = (batch: number): StepKind => ({ batch, tgate: null, deep: null });
const gated = (
  batch: number,
  sa: string,
  ca: string,
  average = false,
  deep: StepKind['deep'] = null,
): StepKind => ({
  batch,
  tgate: { selfAttention: sa, crossAttention: ca, average },
  deep,
});

/**
 * The schedules of 7 steps, gate 5, DeepCache every 2nd step: T-GATE with the authors' SD defaults
 * (warm-up 2, sp_interval 5: self-attention stored at step 2 and reused at 3; cross-attention stored
 * as the CFG mean at 4 and reused at batch 1 from 5; stores nobody reads dropped); with DeepCache,
 * sp_interval 1 and warm-up 0 (no self-attention reuse) and DeepCache restarted at steps 4 and 5.
 */
const SCHEDULES: Record<string, StepKind[]> = {
  plain: Array.from({ length: STEPS }, () => plainStep(2)),
  tgate: [
    gated(2, 'compute', 'compute'),
    gated(2, 'compute', 'compute'),
    gated(2, 'store', 'compute'),
    gated(2, 'reuse', 'compute'),
    gated(2, 'compute', 'store', true),
    gated(1, 'compute', 'reuse'),
    gated(1, 'compute', 'reuse'),
  ],
  deepcache: ['full', 'skip', 'full', 'skip', 'full', 'skip', 'full'].map((deep) => ({
    batch: 2,
    tgate: null,
    deep: deep as StepKind['deep'],
  })),
  'tgate+deepcache': [
    gated(2, 'compute', 'compute', false, 'full'),
    gated(2, 'compute', 'compute', false, 'skip'),
    gated(2, 'compute', 'compute', false, 'full'),
    gated(2, 'compute', 'compute', false, 'skip'),
    gated(2, 'compute', 'store', true, 'full'),
    gated(1, 'compute', 'reuse', false, 'full'),
    gated(1, 'compute', 'reuse', false, 'skip'),
  ],
};

/**
 * FLOPs (2 per multiply-add) of one step of a one-level UNet (CrossAttnDownBlock2D,
 * UNetMidBlock2DCrossAttn, CrossAttnUpBlock2D, no resampling), 77 text tokens, conv proj_in/proj_out,
 * GEGLU feed-forward: written from the module list, not from the graph. A reused attention costs
 * nothing; a DeepCache skip step with branch b runs conv_in, the time embedding, down layers 0 … b − 1,
 * the last b + 1 up layers and conv_out (the authors' is_skip_step on this UNet).
 */
function handCountedFlops(t: Tiny, step: StepKind): number {
  const B = step.batch;
  const L = 77;
  const C = t.channels;
  const D = t.crossAttentionDim;
  const N = t.height * t.width;
  const temb = 4 * C; // time_embed_dim = 4 · block_out_channels[0]
  const conv3 = (cin: number, cout: number): number => 2 * B * N * cout * cin * 9;
  const conv1 = (cin: number, cout: number): number => 2 * B * N * cout * cin;
  const resnet = (cin: number): number =>
    conv3(cin, C) + conv3(C, C) + (cin !== C ? conv1(cin, C) : 0) + 2 * B * temb * C; // + time_emb_proj
  const selfAttention = 4 * (2 * B * N * C * C) + 2 * 2 * B * N * N * C; // to_q/k/v/out, q·kᵀ, p·v
  const crossAttention = 2 * (2 * B * N * C * C) + 2 * (2 * B * L * D * C) + 2 * 2 * B * N * L * C;
  const transformer =
    2 * conv1(C, C) + // proj_in, proj_out (1×1 convs)
    2 * B * N * C * 8 * C + // ff GEGLU proj C → 2 · 4C
    2 * B * N * 4 * C * C + // ff out 4C → C
    (step.tgate?.selfAttention === 'reuse' ? 0 : selfAttention) +
    (step.tgate?.crossAttention === 'reuse' ? 0 : crossAttention);
  const outer = conv3(4, C) + conv3(C, 4) + 2 * B * C * temb + 2 * B * temb * temb; // conv_in/out, time_embedding
  const layers = t.layersPerBlock;
  if (step.deep === 'skip') {
    const down = Math.min(t.cacheBranchId, layers);
    const up = Math.min(t.cacheBranchId + 1, layers + 1);
    return outer + down * (resnet(C) + transformer) + up * (resnet(2 * C) + transformer);
  }
  const mid = 2 * resnet(C) + transformer;
  // Up resnets take their input concatenated with one skip state of C.
  return outer + layers * (resnet(C) + transformer) + mid + (layers + 1) * (resnet(2 * C) + transformer);
}

interface Graph {
  graph: string;
  batch: number;
  steps: number;
  at: number[];
  flops: number;
  tgate: StepKind['tgate'];
  deep_cache: { cacheBranchId: number; step: 'full' | 'skip' } | null;
}

interface Row {
  variant: string;
  ms: number;
  speedup: number;
  gflop: number;
  ceiling: number;
  of_ceiling: number;
  id: string;
  graphs: Graph[];
}

const close = (a: number, b: number, what: string): void =>
  assert.ok(Math.abs(a - b) <= 1e-12 * Math.abs(b), `${what}: ${a} ≠ ${b}`);

useTempCacheDir('velodiff-bench-unet-loop-');

function tinyFlags(t: Tiny): string[] {
  return [
    '--channels',
    String(t.channels),
    '--levels',
    '1',
    '--layers-per-block',
    String(t.layersPerBlock),
    '--cross-attention-dim',
    String(t.crossAttentionDim),
    '--threads',
    '1',
  ];
}

describe('velodiff bench unet-loop --json', () => {
  it('runs plain, T-GATE, DeepCache and both, with each step graph counted as the hand count says', async () => {
    const uniform = seededUniform(testSeed('bench unet-loop tiny config'));
    const pick = <T>(choices: readonly T[]): T => choices[Math.floor(uniform() * choices.length)];
    const tiny: Tiny = {
      channels: pick([32, 64]),
      layersPerBlock: pick([1, 2]),
      crossAttentionDim: pick([8, 16, 24]),
      height: pick([4, 5, 8]),
      width: pick([6, 8]),
      cacheBranchId: pick([0, 1]),
    };
    const { code, out, err } = await captureCli([
      'bench',
      'unet-loop',
      ...tinyFlags(tiny),
      '--latent',
      `${tiny.height}x${tiny.width}`,
      '--steps',
      String(STEPS),
      '--gate',
      String(GATE),
      '--cache-interval',
      String(INTERVAL),
      '--cache-branch',
      String(tiny.cacheBranchId),
      '--reps',
      '1',
      '--json',
    ]);
    assert.equal(code, 0, err);
    const result = JSON.parse(out.trim().split('\n').pop() as string) as Record<string, unknown>;
    assert.deepEqual(Object.keys(result).slice(0, 6), [
      'steps',
      'gate_step',
      'cache_interval',
      'cache_branch',
      'latent',
      'rows',
    ]);
    assert.deepEqual(
      [result.steps, result.gate_step, result.cache_interval, result.cache_branch, result.latent],
      [STEPS, GATE, INTERVAL, tiny.cacheBranchId, `${tiny.height}x${tiny.width}`],
    );
    const rows = result.rows as Row[];
    assert.deepEqual(
      rows.map((r) => r.variant),
      [
        'plain',
        `T-GATE gate ${GATE}`,
        `DeepCache N=${INTERVAL} branch ${tiny.cacheBranchId}`,
        'T-GATE+DeepCache',
      ],
    );
    for (const row of rows)
      assert.deepEqual(Object.keys(row).slice(0, 6), [
        'variant',
        'ms',
        'speedup',
        'gflop',
        'ceiling',
        'of_ceiling',
      ]);

    const loopFlops: number[] = [];
    for (const row of rows) {
      // The graphs' steps, back in step order, against the schedule and the hand count.
      const ran: (StepKind & { flops: number })[] = [];
      for (const g of row.graphs) {
        assert.equal(g.steps, g.at.length, `${row.id}: ${g.graph}`);
        for (const i of g.at) {
          assert.equal(ran[i], undefined, `${row.id}: step ${i} counted twice`);
          ran[i] = { batch: g.batch, tgate: g.tgate, deep: g.deep_cache?.step ?? null, flops: g.flops };
          if (g.deep_cache) assert.equal(g.deep_cache.cacheBranchId, tiny.cacheBranchId);
        }
      }
      const schedule = SCHEDULES[row.id];
      assert.deepEqual(
        ran.map(({ batch, tgate, deep }) => ({ batch, tgate, deep })),
        schedule,
        `${row.id}: step kinds`,
      );
      schedule.forEach((step, i) =>
        assert.equal(ran[i].flops, handCountedFlops(tiny, step), `${row.id}: FLOPs of step ${i}`),
      );
      const total = schedule.reduce((sum, step) => sum + handCountedFlops(tiny, step), 0);
      close(row.gflop, total / 1e9, `${row.id}: gflop`);
      loopFlops.push(total);
    }
    // What each acceleration removes, on the counts the benchmark reported.
    const flopsAt = (id: string, step: number): number =>
      (rows.find((r) => r.id === id) as Row).graphs.find((g) => g.at.includes(step))?.flops as number;
    const plainStepFlops = flopsAt('plain', 0);
    assert.equal(plainStepFlops, handCountedFlops(tiny, plainStep(2)));
    assert.ok(
      flopsAt('tgate', GATE) < plainStepFlops / 2,
      "T-GATE's post-gate step: batch 1, no cross-attention",
    );
    assert.ok(flopsAt('tgate', 3) < plainStepFlops, "T-GATE's self-attention reuse");
    assert.ok(flopsAt('deepcache', 1) < plainStepFlops, "DeepCache's skip step");
    assert.ok(flopsAt('tgate+deepcache', STEPS - 1) < flopsAt('deepcache', 1), 'a skip step after the gate');
    for (const total of loopFlops.slice(1)) assert.ok(total < loopFlops[0]);

    const [plain] = rows;
    assert.equal(plain.speedup, 1);
    assert.equal(plain.ceiling, 1);
    for (const row of rows) {
      assert.ok(Number.isFinite(row.ms) && row.ms > 0, `${row.id}: ms = ${row.ms}`);
      close(row.speedup, plain.ms / row.ms, `${row.id}: speedup`);
      close(row.ceiling, plain.gflop / row.gflop, `${row.id}: ceiling`);
      close(row.of_ceiling, row.speedup / row.ceiling, `${row.id}: of_ceiling`);
    }
    // One session per distinct step layout (T-GATE's plain-looking steps are layouts of their own).
    const layouts = Object.values(SCHEDULES).flatMap((steps) =>
      steps.map((k) => JSON.stringify([k.tgate, k.deep])),
    );
    assert.equal(result.step_graphs, new Set(layouts).size);
    assert.match(String(result.command), /^npx velodiff bench unet-loop --latent /);
  });

  it('runs every variant under the ORT settings of --optimization-level and --disable-prepacking', async () => {
    const uniform = seededUniform(testSeed('bench unet-loop session flags'));
    const level = (['disabled', 'basic', 'extended'] as const)[Math.floor(uniform() * 3)];
    const tiny: Tiny = {
      channels: 32,
      layersPerBlock: 1,
      crossAttentionDim: 8,
      height: 4,
      width: 4,
      cacheBranchId: 0,
    };
    const { code, out, err } = await captureCli([
      'bench',
      'unet-loop',
      ...tinyFlags(tiny),
      '--latent',
      '4x4',
      '--steps',
      '3',
      '--gate',
      '2',
      '--cache-interval',
      '2',
      '--optimization-level',
      level,
      '--disable-prepacking',
      '--json',
    ]);
    assert.equal(code, 0, err);
    const result = JSON.parse(out.trim().split('\n').pop() as string) as Record<string, unknown>;
    assert.equal(result.optimization_level, level);
    assert.equal(result.disable_prepacking, true);
    assert.ok(err.includes(`ORT level ${level}, no prepacking`), err);
    assert.match(String(result.command), new RegExp(` --optimization-level ${level} --disable-prepacking$`));
    const rows = result.rows as (Row & { rss_mb: number; private_mb: number })[];
    assert.equal(rows.length, 4);
    if (process.platform === 'linux')
      for (const row of rows) assert.ok(row.private_mb > 0 && row.private_mb <= row.rss_mb, row.id);

    const bad = await captureCli(['bench', 'unet-loop', '--optimization-level', 'layout']);
    assert.equal(bad.code, 2);
    assert.match(bad.err, /bench unet-loop: --optimization-level must be disabled, basic, extended, all/);
  });

  it('rejects a gate past the last step, several latents and a branch deeper than the UNet', async () => {
    const gate = await captureCli(['bench', 'unet-loop', '--steps', '4', '--gate', '5', '--json']);
    assert.equal(gate.code, 2);
    assert.match(gate.err, /--gate 5 is past the last of --steps 4/);
    const latents = await captureCli(['bench', 'unet-loop', '--latent', '16x16,32x32']);
    assert.equal(latents.code, 2);
    assert.match(latents.err, /--latent must be one size HxW/);
    assert.equal((await captureCli(['bench', 'unet-loop', '--cache-branch', '-1'])).code, 2);
    assert.equal((await captureCli(['bench', 'unet-loop', '--cache-interval', '0'])).code, 2);
    const tiny: Tiny = {
      channels: 32,
      layersPerBlock: 1,
      crossAttentionDim: 8,
      height: 4,
      width: 4,
      cacheBranchId: 3,
    };
    const branch = await captureCli([
      'bench',
      'unet-loop',
      ...tinyFlags(tiny),
      '--latent',
      '4x4',
      '--cache-branch',
      '3',
      '--json',
    ]);
    assert.equal(branch.code, 2);
    assert.match(branch.err, /cacheBranchId 3 is in down block 1, but this UNet has 1/);
  });
});
