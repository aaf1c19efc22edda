/**
 * `bench quant` (issue 11): int8 at load (`quantize: 'int8'`, ORT's DynamicQuantizeMatMul) against
 * float32. (a) The PixArt-α-width denoiser, both variants loaded in one process and timed run by run
 * in alternating order, with the int8 output's relative L2 error on the same inputs. (b) The peak RSS
 * of loading a T5-XXL-shaped text encoder and encoding 120 tokens, each load in a process of its own
 * so that peaks do not mix, at 1 and N layers, fitted linearly and extrapolated to T5-XXL's 24.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  renameSync,
  rmSync,
  statfsSync,
  writeFileSync,
} from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { shippedModelDir } from '../src/pipelines/shipped-model.js';
import { README_GRID_PROMPTS } from '../src/train/sample-grid.js';
import type { ImageComparison } from './quant-images.js';
import { compareInt8Images } from './quant-images.js';
import { promisify } from 'node:util';

import { OptionError } from '../src/errors.js';
import { PixArtTransformer2DModel } from '../src/models/pixart-transformer.js';
import { T5EncoderModel } from '../src/models/t5-encoder.js';
import type { HostTensor } from '../src/runtime/host-tensor.js';
import { hostTensor } from '../src/runtime/host-tensor.js';
import { Runtime } from '../src/runtime/runtime.js';
import { defaultCacheDir } from '../src/train/data/cache.js';
import type { PixArtShape } from './random-pixart.js';
import { PIXART_ALPHA_WIDTH, pixArtFlops, writeRandomPixArt } from './random-pixart.js';
import type { T5Shape } from './random-t5.js';
import { T5_XXL_WIDTH, t5FolderBytes, t5ParameterCounts, writeRandomT5 } from './random-t5.js';
import { machineLine, median, nowMs, peakRssMb, privateMb, resetPeakRss, table } from './stats.js';
import { CFG_BATCH } from './unet.js';

/** PixArt-α's caption length (T5 tokens), for the denoiser's cross-attention and the encoder's input. */
const CAPTION_LENGTH = 120;
/** T5-XXL's encoder depth, which the per-layer fit extrapolates to. */
const T5_XXL_LAYERS = 24;

/** `--tiny`: the same code paths at widths that run in seconds (tests). Hidden 48 = 2 × 24 (÷ 3 and ÷ 4, as PixArt's embeddings need). */
const TINY_PIXART: Omit<PixArtShape, 'layers'> = {
  ...PIXART_ALPHA_WIDTH,
  heads: 2,
  headDim: 24,
  captionChannels: 64,
};
const TINY_T5: Omit<T5Shape, 'layers'> = { dModel: 64, dFf: 128, numHeads: 4, dKv: 16, vocabSize: 512 };

export interface QuantBenchOptions {
  /** Image tokens of the denoiser (square numbers), timed in this order; empty skips part (a). */
  tokens: number[];
  /** Transformer blocks of the denoiser (PixArt-α: 28). */
  layers: number;
  /** The encoder is measured at 1 and this many layers (≥ 2); 0 skips part (b). */
  t5Layers: number;
  reps: number;
  warmups: number;
  threads: number;
  tiny: boolean;
  /** Part (c): seeds per prompt for the shipped model's int8-vs-fp32 images; 0 skips it. */
  imageSeeds: number;
  /** The model of part (c) (default: the shipped model). */
  imageModel?: string;
  /** Where the random model folders are cached (default: velodiff's cache dir). */
  cacheDir?: string;
}

// ------------------------------------------------------------------------------------------------
// The CPU's int8 units.

export type CpuInt8 = 'amx' | 'vnni' | 'none';

const INT8_FLAGS = ['amx_int8', 'amx_tile', 'avx512_vnni', 'avx_vnni'];

/** The int8 units that /proc/cpuinfo's flags name: AMX tiles, else VNNI (AVX-512 or AVX), else none. */
export function cpuInt8FromFlags(flags: readonly string[]): CpuInt8 {
  const has = new Set(flags);
  if (has.has('amx_int8') || has.has('amx_tile')) return 'amx';
  if (has.has('avx512_vnni') || has.has('avx_vnni')) return 'vnni';
  return 'none';
}

