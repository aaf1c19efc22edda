import { FileFormatError } from '../errors.js';
import type { HostTensor } from '../runtime/host-tensor.js';
import { hostTensor } from '../runtime/host-tensor.js';
import type { SafetensorsDtype } from './dtypes.js';
import { toFloat32 } from './dtypes.js';
import type { TensorToWrite } from './safetensors.js';
import { SafetensorsFile, writeSafetensors } from './safetensors.js';

/** Every tensor of a safetensors file as host tensors: floats as float32, integers and bools kept. */
export async function readHostTensors(path: string): Promise<Record<string, HostTensor>> {
  const file = await SafetensorsFile.open(path);
  const out: Record<string, HostTensor> = {};
  try {
    for (const name of file.names()) {
      const info = file.info(name);
      const bytes = await file.readBytes(name);
      const aligned = bytes.slice();
      switch (info.dtype) {
        case 'I64':
          out[name] = hostTensor('int64', info.shape, new BigInt64Array(aligned.buffer));
          break;
        case 'I32':
          out[name] = hostTensor('int32', info.shape, new Int32Array(aligned.buffer));
          break;
        case 'BOOL':
          out[name] = hostTensor('bool', info.shape, aligned);
          break;
        case 'F32':
        case 'F16':
        case 'BF16':
        case 'F64':
          out[name] = hostTensor('float32', info.shape, toFloat32(aligned, info.dtype));
          break;
        default:
          throw new FileFormatError(
            `${path}: tensor '${name}' has dtype ${info.dtype}; inputs must be F32, F16, BF16, F64, I64, I32 or BOOL`,
            'INPUT_DTYPE',
            path,
          );
      }
    }
  } finally {
    await file.close();
  }
  return out;
}

const STORED: Record<string, SafetensorsDtype> = {
  float32: 'F32',
  float16: 'F16',
  int64: 'I64',
  int32: 'I32',
  bool: 'BOOL',
};

/** Write host tensors to a safetensors file, atomically. */
export async function writeHostTensors(path: string, tensors: Record<string, HostTensor>): Promise<void> {
  const out: Record<string, TensorToWrite> = {};
  for (const [name, t] of Object.entries(tensors)) {
    out[name] = { dtype: STORED[t.dtype], shape: [...t.shape], data: t.data };
  }
  await writeSafetensors(path, out);
}
