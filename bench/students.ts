/**
 * The speed–quality table of issue 12: the teacher (25 steps, CFG) against T-GATE and each distilled
 * student of it (CLEAR per radius, with and without pooled keys/values, LinFusion, Flash at 4 and 2
 * steps) and their combinations, on the held-out emoji prompts of `velodiff eval`:
 *
 *   FED and category alignment (eval's classifier), PSNR and SSIM against the teacher's image of the
 *   same prompt and seed, ms per image, the measured speed-up, and the speed-up predicted from FLOPs
 *   before measuring (the denoiser's step graphs as each row builds them — T-GATE's per-step plan,
 *   CFG's doubled batch — plus the VAE decoder; the text encoder, common and small, is left out).
 *
 * Rows whose student is missing from the students folder are skipped with a note. The teacher's and
 * each row's images for the first prompts go into one grid, rows side by side.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';

import { OptionError } from '../src/errors.js';
import type { TGateOptions } from '../src/attention/tgate.js';
import { pruneDeadStores, tgatePlan } from '../src/attention/tgate.js';
import type { AttentionOption } from '../src/attention/types.js';
import { LinFusionWeights } from '../src/attention/linfusion.js';
import { imagesToRgb } from '../src/io/png.js';
import { buildAutoencoderKLGraph } from '../src/models/autoencoder-kl.js';
import { VelodiffEmojiClassifier } from '../src/models/emoji-classifier.js';
import { buildPixArtGraph } from '../src/models/pixart-transformer.js';
import { ParameterInputs } from '../src/nn/weights.js';
import type { TensorSource } from '../src/nn/weights.js';
import { PixArtPipeline } from '../src/pipelines/pixart.js';
import type { Student } from '../src/pipelines/students.js';
import { defaultTGate, listStudents, parseAccel, resolveAccel } from '../src/pipelines/students.js';
import type { HostTensor } from '../src/runtime/host-tensor.js';
import type { QuantizeOption } from '../src/models/int8.js';
import type { Runtime } from '../src/runtime/runtime.js';
import { loadEmojiDataset } from '../src/train/data/emoji-dataset.js';
import type { ImageTextDataset } from '../src/train/data/dataset.js';
import { evaluateTextToImage, pipelineGenerator } from '../src/train/eval/evaluate.js';
import { heldOutSet, promptItems } from '../src/train/eval/held-out.js';
import { meanSsim, psnr } from '../src/train/eval/image-similarity.js';
import { hashModelFolder } from '../src/train/latent-cache.js';
import type { SampleGrid } from '../src/train/sample-grid.js';
import { countFlops } from '../src/train/train-step.js';
import { appendResult, readResults } from './results.js';
import { table } from './stats.js';

/** One row of the table: what runs. */
export interface StudentRowSpec {
  readonly id: string;
  readonly label: string;
  /** The `--accel` choice ('' for the teacher). */
  readonly accel: string;
  readonly steps: number;
  readonly guidance: number;
}

export interface StudentBenchOptions {
  model: string;
  students: string;
  classifier: string;
  runtime: Runtime;
  samples: number;
  seed: number;
  batch: number;
  /** Row ids to run (default: every row whose students exist). */
  rows?: readonly string[];
  dataset?: ImageTextDataset;
  /** Images per row in the grid (the first prompts). */
  gridImages?: number;
  /** Side of the generated images (default the model's): 2× and 4× are zero-shot high resolution. */
  size?: number;
  /**
   * At a `size` above the model's, CLEAR's staged recipe (methods/clear_linfusion.md §1.7.2) instead
   * of zero-shot: a base image at the model's size with full attention, upscaled ×(size / model's)
   * as PIL's bicubic and refined by SDEdit at `strength` with the row's attention.
   */
  highres?: { strength: number };
  /** Only the FLOP predictions: nothing is generated. */
  predictOnly?: boolean;
  /** Every row, the teacher's too, with the denoiser's and T5's Linears in int8 (the VAE float32). */
  quantize?: QuantizeOption;
  /**
   * A results file (JSON lines): rows measured before with the same size, recipe, prompts and
   * models are read from it, and each newly measured row is added to it.
   */
  results?: string;
}

export interface StudentRow {
  id: string;
  label: string;
  steps: number;
  guidance: number;
  fed: number;
  alignment: number;
  /** Against the teacher's image of the same prompt and seed (the teacher's own row: Infinity and 1). */
  psnr: number;
  ssim: number;
  ms_per_image: number;
  speedup: number;
  gflop_per_image: number;
  predicted_speedup: number;
}

