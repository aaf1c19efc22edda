// The public API of velodiff.
export * from './errors.js';
export * from './graph/index.js';
export { Runtime, CompiledGraph } from './runtime/runtime.js';
export type { RuntimeOptions, RunOptions } from './runtime/runtime.js';
export type { ExecutionProvider, SessionSettings } from './runtime/backend.js';
export { hostTensor } from './runtime/host-tensor.js';
export type { HostTensor, HostData } from './runtime/host-tensor.js';
export { SafetensorsFile, parseSafetensorsHeader, writeSafetensors } from './io/safetensors.js';
export type { TensorInfo, SafetensorsHeader, TensorToWrite } from './io/safetensors.js';
export { WeightStore, readConfig, readModelIndex, readJsonFile } from './io/diffusers.js';
export type { ModelIndex, ModelConfig } from './io/diffusers.js';
export { bf16ToF32, f32ToBf16, f16ToF32, f32ToF16, toFloat32 } from './io/dtypes.js';
export type { SafetensorsDtype } from './io/dtypes.js';
export { writeFileAtomic } from './io/atomic.js';
export { weightFromFile } from './nn/weights.js';
