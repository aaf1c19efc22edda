import { GraphBuildError, VelodiffError } from '../errors.js';
import type { DType } from './dtype.js';
import { isFloatDType } from './dtype.js';
import type { Node, Tensor, TensorType } from './graph.js';
import type { OnnxAttr } from './onnx/model.js';
import type { Dim, Shape } from './shape.js';

/** What an op's lowering may use to emit ONNX nodes. */
export interface LowerContext {
  /** The ONNX value name of a tensor. */
  name(t: Tensor): string;
  /** A new unique value name. */
  fresh(hint: string): string;
  emit(
    opType: string,
    inputs: string[],
    outputs: string[],
    attrs?: Record<string, OnnxAttr>,
    domain?: string,
  ): void;
  /** A 1-D int64 initializer. */
  int64s(values: readonly (number | bigint)[]): string;
  /** A 1-D float32 initializer. */
  float32s(values: readonly number[]): string;
  /** A scalar initializer of the given dtype. */
  scalar(value: number, dtype: DType): string;
  /** A 1-D int64 value holding `dims`, computed from the inputs' shapes where dims are named. */
  shapeOf(dims: Shape): string;
  /** Reshape `input` (of shape `from`) to `to`, using ONNX's 0 and -1 where that avoids shape arithmetic. */
  reshape(input: string, from: Shape, to: Shape, out?: string): string;
  /**
   * The value name of a 2-D weight when `t` is its transpose and the serializer leaves it to its
   * MatMuls to read the weight transposed in place (FusedMatMul transB); otherwise undefined.
   */
  transposedWeight(t: Tensor): string | undefined;
}

/**
 * The vector-Jacobian product of an op: cotangents of the outputs → cotangents of the inputs, one
 * per input (undefined: none), each of its input's shape and dtype. `grad()` calls it in the scope
 * `grad/<forward scope>`, only for nodes on a path from a parameter to the loss, with undefined for
 * outputs that do not reach the loss (at least one is defined). Inputs whose `needsGrad` is false
 * lead to no parameter: skip them, so frozen parts cost no gradient work.
 */
export type Vjp<A> = (
  node: { inputs: readonly Tensor[]; outputs: readonly Tensor[]; attrs: A; needsGrad: readonly boolean[] },
  outputGrads: readonly (Tensor | undefined)[],
) => (Tensor | undefined)[];

/**
 * One op, one place: its shape/dtype rule, its ONNX lowering and its VJP. `infer` throws plain
 * messages; `apply` prefixes them with the module path and op name.
 */
export interface OpDef<A> {
  readonly name: string;
  infer(inputs: readonly TensorType[], attrs: A): TensorType[];
  lower(ctx: LowerContext, node: Node & { attrs: A }, out: string[]): void;
  /**
   * Absent for ops that have no gradient rule yet: `grad()` reports them when they lie on a path
   * from a parameter to the loss. Ops whose outputs are never float (comparisons, logic) need none:
   * non-float values stop gradients.
   */
  vjp?: Vjp<A>;
}

const registry = new Map<string, OpDef<never>>();

export function defineOp<A>(def: OpDef<A>): OpDef<A> {
  if (registry.has(def.name)) throw new Error(`op "${def.name}" is defined twice`);
  registry.set(def.name, def as unknown as OpDef<never>);
  return def;
}

export function getOp(name: string): OpDef<unknown> {
  const def = registry.get(name);
  if (!def) throw new GraphBuildError(`unknown op "${name}"`);
  return def as unknown as OpDef<unknown>;
}

export function registeredOps(): string[] {
  return [...registry.keys()].sort();
}

/** Build a node of `def`; shape and dtype errors name the module path, the op and the shapes. */
export function apply<A>(def: OpDef<A>, inputs: readonly Tensor[], attrs: A): Tensor[] {
  if (inputs.length === 0) throw new GraphBuildError(`${def.name}: needs at least one input`);
  const graph = inputs[0].graph;
  for (const t of inputs) {
    if (t.graph !== graph) {
      throw new GraphBuildError(`${where(graph.currentScope, def.name)}: inputs belong to different graphs`);
    }
  }
  let types: TensorType[];
  try {
    types = def.infer(inputs, attrs);
  } catch (e) {
    if (e instanceof VelodiffError) {
      throw new GraphBuildError(`${where(graph.currentScope, def.name)}: ${e.message}`, e.code);
    }
    throw e;
  }
  return graph.addNode(def.name, inputs, attrs as Record<string, unknown>, types).outputs as Tensor[];
}

function where(scope: string, op: string): string {
  return scope ? `${scope} (${op})` : op;
}

/** A build-time failure inside `infer`. */
export function fail(message: string, code = 'GRAPH_BUILD'): never {
  throw new GraphBuildError(message, code);
}

/**
 * A float input. `float64: false` for ops whose ONNX Runtime CPU kernel has no double version
 * (measured: Erf, Elu, LeakyRelu, Conv, AveragePool, Resize, InstanceNormalization), so that the
 * graph fails here rather than at session creation.
 */
export function expectFloat(t: TensorType, what: string, options: { float64?: boolean } = {}): void {
  if (!isFloatDType(t.dtype)) fail(`${what}: expected a float tensor, got ${t.dtype}`, 'DTYPE');
  if (t.dtype === 'float64' && options.float64 === false) {
    fail(`${what}: ONNX Runtime has no float64 kernel for this op; cast the input to float32 first`, 'DTYPE');
  }
}

export function expectSameDType(a: TensorType, b: TensorType, what: string): void {
  if (a.dtype !== b.dtype) fail(`${what}: dtypes differ (${a.dtype} vs ${b.dtype}); cast one first`, 'DTYPE');
}

export function expectRank(t: TensorType, rank: number, what: string): void {
  if (t.shape.length !== rank)
    fail(`${what}: expected rank ${rank}, got shape [${t.shape.join(', ')}]`, 'SHAPE');
}

export type { Dim };
