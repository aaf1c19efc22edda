/**
 * Prodigy (Mishchenko & Defazio 2023, "Prodigy: An Expeditiously Adaptive Parameter-Free Learner"), as
 * the `prodigyopt` package's Prodigy.step: Adam whose step size d·lr is estimated from the run itself.
 * Per step k, with dlr = d·lr·bc (bc = √(1 − β2ᵏ⁺¹)/(1 − β1ᵏ⁺¹) with bias correction, else 1):
 *
 *   r ← β3·r + (d/d0)·dlr·⟨g, p0 − p⟩                     (d numerator; p0 = parameters at step 1)
 *   m ← β1·m + d(1 − β1)·g;   v ← β2·v + d²(1 − β2)·g²
 *   s ← β3·s + (d/d0)·(safeguard_warmup ? d : dlr)·g
 *   d̂ = d_coef·r/‖s‖₁;  d ← max(d, d̂) while d = d0;  d_max ← max(d_max, d̂);  d ← min(d_max, d·growth_rate)
 *   p ← p − wd·dlr·p  (decoupled)  then  p ← p − dlr·m/(√v + d·ε)     (dlr from before d moved; ε·d new)
 *
 * As in the package: the lr of every group must be the largest lr or 0; a group with lr 0 keeps zero
 * moments but still gets decoupled weight decay with the global dlr; when ‖s‖₁ = 0 (no gradient seen
 * yet) the step returns after updating the moments, without moving the parameters or counting the
 * step. `slice_p` estimates d from every slice_p-th element. Moments and s are float32; the sums that
 * feed d are float64 (the package accumulates them in Python floats).
 */
import { OptionError } from '../errors.js';
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
import { decodeNumber, encodeNumber, type JsonObject } from './json-value.js';
import { arraysInOrder, type NamedArrays } from './named-arrays.js';

/** Options the package reads per parameter group. */
export interface ProdigyGroupOptions {
  /** 1.0; scales the estimated step (every group's lr must be the largest one or 0). */
  lr: number;
  /** 0 */
  weightDecay: number;
  /** 1e-8, multiplied by d in the denominator. */
  eps: number;
  /** false: s accumulates d·g instead of dlr·g (steadier d during lr warm-up). */
  safeguardWarmup: boolean;
  /** 1: estimate d from every slice_p-th element only (less memory for p0 and s). */
  sliceP: number;
}

/** Options the package reads once (from its first group). */
export interface ProdigyGlobalOptions {
  /** [0.9, 0.999] */
  betas: readonly [number, number];
  /** undefined: √β2. */
  beta3: number | undefined;
  /** true: AdamW-style decay p ← p − wd·dlr·p; false: wd·p is added to the gradient. */
  decouple: boolean;
  /** false */
  useBiasCorrection: boolean;
  /** 1e-6: the initial d. */
  d0: number;
  /** 1.0 */
  dCoef: number;
  /** Infinity: the most d may grow per step, as a factor. */
  growthRate: number;
}

export type ProdigyOptions = ProdigyGroupOptions & ProdigyGlobalOptions;

export const PRODIGY_GROUP_DEFAULTS: Readonly<ProdigyGroupOptions> = {
  lr: 1.0,
  weightDecay: 0,
  eps: 1e-8,
  safeguardWarmup: false,
  sliceP: 1,
};

export const PRODIGY_GLOBAL_DEFAULTS: Readonly<ProdigyGlobalOptions> = {
  betas: [0.9, 0.999],
  beta3: undefined,
  decouple: true,
  useBiasCorrection: false,
  d0: 1e-6,
  dCoef: 1.0,
  growthRate: Infinity,
};

/** The step-size estimate after the last step, for logging and tests (the package's group fields). */
export interface ProdigyEstimate {
  /** The step-size estimate d. */
  readonly d: number;
  readonly dMax: number;
  /** The last raw estimate d̂ (d before the first step). */
  readonly dHat: number;
  readonly dNumerator: number;
  readonly dDenominator: number;
  /** Steps counted (the package's k). */
  readonly k: number;
}

