/**
 * What every optimizer shares: parameter groups (per-group options such as no weight decay for norms
 * and biases, as torch's param groups), the step contract, and a state that a checkpoint stores as
 * safetensors (the moments) plus JSON (hyperparameters and scalar state).
 *
 * The update runs in TypeScript on the host arrays rather than inside the ORT step graph: the step
 * graph already returns gradients to the host (clipping, accumulation and EMA need them there), the
 * update is a few memory-bound flops per element, and keeping it out of the graph lets one compiled
 * step graph serve every optimizer and schedule.
 */
import { OptionError } from '../errors.js';
import { listNames } from '../warnings.js';
import { describeDifferences, type JsonObject, type JsonValue } from './json-value.js';
import type { NamedArrays } from './named-arrays.js';

/** Parameters that share options; `options` override the optimizer's defaults for them. */
export interface ParameterGroup<GroupOptions> {
  readonly params: readonly string[];
  readonly options?: Partial<GroupOptions>;
}

/** A group after defaults are applied. */
export interface ResolvedGroup<GroupOptions> {
  readonly params: readonly string[];
  readonly options: Readonly<GroupOptions>;
}

/**
 * An optimizer's state for a checkpoint: `tensors` by `<slot>/<parameter name>` (e.g.
 * `exp_avg/proj.weight`), `scalars` JSON-safe (hyperparameters, step counts, Prodigy's d).
 */
export interface OptimizerState {
  readonly kind: string;
  readonly scalars: JsonObject;
  readonly tensors: NamedArrays;
}

export interface Optimizer {
  /** 'adamw' or 'prodigy': what a state file was written by. */
  readonly kind: string;
  /** Every parameter name, in group order. */
  readonly paramNames: readonly string[];
  /** Updates were applied this many times. */
  readonly stepCount: number;
  /**
   * One update of `params` in place from `grads` (both by name, exactly the optimizer's parameters).
   * `lrFactor` multiplies every group's lr, as torch's LambdaLR does (see lr-schedule.ts).
   */
  step(params: NamedArrays, grads: NamedArrays, lrFactor?: number): void;
  /** The state; its tensors are the live arrays (copy them to keep them past the next step). */
  stateDict(): OptimizerState;
  /** Restores a state of the same kind, groups and hyperparameters; throws naming what differs. */
  loadStateDict(state: OptimizerState): void;
}

/**
 * Applies `defaults` to each group and checks that no name is in two groups. A plain list of names
 * is one group with the defaults.
 */
export function resolveGroups<GroupOptions extends object>(
  groups: readonly ParameterGroup<GroupOptions>[] | readonly string[],
  defaults: GroupOptions,
  optimizerName: string,
): ResolvedGroup<GroupOptions>[] {
  const list: readonly ParameterGroup<GroupOptions>[] = groups.every((group) => typeof group === 'string')
    ? [{ params: groups as readonly string[] }]
    : (groups as readonly ParameterGroup<GroupOptions>[]);
  const seen = new Set<string>();
  const resolved = list.map((group, index) => {
    for (const name of group.params) {
      if (seen.has(name)) {
        throw new OptionError(
          `${optimizerName}: parameter '${name}' is in more than one group (again in group ${index}). ` +
            'Put each parameter in exactly one group.',
          'OPTIMIZER_GROUPS',
        );
      }
      seen.add(name);
    }
    const unknown = Object.keys(group.options ?? {}).filter((key) => !(key in defaults));
    if (unknown.length > 0) {
      throw new OptionError(
        `${optimizerName}: group ${index} sets ${listNames(unknown)}, which are not per-group options ` +
          `(per-group options: ${listNames(Object.keys(defaults))}).`,
        'OPTIMIZER_GROUPS',
      );
    }
    return { params: [...group.params], options: { ...defaults, ...group.options } };
  });
  if (seen.size === 0) {
    throw new OptionError(
      `${optimizerName}: expected at least one parameter, found none.`,
      'OPTIMIZER_GROUPS',
    );
  }
  return resolved;
}

/**
 * Two groups, the usual split: `noDecay` names (biases and norm weights by default) get weight decay 0,
 * the others the optimizer's default. Empty groups are left out.
 */
export function weightDecayGroups<GroupOptions extends { weightDecay: number }>(
  names: readonly string[],
  noDecay: (name: string) => boolean = isBiasOrNorm,
): ParameterGroup<GroupOptions>[] {
  const decayed = names.filter((name) => !noDecay(name));
  const exempt = names.filter((name) => noDecay(name));
  const groups: ParameterGroup<GroupOptions>[] = [];
  if (decayed.length > 0) groups.push({ params: decayed });
  if (exempt.length > 0)
    groups.push({ params: exempt, options: { weightDecay: 0 } as Partial<GroupOptions> });
  return groups;
}

