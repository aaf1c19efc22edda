/**
 * A random-weight `UNet2DConditionModel` diffusers folder at Stable Diffusion 1.5's widths, for
 * benchmarks: SD 1.5's unet/config.json with fewer levels or layers where memory asks for it, the
 * tensor names and shapes discovered from velodiff's own UNet builder, PyTorch's default init.
 * Folders are cached by config under <cache>/bench/, so a rerun reads the one written before.
 */
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { join } from 'node:path';

import { OptionError } from '../src/errors.js';
import { UNet2DConditionModel, buildUNetGraph, parseUNetConfig } from '../src/models/unet-2d-condition.js';
import type { UNet2DConditionConfig } from '../src/models/unet-2d-condition.js';
import { Runtime } from '../src/runtime/runtime.js';
import type { RuntimeOptions } from '../src/runtime/runtime.js';
import { defaultCacheDir } from '../src/train/data/cache.js';
import { discoverParameterShapes, initParameters } from '../src/train/parameters.js';
import { saveModelFolder } from '../src/train/save-model.js';
import { nowMs } from './stats.js';

export interface UNetBenchShape {
  /** SD 1.5's levels kept, from the top (full resolution) down: 1–4. */
  levels: number;
  /** Resnets (and spatial transformers) per down level; up levels have one more. */
  layersPerBlock: number;
  /** Channels of every level before `levels` truncates them. */
  blockOutChannels: readonly number[];
  /** diffusers' `attention_head_dim`, which for SD 1.x is the number of heads (8). */
  attentionHeadDim: number;
  crossAttentionDim: number;
  normNumGroups: number;
}

/** runwayml/stable-diffusion-v1-5 unet/config.json's widths: ≈ 860 M parameters, 3.4 GB in fp32. */
export const SD15_UNET: UNetBenchShape = {
  levels: 4,
  layersPerBlock: 2,
  blockOutChannels: [320, 640, 1280, 1280],
  attentionHeadDim: 8,
  crossAttentionDim: 768,
  normNumGroups: 32,
};

const SD15_DOWN_BLOCKS = [
  'CrossAttnDownBlock2D',
  'CrossAttnDownBlock2D',
  'CrossAttnDownBlock2D',
  'DownBlock2D',
];

/**
 * SD 1.5's unet/config.json with the first `levels` levels (the high-resolution ones, where most of a
 * step's work is) and `layersPerBlock` layers; the up blocks mirror the down blocks kept.
 */
export function sd15UNetConfig(s: UNetBenchShape): Record<string, unknown> {
  const maxLevels = Math.min(s.blockOutChannels.length, SD15_DOWN_BLOCKS.length);
  if (!Number.isInteger(s.levels) || s.levels < 1 || s.levels > maxLevels)
    throw new OptionError(`random UNet: levels must be 1–${maxLevels}, got ${s.levels}`);
  if (!Number.isInteger(s.layersPerBlock) || s.layersPerBlock < 1)
    throw new OptionError(`random UNet: layers per block must be ≥ 1, got ${s.layersPerBlock}`);
  const channels = s.blockOutChannels.slice(0, s.levels);
  const ungrouped = channels.filter((c) => c % s.normNumGroups !== 0);
  if (ungrouped.length > 0) {
    throw new OptionError(
      `random UNet: every level's channels must divide into norm_num_groups ${s.normNumGroups}; ` +
        `${ungrouped.join(', ')} do not`,
    );
  }
  const down = SD15_DOWN_BLOCKS.slice(0, s.levels);
  return {
    act_fn: 'silu',
    attention_head_dim: s.attentionHeadDim,
    block_out_channels: channels,
    center_input_sample: false,
    cross_attention_dim: s.crossAttentionDim,
    down_block_types: down,
    downsample_padding: 1,
    flip_sin_to_cos: true,
    freq_shift: 0,
    in_channels: 4,
    layers_per_block: s.layersPerBlock,
    mid_block_scale_factor: 1,
    norm_eps: 1e-5,
    norm_num_groups: s.normNumGroups,
    out_channels: 4,
    sample_size: 64,
    up_block_types: [...down].reverse().map((type) => type.replace('Down', 'Up')),
  };
}

