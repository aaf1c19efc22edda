import { WeightError } from '../errors.js';
import type { DType } from '../graph/dtype.js';
import type { Graph, Tensor } from '../graph/graph.js';
import type { TensorSource } from './weights.js';
import { weightFromFile } from './weights.js';

// --- LoRA hook -------------------------------------------------------------------------------
// Linear and Conv2d ask `Params.loraTerms()` for low-rank terms of their module; `src/lora/`
// (AdapterSet) provides them. Without a provider nothing changes in the graphs.

/** The low-rank terms of one module: A [r, in] or [r, in, kh, kw], B [out, r] or [out, r, 1, 1]. */
export interface LoraModuleTerms {
  /** Merged into the weight, W + scale·B·A, from constants only, so ORT folds it at session creation. */
  readonly fused: readonly { readonly down: Tensor; readonly up: Tensor; readonly scale: number }[];
  /** Side branches y += scale·B(A(x)); `scale` is computed from a graph input, so it can change per run. */
  readonly switchable: readonly { readonly down: Tensor; readonly up: Tensor; readonly scale: Tensor }[];
}

/** Supplies LoRA terms to the layers of a graph being built (implemented by `AdapterSet`). */
export interface LoraProvider {
  /** The terms for `modulePath`, their tensors created in `graph` in `dtype`; undefined when none. */
  termsFor(graph: Graph, modulePath: string, dtype: DType): LoraModuleTerms | undefined;
}
// --- end LoRA hook ---------------------------------------------------------------------------

/** Shared by every Params of one model: graph, weights, and which tensors were used. */
interface Root {
  graph: Graph;
  source: TensorSource;
  dtype: DType;
  used: Map<string, Tensor>;
  lora: LoraProvider | undefined;
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

  static of(
    graph: Graph,
    source: TensorSource,
    options: { dtype?: DType; prefix?: string; lora?: LoraProvider } = {},
  ): Params {
    return new Params(
      { graph, source, dtype: options.dtype ?? 'float32', used: new Map(), lora: options.lora },
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

  /** LoRA terms for this module from the provider given to `Params.of`, if any. */
  loraTerms(): LoraModuleTerms | undefined {
    return this.root.lora?.termsFor(this.root.graph, this.path, this.root.dtype);
  }

  /** Names of the tensors read so far. */
  usedNames(): string[] {
    return [...this.root.used.keys()];
  }
}
