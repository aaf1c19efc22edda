/**
 * How students are stored: float16 in the model folders a run writes (the shipped format; velodiff
 * converts fp16 to float32 at load), float32 in the temporary files of sample grids.
 */
import { f32ToF16 } from '../../io/dtypes.js';
import type { writeSafetensors } from '../../io/safetensors.js';

export type StudentDType = 'F32' | 'F16';

/** A safetensors entry of `data` in `dtype`. */
export function studentTensor(
  data: Float32Array,
  shape: readonly number[],
  dtype: StudentDType,
): Parameters<typeof writeSafetensors>[1][string] {
  return dtype === 'F16'
    ? { dtype: 'F16', shape: [...shape], data: f32ToF16(data) }
    : { dtype: 'F32', shape: [...shape], data };
}