/** This CPU's int8 units, with the flags that say so (or why nothing was detected). */
export function detectCpuInt8(): { kind: CpuInt8; note: string } {
  if (process.platform !== 'linux') {
    return {
      kind: 'none',
      note: `not detected: reads /proc/cpuinfo, which ${process.platform} does not have`,
    };
  }
  let text: string;
  try {
    text = readFileSync('/proc/cpuinfo', 'utf8');
  } catch (error) {
    return { kind: 'none', note: `not detected: /proc/cpuinfo unreadable (${(error as Error).message})` };
  }
  const line = /^flags\s*:(.*)$/m.exec(text);
  if (!line) return { kind: 'none', note: 'not detected: /proc/cpuinfo has no x86 flags line' };
  const flags = line[1].trim().split(/\s+/);
  const named = flags.filter((f) => INT8_FLAGS.includes(f));
  return { kind: cpuInt8FromFlags(flags), note: named.length > 0 ? named.join(' ') : 'no AMX or VNNI flag' };
}

// ------------------------------------------------------------------------------------------------
// Cached random model folders.

function gb(bytes: number): string {
  return (bytes / 1e9).toFixed(1);
}

/** Which bench is short of disk, and which of its flags make the folders smaller. */
export interface SpaceAdvice {
  command: string;
  advice: string;
}

const QUANT_SPACE: SpaceAdvice = { command: 'bench quant', advice: 'lower --t5-layers or --layers' };

/** Fails before writing `bytes` into `dir`'s file system when it does not have them (and 1 GB) free. */
export function checkFreeSpace(dir: string, bytes: number, what: string, space = QUANT_SPACE): void {
  const { bavail, bsize } = statfsSync(dir);
  const free = bavail * bsize;
  if (free < bytes + 1e9) {
    throw new OptionError(
      `${space.command}: ${what} needs ${gb(bytes)} GB in ${dir}, which has ${gb(free)} GB free; ` +
        `${space.advice}, or set VELODIFF_CACHE_DIR (and TMPDIR) to a larger disk`,
    );
  }
}

/**
 * `<cache>/bench/<name>`, written by `write` into a temporary sibling and renamed into place when
 * absent, so a folder that exists is whole.
 */
export async function cachedFolder(
  cacheDir: string,
  name: string,
  bytes: number,
  write: (dir: string) => Promise<void>,
  log: (s: string) => void,
  space = QUANT_SPACE,
): Promise<string> {
  const dir = join(cacheDir, 'bench', name);
  if (existsSync(join(dir, 'config.json'))) {
    log(`reusing ${dir}`);
    return dir;
  }
  mkdirSync(dirname(dir), { recursive: true });
  checkFreeSpace(dirname(dir), bytes, `writing the random folder ${name}`, space);
  const temporary = `${dir}.tmp-${process.pid}`;
  rmSync(temporary, { recursive: true, force: true });
  mkdirSync(temporary);
  const start = nowMs();
  try {
    await write(temporary);
    renameSync(temporary, dir);
  } catch (error) {
    rmSync(temporary, { recursive: true, force: true });
    // Another process wrote the same folder first: its copy is as good.
    if (existsSync(join(dir, 'config.json'))) return dir;
    throw error;
  }
  log(`wrote ${dir} (${gb(bytes)} GB, ${((nowMs() - start) / 1e3).toFixed(1)} s)`);
  return dir;
}

export function folderKey(description: unknown): string {
  return createHash('sha256').update(JSON.stringify(description)).digest('hex').slice(0, 12);
}

// ------------------------------------------------------------------------------------------------
// (a) The denoiser, float32 vs int8.

export interface QuantDenoiserRow {
  tokens: number;
  /** The latent's height × width (PixArt-α's patch 2: 1024 tokens = 64x64). */
  latent: string;
  fp32_ms: number;
  int8_ms: number;
  /** fp32_ms / int8_ms. */
  speedup: number;
  /** Multiply-add FLOPs of one forward at batch 2 (pixArtFlops), the same for both variants. */
  flops: number;
  fp32_gflops: number;
  /** The same FLOPs over the int8 time: the rate a float32 forward would need to match it. */
  int8_gflops: number;
  /** The share of those FLOPs in attention products (q·kᵀ, p·v), which stay float32. */
  attention_share: number;
  /** ‖int8 − fp32‖₂ / ‖fp32‖₂ of the output `sample` on the same inputs. */
  rel_l2: number;
}

