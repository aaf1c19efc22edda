import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { clearAttention } from '../src/attention/clear.js';
import { selfAttentionModule } from '../src/attention/self-attention.js';
import { clearPlan } from '../src/attention/clear-window.js';
import { LinFusionWeights } from '../src/attention/linfusion.js';
import { normalizedLinearAttention } from '../src/attention/linfusion.js';
import type { SelfAttentionLayer } from '../src/attention/types.js';
import { Graph, attention } from '../src/graph/index.js';
import type { TensorToWrite } from '../src/io/safetensors.js';
import { SafetensorsFile, writeSafetensors } from '../src/io/safetensors.js';
import { Params } from '../src/nn/params.js';
import { hostTensor } from '../src/runtime/host-tensor.js';
import { Runtime } from '../src/runtime/runtime.js';
import { median, nowMs, peakRssMb, table } from './stats.js';

/** PixArt-α width. */
const DIM = 1152;
const HEADS = 16;

export type AttentionVariant =
  { kind: 'full' } | { kind: 'clear'; radius: number; downFactor: number } | { kind: 'linfusion' };

/**
 * What is timed: 'layer' is the whole self-attention module (q/k/v/out projections, LinFusion's
 * input MLPs); 'kernel' is the attention alone, on given q, k, v [1, N, 1152].
 */
export type AttentionScope = 'layer' | 'kernel';

export interface AttentionCaseResult {
  /** Contract name: full, clear:R, clear:R:D, linfusion. */
  kind: string;
  variant: string;
  scope: AttentionScope;
  tokens: number;
  ms: number;
  gflop: number;
  gflops: number;
  peakRssMb: number;
}

export function variantName(v: AttentionVariant): string {
  if (v.kind === 'clear') return `CLEAR r=${v.radius}${v.downFactor > 1 ? ` d=${v.downFactor}` : ''}`;
  return v.kind === 'full' ? 'full attention' : 'LinFusion';
}

/** The name `bench attention --json` reports: full, clear:16, clear:16:4, linfusion. */
export function kindName(v: AttentionVariant): string {
  if (v.kind === 'clear') return `clear:${v.radius}${v.downFactor > 1 ? `:${v.downFactor}` : ''}`;
  return v.kind;
}

/** The variants every run compares: full, CLEAR r = 8/16/32 with and without d = 4, LinFusion. */
export const ATTENTION_VARIANTS: readonly AttentionVariant[] = [
  { kind: 'full' },
  ...[8, 16, 32].flatMap((radius) =>
    [1, 4].map((downFactor) => ({ kind: 'clear' as const, radius, downFactor })),
  ),
  { kind: 'linfusion' },
];

/**
 * FLOPs (2 per multiply-add) of one self-attention layer or its kernel, as the lowering executes it
 * (CLEAR: every score of every block, windows clipped at the grid's border, padding slots included).
 */
export function attentionFlops(v: AttentionVariant, side: number, scope: AttentionScope = 'layer'): number {
  const N = side * side;
  const projections = scope === 'layer' ? 2 * N * DIM * DIM * 4 : 0;
  if (v.kind === 'full') return projections + 2 * 2 * N * N * DIM;
  if (v.kind === 'linfusion') {
    // Two residual MLPs C→C→C on q and k inputs, the d×d states, Q·S and Q·K̄ (d = C/heads).
    const d = DIM / HEADS;
    const mlps = scope === 'layer' ? 2 * 2 * 2 * N * DIM * DIM : 0;
    return projections + mlps + 2 * N * DIM * d * 2 + 2 * N * DIM;
  }
  const pooled = v.downFactor > 1 ? N / (v.downFactor * v.downFactor) : 0;
  // As the chosen lowering executes it: dense masked attention for small grids, else the tiles.
  const plan = clearPlan({ height: side, width: side }, v.radius, {
    textTokens: 0,
    pooledTokens: pooled,
    numHeads: HEADS,
    channels: 2 * (DIM / HEADS),
  });
  // Every block scores its query slots (padding included) against its keys: Q·Kᵀ and P·V.
  const scores = plan.blocks.reduce((n, b) => n + b.tiles * b.tileTokens * b.keyCount, 0);
  return projections + 2 * 2 * scores * DIM;
}

