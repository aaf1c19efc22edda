/**
 * Element types a graph tensor can have. `float64` is for gradient checks and references: ORT's CPU
 * EP has double kernels for the core math but not for every op (measured: see src/graph/grad.ts).
 */
export type DType = 'float32' | 'float64' | 'float16' | 'bfloat16' | 'int64' | 'int32' | 'int8' | 'bool';

export const DTYPES: readonly DType[] = [
  'float32',
  'float64',
  'float16',
  'bfloat16',
  'int64',
  'int32',
  'int8',
  'bool',
];

/** ONNX TensorProto.DataType codes. */
export const ONNX_DTYPE_CODE: Readonly<Record<DType, number>> = {
  float32: 1,
  int8: 3,
  int32: 6,
  int64: 7,
  bool: 9,
  float16: 10,
  float64: 11,
  bfloat16: 16,
};

export function isFloatDType(dtype: DType): boolean {
  return dtype === 'float32' || dtype === 'float64' || dtype === 'float16' || dtype === 'bfloat16';
}

export function isIntDType(dtype: DType): boolean {
  return dtype === 'int64' || dtype === 'int32';
}

export function dtypeByteSize(dtype: DType): number {
  switch (dtype) {
    case 'float32':
    case 'int32':
      return 4;
    case 'float16':
    case 'bfloat16':
      return 2;
    case 'int64':
    case 'float64':
      return 8;
    case 'int8':
    case 'bool':
      return 1;
  }
}
