import { WeightError } from '../errors.js';
import type { DType } from '../graph/dtype.js';
import type { Graph, Tensor } from '../graph/graph.js';
import type { TensorSource } from './weights.js';
import { OverlayTensorSource, weightFromFile } from './weights.js';

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

// --- int8 hook -------------------------------------------------------------------------------
// Linear and Conv2d ask `Params.int8Linear()` / `Params.int8Conv()` whether their module's weight is
// stored as int8 with per-output scales (`weight` I8 [out, in] or [out, in, kH, kW] + `weight_scale`
// F32 [out], src/io/quantize.ts); the model's loader says which modules are (src/models/int8.ts), and
// can ask to hear of every such layer a build meets.

/** A Linear or Conv2d layer as a build meets it. */
export interface Int8Site {
  modulePath: string;
  outFeatures: number;
  /** In features (Linear) or input channels (Conv2d). */
  inFeatures: number;
  /** Rank of its input: 2 for a [B, C] vector (a time embedding), 3 or more for tokens or pixels. */
  inputRank: number;
  /** Conv2d only: the kernel [kH, kW] (the weight is [out, in, kH, kW]); undefined for a Linear. */
  kernel?: readonly [number, number];
  /** Conv2d only: whether int8Conv2d can run it (stride 1, dilation 1, groups 1). */
  int8Capable?: boolean;
}

/** The weight's shape at a site: [out, in] or [out, in, kH, kW]. */
export function int8SiteWeightShape(site: Int8Site): number[] {
  return site.kernel === undefined
    ? [site.outFeatures, site.inFeatures]
    : [site.outFeatures, site.inFeatures, ...site.kernel];
}

export interface Int8Options {
  /** Linear and Conv2d modules whose weight is read as int8 with its `weight_scale`. */
  modules?: ReadonlySet<string>;
  /** Called for every Linear and Conv2d the build meets, int8 or not. */
  onLayer?: (site: Int8Site) => void;
}
// --- end int8 hook ---------------------------------------------------------------------------

/** Shared by every Params of one model: graph, weights, and which tensors were used. */
interface Root {
  graph: Graph;
  source: TensorSource;
  dtype: DType;
  used: Map<string, Tensor>;
  lora: LoraProvider | undefined;
  int8: Int8Options | undefined;
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
    options: { dtype?: DType; prefix?: string; lora?: LoraProvider; int8?: Int8Options } = {},
  ): Params {
    return new Params(
      {
        graph,
        source,
        dtype: options.dtype ?? 'float32',
        used: new Map(),
        lora: options.lora,
        int8: options.int8,
      },
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
    return this.getAs(name, shape, this.root.dtype);
  }

  private getAs(name: string, shape: readonly number[], dtype: DType): Tensor {
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
    const t = weightFromFile(this.root.graph, this.root.source, full, { dtype, expectedShape: shape });
    this.root.used.set(full, t);
    return t;
  }

  /**
   * The int8 weight [out, in] and per-output scale [out] of this Linear module when the loader
   * made it int8 (Int8Options.modules), else undefined; tells `onLayer` of the site either way.
   */
  int8Linear(
    outFeatures: number,
    inFeatures: number,
    inputRank: number,
  ): { weight: Tensor; scale: Tensor } | undefined {
    const int8 = this.root.int8;
    if (!int8) return undefined;
    int8.onLayer?.({ modulePath: this.path, outFeatures, inFeatures, inputRank });
    if (!int8.modules?.has(this.path) || this.overlaidInFloat('weight')) return undefined;
    return {
      weight: this.getAs('weight', [outFeatures, inFeatures], 'int8'),
      scale: this.get('weight_scale', [outFeatures]),
    };
  }

  /**
   * The int8 weight [out, in, kH, kW] and per-output scale [out] of this Conv2d module when the loader
   * made it int8, else undefined; tells `onLayer` of the site either way (grouped convolutions, which
   * stay float, are not sites).
   */
  int8Conv(
    outChannels: number,
    inChannels: number,
    kernel: readonly [number, number],
    int8Capable: boolean,
  ): { weight: Tensor; scale: Tensor } | undefined {
    const int8 = this.root.int8;
    if (!int8) return undefined;
    int8.onLayer?.({
      modulePath: this.path,
      outFeatures: outChannels,
      inFeatures: inChannels,
      inputRank: 4,
      kernel: [kernel[0], kernel[1]],
      int8Capable,
    });
    if (!int8.modules?.has(this.path) || this.overlaidInFloat('weight')) return undefined;
    return {
      weight: this.getAs('weight', [outChannels, inChannels, kernel[0], kernel[1]], 'int8'),
      scale: this.get('weight_scale', [outChannels]),
    };
  }

  /**
   * Whether a float tensor overlaid on the checkpoint replaces `name` (a CLEAR student's trained
   * projections over an int8 teacher): that layer then runs in float with the overlay's weight.
   */
  private overlaidInFloat(name: string): boolean {
    const source = this.root.source;
    const full = this.fullName(name);
    return (
      source instanceof OverlayTensorSource &&
      source.overlay.has(full) &&
      source.overlay.info(full).dtype !== 'I8'
    );
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
