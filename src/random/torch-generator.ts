/**
 * A seeded generator that reproduces `torch.Generator('cpu')` bit for bit for float32 `randn` and
 * `rand`, so that a seed gives the same initial latents and scheduler noise as diffusers on CPU
 * (`randn_tensor` draws `torch.randn(shape, generator=g, dtype=torch.float32)`).
 *
 * How torch draws (aten/src/ATen/native/cpu/DistributionTemplates.h, core/DistributionsHelper.h):
 * - `rand`: one 32-bit output per element; its low 24 bits / 2^24.
 * - `randn` with ≥ 16 elements (`normal_fill`): fill the tensor with such uniforms, then turn each
 *   block of 16 into normals by Box–Muller, pairing element j (radius, from 1 − u) with element j + 8
 *   (angle). When the size is not a multiple of 16, the last 16 elements are redrawn from 16 fresh
 *   uniforms and transformed again, overwriting part of the last full block.
 * - `randn` with < 16 elements: `normal_distribution<double>` per element, from two 53-bit uniforms
 *   (each from two 32-bit outputs); Box–Muller gives two normals and the generator caches the second
 *   for the next draw, even across calls, until it is reseeded.
 */
import { OptionError } from '../errors.js';
import { cephesLog, cephesSinCos, fusedMulAdd, unfusedMulAdd, type MulAdd } from './avx-mathfun.js';
import { Mt19937, MT19937_STATE_WORDS } from './mt19937.js';

/** Anything that draws standard normal noise; schedulers and pipelines take this. */
export interface NoiseGenerator {
  /** A fresh float32 tensor of standard normals with `shape`, row-major. */
  randn(shape: readonly number[]): Float32Array;
}

/** Bytes of torch's `CPUGeneratorImplState`, what `Generator.get_state()` returns. */
export const TORCH_CPU_STATE_BYTES = 5056;

/** Tensors this size or larger take torch's vectorised Box–Muller path. */
const BLOCK = 16;
const HALF_BLOCK = BLOCK / 2;
const TWO_POW_MINUS_24 = 2 ** -24;
const TWO_POW_MINUS_53 = 2 ** -53;
const TWO_POW_32 = 2 ** 32;
/** `_mm256_set1_ps(2.0f * c10::pi<double>)`: 2π rounded to float32. */
const TWO_PI_FLOAT32 = Math.fround(2 * Math.PI);

export interface TorchGeneratorOptions {
  /**
   * Whether torch's AVX2 Box–Muller kernel was compiled with fused multiply-adds. torch's Linux
   * x86-64 builds are (GCC contracts a multiply into the add that consumes it), which is what
   * diffusers on a Linux CPU draws; default true. Pass false for a torch built without contraction
   * (`-ffp-contract=off`). Only `randn` of ≥ 16 elements depends on it: about 1% of values move by
   * 1–2 float32 ulps. torch builds without AVX2 (e.g. on ARM) use the C library's float `log`, `sin`
   * and `cos` instead; neither setting reproduces those exactly (they agree to about 1e-6).
   */
  readonly fusedMultiplyAdd?: boolean;
}

export class TorchGenerator implements NoiseGenerator {
  readonly #engine = new Mt19937();
  /** The second Box–Muller normal of the scalar (double) path, kept for the next draw. */
  #nextDoubleNormal: number | undefined;
  /** torch's cache for float `normal_distribution`; no draw here sets it, but states carry it. */
  #nextFloatNormal: number | undefined;
  readonly #sinCos = new Float64Array(2);
  readonly #mulAdd: MulAdd;

  /** As `torch.Generator('cpu').manual_seed(seed)`; seed in [-2^63, 2^64). */
  constructor(seed: number | bigint, options: TorchGeneratorOptions = {}) {
    this.#mulAdd = (options.fusedMultiplyAdd ?? true) ? fusedMulAdd : unfusedMulAdd;
    this.manualSeed(seed);
  }

  /** Restart the stream from `seed`, as torch's `manual_seed`, dropping any cached normal. */
  manualSeed(seed: number | bigint): this {
    this.#engine.reseed(seed);
    this.#nextDoubleNormal = undefined;
    this.#nextFloatNormal = undefined;
    return this;
  }

