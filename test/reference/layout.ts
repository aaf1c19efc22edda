/**
 * Float64 references for data-movement ops, written as plain index loops over row-major arrays
 * (numpy semantics), sharing no code with src/graph.
 */
import assert from 'node:assert/strict';
import type { HostTensor } from '../../src/runtime/host-tensor.js';
import { assertClose } from '../compare.js';

/** A row-major float64 array: the reference side of every comparison. */
export interface RefArray {
  readonly shape: readonly number[];
  readonly data: Float64Array;
}

export function sizeOf(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

export function refArray(shape: readonly number[], data?: ArrayLike<number>): RefArray {
  const values = data === undefined ? new Float64Array(sizeOf(shape)) : Float64Array.from(data);
  assert.equal(values.length, sizeOf(shape), `reference array of shape [${shape.join(', ')}]`);
  return { shape: [...shape], data: values };
}

/** A float32 host tensor read as float64 (exact). */
export function fromHost(t: HostTensor): RefArray {
  assert.ok(t.data instanceof Float32Array, `expected float32 data, got ${t.dtype}`);
  return refArray(t.shape, t.data);
}

export function stridesOf(shape: readonly number[]): number[] {
  const strides = new Array<number>(shape.length);
  let s = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    strides[i] = s;
    s *= shape[i];
  }
  return strides;
}

/** The multi-index of flat position `flat` in `shape`. */
export function unravel(flat: number, shape: readonly number[]): number[] {
  const index = new Array<number>(shape.length);
  let rest = flat;
  for (let i = shape.length - 1; i >= 0; i--) {
    index[i] = rest % shape[i];
    rest = Math.floor(rest / shape[i]);
  }
  return index;
}

export function offsetOf(index: readonly number[], shape: readonly number[]): number {
  const strides = stridesOf(shape);
  let o = 0;
  for (let i = 0; i < index.length; i++) o += index[i] * strides[i];
  return o;
}

/** An output of `shape` whose element at each multi-index is `valueAt(index)`. */
export function generate(shape: readonly number[], valueAt: (index: number[]) => number): RefArray {
  const out = refArray(shape);
  for (let i = 0; i < out.data.length; i++) out.data[i] = valueAt(unravel(i, shape));
  return out;
}

export function at(a: RefArray, index: readonly number[]): number {
  return a.data[offsetOf(index, a.shape)];
}

/** Output shape and values match the reference (exactly by default: data movement does no arithmetic). */
export function assertMatchesRef(
  actual: HostTensor,
  expected: RefArray,
  what: string,
  tolerance: { atol?: number; rtol?: number } = { atol: 0, rtol: 0 },
): void {
  assert.deepEqual([...actual.shape], [...expected.shape], `${what}: shape`);
  // An empty output (a slice that selects nothing) is checked by its shape: it has no values.
  if (expected.data.length === 0) {
    assert.equal(actual.data.length, 0, `${what}: values of an empty output`);
    return;
  }
  assertClose(actual.data as Float32Array, expected.data, { ...tolerance, what });
}

// ---------------------------------------------------------------- ops

/** The same row-major values under another shape. */
export function reshapeRef(a: RefArray, shape: readonly number[]): RefArray {
  return refArray(shape, a.data);
}

export function transposeRef(a: RefArray, perm: readonly number[]): RefArray {
  const shape = perm.map((p) => a.shape[p]);
  return generate(shape, (out) => {
    const src = new Array<number>(a.shape.length);
    perm.forEach((p, i) => (src[p] = out[i]));
    return at(a, src);
  });
}

export function concatRef(arrays: readonly RefArray[], axis: number): RefArray {
  const shape = [...arrays[0].shape];
  shape[axis] = arrays.reduce((n, a) => n + a.shape[axis], 0);
  return generate(shape, (out) => {
    let i = out[axis];
    for (const a of arrays) {
      if (i < a.shape[axis]) {
        const src = [...out];
        src[axis] = i;
        return at(a, src);
      }
      i -= a.shape[axis];
    }
    throw new Error('unreachable');
  });
}

