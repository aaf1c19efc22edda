import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { AttentionOption } from '../src/attention/types.js';
import type { TensorToWrite } from '../src/io/safetensors.js';
import { writeSafetensors } from '../src/io/safetensors.js';
import { PixArtTransformer2DModel } from '../src/models/pixart-transformer.js';
import { hostTensor } from '../src/runtime/host-tensor.js';
import { Runtime } from '../src/runtime/runtime.js';
import { PIXART_ALPHA_WIDTH, writeRandomPixArt } from './random-pixart.js';
import { median, nowMs, table } from './stats.js';

export interface DenoiserBenchOptions {
  tokens: number[];
  layers: number;
  reps: number;
  threads: number;
}

export interface DenoiserBenchRow {
  variant: string;
  tokens: number;
  ms: number;
  speedup: number;
}

/** A LinFusion folder for every attn1 of a PixArt-α-width model (mid dim = C, as released for SD-1.5). */
async function writeRandomLinFusion(dir: string, layers: number, dim: number, heads: number): Promise<void> {
  mkdirSync(dir, { recursive: true });
  let state = 11;
  const tensors: Record<string, TensorToWrite> = {};
  const add = (name: string, shape: number[]): void => {
    const n = shape.reduce((a, b) => a * b, 1);
    const scale = 2 / Math.sqrt(shape[shape.length - 1]);
    tensors[name] = {
      dtype: 'F32',
      shape,
      data: Float32Array.from(
        { length: n },
        () => ((state = (Math.imul(state, 1664525) + 1013904223) >>> 0) / 4294967296 - 0.5) * scale,
      ),
    };
  };
  for (let i = 0; i < layers; i++) {
    for (const p of ['to_q', 'to_k', 'to_v']) add(`${i}.${p}.weight`, [dim, dim]);
    add(`${i}.to_out.0.weight`, [dim, dim]);
    add(`${i}.to_out.0.bias`, [dim]);
    for (const m of ['to_q_', 'to_k_']) {
      add(`${i}.${m}.0.weight`, [dim, dim]);
      add(`${i}.${m}.0.bias`, [dim]);
      add(`${i}.${m}.1.weight`, [dim]);
      add(`${i}.${m}.1.bias`, [dim]);
      add(`${i}.${m}.3.weight`, [dim, dim]);
      add(`${i}.${m}.3.bias`, [dim]);
    }
  }
  await writeSafetensors(join(dir, 'diffusion_pytorch_model.safetensors'), tensors);
  const modules_list = Array.from({ length: layers }, (_, i) => ({
    module_name: `transformer_blocks.${i}.attn1`,
    dim_n: dim,
    heads,
    projection_mid_dim: null,
  }));
  writeFileSync(join(dir, 'config.json'), JSON.stringify({ _class_name: 'LinFusion', modules_list }));
}

/**
 * (b) One denoiser step (a forward at batch 1, caption 120 tokens) of a few-layer PixArt-α-width
 * model with full attention, CLEAR r = 8 and 16, and LinFusion in every self-attention layer.
 */
export async function benchDenoiser(
  o: DenoiserBenchOptions,
  log: (s: string) => void,
): Promise<DenoiserBenchRow[]> {
  const dir = mkdtempSync(join(tmpdir(), 'velodiff-denoiser-'));
  const shape = { ...PIXART_ALPHA_WIDTH, layers: o.layers };
  const dim = shape.heads * shape.headDim;
  try {
    await writeRandomPixArt(dir, shape);
    await writeRandomLinFusion(join(dir, 'linfusion'), o.layers, dim, shape.heads);
    const runtime = new Runtime({ worker: false, threads: o.threads });
    const model = await PixArtTransformer2DModel.fromPretrained(dir, { runtime });
    const variants: [string, AttentionOption][] = [
      ['full attention', { kind: 'full' }],
      ['CLEAR r=8', { kind: 'clear', radius: 8 }],
      ['CLEAR r=16', { kind: 'clear', radius: 16 }],
      ['LinFusion', { kind: 'linfusion', weights: join(dir, 'linfusion') }],
    ];
    const rows: DenoiserBenchRow[] = [];
    for (const tokens of o.tokens) {
      const side = Math.round(Math.sqrt(tokens)) * shape.patchSize;
      const fill = (n: number): Float32Array =>
        Float32Array.from({ length: n }, (_, i) => Math.sin(i * 0.37));
      const inputs = {
        hidden_states: hostTensor('float32', [1, 4, side, side], fill(4 * side * side)),
        encoder_hidden_states: hostTensor(
          'float32',
          [1, 120, shape.captionChannels],
          fill(120 * shape.captionChannels),
        ),
        timestep: hostTensor('float32', [1], [500]),
        resolution: hostTensor('float32', [1, 2], [1024, 1024]),
        aspect_ratio: hostTensor('float32', [1, 1], [1]),
      };
      const times = variants.map(() => [] as number[]);
      for (let r = -1; r < o.reps; r++) {
        for (let v = 0; v < variants.length; v++) {
          const t0 = nowMs();
          await model.forward(inputs, { attention: variants[v][1] });
          if (r >= 0) times[v].push(nowMs() - t0);
        }
      }
      const fullMs = median(times[0]);
      variants.forEach(([name], v) =>
        rows.push({ variant: name, tokens, ms: median(times[v]), speedup: fullMs / median(times[v]) }),
      );
    }
    log(`PixArt-α width, ${o.layers} layers, batch 1, caption 120 tokens, ${o.reps} runs per case`);
    log(
      table(
        ['variant', 'tokens', 'ms/step', 'µs/token', 'speed-up vs full'],
        rows.map((r) => [r.variant, String(r.tokens), r.ms, (r.ms * 1000) / r.tokens, r.speedup.toFixed(2)]),
      ),
    );
    await model.close();
    await runtime.dispose();
    return rows;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