export interface QuantDenoiserResult {
  rows: QuantDenoiserRow[];
  int8_modules: number;
  fp32_load_ms: number;
  /** fromPretrained with quantize: 'int8', the quantization of every selected Linear included. */
  int8_load_ms: number;
}

/** ‖a − b‖₂ / ‖b‖₂, in float64. */
export function relativeL2(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`relativeL2: lengths ${a.length} and ${b.length} differ`);
  let diff = 0;
  let ref = 0;
  for (let i = 0; i < a.length; i++) {
    diff += (a[i] - b[i]) ** 2;
    ref += b[i] ** 2;
  }
  return Math.sqrt(diff / ref);
}

/** FLOPs of the attention products alone, as pixArtFlops counts them (self N×N, cross N×L). */
function attentionFlops(s: PixArtShape, tokens: number, batch: number): number {
  const dim = s.heads * s.headDim;
  return batch * s.layers * (2 * 2 * tokens * tokens * dim + 2 * 2 * tokens * CAPTION_LENGTH * dim);
}

function denoiserInputs(s: PixArtShape, tokens: number): Record<string, HostTensor> {
  const side = Math.round(Math.sqrt(tokens)) * s.patchSize;
  const fill = (n: number, phase: number): Float32Array =>
    Float32Array.from({ length: n }, (_, i) => Math.sin(i * 0.37 + phase));
  const b = CFG_BATCH;
  return {
    hidden_states: hostTensor(
      'float32',
      [b, s.inChannels, side, side],
      fill(b * s.inChannels * side * side, 0),
    ),
    encoder_hidden_states: hostTensor(
      'float32',
      [b, CAPTION_LENGTH, s.captionChannels],
      fill(b * CAPTION_LENGTH * s.captionChannels, 1),
    ),
    timestep: hostTensor('float32', [b], new Float32Array(b).fill(500)),
    resolution: hostTensor('float32', [b, 2], new Float32Array(b * 2).fill(1024)),
    aspect_ratio: hostTensor('float32', [b, 1], new Float32Array(b).fill(1)),
  };
}

async function benchDenoiserInt8(
  o: QuantBenchOptions,
  shape: PixArtShape,
  cacheDir: string,
  log: (s: string) => void,
): Promise<QuantDenoiserResult> {
  const dim = shape.heads * shape.headDim;
  // About: per block 8 attention projections of D² and a feed-forward of 8D²; outside the blocks the
  // caption projection and adaLN's 6D² (for the disk-space check only).
  const parameters = shape.layers * 16 * dim * dim + (shape.captionChannels + 8 * dim) * dim;
  const dir = await cachedFolder(
    cacheDir,
    `pixart-alpha-l${shape.layers}-w${dim}-${folderKey({ shape, seed: 1, writer: 'random-pixart' })}`,
    4 * parameters,
    (tmp) => writeRandomPixArt(tmp, shape),
    log,
  );
  checkFreeSpace(
    tmpdir(),
    parameters,
    'quantizing the denoiser at load (its int8 weights go to a temporary file)',
  );
  const runtime = new Runtime({ worker: false, threads: o.threads });
  const models: PixArtTransformer2DModel[] = [];
  try {
    let start = nowMs();
    models.push(await PixArtTransformer2DModel.fromPretrained(dir, { runtime }));
    const fp32LoadMs = nowMs() - start;
    start = nowMs();
    models.push(await PixArtTransformer2DModel.fromPretrained(dir, { runtime, quantize: 'int8' }));
    const int8LoadMs = nowMs() - start;
    const int8Modules = models[1].int8Modules?.size ?? 0;
    log(
      `PixArt-α width (${dim} = ${shape.heads} × ${shape.headDim}), ${shape.layers} layers, batch ${CFG_BATCH} as CFG runs it, ` +
        `caption ${CAPTION_LENGTH} tokens; int8: ${int8Modules} Linear modules; ${o.warmups} warm-up + ${o.reps} timed runs ` +
        `per variant and size, variants alternating run by run; load ${fp32LoadMs.toFixed(0)} ms fp32, ` +
        `${int8LoadMs.toFixed(0)} ms int8 (quantization included)`,
    );
    const rows: QuantDenoiserRow[] = [];
    for (const tokens of o.tokens) {
      const inputs = denoiserInputs(shape, tokens);
      const times: number[][] = [[], []];
      const samples: (ArrayLike<number> | undefined)[] = [undefined, undefined];
      for (let r = -o.warmups; r < o.reps; r++) {
        const ms = [0, 0];
        // Alternate which variant goes first, so a slow start or a drift falls on both.
        for (const v of (r & 1) === 0 ? [0, 1] : [1, 0]) {
          const t0 = nowMs();
          const out = await models[v].forward(inputs);
          ms[v] = nowMs() - t0;
          if (r >= 0) times[v].push(ms[v]);
          samples[v] ??= out.sample.data as Float32Array;
        }
        const run = r < 0 ? 'warm-up' : `run ${r + 1}/${o.reps}`;
        log(`  ${tokens} tokens, ${run}: fp32 ${ms[0].toFixed(0)} ms, int8 ${ms[1].toFixed(0)} ms`);
      }
      const flops = pixArtFlops(shape, tokens, CAPTION_LENGTH, CFG_BATCH);
      const [fp32Ms, int8Ms] = times.map(median);
      const side = Math.round(Math.sqrt(tokens)) * shape.patchSize;
      rows.push({
        tokens,
        latent: `${side}x${side}`,
        fp32_ms: fp32Ms,
        int8_ms: int8Ms,
        speedup: fp32Ms / int8Ms,
        flops,
        fp32_gflops: flops / fp32Ms / 1e6,
        int8_gflops: flops / int8Ms / 1e6,
        attention_share: attentionFlops(shape, tokens, CFG_BATCH) / flops,
        rel_l2: relativeL2(samples[1] as ArrayLike<number>, samples[0] as ArrayLike<number>),
      });
    }
    return { rows, int8_modules: int8Modules, fp32_load_ms: fp32LoadMs, int8_load_ms: int8LoadMs };
  } finally {
    for (const model of models) await model.close();
    await runtime.dispose();
  }
}

