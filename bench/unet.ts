import { loadavg } from 'node:os';

import { Graph } from '../src/graph/graph.js';
import { conv2d, sum } from '../src/graph/ops/index.js';
import { buildUNetGraph } from '../src/models/unet-2d-condition.js';
import { hostTensor } from '../src/runtime/host-tensor.js';
import type { CompiledGraph, Runtime } from '../src/runtime/runtime.js';
import { countFlops } from '../src/train/train-step.js';
import type { UNetBenchSession, UNetBenchShape } from './random-unet.js';
import { benchUNetFolder, openUNet } from './random-unet.js';
import { constantWeight, feedForwardReference, fill } from './reference.js';
import { machineLine, median, nowMs, privateMb, sessionLine, table } from './stats.js';

/** Classifier-free guidance runs the conditional and unconditional halves as one batch. */
export const CFG_BATCH = 2;
/** CLIP's context length: SD 1.5's encoder_hidden_states are [B, 77, 768]. */
export const TEXT_LENGTH = 77;

export interface UNetBenchOptions extends UNetBenchSession {
  shape: UNetBenchShape;
  /** Latent [height, width] pairs, timed in this order. */
  latents: readonly (readonly [number, number])[];
  reps: number;
  /** Untimed runs of every case before the timed ones (ORT's arena grows through a session's first runs). */
  warmups: number;
  threads: number;
  /** Where the random model folder is cached (default: velodiff's cache dir). */
  cacheDir?: string;
}

export interface UNetBenchRow {
  latent: string;
  ms: number;
  gflops: number;
  matmul_gflops: number;
  fraction: number;
  conv_gflops: number;
  conv_fraction: number;
  /** FLOPs of one step, and their split by op (countFlops on the step's graph). */
  flops: number;
  matmul_flops: number;
  conv_flops: number;
  attention_flops: number;
  /** The step's time if its MatMuls and attention ran at the MatMul reference's rate and its convolutions at the Conv reference's. */
  ceiling_ms: number;
  /** ceiling_ms / ms. */
  of_ceiling: number;
  peak_rss_mb: number;
  /** Anonymous resident memory after the size's runs, sessions alive (NaN off Linux). */
  private_mb: number;
}

export interface UNetBenchResult {
  rows: UNetBenchRow[];
  parameters: number;
  dir: string;
  optimization_level: string;
  disable_prepacking: boolean;
}

/** `64x64,128x128` (or `64,128` for squares) as [height, width] pairs. */
export function parseLatents(value: string): [number, number][] | undefined {
  const latents: [number, number][] = [];
  for (const item of value.split(',')) {
    const parts = item.trim().split('x').map(Number);
    const [h, w] = parts.length === 1 ? [parts[0], parts[0]] : parts;
    if (parts.length > 2 || ![h, w].every((d) => Number.isInteger(d) && d >= 1)) return undefined;
    latents.push([h, w]);
  }
  return latents;
}

/** Matmul, convolution and attention FLOPs of one UNet step at a latent size (batch and text as CFG runs them). */
export function unetStepFlops(graph: Graph): { matmul: number; conv: number; attention: number } {
  const dims = { B: CFG_BATCH };
  const of = (op: string): number =>
    countFlops(
      graph.nodes.filter((n) => n.op === op),
      dims,
    );
  return { matmul: of('matmul'), conv: of('conv2d') + of('convTranspose2d'), attention: of('attention') };
}

/**
 * References at the UNet's second level (the first where there is one) for this latent: the
 * transformer's feed-forward as two MatMuls [B·N, C]·[C, 4C]·[4C, C], and a resnet's 3×3 Conv
 * C → C at that level's resolution, each with constant weights and its output summed so that copying
 * a large output does not count against it.
 */
async function references(
  runtime: Runtime,
  shape: UNetBenchShape,
  [height, width]: readonly [number, number],
): Promise<{ run: () => Promise<[number, number]>; matmulFlops: number; convFlops: number }> {
  const level = Math.min(1, shape.levels - 1);
  const channels = shape.blockOutChannels[level];
  const h = Math.ceil(height / 2 ** level);
  const w = Math.ceil(width / 2 ** level);
  const rows = CFG_BATCH * h * w;

  const matmul = await feedForwardReference(runtime, rows, channels);

  const cg = new Graph('conv_ref');
  const kernel = constantWeight(cg, 'w', [channels, channels, 3, 3]);
  const x = cg.input('x', 'float32', [CFG_BATCH, channels, h, w]);
  cg.output('y', sum(conv2d(x, kernel, undefined, { padding: 1 }), 0));
  const conv: CompiledGraph = await runtime.compile(cg);
  const convInput = {
    x: hostTensor('float32', [CFG_BATCH, channels, h, w], fill(CFG_BATCH * channels * h * w)),
  };

  return {
    matmulFlops: matmul.flops,
    convFlops: 2 * CFG_BATCH * h * w * channels * channels * 9,
    run: async () => {
      const matmulMs = await matmul.run();
      const t0 = nowMs();
      await conv.run(convInput);
      return [matmulMs, nowMs() - t0];
    },
  };
}

