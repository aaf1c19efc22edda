/**
 * A tiny text-to-image denoiser training setup for the step and loop tests: the golden tiny PixArt-α
 * config (2 blocks, width 24) with random-init parameters, ε-prediction MSE on 8×8×4 "latents" from a
 * fixed random set, noise and timesteps drawn from a TorchGenerator (so a resume must restore it),
 * and a BatchSource whose position is a small JSON state.
 */
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { mean, mul, split, sub } from '../../src/graph/index.js';
import type { Tensor } from '../../src/graph/index.js';
import { readConfig } from '../../src/io/diffusers.js';
import {
  buildPixArtGraph,
  parsePixArtConfig,
  pixArtPositionEmbedding,
  type PixArtTransformerConfig,
} from '../../src/models/pixart-transformer.js';
import { TorchGenerator } from '../../src/random/torch-generator.js';
import type { HostTensor } from '../../src/runtime/host-tensor.js';
import { hostTensor } from '../../src/runtime/host-tensor.js';
import type { JsonValue } from '../../src/train/json-value.js';
import type { BatchSource } from '../../src/train/loop.js';
import { discoverParameterShapes } from '../../src/train/parameters.js';
import type { TrainStepSpec } from '../../src/train/train-step.js';
import { normalArray, seededUniform } from '../random.js';

const DIR = fileURLToPath(new URL('../golden/models/pixart_alpha_tiny/model', import.meta.url));
export const LATENT = 8;
export const CAPTION = 6;
export const BATCH = 2;
const SAMPLES = 8;

export interface TinyDenoiser {
  config: PixArtTransformerConfig;
  shapes: Map<string, number[]>;
  spec(trainable?: readonly string[]): TrainStepSpec;
  /** Batch inputs for sample indices, noise and timesteps from `generator`. */
  makeBatch(indices: readonly number[], generator: TorchGenerator): Record<string, HostTensor>;
}

export async function tinyDenoiser(): Promise<TinyDenoiser> {
  const config = parsePixArtConfig(await readConfig(DIR), join(DIR, 'config.json'));
  const options = { height: LATENT, width: LATENT, captionLength: CAPTION, withMask: true };
  const shapes = discoverParameterShapes((source) => buildPixArtGraph(config, source, options));
  const random = seededUniform(2024);
  const latentSize = config.inChannels * LATENT * LATENT;
  const latents = normalArray(SAMPLES * latentSize, random);
  const captions = normalArray(SAMPLES * CAPTION * config.captionChannels, random);
  const grid = LATENT / config.patchSize;
  const posEmbed = pixArtPositionEmbedding(config, grid, grid);
  return {
    config,
    shapes,
    spec: (trainable = [...shapes.keys()]) => ({
      shapes,
      trainable,
      build(_g, params) {
        const g = buildPixArtGraph(config, params, options);
        const sample = g.outputs.get('sample') as Tensor;
        // Learned-sigma models predict [ε, σ]: the loss is on ε.
        const [epsilon] = split(sample, 2, 1);
        const error = sub(epsilon, g.input('target', 'float32', epsilon.shape));
        const loss = mean(mul(error, error), [0, 1, 2, 3]);
        return { loss, metrics: { abs_error: mean(mul(error, error), [0, 1, 2, 3]) } };
      },
    }),
    makeBatch(indices, generator) {
      const b = indices.length;
      const x0 = new Float32Array(b * latentSize);
      const context = new Float32Array(b * CAPTION * config.captionChannels);
      indices.forEach((index, i) => {
        x0.set(latents.subarray(index * latentSize, (index + 1) * latentSize), i * latentSize);
        const size = CAPTION * config.captionChannels;
        context.set(captions.subarray(index * size, (index + 1) * size), i * size);
      });
      const noise = generator.randn([b, config.inChannels, LATENT, LATENT]);
      const timesteps = Float32Array.from(generator.rand([b]), (u) => Math.floor(u * 1000));
      const noisy = new Float32Array(x0.length);
      for (let i = 0; i < b; i++) {
        const alpha = Math.cos(((timesteps[i] / 1000) * Math.PI) / 2) ** 2;
        for (let j = 0; j < latentSize; j++) {
          const k = i * latentSize + j;
          noisy[k] = Math.sqrt(alpha) * x0[k] + Math.sqrt(1 - alpha) * noise[k];
        }
      }
      return {
        hidden_states: hostTensor('float32', [b, config.inChannels, LATENT, LATENT], noisy),
        encoder_hidden_states: hostTensor('float32', [b, CAPTION, config.captionChannels], context),
        encoder_attention_mask: hostTensor('float32', [b, CAPTION], new Float32Array(b * CAPTION).fill(1)),
        timestep: hostTensor('float32', [b], timesteps),
        pos_embed: posEmbed,
        target: hostTensor('float32', [b, config.inChannels, LATENT, LATENT], noise),
      };
    },
  };
}

/** Sample indices in a per-epoch order (a rotation by the epoch), BATCH at a time; state {epoch, index}. */
export class IndexSource implements BatchSource<number[]> {
  #epoch: number;
  #index: number;
  constructor(state?: JsonValue) {
    const s = (state ?? { epoch: 0, index: 0 }) as { epoch: number; index: number };
    this.#epoch = s.epoch;
    this.#index = s.index;
  }
  get state(): { epoch: number; index: number } {
    return { epoch: this.#epoch, index: this.#index };
  }
  next(): number[] {
    if (this.#index + BATCH > SAMPLES) {
      this.#epoch++;
      this.#index = 0;
    }
    const batch = Array.from({ length: BATCH }, (_, i) => (this.#index + i + 3 * this.#epoch) % SAMPLES);
    this.#index += BATCH;
    return batch;
  }
}
