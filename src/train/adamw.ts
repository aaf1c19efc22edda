/**
 * AdamW as torch.optim.AdamW (torch/optim/adam.py `_single_tensor_adam` with decoupled weight decay):
 *
 *   p ← p·(1 − lr·wd)                                   (decoupled decay, Loshchilov & Hutter 2019)
 *   m ← lerp(m, g, 1 − β1);  v ← β2·v + (1 − β2)·g²
 *   p ← p − lr/(1 − β1ᵗ) · m / (√v / √(1 − β2ᵗ) + ε)    (ε added after the bias correction of √v)
 *
 * With amsgrad, v in the denominator is the running maximum of v. Arithmetic is float64 per element,
 * state and parameters are stored as float32 (as torch's fp32 state).
 */
import {
  checkRange,
  checkStateConfiguration,
  describeConfiguration,
  resolveGroups,
  stateNumber,
  stateTensor,
  type Optimizer,
  type OptimizerState,
  type ParameterGroup,
  type ResolvedGroup,
} from './optimizer.js';
import { decodeNumber, type JsonObject } from './json-value.js';
import { arraysInOrder, type NamedArrays } from './named-arrays.js';

/** Options of torch.optim.AdamW, each settable per group; defaults as torch's. */
export interface AdamWOptions {
  /** 1e-3 */
  lr: number;
  /** [0.9, 0.999] */
  betas: readonly [number, number];
  /** 1e-8 */
  eps: number;
  /** 1e-2 */
  weightDecay: number;
  /** false */
  amsgrad: boolean;
  /** false: descend; true: ascend the objective. */
  maximize: boolean;
}

export const ADAMW_DEFAULTS: Readonly<AdamWOptions> = {
  lr: 1e-3,
  betas: [0.9, 0.999],
  eps: 1e-8,
  weightDecay: 1e-2,
  amsgrad: false,
  maximize: false,
};

interface ParameterState {
  readonly expAvg: Float32Array;
  readonly expAvgSq: Float32Array;
  /** amsgrad only. */
  readonly maxExpAvgSq: Float32Array | undefined;
}

export class AdamW implements Optimizer {
  readonly kind = 'adamw';
  readonly paramNames: readonly string[];
  readonly groups: readonly ResolvedGroup<AdamWOptions>[];
  #step = 0;
  /** Created at the first step, when the parameter lengths are known (as torch's lazy state). */
  #state: Map<string, ParameterState> | undefined;
  #lengths: Map<string, number> | undefined;

  constructor(
    groups: readonly ParameterGroup<AdamWOptions>[] | readonly string[],
    defaults: Partial<AdamWOptions> = {},
  ) {
    this.groups = resolveGroups(groups, { ...ADAMW_DEFAULTS, ...defaults }, 'AdamW');
    for (const group of this.groups) checkAdamWOptions(group.options);
    this.paramNames = this.groups.flatMap((group) => group.params);
  }

  get stepCount(): number {
    return this.#step;
  }