  /** The 64-bit seed last given (torch's `initial_seed()`). */
  get initialSeed(): bigint {
    return this.#engine.seed;
  }

  /** As `torch.rand(shape, generator=g, dtype=torch.float32)`: uniform in [0, 1). */
  rand(shape: readonly number[]): Float32Array {
    const values = new Float32Array(elementCount(shape));
    for (let i = 0; i < values.length; i++) values[i] = this.#uniformFloat();
    return values;
  }

  /** As `torch.randn(shape, generator=g, dtype=torch.float32)`: standard normal. */
  randn(shape: readonly number[]): Float32Array {
    const values = new Float32Array(elementCount(shape));
    if (values.length >= BLOCK) {
      this.#normalFill(values);
    } else {
      for (let i = 0; i < values.length; i++) values[i] = this.#normalDouble();
    }
    return values;
  }

  /**
   * The state in the byte layout of torch's `Generator.get_state()` (`CPUGeneratorImplState`, 5056
   * bytes, little-endian, LP64 padding), so states move between torch and velodiff both ways.
   */
  getState(): Uint8Array {
    const bytes = new Uint8Array(TORCH_CPU_STATE_BYTES);
    const view = new DataView(bytes.buffer);
    const engine = this.#engine.getState();
    view.setBigUint64(StateLayout.initialSeed, engine.seed, true);
    view.setInt32(StateLayout.left, engine.left, true);
    view.setInt32(StateLayout.seeded, 1, true);
    view.setBigUint64(StateLayout.next, BigInt(engine.next), true);
    for (let i = 0; i < MT19937_STATE_WORDS; i++) {
      view.setBigUint64(StateLayout.words + 8 * i, BigInt(engine.words[i]), true);
    }
    if (this.#nextDoubleNormal !== undefined) {
      view.setFloat64(StateLayout.normalY, this.#nextDoubleNormal, true);
      view.setInt32(StateLayout.normalIsValid, 1, true);
    }
    if (this.#nextFloatNormal !== undefined) {
      view.setFloat32(StateLayout.nextFloatNormal, this.#nextFloatNormal, true);
      view.setUint8(StateLayout.nextFloatNormalIsValid, 1);
    }
    return bytes;
  }

  /** Resume from bytes of `getState()` or of torch's `Generator.get_state().numpy().tobytes()`. */
  setState(state: Uint8Array): void {
    if (state.byteLength !== TORCH_CPU_STATE_BYTES) {
      throw new OptionError(
        `Expected a torch CPU generator state of ${TORCH_CPU_STATE_BYTES} bytes, found ${state.byteLength}. ` +
          "Pass the bytes of TorchGenerator.getState() or of torch's Generator('cpu').get_state().",
        'INVALID_RNG_STATE',
      );
    }
    const view = new DataView(state.buffer, state.byteOffset, state.byteLength);
    if (view.getInt32(StateLayout.seeded, true) === 0) {
      throw new OptionError(
        'Expected a seeded torch generator state, found one whose seeded flag is 0. The state is corrupt.',
        'INVALID_RNG_STATE',
      );
    }
    const words = new Uint32Array(MT19937_STATE_WORDS);
    for (let i = 0; i < MT19937_STATE_WORDS; i++) {
      // torch keeps 64-bit slots for the 32-bit words and truncates them on load.
      words[i] = view.getUint32(StateLayout.words + 8 * i, true);
    }
    const next = view.getBigUint64(StateLayout.next, true);
    if (next > BigInt(MT19937_STATE_WORDS)) {
      throw new OptionError(
        `Expected an MT19937 'next' index in 0..${MT19937_STATE_WORDS}, found ${next}. The state is corrupt.`,
        'INVALID_RNG_STATE',
      );
    }
    this.#engine.setState({
      seed: view.getBigUint64(StateLayout.initialSeed, true),
      left: view.getInt32(StateLayout.left, true),
      next: Number(next),
      words,
    });
    this.#nextDoubleNormal =
      view.getInt32(StateLayout.normalIsValid, true) !== 0
        ? view.getFloat64(StateLayout.normalY, true)
        : undefined;
    this.#nextFloatNormal =
      view.getUint8(StateLayout.nextFloatNormalIsValid) !== 0
        ? view.getFloat32(StateLayout.nextFloatNormal, true)
        : undefined;
  }

