/**
 * Gradient accumulation: the gradients of k micro-batches summed (or averaged) into one update, so that
 * k micro-batches of size b train as one batch of size k·b. The sum is float32, as torch accumulating
 * into `.grad`; the mean divides the sum once at the end.
 */
import { OptionError } from '../errors.js';
import { arraysInOrder, type NamedArrays } from './named-arrays.js';

export type AccumulationReduction = 'mean' | 'sum';

export class GradientAccumulator {
  readonly names: readonly string[];
  readonly #sums: Map<string, Float32Array> = new Map();
  #count = 0;

  constructor(
    names: readonly string[],
    /** Micro-batches per update. */
    readonly steps: number,
    readonly reduction: AccumulationReduction = 'mean',
  ) {
    if (!Number.isSafeInteger(steps) || steps < 1) {
      throw new OptionError(
        `Expected accumulation steps to be an integer ≥ 1, found ${steps}.`,
        'GRADIENT_ACCUMULATION',
      );
    }
    this.names = [...names];
  }

  /** Micro-batches added since the last take(). */
  get count(): number {
    return this.#count;
  }

  /** True when `steps` micro-batches have been added: time to take() and step. */
  get ready(): boolean {
    return this.#count >= this.steps;
  }

  /** Adds one micro-batch's gradients (read, not kept). */
  add(grads: NamedArrays): void {
    if (this.ready) {
      throw new OptionError(
        `Already holding ${this.#count} of ${this.steps} micro-batches; take() the gradients before adding more.`,
        'GRADIENT_ACCUMULATION',
      );
    }
    const lengths =
      this.#sums.size === 0 ? undefined : new Map([...this.#sums].map(([n, s]) => [n, s.length]));
    const arrays = arraysInOrder(grads, this.names, 'gradients', lengths);
    this.names.forEach((name, index) => {
      const grad = arrays[index];
      const sum = this.#sums.get(name);
      if (sum === undefined || this.#count === 0) {
        this.#sums.set(name, grad.slice());
      } else {
        for (let i = 0; i < sum.length; i++) sum[i] += grad[i];
      }
    });
    this.#count++;
  }

  /**
   * The accumulated gradients (sum or mean over the micro-batches added, which need not be `steps` at
   * the end of an epoch), and a reset. The arrays are handed over, not copied.
   */
  take(): Map<string, Float32Array> {
    if (this.#count === 0) {
      throw new OptionError(
        'No gradients to take: add() at least one micro-batch first.',
        'GRADIENT_ACCUMULATION',
      );
    }
    const result = new Map(this.#sums);
    if (this.reduction === 'mean' && this.#count > 1) {
      const count = this.#count;
      for (const sum of result.values()) {
        for (let i = 0; i < sum.length; i++) sum[i] /= count;
      }
    }
    this.#sums.clear();
    this.#count = 0;
    return result;
  }
}
