/**
 * `bench flux-blocks` (issue 13 §6): one FLUX.1-width double-stream block and one single-stream
 * block (3072 = 24 heads × 128, random weights) at 4K and 16K packed image tokens with 512 text
 * tokens, full attention against CLEAR r = 8/16/32 with and without pooled keys/values (d = 4), as
 * FLUX runs CLEAR: text queries attend every key, image queries the text keys, their circle on the
 * packed grid and the pooled keys.
 *
 * Two scopes, each case (scope, tokens, variant) in a process of its own so that peaks and ORT's
 * arenas do not mix:
 * - `pair`: FluxTransformer2DModel.forward of a folder with 1 + 1 blocks (the embedders, norm_out
 *   and proj_out around them are ≈ 1 % of its FLOPs). GFLOP is counted on the graph the model
 *   compiles (train-step.ts `countFlops`: every MatMul and attention product as lowered), and its
 *   rate is compared with the fp32 MatMul rate measured in the same process on a FLUX feed-forward
 *   ([L + N, 3072]·[3072, 12288]·[12288, 3072]).
 * - `kernel`: the attention product alone on given q, k, v [1, L + N, 3072]. Besides the executed
 *   GFLOP (CLEAR's tiles score padding slots and window corners no query of a tile sees), the
 *   useful GFLOP counts only the scores a query keeps (its text keys, its circle, the pooled keys):
 *   the useful rate of CLEAR against full attention's is the kernel's efficiency.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { clearAttention } from '../src/attention/clear.js';
import { OptionError } from '../src/errors.js';
import { Graph, attention } from '../src/graph/index.js';
import { buildFluxTransformerGraph, FluxTransformer2DModel } from '../src/models/flux-transformer.js';
import { hostTensor } from '../src/runtime/host-tensor.js';
import type { HostTensor } from '../src/runtime/host-tensor.js';
import { Runtime } from '../src/runtime/runtime.js';
import { countFlops } from '../src/train/train-step.js';
import { runCaseInChild } from './quant.js';
import { fluxDevShape, writeRandomFlux } from './random-flux.js';
import { feedForwardReference, fill } from './reference.js';
import { appendResult, readResults } from './results.js';
import { machineLine, median, nowMs, peakRssMb, table } from './stats.js';

export type FluxBlockVariant = { kind: 'full' } | { kind: 'clear'; radius: number; downFactor: number };
export type FluxBlockScope = 'pair' | 'kernel';

export interface FluxBlocksOptions {
  /** Packed image tokens, square grids (4096 = a 1024² image for FLUX.1). */
  tokens: number[];
  /** Text tokens (FLUX.1-dev's T5 length: 512). */
  text: number;
  variants: FluxBlockVariant[];
  scopes: FluxBlockScope[];
  reps: number;
  /** Untimed runs first (a new session's first runs are slower while ORT's arena grows). */
  warmups: number;
  threads: number;
  /** The width: FLUX.1's 24 × 128 by default. */
  heads: number;
  headDim: number;
  /**
   * A JSON-lines file of finished cases: each case is appended when it ends (its figures, or the
   * error its process ended with), and a later run with the same file reuses the cases it holds.
   */
  results?: string;
}

export interface FluxBlocksRow {
  scope: FluxBlockScope;
  /** full, clear:R, clear:R:D */
  kind: string;
  variant: string;
  tokens: number;
  text: number;
  /** null (and every figure but useful_gflop) when the case's process failed: see `error`. */
  ms: number | null;
  /** GFLOP as lowered (pair: the whole forward; kernel: every score computed). */
  gflop: number | null;
  gflops: number | null;
  /** The fp32 MatMul rate measured in the same process (a FLUX feed-forward at L + N rows). */
  matmul_gflops: number | null;
  /** gflops / matmul_gflops */
  fraction: number | null;
  /** Kernel scope: the scores kept (text keys, circle, pooled keys); null for the pair. */
  useful_gflop: number | null;
  useful_gflops: number | null;
  /** Full attention's ms at these tokens and scope / this row's. */
  speedup: number | null;
  peak_rss_mb: number | null;
  /** Why the case's process failed (killed by SIGKILL: out of memory, on a machine without swap). */
  error?: string;
}

export interface FluxBlocksResult {
  command: string;
  machine: string;
  width: { heads: number; head_dim: number };
  rows: FluxBlocksRow[];
}

/** The variants the issue names: full, CLEAR r = 8/16/32, each with and without d = 4. */
export const FLUX_BLOCK_VARIANTS: readonly FluxBlockVariant[] = [
  { kind: 'full' },
  ...[8, 16, 32].flatMap((radius) =>
    [1, 4].map((downFactor) => ({ kind: 'clear' as const, radius, downFactor })),
  ),
];

