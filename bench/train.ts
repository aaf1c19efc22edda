/**
 * Training throughput: one optimizer update (TrainStep.run — forward + backward in one ORT session,
 * parameters fed and gradients returned — then AdamW on the host) of
 *   (1) the text-to-image step of the shipped model's size: T5 encoder (d_model 256, 4 layers) →
 *       PixArt (8 layers, width 192, patch 1 on 4×16×16 latents) → min-SNR MSE, every parameter trained;
 *   (2) the VAE step: the shipped AutoencoderKL (32/64/64 channels) on 64×64 images, L1 + KL;
 * with random-init parameters, as samples/s and achieved GFLOP/s (TrainStep.flops / time), against
 * the fp32 MatMul GFLOP/s of a [1024×1024]·[1024×1024] chain measured in the same run, runs of the
 * three interleaved so that machine noise hits them alike.
 */

import { Graph, matmul, sum } from '../src/graph/index.js';
import { TorchGenerator } from '../src/random/torch-generator.js';
import { hostTensor, type HostTensor } from '../src/runtime/host-tensor.js';
import { Runtime } from '../src/runtime/runtime.js';
import { physicalCores } from '../src/runtime/cpu-cores.js';
import { parsePixArtConfig } from '../src/models/pixart-transformer.js';
import { parseT5EncoderConfig } from '../src/models/t5-encoder.js';
import { AdamW } from '../src/train/adamw.js';
import type { Batch } from '../src/train/data/loader.js';
import { initParameters } from '../src/train/parameters.js';
import { TrainStep, type TrainStepSpec } from '../src/train/train-step.js';
import {
  EMOJI_TEXT_TO_IMAGE_MODEL,
  resolveTextToImageConfigs,
  textToImageInitRules,
  textToImageStepSpec,
} from '../src/train/trainers/text-to-image.js';
import { vaeTrainer } from '../src/train/trainers/vae.js';
import { median, nowMs, table } from './stats.js';

export interface TrainBenchOptions {
  /** Micro-batch of the text-to-image step. */
  batch: number;
  /** Micro-batch of the VAE step. */
  vaeBatch: number;
  /** Timed updates per model (after two untimed). */
  reps: number;
  threads: number;
  /** Tokenizer vocabulary of the text encoder (the trainer builds it from the captions). */
  vocab: number;
  /** Caption tokens. */
  textLength: number;
  /** Run ORT in the calling thread instead of the worker `velodiff train` uses. */
  inline: boolean;
}

export interface TrainBenchRow {
  model: 'text-to-image' | 'vae';
  batch: number;
  parameters: number;
  /** Median ms of one update (step run + AdamW). */
  ms: number;
  /** Median ms of TrainStep.run alone, and of the host AdamW update. */
  step_ms: number;
  optimizer_ms: number;
  samples_per_s: number;
  /** FLOPs of one step (forward + backward). */
  flops: number;
  gflops: number;
  fraction: number;
}

export interface TrainBenchResult {
  /** The text-to-image step's figures (the contract's keys). */
  samples_per_s: number;
  gflops: number;
  matmul_gflops: number;
  fraction: number;
  vae: { samples_per_s: number; gflops: number; fraction: number };
  rows: TrainBenchRow[];
  threads: number;
}

/** One model's update: the compiled step, its parameters, optimizer and a fixed batch. */
interface Update {
  row: Omit<
    TrainBenchRow,
    'ms' | 'step_ms' | 'optimizer_ms' | 'samples_per_s' | 'gflops' | 'fraction' | 'flops'
  >;
  step: TrainStep;
  run(): Promise<{ stepMs: number; optimizerMs: number }>;
}

async function compileUpdate(runtime: Runtime, c: TrainBenchCase): Promise<Update> {
  const { model, batch, params, feeds } = c;
  const step = await TrainStep.compile(runtime, c.spec);
  const optimizer = new AdamW([...params.keys()], { lr: 1e-4 });
  const parameters = [...params.values()].reduce((n, p) => n + p.length, 0);
  return {
    row: { model, batch, parameters },
    step,
    async run() {
      const t0 = nowMs();
      const { grads } = await step.run(params, feeds);
      const t1 = nowMs();
      optimizer.step(params, grads);
      return { stepMs: t1 - t0, optimizerMs: nowMs() - t1 };
    },
  };
}

