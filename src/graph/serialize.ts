import { GraphBuildError } from '../errors.js';
import type { DType } from './dtype.js';
import { ONNX_DTYPE_CODE } from './dtype.js';
import type { ConstantValues, Graph, Leaf, StoredDType, Tensor } from './graph.js';
import type { LowerContext } from './op.js';
import { getOp } from './op.js';
import type { OnnxAttr, OnnxNode, OnnxTensor, OnnxValueInfo } from './onnx/model.js';
import { attr, encodeModel } from './onnx/model.js';
import type { Shape } from './shape.js';
import { dimEquals, dimTerms, isStaticShape } from './shape.js';

/** The ai.onnx opset every graph is written against (ORT 1.30 supports up to 26; see notes §3). */
export const OPSET = 21;
const IR_VERSION = 10;

export const STORED_DTYPE_CODE: Readonly<Record<StoredDType, number>> = {
  ...ONNX_DTYPE_CODE,
  int8: 3,
  uint8: 2,
  int16: 5,
};

export interface SerializedValue {
  name: string;
  dtype: DType;
  shape: Shape;
}

export interface SerializedGraph {
  /** ONNX ModelProto bytes. */
  model: Uint8Array;
  /** Files the model's external initializers point into: location (relative) and the file's path. */
  externalFiles: { location: string; path: string }[];
  /** The folder locations are relative to, when the locator gave one. */
  externalRoot?: string;
  inputs: SerializedValue[];
  outputs: SerializedValue[];
  /** Named dims and where their run-time value comes from. */
  symbols: Record<string, { input: string; axis: number }>;
}

export interface SerializeOptions {
  /**
   * The external-data location of a weights file. Default: a unique file name per path (the files
   * are then expected side by side, e.g. as onnxruntime-web `externalData` entries).
   */
  locate?: (path: string) => string;
  /** The folder `locate`'s locations are relative to, recorded in the result. */
  externalRoot?: string;
}

/** Lower a graph to ONNX: reachable nodes only, weights as initializers (external where on disk). */
export function serialize(graph: Graph, options: SerializeOptions = {}): SerializedGraph {
  if (graph.outputs.size === 0) throw new GraphBuildError(`graph "${graph.name}" has no outputs`);
  // ONNX names every value once: an output may pass its same-named input through, nothing else.
  for (const { name, tensor } of graph.inputs) {
    const out = graph.outputs.get(name);
    if (out && out !== tensor) {
      throw new GraphBuildError(
        `graph "${graph.name}": output "${name}" (${out.toString()}) has the name of an input (${tensor.toString()}); rename one of them`,
        'NAME',
      );
    }
  }
  const lowering = new Lowering(graph, options.locate);
  return { ...lowering.run(), ...(options.externalRoot ? { externalRoot: options.externalRoot } : {}) };
}

class Lowering implements LowerContext {
  private readonly nodes: OnnxNode[] = [];
  private readonly initializers: OnnxTensor[] = [];
  private readonly names = new Map<number, string>();
  private readonly used = new Set<string>();
  private readonly memo = new Map<string, string>();
  private readonly files = new Map<string, string>();
  /** Transposed weights (by the transpose's output id) that their MatMuls read in place. */
  private inPlace = new Map<number, Tensor>();
  private counter = 0;
  private currentNodeName = '';

  constructor(
    private readonly graph: Graph,
    private readonly locate: ((path: string) => string) | undefined,
  ) {}