export function fluxVariantKind(v: FluxBlockVariant): string {
  return v.kind === 'full' ? 'full' : `clear:${v.radius}${v.downFactor > 1 ? `:${v.downFactor}` : ''}`;
}

function variantName(v: FluxBlockVariant): string {
  return v.kind === 'full'
    ? 'full attention'
    : `CLEAR r=${v.radius}${v.downFactor > 1 ? ` d=${v.downFactor}` : ''}`;
}

/** `full`, `clear:R` or `clear:R:D`, as `--variants` lists them. */
export function parseFluxVariant(text: string, where: string): FluxBlockVariant {
  if (text === 'full') return { kind: 'full' };
  const m = /^clear:(\d+)(?::(\d+))?$/.exec(text);
  const radius = m ? Number(m[1]) : Number.NaN;
  const downFactor = m?.[2] === undefined ? 1 : Number(m[2]);
  if (!m || radius < 1 || downFactor < 1) {
    throw new OptionError(`${where}: a variant is full, clear:R or clear:R:D (R, D ≥ 1), got "${text}"`);
  }
  return { kind: 'clear', radius, downFactor };
}

/** The side of a square grid of `tokens`, or an error. */
export function gridSide(tokens: number, where: string): number {
  const side = Math.round(Math.sqrt(tokens));
  if (!Number.isInteger(tokens) || tokens < 1 || side * side !== tokens) {
    throw new OptionError(
      `${where}: image tokens must be square numbers (a square packed grid), got ${tokens}`,
    );
  }
  return side;
}

/**
 * Scores a CLEAR (or full) attention keeps over [text | image] tokens on a side × side grid: every
 * text query all text and image keys; every image query the text keys, the image keys strictly
 * inside its circle (Δy² + Δx² < r²) and the pooled keys ((side/d)² of them with d > 1).
 */
export function usefulScores(v: FluxBlockVariant, side: number, text: number): number {
  const image = side * side;
  const all = text + image;
  if (v.kind === 'full') return all * all;
  const r2 = v.radius * v.radius;
  // Image keys strictly inside each image query's circle, clipped at the grid's border.
  let circle = 0;
  for (let y = 0; y < side; y++) {
    for (let x = 0; x < side; x++) {
      for (let yk = 0; yk < side; yk++) {
        const dy2 = (y - yk) ** 2;
        if (dy2 >= r2) continue;
        // Columns xk with (x − xk)² < r² − dy², within the grid.
        const reach = Math.ceil(Math.sqrt(r2 - dy2)) - 1;
        circle += Math.min(side - 1, x + reach) - Math.max(0, x - reach) + 1;
      }
    }
  }
  // CLEAR pools d × d cells of the grid (the side is a multiple of d, or the lowering refuses it).
  const pooled = v.downFactor > 1 ? (side / v.downFactor) ** 2 : 0;
  return text * all + image * (text + pooled) + circle;
}

interface FluxBlocksCase {
  scope: FluxBlockScope;
  dir: string;
  variant: FluxBlockVariant;
  tokens: number;
  text: number;
  heads: number;
  headDim: number;
  reps: number;
  warmups: number;
  threads: number;
}

interface FluxBlocksCaseResult {
  times: number[];
  flops: number;
  matmulTimes: number[];
  matmulFlops: number;
  peakRssMb: number;
}

type CaseOutcome = FluxBlocksCaseResult | { error: string };

/** What identifies a case's figures: everything it was run with but the (temporary) folder. */
function caseKey(c: FluxBlocksCase): string {
  // JSON.stringify leaves out the undefined folder.
  return JSON.stringify({ ...c, dir: undefined, variant: fluxVariantKind(c.variant) });
}

/** The forward's inputs: N image tokens on a side × side raster, L text tokens, guidance 3.5. */
function pairInputs(side: number, text: number): Record<string, HostTensor> {
  const image = side * side;
  const imgIds = new Float32Array(image * 3);
  for (let n = 0; n < image; n++) {
    imgIds[3 * n + 1] = Math.floor(n / side);
    imgIds[3 * n + 2] = n % side;
  }
  return {
    hidden_states: hostTensor('float32', [1, image, 64], fill(image * 64)),
    encoder_hidden_states: hostTensor('float32', [1, text, 4096], fill(text * 4096, 1)),
    pooled_projections: hostTensor('float32', [1, 768], fill(768, 2)),
    timestep: hostTensor('float32', [1], [0.5]),
    guidance: hostTensor('float32', [1], [3.5]),
    img_ids: hostTensor('float32', [image, 3], imgIds),
    txt_ids: hostTensor('float32', [text, 3], new Float32Array(text * 3)),
  };
}