function randomTensors(names: Record<string, number[]>, seed: number): Record<string, TensorToWrite> {
  let state = seed >>> 0;
  const out: Record<string, TensorToWrite> = {};
  for (const [name, shape] of Object.entries(names)) {
    const n = shape.reduce((a, b) => a * b, 1);
    const scale = 1 / Math.sqrt(shape[shape.length - 1]);
    out[name] = {
      dtype: 'F32',
      shape,
      data: Float32Array.from(
        { length: n },
        () => ((state = (Math.imul(state, 1664525) + 1013904223) >>> 0) / 4294967296 - 0.5) * 2 * scale,
      ),
    };
  }
  return out;
}

/** Weights of one PixArt attn1 module, and a LinFusion folder replacing it (mid dim = C, as for SD-1.5). */
async function writeLayerWeights(dir: string): Promise<void> {
  const base: Record<string, number[]> = {};
  for (const p of ['to_q', 'to_k', 'to_v', 'to_out.0']) {
    base[`attn1.${p}.weight`] = [DIM, DIM];
    base[`attn1.${p}.bias`] = [DIM];
  }
  await writeSafetensors(join(dir, 'layer.safetensors'), randomTensors(base, 1));
  const lin: Record<string, number[]> = {};
  for (const p of ['to_q', 'to_k', 'to_v']) lin[`0.${p}.weight`] = [DIM, DIM];
  lin['0.to_out.0.weight'] = [DIM, DIM];
  lin['0.to_out.0.bias'] = [DIM];
  for (const m of ['to_q_', 'to_k_']) {
    lin[`0.${m}.0.weight`] = [DIM, DIM];
    lin[`0.${m}.0.bias`] = [DIM];
    lin[`0.${m}.1.weight`] = [DIM];
    lin[`0.${m}.1.bias`] = [DIM];
    lin[`0.${m}.3.weight`] = [DIM, DIM];
    lin[`0.${m}.3.bias`] = [DIM];
  }
  mkdirSync(join(dir, 'linfusion'), { recursive: true });
  await writeSafetensors(
    join(dir, 'linfusion', 'diffusion_pytorch_model.safetensors'),
    randomTensors(lin, 2),
  );
  writeFileSync(
    join(dir, 'linfusion', 'config.json'),
    JSON.stringify({
      _class_name: 'LinFusion',
      modules_list: [{ module_name: 'attn1', dim_n: DIM, heads: HEADS, projection_mid_dim: null }],
    }),
  );
}

/** The graph of one case: the layer on x, or the kernel on q, k, v. */
function buildCase(
  g: Graph,
  v: AttentionVariant,
  side: number,
  scope: AttentionScope,
  params: Params,
  linfusion: LinFusionWeights | undefined,
): string[] {
  const N = side * side;
  const grid = { height: side, width: side };
  if (scope === 'kernel') {
    const [q, k, vv] = ['q', 'k', 'v'].map((n) => g.input(n, 'float32', [1, N, DIM]));
    let y;
    if (v.kind === 'full') y = attention(q, k, vv, { numHeads: HEADS });
    else if (v.kind === 'clear') {
      y = clearAttention(q, k, vv, { numHeads: HEADS, grid, radius: v.radius, downFactor: v.downFactor });
    } else y = normalizedLinearAttention(q, k, vv, HEADS);
    g.output('y', y);
    return ['q', 'k', 'v'];
  }
  const x = g.input('x', 'float32', [1, N, DIM]);
  const p = params.child('attn1');
  const layer: SelfAttentionLayer = {
    params: p,
    x,
    dim: DIM,
    heads: HEADS,
    qkvBias: true,
    grid,
    textTokens: 0,
  };
  g.output('y', selfAttentionModule(layer, v, { linfusion }));
  return ['x'];
}

