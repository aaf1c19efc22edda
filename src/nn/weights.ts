import { WeightError } from '../errors.js';
import type { DType } from '../graph/dtype.js';
import { isFloatDType } from '../graph/dtype.js';
import type { Graph, StoredDType, Tensor } from '../graph/graph.js';
import { formatShape } from '../graph/shape.js';
import type { SafetensorsDtype } from '../io/dtypes.js';
import type { TensorInfo } from '../io/safetensors.js';
import type { WarningHandler } from '../warnings.js';
import { VelodiffWarning, emitWarning, listNames } from '../warnings.js';

const STORED: Partial<Record<SafetensorsDtype, StoredDType>> = {
  F32: 'float32',
  F16: 'float16',
  BF16: 'bfloat16',
  F64: 'float64',
  I64: 'int64',
  I32: 'int32',
  I16: 'int16',
  I8: 'int8',
  U8: 'uint8',
  BOOL: 'bool',
};

/** Stored dtypes a float weight can come from (converted to the graph's dtype in the graph). */
const FLOAT_STORED: readonly SafetensorsDtype[] = ['F32', 'F16', 'BF16', 'F64'];

/** Something that holds named tensors in files: a WeightStore, or a single SafetensorsFile. */
export interface TensorSource {
  has(name: string): boolean;
  /**
   * Throws WeightError (WEIGHT_MISSING) naming the tensor and file. `expectedShape` is the shape the
   * model reads it with, when known: a source with no file behind it may answer with it
   * (discoverParameterShapes in src/train/parameters.ts); a checkpoint ignores it.
   */
  info(name: string, expectedShape?: readonly number[]): TensorInfo & { path?: string };
  /**
   * Makes the graph tensor of `name` (already checked against the model's shape) some other way
   * than as a weight pointing into its file: `ParameterInputs` declares a graph input.
   */
  tensor?(graph: Graph, name: string, dtype: DType, shape: readonly number[]): Tensor;
}

/**
 * A model's parameters as graph inputs named by their checkpoint names, for training: the model
 * is built as usual with this as its TensorSource, every parameter it reads becomes an input (fed
 * at each run, zero-copy, notes §4), and `inputsOf(graph)` gives them by name for `grad()`:
 *
 *   const params = new ParameterInputs(checkpoint);
 *   const graph = buildModelGraph(config, params, options);
 *   const grads = grad(loss, params.inputsOf(graph));
 *
 * A graph input already declared under a parameter's name, with its dtype and shape, is used as it is.
 */
export class ParameterInputs implements TensorSource {
  private readonly declared = new WeakMap<Graph, Map<string, Tensor>>();

  /** `source` says which parameters exist and their shapes; its files are not read. */
  constructor(readonly source: TensorSource) {}

  /** Parameters of the given shapes, with no checkpoint behind them (training from scratch, tests). */
  static fromShapes(shapes: Readonly<Record<string, readonly number[]>>): ParameterInputs {
    return new ParameterInputs({
      has: (name) => Object.hasOwn(shapes, name),
      info: (name) => {
        const shape = Object.hasOwn(shapes, name) ? shapes[name] : undefined;
        if (!shape) {
          throw new WeightError(
            `tensor '${name}' is not among the ${Object.keys(shapes).length} parameter shapes given`,
            'WEIGHT_MISSING',
          );
        }
        const count = shape.reduce((a, b) => a * b, 1);
        return { name, dtype: 'F32', shape: [...shape], byteLength: 4 * count, fileOffset: 0 };
      },
    });
  }

  has(name: string): boolean {
    return this.source.has(name);
  }

  info(name: string, expectedShape?: readonly number[]): TensorInfo & { path?: string } {
    return this.source.info(name, expectedShape);
  }

  tensor(graph: Graph, name: string, dtype: DType, shape: readonly number[]): Tensor {
    let inputs = this.declared.get(graph);
    if (!inputs) {
      inputs = new Map();
      this.declared.set(graph, inputs);
    }
    const have = inputs.get(name) ?? graph.inputs.find((i) => i.name === name)?.tensor;
    if (have) {
      if (have.dtype !== dtype || have.rank !== shape.length || have.shape.some((d, i) => d !== shape[i])) {
        throw new WeightError(
          `parameter '${name}': the graph input of that name is ${have.toString()}, but the model reads it as ${dtype}${formatShape(shape)}`,
          'WEIGHT_SHAPE',
        );
      }
    }
    const t = have ?? graph.input(name, dtype, shape);
    inputs.set(name, t);
    return t;
  }

  /** The parameters `graph` takes as inputs, by checkpoint name, in the order the model read them. */
  inputsOf(graph: Graph): Record<string, Tensor> {
    return Object.fromEntries(this.declared.get(graph) ?? []);
  }
}

/**
 * A graph weight that points straight into the safetensors file holding `name` (no copy; a bf16 or
 * fp16 tensor is cast to `dtype` in the graph). The weight rules of README "Models" are checked here,
 * for every model: a missing tensor, a shape other than `expectedShape`, or a float weight stored as
 * BOOL or integers is a WeightError naming the tensor, the file, and what was expected and found.
 */