/** One case in this process: build and compile, `warmups` untimed runs, `reps` timed ones, the MatMul reference. */
export async function runFluxBlocksCase(c: FluxBlocksCase): Promise<FluxBlocksCaseResult> {
  const side = gridSide(c.tokens, 'bench flux-blocks');
  const dim = c.heads * c.headDim;
  const runtime = new Runtime({ worker: false, threads: c.threads });
  const attentionOption =
    c.variant.kind === 'full'
      ? { kind: 'full' as const }
      : { kind: 'clear' as const, radius: c.variant.radius, downFactor: c.variant.downFactor };
  try {
    let run: () => Promise<unknown>;
    let flops: number;
    let close = async (): Promise<void> => {};
    if (c.scope === 'pair') {
      const model = await FluxTransformer2DModel.fromPretrained(c.dir, { runtime });
      close = () => model.close();
      const inputs = pairInputs(side, c.text);
      run = () => model.forward(inputs, { attention: attentionOption });
      const graph = buildFluxTransformerGraph(model.config, model.weights, {
        imageTokens: c.tokens,
        textTokens: c.text,
        ...(c.variant.kind === 'clear'
          ? { attention: attentionOption, grid: { height: side, width: side } }
          : {}),
      });
      flops = countFlops(graph.nodes, { B: 1 });
    } else {
      const g = new Graph('flux_attention_kernel');
      const tokens = c.text + c.tokens;
      const [q, k, v] = ['q', 'k', 'v'].map((n) => g.input(n, 'float32', [1, tokens, dim]));
      g.output(
        'y',
        c.variant.kind === 'full'
          ? attention(q, k, v, { numHeads: c.heads })
          : clearAttention(q, k, v, {
              numHeads: c.heads,
              grid: { height: side, width: side },
              radius: c.variant.radius,
              textTokens: c.text,
              downFactor: c.variant.downFactor,
            }),
      );
      flops = countFlops(g.nodes, {});
      const compiled = await runtime.compile(g);
      const feeds = Object.fromEntries(
        ['q', 'k', 'v'].map((n, i) => [n, hostTensor('float32', [1, tokens, dim], fill(tokens * dim, i))]),
      );
      run = () => compiled.run(feeds);
    }
    const times: number[] = [];
    for (let r = -c.warmups; r < c.reps; r++) {
      const t0 = nowMs();
      await run();
      if (r >= 0) times.push(nowMs() - t0);
    }
    await close();
    const reference = await feedForwardReference(runtime, c.text + c.tokens, dim);
    const matmulTimes: number[] = [];
    for (let r = -1; r < Math.max(2, c.reps); r++) {
      const ms = await reference.run();
      if (r >= 0) matmulTimes.push(ms);
    }
    return { times, flops, matmulTimes, matmulFlops: reference.flops, peakRssMb: peakRssMb() };
  } finally {
    await runtime.dispose();
  }
}

