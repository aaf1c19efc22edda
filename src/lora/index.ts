// LoRA: reading the Hub's LoRA formats, named adapters, and the Flash Diffusion preset.
export {
  detectFormat,
  loraFileComponents,
  pairLoraTensors,
  parsePeftConfig,
  readLoraFile,
  type IgnoredLoraKey,
  type LoraFileContents,
  type LoraComponent,
  type LoraFormat,
  type LoraPair,
  type LoraTensorInfo,
  type ModelParameters,
  type PeftLoraConfig,
} from './format.js';
export {
  AdapterSet,
  loraScaleInputName,
  type LoadedLora,
  type LoadLoraOptions,
  type LoraTerm,
} from './adapters.js';
export {
  FLASH_PRESET,
  FLASH_SD3_PRESET,
  flashFlowMatchScheduler,
  flashScheduler,
  flashTrainedTimesteps,
  loadFlashFlowMatchLora,
  loadFlashLora,
  type FlashLoadOptions,
  type FlashSetup,
} from './flash.js';
export { PipelineAdapters, type LoraTarget, type PipelineLoadedLora } from './pipeline-adapters.js';