// ------------------------------------------------------------------------------------------------
// (b) The text encoder's peak RSS, one process per load.

/** One load of the encoder, run in a child process (`--t5-case`). */
interface T5Case {
  dir: string;
  quantize: boolean;
  threads: number;
  vocabSize: number;
  /** Where the child writes last_hidden_state (raw float32), for the int8 error. */
  output: string;
}

export interface T5CaseResult {
  /** The child's peak RSS over load and encode (VmHWM: stats.ts peakRssMb): the larger of the two below. */
  peak_rss_mb: number;
  /** Peak RSS while loading: for int8, reading each float weight and quantizing it. */
  load_peak_mb: number;
  /** Peak RSS during the first encode, counted from the RSS after the load (NaN where it cannot be reset). */
  encode_peak_mb: number;
  /** Anonymous resident memory after the encode (RSS less the mapped files; NaN off Linux). */
  private_mb: number;
  /** fromPretrained: opening and checking the weights, and the quantization of an int8 load. */
  load_ms: number;
  /** The first encode of 120 tokens, its session's creation (ORT's copy of the weights) included. */
  encode_ms: number;
  int8_modules: number;
}

export interface T5Row extends T5CaseResult {
  dtype: 'fp32' | 'int8';
  layers: number;
}

/** Peak RSS ≈ base + per_layer · layers, through the two layer counts measured. */
export interface RssFit {
  base_mb: number;
  per_layer_mb: number;
  /** base + per_layer · 24: T5-XXL's encoder. */
  at_24_mb: number;
}

export interface T5Result {
  shape: Omit<T5Shape, 'layers'>;
  rows: T5Row[];
  fit: { fp32: RssFit; int8: RssFit };
  /** The int8 encoder's relative L2 error on last_hidden_state, at the larger layer count. */
  rel_l2: number;
  /** The weights of one block as stored: float32, and int8 with its float32 scales. */
  weights_per_layer_mb: { fp32: number; int8: number };
}

