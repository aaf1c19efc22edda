import { GraphBuildError } from '../errors.js';
import type { DType } from './dtype.js';
import { DTYPES } from './dtype.js';
import type { Dim, Shape } from './shape.js';
import { formatShape, isSymbolName, normalizeDim } from './shape.js';

/** Where the values of a weight come from. */
export type WeightSource =
  | {
      /** Bytes inside a file on disk (a safetensors file), used in place as ONNX external data. */
      kind: 'file';
      path: string;
      /** Absolute byte offset of the tensor in the file. */
      offset: number;
      byteLength: number;
      /** Element type as stored; cast to the weight's dtype inside the graph when they differ. */
      storedDType: StoredDType;
    }
  | {
      /** Values held in memory, embedded into the model. */
      kind: 'data';
      data: Float32Array | Uint16Array | BigInt64Array | Int32Array | Int8Array | Uint8Array | Float64Array;
      storedDType: StoredDType;
    };

/** Element types weights may be stored as (a superset of DType: int8 checkpoints exist). */
export type StoredDType = DType | 'uint8' | 'int16';

/** Written by an op's `infer` for a dim it cannot express; the graph names it. */
export const UNKNOWN_DIM = '?';

export interface TensorType {
  readonly dtype: DType;
  readonly shape: Shape;
}

/** A symbolic tensor: a value of the graph being built. */
export class Tensor implements TensorType {
  constructor(
    readonly graph: Graph,
    readonly id: number,
    readonly dtype: DType,
    readonly shape: Shape,
    /** The node that computes it; undefined for inputs, weights and constants. */
    readonly producer: Node | undefined,
    readonly outputIndex: number,
  ) {}

  get rank(): number {
    return this.shape.length;
  }

  toString(): string {
    return `${this.dtype}${formatShape(this.shape)}`;
  }
}

export interface Node {
  readonly id: number;
  readonly op: string;
  readonly inputs: readonly Tensor[];
  readonly attrs: Readonly<Record<string, unknown>>;
  readonly outputs: readonly Tensor[];
  /** Module path active when the node was created, for error messages and ONNX node names. */
  readonly scope: string;
}

export type Leaf =
  | { kind: 'input'; name: string; tensor: Tensor }
  | { kind: 'weight'; name: string; tensor: Tensor; source: WeightSource }
  | { kind: 'constant'; tensor: Tensor; values: ConstantValues };

export type ConstantValues =
  Float32Array | Float64Array | BigInt64Array | Int32Array | Uint8Array | Uint16Array;

/**
 * A graph under construction. Tensors are created by ops on tensors of the same graph; nodes are
 * kept in creation order, which is a topological order.
 */
export class Graph {
  readonly nodes: Node[] = [];
  readonly leaves = new Map<number, Leaf>();
  readonly outputs = new Map<string, Tensor>();
  /**
   * symbol → a tensor having that dim at `axis`, from which its run-time value is read. Named dims
   * come from graph inputs; dims an op cannot express (written '?' by `infer`, e.g. a concat of two
   * named dims) get a fresh name sourced at the op's output.
   */
  readonly symbolSources = new Map<string, { tensor: Tensor; axis: number }>();
  private nextId = 0;
  private scopes: string[] = [];
  private readonly names = new Set<string>();

  constructor(readonly name = 'velodiff') {}

  /** Run `build` with `path` appended to the module path (e.g. 'transformer_blocks.3'). */
  scope<T>(path: string, build: () => T): T {
    this.scopes.push(path);
    try {
      return build();
    } finally {
      this.scopes.pop();
    }
  }

  /** Run `build` with the module path set to `path` (not appended): for modules that know their full path. */
  atScope<T>(path: string, build: () => T): T {
    const saved = this.scopes;
    this.scopes = path ? [path] : [];
    try {
      return build();
    } finally {
      this.scopes = saved;
    }
  }

  get currentScope(): string {
    return this.scopes.join('.');
  }

  /** A graph input fed at every run. Named dims (strings) may vary between runs. */
  input(name: string, dtype: DType, shape: Shape): Tensor {
    this.claimName(name, 'input');
    checkDType(dtype, `input "${name}"`);
    const dims = shape.map((d) => normalizeDim(d));
    const t = this.newTensor(dtype, dims, undefined, 0);
    dims.forEach((d, axis) => {
      if (typeof d === 'string' && !isSymbolName(d)) {
        throw new GraphBuildError(`input "${name}": dim "${d}" must be a number or a plain name like "B"`);
      }
      if (typeof d === 'string' && !this.symbolSources.has(d)) this.symbolSources.set(d, { tensor: t, axis });
    });
    this.leaves.set(t.id, { kind: 'input', name, tensor: t });
    return t;
  }

