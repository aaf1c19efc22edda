import { OptionError } from '../errors.js';
import { VelodiffEmojiClassifier } from '../models/emoji-classifier.js';
import { PixArtPipeline } from '../pipelines/index.js';
import { shippedModelDir } from '../pipelines/shipped-model.js';
import { Runtime } from '../runtime/runtime.js';
import { loadEmojiDataset } from '../train/data/emoji-dataset.js';
import type { EvalProgress, EvalResult } from '../train/eval/evaluate.js';
import { evalJson, evaluateTextToImage, pipelineGenerator } from '../train/eval/evaluate.js';
import { shippedClassifierDir } from '../train/eval/shipped-classifier.js';
import {
  attentionFlags,
  attentionOption,
  quantizeFlag,
  quantizeOption,
  tgateFlag,
  tgateOption,
} from './acceleration-flags.js';
import type { FlagSpec } from './args.js';
import { parseArgs, usage } from './args.js';
import { ProgressLine, progressBar } from './progress.js';
import { runtimeFlags, runtimeOptions } from './runtime-flags.js';
import { accelFlags, applyAccel } from './accel.js';

const FLAGS: Record<string, FlagSpec> = {
  model: {
    type: 'string',
    description: 'a diffusers PixArt-α/Σ pipeline folder (default: the shipped models/emoji/)',
  },
  classifier: {
    type: 'string',
    description: 'the emoji classifier folder (default: the shipped models/emoji-classifier/)',
  },
  samples: {
    type: 'integer',
    description: 'images to generate (default: one per held-out prompt emoji, ≈ 190)',
  },
  steps: { type: 'integer', description: 'denoising steps (default 25; 4 with --accel flash)' },
  guidance: {
    type: 'number',
    description: 'classifier-free guidance scale, off at ≤ 1 (default 4.5; 0 with --accel flash)',
  },
  seed: { type: 'integer', description: 'seed of image 0; image i uses seed + i', default: 0 },
  size: {
    type: 'integer',
    description:
      "generate at this side in pixels, a multiple of the model's (2×, 4×: zero-shot high resolution); the classifier sees the images box-reduced to the model's size",
  },
  batch: { type: 'integer', description: 'images per generation call', default: 8 },
  json: { type: 'boolean', description: 'end with one JSON line of the figures' },
  ...accelFlags,
  ...attentionFlags,
  ...tgateFlag,
  ...quantizeFlag,
  ...runtimeFlags,
  help: { type: 'boolean', description: 'show this help' },
};

const SUMMARY = `How well a text-to-image model draws emoji, measured on held-out emoji (the validation split)
with velodiff's own emoji classifier:
  FED        Fréchet distance between classifier features of generated and real held-out emoji
             (lower is better). NOT ImageNet FID: another network and feature space; compare FED
             only with FED from the same classifier.
  alignment  share of generated images whose category (and subcategory) the classifier recovers
             from the prompt's emoji (higher is better; category chance ≈ 0.2).
  ms/image   generation time per image (text encoder, denoiser steps, VAE), compilation excluded.
The "real" row is the ceiling: the same figures for the real images of the prompts.
Needs the emoji packages (npm ci in a checkout).`;

