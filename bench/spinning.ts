/**
 * `bench spinning`: ORT's intra-op spinning (`RuntimeOptions.allowSpinning`) on a whole generation.
 * A pipeline runs several ORT sessions one after another in one worker thread (the text encoder, the
 * denoiser's step graphs, the VAE decoder), each with its own intra-op pool; with spinning on, a
 * pool's idle threads poll for work instead of sleeping. This times the same generation with the
 * runtime's spinning on and off, both pipelines loaded at once, runs interleaved in alternating order.
 */
import { loadavg } from 'node:os';

import { PixArtPipeline } from '../src/pipelines/pixart.js';
import { shippedModelDir } from '../src/pipelines/shipped-model.js';
import { Runtime } from '../src/runtime/runtime.js';
import { machineLine, median, nowMs, table } from './stats.js';

export interface SpinningBenchOptions {
  /** A PixArt pipeline folder; default the shipped emoji model. */
  model?: string;
  prompt: string;
  steps: number;
  reps: number;
  warmups: number;
  threads: number;
}

export interface SpinningRow {
  variant: 'spinning' | 'no spinning';
  allow_spinning: boolean;
  /** Median wall time of one generation (prompt to image). */
  ms: number;
  /** Median CPU time of the process (every thread) over one generation. */
  cpu_ms: number;
}

export interface SpinningResult {
  rows: SpinningRow[];
  /** Spinning's ms over no spinning's: above 1, turning spinning off is faster. */
  speedup: number;
  /** ORT sessions one generation ran through (per variant). */
  sessions: number;
  /** Whether both variants made the same image from the same seed (spinning changes no arithmetic). */
  same_image: boolean;
  model: string;
  command: string;
}

/** The command line that reruns `o`. */
export function spinningCommand(o: SpinningBenchOptions): string {
  const flags = [`--steps ${o.steps}`, `--reps ${o.reps}`, `--warmups ${o.warmups}`];
  if (o.model !== undefined) flags.push(`--model ${o.model}`);
  if (o.prompt !== 'red heart') flags.push(`--prompt ${JSON.stringify(o.prompt)}`);
  if (o.threads !== 0) flags.push(`--threads ${o.threads}`);
  return `npx velodiff bench spinning ${flags.join(' ')}`;
}

export async function benchSpinning(
  o: SpinningBenchOptions,
  log: (s: string) => void,
): Promise<SpinningResult> {
  const model = o.model ?? shippedModelDir();
  const command = spinningCommand(o);
  const variants = [true, false].map((allowSpinning) => ({
    allowSpinning,
    // In a worker thread, as `velodiff generate` runs a pipeline.
    runtime: new Runtime({ threads: o.threads, allowSpinning }),
  }));
  const pipes: PixArtPipeline[] = [];
  try {
    for (const v of variants) pipes.push(await PixArtPipeline.fromPretrained(model, { runtime: v.runtime }));
    const run = { prompt: o.prompt, numInferenceSteps: o.steps, seed: 0 };
    const wall: number[][] = [[], []];
    const cpu: number[][] = [[], []];
    const images: (ArrayLike<number> | undefined)[] = [undefined, undefined];
    for (let r = -o.warmups; r < o.reps; r++) {
      // Alternate which variant goes first, so a slow start or a drift falls on both.
      for (const v of (r & 1) === 0 ? [0, 1] : [1, 0]) {
        const cpuStart = process.cpuUsage();
        const start = nowMs();
        const out = await pipes[v].run(run);
        const ms = nowMs() - start;
        const used = process.cpuUsage(cpuStart);
        if (r >= 0) {
          wall[v].push(ms);
          cpu[v].push((used.user + used.system) / 1e3);
        }
        images[v] ??= (out.images ?? out.latents).data as Float32Array;
      }
    }
    const rows: SpinningRow[] = variants.map((v, i) => ({
      variant: v.allowSpinning ? 'spinning' : 'no spinning',
      allow_spinning: v.allowSpinning,
      ms: median(wall[i]),
      cpu_ms: median(cpu[i]),
    }));
    const [a, b] = images as ArrayLike<number>[];
    const sameImage = a.length === b.length && Array.from(a).every((x, i) => x === b[i]);
    const sessions = variants[0].runtime.cachedSessions;
    log(
      `${model}: "${o.prompt}", ${o.steps} steps, prompt to image; ${sessions} ORT sessions per generation; ` +
        `${o.warmups} warm-up + ${o.reps} timed generations per variant, alternating; ${machineLine()}; ` +
        `load average ${loadavg()
          .map((l) => l.toFixed(2))
          .join(' ')}`,
    );
    log(`command: ${command}`);
    log(
      table(
        ['variant', 'ms/image', 'CPU ms/image', 'CPU / wall', 'vs spinning'],
        rows.map((r) => [
          r.variant,
          r.ms,
          r.cpu_ms,
          (r.cpu_ms / r.ms).toFixed(2),
          (rows[0].ms / r.ms).toFixed(3),
        ]),
      ),
    );
    log(
      `CPU ms: user + system time of the whole process (every thread) over one generation; same image both ways: ${sameImage}`,
    );
    return { rows, speedup: rows[0].ms / rows[1].ms, sessions, same_image: sameImage, model, command };
  } finally {
    for (const pipe of pipes) await pipe.close();
    for (const v of variants) await v.runtime.dispose();
  }
}
