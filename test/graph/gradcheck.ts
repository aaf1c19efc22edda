/**
 * The gradient-check harness: analytic gradients from `grad()` against central finite differences.
 *
 * For a builder (graph, inputs) → output it draws fresh random inputs (seed from testSeed, printed),
 * a random cotangent c (|c| in [0.5, 1]), and compiles ONE session computing loss = Σ output·c and
 * the gradients of the inputs asked for. The finite differences run a second, forward-only session with each checked
 * coordinate moved by ±h, and take Σ output·c in float64 in JavaScript, so the only rounding in a
 * difference is that of the outputs themselves; h is the difference of the moved values as stored,
 * so float32 rounding of x ± h does not bias it.
 *
 * `gradCheckGraph` does the same for a graph that declares its own inputs, as a model's graph
 * builder does (a whole model with `ParameterInputs`); `gradCheck` is it for a builder of
 * (graph, inputs).
 *
 * Every coordinate is checked when an input has at most `coordinates` elements (default 24);
 * otherwise that many coordinates, drawn at random, are checked (each costs two forward runs).
 *
 * Tolerances (|analytic − numeric| ≤ tol · max(1, max|numeric|), through test/compare.ts):
 * - float64 (default, where ORT has double kernels: see src/graph/grad.ts): h = 1e-6, tol = 1e-7.
 *   Truncation error is h²·f'''/6 ≈ 1e-12 and output rounding ≈ 1e-16·Σ|y·c|/h ≈ 1e-10·n.
 * - float32: h = 1e-2, tol = 2e-3. Output rounding is ≈ 6e-8·|y| per element, so over n elements
 *   about 6e-8·√n·|y|/h ≈ 1e-4 for a few hundred elements of size 1, and truncation h²·f'''/6 ≈ 2e-5
 *   for f''' of order 1; 2e-3 leaves a factor of ten for larger third derivatives.
 *
 * Module-level checks name their parameter inputs by checkpoint name and build the module with
 * `paramsOf(graph, inputs)`, which hands those very inputs to the module's Params.
 */
import type { DType, Graph, Tensor } from '../../src/graph/index.js';
import {
  Graph as GraphClass,
  grad,
  isStaticShape,
  mul,
  reshapeUnchecked,
  sum,
} from '../../src/graph/index.js';
import { Params } from '../../src/nn/params.js';
import { ParameterInputs } from '../../src/nn/weights.js';
import type { HostData, HostTensor } from '../../src/runtime/host-tensor.js';
import { hostTensor } from '../../src/runtime/host-tensor.js';
import { assertScaledMaxAbsError } from '../compare.js';
import { testRuntime } from '../helpers.js';
import { seededUniform, testSeed } from '../random.js';

export type FloatDType = 'float32' | 'float64';

export interface GradInputSpec {
  /** The concrete shape fed. */
  shape: readonly number[];
  /** The shape the input is declared with, when it has named dims (default `shape`). */
  dims?: readonly (number | string)[];
  /** Default: the check's dtype. Non-float inputs need `values` and are never differentiated. */
  dtype?: DType;
  /** Uniform range of random values; default [-1, 1]. */
  range?: readonly [number, number];
  /** Values kept at least 1e-3 away from these points (kinks of relu, abs, max, …). */
  awayFrom?: readonly number[];
  /** Fixed values (indices, masks) instead of random ones. */
  values?: HostData | ((random: () => number) => HostData);
  /** Differentiate with respect to this input; default true for float inputs. */
  grad?: boolean;
}

export interface GradCheckOptions {
  /** Names the check in failures and in the printed seed. */
  what: string;
  /** Builds the function under test from inputs named as in `inputs`. */
  build: (graph: Graph, inputs: Record<string, Tensor>) => Tensor;
  inputs: Readonly<Record<string, GradInputSpec>>;
  /** Float dtype of inputs that do not give one; default float64. */
  dtype?: FloatDType;
  /** Relative tolerance (see the file comment for the defaults and why). */
  tolerance?: number;
  /** Finite-difference step. */
  step?: number;
  /** Most coordinates checked per input (default 24); smaller inputs are checked everywhere. */
  coordinates?: number;
}

export interface GradCheckReport {
  seed: number;
  /** Per differentiated input: coordinates checked, and the largest |analytic − numeric|. */
  inputs: Record<string, { checked: number; of: number; maxAbsError: number }>;
}

