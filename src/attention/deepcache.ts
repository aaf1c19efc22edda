import { OptionError } from '../errors.js';
import type { TensorRef } from '../runtime/backend.js';
import { pruneDeadStores, resolveTGateOptions, tgatePlan } from './tgate.js';
import type { TGateOptions, TGateStep } from './tgate.js';

/**
 * DeepCache (Ma et al. 2024; horseee/DeepCache `DeepCacheSDHelper`): a UNet's high-level features
 * change slowly across steps, so on "skip" steps only the shallow branch down to `cacheBranchId`,
 * the time embedding and the up path from there are computed, reading the deep feature kept at the
 * last "full" step.
 */
export interface DeepCacheOptions {
  /** A full step every `cacheInterval` steps (the authors' uniform mode); 1 = every step full. */
  cacheInterval: number;
  /** Where the shallow branch ends: down block ⌊id / 3⌋, layer id mod 3 (0 = the shallowest). */
  cacheBranchId: number;
}

export type DeepCacheStep = 'full' | 'skip';

export function checkDeepCacheOptions(o: DeepCacheOptions): DeepCacheOptions {
  if (!Number.isInteger(o.cacheInterval) || o.cacheInterval < 1)
    throw new OptionError(`deepCache.cacheInterval must be an integer ≥ 1, got ${String(o.cacheInterval)}`);
  if (!Number.isInteger(o.cacheBranchId) || o.cacheBranchId < 0)
    throw new OptionError(`deepCache.cacheBranchId must be an integer ≥ 0, got ${String(o.cacheBranchId)}`);
  return o;
}

/**
 * Which steps are full: (i − start) mod cacheInterval == 0, where `start` is the first step and
 * moves to each step of `restartAt` (the helper's disable(); enable(), which resets its counter).
 */
export function deepCachePlan(
  numSteps: number,
  options: DeepCacheOptions,
  restartAt: readonly number[] = [],
): DeepCacheStep[] {
  const { cacheInterval } = checkDeepCacheOptions(options);
  const plan: DeepCacheStep[] = [];
  let start = 0;
  for (let i = 0; i < numSteps; i++) {
    if (restartAt.includes(i)) start = i;
    plan.push((i - start) % cacheInterval === 0 ? 'full' : 'skip');
  }
  return plan;
}

/**
 * T-GATE's DeepCache path (methods/tgate_flash.md §1.6) restarts DeepCache before step G − 1, so
 * that every cross-attention runs and stores there, and before step G, where the batch halves
 * (features kept with the CFG batch no longer fit).
 */
export function tgateRestarts(tgate: TGateOptions): number[] {
  const { gateStep } = resolveTGateOptions(tgate);
  return [gateStep - 1, gateStep];
}

/**
 * The step kinds of a run with DeepCache and T-GATE together, as T-GATE's DeepCache pipelines run
 * them: T-GATE's plan with those pipelines' defaults (spInterval 1, warmUp 0: self-attention is
 * never reused, §1.7) and DeepCache restarted at the gate (`tgateRestarts`). A self-attention reuse
 * is refused: DeepCache leaves deep layers unrun on skip steps, so what each would reuse is no
 * longer one step's output.
 */
export function tgateDeepCachePlan(
  numSteps: number,
  tgate: TGateOptions,
  deepCache: DeepCacheOptions,
  doCfg: boolean,
): { tgate: TGateStep[]; deepCache: DeepCacheStep[] } {
  const options: TGateOptions = { spInterval: 1, warmUp: 0, ...tgate };
  const steps = pruneDeadStores(tgatePlan(numSteps, options, doCfg));
  if (steps.some((s) => s.selfAttention === 'reuse')) {
    throw new OptionError(
      "tgate with deepCache reuses self-attention only with spInterval 1 and fiInterval 1 (the authors' DeepCache settings); leave them unset",
    );
  }
  return { tgate: steps, deepCache: deepCachePlan(numSteps, deepCache, tgateRestarts(options)) };
}

/** The layers of a UNet as DeepCache needs them (unet/config.ts's levels fit this shape). */
export interface DeepCacheUNetLayout {
  down: readonly { layers: number; addDownsample: boolean }[];
  mid: { attention?: unknown } | null;
  up: readonly { layers: number; attention?: unknown; addUpsample: boolean }[];
}

/**
 * Whether DeepCache returns a layer's kept output on a skip step instead of running it — the rule
 * of the authors' `is_skip_step`, on diffusers module paths: the mid block always; down layers of
 * blocks deeper than the branch's block, and of its block from the branch's layer on (the
 * downsampler counts as the layer after the last resnet); up layers numbered from the output end
 * (up block n−1 is block 0, its last resnet layer 0, every upsampler layer 0) deeper than the
 * branch's block, and of its block beyond the branch's layer.
 */
export function deepCacheSkips(layout: DeepCacheUNetLayout, cacheBranchId: number, path: string): boolean {
  const block = Math.floor(cacheBranchId / 3);
  const layer = cacheBranchId % 3;
  const parts = path.split('.');
  if (parts[0] === 'mid_block') return true;
  const i = Number(parts[1]);
  const j = Number(parts[3]);
  if (parts[0] === 'down_blocks') {
    const id = parts[2] === 'downsamplers' ? layout.down[i].layers : j;
    return i > block || (i === block && id >= layer);
  }
  if (parts[0] === 'up_blocks') {
    const fromEnd = layout.up.length - 1 - i;
    const id = parts[2] === 'upsamplers' ? 0 : layout.up[i].layers - 1 - j;
    return fromEnd > block || (fromEnd === block && id > layer);
  }
  throw new OptionError(`DeepCache: "${path}" is not a layer of the UNet's down, mid or up path`);
}