  run(): SerializedGraph {
    const live = this.liveNodes();
    this.inPlace = weightTransposesReadInPlace(this.graph, live);
    const symbols = inputSymbols(this.graph);
    const outputNames = new Map<number, string>();
    const outputs: OnnxValueInfo[] = [];
    const serializedOutputs: SerializedValue[] = [];
    for (const [name, t] of this.graph.outputs) {
      this.used.add(name);
      if (t.producer && !outputNames.has(t.id)) outputNames.set(t.id, name);
    }
    for (const name of this.graph.inputs.map((i) => i.name)) this.used.add(name);
    // Node outputs that are graph outputs take the output's name, so no copy is needed.
    for (const [id, name] of outputNames) this.names.set(id, name);

    for (const node of this.graph.nodes) {
      if (!live.has(node.id)) continue;
      if (node.op === 'transpose' && this.inPlace.has(node.outputs[0].id)) continue;
      const def = getOp(node.op);
      const out = node.outputs.map((t) => this.nameOfNodeOutput(t));
      this.currentNodeName = `${node.scope ? node.scope + '/' : ''}${node.op}_${node.id}`;
      def.lower(this, node, out);
    }
    for (const [name, t] of this.graph.outputs) {
      const have = this.name(t);
      if (have !== name) this.emit('Identity', [have], [name]);
      outputs.push(valueInfo(name, t.dtype, t.shape, symbols));
      serializedOutputs.push({ name, dtype: t.dtype, shape: t.shape });
    }
    const inputs = this.graph.inputs.map(({ name, tensor }) =>
      valueInfo(name, tensor.dtype, tensor.shape, symbols),
    );
    const model = encodeModel({
      irVersion: IR_VERSION,
      opsets: [
        { domain: '', version: OPSET },
        { domain: 'com.microsoft', version: 1 },
      ],
      producerName: 'velodiff',
      producerVersion: '0.1.0',
      graph: { name: this.graph.name, nodes: this.nodes, initializers: this.initializers, inputs, outputs },
    });
    return {
      model,
      externalFiles: [...this.files].map(([path, location]) => ({ location, path })),
      inputs: this.graph.inputs.map(({ name, tensor }) => ({
        name,
        dtype: tensor.dtype,
        shape: tensor.shape,
      })),
      outputs: serializedOutputs,
      symbols,
    };
  }

  /** Nodes some output depends on. */
  private liveNodes(): Set<number> {
    const live = new Set<number>();
    const stack = [...this.graph.outputs.values()];
    const seen = new Set<number>();
    while (stack.length > 0) {
      const t = stack.pop() as Tensor;
      if (seen.has(t.id)) continue;
      seen.add(t.id);
      const p = t.producer;
      if (p && !live.has(p.id)) {
        live.add(p.id);
        stack.push(...p.inputs);
      }
    }
    return live;
  }

  transposedWeight(t: Tensor): string | undefined {
    const weight = this.inPlace.get(t.id);
    return weight && this.name(weight);
  }

  private nameOfNodeOutput(t: Tensor): string {
    let n = this.names.get(t.id);
    if (!n) {
      n = this.fresh('t');
      this.names.set(t.id, n);
    }
    return n;
  }

  name(t: Tensor): string {
    const have = this.names.get(t.id);
    if (have) return have;
    const leaf = this.graph.leaves.get(t.id);
    if (!leaf) throw new GraphBuildError(`internal: tensor ${t.id} is used before it is computed`);
    const n = this.lowerLeaf(leaf);
    this.names.set(t.id, n);
    return n;
  }

  private lowerLeaf(leaf: Leaf): string {
    if (leaf.kind === 'input') return leaf.name;
    if (leaf.kind === 'constant') {
      const n = this.fresh('const');
      this.initializers.push({
        name: n,
        dataType: ONNX_DTYPE_CODE[leaf.tensor.dtype],
        dims: leaf.tensor.shape as number[],
        raw: constantBytes(leaf.values),
      });
      return n;
    }
    const { tensor, source, name } = leaf;
    const stored = this.uniqueName(name);
    const init: OnnxTensor = {
      name: stored,
      dataType: STORED_DTYPE_CODE[source.storedDType],
      dims: tensor.shape as number[],
    };
    if (source.kind === 'file') {
      init.external = {
        location: this.location(source.path),
        offset: source.offset,
        length: source.byteLength,
      };
    } else {
      init.raw = constantBytes(source.data);
    }
    this.initializers.push(init);
    if (source.storedDType === tensor.dtype) return stored;
    // Stored in another type (bf16/fp16/f64 checkpoints): cast in the graph; ORT folds this cast
    // into an fp32 initializer when the session is created (notes §9).
    const cast = this.fresh(`${name}.cast`);
    this.emit('Cast', [stored], [cast], { to: attr.int(ONNX_DTYPE_CODE[tensor.dtype]) });
    return cast;
  }