  step(params: NamedArrays, grads: NamedArrays, lrFactor = 1): void {
    checkRange('AdamW', 'lrFactor', lrFactor, { min: 0 });
    const paramArrays = arraysInOrder(params, this.paramNames, 'parameters', this.#lengths);
    const lengths = this.#lengths ?? new Map(this.paramNames.map((name, i) => [name, paramArrays[i].length]));
    const gradArrays = arraysInOrder(grads, this.paramNames, 'gradients', lengths);
    const state = this.#state ?? this.#initialState(lengths);
    this.#lengths = lengths;
    this.#state = state;

    this.#step += 1;
    const t = this.#step;
    let index = 0;
    for (const group of this.groups) {
      const { betas, eps, weightDecay, maximize } = group.options;
      const lr = group.options.lr * lrFactor;
      const [beta1, beta2] = betas;
      const stepSize = lr / (1 - beta1 ** t);
      const biasCorrection2Sqrt = Math.sqrt(1 - beta2 ** t);
      const decayFactor = 1 - lr * weightDecay;
      for (const name of group.params) {
        const p = paramArrays[index];
        const grad = gradArrays[index];
        index++;
        const { expAvg, expAvgSq, maxExpAvgSq } = state.get(name) as ParameterState;
        for (let i = 0; i < p.length; i++) {
          const g = maximize ? -grad[i] : grad[i];
          const m = expAvg[i] + (1 - beta1) * (g - expAvg[i]);
          const v = beta2 * expAvgSq[i] + (1 - beta2) * g * g;
          expAvg[i] = m;
          expAvgSq[i] = v;
          let vDenominator = expAvgSq[i];
          if (maxExpAvgSq !== undefined) {
            if (vDenominator > maxExpAvgSq[i]) maxExpAvgSq[i] = vDenominator;
            vDenominator = maxExpAvgSq[i];
          }
          const denom = Math.sqrt(vDenominator) / biasCorrection2Sqrt + eps;
          p[i] = p[i] * decayFactor - (stepSize * expAvg[i]) / denom;
        }
      }
    }
  }

  stateDict(): OptimizerState {
    const tensors = new Map<string, Float32Array>();
    for (const [name, slots] of this.#state ?? []) {
      tensors.set(`exp_avg/${name}`, slots.expAvg);
      tensors.set(`exp_avg_sq/${name}`, slots.expAvgSq);
      if (slots.maxExpAvgSq !== undefined) tensors.set(`max_exp_avg_sq/${name}`, slots.maxExpAvgSq);
    }
    return { kind: this.kind, scalars: { configuration: this.#configuration(), step: this.#step }, tensors };
  }

  loadStateDict(state: OptimizerState): void {
    checkStateConfiguration(this.kind, this.#configuration(), state);
    const step = stateNumber(state, 'step', decodeNumber);
    if (step === 0) {
      this.#step = 0;
      this.#state = undefined;
      this.#lengths = undefined;
      return;
    }
    const lengths = new Map<string, number>();
    const slots = new Map<string, ParameterState>();
    for (const group of this.groups) {
      for (const name of group.params) {
        const expAvg = state.tensors.get(`exp_avg/${name}`);
        const length = expAvg?.length ?? 0;
        lengths.set(name, length);
        slots.set(name, {
          expAvg: stateTensor(state, 'exp_avg', name, length).slice(),
          expAvgSq: stateTensor(state, 'exp_avg_sq', name, length).slice(),
          maxExpAvgSq: group.options.amsgrad
            ? stateTensor(state, 'max_exp_avg_sq', name, length).slice()
            : undefined,
        });
      }
    }
    this.#step = step;
    this.#state = slots;
    this.#lengths = lengths;
  }

  #initialState(lengths: ReadonlyMap<string, number>): Map<string, ParameterState> {
    const state = new Map<string, ParameterState>();
    for (const group of this.groups) {
      for (const name of group.params) {
        const length = lengths.get(name) as number;
        state.set(name, {
          expAvg: new Float32Array(length),
          expAvgSq: new Float32Array(length),
          maxExpAvgSq: group.options.amsgrad ? new Float32Array(length) : undefined,
        });
      }
    }
    return state;
  }

  #configuration(): JsonObject {
    return describeConfiguration(this.groups, {}, (options) => {
      const o = options as AdamWOptions;
      return {
        lr: o.lr,
        betas: [...o.betas],
        eps: o.eps,
        weight_decay: o.weightDecay,
        amsgrad: o.amsgrad,
        maximize: o.maximize,
      };
    });
  }
}

/** torch's checks: 0 ≤ lr, 0 ≤ eps, 0 ≤ β < 1, 0 ≤ weight decay. */
function checkAdamWOptions(options: AdamWOptions): void {
  checkRange('AdamW', 'lr', options.lr, { min: 0 });
  checkRange('AdamW', 'eps', options.eps, { min: 0 });
  checkRange('AdamW', 'betas[0]', options.betas[0], { min: 0, max: 1, maxExclusive: true });
  checkRange('AdamW', 'betas[1]', options.betas[1], { min: 0, max: 1, maxExclusive: true });
  checkRange('AdamW', 'weightDecay', options.weightDecay, { min: 0 });
}
