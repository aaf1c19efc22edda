import { resolve } from 'node:path';
import { FileFormatError } from '../errors.js';
import { readModelIndex } from '../io/diffusers.js';
import type { QuantizeOption } from '../models/int8.js';
import { checkQuantizeOption } from '../models/int8.js';
import type { Runtime } from '../runtime/runtime.js';
import type { WarningHandler } from '../warnings.js';
import { PixArtPipeline } from './pixart.js';
import {
  LatentConsistencyModelPipeline,
  StableDiffusionImg2ImgPipeline,
  StableDiffusionPipeline,
} from './stable-diffusion.js';
import { StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline } from './stable-diffusion-xl.js';
import { FluxPipeline } from './flux.js';
import { StableDiffusion3Img2ImgPipeline, StableDiffusion3Pipeline } from './stable-diffusion-3.js';

export { PixArtPipeline } from './pixart.js';
export {
  LatentConsistencyModelPipeline,
  StableDiffusionImg2ImgPipeline,
  StableDiffusionPipeline,
} from './stable-diffusion.js';
export { StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline } from './stable-diffusion-xl.js';
export { FluxPipeline, latentImageIds, packLatents, unpackLatents } from './flux.js';
export type { FluxComponents, FluxHighResStage, FluxRunOptions } from './flux.js';
export { StableDiffusion3Img2ImgPipeline, StableDiffusion3Pipeline } from './stable-diffusion-3.js';
export { UNetPipeline } from './unet-pipeline.js';
export { ClipPromptEncoder } from './clip-prompt.js';
export { T5PromptEncoder } from './t5-prompt.js';
export { classifierFreeGuidance, guidanceScaleEmbedding, rescaleNoiseCfg } from './denoise.js';
export { imageLatents, preprocessImage, strengthTimesteps } from './image-to-image.js';
export { packageRoot, SHIPPED_MODEL_PATH, shippedModelDir } from './shipped-model.js';
export type { PixArtRunOptions, PixArtOutput, PixArtHighResStage } from './pixart.js';
export { highResStages, upscaleImages } from './highres.js';
export type { HighResOption, HighResStage } from './highres.js';
export { bicubicKernel, bicubicWeights, resizeBicubic } from './pil-resize.js';
export type { ResamplePrecision, ResampleWeights } from './pil-resize.js';
export type { PipelineOutput, ProgressEvent, StepEndInfo, LoopCallbacks } from './denoise.js';
export type { ImageToImageOptions } from './image-to-image.js';
export type { StableDiffusionRunOptions, LoadPipelineOptions } from './unet-pipeline.js';
export type { StableDiffusionXLRunOptions, SizePair } from './stable-diffusion-xl.js';
export type { StableDiffusion3Components, StableDiffusion3RunOptions } from './stable-diffusion-3.js';
export type { LatentsScaling } from './denoise.js';

/** Every pipeline DiffusionPipeline.fromPretrained returns. */
export type AnyPipeline =
  | PixArtPipeline
  | StableDiffusionPipeline
  | StableDiffusionXLPipeline
  | StableDiffusion3Pipeline
  | FluxPipeline;

/** model_index.json's `_class_name` values velodiff runs. */
export const PIPELINE_CLASSES = [
  'PixArtAlphaPipeline',
  'PixArtSigmaPipeline',
  'StableDiffusionPipeline',
  'StableDiffusionImg2ImgPipeline',
  'LatentConsistencyModelPipeline',
  'StableDiffusionXLPipeline',
  'StableDiffusionXLImg2ImgPipeline',
  'StableDiffusion3Pipeline',
  'StableDiffusion3Img2ImgPipeline',
  'FluxPipeline',
] as const;

/** diffusers' `DiffusionPipeline.fromPretrained`: the pipeline class is chosen by model_index.json. */
export const DiffusionPipeline = {
  /**
   * `quantize: 'int8'` makes the denoiser's and the text encoders' Linear layers on tokens and pixels
   * int8 at load (LoadOptions.quantize); the VAE stays float32. A folder written by `velodiff
   * quantize` is int8 without it.
   */
  async fromPretrained(
    dir: string,
    options: { runtime?: Runtime; onWarning?: WarningHandler; quantize?: QuantizeOption } = {},
  ): Promise<AnyPipeline> {
    // Checked before model_index.json is read, so a bad value is reported as such whatever the folder.
    checkQuantizeOption(options.quantize, 'DiffusionPipeline.fromPretrained');
    const abs = resolve(dir);
    const index = await readModelIndex(abs);
    const load = { ...options, index };
    switch (index.className) {
      case 'PixArtAlphaPipeline':
      case 'PixArtSigmaPipeline':
        return PixArtPipeline.fromPretrained(abs, load);
      case 'StableDiffusionPipeline':
        return StableDiffusionPipeline.fromPretrained(abs, load);
      case 'StableDiffusionImg2ImgPipeline':
        return StableDiffusionImg2ImgPipeline.fromPretrained(abs, load);
      case 'LatentConsistencyModelPipeline':
        return LatentConsistencyModelPipeline.fromPretrained(abs, load);
      case 'StableDiffusionXLPipeline':
        return StableDiffusionXLPipeline.fromPretrained(abs, load);
      case 'StableDiffusionXLImg2ImgPipeline':
        return StableDiffusionXLImg2ImgPipeline.fromPretrained(abs, load);
      case 'StableDiffusion3Pipeline':
        return StableDiffusion3Pipeline.fromPretrained(abs, load);
      case 'StableDiffusion3Img2ImgPipeline':
        return StableDiffusion3Img2ImgPipeline.fromPretrained(abs, load);
      case 'FluxPipeline':
        return FluxPipeline.fromPretrained(abs, load);
      default:
        throw new FileFormatError(
          `${abs}/model_index.json: pipeline class ${index.className} is not supported yet; velodiff runs ${PIPELINE_CLASSES.join(', ')}`,
          'PIPELINE_CLASS',
          abs,
        );
    }
  },
};
