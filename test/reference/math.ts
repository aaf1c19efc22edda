/**
 * Float64 reference implementations of the graph's math ops, written as plain loops over row-major
 * arrays. They share no code with src/: a test compares what ONNX Runtime computes for a graph with
 * what these loops compute from the same float32 inputs.
 */

/** A row-major float64 tensor. */
export interface RefTensor {
  readonly shape: readonly number[];
  readonly data: Float64Array;
}

export function refTensor(shape: readonly number[], values: ArrayLike<number>): RefTensor {
  if (values.length !== sizeOf(shape)) {
    throw new Error(
      `reference: shape [${shape.join(', ')}] needs ${sizeOf(shape)} values, got ${values.length}`,
    );
  }
  return { shape: [...shape], data: Float64Array.from(values) };
}

export function sizeOf(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/** Multi-index of the element at `flat` in a row-major tensor of `shape`. */
export function unravel(flat: number, shape: readonly number[]): number[] {
  const index = new Array<number>(shape.length).fill(0);
  let rest = flat;
  for (let axis = shape.length - 1; axis >= 0; axis--) {
    index[axis] = rest % shape[axis];
    rest = Math.floor(rest / shape[axis]);
  }
  return index;
}

export function ravel(index: readonly number[], shape: readonly number[]): number {
  let flat = 0;
  for (let axis = 0; axis < shape.length; axis++) flat = flat * shape[axis] + index[axis];
  return flat;
}

const normalize = (axis: number, rank: number): number => (axis < 0 ? axis + rank : axis);

// ---------------------------------------------------------------------------------------------
// Broadcasting and elementwise maps.

/** Numpy broadcasting of shapes (trailing dims aligned; a dim of 1 stretches); throws when they clash. */
export function broadcastShape(...shapes: (readonly number[])[]): number[] {
  const rank = Math.max(...shapes.map((s) => s.length));
  const out: number[] = [];
  for (let axis = 0; axis < rank; axis++) {
    let dim = 1;
    for (const shape of shapes) {
      const d = shape[axis - (rank - shape.length)] ?? 1;
      if (d === 1 || d === dim) continue;
      if (dim !== 1)
        throw new Error(`reference: shapes ${shapes.map((s) => `[${s.join(', ')}]`).join(' ')} clash`);
      dim = d;
    }
    out.push(dim);
  }
  return out;
}

/** Flat index, in a tensor of `shape`, of the element that output multi-index `outIndex` reads. */
export function broadcastSource(outIndex: readonly number[], shape: readonly number[]): number {
  const lead = outIndex.length - shape.length;
  return ravel(
    shape.map((d, axis) => (d === 1 ? 0 : outIndex[lead + axis])),
    shape,
  );
}

export function mapUnary(x: RefTensor, f: (v: number) => number): RefTensor {
  return { shape: [...x.shape], data: x.data.map(f) };
}

export function mapBinary(a: RefTensor, b: RefTensor, f: (x: number, y: number) => number): RefTensor {
  const shape = broadcastShape(a.shape, b.shape);
  const data = new Float64Array(sizeOf(shape));
  for (let i = 0; i < data.length; i++) {
    const index = unravel(i, shape);
    data[i] = f(a.data[broadcastSource(index, a.shape)], b.data[broadcastSource(index, b.shape)]);
  }
  return { shape, data };
}

/** `a` where `condition` is non-zero, else `b`, all three broadcast together. */
export function select(condition: RefTensor, a: RefTensor, b: RefTensor): RefTensor {
  const shape = broadcastShape(condition.shape, a.shape, b.shape);
  const data = new Float64Array(sizeOf(shape));
  for (let i = 0; i < data.length; i++) {
    const index = unravel(i, shape);
    const pick = condition.data[broadcastSource(index, condition.shape)] !== 0 ? a : b;
    data[i] = pick.data[broadcastSource(index, pick.shape)];
  }
  return { shape, data };
}

// ---------------------------------------------------------------------------------------------
// Scalar functions.

/**
 * The error function, erf(x) = 2/√π · e^(−x²) · Σₙ 2ⁿ x^(2n+1) / (1·3·…·(2n+1)) (Abramowitz & Stegun
 * 7.1.6): every term is positive, so the sum keeps full double precision for any x.
 */
export function erf(x: number): number {
  if (Number.isNaN(x) || x === 0) return x;
  const ax = Math.abs(x);
  if (ax > 6) return Math.sign(x); // 1 − erf(6) ≈ 2e-17, below double resolution at 1
  let term = ax;
  let series = ax;
  for (let n = 1; n < 400 && term > series * 1e-18; n++) {
    term *= (2 * ax * ax) / (2 * n + 1);
    series += term;
  }
  return Math.sign(x) * (2 / Math.sqrt(Math.PI)) * Math.exp(-ax * ax) * series;
}

export const sigmoid = (x: number): number => 1 / (1 + Math.exp(-x));

/** torch.nn.functional.gelu(x): x·Φ(x) with Φ the standard normal CDF. */
export const geluExact = (x: number): number => 0.5 * x * (1 + erf(x / Math.SQRT2));

/** torch.nn.functional.gelu(x, approximate='tanh'). */
export const geluTanh = (x: number): number =>
  0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x * x * x)));

