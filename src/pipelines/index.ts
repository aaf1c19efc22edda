import { resolve } from 'node:path';
import { FileFormatError } from '../errors.js';
import { readModelIndex } from '../io/diffusers.js';
import type { Runtime } from '../runtime/runtime.js';
import type { WarningHandler } from '../warnings.js';
import { PixArtPipeline } from './pixart.js';

export { PixArtPipeline } from './pixart.js';
export { packageRoot, SHIPPED_MODEL_PATH, shippedModelDir } from './shipped-model.js';
export type { PixArtRunOptions, PixArtOutput, ProgressEvent, StepEndInfo } from './pixart.js';

/** diffusers' `DiffusionPipeline.fromPretrained`: the pipeline class is chosen by model_index.json. */
export const DiffusionPipeline = {
  async fromPretrained(
    dir: string,
    options: { runtime?: Runtime; onWarning?: WarningHandler } = {},
  ): Promise<PixArtPipeline> {
    const abs = resolve(dir);
    const index = await readModelIndex(abs);
    switch (index.className) {
      case 'PixArtAlphaPipeline':
      case 'PixArtSigmaPipeline':
        return PixArtPipeline.fromPretrained(abs, { ...options, index });
      default:
        throw new FileFormatError(
          `${abs}/model_index.json: pipeline class ${index.className} is not supported yet; velodiff runs PixArtAlphaPipeline and PixArtSigmaPipeline`,
          'PIPELINE_CLASS',
          abs,
        );
    }
  },
};