/** The rows the students folder allows, teacher first. */
export function studentRows(students: readonly Student[]): StudentRowSpec[] {
  const rows: StudentRowSpec[] = [
    { id: 'teacher', label: 'teacher, 25 steps, CFG 4.5', accel: '', steps: 25, guidance: 4.5 },
    { id: 'tgate', label: 'T-GATE (gate 15, sp 3, warm-up 2)', accel: 'tgate', steps: 25, guidance: 4.5 },
    // The few-step baseline a distilled student has to beat: the teacher itself cut to Flash's 4 steps.
    { id: 'teacher-4', label: 'teacher, 4 steps, CFG 4.5', accel: '', steps: 4, guidance: 4.5 },
  ];
  const clear = students
    .filter((s) => s.kind === 'clear')
    .sort((a, b) => a.radius! - b.radius! || a.downFactor! - b.downFactor!);
  for (const s of clear) {
    const spec = `clear:${s.radius}${s.downFactor! > 1 ? `:${s.downFactor}` : ''}`;
    const what = `CLEAR r=${s.radius}${s.downFactor! > 1 ? ` d=${s.downFactor}` : ''}`;
    rows.push({ id: spec, label: what, accel: spec, steps: 25, guidance: 4.5 });
    rows.push({
      id: `${spec}+tgate`,
      label: `${what} + T-GATE`,
      accel: `${spec}+tgate`,
      steps: 25,
      guidance: 4.5,
    });
  }
  if (students.some((s) => s.kind === 'linfusion')) {
    rows.push({ id: 'linfusion', label: 'LinFusion', accel: 'linfusion', steps: 25, guidance: 4.5 });
    rows.push({
      id: 'linfusion+tgate',
      label: 'LinFusion + T-GATE',
      accel: 'linfusion+tgate',
      steps: 25,
      guidance: 4.5,
    });
  }
  if (students.some((s) => s.kind === 'flash')) {
    rows.push({ id: 'flash', label: 'Flash, LCM 4 steps, no CFG', accel: 'flash', steps: 4, guidance: 0 });
    rows.push({ id: 'flash-2', label: 'Flash, LCM 2 steps, no CFG', accel: 'flash', steps: 2, guidance: 0 });
    rows.push({
      id: 'flash+tgate',
      label: 'Flash + T-GATE (gate 2, lcm)',
      accel: 'flash+tgate',
      steps: 4,
      guidance: 0,
    });
  }
  return rows;
}

/** A source that answers every tensor with the shape the model reads (for counting FLOPs of graphs that are never run). */
function shapeOnlySource(base: TensorSource): ParameterInputs {
  return new ParameterInputs({
    has: (name) => base.has(name) || name.endsWith('processor.spatial_weight'),
    info: (name, shape) => {
      const s = shape ?? base.info(name).shape;
      return {
        name,
        dtype: 'F32',
        shape: [...s],
        byteLength: 4 * s.reduce((a, b) => a * b, 1),
        fileOffset: 0,
      };
    },
  });
}

/** What one denoising pass of a row runs, for counting its FLOPs. */
interface PassShape {
  /** Side of the image in pixels. */
  size: number;
  /** Steps the pass executes. */
  steps: number;
  guidance: number;
  attention?: AttentionOption;
  tgate?: TGateOptions;
}

/** GFLOP of one denoising pass per image: its step graphs as built (T-GATE's plan, CFG's batch). */
async function denoiserGflop(pipe: PixArtPipeline, o: PassShape): Promise<number> {
  const t = pipe.transformer.config;
  const side = o.size / pipe.vaeScaleFactor;
  const captionLength = pipe.defaultMaxSequenceLength;
  const source = shapeOnlySource(pipe.transformer.weights);
  const cfg = o.guidance > 1;
  const linfusion =
    o.attention?.kind === 'linfusion' ? await LinFusionWeights.open(o.attention.weights) : undefined;
  try {
    const attention =
      o.attention?.kind === 'clear'
        ? {
            kind: 'clear' as const,
            radius: o.attention.radius,
            ...(o.attention.downFactor ? { downFactor: o.attention.downFactor } : {}),
          }
        : o.attention?.kind === 'linfusion'
          ? { kind: 'linfusion' as const }
          : { kind: 'full' as const };
    const plan = o.tgate ? pruneDeadStores(tgatePlan(o.steps, o.tgate, cfg)) : undefined;
    const cache = new Map<string, number>();
    let total = 0;
    for (let i = 0; i < o.steps; i++) {
      const step = plan?.[i];
      const batch = (step ? step.cfg : cfg) ? 2 : 1;
      const tgate = step
        ? {
            selfAttention: step.selfAttention,
            crossAttention: step.crossAttention,
            average: step.average && batch === 2,
          }
        : undefined;
      const key = JSON.stringify({ batch, tgate });
      let flops = cache.get(key);
      if (flops === undefined) {
        const g = buildPixArtGraph(
          t,
          source,
          {
            height: side,
            width: side,
            captionLength,
            withMask: true,
            attention,
            ...(tgate ? { tgate } : {}),
          },
          linfusion ? { linfusion } : {},
        );
        flops = countFlops(g.nodes, { B: batch });
        cache.set(key, flops);
      }
      total += flops;
    }
    return total / 1e9;
  } finally {
    await linfusion?.close();
  }
}