async function runT5Case(c: T5Case): Promise<T5CaseResult> {
  const runtime = new Runtime({ worker: false, threads: c.threads });
  try {
    let start = nowMs();
    const model = await T5EncoderModel.fromPretrained(c.dir, {
      runtime,
      quantize: c.quantize ? 'int8' : undefined,
    });
    const loadMs = nowMs() - start;
    const loadPeak = peakRssMb();
    const reset = resetPeakRss();
    try {
      const ids = BigInt64Array.from({ length: CAPTION_LENGTH }, (_, i) =>
        BigInt((i * 7919 + 13) % c.vocabSize),
      );
      start = nowMs();
      const out = await model.forward({
        input_ids: hostTensor('int64', [1, CAPTION_LENGTH], ids),
        attention_mask: hostTensor('int64', [1, CAPTION_LENGTH], new BigInt64Array(CAPTION_LENGTH).fill(1n)),
      });
      const encodeMs = nowMs() - start;
      const hidden = out.last_hidden_state.data as Float32Array;
      writeFileSync(c.output, new Uint8Array(hidden.buffer, hidden.byteOffset, hidden.byteLength));
      const peakNow = peakRssMb();
      const encodePeak = reset ? peakNow : Number.NaN;
      return {
        peak_rss_mb: Math.max(loadPeak, peakNow),
        load_peak_mb: loadPeak,
        encode_peak_mb: encodePeak,
        private_mb: privateMb(),
        load_ms: loadMs,
        encode_ms: encodeMs,
        int8_modules: model.int8Modules?.size ?? 0,
      };
    } finally {
      await model.close();
    }
  } finally {
    await runtime.dispose();
  }
}

const execFileAsync = promisify(execFile);

/** Node flags that load TypeScript (tsx's --import, --require) or size the heap: what a child of this file needs. */
const LOADER_FLAGS = ['--import', '--require', '-r', '--loader', '--experimental-loader'];

/**
 * This process's loader flags, without the rest (`-e SCRIPT`, `--test`, …), which would make the
 * child run something other than this file.
 */
export function childExecArgv(execArgv: readonly string[]): string[] {
  const kept: string[] = [];
  for (let i = 0; i < execArgv.length; i++) {
    const arg = execArgv[i];
    if (LOADER_FLAGS.includes(arg) && i + 1 < execArgv.length) kept.push(arg, execArgv[++i]);
    else if (LOADER_FLAGS.some((f) => arg.startsWith(`${f}=`)) || arg.startsWith('--max-old-space-size='))
      kept.push(arg);
  }
  return kept;
}

/**
 * Runs `caseJson` in a child process of `file` (its entry reads `flag` and the JSON case from argv and
 * prints its result as the last stdout line), under this process's loader flags (tsx in tests and npm
 * run bench) and `nodeFlags`. A failure names `what`, with the child's last stderr lines or the
 * signal that killed it.
 */
export async function runCaseInChild<T>(
  file: string,
  flag: string,
  caseJson: unknown,
  what: string,
  nodeFlags: readonly string[] = [],
): Promise<T> {
  const args = [...childExecArgv(process.execArgv), ...nodeFlags, file, flag, JSON.stringify(caseJson)];
  try {
    const { stdout } = await execFileAsync(process.execPath, args, { encoding: 'utf8', maxBuffer: 1 << 20 });
    return JSON.parse(stdout.trim().split('\n').pop() as string) as T;
  } catch (error) {
    const { stderr, signal } = error as { stderr?: unknown; signal?: unknown };
    // A child the kernel killed for memory has no stderr to show, only its signal.
    const why = signal
      ? `killed by ${String(signal)}`
      : String(stderr ?? '')
          .trim()
          .split('\n')
          .slice(-8)
          .join('\n');
    throw new Error(`${what} failed in its process: ${why || (error as Error).message}`, { cause: error });
  }
}

/** `runT5Case` in a child process of this file. */
function t5CaseInChild(c: T5Case): Promise<T5CaseResult> {
  return runCaseInChild<T5CaseResult>(
    fileURLToPath(import.meta.url),
    '--t5-case',
    c,
    `bench quant: the ${c.quantize ? 'int8' : 'fp32'} encoder load of ${c.dir}`,
  );
}

/**
 * Each phase's peak (load, encode) fitted through the two layer counts; `at_24_mb` is the larger of
 * the two phases at 24 layers. A fit of the overall peaks would mix phases: at one or two layers the
 * int8 load's transient (a float weight read and quantized) outweighs the encode, whose int8 weights
 * grow with the layers.
 */
