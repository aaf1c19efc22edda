import { resolve } from 'node:path';

import { OptionError } from '../errors.js';
import { SafetensorsFile } from '../io/safetensors.js';
import type { TensorSource } from '../nn/weights.js';
import { OverlayTensorSource } from '../nn/weights.js';
import { clearWindowProblem } from './clear.js';
import { LinFusionWeights } from './linfusion.js';
import type { AttentionChoice, AttentionOption } from './types.js';

/** A user's attention option, resolved into what a denoiser graph is built with. */
export interface ResolvedAttention {
  /** The kernel of every self-attention layer; undefined for full attention. */
  choice?: AttentionChoice;
  /** Weights to build from instead of the base checkpoint (a CLEAR file overlaid on it). */
  weights?: TensorSource;
  /** LinFusion's modules, for the choice `linfusion`. */
  linfusion?: LinFusionWeights;
  /** Identifies the weights the option brought (`clear:<file>`, `linfusion:<dir>`), for compile caches. */
  key?: string;
}

/**
 * The method weight files a model has opened for attention options: each file or folder once, kept
 * open while the model is, closed with it.
 */
export class AttentionWeightFiles {
  private readonly overlays = new Map<string, { file: SafetensorsFile; source: OverlayTensorSource }>();
  private readonly linfusions = new Map<string, LinFusionWeights>();

  /** The safetensors file `path` overlaid on `base` (non-strict: tensors it lacks come from base). */
  async overlay(base: TensorSource, path: string): Promise<TensorSource> {
    let overlay = this.overlays.get(path);
    if (!overlay) {
      const file = await SafetensorsFile.open(path);
      overlay = { file, source: new OverlayTensorSource(base, file, path) };
      this.overlays.set(path, overlay);
    }
    return overlay.source;
  }

  /** The LinFusion folder `dir` (config.json + safetensors). */
  async linfusion(dir: string): Promise<LinFusionWeights> {
    let weights = this.linfusions.get(dir);
    if (!weights) {
      weights = await LinFusionWeights.open(dir);
      this.linfusions.set(dir, weights);
    }
    return weights;
  }

  async close(): Promise<void> {
    const overlays = [...this.overlays.values()];
    const linfusions = [...this.linfusions.values()];
    this.overlays.clear();
    this.linfusions.clear();
    for (const { file } of overlays) await file.close();
    for (const weights of linfusions) await weights.close();
  }
}

/**
 * Resolve a self-attention option for a denoiser whose checkpoint is `base`, opening the method's
 * weights through `files` (once per path): CLEAR's optional file overlaid on the checkpoint,
 * LinFusion's folder. Every model class that takes `attention` calls this.
 */
export async function resolveAttentionOption(
  option: AttentionOption | undefined,
  base: TensorSource,
  files: AttentionWeightFiles,
): Promise<ResolvedAttention> {
  if (!option || option.kind === 'full') return {};
  switch (option.kind) {
    case 'clear': {
      const downFactor = option.downFactor ?? 1;
      const problem = clearWindowProblem({ radius: option.radius, downFactor });
      if (problem) throw new OptionError(`attention: ${problem}`);
      const choice: AttentionChoice = { kind: 'clear', radius: option.radius, downFactor };
      if (!option.weights) return { choice };
      const path = resolve(option.weights);
      return { choice, weights: await files.overlay(base, path), key: `clear:${path}` };
    }
    case 'linfusion': {
      if (!option.weights)
        throw new OptionError("attention kind 'linfusion' needs weights: the LinFusion folder");
      const dir = resolve(option.weights);
      return {
        choice: { kind: 'linfusion' },
        linfusion: await files.linfusion(dir),
        key: `linfusion:${dir}`,
      };
    }
    default:
      throw new OptionError(
        `unknown attention kind "${(option as { kind: string }).kind}"; expected full, clear or linfusion`,
      );
  }
}
