import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TensorToWrite } from '../src/io/safetensors.js';
import { writeSafetensors } from '../src/io/safetensors.js';
import { PixArtTransformer2DModel } from '../src/models/pixart-transformer.js';
import type { PixArtRunOptions } from '../src/pipelines/pixart.js';
import { PixArtPipeline } from '../src/pipelines/pixart.js';
import { hostTensor } from '../src/runtime/host-tensor.js';
import { Runtime } from '../src/runtime/runtime.js';
import { DPMSolverMultistepScheduler } from '../src/schedulers/index.js';
import { PIXART_ALPHA_WIDTH, pixArtFlops, writeRandomPixArt } from './random-pixart.js';
import { median, nowMs, table } from './stats.js';

export interface PipelineBenchOptions {
  /** Image tokens (a square number): 256 = a 32×32 latent. */
  tokens: number;
  layers: number;
  reps: number;
  threads: number;
  /** Which rows to run (the plain loop always runs: it is the baseline); default all. */
  variants?: PipelineVariant[];
}

export type PipelineVariant = 'plain' | 'tgate-v1' | 'tgate-v2' | 'flash';

export interface PipelineBenchRow {
  id: PipelineVariant;
  variant: string;
  steps: number;
  ms: number;
  speedup: number;
  gflop: number;
}

/**
 * End-to-end sampling loops (T5 and the VAE excluded: fixed random caption embeddings, latent
 * output) of a PixArt-α-width denoiser with random weights: the plain CFG loop vs T-GATE at the
 * authors' PixArt settings, and vs the Flash recipe (fused LoRA, LCM, 4 steps, no CFG).
 */