interface ParameterState {
  readonly expAvg: Float32Array;
  readonly expAvgSq: Float32Array;
  /** Σ of scaled gradients, every slice_p-th element. */
  readonly s: Float32Array;
  /** The parameters at the first step, every slice_p-th element. */
  readonly p0: Float32Array;
}

export class Prodigy implements Optimizer {
  readonly kind = 'prodigy';
  readonly paramNames: readonly string[];
  readonly groups: readonly ResolvedGroup<ProdigyGroupOptions>[];
  readonly options: Readonly<ProdigyGlobalOptions>;
  #d: number;
  #dMax: number;
  #dHat: number;
  #dNumerator = 0;
  #dDenominator = 0;
  #k = 0;
  #state: Map<string, ParameterState> | undefined;
  #lengths: Map<string, number> | undefined;

  constructor(
    groups: readonly ParameterGroup<ProdigyGroupOptions>[] | readonly string[],
    options: Partial<ProdigyOptions> = {},
  ) {
    const groupDefaults = { ...PRODIGY_GROUP_DEFAULTS };
    const globals = { ...PRODIGY_GLOBAL_DEFAULTS };
    for (const [key, value] of Object.entries(options)) {
      if (value === undefined && key !== 'beta3') continue;
      if (key in groupDefaults) (groupDefaults as Record<string, unknown>)[key] = value;
      else if (key in globals) (globals as Record<string, unknown>)[key] = value;
      else throw new OptionError(`Prodigy: unknown option '${key}'.`, 'OPTIMIZER_OPTION');
    }
    this.groups = resolveGroups(groups, groupDefaults, 'Prodigy');
    this.options = globals;
    checkProdigyOptions(globals, this.groups);
    this.paramNames = this.groups.flatMap((group) => group.params);
    this.#d = globals.d0;
    this.#dMax = globals.d0;
    this.#dHat = globals.d0;
  }

  get stepCount(): number {
    return this.#k;
  }

  get estimate(): ProdigyEstimate {
    return {
      d: this.#d,
      dMax: this.#dMax,
      dHat: this.#dHat,
      dNumerator: this.#dNumerator,
      dDenominator: this.#dDenominator,
      k: this.#k,
    };
  }