  /** `uniform_real_distribution<float>(0, 1)`: 24 random bits, exact in float32. */
  #uniformFloat(): number {
    return (this.#engine.nextUint32() & 0xffffff) * TWO_POW_MINUS_24;
  }

  /** `uniform_real_distribution<double>(0, 1)`: 53 bits of `random64()` (first output high). */
  #uniformDouble(): number {
    const high = this.#engine.nextUint32();
    const low = this.#engine.nextUint32();
    return ((high & 0x1fffff) * TWO_POW_32 + low) * TWO_POW_MINUS_53;
  }

  /** `normal_distribution<double>(0, 1)`, rounded to float32 by the caller's store. */
  #normalDouble(): number {
    const cached = this.#nextDoubleNormal;
    if (cached !== undefined) {
      this.#nextDoubleNormal = undefined;
      return cached;
    }
    const angleUniform = this.#uniformDouble();
    const radiusUniform = this.#uniformDouble();
    // Box–Muller (Box & Muller 1958): two independent normals from two uniforms.
    const radius = Math.sqrt(-2 * Math.log1p(-radiusUniform));
    const angle = 2 * Math.PI * angleUniform;
    this.#nextDoubleNormal = radius * Math.sin(angle);
    return radius * Math.cos(angle);
  }

  /** `normal_fill_AVX2` with mean 0 and std 1. */
  #normalFill(values: Float32Array): void {
    for (let i = 0; i < values.length; i++) values[i] = this.#uniformFloat();
    for (let start = 0; start + BLOCK <= values.length; start += BLOCK) this.#boxMuller16(values, start);
    if (values.length % BLOCK !== 0) {
      const start = values.length - BLOCK;
      for (let i = start; i < values.length; i++) values[i] = this.#uniformFloat();
      this.#boxMuller16(values, start);
    }
  }

  /** `normal_fill_16_AVX2`: 16 uniforms in place → 16 normals, in float32 throughout. */
  #boxMuller16(values: Float32Array, start: number): void {
    const sinCos = this.#sinCos;
    const mulAdd = this.#mulAdd;
    for (let lane = start; lane < start + HALF_BLOCK; lane++) {
      // 1 − u maps [0, 1) to (0, 1] for the logarithm.
      const radius = Math.fround(Math.sqrt(-2 * cephesLog(Math.fround(1 - values[lane]), mulAdd)));
      cephesSinCos(Math.fround(TWO_PI_FLOAT32 * values[lane + HALF_BLOCK]), mulAdd, sinCos);
      // The kernel ends with fmadd(n, std, mean); with std 1 and mean 0 it only turns −0 into +0.
      values[lane] = Math.fround(radius * sinCos[1]) + 0;
      values[lane + HALF_BLOCK] = Math.fround(radius * sinCos[0]) + 0;
    }
  }
}

/** Byte offsets in torch's `CPUGeneratorImplState` (aten/src/ATen/CPUGeneratorImpl.cpp). */
const StateLayout = {
  initialSeed: 0,
  left: 8,
  seeded: 12,
  next: 16,
  words: 24,
  normalY: 5024,
  normalIsValid: 5040,
  nextFloatNormal: 5048,
  nextFloatNormalIsValid: 5052,
} as const;

function elementCount(shape: readonly number[]): number {
  let count = 1;
  for (const size of shape) {
    if (!Number.isSafeInteger(size) || size < 0) {
      throw new OptionError(
        `Expected a shape of non-negative integers, found [${shape.join(', ')}].`,
        'INVALID_SHAPE',
      );
    }
    count *= size;
  }
  if (!Number.isSafeInteger(count)) {
    throw new OptionError(`Shape [${shape.join(', ')}] has too many elements to draw.`, 'INVALID_SHAPE');
  }
  return count;
}
