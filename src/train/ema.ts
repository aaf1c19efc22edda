/**
 * An exponential moving average of the weights, as diffusers' training_utils.EMAModel:
 *
 *   decay_t = clamp(w(t'), min_decay, decay),  t' = optimization_step − update_after_step − 1
 *   w(t') = (1 + t')/(10 + t')  or, with use_ema_warmup, 1 − (1 + t'/inv_gamma)^(−power);  0 for t' ≤ 0
 *   shadow ← shadow − (1 − decay_t)·(shadow − param)
 *
 * so the first update copies the weights and the average lengthens as training goes. `warmup: 'none'`
 * (not in diffusers) uses `decay` from the second update on. The state (these options, the step count
 * and the shadow weights) is what diffusers' EMAModel.state_dict() holds, under its names.
 */
import { OptionError } from '../errors.js';
import { decodeNumber, type JsonObject } from './json-value.js';
import { arraysInOrder, copyArrays, type NamedArrays } from './named-arrays.js';

export type EmaWarmup = 'diffusers' | 'power' | 'none';

export interface EmaOptions {
  /** The largest decay, 0.9999. */
  decay: number;
  /** The smallest decay after the first updates, 0. */
  minDecay: number;
  /** Updates that only copy the weights before averaging starts, 0. */
  updateAfterStep: number;
  /** 'diffusers': (1 + t)/(10 + t); 'power': diffusers' use_ema_warmup, 1 − (1 + t/invGamma)^−power;
   * 'none': `decay`. */
  warmup: EmaWarmup;
  /** 1 */
  invGamma: number;
  /** 2/3 */
  power: number;
}

export const EMA_DEFAULTS: Readonly<EmaOptions> = {
  decay: 0.9999,
  minDecay: 0,
  updateAfterStep: 0,
  warmup: 'diffusers',
  invGamma: 1,
  power: 2 / 3,
};

/** What a checkpoint stores: the scalars under diffusers' names, and the shadow weights. */
export interface EmaState {
  readonly scalars: JsonObject;
  readonly shadow: NamedArrays;
}

export class EmaModel {
  readonly options: Readonly<EmaOptions>;
  readonly names: readonly string[];
  readonly #shadow: Map<string, Float32Array>;
  #optimizationStep = 0;
  #lastDecay: number | undefined;

  /** Starts the average at a copy of `params`. */
  constructor(params: NamedArrays, options: Partial<EmaOptions> = {}) {
    this.options = { ...EMA_DEFAULTS, ...options };
    checkEmaOptions(this.options);
    this.names = [...params.keys()];
    this.#shadow = copyArrays(params);
  }

  /** Updates made so far (diffusers' optimization_step). */
  get optimizationStep(): number {
    return this.#optimizationStep;
  }

  /** The decay of the last update (diffusers' cur_decay_value); undefined before the first. */
  get lastDecay(): number | undefined {
    return this.#lastDecay;
  }

  /** The averaged weights (live arrays). */
  get shadow(): NamedArrays {
    return this.#shadow;
  }

  /** The decay the update numbered `optimizationStep` (1-based) uses. */
  decayAt(optimizationStep: number): number {
    const { decay, minDecay, updateAfterStep, warmup, invGamma, power } = this.options;
    const step = Math.max(0, optimizationStep - updateAfterStep - 1);
    if (step <= 0) return 0;
    let value: number;
    if (warmup === 'power') value = 1 - (1 + step / invGamma) ** -power;
    else if (warmup === 'diffusers') value = (1 + step) / (10 + step);
    else value = decay;
    return Math.max(Math.min(value, decay), minDecay);
  }

