// The public API of velodiff.
export * from './errors.js';
export { VelodiffWarning, emitWarning } from './warnings.js';
export type { WarningHandler } from './warnings.js';
export * from './graph/index.js';
export { Runtime, CompiledGraph } from './runtime/runtime.js';
export type { RuntimeOptions, RunOptions } from './runtime/runtime.js';
export type { ExecutionProvider, SessionSettings, TensorRef, Feed, RunResult } from './runtime/backend.js';
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
export { readHostTensors, writeHostTensors } from './io/host-tensors.js';
export { encodePng, imagesToRgb } from './io/png.js';
export { decodePng, readImageFile, rgbToTensor } from './io/image.js';
export type { RgbImage } from './io/image.js';
export { importOptional, MissingPackageError } from './io/optional-package.js';
export { Params } from './nn/params.js';
export * from './nn/layers.js';
export * from './models/index.js';
export { INT8_MODEL_CLASSES, quantizeFolder } from './models/quantize-folder.js';
export type {
  QuantizedComponent,
  QuantizeFolderOptions,
  QuantizeFolderResult,
  QuantizeProgress,
} from './models/quantize-folder.js';
export { buildPixArtGraph, parsePixArtConfig } from './models/pixart-transformer.js';
export type { PixArtTransformerConfig, PixArtGraphOptions } from './models/pixart-transformer.js';
export { buildUNetGraph, parseUNetConfig, unet2DCondition } from './models/unet-2d-condition.js';
export type {
  UNet2DConditionConfig,
  UNetBuildHooks,
  UNetGraphOptions,
  UNetInputs,
  UNetTransformerSite,
} from './models/unet-2d-condition.js';
export * from './schedulers/index.js';
export * from './random/index.js';
export { T5Tokenizer, toModelInputs } from './tokenizers/t5-tokenizer.js';
export { buildT5Tokenizer, writeT5TokenizerFolder } from './tokenizers/build-t5-tokenizer.js';
export type { T5TokenizerBuildOptions, T5TokenizerFiles } from './tokenizers/build-t5-tokenizer.js';
export { CLIPTokenizer } from './tokenizers/clip-tokenizer.js';
export type { CLIPEncodeOptions, CLIPEncoding } from './tokenizers/clip-tokenizer.js';
export * from './pipelines/index.js';
export * from './lora/index.js';
export * from './attention/types.js';
export { tgatePlan, pruneDeadStores, resolveTGateOptions } from './attention/tgate.js';
export type { TGateOptions, TGateStep, LayerAction } from './attention/tgate.js';
export { clearAttention, clearSelfAttention } from './attention/clear.js';
export { LinFusionWeights, linfusionAttention, linfusionSelfAttention } from './attention/linfusion.js';
export { OverlayTensorSource, ParameterInputs } from './nn/weights.js';
export type { TensorSource } from './nn/weights.js';
export * from './train/index.js';
