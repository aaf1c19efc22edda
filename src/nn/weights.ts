import { WeightError } from '../errors.js';
import type { DType } from '../graph/dtype.js';
import type { Graph, StoredDType, Tensor } from '../graph/graph.js';
import { formatShape } from '../graph/shape.js';
import type { SafetensorsDtype } from '../io/dtypes.js';
import type { TensorInfo } from '../io/safetensors.js';

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

/** Something that holds named tensors in files: a WeightStore, or a single SafetensorsFile. */
export interface TensorSource {
  has(name: string): boolean;
  /** Throws WeightError (WEIGHT_MISSING) naming the tensor and file. */
  info(name: string): TensorInfo & { path?: string };
}

/**
 * A graph weight that points straight into the safetensors file holding `name` (no copy; a bf16 or
 * fp16 tensor is cast to `dtype` in the graph). `expectedShape` is checked first, naming the tensor
 * and the file.
 */
export function weightFromFile(
  graph: Graph,
  source: TensorSource,
  name: string,
  options: { dtype?: DType; expectedShape?: readonly number[]; path?: string } = {},
): Tensor {
  const info = source.info(name);
  const path = info.path ?? options.path;
  if (!path) throw new WeightError(`tensor '${name}': the file that holds it is unknown`, 'WEIGHT_SOURCE');
  const expected = options.expectedShape;
  if (expected && (expected.length !== info.shape.length || expected.some((d, i) => d !== info.shape[i]))) {
    throw new WeightError(
      `tensor '${name}' in ${path}: expected shape ${formatShape(expected)}, found ${formatShape(info.shape)}; ` +
        'the checkpoint does not match the model config',
      'WEIGHT_SHAPE',
    );
  }
  const stored = STORED[info.dtype];
  if (!stored) {
    throw new WeightError(
      `tensor '${name}' in ${path}: dtype ${info.dtype} is not supported for weights`,
      'WEIGHT_DTYPE',
    );
  }
  const dtype = options.dtype ?? 'float32';
  return graph.weight(name, dtype, info.shape, {
    kind: 'file',
    path,
    offset: info.fileOffset,
    byteLength: info.byteLength,
    storedDType: stored,
  });
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