const DEFAULTS: Readonly<Record<FloatDType, { step: number; tolerance: number }>> = {
  float64: { step: 1e-6, tolerance: 1e-7 },
  float32: { step: 1e-2, tolerance: 2e-3 },
};

/** Check `grad()` of Σ build(inputs)·c against finite differences; throws (naming the input) on a mismatch. */
export async function gradCheck(options: GradCheckOptions): Promise<GradCheckReport> {
  const dtype = options.dtype ?? 'float64';
  return gradCheckGraph({
    ...options,
    build: () => {
      const g = new GraphClass('gradcheck');
      const inputs = Object.fromEntries(
        Object.entries(options.inputs).map(([name, spec]) => [
          name,
          g.input(name, spec.dtype ?? dtype, spec.dims ?? spec.shape),
        ]),
      );
      return options.build(g, inputs);
    },
  });
}

export interface GraphGradCheckOptions extends Omit<GradCheckOptions, 'build'> {
  /**
   * Builds a whole graph, as a model's graph builder does, and returns the output under test. It is
   * called twice (the forward pass for the differences, then with the backward pass); every input
   * of the graph is fed from `inputs`, by name.
   */
  build: () => Tensor;
}

/** `gradCheck` for a graph that declares its own inputs (a model's): the same check and report. */
export async function gradCheckGraph(options: GraphGradCheckOptions): Promise<GradCheckReport> {
  const dtype = options.dtype ?? 'float64';
  const step = options.step ?? DEFAULTS[dtype].step;
  const tolerance = options.tolerance ?? DEFAULTS[dtype].tolerance;
  const seed = testSeed(`gradCheck ${options.what}`);
  const random = seededUniform(seed);

  const specs = Object.entries(options.inputs);
  const feeds: Record<string, HostTensor> = {};
  for (const [name, spec] of specs) feeds[name] = drawInput(spec, spec.dtype ?? dtype, random);
  const differentiated = specs
    .filter(([name, spec]) => spec.grad !== false && isFloat(feeds[name].dtype))
    .map(([name]) => name);
  if (differentiated.length === 0) throw new Error(`gradCheck ${options.what}: no input to differentiate`);

  const inputsOf = (output: Tensor): Record<string, Tensor> => {
    const declared = output.graph.inputs.map((i) => i.name);
    const unfed = declared.filter((name) => !Object.hasOwn(options.inputs, name));
    const unused = specs.map(([name]) => name).filter((name) => !declared.includes(name));
    if (unfed.length > 0 || unused.length > 0) {
      throw new Error(
        `gradCheck ${options.what}: graph inputs without a spec: [${unfed.join(', ')}]; specs of no input: [${unused.join(', ')}]`,
      );
    }
    return Object.fromEntries(output.graph.inputs.map((i) => [i.name, i.tensor]));
  };

  // Forward only: the output itself, for the finite differences.
  const forwardOutput = options.build();
  inputsOf(forwardOutput);
  forwardOutput.graph.output('gradcheck.output', forwardOutput);
  const forward = await testRuntime().compile(forwardOutput.graph);
  const base = (await forward.run(feeds))['gradcheck.output'];
  if (!isFloat(base.dtype)) throw new Error(`gradCheck ${options.what}: the output is ${base.dtype}`);
  // |c| ≥ 0.5: a weight near 0 would shrink that output's part of every gradient and error, and for
  // a scalar output (a loss) all of them.
  const cotangent = hostTensor(
    base.dtype,
    base.shape,
    fill(base.dtype, base.data.length, () => (random() < 0.5 ? -1 : 1) * (0.5 + 0.5 * random())),
  );

  // Forward and backward in one session: loss = Σ output·c, and its gradients.
  const output = options.build();
  const g = output.graph;
  const inputs = inputsOf(output);
  const fed = g.input('gradcheck.cotangent', cotangent.dtype, cotangent.shape);
  // An output with named dims: the cotangent, fed with their values, takes the output's shape
  // (mul would broadcast the named dims against the numbers, and its VJP could not sum them back).
  const c = isStaticShape(output.shape) ? fed : reshapeUnchecked(fed, output.shape);
  const product = mul(output, c);
  const loss =
    product.rank === 0
      ? product
      : sum(
          product,
          product.shape.map((_, i) => i),
        );
  g.output('gradcheck.loss', loss);
  const grads = grad(
    loss,
    differentiated.map((name) => inputs[name]),
  );
  differentiated.forEach((name, i) => g.output(`gradcheck.grad.${name}`, grads[i]));
  const backward = await testRuntime().compile(g);
  const analytic = await backward.run({ ...feeds, 'gradcheck.cotangent': cotangent });

  const objective = async (moved: Record<string, HostTensor>): Promise<number> => {
    const y = (await forward.run(moved))['gradcheck.output'].data as Float32Array | Float64Array;
    let total = 0;
    for (let i = 0; i < y.length; i++) total += y[i] * (cotangent.data as Float32Array | Float64Array)[i];
    return total;
  };

  const report: GradCheckReport = { seed, inputs: {} };
  const most = options.coordinates ?? 24;
  for (const name of differentiated) {
    const x = feeds[name].data as Float32Array | Float64Array;
    const coords = pickCoordinates(x.length, most, random);
    const numeric: number[] = [];
    const exact: number[] = [];
    const gradData = analytic[`gradcheck.grad.${name}`].data as Float32Array | Float64Array;
    for (const k of coords) {
      const moved = x.slice();
      moved[k] = x[k] + step;
      const up = moved[k];
      const plus = await objective({ ...feeds, [name]: { ...feeds[name], data: moved } });
      moved[k] = x[k] - step;
      const down = moved[k];
      const minus = await objective({ ...feeds, [name]: { ...feeds[name], data: moved } });
      numeric.push((plus - minus) / (up - down));
      exact.push(gradData[k]);
    }
    const { maxAbsError } = assertScaledMaxAbsError(
      exact,
      numeric,
      tolerance,
      `${options.what}: d/d${name} (${dtype}, seed ${seed}, coordinates ${coords.slice(0, 8).join(',')}${coords.length > 8 ? ',…' : ''})`,
    );
    report.inputs[name] = { checked: coords.length, of: x.length, maxAbsError };
  }
  return report;
}