  /** One update towards `params` (same names and lengths as at construction); returns the decay used. */
  step(params: NamedArrays): number {
    const lengths = new Map([...this.#shadow].map(([name, shadow]) => [name, shadow.length]));
    const arrays = arraysInOrder(params, this.names, 'EMA parameters', lengths);
    this.#optimizationStep++;
    const decay = this.decayAt(this.#optimizationStep);
    this.#lastDecay = decay;
    const oneMinusDecay = 1 - decay;
    this.names.forEach((name, index) => {
      const shadow = this.#shadow.get(name) as Float32Array;
      const param = arrays[index];
      for (let i = 0; i < shadow.length; i++) shadow[i] -= oneMinusDecay * (shadow[i] - param[i]);
    });
    return decay;
  }

  /** Copies the averaged weights into `params` (e.g. to evaluate or export with them). */
  copyTo(params: NamedArrays): void {
    const lengths = new Map([...this.#shadow].map(([name, shadow]) => [name, shadow.length]));
    const arrays = arraysInOrder(params, this.names, 'EMA parameters', lengths);
    this.names.forEach((name, index) => arrays[index].set(this.#shadow.get(name) as Float32Array));
  }

  /** The state, with diffusers' EMAModel.state_dict() keys; the shadow arrays are live. */
  stateDict(): EmaState {
    const o = this.options;
    return {
      scalars: {
        decay: o.decay,
        min_decay: o.minDecay,
        optimization_step: this.#optimizationStep,
        update_after_step: o.updateAfterStep,
        use_ema_warmup: o.warmup === 'power',
        inv_gamma: o.invGamma,
        power: o.power,
        velodiff_ema_warmup: o.warmup,
      },
      shadow: this.#shadow,
    };
  }

  /** Restores a state written with the same options and parameters; throws naming what differs. */
  loadStateDict(state: EmaState): void {
    const expected = this.stateDict().scalars;
    const differing = Object.keys(expected).filter(
      (key) =>
        key !== 'optimization_step' && JSON.stringify(expected[key]) !== JSON.stringify(state.scalars[key]),
    );
    if (differing.length > 0) {
      throw new OptionError(
        'The EMA state was written with other options: ' +
          differing
            .map(
              (key) =>
                `${key}: expected ${JSON.stringify(expected[key])}, found ${JSON.stringify(state.scalars[key])}`,
            )
            .join('; ') +
          '.',
        'EMA_STATE_CONFIG',
      );
    }
    const step = decodeNumber(state.scalars['optimization_step']);
    if (step === undefined || !Number.isSafeInteger(step) || step < 0) {
      throw new OptionError(
        `The EMA state's optimization_step must be an integer ≥ 0, found ${JSON.stringify(state.scalars['optimization_step'])}.`,
        'EMA_STATE',
      );
    }
    const lengths = new Map([...this.#shadow].map(([name, shadow]) => [name, shadow.length]));
    const arrays = arraysInOrder(state.shadow, this.names, 'EMA shadow weights', lengths);
    this.names.forEach((name, index) => (this.#shadow.get(name) as Float32Array).set(arrays[index]));
    this.#optimizationStep = step;
    this.#lastDecay = step === 0 ? undefined : this.decayAt(step);
  }
}

function checkEmaOptions(options: EmaOptions): void {
  const problems: string[] = [];
  if (!(options.decay >= 0 && options.decay <= 1)) problems.push(`decay in [0, 1], found ${options.decay}`);
  if (!(options.minDecay >= 0 && options.minDecay <= options.decay)) {
    problems.push(`minDecay in [0, decay], found ${options.minDecay}`);
  }
  if (!Number.isSafeInteger(options.updateAfterStep) || options.updateAfterStep < 0) {
    problems.push(`updateAfterStep an integer ≥ 0, found ${options.updateAfterStep}`);
  }
  if (!['diffusers', 'power', 'none'].includes(options.warmup)) {
    problems.push(`warmup 'diffusers', 'power' or 'none', found ${JSON.stringify(options.warmup)}`);
  }
  if (!(options.invGamma > 0 && Number.isFinite(options.invGamma)))
    problems.push(`invGamma > 0, found ${options.invGamma}`);
  if (!(options.power > 0 && Number.isFinite(options.power)))
    problems.push(`power > 0, found ${options.power}`);
  if (problems.length > 0) throw new OptionError(`EMA: expected ${problems.join('; ')}.`, 'EMA_OPTION');
}