/**
 * Biases and normalization weights by diffusers' naming: a `bias`, or a `weight` whose module is a norm
 * (`norm1.weight`, `norm_out.weight`, `ln_f.weight`; not `norm_out.linear.weight`, a Linear inside one).
 */
export function isBiasOrNorm(name: string): boolean {
  const parts = name.split('.');
  const leaf = parts[parts.length - 1];
  if (leaf === 'bias') return true;
  const module = parts[parts.length - 2] ?? '';
  return leaf === 'weight' && /norm|^ln(_|$)/i.test(module);
}

/** The JSON of the groups and the global options, as a state stores it for the check on load. */
export function describeConfiguration(
  groups: readonly ResolvedGroup<object>[],
  globalOptions: JsonObject,
  encode: (options: object) => JsonObject,
): JsonObject {
  return {
    ...globalOptions,
    groups: groups.map((group) => ({ params: [...group.params], options: encode(group.options) })),
  };
}

/** Throws when a state's kind or configuration differs from the optimizer's, naming the differences. */
export function checkStateConfiguration(
  kind: string,
  configuration: JsonObject,
  state: OptimizerState,
): void {
  if (state.kind !== kind) {
    throw new OptionError(
      `Cannot load an optimizer state written by '${state.kind}' into a '${kind}' optimizer. ` +
        'Resume with the optimizer the checkpoint was trained with.',
      'OPTIMIZER_STATE_KIND',
    );
  }
  const differences = describeDifferences(state.scalars['configuration'] as JsonValue, configuration, [
    'state',
    'now',
  ]);
  if (differences.length > 0) {
    throw new OptionError(
      `The ${kind} optimizer state was written with another configuration: ${differences.join('; ')}. ` +
        'Resume with the same parameters, groups and hyperparameters, or start a new run.',
      'OPTIMIZER_STATE_CONFIG',
    );
  }
}

/** Reads the tensor `<slot>/<name>` of a state, checking its length. */
export function stateTensor(state: OptimizerState, slot: string, name: string, length: number): Float32Array {
  const key = `${slot}/${name}`;
  const tensor = state.tensors.get(key);
  if (tensor === undefined) {
    throw new OptionError(
      `The ${state.kind} optimizer state has no tensor '${key}'; it is incomplete.`,
      'OPTIMIZER_STATE_TENSORS',
    );
  }
  if (tensor.length !== length) {
    throw new OptionError(
      `The ${state.kind} optimizer state's tensor '${key}' has ${tensor.length} elements; expected ${length}.`,
      'OPTIMIZER_STATE_TENSORS',
    );
  }
  return tensor;
}

/** A scalar of a state that must be a number (see encodeNumber for non-finite ones). */
export function stateNumber(
  state: OptimizerState,
  key: string,
  decode: (value: unknown) => number | undefined,
): number {
  const value = decode(state.scalars[key]);
  if (value === undefined) {
    throw new OptionError(
      `The ${state.kind} optimizer state has no number '${key}' (found ${JSON.stringify(state.scalars[key])}).`,
      'OPTIMIZER_STATE_SCALARS',
    );
  }
  return value;
}

/** Checks a number option: finite (unless `allowInfinity`) and within its bounds. */
export function checkRange(
  optimizerName: string,
  name: string,
  value: number,
  { min = -Infinity, max = Infinity, maxExclusive = false, minExclusive = false, allowInfinity = false } = {},
): void {
  const finiteOk = allowInfinity ? !Number.isNaN(value) : Number.isFinite(value);
  const lowOk = minExclusive ? value > min : value >= min;
  const highOk = maxExclusive ? value < max : value <= max;
  if (typeof value === 'number' && finiteOk && lowOk && highOk) return;
  const bounds = [
    min > -Infinity ? `${name} ${minExclusive ? '>' : '≥'} ${min}` : '',
    max < Infinity ? `${name} ${maxExclusive ? '<' : '≤'} ${max}` : '',
    allowInfinity ? '' : 'finite',
  ].filter((part) => part !== '');
  throw new OptionError(
    `${optimizerName}: expected ${bounds.join(', ')}; found ${name} = ${value}.`,
    'OPTIMIZER_OPTION',
  );
}
