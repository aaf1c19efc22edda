/**
 * MT19937, the 32-bit Mersenne Twister (Matsumoto & Nishimura 1998), seeded and stepped as PyTorch's
 * CPU generator does it (aten/src/ATen/core/MT19937RNGEngine.h), so that a seed gives torch's stream.
 *
 * Torch keeps the whole 64-bit seed as `initial_seed()` but initialises the 624-word state from its
 * low 32 bits only (`init_genrand`), so seeds that differ by a multiple of 2^32 give the same stream.
 */
import { OptionError } from '../errors.js';

/** Words in the state vector (N in the paper). */
export const MT19937_STATE_WORDS = 624;
/** Offset of the word mixed in by the twist (M in the paper). */
const TWIST_OFFSET = 397;
const TWIST_MATRIX = 0x9908b0df;
const UPPER_BIT = 0x80000000;
const LOWER_BITS = 0x7fffffff;
/** Knuth's multiplier for `init_genrand` (TAOCP vol. 2, 3rd ed., p. 106). */
const INIT_MULTIPLIER = 1812433253;

const UINT64_LIMIT = 1n << 64n;
const INT64_MIN = -(1n << 63n);

/**
 * The seed as torch's CPU generator stores it: Python's `manual_seed` accepts integers in
 * [-2^63, 2^64) and keeps their 64-bit two's-complement pattern (torch/csrc/Generator.cpp).
 */
export function seedToUint64(seed: number | bigint): bigint {
  if (typeof seed === 'number' && !Number.isSafeInteger(seed)) {
    throw new OptionError(
      `Expected a seed that is an integer (a safe integer as a number, or a bigint), found ${seed}. ` +
        'Pass a whole number, or a bigint for seeds beyond 2^53.',
      'INVALID_SEED',
    );
  }
  const value = BigInt(seed);
  if (value < INT64_MIN || value >= UINT64_LIMIT) {
    throw new OptionError(
      `Expected a seed in [-2^63, 2^64) as torch accepts, found ${value}. Reduce it modulo 2^64.`,
      'INVALID_SEED',
    );
  }
  return BigInt.asUintN(64, value);
}

/** Everything needed to resume an engine: the fields of torch's `mt19937_data_pod`. */
export interface Mt19937State {
  /** The 64-bit seed the engine was created with (`initial_seed`). */
  readonly seed: bigint;
  /** Outputs left before the next twist, in 1..624 (the twist runs when it would reach 0). */
  readonly left: number;
  /** Index of the state word the next output tempers, in 0..624. */
  readonly next: number;
  /** The 624 state words. */
  readonly words: Uint32Array;
}

export class Mt19937 {
  #seed = 0n;
  #left = 1;
  #next = 0;
  readonly #words = new Uint32Array(MT19937_STATE_WORDS);

  /** 5489 is the reference implementation's default seed, and torch's. */
  constructor(seed: number | bigint = 5489) {
    this.reseed(seed);
  }

  /** The 64-bit seed this engine was last seeded with. */
  get seed(): bigint {
    return this.#seed;
  }

  /** Restart the stream from `seed` (`init_genrand` on its low 32 bits). */
  reseed(seed: number | bigint): void {
    this.#seed = seedToUint64(seed);
    const words = this.#words;
    words[0] = Number(this.#seed & 0xffffffffn);
    for (let i = 1; i < MT19937_STATE_WORDS; i++) {
      const previous = words[i - 1];
      words[i] = Math.imul(INIT_MULTIPLIER, previous ^ (previous >>> 30)) + i;
    }
    // The first output twists the freshly initialised state.
    this.#left = 1;
    this.#next = 0;
  }

  /** The next 32-bit output, as an unsigned integer in [0, 2^32). */
  nextUint32(): number {
    if (--this.#left === 0) this.#twist();
    let y = this.#words[this.#next++];
    // Tempering (the paper's eq. 2.2).
    y ^= y >>> 11;
    y ^= (y << 7) & 0x9d2c5680;
    y ^= (y << 15) & 0xefc60000;
    y ^= y >>> 18;
    return y >>> 0;
  }

  /** A copy of the engine's state. */
  getState(): Mt19937State {
    return { seed: this.#seed, left: this.#left, next: this.#next, words: this.#words.slice() };
  }

  /** Resume from `state`; rejects the states torch's `mt19937::is_valid` rejects. */
  setState(state: Mt19937State): void {
    const { seed, left, next, words } = state;
    if (words.length !== MT19937_STATE_WORDS) {
      throw new OptionError(
        `Expected ${MT19937_STATE_WORDS} MT19937 state words, found ${words.length}.`,
        'INVALID_RNG_STATE',
      );
    }
    if (!Number.isInteger(left) || left < 1 || left > MT19937_STATE_WORDS) {
      throw new OptionError(
        `Expected an MT19937 'left' count in 1..${MT19937_STATE_WORDS}, found ${left}. The state is corrupt.`,
        'INVALID_RNG_STATE',
      );
    }
    if (!Number.isInteger(next) || next < 0 || next > MT19937_STATE_WORDS) {
      throw new OptionError(
        `Expected an MT19937 'next' index in 0..${MT19937_STATE_WORDS}, found ${next}. The state is corrupt.`,
        'INVALID_RNG_STATE',
      );
    }
    this.#seed = seedToUint64(seed);
    this.#left = left;
    this.#next = next;
    this.#words.set(words);
  }

  /** Regenerate all 624 words at once (the paper's recurrence, eq. 2.1). */
  #twist(): void {
    const words = this.#words;
    const twisted = (upper: number, lower: number): number =>
      (((upper & UPPER_BIT) | (lower & LOWER_BITS)) >>> 1) ^ (lower & 1 ? TWIST_MATRIX : 0);
    let i = 0;
    for (; i < MT19937_STATE_WORDS - TWIST_OFFSET; i++) {
      words[i] = words[i + TWIST_OFFSET] ^ twisted(words[i], words[i + 1]);
    }
    for (; i < MT19937_STATE_WORDS - 1; i++) {
      words[i] = words[i + TWIST_OFFSET - MT19937_STATE_WORDS] ^ twisted(words[i], words[i + 1]);
    }
    words[i] = words[TWIST_OFFSET - 1] ^ twisted(words[i], words[0]);
    this.#left = MT19937_STATE_WORDS;
    this.#next = 0;
  }
}