  step(params: NamedArrays, grads: NamedArrays, lrFactor = 1): void {
    checkRange('Prodigy', 'lrFactor', lrFactor, { min: 0 });
    const paramArrays = arraysInOrder(params, this.paramNames, 'parameters', this.#lengths);
    const lengths = this.#lengths ?? new Map(this.paramNames.map((name, i) => [name, paramArrays[i].length]));
    const gradArrays = arraysInOrder(grads, this.paramNames, 'gradients', lengths);

    const { betas, decouple, useBiasCorrection, d0, dCoef, growthRate } = this.options;
    const [beta1, beta2] = betas;
    const beta3 = this.options.beta3 ?? Math.sqrt(beta2);
    const k = this.#k;
    const groupLrs = this.groups.map((group) => group.options.lr * lrFactor);
    const lr = Math.max(...groupLrs);
    // Checked before anything moves (the package raises halfway through its first pass).
    groupLrs.forEach((groupLr, groupIndex) => {
      if (groupLr !== lr && groupLr !== 0) {
        throw new OptionError(
          `Prodigy: every group's lr must be the largest lr (${lr}) or 0; group ${groupIndex} has ${groupLr}. ` +
            'Scale all groups together (lrFactor), or freeze a group with lr 0.',
          'OPTIMIZER_OPTION',
        );
      }
    });
    if (this.#state === undefined) this.#state = this.#initialState(paramArrays);
    this.#lengths = lengths;
    const state = this.#state;
    const biasCorrection = useBiasCorrection ? Math.sqrt(1 - beta2 ** (k + 1)) / (1 - beta1 ** (k + 1)) : 1;
    let d = this.#d;
    const dlr = d * lr * biasCorrection;
    let dNumerator = this.#dNumerator * beta3;
    let dDenominator = 0;

    // First pass: moments, s and the d numerator with the current d.
    let index = 0;
    this.groups.forEach((group, groupIndex) => {
      const groupLr = groupLrs[groupIndex];
      const { weightDecay, safeguardWarmup, sliceP } = group.options;
      const coupledDecay = weightDecay !== 0 && !decouple ? weightDecay : 0;
      const sScale = (d / d0) * (safeguardWarmup ? d : dlr);
      for (const name of group.params) {
        const p = paramArrays[index];
        const grad = gradArrays[index];
        index++;
        if (groupLr === 0) continue;
        const { expAvg, expAvgSq, s, p0 } = state.get(name) as ParameterState;
        let dot = 0;
        for (let j = 0, i = 0; i < p.length; j++, i += sliceP) {
          dot += (grad[i] + coupledDecay * p[i]) * (p0[j] - p[i]);
        }
        dNumerator += (d / d0) * dlr * dot;
        for (let i = 0; i < p.length; i++) {
          const g = grad[i] + coupledDecay * p[i];
          expAvg[i] = expAvg[i] * beta1 + d * (1 - beta1) * g;
          expAvgSq[i] = expAvgSq[i] * beta2 + d * d * (1 - beta2) * g * g;
        }
        let sAbsSum = 0;
        for (let j = 0, i = 0; i < p.length; j++, i += sliceP) {
          s[j] = s[j] * beta3 + sScale * (grad[i] + coupledDecay * p[i]);
          sAbsSum += Math.abs(s[j]);
        }
        dDenominator += sAbsSum;
      }
    });

    // No gradient information yet (all zero, or every lr 0): the package returns here.
    if (dDenominator === 0) return;

    const dHat = (dCoef * dNumerator) / dDenominator;
    if (d === d0) d = Math.max(d, dHat);
    const dMax = Math.max(this.#dMax, dHat);
    d = Math.min(dMax, d * growthRate);
    this.#dNumerator = dNumerator;
    this.#dDenominator = dDenominator;
    this.#d = d;
    this.#dMax = dMax;
    this.#dHat = dHat;

    // Second pass: the Adam step with the old dlr and the new d in the denominator.
    index = 0;
    for (const group of this.groups) {
      const { weightDecay, eps } = group.options;
      const decoupledDecay = weightDecay !== 0 && decouple ? weightDecay * dlr : 0;
      const epsD = d * eps;
      for (const name of group.params) {
        const p = paramArrays[index];
        index++;
        const { expAvg, expAvgSq } = state.get(name) as ParameterState;
        for (let i = 0; i < p.length; i++) {
          p[i] = p[i] - decoupledDecay * p[i] - (dlr * expAvg[i]) / (Math.sqrt(expAvgSq[i]) + epsD);
        }
      }
    }
    this.#k = k + 1;
  }

  stateDict(): OptimizerState {
    const tensors = new Map<string, Float32Array>();
    for (const [name, slots] of this.#state ?? []) {
      tensors.set(`exp_avg/${name}`, slots.expAvg);
      tensors.set(`exp_avg_sq/${name}`, slots.expAvgSq);
      tensors.set(`s/${name}`, slots.s);
      tensors.set(`p0/${name}`, slots.p0);
    }
    return {
      kind: this.kind,
      scalars: {
        configuration: this.#configuration(),
        initialized: this.#state !== undefined,
        d: encodeNumber(this.#d),
        d_max: encodeNumber(this.#dMax),
        d_hat: encodeNumber(this.#dHat),
        d_numerator: encodeNumber(this.#dNumerator),
        d_denom: encodeNumber(this.#dDenominator),
        k: this.#k,
      },
      tensors,
    };
  }

  loadStateDict(state: OptimizerState): void {
    checkStateConfiguration(this.kind, this.#configuration(), state);
    const d = stateNumber(state, 'd', decodeNumber);
    const dMax = stateNumber(state, 'd_max', decodeNumber);
    const dHat = stateNumber(state, 'd_hat', decodeNumber);
    const dNumerator = stateNumber(state, 'd_numerator', decodeNumber);
    const dDenominator = stateNumber(state, 'd_denom', decodeNumber);
    const k = stateNumber(state, 'k', decodeNumber);
    let slots: Map<string, ParameterState> | undefined;
    let lengths: Map<string, number> | undefined;
    if (state.scalars['initialized'] === true) {
      slots = new Map();
      lengths = new Map();
      for (const group of this.groups) {
        const { sliceP } = group.options;
        for (const name of group.params) {
          const length = state.tensors.get(`exp_avg/${name}`)?.length ?? 0;
          const sliced = Math.ceil(length / sliceP);
          lengths.set(name, length);
          slots.set(name, {
            expAvg: stateTensor(state, 'exp_avg', name, length).slice(),
            expAvgSq: stateTensor(state, 'exp_avg_sq', name, length).slice(),
            s: stateTensor(state, 's', name, sliced).slice(),
            p0: stateTensor(state, 'p0', name, sliced).slice(),
          });
        }
      }
    }
    this.#d = d;
    this.#dMax = dMax;
    this.#dHat = dHat;
    this.#dNumerator = dNumerator;
    this.#dDenominator = dDenominator;
    this.#k = k;
    this.#state = slots;
    this.#lengths = lengths;
  }

  #initialState(paramArrays: readonly Float32Array[]): Map<string, ParameterState> {
    const state = new Map<string, ParameterState>();
    let index = 0;
    for (const group of this.groups) {
      const { sliceP } = group.options;
      for (const name of group.params) {
        const p = paramArrays[index++];
        const p0 = new Float32Array(Math.ceil(p.length / sliceP));
        for (let j = 0, i = 0; i < p.length; j++, i += sliceP) p0[j] = p[i];
        state.set(name, {
          expAvg: new Float32Array(p.length),
          expAvgSq: new Float32Array(p.length),
          s: new Float32Array(p0.length),
          p0,
        });
      }
    }
    return state;
  }

  #configuration(): JsonObject {
    const o = this.options;
    return describeConfiguration(
      this.groups,
      {
        betas: [...o.betas],
        beta3: o.beta3 === undefined ? null : o.beta3,
        decouple: o.decouple,
        use_bias_correction: o.useBiasCorrection,
        d0: o.d0,
        d_coef: o.dCoef,
        growth_rate: encodeNumber(o.growthRate),
      },
      (options) => {
        const g = options as ProdigyGroupOptions;
        return {
          lr: g.lr,
          weight_decay: g.weightDecay,
          eps: g.eps,
          safeguard_warmup: g.safeguardWarmup,
          slice_p: g.sliceP,
        };
      },
    );
  }
}

/** The package's checks (0 < d0, 0 < lr, 0 < eps, 0 ≤ β < 1), and the rest made explicit. */
function checkProdigyOptions(
  globals: ProdigyGlobalOptions,
  groups: readonly ResolvedGroup<ProdigyGroupOptions>[],
): void {
  checkRange('Prodigy', 'd0', globals.d0, { min: 0, minExclusive: true });
  checkRange('Prodigy', 'betas[0]', globals.betas[0], { min: 0, max: 1, maxExclusive: true });
  checkRange('Prodigy', 'betas[1]', globals.betas[1], { min: 0, max: 1, maxExclusive: true });
  if (globals.beta3 !== undefined) checkRange('Prodigy', 'beta3', globals.beta3, { min: 0, max: 1 });
  checkRange('Prodigy', 'dCoef', globals.dCoef, { min: 0, minExclusive: true });
  checkRange('Prodigy', 'growthRate', globals.growthRate, { min: 1, allowInfinity: true });
  for (const group of groups) {
    // The package requires lr > 0 in its defaults; a group may set 0 to freeze its parameters.
    checkRange('Prodigy', 'lr', group.options.lr, { min: 0 });
    checkRange('Prodigy', 'eps', group.options.eps, { min: 0, minExclusive: true });
    checkRange('Prodigy', 'weightDecay', group.options.weightDecay, { min: 0 });
    if (!Number.isSafeInteger(group.options.sliceP) || group.options.sliceP < 1) {
      throw new OptionError(
        `Prodigy: expected sliceP to be an integer ≥ 1, found ${group.options.sliceP}.`,
        'OPTIMIZER_OPTION',
      );
    }
  }
  if (groups.every((group) => group.options.lr === 0)) {
    throw new OptionError(
      'Prodigy: expected lr > 0 in at least one group, found 0 in every group.',
      'OPTIMIZER_OPTION',
    );
  }
}