/** One case of the attention benchmark. */
export interface AttentionCase {
  /** The folder writeLayerWeights filled. */
  dir: string;
  v: AttentionVariant;
  side: number;
  reps: number;
  threads: number;
  scope: AttentionScope;
  /** Untimed runs first: a new session's first runs are 30–80 % slower while ORT's arena grows. */
  warmups: number;
  /** The runtime's flushDenormals (its default is true). */
  flushDenormals: boolean;
}

/**
 * One case, in this process: build, compile, `warmups` untimed runs, `reps` timed runs, release.
 * Peak RSS is the process's maximum so far (the case's own when it runs in a child process).
 */
export async function runAttentionCase(c: AttentionCase): Promise<AttentionCaseResult> {
  const { dir, v, side, reps, threads, scope } = c;
  const runtime = new Runtime({ worker: false, threads, flushDenormals: c.flushDenormals });
  const file = await SafetensorsFile.open(join(dir, 'layer.safetensors'));
  const source = {
    has: (n: string) => file.has(n),
    info: (n: string) => ({ ...file.info(n), path: join(dir, 'layer.safetensors') }),
  };
  const linfusion =
    v.kind === 'linfusion' && scope === 'layer'
      ? await LinFusionWeights.open(join(dir, 'linfusion'))
      : undefined;
  try {
    const g = new Graph(`attention_${scope}`);
    const names = buildCase(g, v, side, scope, Params.of(g, source), linfusion);
    const compiled = await runtime.compile(g);
    const N = side * side;
    const input = Object.fromEntries(
      names.map((name, n) => [
        name,
        hostTensor(
          'float32',
          [1, N, DIM],
          Float32Array.from({ length: N * DIM }, (_, i) => Math.sin(i * 0.1 + n)),
        ),
      ]),
    );
    const times: number[] = [];
    for (let r = -c.warmups; r < reps; r++) {
      const t0 = nowMs();
      await compiled.run(input);
      if (r >= 0) times.push(nowMs() - t0);
    }
    const ms = median(times);
    const flops = attentionFlops(v, side, scope);
    return {
      kind: kindName(v),
      variant: variantName(v),
      scope,
      tokens: N,
      ms,
      gflop: flops / 1e9,
      gflops: flops / ms / 1e6,
      peakRssMb: peakRssMb(),
    };
  } finally {
    await file.close();
    await linfusion?.close();
    await runtime.dispose();
  }
}

export interface AttentionBenchOptions {
  /** Token counts (square numbers). */
  tokens: number[];
  /** Full attention is skipped above this many tokens (its cost is N²). */
  maxFullTokens: number;
  /** CLEAR with d = 4 is skipped above this many tokens (its pooled part is O(N²/16)). */
  maxDownTokens: number;
  reps: number;
  threads: number;
  /** What to time; default both. */
  scopes?: AttentionScope[];
  /** Each case in its own child process, so its peak RSS is its own (default); else all in this one. */
  isolate?: boolean;
  /** Untimed runs per case; default 2. */
  warmups?: number;
  /** Default true, the runtime's default. */
  flushDenormals?: boolean;
}

/** The results of one token count, as `bench attention --json` prints them. */
export interface AttentionJson {
  tokens: number;
  results: {
    kind: string;
    /** The layer (projections included), median ms. */
    ms: number | null;
    gflop: number | null;
    gflops: number | null;
    /** The attention alone on given q, k, v, median ms. */
    attention_ms: number | null;
    attention_gflop: number | null;
    attention_gflops: number | null;
    peak_rss_mb: number;
  }[];
}