export const silu = (x: number): number => x * sigmoid(x);

// ---------------------------------------------------------------------------------------------
// Matrix products.

/**
 * numpy.matmul: the last two axes multiply, leading axes broadcast; a 1-D left operand is a row
 * [1, k] and a 1-D right operand a column [k, 1], and that unit axis is dropped from the result.
 */
export function matmul(a: RefTensor, b: RefTensor): RefTensor {
  const aShape = a.shape.length === 1 ? [1, a.shape[0]] : [...a.shape];
  const bShape = b.shape.length === 1 ? [b.shape[0], 1] : [...b.shape];
  const [rows, inner] = aShape.slice(-2);
  const [inner2, cols] = bShape.slice(-2);
  if (inner !== inner2) throw new Error(`reference matmul: inner dims ${inner} and ${inner2} differ`);
  const aBatch = aShape.slice(0, -2);
  const bBatch = bShape.slice(0, -2);
  const batch = broadcastShape(aBatch, bBatch);
  const data = new Float64Array(sizeOf(batch) * rows * cols);
  for (let bi = 0; bi < sizeOf(batch); bi++) {
    const index = unravel(bi, batch);
    const aBase = broadcastSource(index, aBatch) * rows * inner;
    const bBase = broadcastSource(index, bBatch) * inner * cols;
    for (let r = 0; r < rows; r++) {
      for (let c = 0; c < cols; c++) {
        let acc = 0;
        for (let k = 0; k < inner; k++) acc += a.data[aBase + r * inner + k] * b.data[bBase + k * cols + c];
        data[(bi * rows + r) * cols + c] = acc;
      }
    }
  }
  const shape = [...batch];
  if (a.shape.length > 1) shape.push(rows);
  if (b.shape.length > 1) shape.push(cols);
  return { shape, data };
}

/** torch.nn.Linear: y[..., o] = Σᵢ x[..., i]·weight[o, i] + bias[o]. */
export function linear(x: RefTensor, weight: RefTensor, bias?: RefTensor): RefTensor {
  const [outFeatures, inFeatures] = weight.shape;
  const rows = sizeOf(x.shape) / inFeatures;
  const data = new Float64Array(rows * outFeatures);
  for (let r = 0; r < rows; r++) {
    for (let o = 0; o < outFeatures; o++) {
      let acc = bias ? bias.data[o] : 0;
      for (let i = 0; i < inFeatures; i++)
        acc += x.data[r * inFeatures + i] * weight.data[o * inFeatures + i];
      data[r * outFeatures + o] = acc;
    }
  }
  return { shape: [...x.shape.slice(0, -1), outFeatures], data };
}

// ---------------------------------------------------------------------------------------------
// Reductions and scans.

export type ReduceKind = 'sum' | 'mean' | 'max';

export function reduce(
  x: RefTensor,
  kind: ReduceKind,
  axes: readonly number[],
  keepDims: boolean,
): RefTensor {
  const rank = x.shape.length;
  const reduced = axes.map((a) => normalize(a, rank));
  const keptShape = x.shape.map((d, axis) => (reduced.includes(axis) ? 1 : d));
  const acc = new Float64Array(sizeOf(keptShape)).fill(kind === 'max' ? -Infinity : 0);
  for (let i = 0; i < x.data.length; i++) {
    const index = unravel(i, x.shape).map((v, axis) => (reduced.includes(axis) ? 0 : v));
    const o = ravel(index, keptShape);
    acc[o] = kind === 'max' ? Math.max(acc[o], x.data[i]) : acc[o] + x.data[i];
  }
  if (kind === 'mean') {
    const count = sizeOf(x.shape) / sizeOf(keptShape);
    for (let o = 0; o < acc.length; o++) acc[o] /= count;
  }
  const shape = keepDims ? keptShape : x.shape.filter((_, axis) => !reduced.includes(axis));
  return { shape, data: acc };
}