/** Every parameter's name and shape, as the UNet builder reads them (at the smallest latent it can halve). */
export function unetParameterShapes(config: UNet2DConditionConfig): Map<string, number[]> {
  const side = 2 ** config.up.filter((level) => level.addUpsample).length;
  return discoverParameterShapes((source) =>
    buildUNetGraph(config, source, { height: side, width: side, textLength: 1 }),
  );
}

export interface RandomUNetFolder {
  dir: string;
  /** Whether this call wrote it (false: read from the cache). */
  written: boolean;
  parameters: number;
  /** Its config.json as the UNet reads it. */
  config: UNet2DConditionConfig;
}

/**
 * The cached folder for `shape` and `seed`, written first when absent. The key hashes the config
 * and the seed; saveModelFolder renames a complete folder into place, so one that exists is whole.
 */
export async function randomUNetFolder(
  shape: UNetBenchShape,
  options: { seed?: number; cacheDir?: string } = {},
): Promise<RandomUNetFolder> {
  const seed = options.seed ?? 1;
  const raw = sd15UNetConfig(shape);
  const config = parseUNetConfig({ _class_name: 'UNet2DConditionModel', ...raw }, 'random UNet config');
  const shapes = unetParameterShapes(config);
  const parameters = [...shapes.values()].reduce((n, s) => n + s.reduce((a, b) => a * b, 1), 0);
  const key = createHash('sha256')
    .update(JSON.stringify({ raw, seed, init: 'torch-default' }))
    .digest('hex')
    .slice(0, 16);
  const dir = join(
    options.cacheDir ?? defaultCacheDir(),
    'bench',
    `unet-sd15-l${shape.levels}-lpb${shape.layersPerBlock}-c${shape.blockOutChannels[0]}-${key}`,
  );
  if (existsSync(join(dir, 'config.json'))) return { dir, written: false, parameters, config };
  const params = initParameters(shapes, { seed });
  await saveModelFolder(dir, { className: 'UNet2DConditionModel', config: raw, params, shapes });
  return { dir, written: true, parameters, config };
}

/**
 * `randomUNetFolder` for a benchmark: says whether it was written or reused, since a write's memory
 * stays in the process's peak RSS.
 */
export async function benchUNetFolder(
  shape: UNetBenchShape,
  options: { cacheDir?: string },
  log: (s: string) => void,
): Promise<RandomUNetFolder> {
  const t0 = nowMs();
  const folder = await randomUNetFolder(
    shape,
    options.cacheDir === undefined ? {} : { cacheDir: options.cacheDir },
  );
  log(
    `${folder.written ? 'wrote' : 'reusing'} random UNet ${folder.dir} ` +
      `(${(folder.parameters / 1e6).toFixed(1)} M parameters${folder.written ? `, ${((nowMs() - t0) / 1e3).toFixed(1)} s` : ''})`,
  );
  if (folder.written)
    log('peak RSS below includes writing that folder: rerun (it is cached) for the benchmark alone');
  return folder;
}

/** ORT session settings a UNet benchmark runs under (Runtime's defaults: 'all', prepacking on). */
export type UNetBenchSession = Pick<RuntimeOptions, 'optimizationLevel' | 'disablePrepacking'>;

/** The UNet in `dir` on a new in-thread runtime (disposed again if the load fails). */
export async function openUNet(
  dir: string,
  options: { threads: number } & UNetBenchSession,
): Promise<{ model: UNet2DConditionModel; runtime: Runtime }> {
  const runtime = new Runtime({
    worker: false,
    threads: options.threads,
    optimizationLevel: options.optimizationLevel,
    disablePrepacking: options.disablePrepacking,
  });
  try {
    return { model: await UNet2DConditionModel.fromPretrained(dir, { runtime }), runtime };
  } catch (error) {
    await runtime.dispose();
    throw error;
  }
}
