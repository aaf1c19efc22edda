import type { DType } from '../graph/dtype.js';
import { RuntimeError } from '../errors.js';

/** Typed arrays that carry tensor data across the JS/ORT boundary. bfloat16 cannot cross it (ORT 1.30). */
export type HostData =
  Float32Array | Float64Array | Uint16Array | BigInt64Array | Int32Array | Int8Array | Uint8Array;

/** A tensor in host memory: row-major data with a concrete shape. */
export interface HostTensor {
  readonly dtype: DType;
  readonly shape: readonly number[];
  readonly data: HostData;
}

const ARRAY_OF: Readonly<Record<Exclude<DType, 'bfloat16'>, string>> = {
  float32: 'Float32Array',
  float64: 'Float64Array',
  float16: 'Uint16Array',
  int64: 'BigInt64Array',
  int32: 'Int32Array',
  int8: 'Int8Array',
  bool: 'Uint8Array',
};

export function shapeSize(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/** The typed array class name a dtype is carried in, or an error for bfloat16. */
export function hostArrayName(dtype: DType): string {
  if (dtype === 'bfloat16') {
    throw new RuntimeError(
      'bfloat16 tensors cannot be graph inputs or outputs in ONNX Runtime 1.30; cast to float32 inside the graph',
      'DTYPE',
    );
  }
  return ARRAY_OF[dtype];
}

function allocate(dtype: DType, size: number): HostData {
  switch (dtype) {
    case 'float32':
      return new Float32Array(size);
    case 'float64':
      return new Float64Array(size);
    case 'float16':
      return new Uint16Array(size);
    case 'int64':
      return new BigInt64Array(size);
    case 'int32':
      return new Int32Array(size);
    case 'int8':
      return new Int8Array(size);
    case 'bool':
      return new Uint8Array(size);
    case 'bfloat16':
      hostArrayName(dtype);
  }
  throw new RuntimeError(`unknown dtype ${String(dtype)}`, 'DTYPE');
}

/**
 * Make a host tensor, checking that the data fits the dtype and shape. Without data, a zero tensor.
 * Numbers given for int64 are converted.
 */
export function hostTensor(
  dtype: DType,
  shape: readonly number[],
  data?: HostData | readonly number[],
): HostTensor {
  if (!shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
    throw new RuntimeError(
      `invalid shape [${shape.join(', ')}]: dims must be non-negative integers`,
      'SHAPE',
    );
  }
  const size = shapeSize(shape);
  let arr: HostData;
  if (data === undefined) arr = allocate(dtype, size);
  else if (Array.isArray(data)) {
    arr = allocate(dtype, data.length);
    if (arr instanceof BigInt64Array) (data as number[]).forEach((v, i) => (arr[i] = BigInt(v)));
    else arr.set(data as number[]);
  } else arr = data as HostData;
  if (arr.constructor.name !== hostArrayName(dtype)) {
    throw new RuntimeError(
      `${dtype} data must be a ${hostArrayName(dtype)}, got ${arr.constructor.name}`,
      'DTYPE',
    );
  }
  if (arr.length !== size) {
    throw new RuntimeError(`shape [${shape.join(', ')}] needs ${size} values, got ${arr.length}`, 'SHAPE');
  }
  return { dtype, shape: [...shape], data: arr };
}