function fitRss(rows: readonly T5Row[], dtype: 'fp32' | 'int8'): RssFit {
  const [low, high] = rows.filter((r) => r.dtype === dtype).sort((a, b) => a.layers - b.layers);
  const line = (
    key: 'peak_rss_mb' | 'load_peak_mb' | 'encode_peak_mb',
  ): { base: number; perLayer: number } => {
    const perLayer = (high[key] - low[key]) / (high.layers - low.layers);
    return { base: low[key] - perLayer * low.layers, perLayer };
  };
  const phases = [line('load_peak_mb'), line('encode_peak_mb')].filter((f) => Number.isFinite(f.perLayer));
  const at = (f: { base: number; perLayer: number }): number => f.base + f.perLayer * T5_XXL_LAYERS;
  // The phase that is largest at 24 layers (or the overall peak where phases cannot be told apart).
  const fit =
    phases.length === 2 ? (at(phases[0]) >= at(phases[1]) ? phases[0] : phases[1]) : line('peak_rss_mb');
  return { base_mb: fit.base, per_layer_mb: fit.perLayer, at_24_mb: at(fit) };
}

async function benchT5Rss(
  o: QuantBenchOptions,
  width: Omit<T5Shape, 'layers'>,
  cacheDir: string,
  log: (s: string) => void,
): Promise<T5Result> {
  const counts = t5ParameterCounts(width);
  const rows: T5Row[] = [];
  const outputs = mkdtempSync(join(tmpdir(), 'velodiff-quant-t5-'));
  const hidden = new Map<string, Float32Array>();
  try {
    for (const layers of [1, o.t5Layers]) {
      const shape = { ...width, layers };
      const dir = await cachedFolder(
        cacheDir,
        `t5-l${layers}-d${width.dModel}-${folderKey({ shape, seed: 1, writer: 'random-t5' })}`,
        t5FolderBytes(shape),
        (tmp) => writeRandomT5(tmp, shape),
        log,
      );
      checkFreeSpace(
        tmpdir(),
        layers * counts.perLayer,
        'quantizing the encoder at load (its int8 weights go to a temporary file)',
      );
      for (const quantize of [false, true]) {
        const dtype = quantize ? 'int8' : 'fp32';
        const output = join(outputs, `${dtype}-${layers}.f32`);
        const result = await t5CaseInChild({
          dir,
          quantize,
          threads: o.threads,
          vocabSize: width.vocabSize,
          output,
        });
        // Copied out of the Buffer, whose offset in its pool need not be a multiple of 4.
        hidden.set(`${dtype}-${layers}`, new Float32Array(new Uint8Array(readFileSync(output)).buffer));
        rows.push({ dtype, layers, ...result });
        log(
          `  encoder ${dtype}, ${layers} layer${layers > 1 ? 's' : ''}: peak RSS ${result.peak_rss_mb.toFixed(0)} MB`,
        );
      }
    }
  } finally {
    rmSync(outputs, { recursive: true, force: true });
  }
  return {
    shape: width,
    rows,
    fit: { fp32: fitRss(rows, 'fp32'), int8: fitRss(rows, 'int8') },
    rel_l2: relativeL2(
      hidden.get(`int8-${o.t5Layers}`) as Float32Array,
      hidden.get(`fp32-${o.t5Layers}`) as Float32Array,
    ),
    weights_per_layer_mb: t5WeightsPerLayerMb(width),
  };
}

/** The weights of one T5 encoder block as stored: float32, and int8 with its float32 scales (MB). */
export function t5WeightsPerLayerMb(width: Omit<T5Shape, 'layers'>): { fp32: number; int8: number } {
  const mb = (bytes: number): number => bytes / 2 ** 20;
  const inner = width.numHeads * width.dKv;
  const linearWeights = 4 * width.dModel * inner + 3 * width.dModel * width.dFf;
  // Every block Linear is int8 (its input is [B, S, ·]), with a float32 scale per output row:
  // q, k, v (inner), o (d_model), wi_0, wi_1 (d_ff), wo (d_model); the two norms stay float32.
  const int8Scales = 3 * inner + 2 * width.dModel + 2 * width.dFf;
  return {
    fp32: mb(4 * t5ParameterCounts(width).perLayer),
    int8: mb(linearWeights + 4 * int8Scales + 4 * 2 * width.dModel),
  };
}

// ------------------------------------------------------------------------------------------------

export interface QuantBenchResult {
  cpu: { kind: CpuInt8; note: string };
  denoiser: QuantDenoiserResult | undefined;
  t5: T5Result | undefined;
  images: ImageComparison | undefined;
  command: string;
}

