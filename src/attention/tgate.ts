import { OptionError } from '../errors.js';
import type { Graph, Tensor } from '../graph/graph.js';
import type { Dim } from '../graph/shape.js';
import { add, mul, split } from '../graph/ops/index.js';
import type { TensorRef } from '../runtime/backend.js';

/**
 * T-GATE V2 (methods/tgate_flash.md §1): what every attention layer of a role does at a step.
 * `store` computes and keeps the layer's output (after to_out.0, before the residual add); `reuse`
 * returns the kept output instead of attending.
 */
export type LayerAction = 'compute' | 'store' | 'reuse';

export interface TGateOptions {
  /** Steps of the semantics-planning phase; cross-attention is cached at step gateStep − 1. */
  gateStep: number;
  /** Self-attention recompute interval inside the planning phase (after warm-up). Default 5. */
  spInterval?: number;
  /** Self-attention recompute interval in the fidelity-improving phase. Default 1 (always). */
  fiInterval?: number;
  /** Initial steps where self-attention is always computed and not cached. Default 2. */
  warmUp?: number;
  /** For CFG-free consistency models: cache the full batch, never average. Default false. */
  lcm?: boolean;
}

export interface TGateStep {
  selfAttention: LayerAction;
  crossAttention: LayerAction;
  /** Keep the mean of the CFG halves [uncond; cond] instead of the full batch when storing. */
  average: boolean;
  /** Whether this step runs the CFG batch (CFG is dropped from the gate on). */
  cfg: boolean;
}

export function resolveTGateOptions(o: TGateOptions): Required<TGateOptions> {
  const r = {
    gateStep: o.gateStep,
    spInterval: o.spInterval ?? 5,
    fiInterval: o.fiInterval ?? 1,
    warmUp: o.warmUp ?? 2,
    lcm: o.lcm ?? false,
  };
  for (const [key, min] of [
    ['gateStep', 1],
    ['spInterval', 1],
    ['fiInterval', 1],
    ['warmUp', 0],
  ] as const) {
    const v = r[key];
    if (!Number.isInteger(v) || v < min)
      throw new OptionError(`tgate.${key} must be an integer ≥ ${min}, got ${String(v)}`);
  }
  return r;
}

/**
 * The per-step plan of the authors' `tgate_scheduler` (§1.3), for an order-1 scheduler (step index
 * c = i), followed by the pipeline's CFG rule (§1.5): CFG runs while c < gateStep. `doCfg` is
 * whether the run uses guidance at all.
 */
export function tgatePlan(numSteps: number, options: TGateOptions, doCfg: boolean): TGateStep[] {
  const { gateStep: G, spInterval: S, fiInterval: F, warmUp: W, lcm } = resolveTGateOptions(options);
  if (lcm && doCfg) {
    throw new OptionError(
      'tgate.lcm caches the whole batch, which needs a run without CFG: use guidanceScale ≤ 1 with lcm: true',
    );
  }
  const plan: TGateStep[] = [];
  for (let c = 0; c < numSteps; c++) {
    const cfg = doCfg && c < G;
    if (c < G - 1) {
      const sa: LayerAction = c < W ? 'compute' : c === W || c % S === 0 ? 'store' : 'reuse';
      plan.push({ selfAttention: sa, crossAttention: 'compute', average: false, cfg });
    } else if (c === G - 1) {
      // Averaging needs the [uncond; cond] pair; without CFG the batch is kept as it is.
      plan.push({ selfAttention: 'store', crossAttention: 'store', average: doCfg, cfg });
    } else {
      plan.push({
        selfAttention: c % F === 0 ? 'store' : 'reuse',
        crossAttention: 'reuse',
        average: false,
        cfg,
      });
    }
  }
  // REUSE without a stored tensor computes (without storing), as the authors' layers do.
  const stored = { selfAttention: false, crossAttention: false };
  for (const step of plan) {
    for (const role of ['selfAttention', 'crossAttention'] as const) {
      if (step[role] === 'reuse' && !stored[role]) step[role] = 'compute';
      if (step[role] === 'store') stored[role] = true;
    }
  }
  return plan;
}

/**
 * The same plan without stores that no later step reads (a stored tensor is read only by the
 * reuses before the role's next store). Outputs are unchanged; it saves copying dead caches
 * (with fiInterval 1 the self-attention stored at the gate is never read, §1.3).
 */