/** GFLOP of the VAE's decoder (or encoder) for one image of `size` pixels a side. */
function vaeGflop(pipe: PixArtPipeline, method: 'decode' | 'encode', size: number): number {
  const vae = pipe.vae;
  if (!vae) return 0;
  const side = size / pipe.vaeScaleFactor;
  const shape =
    method === 'decode' ? [1, pipe.transformer.config.inChannels, side, side] : [1, 3, size, size];
  return (
    countFlops(buildAutoencoderKLGraph(vae.config, shapeOnlySource(vae.weights), method, shape).nodes) / 1e9
  );
}

/**
 * GFLOP per image of a row: one pass and the decoder; for the staged recipe, the base pass and its
 * decoder, the encoder of the upscaled image, the refine pass and the decoder at full size.
 */
async function rowGflop(pipe: PixArtPipeline, base: PassShape, refine?: PassShape): Promise<number> {
  let total = (await denoiserGflop(pipe, base)) + vaeGflop(pipe, 'decode', base.size);
  if (refine) {
    total += vaeGflop(pipe, 'encode', refine.size);
    total += (await denoiserGflop(pipe, refine)) + vaeGflop(pipe, 'decode', refine.size);
  }
  return total;
}

/** How a row runs on its loaded pipeline: the generator's options and the GFLOP per image. */
interface RowPlan {
  gflop: number;
  generator: Parameters<typeof pipelineGenerator>[1];
  /** The students the row runs. */
  students: readonly Student[];
}

/**
 * Plans `spec` on `pipe` (a fresh teacher pipeline this row may change: Flash fuses its LoRA into it):
 * what the generator runs at `size`, zero-shot or staged, and the FLOPs that costs.
 */
async function planRow(
  pipe: PixArtPipeline,
  spec: StudentRowSpec,
  o: StudentBenchOptions,
  ctx: { students: readonly Student[]; teacherSha256: string },
): Promise<RowPlan> {
  let attention: AttentionOption | undefined;
  let accel: ReturnType<typeof parseAccel> | undefined;
  let flash = false;
  let used: readonly Student[] = [];
  if (spec.accel) {
    accel = parseAccel(spec.accel);
    const resolved = resolveAccel(accel, ctx.students, {
      teacherSha256: ctx.teacherSha256,
      studentsDir: o.students,
    });
    attention = resolved.attention;
    if (resolved.flashLora) await pipe.useFlashDiffusion(resolved.flashLora);
    flash = resolved.flashLora !== undefined;
    used = resolved.students;
  }
  const tgateFor = (steps: number): TGateOptions | undefined =>
    accel?.tgate ? defaultTGate(steps, flash) : undefined;
  const size = o.size ?? pipe.defaultSize;
  if (!o.highres) {
    const tgate = tgateFor(spec.steps);
    return {
      gflop: await rowGflop(pipe, { size, steps: spec.steps, guidance: spec.guidance, attention, tgate }),
      generator: { guidance: spec.guidance, runOptions: { attention, tgate }, size },
      students: used,
    };
  }
  // CLEAR's notebook: the base image from the model with full attention, the refine with the
  // student's; the row's LoRA and T-GATE run in both stages.
  const refineSteps = Math.trunc(spec.steps * o.highres.strength);
  if (size / pipe.defaultSize < 2 || refineSteps < 1) {
    throw new OptionError(
      `bench students: the staged recipe needs --size a multiple ≥ 2 of ${pipe.defaultSize} and ` +
        `a strength leaving a step of ${spec.steps} (row ${spec.id}), got size ${size}, strength ${o.highres.strength}`,
    );
  }
  const baseTGate = tgateFor(spec.steps);
  const refineTGate = tgateFor(refineSteps);
  return {
    gflop: await rowGflop(
      pipe,
      { size: pipe.defaultSize, steps: spec.steps, guidance: spec.guidance, tgate: baseTGate },
      { size, steps: refineSteps, guidance: spec.guidance, attention, tgate: refineTGate },
    ),
    generator: {
      guidance: spec.guidance,
      runOptions: { tgate: baseTGate },
      size,
      highres: {
        strength: o.highres.strength,
        ...(attention ? { attention } : {}),
        ...(refineTGate ? { tgate: refineTGate } : {}),
      },
    },
    students: used,
  };
}