/** The command line that reruns `o`. */
export function quantCommand(o: QuantBenchOptions): string {
  const flags: string[] = [];
  const parts = [o.tokens.length > 0, o.t5Layers > 0, o.imageSeeds > 0];
  const only =
    parts.filter(Boolean).length === 1 ? ['denoiser', 't5', 'images'][parts.indexOf(true)] : undefined;
  if (only !== undefined && only !== 'denoiser') flags.push(`--only ${only}`);
  if (o.tokens.length > 0) flags.push(`--tokens ${o.tokens.join(',')} --layers ${o.layers}`);
  if (only === 'denoiser') flags.push('--only denoiser');
  if (o.t5Layers > 0) flags.push(`--t5-layers ${o.t5Layers}`);
  else if (only === undefined) flags.push('--t5-layers 0');
  flags.push(`--reps ${o.reps}`, `--warmups ${o.warmups}`);
  if (o.threads !== 0) flags.push(`--threads ${o.threads}`);
  flags.push(`--image-seeds ${o.imageSeeds}`);
  if (o.imageModel !== undefined) flags.push(`--image-model ${o.imageModel}`);
  if (o.tiny) flags.push('--tiny');
  return `npx velodiff bench quant ${flags.join(' ')}`;
}

export async function benchQuant(o: QuantBenchOptions, log: (s: string) => void): Promise<QuantBenchResult> {
  const cacheDir = o.cacheDir ?? defaultCacheDir();
  const cpu = detectCpuInt8();
  const command = quantCommand(o);
  log(
    `int8 vs float32; ${machineLine()}; CPU int8 units: ${cpu.kind} (${cpu.note}); load average ${loadavg()
      .map((l) => l.toFixed(2))
      .join(' ')}`,
  );
  let denoiser: QuantDenoiserResult | undefined;
  if (o.tokens.length > 0) {
    const shape = { ...(o.tiny ? TINY_PIXART : PIXART_ALPHA_WIDTH), layers: o.layers };
    denoiser = await benchDenoiserInt8(o, shape, cacheDir, log);
    log(`\ncommand: ${command}`);
    log(
      table(
        [
          'tokens',
          'latent',
          'fp32 ms',
          'int8 ms',
          'speed-up',
          'GFLOP',
          'fp32 GFLOP/s',
          'int8 GFLOP/s',
          'attention share',
          'rel L2',
        ],
        denoiser.rows.map((r) => [
          String(r.tokens),
          r.latent,
          r.fp32_ms,
          r.int8_ms,
          r.speedup.toFixed(2),
          r.flops / 1e9,
          r.fp32_gflops,
          r.int8_gflops,
          r.attention_share.toFixed(3),
          r.rel_l2.toExponential(2),
        ]),
      ),
    );
    log(
      'ms: median of the timed runs; int8 GFLOP/s: the same FLOPs over the int8 time; attention share: the FLOPs of ' +
        'q·kᵀ and p·v, which stay float32; rel L2: ‖int8 − fp32‖ / ‖fp32‖ of the output on the same inputs',
    );
  }
  let t5: T5Result | undefined;
  if (o.t5Layers > 0) {
    const width = o.tiny ? TINY_T5 : T5_XXL_WIDTH;
    log(
      `\nText encoder, T5-XXL-shaped (d_model ${width.dModel}, d_ff ${width.dFf}, ${width.numHeads} heads × ${width.dKv}, ` +
        `gated-GELU, vocab ${width.vocabSize}), random weights: each load in a process of its own, then one encode of ` +
        `${CAPTION_LENGTH} tokens`,
    );
    t5 = await benchT5Rss(o, width, cacheDir, log);
    if (denoiser === undefined) log(`\ncommand: ${command}`);
    log(
      table(
        [
          'encoder',
          'layers',
          'peak RSS MB',
          'load peak MB',
          'encode peak MB',
          'private MB',
          'load ms',
          'first encode ms',
          'int8 modules',
        ],
        t5.rows.map((r) => [
          r.dtype,
          String(r.layers),
          r.peak_rss_mb,
          r.load_peak_mb,
          r.encode_peak_mb,
          r.private_mb,
          r.load_ms,
          r.encode_ms,
          String(r.int8_modules),
        ]),
      ),
    );
    const { fit, weights_per_layer_mb: weights } = t5;
    log(
      table(
        ['encoder', 'base MB', 'per layer MB', 'weights per layer MB', `${T5_XXL_LAYERS} layers MB`],
        (['fp32', 'int8'] as const).map((dtype) => [
          dtype,
          fit[dtype].base_mb,
          fit[dtype].per_layer_mb,
          weights[dtype],
          fit[dtype].at_24_mb,
        ]),
      ),
    );
    log(
      `peak RSS: the child's VmHWM over load (load peak) and, reset after it, over the first encode (encode peak; the mapped checkpoint's pages count once read); fit: ` +
        `each phase through 1 and ${o.t5Layers} layers, extrapolated to ${T5_XXL_LAYERS}, the larger phase kept; private: anonymous memory after the encode; ` +
        `int8 rel L2 of last_hidden_state at ${o.t5Layers} layers: ${t5.rel_l2.toExponential(2)}`,
    );
  }
  let images: ImageComparison | undefined;
  if (o.imageSeeds > 0) {
    const modelDir = o.imageModel ?? shippedModelDir();
    const seeds = Array.from({ length: o.imageSeeds }, (_, i) => i);
    // --tiny (tests): two prompts, two steps.
    const prompts = o.tiny ? IMAGE_PROMPTS.slice(0, 2) : IMAGE_PROMPTS;
    const steps = o.tiny ? 2 : IMAGE_STEPS;
    log(
      `\n(c) ${modelDir}: the same prompts and seeds in float32 and int8 (${steps} steps, CFG ${IMAGE_GUIDANCE}); ` +
        `${prompts.length} prompts × ${seeds.length} seeds`,
    );
    images = await compareInt8Images({
      modelDir,
      prompts,
      seeds,
      steps,
      guidance: IMAGE_GUIDANCE,
      threads: o.threads,
    });
    if (denoiser === undefined && t5 === undefined) log(`\ncommand: ${command}`);
    log(
      table(
        ['images', 'PSNR median dB', 'PSNR min dB', 'SSIM median', 'SSIM min'],
        [
          [
            String(images.images),
            images.psnr_median,
            images.psnr_min,
            images.ssim_median.toFixed(4),
            images.ssim_min.toFixed(4),
          ],
        ],
      ),
    );
    const worst = [...images.rows].sort((a, b) => a.psnr - b.psnr).slice(0, 3);
    log(
      `lowest PSNR: ${worst.map((r) => `"${r.prompt}" seed ${r.seed}: ${r.psnr.toFixed(1)} dB`).join('; ')}`,
    );
  }
  return { cpu, denoiser, t5, images, command };
}

