import { WeightError } from '../errors.js';
import type { DType } from '../graph/dtype.js';
import type { Graph, Tensor } from '../graph/graph.js';
import type { TensorSource } from './weights.js';
import { weightFromFile } from './weights.js';

/** Shared by every Params of one model: graph, weights, and which tensors were used. */
interface Root {
  graph: Graph;
  source: TensorSource;
  dtype: DType;
  used: Map<string, Tensor>;
}

/**
 * Named parameters of a module, read from a checkpoint under the module's path
 * (`transformer_blocks.0.attn1.to_q` + `.weight`). Shapes are checked against what the config
 * implies, and errors name the tensor and its file.
 */
export class Params {
  private constructor(
    private readonly root: Root,
    /** Module path, '' for the model itself. */
    readonly path: string,
  ) {}

  static of(graph: Graph, source: TensorSource, options: { dtype?: DType; prefix?: string } = {}): Params {
    return new Params(
      { graph, source, dtype: options.dtype ?? 'float32', used: new Map() },
      options.prefix ?? '',
    );
  }

  get graph(): Graph {
    return this.root.graph;
  }

  /** The parameters of a submodule. */
  child(name: string | number): Params {
    return new Params(this.root, this.path ? `${this.path}.${name}` : String(name));
  }

  fullName(name: string): string {
    return this.path ? `${this.path}.${name}` : name;
  }

  has(name: string): boolean {
    return this.root.source.has(this.fullName(name));
  }

  /** The tensor `name` of this module, which must have `shape`. */
  get(name: string, shape: readonly number[]): Tensor {
    const full = this.fullName(name);
    const seen = this.root.used.get(full);
    if (seen) {
      if (seen.shape.length !== shape.length || seen.shape.some((d, i) => d !== shape[i])) {
        throw new WeightError(
          `tensor '${full}' is used with shapes [${seen.shape.join(', ')}] and [${shape.join(', ')}]`,
          'WEIGHT_SHAPE',
        );
      }
      return seen;
    }
    const t = weightFromFile(this.root.graph, this.root.source, full, {
      dtype: this.root.dtype,
      expectedShape: shape,
    });
    this.root.used.set(full, t);
    return t;
  }

  /** Like `get`, or undefined when the checkpoint lacks it. */
  optional(name: string, shape: readonly number[]): Tensor | undefined {
    return this.has(name) ? this.get(name, shape) : undefined;
  }

  /** Build `fn` with this module's path as the graph scope, so shape errors name the module. */
  scope<T>(fn: () => T): T {
    return this.root.graph.atScope(this.path, fn);
  }

  /** Names of the tensors read so far. */
  usedNames(): string[] {
    return [...this.root.used.keys()];
  }
}