/** Flat indices of each 1-D line of `shape` along `axis`, in axis order. */
function linesAlong(shape: readonly number[], axis: number): number[][] {
  const length = shape[axis];
  const inner = sizeOf(shape.slice(axis + 1));
  const outer = sizeOf(shape.slice(0, axis));
  const lines: number[][] = [];
  for (let o = 0; o < outer; o++) {
    for (let i = 0; i < inner; i++) {
      lines.push(Array.from({ length }, (_, j) => (o * length + j) * inner + i));
    }
  }
  return lines;
}

/** Running sum along `axis`; `exclusive` leaves out the current element, `reverse` sums from the end. */
export function cumsum(x: RefTensor, axis: number, exclusive = false, reverse = false): RefTensor {
  const data = new Float64Array(x.data.length);
  for (const line of linesAlong(x.shape, normalize(axis, x.shape.length))) {
    if (reverse) line.reverse();
    let running = 0;
    for (const i of line) {
      if (exclusive) {
        data[i] = running;
        running += x.data[i];
      } else {
        running += x.data[i];
        data[i] = running;
      }
    }
  }
  return { shape: [...x.shape], data };
}

export function softmax(x: RefTensor, axis: number): RefTensor {
  const data = new Float64Array(x.data.length);
  for (const line of linesAlong(x.shape, normalize(axis, x.shape.length))) {
    const peak = Math.max(...line.map((i) => x.data[i]));
    let total = 0;
    for (const i of line) total += Math.exp(x.data[i] - peak);
    for (const i of line) data[i] = Math.exp(x.data[i] - peak) / total;
  }
  return { shape: [...x.shape], data };
}

// ---------------------------------------------------------------------------------------------
// Normalizations (biased variance, eps inside the square root, as torch).

/**
 * torch.nn.functional.layer_norm over the trailing axes from `axis` on; `weight` and `bias` have
 * the normalized shape.
 */
export function layerNorm(
  x: RefTensor,
  axis: number,
  weight: RefTensor | undefined,
  bias: RefTensor | undefined,
  eps: number,
): RefTensor {
  const groupSize = sizeOf(x.shape.slice(normalize(axis, x.shape.length)));
  return normalizeGroups(x, groupSize, eps, (j) => ({
    scale: weight ? weight.data[j] : 1,
    shift: bias ? bias.data[j] : 0,
  }));
}

/** torch.nn.functional.group_norm on [N, C, ...]: channels split into `groups` consecutive groups. */
export function groupNorm(
  x: RefTensor,
  groups: number,
  weight: RefTensor,
  bias: RefTensor,
  eps: number,
): RefTensor {
  const channels = x.shape[1];
  const spatial = sizeOf(x.shape.slice(2));
  const groupSize = (channels / groups) * spatial;
  return normalizeGroups(x, groupSize, eps, (j, group) => {
    const channel = (group % groups) * (channels / groups) + Math.floor(j / spatial);
    return { scale: weight.data[channel], shift: bias.data[channel] };
  });
}

/** Standardize each run of `groupSize` consecutive elements, then apply its element's affine. */
function normalizeGroups(
  x: RefTensor,
  groupSize: number,
  eps: number,
  affine: (offsetInGroup: number, group: number) => { scale: number; shift: number },
): RefTensor {
  const data = new Float64Array(x.data.length);
  for (let group = 0; group * groupSize < x.data.length; group++) {
    const start = group * groupSize;
    let total = 0;
    for (let j = 0; j < groupSize; j++) total += x.data[start + j];
    const mu = total / groupSize;
    let squares = 0;
    for (let j = 0; j < groupSize; j++) squares += (x.data[start + j] - mu) ** 2;
    const invStd = 1 / Math.sqrt(squares / groupSize + eps);
    for (let j = 0; j < groupSize; j++) {
      const { scale, shift } = affine(j, group);
      data[start + j] = (x.data[start + j] - mu) * invStd * scale + shift;
    }
  }
  return { shape: [...x.shape], data };
}

/** RMS norm over the last axis: x / √(mean(x²) + eps) · weight. */
export function rmsNorm(x: RefTensor, weight: RefTensor | undefined, eps: number): RefTensor {
  const width = x.shape[x.shape.length - 1];
  const data = new Float64Array(x.data.length);
  for (let start = 0; start < x.data.length; start += width) {
    let squares = 0;
    for (let j = 0; j < width; j++) squares += x.data[start + j] ** 2;
    const invRms = 1 / Math.sqrt(squares / width + eps);
    for (let j = 0; j < width; j++)
      data[start + j] = x.data[start + j] * invRms * (weight ? weight.data[j] : 1);
  }
  return { shape: [...x.shape], data };
}