  private location(path: string): string {
    let loc = this.files.get(path);
    if (!loc) {
      if (this.locate) loc = this.locate(path);
      else {
        const base = path.split(/[\\/]/).pop() ?? 'weights';
        loc = `w${this.files.size}_${base.replace(/[^A-Za-z0-9._-]/g, '_')}`;
      }
      this.files.set(path, loc);
    }
    return loc;
  }

  private uniqueName(name: string): string {
    let n = name;
    while (this.used.has(n)) n = `${name}_${++this.counter}`;
    this.used.add(n);
    return n;
  }

  fresh(hint: string): string {
    return this.uniqueName(`${hint}_${++this.counter}`);
  }

  emit(
    opType: string,
    inputs: string[],
    outputs: string[],
    attrs?: Record<string, OnnxAttr>,
    domain?: string,
  ): void {
    this.nodes.push({
      opType,
      inputs,
      outputs,
      attrs,
      domain,
      name: `${this.currentNodeName}/${opType}_${this.nodes.length}`,
    });
  }

  int64s(values: readonly (number | bigint)[]): string {
    const key = `i64:${values.join(',')}`;
    let n = this.memo.get(key);
    if (!n) {
      n = this.fresh('i64');
      this.initializers.push({
        name: n,
        dataType: ONNX_DTYPE_CODE.int64,
        dims: [values.length],
        raw: constantBytes(BigInt64Array.from(values, (v) => BigInt(v))),
      });
      this.memo.set(key, n);
    }
    return n;
  }

  float32s(values: readonly number[]): string {
    const key = `f32:${values.join(',')}`;
    let n = this.memo.get(key);
    if (!n) {
      n = this.fresh('f32');
      this.initializers.push({
        name: n,
        dataType: ONNX_DTYPE_CODE.float32,
        dims: [values.length],
        raw: constantBytes(Float32Array.from(values)),
      });
      this.memo.set(key, n);
    }
    return n;
  }

  scalar(value: number, dtype: DType): string {
    const key = `scalar:${dtype}:${Object.is(value, -0) ? '-0' : value}`;
    let n = this.memo.get(key);
    if (n) return n;
    n = this.fresh('scalar');
    if (
      dtype === 'float32' ||
      dtype === 'float64' ||
      dtype === 'int32' ||
      dtype === 'int64' ||
      dtype === 'int8' ||
      dtype === 'bool'
    ) {
      const values: ConstantValues =
        dtype === 'float32'
          ? Float32Array.of(value)
          : dtype === 'float64'
            ? Float64Array.of(value)
            : dtype === 'int32'
              ? Int32Array.of(value)
              : dtype === 'int64'
                ? BigInt64Array.of(BigInt(value))
                : dtype === 'int8'
                  ? Uint8Array.of(value & 0xff) // the two's-complement byte
                  : Uint8Array.of(value ? 1 : 0);
      this.initializers.push({
        name: n,
        dataType: ONNX_DTYPE_CODE[dtype],
        dims: [],
        raw: constantBytes(values),
      });
    } else {
      // Half types: an fp32 scalar cast in the graph (folded by ORT at session creation).
      const f = this.scalar(value, 'float32');
      this.emit('Cast', [f], [n], { to: attr.int(ONNX_DTYPE_CODE[dtype]) });
    }
    this.memo.set(key, n);
    return n;
  }

  /** int64 [1] holding the run-time value of a dim. */
  private dimValue(d: number | string): string {
    if (typeof d === 'number') return this.int64s([d]);
    const key = `dim:${d}`;
    const n = this.memo.get(key);
    if (n) return n;
    const { factor, symbols } = dimTerms(d);
    let acc: string | undefined;
    for (const [sym, exp] of symbols) {
      const src = this.graph.symbolSources.get(sym);
      if (!src) {
        throw new GraphBuildError(
          `dimension "${sym}" is not the dim of any graph input, so its value is unknown`,
        );
      }
      let s = this.memo.get(`sym:${sym}`);
      if (!s) {
        s = this.fresh(`dim_${sym}`);
        this.emit('Shape', [this.name(src.tensor)], [s], {
          start: attr.int(src.axis),
          end: attr.int(src.axis + 1),
        });
        this.memo.set(`sym:${sym}`, s);
      }
      for (let i = 0; i < exp; i++) {
        if (acc === undefined) acc = s;
        else {
          const m = this.fresh('dim_mul');
          this.emit('Mul', [acc, s], [m]);
          acc = m;
        }
      }
    }
    if (acc === undefined) return this.int64s([factor]);
    if (factor !== 1) {
      const m = this.fresh('dim_mul');
      this.emit('Mul', [acc, this.int64s([factor])], [m]);
      acc = m;
    }
    this.memo.set(key, acc);
    return acc;
  }