/** Part (c)'s prompts: the README sample grid's rows. */
const IMAGE_PROMPTS = README_GRID_PROMPTS;
const IMAGE_STEPS = 25;
const IMAGE_GUIDANCE = 4.5;

/**
 * What `bench quant --json` prints: the contract's keys first (the 1024-token row, else the first
 * measured; null where part (a) was not run), then the other rows and the encoder's figures.
 */
export function quantJson(result: QuantBenchResult): Record<string, unknown> {
  const rows = result.denoiser?.rows ?? [];
  const head = rows.find((r) => r.tokens === 1024) ?? rows[0];
  const t5 = result.t5;
  return {
    tokens: head?.tokens ?? null,
    fp32_ms: head?.fp32_ms ?? null,
    int8_ms: head?.int8_ms ?? null,
    speedup: head?.speedup ?? null,
    cpu_int8: result.cpu.kind,
    rel_l2: head?.rel_l2 ?? null,
    cpu_int8_flags: result.cpu.note,
    int8_modules: result.denoiser?.int8_modules ?? null,
    fp32_load_ms: result.denoiser?.fp32_load_ms ?? null,
    int8_load_ms: result.denoiser?.int8_load_ms ?? null,
    rows,
    t5_fp32_rss_24_mb: t5?.fit.fp32.at_24_mb ?? null,
    t5_int8_rss_24_mb: t5?.fit.int8.at_24_mb ?? null,
    t5_rel_l2: t5?.rel_l2 ?? null,
    t5: t5 ?? null,
    image_psnr_median: result.images?.psnr_median ?? null,
    image_psnr_min: result.images?.psnr_min ?? null,
    image_ssim_median: result.images?.ssim_median ?? null,
    image_ssim_min: result.images?.ssim_min ?? null,
    command: result.command,
  };
}

// Child-process entry: one encoder load, printed as JSON.
if (process.argv[2] === '--t5-case' && process.argv[1] === fileURLToPath(import.meta.url)) {
  console.log(JSON.stringify(await runT5Case(JSON.parse(process.argv[3]) as T5Case)));
}