export async function benchPipeline(
  o: PipelineBenchOptions,
  log: (s: string) => void,
): Promise<PipelineBenchRow[]> {
  const dir = mkdtempSync(join(tmpdir(), 'velodiff-pipe-'));
  const shape = { ...PIXART_ALPHA_WIDTH, layers: o.layers };
  const dim = shape.heads * shape.headDim;
  const side = Math.round(Math.sqrt(o.tokens));
  if (side * side !== o.tokens) throw new Error(`tokens ${o.tokens} must be a square number`);
  const size = side * shape.patchSize * 8;
  const captionLength = 120;
  try {
    await writeRandomPixArt(dir, shape);
    const loraDir = join(dir, 'flash-lora');
    await writeRandomFlashLora(loraDir, shape.layers, dim);
    const runtime = new Runtime({ threads: o.threads });
    const transformer = await PixArtTransformer2DModel.fromPretrained(dir, { runtime });
    // PixArt's pipeline default: DPM-Solver++ 2M (the authors' T-GATE PixArt runs use it too).
    const scheduler = new DPMSolverMultistepScheduler({});
    const pipe = PixArtPipeline.fromComponents({ transformer, scheduler, runtime });
    const fill = (n: number, seed: number): Float32Array =>
      Float32Array.from({ length: n }, (_, i) => Math.sin(i * 0.37 + seed));
    const embeds = (seed: number) =>
      hostTensor(
        'float32',
        [1, captionLength, shape.captionChannels],
        fill(captionLength * shape.captionChannels, seed),
      );
    const mask = hostTensor('float32', [1, captionLength], new Float32Array(captionLength).fill(1));
    const base: PixArtRunOptions = {
      promptEmbeds: embeds(1),
      promptAttentionMask: mask,
      negativePromptEmbeds: embeds(2),
      negativePromptAttentionMask: mask,
      width: size,
      height: size,
      seed: 0,
      outputType: 'latent',
      // Sizes as given: the 1024-px checkpoint would bin every size to its aspect-ratio table.
      useResolutionBinning: false,
    };
    const forward = (batch: number): number => pixArtFlops(shape, o.tokens, captionLength, batch) / 1e9;
    const crossAttention = (batch: number): number =>
      (batch *
        o.layers *
        (2 * o.tokens * dim * dim * 2 +
          2 * captionLength * dim * dim * 2 +
          2 * 2 * o.tokens * captionLength * dim)) /
      1e9;
    const all: {
      id: PipelineVariant;
      name: string;
      options: Partial<PixArtRunOptions>;
      flash?: boolean;
      gflop: number;
    }[] = [
      {
        id: 'plain',
        name: 'plain, 25 steps, CFG 4.5',
        options: { numInferenceSteps: 25, guidanceScale: 4.5 },
        gflop: 25 * forward(2),
      },
      {
        id: 'tgate-v1',
        name: 'T-GATE V1 (gate 8)',
        options: {
          numInferenceSteps: 25,
          guidanceScale: 4.5,
          tgate: { gateStep: 8, spInterval: 1, warmUp: 0 },
        },
        gflop: 8 * forward(2) + 17 * (forward(1) - crossAttention(1)),
      },
      {
        id: 'tgate-v2',
        name: 'T-GATE V2 (gate 15, sp 3, warm-up 2)',
        options: {
          numInferenceSteps: 25,
          guidanceScale: 4.5,
          tgate: { gateStep: 15, spInterval: 3, fiInterval: 1, warmUp: 2 },
        },
        // Self-attention reused at 7 planning steps (4,5,7,8,10,11,13), cross-attention after the gate.
        gflop:
          15 * forward(2) -
          7 * selfAttentionGflop(o.tokens, dim, o.layers, 2) +
          10 * (forward(1) - crossAttention(1)),
      },
      {
        id: 'flash',
        name: 'Flash: fused LoRA, LCM, 4 steps, no CFG',
        options: {},
        flash: true,
        gflop: 4 * forward(1),
      },
    ];
    const wanted = new Set<PipelineVariant>(['plain', ...(o.variants ?? all.map((v) => v.id))]);
    const variants = all.filter((v) => wanted.has(v.id));
    const times = variants.map(() => [] as number[]);
    const plainScheduler = pipe.scheduler;
    let flashScheduler = plainScheduler;
    let flashOptions: Partial<PixArtRunOptions> = {};
    for (let r = -1; r < o.reps; r++) {
      for (let v = 0; v < variants.length; v++) {
        const variant = variants[v];
        if (variant.flash) {
          if (r === -1) {
            const { runOptions } = await pipe.useFlashDiffusion(loraDir, { adapterName: 'flash' });
            flashScheduler = pipe.scheduler;
            flashOptions = runOptions;
          } else {
            pipe.scheduler = flashScheduler;
            pipe.setAdapters('flash', 1);
            pipe.fuseLora();
          }
        }
        const t0 = nowMs();
        await pipe.run({ ...base, ...variant.options, ...(variant.flash ? flashOptions : {}) });
        if (r >= 0) times[v].push(nowMs() - t0);
        if (variant.flash) {
          pipe.unfuseLora();
          pipe.setAdapters('flash', 0);
          pipe.scheduler = plainScheduler;
        }
      }
    }
    const plainMs = median(times[0]);
    const rows = variants.map((v, i) => ({
      id: v.id,
      variant: v.name,
      steps: v.flash ? 4 : 25,
      ms: median(times[i]),
      speedup: plainMs / median(times[i]),
      gflop: v.gflop,
    }));
    log(
      `PixArt-α width, ${o.layers} layers, ${o.tokens} image tokens (${size}×${size} px), 120 caption tokens, ${o.reps} runs each`,
    );
    log(
      table(
        ['variant', 'ms/image', 'speed-up', 'GFLOP', 'FLOP ratio'],
        rows.map((r) => [
          r.variant,
          r.ms,
          r.speedup.toFixed(2),
          r.gflop,
          (rows[0].gflop / r.gflop).toFixed(2),
        ]),
      ),
    );
    await pipe.close();
    await runtime.dispose();
    return rows;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** What `bench tgate --json` prints: the V1 setting against the plain loop (and V2 when run). */
export interface TgateJson {
  steps: number;
  gate_step: number;
  baseline_ms: number;
  tgate_ms: number;
  speedup: number;
  flop_ratio: number;
  v2_ms: number | null;
  v2_speedup: number | null;
  tokens: number;
  layers: number;
}

export function tgateJson(rows: readonly PipelineBenchRow[], o: PipelineBenchOptions): TgateJson {
  const plain = rows.find((r) => r.id === 'plain') as PipelineBenchRow;
  const v1 = rows.find((r) => r.id === 'tgate-v1') as PipelineBenchRow;
  const v2 = rows.find((r) => r.id === 'tgate-v2');
  return {
    steps: 25,
    gate_step: 8,
    baseline_ms: plain.ms,
    tgate_ms: v1.ms,
    speedup: v1.speedup,
    flop_ratio: plain.gflop / v1.gflop,
    v2_ms: v2?.ms ?? null,
    v2_speedup: v2?.speedup ?? null,
    tokens: o.tokens,
    layers: o.layers,
  };
}

function selfAttentionGflop(tokens: number, dim: number, layers: number, batch: number): number {
  return (batch * layers * (2 * tokens * dim * dim * 4 + 2 * 2 * tokens * tokens * dim)) / 1e9;
}

/** A Flash-PixArt-shaped PEFT LoRA (rank 64, alpha 8) on the attention and feed-forward Linear layers. */
async function writeRandomFlashLora(dir: string, layers: number, dim: number): Promise<void> {
  mkdirSync(dir, { recursive: true });
  const rank = 64;
  let state = 7;
  const random = (): number =>
    ((state = (Math.imul(state, 1664525) + 1013904223) >>> 0) / 4294967296 - 0.5) * 0.02;
  const tensors: Record<string, TensorToWrite> = {};
  const add = (module: string, inF: number, outF: number): void => {
    tensors[`base_model.model.${module}.lora_A.weight`] = {
      dtype: 'F32',
      shape: [rank, inF],
      data: Float32Array.from({ length: rank * inF }, random),
    };
    tensors[`base_model.model.${module}.lora_B.weight`] = {
      dtype: 'F32',
      shape: [outF, rank],
      data: Float32Array.from({ length: rank * outF }, random),
    };
  };
  for (let i = 0; i < layers; i++) {
    for (const a of ['attn1', 'attn2'])
      for (const p of ['to_q', 'to_k', 'to_v', 'to_out.0'])
        add(`transformer_blocks.${i}.${a}.${p}`, dim, dim);
    add(`transformer_blocks.${i}.ff.net.0.proj`, dim, 4 * dim);
    add(`transformer_blocks.${i}.ff.net.2`, 4 * dim, dim);
  }
  await writeSafetensors(join(dir, 'adapter_model.safetensors'), tensors);
  writeFileSync(
    join(dir, 'adapter_config.json'),
    JSON.stringify({ peft_type: 'LORA', r: rank, lora_alpha: 8 }),
  );
}