/** A row's measured figures and images (8-bit RGB, concatenated, base64), as a results file keeps them. */
interface MeasuredRow {
  fed: number;
  alignment: number;
  ms_per_image: number;
  images: string;
}

/** The prediction of a row, from FLOPs alone. */
export interface StudentPrediction {
  id: string;
  label: string;
  gflop_per_image: number;
  predicted_speedup: number;
}

/**
 * A prompt shortened to fit above a 128-pixel tile (17 characters), the style kept: "red heart, noto
 * style" → "red heart (noto)", "person getting haircut, twemoji style" → "person… (twemoji)".
 */
export function gridLabel(prompt: string, width = 17): string {
  const m = /^(.*), (\w+) style$/.exec(prompt);
  const [name, suffix] = m ? [m[1], ` (${m[2]})`] : [prompt, ''];
  const room = width - suffix.length;
  return (name.length <= room ? name : `${name.slice(0, room - 1)}…`) + suffix;
}

export async function benchStudents(
  o: StudentBenchOptions,
  log: (s: string) => void,
): Promise<{
  rows: StudentRow[];
  predictions: StudentPrediction[];
  grid: SampleGrid;
  skipped: string[];
  size: number;
}> {
  const dataset = o.dataset ?? (await loadEmojiDataset());
  const students = existsSync(o.students) ? await listStudents(o.students) : [];
  const all = studentRows(students);
  const wanted = o.rows ? all.filter((r) => r.id === 'teacher' || o.rows!.includes(r.id)) : all;
  const skipped = (o.rows ?? []).filter((id) => !all.some((r) => r.id === id));
  for (const id of skipped) log(`skipped ${id}: no such row for the students in ${o.students}`);
  const ctx = { students, teacherSha256: await hashModelFolder(join(o.model, 'transformer')) };

  // First every row's prediction from FLOPs, printed before anything is measured.
  const predictions: StudentPrediction[] = [];
  let size = o.size ?? 0;
  for (const spec of wanted) {
    const pipe = await PixArtPipeline.fromPretrained(o.model, { runtime: o.runtime, quantize: o.quantize });
    try {
      const { gflop } = await planRow(pipe, spec, o, ctx);
      size = o.size ?? pipe.defaultSize;
      predictions.push({
        id: spec.id,
        label: spec.label,
        gflop_per_image: gflop,
        predicted_speedup: predictions.length ? predictions[0].gflop_per_image / gflop : 1,
      });
    } finally {
      await pipe.close();
    }
  }
  log(
    table(
      ['row', 'steps', `GFLOP/image at ${size}²`, 'predicted speed-up'],
      predictions.map((p, k) => [
        p.label,
        String(wanted[k].steps),
        p.gflop_per_image.toFixed(2),
        p.predicted_speedup.toFixed(2),
      ]),
    ),
  );
  if (o.predictOnly)
    return { rows: [], predictions, grid: { title: [], columnLabels: [], rows: [] }, skipped, size };

  const classifier = await VelodiffEmojiClassifier.fromPretrained(o.classifier, { runtime: o.runtime });
  const rows: StudentRow[] = [];
  const images: Uint8Array[][] = [];
  const done = readResults<MeasuredRow>(o.results, 'bench students');
  try {
    for (const [k, spec] of wanted.entries()) {
      const pipe = await PixArtPipeline.fromPretrained(o.model, { runtime: o.runtime, quantize: o.quantize });
      try {
        const plan = await planRow(pipe, spec, o, ctx);
        const gflop = predictions[k].gflop_per_image;
        // What the row's figures depend on: the row, the size and recipe, the prompts, the models.
        const key = JSON.stringify({
          id: spec.id,
          size,
          highres: o.highres ?? null,
          quantize: o.quantize ?? null,
          samples: o.samples,
          seed: o.seed,
          batch: o.batch,
          teacher: ctx.teacherSha256,
          students: await Promise.all(plan.students.map((st) => hashModelFolder(st.dir))),
        });
        let measured = done.get(key);
        if (measured) {
          log(`reusing ${spec.label} from ${o.results}`);
        } else {
          const captured: HostTensor[] = [];
          const generate = pipelineGenerator(pipe, {
            ...plan.generator,
            onImages: (images) => captured.push(images),
          });
          const result = await evaluateTextToImage({
            dataset,
            classifier,
            // The classifier sees the model's size: larger images are box-reduced to it.
            generate,
            samples: o.samples,
            steps: spec.steps,
            seed: o.seed,
            batchSize: o.batch,
            // The warm-up's refine must run a step too: int(steps · strength) ≥ 1.
            warmupSteps: o.highres ? Math.ceil(1 / o.highres.strength) : 1,
          });
          const rgb = captured.flatMap((t) => imagesToRgb(t.data as Float32Array, t.shape));
          measured = {
            fed: result.generated.fed,
            alignment: result.generated.alignment,
            ms_per_image: result.msPerImage,
            images: Buffer.concat(rgb).toString('base64'),
          };
          appendResult(o.results, key, measured);
        }
        const bytes = size * size * 3;
        const all = Buffer.from(measured.images, 'base64');
        // Results written before 2026-12-07 also kept the warm-up's images, ahead of the measured ones.
        const skip = Math.max(0, all.length / bytes - o.samples);
        const rgb = Array.from(
          { length: all.length / bytes - skip },
          (_, i) => new Uint8Array(all.subarray((skip + i) * bytes, (skip + i + 1) * bytes)),
        );
        images.push(rgb);
        const teacherImages = images[0];
        const pairs = rgb.map((img, i) => [
          { width: size, height: size, data: img },
          { width: size, height: size, data: teacherImages[i] },
        ]);
        const mean = (xs: number[]): number => xs.reduce((a, b) => a + b, 0) / xs.length;
        const teacherRow = rows[0];
        rows.push({
          id: spec.id,
          label: spec.label,
          steps: spec.steps,
          guidance: spec.guidance,
          fed: measured.fed,
          alignment: measured.alignment,
          psnr: mean(pairs.map(([a, b]) => Math.min(psnr(a, b), 100))),
          ssim: mean(pairs.map(([a, b]) => meanSsim(a, b))),
          ms_per_image: measured.ms_per_image,
          speedup: teacherRow ? teacherRow.ms_per_image / measured.ms_per_image : 1,
          gflop_per_image: gflop,
          predicted_speedup: teacherRow ? teacherRow.gflop_per_image / gflop : 1,
        });
        log(
          `${spec.label}: FED ${measured.fed.toFixed(2)}, alignment ${measured.alignment.toFixed(3)}, ${measured.ms_per_image.toFixed(0)} ms/image`,
        );
      } finally {
        await pipe.close();
      }
    }
  } finally {
    await classifier.close();
  }
  log(
    table(
      [
        'row',
        'steps',
        'FED ↓',
        'alignment ↑',
        'PSNR dB',
        'SSIM',
        'ms/image',
        'GFLOP',
        'predicted ×',
        'measured ×',
      ],
      rows.map((r) => [
        r.label,
        String(r.steps),
        r.fed.toFixed(2),
        r.alignment.toFixed(3),
        r.id === 'teacher' ? '—' : r.psnr.toFixed(2),
        r.id === 'teacher' ? '—' : r.ssim.toFixed(3),
        r.ms_per_image.toFixed(0),
        r.gflop_per_image.toFixed(2),
        r.predicted_speedup.toFixed(2),
        r.speedup.toFixed(2),
      ]),
    ),
  );
  const count = Math.min(o.gridImages ?? 8, images[0]?.length ?? 0);
  const prompts = promptItems(heldOutSet(dataset), count).map((i) => dataset.items[i].captions[0]);
  const grid: SampleGrid = {
    title: [
      `The teacher and its students on the same held-out prompts (above each column, shortened) and seeds ${o.seed}–${o.seed + count - 1}`,
    ],
    columnLabels: prompts.map((prompt) => gridLabel(prompt)),
    rows: rows.map((r, k) => ({
      label: r.label,
      cells: images[k].slice(0, count).map((data) => ({ image: { width: size, height: size, data } })),
    })),
  };
  return { rows, predictions, grid, skipped, size };
}