/**
 * One UNet2DConditionModel step at SD 1.5's widths (random weights, cached diffusers folder) at batch
 * 2 and 77 text tokens, per latent size, against a MatMul and a 3×3 Conv of the model's shapes timed
 * interleaved with it in the same run.
 */
export async function benchUNet(o: UNetBenchOptions, log: (s: string) => void): Promise<UNetBenchResult> {
  const { shape } = o;
  const folder = await benchUNetFolder(shape, o.cacheDir === undefined ? {} : { cacheDir: o.cacheDir }, log);
  const { model, runtime } = await openUNet(folder.dir, o);
  const { settings } = runtime;
  const rows: UNetBenchRow[] = [];
  try {
    log(
      `SD 1.5 width (channels ${shape.blockOutChannels.slice(0, shape.levels).join('/')}, ` +
        `${shape.layersPerBlock} layers per block, ${shape.attentionHeadDim} heads, cross-attention ` +
        `${shape.crossAttentionDim}), batch ${CFG_BATCH}, text ${TEXT_LENGTH} tokens, ${o.warmups} warm-up + ` +
        `${o.reps} timed runs per size; ${sessionLine(settings)}; ${machineLine()}; load average ${loadavg()
          .map((l) => l.toFixed(2))
          .join(' ')}`,
    );
    for (const [height, width] of o.latents) {
      const layout = { height, width, textLength: TEXT_LENGTH };
      const counted = unetStepFlops(buildUNetGraph(model.config, model.weights, layout));
      const flops = counted.matmul + counted.conv + counted.attention;
      const inputs = {
        sample: hostTensor(
          'float32',
          [CFG_BATCH, model.config.inChannels, height, width],
          fill(CFG_BATCH * model.config.inChannels * height * width),
        ),
        timestep: hostTensor('float32', [CFG_BATCH], new Float32Array(CFG_BATCH).fill(500)),
        encoder_hidden_states: hostTensor(
          'float32',
          [CFG_BATCH, TEXT_LENGTH, model.config.encoderHiddenSize],
          fill(CFG_BATCH * TEXT_LENGTH * model.config.encoderHiddenSize),
        ),
      };
      const reference = await references(runtime, shape, [height, width]);
      const stepTimes: number[] = [];
      const matmulTimes: number[] = [];
      const convTimes: number[] = [];
      for (let r = -o.warmups; r < o.reps; r++) {
        const start = nowMs();
        await model.forward(inputs);
        const stepMs = nowMs() - start;
        const [matmulMs, convMs] = await reference.run();
        if (r < 0) continue;
        stepTimes.push(stepMs);
        matmulTimes.push(matmulMs);
        convTimes.push(convMs);
      }
      const ms = median(stepTimes);
      const gflops = flops / ms / 1e6;
      const matmulGflops = reference.matmulFlops / median(matmulTimes) / 1e6;
      const convGflops = reference.convFlops / median(convTimes) / 1e6;
      const ceilingMs =
        (counted.matmul + counted.attention) / matmulGflops / 1e6 + counted.conv / convGflops / 1e6;
      rows.push({
        latent: `${height}x${width}`,
        ms,
        gflops,
        matmul_gflops: matmulGflops,
        fraction: gflops / matmulGflops,
        conv_gflops: convGflops,
        conv_fraction: gflops / convGflops,
        flops,
        matmul_flops: counted.matmul,
        conv_flops: counted.conv,
        attention_flops: counted.attention,
        ceiling_ms: ceilingMs,
        of_ceiling: ceilingMs / ms,
        peak_rss_mb: process.resourceUsage().maxRSS / 1024,
        private_mb: privateMb(),
      });
    }
  } finally {
    await model.close();
    await runtime.dispose();
  }
  log(
    table(
      [
        'latent',
        'ms/step',
        'GFLOP',
        'GFLOP/s',
        'MatMul GFLOP/s',
        'fraction',
        'Conv GFLOP/s',
        'of Conv',
        'ceiling ms',
        'of ceiling',
        'peak RSS MB',
        'private MB',
      ],
      rows.map((r) => [
        r.latent,
        r.ms,
        r.flops / 1e9,
        r.gflops,
        r.matmul_gflops,
        r.fraction.toFixed(3),
        r.conv_gflops,
        r.conv_fraction.toFixed(3),
        r.ceiling_ms,
        r.of_ceiling.toFixed(3),
        r.peak_rss_mb,
        r.private_mb,
      ]),
    ),
  );
  log(
    `GFLOP: MatMul + Conv + attention products of the step graph (countFlops); ceiling: MatMuls and attention at ` +
      `the MatMul reference's rate, convolutions at the Conv reference's; peak RSS: the process maximum so far; ` +
      `private: anonymous resident memory after the size's runs (RSS less the mapped checkpoint); ` +
      `load average now ${loadavg()
        .map((l) => l.toFixed(2))
        .join(' ')}`,
  );
  return {
    rows,
    parameters: folder.parameters,
    dir: folder.dir,
    optimization_level: settings.optimizationLevel,
    disable_prepacking: settings.disablePrepacking,
  };
}