  shapeOf(dims: Shape): string {
    if (isStaticShape(dims)) return this.int64s(dims);
    const key = `shape:${dims.join(',')}`;
    let n = this.memo.get(key);
    if (n) return n;
    n = this.fresh('shape');
    this.emit(
      'Concat',
      dims.map((d) => this.dimValue(d)),
      [n],
      { axis: attr.int(0) },
    );
    this.memo.set(key, n);
    return n;
  }

  reshape(input: string, from: Shape, to: Shape, out = this.fresh('reshape')): string {
    // ONNX Reshape: 0 copies the input dim at the same position, -1 is inferred (once). Using them
    // keeps the target shape a constant, so ORT needs no shape arithmetic at run time.
    const spec: (number | undefined)[] = to.map((d, i) =>
      typeof d === 'number' && d !== 0 ? d : i < from.length && dimEquals(from[i], d) ? 0 : undefined,
    );
    const unknown = spec.filter((s) => s === undefined).length;
    const hasZeroDim = to.some((d) => d === 0);
    if (!hasZeroDim && unknown <= 1) {
      this.emit('Reshape', [input, this.int64s(spec.map((s) => (s === undefined ? -1 : s)))], [out]);
    } else {
      this.emit(
        'Reshape',
        [input, this.shapeOf(to)],
        [out],
        hasZeroDim ? { allowzero: attr.int(1) } : undefined,
      );
    }
    return out;
  }
}

/**
 * Transposes [1, 0] of 2-D weights that only MatMuls read, as B of an operand of rank ≥ 2 (a
 * Linear's weight): the MatMuls read the weight transposed in place. Emitted as a Transpose, ORT
 * folds each into a transposed copy at session creation, so every session would hold a private
 * copy of every Linear weight instead of reading the mmapped checkpoint (+1.1 GB per session at
 * SD 1.5 width, level 'extended'). Keyed by the transpose's output id.
 */
function weightTransposesReadInPlace(graph: Graph, live: ReadonlySet<number>): Map<number, Tensor> {
  const found = new Map<number, Tensor>();
  for (const node of graph.nodes) {
    const [weight] = node.inputs;
    const perm = node.attrs.perm as readonly number[] | undefined;
    if (live.has(node.id) && node.op === 'transpose' && weight.rank === 2 && perm?.[0] === 1) {
      if (graph.leaves.get(weight.id)?.kind === 'weight') found.set(node.outputs[0].id, weight);
    }
  }
  for (const node of graph.nodes) {
    if (!live.has(node.id)) continue;
    node.inputs.forEach((t, i) => {
      if (found.has(t.id) && !(node.op === 'matmul' && i === 1 && node.inputs[0].rank >= 2))
        found.delete(t.id);
    });
  }
  for (const t of graph.outputs.values()) found.delete(t.id);
  return found;
}

/** Named dims defined by graph inputs: where a runtime reads their values from the feeds. */
function inputSymbols(graph: Graph): Record<string, { input: string; axis: number }> {
  const out: Record<string, { input: string; axis: number }> = {};
  for (const [sym, { tensor, axis }] of graph.symbolSources) {
    const leaf = graph.leaves.get(tensor.id);
    if (leaf?.kind === 'input') out[sym] = { input: leaf.name, axis };
  }
  return out;
}

function valueInfo(
  name: string,
  dtype: DType,
  shape: Shape,
  symbols: Record<string, unknown>,
): OnnxValueInfo {
  return {
    name,
    dataType: ONNX_DTYPE_CODE[dtype],
    // Only plain input symbols are declared; products are left unknown for ORT to infer.
    dims: shape.map((d) => (typeof d === 'number' ? d : d in symbols ? d : undefined)),
  };
}

function constantBytes(values: ArrayBufferView): Uint8Array {
  return new Uint8Array(values.buffer, values.byteOffset, values.byteLength);
}

export { constantBytes };
