/**
 * `bench flux-memory` (issue 13 §4): the host memory of a FLUX.1-dev-shaped transformer, loaded from
 * bf16 safetensors in float32 or with `quantize: 'int8'`, and one step at a given token count.
 *
 * The folder has FLUX.1-dev's widths and `double` + `single` blocks (bench/random-flux.ts, random
 * bf16 weights, cached), or is one given with `dir` (any FluxTransformer2DModel folder, a real
 * download included). It is measured twice, each time in a process of its own so that peaks do not
 * mix: with all its blocks, and with half of each kind (⌊double/2⌋, ⌊single/2⌋: a view of the same
 * weights whose config.json lists fewer blocks, the unused tensors never read). Each run reports
 * load time, the load's peak RSS (VmHWM), the step graph's compile and the step's time, the peak
 * RSS over compile and step (VmHWM reset after the load), and the anonymous memory after it.
 * Between load and compile the child collects its garbage: an int8 load leaves the float32 copies
 * of the last weights it read to the collector (a few hundred MB at FLUX.1-dev's width, measured
 * 130 MB at no block and 320 MB at one single block), which would otherwise count as growth per
 * block; the load phase's peak keeps them.
 *
 * Extrapolation to FLUX.1-dev's 19 + 38 blocks: each block is measured by its weights as the
 * sessions hold them (int8 weights 1 byte plus a float32 scale per row, every other tensor float32:
 * the bf16 Cast is folded at session creation), read from the loaded model. Each phase's peak is
 * fitted as base + k · (block bytes) through the two runs and evaluated at 19 + 38 blocks; the
 * larger phase there is the estimate. With FLUX.1-dev's 1 : 2 ratio of double to single blocks kept
 * (2 + 4 → 1 + 2, the default) this is the straight line through the two runs in units of
 * one double and two single blocks. Step time is fitted the same way in the blocks' FLOPs
 * (random-flux.ts `fluxBlockFlops`), load time in their bytes.
 */