export function weightFromFile(
  graph: Graph,
  source: TensorSource,
  name: string,
  options: { dtype?: DType; expectedShape?: readonly number[]; path?: string } = {},
): Tensor {
  const info = infoExpecting(source, name, options.expectedShape);
  const path = info.path ?? options.path;
  const expected = options.expectedShape;
  if (expected && (expected.length !== info.shape.length || expected.some((d, i) => d !== info.shape[i]))) {
    throw new WeightError(
      `tensor '${name}' in ${path ?? 'its source'}: expected shape ${formatShape(expected)}, found ${formatShape(info.shape)}; ` +
        'the checkpoint does not match the model config',
      'WEIGHT_SHAPE',
    );
  }
  const dtype = options.dtype ?? 'float32';
  const stored = STORED[info.dtype];
  if (!stored || (isFloatDType(dtype) && !FLOAT_STORED.includes(info.dtype))) {
    throw new WeightError(
      `tensor '${name}' in ${path ?? 'its source'}: expected a float dtype (${FLOAT_STORED.join(', ')}), found ${info.dtype}; ` +
        `the model reads it as a ${dtype} weight, which ${info.dtype} values cannot be. The file is not a ` +
        'float checkpoint of this model (quantized or corrupted?)',
      'WEIGHT_DTYPE',
    );
  }
  if (dtype === 'int8' && info.dtype !== 'I8') {
    throw new WeightError(
      `tensor '${name}' in ${path ?? 'its source'}: expected I8 (an int8 Linear weight, as the config's ` +
        `quantization_config lists its module), found ${info.dtype}; the file does not match its config`,
      'WEIGHT_DTYPE',
    );
  }
  if (source.tensor) return source.tensor(graph, name, dtype, info.shape);
  if (!path) throw new WeightError(`tensor '${name}': the file that holds it is unknown`, 'WEIGHT_SOURCE');
  return graph.weight(name, dtype, info.shape, {
    kind: 'file',
    path,
    offset: info.fileOffset,
    byteLength: info.byteLength,
    storedDType: stored,
  });
}

/** `source.info(name)`; a missing tensor's error also says which shape the model expects. */
function infoExpecting(
  source: TensorSource,
  name: string,
  expected: readonly number[] | undefined,
): TensorInfo & { path?: string } {
  try {
    return source.info(name, expected);
  } catch (error) {
    if (!(error instanceof WeightError) || error.code !== 'WEIGHT_MISSING' || !expected) throw error;
    throw new WeightError(
      `${error.message} The model expects it with shape ${formatShape(expected)}; the checkpoint does not ` +
        'match the model config',
      'WEIGHT_MISSING',
    );
  }
}

/**
 * Base weights with some tensors replaced by a second file's, loaded non-strictly as the CLEAR
 * authors do (`load_state_dict(strict=False)`): overlay tensors named as base tensors replace them,
 * overlay tensors the base lacks are offered too (e.g. `…attn1.processor.spatial_weight`), and
 * nothing requires the overlay to cover every base tensor.
 */
export class OverlayTensorSource implements TensorSource {
  constructor(
    readonly base: TensorSource,
    readonly overlay: TensorSource,
    /** The overlay file, for tensors whose info carries no path. */
    readonly overlayPath: string,
  ) {}

  has(name: string): boolean {
    return this.overlay.has(name) || this.base.has(name);
  }

  info(name: string): TensorInfo & { path?: string } {
    if (this.overlay.has(name)) {
      const info = this.overlay.info(name);
      return { ...info, path: info.path ?? this.overlayPath };
    }
    return this.base.info(name);
  }
}

/** A TensorSource that notes which tensors were read, so a load can tell which ones a model leaves unused. */
export class RecordingTensorSource implements TensorSource {
  readonly read = new Set<string>();
  constructor(readonly source: TensorSource) {}

  has(name: string): boolean {
    return this.source.has(name);
  }

  info(name: string, expectedShape?: readonly number[]): TensorInfo & { path?: string } {
    this.read.add(name);
    return this.source.info(name, expectedShape);
  }
}

/** A checkpoint as a whole: its tensors by name, and the file they were opened from (for messages). */
export interface Checkpoint extends TensorSource {
  names(): string[];
  readonly sourcePath: string;
}

/**
 * The load-time weight rules every model class follows (README "Models"). `build` builds the model's
 * graphs (nothing is compiled) from the source it is given, so every tensor the config implies passes
 * through `weightFromFile`: a missing, misshapen or non-float tensor throws here, before any forward.
 * Tensors of the checkpoint that no build read are accepted with one warning naming them and the
 * file, as diffusers warns of "unexpected keys"; `ignoreUnused` names those the model's Python class
 * ignores silently (tied copies, a decoder).
 */
export function checkWeights(
  checkpoint: Checkpoint,
  options: {
    className: string;
    build: (source: TensorSource) => void;
    ignoreUnused?: (name: string) => boolean;
    onWarning?: WarningHandler;
  },
): void {
  const recorder = new RecordingTensorSource(checkpoint);
  options.build(recorder);
  const unused = checkpoint.names().filter((n) => !recorder.read.has(n) && !options.ignoreUnused?.(n));
  if (unused.length === 0) return;
  (options.onWarning ?? emitWarning)(
    new VelodiffWarning(
      `${checkpoint.sourcePath}: ${unused.length} tensor${unused.length > 1 ? 's' : ''} of the checkpoint ` +
        `${unused.length > 1 ? 'are' : 'is'} not used by ${options.className} and ignored: ${listNames(unused)}; ` +
        'the checkpoint may be for another variant of the model (compare its config.json)',
      'WEIGHTS_UNUSED',
      checkpoint.sourcePath,
      unused,
    ),
  );
}