/** What one benchmarked step is made of, before compiling (bench/profile-train.ts profiles it). */
export interface TrainBenchCase {
  model: TrainBenchRow['model'];
  batch: number;
  spec: TrainStepSpec;
  params: Map<string, Float32Array>;
  feeds: Record<string, HostTensor>;
}

export function textToImageCase(
  o: Pick<TrainBenchOptions, 'batch' | 'vocab' | 'textLength'>,
): TrainBenchCase {
  const latentSize = 16;
  const configs = resolveTextToImageConfigs(EMOJI_TEXT_TO_IMAGE_MODEL, {
    latentChannels: 4,
    latentSize,
    vocabSize: o.vocab,
  });
  const transformer = parsePixArtConfig(configs.transformer, 'bench transformer');
  const textEncoder = parseT5EncoderConfig(configs.textEncoder, 'bench text encoder');
  const spec = textToImageStepSpec({ transformer, textEncoder, latentSize, maxTextLength: o.textLength });
  const params = initParameters(spec.shapes, {
    seed: 0,
    rules: textToImageInitRules(spec.shapes, textEncoder),
  });
  const generator = new TorchGenerator(1);
  const b = o.batch;
  const latents: [number, number, number, number] = [b, 4, latentSize, latentSize];
  const feeds = {
    input_ids: hostTensor(
      'int64',
      [b, o.textLength],
      Array.from({ length: b * o.textLength }, (_, i) =>
        i % o.textLength < 12 ? 2 + ((i * 7919) % (o.vocab - 2)) : 0,
      ),
    ),
    attention_mask: hostTensor(
      'float32',
      [b, o.textLength],
      Float32Array.from({ length: b * o.textLength }, (_, i) => Number(i % o.textLength < 12)),
    ),
    hidden_states: hostTensor('float32', latents, generator.randn(latents)),
    target: hostTensor('float32', latents, generator.randn(latents)),
    timestep: hostTensor(
      'float32',
      [b],
      Float32Array.from({ length: b }, (_, i) => (i * 37) % 1000),
    ),
    weights: hostTensor('float32', [b], new Float32Array(b).fill(1)),
  };
  return { model: 'text-to-image', batch: b, spec: { ...spec, dims: { B: b } }, params, feeds };
}

export function vaeCase(o: Pick<TrainBenchOptions, 'vaeBatch'>): TrainBenchCase {
  const trainer = vaeTrainer();
  const params = trainer.initialParameters(0);
  const size = trainer.imageSize;
  const generator = new TorchGenerator(2);
  const images = generator.rand([o.vaeBatch, 3, size, size]).map((u) => 2 * u - 1);
  const batch: Batch = {
    images,
    shape: [o.vaeBatch, 3, size, size],
    captions: [],
    dropped: [],
    labels: undefined,
    indices: [],
    flipped: [],
    epoch: 0,
  };
  return {
    model: 'vae',
    batch: o.vaeBatch,
    spec: trainer.stepSpec(o.vaeBatch),
    params,
    feeds: trainer.makeBatch(batch),
  };
}

/** A chain of 8 [1024×1024]·[1024×1024] MatMuls with constant weights: fp32 MatMul GFLOP/s. */
async function matmulReference(runtime: Runtime): Promise<{ flops: number; run(): Promise<void> }> {
  const m = 1024;
  const k = 1024;
  const layers = 8;
  const g = new Graph('matmul_reference');
  const generator = new TorchGenerator(3);
  let y = g.input('x', 'float32', [m, k]);
  for (let i = 0; i < layers; i++) {
    const w = g.weight(`w${i}`, 'float32', [k, k], {
      kind: 'data',
      data: generator.randn([k, k]).map((v) => v / Math.sqrt(k)),
      storedDType: 'float32',
    });
    y = matmul(y, w);
  }
  // Summed so that copying the output does not count against the MatMuls.
  g.output('y', sum(y, 0));
  const compiled = await runtime.compile(g);
  const x = { x: hostTensor('float32', [m, k], generator.randn([m, k])) };
  return { flops: 2 * m * k * k * layers, run: async () => void (await compiled.run(x)) };
}

