/**
 * Runs one nn/ module built from its real builder, with fresh random parameters (named as the
 * checkpoint names them) fed as graph inputs, and hands the same values to a float64 reference as
 * RefTensors. Every declared parameter must be read by the module: a name the builder spells
 * differently fails the run as an unknown input.
 */
import type { Tensor } from '../../src/graph/graph.js';
import { Graph } from '../../src/graph/graph.js';
import { Params } from '../../src/nn/params.js';
import { ParameterInputs } from '../../src/nn/weights.js';
import type { HostTensor } from '../../src/runtime/host-tensor.js';
import { hostTensor } from '../../src/runtime/host-tensor.js';
import { testRuntime } from '../helpers.js';
import { normalArray } from '../random.js';
import type { RefTensor } from '../reference/math.js';
import { refTensor } from '../reference/math.js';

export interface ModuleRun {
  /** The module's output, float32 from ONNX Runtime. */
  output: HostTensor;
  /** Parameters and inputs as the reference reads them (float64 copies of the float32 values fed). */
  ref: (name: string) => RefTensor;
  /** Whether a parameter or input of that name was declared. */
  has: (name: string) => boolean;
}

/** Draws N(0, 1/fan-in)-like values: weights [out, in] scaled by 1/√in, biases and norms as given. */
function randomParameter(name: string, shape: readonly number[], uniform: () => number): Float32Array {
  const count = shape.reduce((a, b) => a * b, 1);
  const values = normalArray(count, uniform);
  if (/norm[^.]*\.weight$/.test(name)) return values.map((v) => 1 + 0.2 * v);
  if (name.endsWith('.bias') || shape.length === 1) return values.map((v) => 0.2 * v);
  const fanIn = shape[shape.length - 1];
  return values.map((v) => v / Math.sqrt(fanIn));
}

/**
 * Build `module` on graph inputs of `inputs` (concrete shapes) and parameters of `parameters`, run it
 * once on fresh values from `uniform` (inputs N(0, 1) unless given in `values`), return the output.
 */
export async function runModule(options: {
  parameters: Readonly<Record<string, readonly number[]>>;
  inputs: Readonly<Record<string, readonly number[]>>;
  /** Fixed values for some inputs (masks). */
  values?: Readonly<Record<string, Float32Array>>;
  uniform: () => number;
  module: (p: Params, inputs: Record<string, Tensor>) => Tensor;
}): Promise<ModuleRun> {
  const graph = new Graph('nn-module');
  const tensors: Record<string, Tensor> = {};
  for (const [name, shape] of Object.entries(options.inputs))
    tensors[name] = graph.input(name, 'float32', shape);
  const params = Params.of(graph, ParameterInputs.fromShapes(options.parameters));
  graph.output('y', options.module(params, tensors));
  const feeds: Record<string, HostTensor> = {};
  for (const [name, shape] of Object.entries(options.inputs)) {
    const fixed = options.values?.[name];
    feeds[name] = hostTensor(
      'float32',
      shape,
      fixed ??
        normalArray(
          shape.reduce((a, b) => a * b, 1),
          options.uniform,
        ),
    );
  }
  for (const [name, shape] of Object.entries(options.parameters)) {
    feeds[name] = hostTensor('float32', shape, randomParameter(name, shape, options.uniform));
  }
  const output = (await (await testRuntime().compile(graph)).run(feeds)).y;
  return {
    output,
    ref: (name) => {
      const t = feeds[name];
      if (!t) throw new Error(`test: no parameter or input named ${name}`);
      return refTensor(t.shape, t.data as Float32Array);
    },
    has: (name) => name in feeds,
  };
}

/** diffusers `Attention` parameter shapes under `prefix`: to_q/to_k/to_v (+ biases), to_out.0. */
export function attentionParameters(
  prefix: string,
  o: { queryDim: number; contextDim?: number; inner: number; bias: boolean; outDim?: number },
): Record<string, number[]> {
  const context = o.contextDim ?? o.queryDim;
  const out = o.outDim ?? o.queryDim;
  const shapes: Record<string, number[]> = {
    [`${prefix}to_q.weight`]: [o.inner, o.queryDim],
    [`${prefix}to_k.weight`]: [o.inner, context],
    [`${prefix}to_v.weight`]: [o.inner, context],
    [`${prefix}to_out.0.weight`]: [out, o.inner],
    [`${prefix}to_out.0.bias`]: [out],
  };
  if (o.bias) for (const n of ['to_q', 'to_k', 'to_v']) shapes[`${prefix}${n}.bias`] = [o.inner];
  return shapes;
}