export function pruneDeadStores(plan: readonly TGateStep[]): TGateStep[] {
  const out = plan.map((s) => ({ ...s }));
  for (const role of ['selfAttention', 'crossAttention'] as const) {
    for (let i = 0; i < out.length; i++) {
      if (out[i][role] !== 'store') continue;
      let read = false;
      for (let j = i + 1; j < out.length && out[j][role] !== 'store'; j++) {
        if (out[j][role] === 'reuse') read = true;
      }
      if (!read) {
        out[i][role] = 'compute';
        if (role === 'crossAttention') out[i].average = out[i].average && out[i].selfAttention === 'store';
      }
    }
  }
  return out;
}

/** Names of T-GATE cache outputs (stored this step) and inputs (reused) of a layer's attention. */
export const tgateCacheName = (layer: number, role: string): string => `${CACHE}${layer}.${role}`;
export const tgateCachedName = (layer: number, role: string): string => `${CACHED}${layer}.${role}`;
const CACHE = 'cache.';
const CACHED = 'cached.';

/** Whether a step graph's output is an attention output T-GATE stores at this step. */
export function isTGateCacheOutput(name: string): boolean {
  return name.startsWith(CACHE);
}

/**
 * The feeds of a step graph's reused attention outputs: for each of its `cached.<i>.<role>` inputs,
 * the tensor an earlier step returned as `cache.<i>.<role>` (kept in `caches` by that name).
 */
export function tgateCacheFeeds(
  inputs: readonly { name: string }[],
  caches: Readonly<Record<string, TensorRef>>,
): Record<string, TensorRef> {
  const feeds: Record<string, TensorRef> = {};
  for (const { name } of inputs) {
    if (!name.startsWith(CACHED)) continue;
    const stored = CACHE + name.slice(CACHED.length);
    const ref = caches[stored];
    if (!ref) {
      throw new OptionError(
        `T-GATE step reuses "${stored}", which no earlier step stored (kept: ${Object.keys(caches).join(', ') || 'none'})`,
      );
    }
    feeds[name] = ref;
  }
  return feeds;
}

/**
 * The attention outputs a sampling loop keeps between T-GATE steps, where the sessions run: each
 * step's stored outputs replace (and free) the ones of the same layer; `release` frees them all.
 */
export class TGateCaches {
  private readonly kept = new Map<string, TensorRef>();

  constructor(private readonly runtime: { releaseTensors(refs: readonly TensorRef[]): Promise<void> }) {}

  /** The kept tensors by output name, for `tgateCacheFeeds`. */
  get current(): Readonly<Record<string, TensorRef>> {
    return Object.fromEntries(this.kept);
  }

  /** Keep the T-GATE outputs among a step's retained outputs. */
  async keep(retained: Readonly<Record<string, TensorRef>>): Promise<void> {
    for (const [name, ref] of Object.entries(retained)) {
      if (!isTGateCacheOutput(name)) continue;
      const old = this.kept.get(name);
      this.kept.set(name, ref);
      if (old) await this.runtime.releaseTensors([old]);
    }
  }

  async release(): Promise<void> {
    const refs = [...this.kept.values()];
    this.kept.clear();
    await this.runtime.releaseTensors(refs);
  }
}

/** Mean of the two batch halves [uncond; cond]: what T-GATE keeps at the gate step. */
export function halfMean(t: Tensor): Tensor {
  const [a, b] = split(t, 2, 0);
  return mul(add(a, b), 0.5);
}

/**
 * An attention module's output under a T-GATE action, in a step graph: `compute` builds it;
 * `store` also makes it (or its CFG-half mean) a graph output; `reuse` takes it as a graph input
 * of `shape` instead of building anything. Every model wraps its attention modules in this.
 */
export function gatedAttention(
  graph: Graph,
  name: { layer: number; role: string },
  action: LayerAction,
  average: boolean,
  shape: readonly Dim[],
  compute: () => Tensor,
): Tensor {
  if (action === 'reuse') return graph.input(tgateCachedName(name.layer, name.role), 'float32', shape);
  const out = compute();
  if (action === 'store') graph.output(tgateCacheName(name.layer, name.role), average ? halfMean(out) : out);
  return out;
}