/**
 * Params whose tensors are the graph's inputs of the same names (declared by `gradCheck` from its
 * `inputs`), so that a module built from them is differentiated with respect to its parameters.
 */
export function paramsOf(
  graph: Graph,
  inputs: Readonly<Record<string, Tensor>>,
  options: { dtype?: DType; prefix?: string } = {},
): Params {
  const shapes: Record<string, number[]> = {};
  for (const [name, t] of Object.entries(inputs)) {
    if (t.shape.every((d): d is number => typeof d === 'number')) shapes[name] = [...t.shape];
  }
  const dtype = options.dtype ?? Object.values(inputs).find((t) => isFloat(t.dtype))?.dtype ?? 'float64';
  return Params.of(graph, ParameterInputs.fromShapes(shapes), { dtype, prefix: options.prefix });
}

function isFloat(dtype: DType): dtype is FloatDType {
  return dtype === 'float32' || dtype === 'float64';
}

function fill(dtype: FloatDType, count: number, value: () => number): Float32Array | Float64Array {
  return dtype === 'float64'
    ? Float64Array.from({ length: count }, value)
    : Float32Array.from({ length: count }, value);
}

function drawInput(spec: GradInputSpec, dtype: DType, random: () => number): HostTensor {
  if (spec.values !== undefined) {
    const data = typeof spec.values === 'function' ? spec.values(random) : spec.values;
    return hostTensor(dtype, spec.shape, data);
  }
  if (!isFloat(dtype)) throw new Error(`gradCheck: a ${dtype} input needs values`);
  const [lo, hi] = spec.range ?? [-1, 1];
  const away = spec.awayFrom ?? [];
  const draw = (): number => {
    for (;;) {
      const v = lo + (hi - lo) * random();
      if (away.every((p) => Math.abs(v - p) > 1e-3)) return v;
    }
  };
  return hostTensor(
    dtype,
    spec.shape,
    fill(
      dtype,
      spec.shape.reduce((a, b) => a * b, 1),
      draw,
    ),
  );
}

/** All of 0..n-1 when n ≤ most, else `most` distinct ones at random. */
function pickCoordinates(n: number, most: number, random: () => number): number[] {
  const all = Array.from({ length: n }, (_, i) => i);
  if (n <= most) return all;
  for (let i = 0; i < most; i++) {
    const j = i + Math.floor(random() * (n - i));
    [all[i], all[j]] = [all[j], all[i]];
  }
  return all.slice(0, most).sort((a, b) => a - b);
}