export async function benchTrain(o: TrainBenchOptions, log: (s: string) => void): Promise<TrainBenchResult> {
  const runtime = new Runtime({ threads: o.threads, worker: !o.inline });
  try {
    const updates = [
      await compileUpdate(runtime, textToImageCase(o)),
      await compileUpdate(runtime, vaeCase(o)),
    ];
    const reference = await matmulReference(runtime);
    const stepTimes = updates.map(() => [] as number[]);
    const optimizerTimes = updates.map(() => [] as number[]);
    const matmulTimes: number[] = [];
    // Two untimed updates: ORT's arena grows through the first two runs of a step graph (124K page
    // faults in each for the text-to-image step, bench/profile-train.ts), not after.
    for (let r = -2; r < o.reps; r++) {
      for (const [i, update] of updates.entries()) {
        // The reference runs beside every update, so that a change of machine load between them
        // shows in both.
        const t0 = nowMs();
        await reference.run();
        if (r >= 0) matmulTimes.push(nowMs() - t0);
        const { stepMs, optimizerMs } = await update.run();
        if (r >= 0) {
          stepTimes[i].push(stepMs);
          optimizerTimes[i].push(optimizerMs);
        }
      }
    }
    const matmulGflops = reference.flops / median(matmulTimes) / 1e6;
    const rows: TrainBenchRow[] = updates.map((update, i) => {
      const stepMs = median(stepTimes[i]);
      const optimizerMs = median(optimizerTimes[i]);
      const ms = median(stepTimes[i].map((t, j) => t + optimizerTimes[i][j]));
      const flops = update.step.flops;
      const gflops = flops / ms / 1e6;
      return {
        ...update.row,
        ms,
        step_ms: stepMs,
        optimizer_ms: optimizerMs,
        samples_per_s: (update.row.batch * 1000) / ms,
        flops,
        gflops,
        fraction: gflops / matmulGflops,
      };
    });
    const threads = o.threads || physicalCores();
    log(
      `training updates (TrainStep.run + AdamW), random-init parameters, ${o.reps} timed runs each, ` +
        `threads=${o.threads || `${physicalCores()} (one per core)`}, ORT in ${o.inline ? 'the calling thread' : 'a worker thread'}`,
    );
    log(
      table(
        [
          'model',
          'batch',
          'params M',
          'ms/update',
          'step ms',
          'AdamW ms',
          'samples/s',
          'GFLOP/step',
          'GFLOP/s',
          'fraction',
        ],
        rows.map((r) => [
          r.model,
          r.batch,
          r.parameters / 1e6,
          r.ms,
          r.step_ms,
          r.optimizer_ms,
          r.samples_per_s,
          r.flops / 1e9,
          r.gflops,
          r.fraction.toFixed(3),
        ]),
      ),
    );
    log(`fp32 MatMul [1024×1024]·[1024×1024] ×8 in the same run: ${matmulGflops.toFixed(1)} GFLOP/s`);
    log(
      `command: npx velodiff bench train --batch ${o.batch} --vae-batch ${o.vaeBatch} --reps ${o.reps}` +
        `${o.threads ? ` --threads ${o.threads}` : ''}${o.inline ? ' --inline' : ''}`,
    );
    const [denoiser, vae] = rows;
    return {
      samples_per_s: denoiser.samples_per_s,
      gflops: denoiser.gflops,
      matmul_gflops: matmulGflops,
      fraction: denoiser.fraction,
      vae: { samples_per_s: vae.samples_per_s, gflops: vae.gflops, fraction: vae.fraction },
      rows,
      threads,
    };
  } finally {
    await runtime.dispose();
  }
}