  /**
   * A weight: values fixed for the life of a compiled graph, stored as an initializer. `dtype` is
   * the type the graph computes in; a different stored type is cast inside the graph.
   */
  weight(name: string, dtype: DType, shape: readonly number[], source: WeightSource): Tensor {
    this.claimName(name, 'weight');
    checkDType(dtype, `weight "${name}"`);
    const t = this.newTensor(
      dtype,
      shape.map((d) => normalizeDim(d)),
      undefined,
      0,
    );
    this.leaves.set(t.id, { kind: 'weight', name, tensor: t, source });
    return t;
  }

  /** A constant tensor embedded in the graph. */
  constant(values: ConstantValues, dtype: DType, shape: readonly number[]): Tensor {
    const count = shape.reduce((a, b) => a * b, 1);
    if (values.length !== count) {
      throw new GraphBuildError(
        `constant: expected ${count} values for shape ${formatShape(shape)}, got ${values.length}`,
      );
    }
    const t = this.newTensor(dtype, [...shape], undefined, 0);
    this.leaves.set(t.id, { kind: 'constant', tensor: t, values });
    return t;
  }

  /** Mark `tensor` as a graph output called `name`. */
  output(name: string, tensor: Tensor): void {
    if (tensor.graph !== this) throw new GraphBuildError(`output "${name}": tensor belongs to another graph`);
    if (this.outputs.has(name)) throw new GraphBuildError(`output "${name}" is defined twice`);
    const input = this.inputs.find((i) => i.name === name);
    if (input && input.tensor !== tensor) {
      throw new GraphBuildError(
        `graph "${this.name}": output "${name}" (${tensor}) has the name of an input (${input.tensor}); rename one of them`,
        'NAME',
      );
    }
    this.outputs.set(name, tensor);
  }

  get inputs(): { name: string; tensor: Tensor }[] {
    const out: { name: string; tensor: Tensor }[] = [];
    for (const leaf of this.leaves.values()) if (leaf.kind === 'input') out.push(leaf);
    return out;
  }

  /** Used by op definitions: append a node computing `types.length` outputs. */
  addNode(op: string, inputs: readonly Tensor[], attrs: Record<string, unknown>, types: TensorType[]): Node {
    const outputs: Tensor[] = [];
    const node: Node = { id: this.nextId++, op, inputs, attrs, outputs, scope: this.currentScope };
    // '?' is a dim of its own; '?tag' is one dim shared by every output of this node with that tag.
    const shared = new Map<string, string>();
    types.forEach((type, i) => {
      const id = this.nextId++;
      const fresh: [string, number][] = [];
      const shape = type.shape.map((d, axis) => {
        if (typeof d !== 'string' || !d.startsWith(UNKNOWN_DIM)) return d;
        const tag = d.slice(1);
        let name = tag ? shared.get(tag) : undefined;
        if (!name) {
          name = `_d${id}_${axis}`;
          fresh.push([name, axis]);
          if (tag) shared.set(tag, name);
        }
        return name;
      });
      const t = new Tensor(this, id, type.dtype, Object.freeze(shape), node, i);
      for (const [name, axis] of fresh) this.symbolSources.set(name, { tensor: t, axis });
      outputs.push(t);
    });
    this.nodes.push(node);
    return node;
  }

  private newTensor(dtype: DType, shape: Dim[] | Shape, producer: Node | undefined, index: number): Tensor {
    return new Tensor(this, this.nextId++, dtype, Object.freeze([...shape]), producer, index);
  }

  private claimName(name: string, what: string): void {
    if (!name) throw new GraphBuildError(`${what}: a name is required`);
    if (this.names.has(name)) throw new GraphBuildError(`${what} "${name}": the name is already used`);
    this.names.add(name);
  }
}

function checkDType(dtype: DType, what: string): void {
  if (!DTYPES.includes(dtype)) {
    throw new GraphBuildError(
      `${what}: unknown dtype "${String(dtype)}", expected one of ${DTYPES.join(', ')}`,
    );
  }
}