import { mkdtempSync, readdirSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import { OptionError } from '../src/errors.js';
import { readConfig } from '../src/io/diffusers.js';
import { FluxTransformer2DModel, parseFluxTransformerConfig } from '../src/models/flux-transformer.js';
import { hostTensor } from '../src/runtime/host-tensor.js';
import { Runtime } from '../src/runtime/runtime.js';
import { defaultCacheDir } from '../src/train/data/cache.js';
import type { SpaceAdvice } from './quant.js';
import { cachedFolder, checkFreeSpace, detectCpuInt8, folderKey, runCaseInChild } from './quant.js';
import type { FluxShape } from './random-flux.js';
import {
  FLUX_DEV_SHAPE,
  fluxBlockFlops,
  fluxDevShape,
  fluxFolderBytes,
  fluxParameterCounts,
  writeRandomFlux,
} from './random-flux.js';
import { machineLine, nowMs, peakRssMb, privateMb, resetPeakRss, table } from './stats.js';

export interface FluxMemoryOptions {
  /** Blocks of the random folder (ignored with `dir`, whose config says). */
  double: number;
  single: number;
  /** Packed image tokens of the step (4096: a 1024×1024 image). */
  tokens: number;
  /** Text tokens of the step (FLUX.1-dev's T5 length: 512). */
  text: number;
  quantize: boolean;
  threads: number;
  /** A FluxTransformer2DModel folder to measure instead of a random one. */
  dir?: string;
  /** Width of the random folder: FLUX.1-dev's 24 × 128 unless given (tests). */
  heads?: number;
  headDim?: number;
  cacheDir?: string;
}

/** One run: a folder (or a view of it) loaded in a child process, one step. */
interface FluxCase {
  dir: string;
  quantize: boolean;
  threads: number;
  tokens: number;
  text: number;
}

export interface FluxCaseResult {
  /** fromPretrained: opening and checking the weights, and an int8 load's quantization. */
  load_ms: number;
  /** VmHWM over the load. */
  load_peak_mb: number;
  /** The step graph's session creation (ORT folds the bf16 Cast here: the float32 copy). */
  compile_ms: number;
  /** The step itself, on the compiled session. */
  step_ms: number;
  /** VmHWM over compile and step, after a reset at the end of the load (NaN where it cannot be reset). */
  step_peak_mb: number;
  /** The larger of the two. */
  peak_rss_mb: number;
  /** Anonymous resident memory after the step (RSS less the mapped files; NaN off Linux). */
  private_mb: number;
  int8_modules: number;
  /** Weights of one double block, one single block, and all outside the blocks, as the sessions hold them. */
  double_block_bytes: number;
  single_block_bytes: number;
  outside_bytes: number;
  /** Whether every value of the step's output is finite. */
  finite: boolean;
}

export interface FluxMemoryRow extends FluxCaseResult {
  double: number;
  single: number;
}

/** A phase's peak (or a time) as base + per_byte · block bytes, and its value at 19 + 38 blocks. */
export interface FluxFit {
  phase: 'load' | 'step';
  base_mb: number;
  per_double_mb: number;
  per_single_mb: number;
  at_full_mb: number;
  /**
   * True when the two runs' peaks differ by less than the bytes the extra blocks hold (memory noise
   * at small sizes): the line then rises by exactly the held bytes, through the larger run's peak.
   */
  floored: boolean;
}

export interface FluxMemoryResult {
  command: string;
  dtype: 'float32' | 'int8';
  dir: string;
  /** The folder's weight files, as stored. */
  file_bytes: number;
  tokens: number;
  text: number;
  width: { heads: number; head_dim: number };
  rows: FluxMemoryRow[];
  /** FLUX.1-dev's block counts at this width: parameters and bf16 file size from the config. */
  full: { double: number; single: number; parameters: number; file_bytes: number };
  fit: FluxFit;
  load_ms_at_full: number;
  step_ms_at_full: number;
  cpu_int8: string;
}

const SPACE: SpaceAdvice = { command: 'bench flux-memory', advice: 'lower --double and --single' };

/** `velodiff bench flux-memory …` for these options (the line printed with the table). */
export function fluxMemoryCommand(o: FluxMemoryOptions): string {
  const parts = ['npx velodiff bench flux-memory'];
  if (o.dir !== undefined) parts.push('--dir', o.dir);
  else parts.push('--double', String(o.double), '--single', String(o.single));
  parts.push('--tokens', String(o.tokens), '--text', String(o.text));
  if (o.quantize) parts.push('--quantize', 'int8');
  if (o.dir === undefined && o.heads !== undefined && o.heads !== FLUX_DEV_SHAPE.heads)
    parts.push('--heads', String(o.heads));
  if (o.dir === undefined && o.headDim !== undefined && o.headDim !== FLUX_DEV_SHAPE.headDim)
    parts.push('--head-dim', String(o.headDim));
  if (o.threads !== 0) parts.push('--threads', String(o.threads));
  return parts.join(' ');
}

async function runFluxCase(c: FluxCase): Promise<FluxCaseResult> {
  const runtime = new Runtime({ worker: false, threads: c.threads });
  try {
    let start = nowMs();
    const model = await FluxTransformer2DModel.fromPretrained(c.dir, {
      runtime,
      quantize: c.quantize ? 'int8' : undefined,
      // A view lists fewer blocks than its weights hold: the unused-tensor warning is expected.
      onWarning: () => {},
    });
    const loadMs = nowMs() - start;
    const loadPeak = peakRssMb();
    (globalThis as { gc?: () => void }).gc?.();
    const reset = resetPeakRss();
    try {
      const { config } = model;
      start = nowMs();
      await model.compile({ imageTokens: c.tokens, textTokens: c.text });
      const compileMs = nowMs() - start;
      const inputs = stepInputs(config.inChannels, config.jointAttentionDim, config.pooledProjectionDim, c);
      if (config.guidanceEmbeds) inputs.guidance = hostTensor('float32', [1], new Float32Array([3.5]));
      start = nowMs();
      const { host } = await model.step(inputs);
      const stepMs = nowMs() - start;
      const stepPeak = reset ? peakRssMb() : Number.NaN;
      const bytes = heldBlockBytes(model);
      return {
        load_ms: loadMs,
        load_peak_mb: loadPeak,
        compile_ms: compileMs,
        step_ms: stepMs,
        step_peak_mb: stepPeak,
        peak_rss_mb: Math.max(loadPeak, reset ? stepPeak : 0),
        private_mb: privateMb(),
        int8_modules: model.int8Modules?.size ?? 0,
        double_block_bytes: bytes.double,
        single_block_bytes: bytes.single,
        outside_bytes: bytes.outside,
        finite: (host.sample.data as Float32Array).every(Number.isFinite),
      };
    } finally {
      await model.close();
    }
  } finally {
    await runtime.dispose();
  }
}

/** One step's inputs, batch 1: uniform latents and text states, FluxPipeline's raster ids. */
function stepInputs(
  inChannels: number,
  jointAttentionDim: number,
  pooledProjectionDim: number,
  c: FluxCase,
): Record<string, ReturnType<typeof hostTensor>> {
  let state = 12345;
  const uniform = (n: number): Float32Array =>
    Float32Array.from({ length: n }, () => {
      state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
      return 2 * (state / 4294967296) - 1;
    });
  const width = Math.ceil(Math.sqrt(c.tokens));
  const imgIds = new Float32Array(c.tokens * 3);
  for (let n = 0; n < c.tokens; n++) {
    imgIds[3 * n + 1] = Math.floor(n / width);
    imgIds[3 * n + 2] = n % width;
  }
  return {
    hidden_states: hostTensor('float32', [1, c.tokens, inChannels], uniform(c.tokens * inChannels)),
    encoder_hidden_states: hostTensor(
      'float32',
      [1, c.text, jointAttentionDim],
      uniform(c.text * jointAttentionDim),
    ),
    pooled_projections: hostTensor('float32', [1, pooledProjectionDim], uniform(pooledProjectionDim)),
    timestep: hostTensor('float32', [1], new Float32Array([0.5])),
    img_ids: hostTensor('float32', [c.tokens, 3], imgIds),
    txt_ids: hostTensor('float32', [c.text, 3], new Float32Array(c.text * 3)),
  };
}

/**
 * The weights of block 0 of each kind, and of everything outside the blocks, as the sessions hold
 * them: an int8 module's weight one byte per value plus its float32 scales, every other tensor
 * float32 (a bf16 or fp16 tensor's Cast is folded into a float32 copy).
 */
function heldBlockBytes(model: FluxTransformer2DModel): { double: number; single: number; outside: number } {
  const int8 = model.int8Modules ?? new Set<string>();
  const { numLayers, numSingleLayers } = model.config;
  const sum = { double: 0, single: 0, outside: 0 };
  for (const name of model.weights.names()) {
    const block = /^(transformer_blocks|single_transformer_blocks)\.(\d+)\./.exec(name);
    const index = block ? Number(block[2]) : 0;
    const isDouble = block?.[1] === 'transformer_blocks';
    // Tensors of blocks past the config's counts (a view) are not read.
    if (block && index >= (isDouble ? numLayers : numSingleLayers)) continue;
    if (block && index > 0) continue;
    const { shape } = model.weights.info(name);
    const count = shape.reduce((a, b) => a * b, 1);
    const modulePath = name.replace(/\.weight$/, '');
    const held = name.endsWith('.weight') && int8.has(modulePath) ? count + 4 * shape[0] : 4 * count;
    sum[block ? (isDouble ? 'double' : 'single') : 'outside'] += held;
  }
  return sum;
}

function fluxCaseInChild(c: FluxCase): Promise<FluxCaseResult> {
  return runCaseInChild<FluxCaseResult>(
    fileURLToPath(import.meta.url),
    '--flux-case',
    c,
    `bench flux-memory: the ${c.quantize ? 'int8' : 'float32'} load and step of ${c.dir} (out of memory? lower --double and --single, or --tokens)`,
    ['--expose-gc'],
  );
}

/**
 * A folder that loads as `dir` with only `double` + `single` blocks: its config.json with those
 * counts, and symlinks to every other file of `dir` (the weights are read in place, never copied).
 */
function blockView(dir: string, raw: Record<string, unknown>, double: number, single: number): string {
  const view = mkdtempSync(join(tmpdir(), 'velodiff-flux-view-'));
  for (const entry of readdirSync(dir)) {
    if (entry !== 'config.json') symlinkSync(join(dir, entry), join(view, entry));
  }
  writeFileSync(
    join(view, 'config.json'),
    `${JSON.stringify({ ...raw, num_layers: double, num_single_layers: single }, null, 2)}\n`,
  );
  return view;
}

/** Bytes of a folder's weight files (safetensors, shard indexes). */
function weightFileBytes(dir: string): number {
  return readdirSync(dir)
    .filter((f) => /\.safetensors(\.index\.json)?$/.test(f))
    .reduce((sum, f) => sum + statSync(join(dir, f)).size, 0);
}

/** Straight lines through the two runs in `x`, evaluated at `xFull`: value = base + slope · x. */
function line(
  x: [number, number],
  y: [number, number],
  xFull: number,
): { base: number; slope: number; at: number } {
  const slope = (y[1] - y[0]) / (x[1] - x[0]);
  const base = y[0] - slope * x[0];
  return { base, slope, at: base + slope * xFull };
}

/**
 * A phase's peak RSS (MB) as a line in the held block bytes. The extra blocks' weights are resident,
 * so the peak rises by at least their bytes; a slope below that (even negative, when the blocks are
 * small beside the process's own noise) is replaced by exactly the held bytes, through the larger run.
 */
export function fitPeak(
  x: [number, number],
  peakMb: [number, number],
  xFull: number,
): { base: number; slope: number; at: number; floored: boolean } {
  const fitted = line(x, peakMb, xFull);
  const held = 1 / 2 ** 20;
  if (fitted.slope >= held) return { ...fitted, floored: false };
  const base = peakMb[1] - held * x[1];
  return { base, slope: held, at: base + held * xFull, floored: true };
}

export async function benchFluxMemory(
  o: FluxMemoryOptions,
  log: (s: string) => void,
): Promise<FluxMemoryResult> {
  const cacheDir = o.cacheDir ?? defaultCacheDir();
  let dir: string;
  if (o.dir !== undefined) {
    dir = resolve(o.dir);
  } else {
    const shape = fluxDevShape(
      { double: o.double, single: o.single },
      { heads: o.heads, headDim: o.headDim },
    );
    const dim = shape.heads * shape.headDim;
    dir = await cachedFolder(
      cacheDir,
      `flux-d${shape.doubleLayers}-s${shape.singleLayers}-w${dim}-${folderKey({ shape, seed: 1, writer: 'random-flux' })}`,
      fluxFolderBytes(shape),
      (tmp) => writeRandomFlux(tmp, shape),
      log,
      SPACE,
    );
  }
  const raw = await readConfig(dir);
  const config = parseFluxTransformerConfig(raw, join(dir, 'config.json'), () => {});
  const counts: [number, number][] = [
    [Math.floor(config.numLayers / 2), Math.floor(config.numSingleLayers / 2)],
    [config.numLayers, config.numSingleLayers],
  ];
  if (config.numLayers < 1 || config.numSingleLayers < 1) {
    throw new OptionError(
      `bench flux-memory: ${dir} has ${config.numLayers} double and ${config.numSingleLayers} single blocks; ` +
        'the growth of each kind is measured on its first block, so it needs at least one of each',
    );
  }
  // The full model at this width: FLUX.1-dev's counts.
  const full: FluxShape = {
    ...FLUX_DEV_SHAPE,
    heads: config.numAttentionHeads,
    headDim: config.attentionHeadDim,
    inChannels: config.inChannels,
    jointAttentionDim: config.jointAttentionDim,
    pooledProjectionDim: config.pooledProjectionDim,
    guidanceEmbeds: config.guidanceEmbeds,
    axesDimsRope: config.axesDimsRope,
  };
  const fileBytes = weightFileBytes(dir);
  if (o.quantize) {
    // Quantizing at load writes the int8 weights of the blocks it reads to the temporary folder.
    checkFreeSpace(
      tmpdir(),
      fileBytes / 2,
      'quantizing at load (its int8 weights go to a temporary file)',
      SPACE,
    );
  }
  const dtype = o.quantize ? 'int8' : 'float32';
  const cpu = detectCpuInt8();
  const command = fluxMemoryCommand(o);
  log(
    `FluxTransformer2DModel ${config.numAttentionHeads}×${config.attentionHeadDim} wide, ${dtype}, ${o.tokens} image + ${o.text} text tokens, ` +
      `runs at ${counts.map(([d, s]) => `${d} + ${s}`).join(' and ')} blocks, each in a process of its own; ${machineLine()}; ` +
      `CPU int8 units: ${cpu.kind}; load average ${loadavg()
        .map((l) => l.toFixed(2))
        .join(' ')}`,
  );
  const rows: FluxMemoryRow[] = [];
  for (const [double, single] of counts) {
    const whole = double === config.numLayers && single === config.numSingleLayers;
    const view = whole ? dir : blockView(dir, raw, double, single);
    try {
      const result = await fluxCaseInChild({
        dir: view,
        quantize: o.quantize,
        threads: o.threads,
        tokens: o.tokens,
        text: o.text,
      });
      rows.push({ double, single, ...result });
      log(
        `  ${double} + ${single} blocks: peak RSS ${result.peak_rss_mb.toFixed(0)} MB, step ${(result.step_ms / 1e3).toFixed(2)} s`,
      );
    } finally {
      if (!whole) rmSync(view, { recursive: true, force: true });
    }
  }

  const [small, large] = rows;
  const perDouble = large.double_block_bytes;
  const perSingle = large.single_block_bytes;
  const held = (d: number, s: number): number => d * perDouble + s * perSingle;
  const x: [number, number] = [held(small.double, small.single), held(large.double, large.single)];
  const xFull = held(full.doubleLayers, full.singleLayers);
  const phases = (['load', 'step'] as const).map((phase) => {
    const key = phase === 'load' ? 'load_peak_mb' : 'step_peak_mb';
    return { phase, ...fitPeak(x, [small[key], large[key]], xFull) };
  });
  const usable = phases.filter((p) => Number.isFinite(p.at));
  const chosen = usable.reduce((a, b) => (b.at > a.at ? b : a), usable[0] ?? phases[0]);
  const fit: FluxFit = {
    phase: chosen.phase,
    base_mb: chosen.base,
    per_double_mb: chosen.slope * perDouble,
    per_single_mb: chosen.slope * perSingle,
    at_full_mb: chosen.at,
    floored: chosen.floored,
  };
  const flops = fluxBlockFlops(full, o.tokens, o.text);
  const f = (d: number, s: number): number => d * flops.perDouble + s * flops.perSingle;
  const stepAtFull = line(
    [f(small.double, small.single), f(large.double, large.single)],
    [small.step_ms, large.step_ms],
    f(full.doubleLayers, full.singleLayers),
  ).at;
  const loadAtFull = line(x, [small.load_ms, large.load_ms], xFull).at;
  const fullBytes = fluxFolderBytes(full);
  const parameters = fluxParameterCounts(full).total;

  log(
    table(
      [
        'blocks',
        'load s',
        'load peak MB',
        'compile s',
        'step s',
        'step peak MB',
        'peak MB',
        'private MB',
        'int8 modules',
      ],
      rows.map((r) => [
        `${r.double} + ${r.single}`,
        r.load_ms / 1e3,
        r.load_peak_mb,
        r.compile_ms / 1e3,
        r.step_ms / 1e3,
        r.step_peak_mb,
        r.peak_rss_mb,
        r.private_mb,
        String(r.int8_modules),
      ]),
    ),
  );
  const gb = (mb: number): string => (mb / 1024).toFixed(2);
  log(
    `weights: ${(fileBytes / 1e9).toFixed(3)} GB in ${dir}; held per double block ${(perDouble / 2 ** 20).toFixed(1)} MB, per single block ${(perSingle / 2 ** 20).toFixed(1)} MB, outside ${(large.outside_bytes / 2 ** 20).toFixed(1)} MB`,
  );
  log(
    `${full.doubleLayers} + ${full.singleLayers} blocks (${(parameters / 1e9).toFixed(2)} G parameters, ${(fullBytes / 1e9).toFixed(2)} GB in bf16): ` +
      `peak RSS ≈ ${gb(fit.at_full_mb)} GiB (${fit.phase} phase: ${fit.base_mb.toFixed(0)} MB + ${fit.per_double_mb.toFixed(1)} MB per double + ${fit.per_single_mb.toFixed(1)} MB per single block${fit.floored ? '; the runs differ by less than the weights the extra blocks hold, so each block counts its held bytes' : ''}), ` +
      `load ≈ ${(loadAtFull / 1e3).toFixed(1)} s, step ≈ ${(stepAtFull / 1e3).toFixed(1)} s`,
  );
  log(`command: ${command}`);
  return {
    command,
    dtype,
    dir,
    file_bytes: fileBytes,
    tokens: o.tokens,
    text: o.text,
    width: { heads: config.numAttentionHeads, head_dim: config.attentionHeadDim },
    rows,
    full: { double: full.doubleLayers, single: full.singleLayers, parameters, file_bytes: fullBytes },
    fit,
    load_ms_at_full: loadAtFull,
    step_ms_at_full: stepAtFull,
    cpu_int8: cpu.kind,
  };
}

// Child-process entry: one load and step, printed as JSON.
if (process.argv[2] === '--flux-case' && process.argv[1] === fileURLToPath(import.meta.url)) {
  console.log(JSON.stringify(await runFluxCase(JSON.parse(process.argv[3]) as FluxCase)));
}
