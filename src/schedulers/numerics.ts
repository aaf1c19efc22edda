/**
 * The numpy and torch (CPU) semantics the schedulers depend on for parity with diffusers: which
 * values are float32 and which float64, numpy's `linspace`, `arange`, `interp` and round-half-to-even,
 * and torch's float32 `linspace` and `cumprod`. `f32` rounds one operation's result to float32, which
 * is what a torch float32 tensor op (or a numpy float32 array op) computes for + − × ÷ and sqrt.
 */
import { fusedMulAdd } from '../random/avx-mathfun.js';

export const f32 = Math.fround;

export { roundHalfEven, torchExpFloat32 } from '../random/torch-exp.js';

/** `np.linspace(start, stop, num)` in float64: `start + i·step`, the last value set to `stop`. */
export function linspace(start: number, stop: number, num: number, endpoint = true): Float64Array {
  const out = new Float64Array(num);
  const div = endpoint ? num - 1 : num;
  const delta = stop - start;
  const step = delta / div;
  for (let i = 0; i < num; i++) {
    // numpy divides then multiplies when the step underflows to 0, and multiplies by delta when div is 0.
    out[i] = (div > 0 ? (step === 0 ? (i / div) * delta : i * step) : i * delta) + start;
  }
  if (endpoint && num > 1) out[num - 1] = stop;
  return out;
}

/** `np.arange(start, stop, step)` for floats: `ceil((stop − start) / step)` values `start + i·δ`, δ = (start + step) − start. */
export function arange(start: number, stop: number, step: number): Float64Array {
  const length = Math.max(0, Math.ceil((stop - start) / step));
  const out = new Float64Array(length);
  const delta = start + step - start;
  for (let i = 0; i < length; i++) out[i] = i === 0 ? start : i === 1 ? start + step : start + i * delta;
  return out;
}

/**
 * `np.interp(x, arange(len(fp)), fp)` in float64: linear interpolation between integer knots,
 * clamped to the end values, exact at the knots.
 */
export function interpAtIntegers(x: number, fp: ArrayLike<number>): number {
  const last = fp.length - 1;
  if (Number.isNaN(x)) return NaN;
  if (x <= 0) return fp[0];
  if (x >= last) return fp[last];
  const j = Math.floor(x);
  if (j === x) return fp[j];
  const slope = fp[j + 1] - fp[j];
  return slope * (x - j) + fp[j];
}

/**
 * `torch.linspace(start, end, steps, dtype=torch.float32)` on CPU, bit for bit. The kernel counts from
 * `start` for the first half and back from `end` for the second, in float32; its AVX2 build computes
 * each 8-wide block's base with a fused multiply-add and the block as `base + k·step`, and the tail
 * after the last 16 (two unrolled blocks) with the scalar formula.
 */
export function torchLinspaceFloat32(start: number, end: number, steps: number): Float32Array {
  const out = new Float32Array(steps);
  if (steps === 1) {
    out[0] = f32(start);
    return out;
  }
  const first = f32(start);
  const last = f32(end);
  const step = f32(f32(last - first) / (steps - 1));
  const halfway = Math.floor(steps / 2);
  const at = (index: number): number =>
    index < halfway ? fusedMulAdd(step, index, first) : fusedMulAdd(-step, steps - index - 1, last);
  const vectorWidth = 8;
  const vectorized = steps - (steps % (2 * vectorWidth));
  for (let base = 0; base < vectorized; base += vectorWidth) {
    const value = at(base);
    for (let k = 0; k < vectorWidth; k++) out[base + k] = f32(value + f32(k * step));
  }
  for (let index = vectorized; index < steps; index++) out[index] = at(index);
  return out;
}

/** `torch.cumprod` of a float32 tensor on CPU: accumulated in float64, each prefix stored as float32. */
export function cumprodFloat32(values: Float32Array): Float32Array {
  const out = new Float32Array(values.length);
  let product = 1;
  for (let i = 0; i < values.length; i++) {
    product *= values[i];
    out[i] = product;
  }
  return out;
}

/** Index of the first occurrence of `value` in a sorted-ascending array (`torch.searchsorted`, left). */
export function searchSortedLeft(sorted: ArrayLike<number>, value: number): number {
  let low = 0;
  let high = sorted.length;
  while (low < high) {
    const mid = (low + high) >>> 1;
    if (sorted[mid] < value) low = mid + 1;
    else high = mid;
  }
  return low;
}