export async function benchFluxBlocks(
  o: FluxBlocksOptions,
  log: (s: string) => void,
  command = 'velodiff bench flux-blocks',
): Promise<FluxBlocksResult> {
  const shape = fluxDevShape({ double: 1, single: 1 }, { heads: o.heads, headDim: o.headDim });
  const sides = o.tokens.map((t) => gridSide(t, 'bench flux-blocks'));
  if (!o.variants.some((v) => v.kind === 'full')) {
    throw new OptionError('bench flux-blocks: --variants must include full, the baseline of the speed-ups');
  }
  for (const [t, side] of sides.entries()) {
    for (const v of o.variants) {
      if (v.kind === 'clear' && side % v.downFactor !== 0) {
        throw new OptionError(
          `bench flux-blocks: ${fluxVariantKind(v)} pools ${v.downFactor} × ${v.downFactor} cells, which do not tile the ${side} × ${side} grid of ${o.tokens[t]} image tokens`,
        );
      }
    }
  }
  const dir = mkdtempSync(join(tmpdir(), 'velodiff-flux-blocks-'));
  const rows: FluxBlocksRow[] = [];
  const done = readResults<CaseOutcome>(o.results, 'bench flux-blocks');
  try {
    if (o.scopes.includes('pair')) await writeRandomFlux(dir, shape);
    for (const scope of o.scopes) {
      for (const [t, tokens] of o.tokens.entries()) {
        const scoped: FluxBlocksRow[] = [];
        for (const variant of o.variants) {
          const c: FluxBlocksCase = {
            scope,
            dir,
            variant,
            tokens,
            text: o.text,
            heads: o.heads,
            headDim: o.headDim,
            reps: o.reps,
            warmups: o.warmups,
            threads: o.threads,
          };
          const key = caseKey(c);
          let r = done.get(key);
          if (r) {
            log(`reusing ${scope} ${fluxVariantKind(variant)} at ${tokens} image tokens from ${o.results}`);
          } else {
            r = await runCaseInChild<FluxBlocksCaseResult>(
              fileURLToPath(import.meta.url),
              '--flux-blocks-case',
              c,
              `bench flux-blocks: ${scope} ${fluxVariantKind(variant)} at ${tokens} image tokens`,
            ).catch((e: unknown) => ({ error: (e as Error).message }));
            appendResult(o.results, key, r);
          }
          const useful =
            scope === 'kernel'
              ? (4 * o.heads * o.headDim * usefulScores(variant, sides[t], o.text)) / 1e9
              : null;
          if ('error' in r) {
            log(`${scope} ${fluxVariantKind(variant)} at ${tokens} image tokens: ${r.error}`);
            scoped.push({
              scope,
              kind: fluxVariantKind(variant),
              variant: variantName(variant),
              tokens,
              text: o.text,
              ms: null,
              gflop: null,
              gflops: null,
              matmul_gflops: null,
              fraction: null,
              useful_gflop: useful,
              useful_gflops: null,
              speedup: null,
              peak_rss_mb: null,
              error: r.error,
            });
            continue;
          }
          const ms = median(r.times);
          const gflops = r.flops / ms / 1e6;
          const matmulGflops = r.matmulFlops / median(r.matmulTimes) / 1e6;
          scoped.push({
            scope,
            kind: fluxVariantKind(variant),
            variant: variantName(variant),
            tokens,
            text: o.text,
            ms,
            gflop: r.flops / 1e9,
            gflops,
            matmul_gflops: matmulGflops,
            fraction: gflops / matmulGflops,
            useful_gflop: useful,
            useful_gflops: useful === null ? null : (useful * 1e3) / ms,
            speedup: 0,
            peak_rss_mb: r.peakRssMb,
          });
        }
        const full = scoped.find((r) => r.kind === 'full') as FluxBlocksRow;
        for (const r of scoped) r.speedup = full.ms !== null && r.ms !== null ? full.ms / r.ms : null;
        rows.push(...scoped);
      }
      const of = rows.filter((r) => r.scope === scope);
      log(
        scope === 'pair'
          ? `\nDouble + single block pair (FluxTransformer2DModel forward, ${o.heads}×${o.headDim} wide, ${o.text} text tokens), median of ${o.reps} after ${o.warmups} warm-up:`
          : `\nAttention kernel alone (q, k, v [1, ${o.text} + N, ${o.heads * o.headDim}] given), median of ${o.reps} after ${o.warmups} warm-up:`,
      );
      const header = ['variant', 'image tokens', 'ms', 'GFLOP', 'GFLOP/s', 'MatMul GFLOP/s', 'fraction'];
      const kernel = scope === 'kernel';
      log(
        table(
          [
            ...header,
            ...(kernel ? ['useful GFLOP', 'useful GFLOP/s', 'useful vs full'] : []),
            'peak RSS MB',
            'vs full',
          ],
          of.map((r) => {
            const full = of.find((x) => x.tokens === r.tokens && x.kind === 'full') as FluxBlocksRow;
            const cell = (x: number | null, digits?: number): string | number =>
              x === null ? 'failed' : digits === undefined ? x : x.toFixed(digits);
            return [
              r.variant,
              String(r.tokens),
              cell(r.ms),
              cell(r.gflop),
              cell(r.gflops),
              cell(r.matmul_gflops),
              cell(r.fraction, 2),
              ...(kernel
                ? [
                    cell(r.useful_gflop),
                    cell(r.useful_gflops),
                    cell(
                      r.useful_gflops !== null && full.useful_gflops !== null
                        ? r.useful_gflops / full.useful_gflops
                        : null,
                      2,
                    ),
                  ]
                : []),
              cell(r.peak_rss_mb),
              cell(r.speedup, 2),
            ];
          }),
        ),
      );
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  const machine = machineLine();
  log(`machine: ${machine}`);
  log(`command: ${command}`);
  return { command, machine, width: { heads: o.heads, head_dim: o.headDim }, rows };
}

// Child-process entry: one case, printed as JSON.
if (process.argv[2] === '--flux-blocks-case' && process.argv[1] === fileURLToPath(import.meta.url)) {
  console.log(JSON.stringify(await runFluxBlocksCase(JSON.parse(process.argv[3]) as FluxBlocksCase)));
}