export async function evalCommand(argv: string[]): Promise<number> {
  const { positional, flags } = parseArgs(argv, FLAGS, 'eval');
  if (flags.help) {
    console.log(
      usage('eval [--model DIR] [--samples N] [--steps N] [--guidance G] [--json]', SUMMARY, FLAGS),
    );
    return 0;
  }
  if (positional.length > 0)
    throw new OptionError(`eval: unexpected argument "${positional[0]}"; see velodiff eval --help`);
  const quantize = quantizeOption(flags, 'eval');
  const modelDir = flags.model === undefined ? shippedModelDir() : String(flags.model);
  const classifierDir = flags.classifier === undefined ? shippedClassifierDir() : String(flags.classifier);
  const samples = flags.samples as number | undefined;
  let steps = flags.steps as number | undefined;
  let guidance = flags.guidance as number | undefined;
  const progress = new ProgressLine();

  const runtime = new Runtime(runtimeOptions(flags));
  try {
    progress.update('eval: loading the emoji data set');
    const dataset = await loadEmojiDataset({
      onProgress: (done, total) =>
        progress.update(`eval: preparing emoji ${progressBar(done / total)} ${done}/${total}`),
    });
    const classifier = await VelodiffEmojiClassifier.fromPretrained(classifierDir, { runtime });
    const pipeline = await PixArtPipeline.fromPretrained(modelDir, { runtime, quantize });
    let result: EvalResult;
    let run: { steps: number; guidance: number; accel?: string };
    try {
      let attention = attentionOption(flags);
      let tgate = tgateOption(flags);
      const accel = await applyAccel(pipeline, flags, {
        command: 'eval',
        shipped: flags.model === undefined,
        steps,
        guidance,
        tgate,
        attention,
      });
      for (const line of accel?.lines ?? []) progress.note(line);
      attention = accel?.attention ?? attention;
      tgate = accel?.tgate ?? tgate;
      steps = accel?.steps ?? steps ?? 25;
      guidance = accel?.guidance ?? guidance ?? 4.5;
      run = { steps, guidance, accel: flags.accel as string | undefined };
      result = await evaluateTextToImage({
        dataset,
        classifier,
        generate: pipelineGenerator(pipeline, {
          guidance,
          runOptions: { attention, tgate },
          ...(flags.size !== undefined ? { size: flags.size as number } : {}),
        }),
        samples,
        steps,
        seed: flags.seed as number,
        batchSize: flags.batch as number,
        onProgress: (event: EvalProgress) =>
          progress.update(
            `eval: ${event.stage} ${progressBar(event.done / event.total)} ${event.done}/${event.total}`,
          ),
      });
    } finally {
      await pipeline.close();
      await classifier.close();
    }
    progress.done();
    console.log(table(result, { modelDir, classifierDir, ...run }));
    if (flags.json) console.log(JSON.stringify(evalJson(result)));
  } finally {
    await runtime.dispose();
  }
  return 0;
}

function table(
  result: EvalResult,
  run: { modelDir: string; classifierDir: string; steps: number; guidance: number; accel?: string },
): string {
  const rows: [string, string, string, string, string][] = [
    ['', 'FED ↓', 'category ↑', 'subcategory ↑', 'ms/image'],
    [
      'generated',
      result.generated.fed.toFixed(3),
      result.generated.alignment.toFixed(3),
      result.generated.subcategoryAlignment.toFixed(3),
      result.msPerImage.toFixed(1),
    ],
    [
      'real (ceiling)',
      result.real.fed.toFixed(3),
      result.real.alignment.toFixed(3),
      result.real.subcategoryAlignment.toFixed(3),
      '',
    ],
  ];
  const perCategory: string[][] = [
    ['category of the prompt', 'prompts', 'generated', 'real'],
    ...result.byCategory.map((c) => [
      c.category,
      String(c.prompts),
      c.generated.toFixed(2),
      c.real.toFixed(2),
    ]),
  ];
  return [
    `model ${run.modelDir}${run.accel ? ` --accel ${run.accel}` : ''}, ${result.samples} images, ${run.steps} steps, guidance ${run.guidance}`,
    `classifier ${run.classifierDir}; FED against ${result.referenceImages} held-out emoji, prompts from ${result.promptPool} others` +
      (result.fedEpsilon > 0
        ? ` (covariances singular at this count: ε = ${result.fedEpsilon.toExponential(0)} added, as pytorch-fid)`
        : ''),
    ...aligned(rows),
    '',
    'category alignment by the category of the prompt (generated: the model; real: the classifier on the real emoji)',
    ...aligned(perCategory),
  ].join('\n');
}

/** Rows as columns: the first left-aligned, the others right-aligned. */
function aligned(rows: readonly (readonly string[])[]): string[] {
  const widths = rows[0].map((_, c) => Math.max(...rows.map((r) => r[c].length)));
  return rows.map((r) =>
    r.map((cell, c) => (c === 0 ? cell.padEnd(widths[c]) : cell.padStart(widths[c]))).join('  '),
  );
}
