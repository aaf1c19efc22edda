import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PixArtTransformer2DModel } from '../src/models/pixart-transformer.js';
import { hostTensor } from '../src/runtime/host-tensor.js';
import { Runtime } from '../src/runtime/runtime.js';
import { PIXART_ALPHA_WIDTH, pixArtFlops, writeRandomPixArt } from './random-pixart.js';
import { feedForwardReference, fill } from './reference.js';
import { median, nowMs, table } from './stats.js';

export interface DitBenchOptions {
  tokens: number[];
  layers: number;
  batch: number;
  reps: number;
  threads: number;
}

export interface DitBenchRow {
  tokens: number;
  ms: number;
  gflops: number;
  matmul_gflops: number;
  fraction: number;
  flops: number;
  peak_rss_mb: number;
}

/**
 * The PixArt denoiser forward at PixArt-α width (hidden 1152, 16 × 72 heads, 120 caption tokens of
 * 4096 channels) with random weights, against a MatMul of the model's dominant shape measured in
 * the same run: the feed-forward's [N, 1152]·[1152, 4608]·[4608, 1152] with constant weights.
 */
export async function benchDit(o: DitBenchOptions, log: (s: string) => void): Promise<DitBenchRow[]> {
  const dir = mkdtempSync(join(tmpdir(), 'velodiff-dit-'));
  const shape = { ...PIXART_ALPHA_WIDTH, layers: o.layers };
  const dim = shape.heads * shape.headDim;
  const captionLength = 120;
  try {
    await writeRandomPixArt(dir, shape);
    const runtime = new Runtime({ worker: false, threads: o.threads });
    const model = await PixArtTransformer2DModel.fromPretrained(dir, { runtime });
    const rows: DitBenchRow[] = [];
    log(
      `PixArt-α width, ${o.layers} layers, batch ${o.batch}, caption ${captionLength} tokens, ${o.reps} runs per size`,
    );
    for (const tokens of o.tokens) {
      const side = Math.round(Math.sqrt(tokens)) * shape.patchSize;
      if ((side / shape.patchSize) ** 2 !== tokens)
        throw new Error(`--tokens ${tokens} must be a square number`);
      const inputs = {
        hidden_states: hostTensor('float32', [o.batch, 4, side, side], fill(o.batch * 4 * side * side)),
        encoder_hidden_states: hostTensor(
          'float32',
          [o.batch, captionLength, shape.captionChannels],
          fill(o.batch * captionLength * shape.captionChannels),
        ),
        timestep: hostTensor('float32', [o.batch], new Float32Array(o.batch).fill(500)),
        resolution: hostTensor('float32', [o.batch, 2], new Float32Array(o.batch * 2).fill(1024)),
        aspect_ratio: hostTensor('float32', [o.batch, 1], new Float32Array(o.batch).fill(1)),
      };
      // The reference: the feed-forward's two MatMuls at this token count.
      const matmul = await feedForwardReference(runtime, o.batch * tokens, dim);
      const ditTimes: number[] = [];
      const mmTimes: number[] = [];
      for (let r = -1; r < o.reps; r++) {
        const t0 = nowMs();
        await model.forward(inputs);
        if (r >= 0) ditTimes.push(nowMs() - t0);
        const mmMs = await matmul.run();
        if (r >= 0) mmTimes.push(mmMs);
      }
      const flops = pixArtFlops(shape, tokens, captionLength, o.batch);
      const ms = median(ditTimes);
      const gflops = flops / ms / 1e6;
      const matmulGflops = matmul.flops / median(mmTimes) / 1e6;
      rows.push({
        tokens,
        ms,
        gflops,
        matmul_gflops: matmulGflops,
        fraction: gflops / matmulGflops,
        flops,
        peak_rss_mb: process.resourceUsage().maxRSS / 1024,
      });
    }
    log(
      table(
        ['tokens', 'ms/forward', 'GFLOP', 'GFLOP/s', 'MatMul GFLOP/s', 'fraction', 'peak RSS MB'],
        rows.map((r) => [
          r.tokens,
          r.ms,
          r.flops / 1e9,
          r.gflops,
          r.matmul_gflops,
          r.fraction.toFixed(3),
          r.peak_rss_mb,
        ]),
      ),
    );
    log('peak RSS: the process maximum so far (sizes run in increasing order), weights and inputs included');
    await model.close();
    await runtime.dispose();
    return rows;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