/** The mid- and up-path layers in forward order, by module path (as unet/blocks.ts names them). */
function upPathLayers(layout: DeepCacheUNetLayout): string[] {
  const paths: string[] = [];
  if (layout.mid) {
    paths.push('mid_block.resnets.0');
    if (layout.mid.attention) paths.push('mid_block.attentions.0', 'mid_block.resnets.1');
  }
  layout.up.forEach((level, i) => {
    for (let j = 0; j < level.layers; j++) {
      paths.push(`up_blocks.${i}.resnets.${j}`);
      if (level.attention) paths.push(`up_blocks.${i}.attentions.${j}`);
    }
    if (level.addUpsample) paths.push(`up_blocks.${i}.upsamplers.0`);
  });
  return paths;
}

/**
 * The layer whose output a skip step reads from the cache: the last skipped one before the first
 * recomputed up layer. Everything else a skip step skips feeds only skipped layers, so that one
 * tensor is all a skip step needs from the last full step.
 */
export function deepCacheFeaturePath(layout: DeepCacheUNetLayout, cacheBranchId: number): string {
  checkDeepCacheOptions({ cacheInterval: 1, cacheBranchId });
  const block = Math.floor(cacheBranchId / 3);
  // Three branches per level (layer id mod 3: its resnets, then its downsampler), as the authors number them.
  const levels = Math.min(layout.down.length, layout.up.length);
  if (block >= levels) {
    throw new OptionError(
      `deepCache.cacheBranchId ${cacheBranchId} is in down block ${block}, but this UNet has ${levels} down ` +
        `blocks: expected a branch id < ${3 * levels} (0 … ${3 * levels - 1}; block ⌊id / 3⌋, layer id mod 3), ` +
        `found ${cacheBranchId}. Pick a shallower branch.`,
    );
  }
  if (!layout.mid) {
    throw new OptionError(
      'DeepCache needs a UNet with a mid block (skip steps reuse the deep features through it); this UNet ' +
        'has none (mid_block_type is null). Run without deepCache.',
    );
  }
  const paths = upPathLayers(layout);
  const first = paths.findIndex((p) => !deepCacheSkips(layout, cacheBranchId, p));
  if (first <= 0) {
    throw new OptionError(
      `deepCache.cacheBranchId ${cacheBranchId}: expected a branch that leaves an up layer to recompute, ` +
        `found that it skips all ${paths.length} mid and up layers of this UNet. Pick a shallower branch.`,
    );
  }
  return paths[first - 1];
}

/**
 * Checks DeepCache's options against the UNet they will run on (a UNet2DConditionConfig fits the
 * layout), for a pipeline to call once before any step: a branch id the UNet lacks fails here with
 * what was expected, not when the first step graph is built.
 */
export function checkDeepCacheForUNet(
  options: DeepCacheOptions,
  layout: DeepCacheUNetLayout,
): DeepCacheOptions {
  checkDeepCacheOptions(options);
  deepCacheFeaturePath(layout, options.cacheBranchId);
  return options;
}

/** Names of the kept feature: the full step's output and the skip step's input. */
const FEATURE = 'deepcache.feature';
const CACHED_FEATURE = 'deepcache.cached_feature';
export const deepCacheOutputName = FEATURE;
export const deepCacheInputName = CACHED_FEATURE;

export function isDeepCacheOutput(name: string): boolean {
  return name === FEATURE;
}

/** A skip step graph's feed of the kept feature (none for a graph that does not read it). */
export function deepCacheFeeds(
  inputs: readonly { name: string }[],
  caches: Readonly<Record<string, TensorRef>>,
): Record<string, TensorRef> {
  if (!inputs.some((i) => i.name === CACHED_FEATURE)) return {};
  const ref = caches[FEATURE];
  if (!ref) throw new OptionError('DeepCache skip step before any full step kept its feature');
  return { [CACHED_FEATURE]: ref };
}

/**
 * The feature a sampling loop keeps between DeepCache steps, where the sessions run: each full
 * step's replaces (and frees) the last; `release` frees it.
 */
export class DeepCacheFeature {
  private kept: TensorRef | undefined;

  constructor(private readonly runtime: { releaseTensors(refs: readonly TensorRef[]): Promise<void> }) {}

  /** Keep the feature among a step's retained outputs, if it has one. */
  async keep(retained: Readonly<Record<string, TensorRef>>): Promise<void> {
    const ref = retained[FEATURE];
    if (!ref) return;
    const old = this.kept;
    this.kept = ref;
    if (old) await this.runtime.releaseTensors([old]);
  }

  /** The kept feature by output name, for `deepCacheFeeds`. */
  get current(): Readonly<Record<string, TensorRef>> {
    return this.kept ? { [FEATURE]: this.kept } : {};
  }

  async release(): Promise<void> {
    const old = this.kept;
    this.kept = undefined;
    if (old) await this.runtime.releaseTensors([old]);
  }
}