export function sliceAxisRef(a: RefArray, axis: number, indices: readonly number[]): RefArray {
  const shape = [...a.shape];
  shape[axis] = indices.length;
  return generate(shape, (out) => {
    const src = [...out];
    src[axis] = indices[out[axis]];
    return at(a, src);
  });
}

export function splitRef(a: RefArray, sizes: readonly number[], axis: number): RefArray[] {
  let start = 0;
  return sizes.map((n) => {
    const indices = Array.from({ length: n }, (_, i) => start + i);
    start += n;
    return sliceAxisRef(a, axis, indices);
  });
}

/** The indices Python's `range(*slice(start, stop, step).indices(length))` visits. */
export function pythonSliceIndices(
  length: number,
  start: number | undefined,
  stop: number | undefined,
  step = 1,
): number[] {
  const lower = step < 0 ? -1 : 0;
  const upper = step < 0 ? length - 1 : length;
  const bound = (v: number | undefined, fallback: number): number => {
    if (v === undefined) return fallback;
    if (v < 0) return Math.max(v + length, lower);
    return Math.min(v, upper);
  };
  const first = bound(start, step < 0 ? upper : lower);
  const last = bound(stop, step < 0 ? lower : upper);
  const out: number[] = [];
  for (let i = first; step > 0 ? i < last : i > last; i += step) out.push(i);
  return out;
}

export interface RefSlice {
  axis: number;
  start?: number;
  end?: number;
  step?: number;
}

export function sliceRef(a: RefArray, specs: readonly RefSlice[]): RefArray {
  let out = a;
  for (const s of specs) {
    const axis = s.axis < 0 ? s.axis + a.shape.length : s.axis;
    out = sliceAxisRef(out, axis, pythonSliceIndices(a.shape[axis], s.start, s.end, s.step));
  }
  return out;
}

/** numpy `take(a, indices, axis)`, with negative indices counting from the end. */
export function gatherRef(
  a: RefArray,
  indices: readonly number[],
  indicesShape: readonly number[],
  axis: number,
): RefArray {
  const shape = [...a.shape.slice(0, axis), ...indicesShape, ...a.shape.slice(axis + 1)];
  const r = indicesShape.length;
  return generate(shape, (out) => {
    const raw = indices[offsetOf(out.slice(axis, axis + r), indicesShape)];
    const i = raw < 0 ? raw + a.shape[axis] : raw;
    return at(a, [...out.slice(0, axis), i, ...out.slice(axis + r)]);
  });
}

/** numpy `broadcast_to` with two-way broadcasting of unit dims. */
export function expandRef(a: RefArray, shape: readonly number[]): RefArray {
  const rank = Math.max(a.shape.length, shape.length);
  const aDims = [...new Array<number>(rank - a.shape.length).fill(1), ...a.shape];
  const tDims = [...new Array<number>(rank - shape.length).fill(1), ...shape];
  const outShape = aDims.map((d, i) => (d === 1 ? tDims[i] : d));
  return generate(outShape, (out) =>
    at(
      a,
      out.slice(rank - a.shape.length).map((v, i) => (a.shape[i] === 1 ? 0 : v)),
    ),
  );
}

/** numpy `pad` for modes constant / reflect / edge; negative widths crop. */
export function padRef(
  a: RefArray,
  pads: readonly (readonly [number, number])[],
  mode: 'constant' | 'reflect' | 'edge',
  value = 0,
): RefArray {
  const shape = a.shape.map((d, i) => d + pads[i][0] + pads[i][1]);
  return generate(shape, (out) => {
    const src: number[] = [];
    for (let i = 0; i < out.length; i++) {
      const n = a.shape[i];
      let j = out[i] - pads[i][0];
      if (j < 0 || j >= n) {
        if (mode === 'constant') return value;
        if (mode === 'edge') j = j < 0 ? 0 : n - 1;
        else j = j < 0 ? -j : 2 * (n - 1) - j; // reflect about the edge element, not repeating it
      }
      src.push(j);
    }
    return at(a, src);
  });
}
