/**
 * Parameters, gradients and optimizer moments on the host: flat float32 arrays by parameter name,
 * names exactly as the checkpoint spells them. The training step graph returns gradients in this
 * form; optimizers, clipping, accumulation and EMA work on it with plain loops (DESIGN: TypeScript
 * does optimizers on flat arrays).
 */
import { OptionError } from '../errors.js';
import { listNames } from '../warnings.js';

/** Flat float32 arrays by parameter name. */
export type NamedArrays = ReadonlyMap<string, Float32Array>;

/**
 * Checks that `arrays` holds exactly `names`, each of `lengths.get(name)` elements when lengths are
 * given, and returns the arrays in `names` order. `what` names the arrays ('gradients') for errors.
 */
export function arraysInOrder(
  arrays: NamedArrays,
  names: readonly string[],
  what: string,
  lengths?: ReadonlyMap<string, number>,
): Float32Array[] {
  const missing = names.filter((name) => !arrays.has(name));
  if (missing.length > 0 || arrays.size !== names.length) {
    const known = new Set(names);
    const unexpected = [...arrays.keys()].filter((name) => !known.has(name));
    throw new OptionError(
      `Expected ${what} for exactly the ${names.length} parameters the optimizer was built with; ` +
        (missing.length > 0 ? `missing: ${listNames(missing)}. ` : '') +
        (unexpected.length > 0 ? `unexpected: ${listNames(unexpected)}. ` : '') +
        'Pass one array per parameter name.',
      'TRAIN_PARAMETER_NAMES',
    );
  }
  return names.map((name) => {
    const array = arrays.get(name) as Float32Array;
    if (!(array instanceof Float32Array)) {
      throw new OptionError(`Expected ${what} '${name}' to be a Float32Array.`, 'TRAIN_PARAMETER_TYPE');
    }
    const length = lengths?.get(name);
    if (length !== undefined && array.length !== length) {
      throw new OptionError(
        `Expected ${what} '${name}' to have ${length} elements, found ${array.length}.`,
        'TRAIN_PARAMETER_LENGTH',
      );
    }
    return array;
  });
}

/** Deep copies of `arrays` (for a state that must outlive the next in-place update). */
export function copyArrays(arrays: NamedArrays): Map<string, Float32Array> {
  return new Map([...arrays].map(([name, array]) => [name, array.slice()]));
}