export function attentionJson(rows: readonly AttentionCaseResult[], tokens: number): AttentionJson {
  const kinds = [...new Set(rows.filter((r) => r.tokens === tokens).map((r) => r.kind))];
  return {
    tokens,
    results: kinds.map((kind) => {
      const layer = rows.find((r) => r.tokens === tokens && r.kind === kind && r.scope === 'layer');
      const kernel = rows.find((r) => r.tokens === tokens && r.kind === kind && r.scope === 'kernel');
      return {
        kind,
        ms: layer?.ms ?? null,
        gflop: layer?.gflop ?? null,
        gflops: layer?.gflops ?? null,
        attention_ms: kernel?.ms ?? null,
        attention_gflop: kernel?.gflop ?? null,
        attention_gflops: kernel?.gflops ?? null,
        peak_rss_mb: Math.max(layer?.peakRssMb ?? 0, kernel?.peakRssMb ?? 0),
      };
    }),
  };
}

/**
 * (a) One self-attention layer at PixArt-α width (1152 = 16 × 72), and its attention kernel alone,
 * from 1K image tokens up: full attention vs CLEAR r = 8/16/32 with and without d = 4 vs LinFusion.
 */
export async function benchAttention(
  o: AttentionBenchOptions,
  log: (s: string) => void,
): Promise<AttentionCaseResult[]> {
  const dir = mkdtempSync(join(tmpdir(), 'velodiff-attn-'));
  const scopes = o.scopes ?? ['layer', 'kernel'];
  const isolate = o.isolate ?? true;
  try {
    await writeLayerWeights(dir);
    const rows: AttentionCaseResult[] = [];
    for (const tokens of o.tokens) {
      const side = Math.round(Math.sqrt(tokens));
      for (const v of ATTENTION_VARIANTS) {
        if (v.kind === 'full' && tokens > o.maxFullTokens) continue;
        if (v.kind === 'clear' && v.downFactor > 1 && tokens > o.maxDownTokens) continue;
        for (const scope of scopes) {
          const reps = tokens >= 16384 ? Math.min(o.reps, 3) : o.reps;
          const c: AttentionCase = {
            dir,
            v,
            side,
            reps,
            threads: o.threads,
            scope,
            warmups: o.warmups ?? 2,
            flushDenormals: o.flushDenormals ?? true,
          };
          let row: AttentionCaseResult;
          if (isolate) {
            const out = execFileSync(
              process.execPath,
              [...process.execArgv, fileURLToPath(import.meta.url), '--case', JSON.stringify(c)],
              { encoding: 'utf8', maxBuffer: 1 << 20 },
            );
            row = JSON.parse(out.trim().split('\n').pop() as string) as AttentionCaseResult;
          } else {
            row = await runAttentionCase(c);
          }
          rows.push(row);
          log(
            `  ${row.kind.padEnd(11)} ${scope.padEnd(6)} ${String(row.tokens).padStart(6)} tokens: ${row.ms.toFixed(1)} ms`,
          );
        }
      }
    }
    for (const scope of scopes) {
      const mine = rows.filter((r) => r.scope === scope);
      log(
        `\n${scope === 'layer' ? 'Layer (q/k/v/out projections included)' : 'Attention kernel alone (q, k, v given)'}:\n` +
          table(
            ['variant', 'tokens', 'ms', 'µs/token', 'GFLOP', 'GFLOP/s', 'peak RSS MB', 'vs full'],
            mine.map((r) => {
              const full = mine.find((f) => f.tokens === r.tokens && f.kind === 'full');
              return [
                r.variant,
                String(r.tokens),
                r.ms,
                (r.ms * 1000) / r.tokens,
                r.gflop,
                r.gflops,
                r.peakRssMb,
                full ? (full.ms / r.ms).toFixed(2) : '-',
              ];
            }),
          ),
      );
    }
    return rows;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

// Child-process entry: one case, printed as JSON.
if (process.argv[2] === '--case' && process.argv[1] === fileURLToPath(import.meta.url)) {
  console.log(JSON.stringify(await runAttentionCase(JSON.parse(process.argv[3]) as AttentionCase)));
}
