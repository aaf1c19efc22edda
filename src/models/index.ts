import { join, resolve } from 'node:path';
import { FileFormatError } from '../errors.js';
import { readConfig } from '../io/diffusers.js';
import { AutoencoderKL } from './autoencoder-kl.js';
import { CLIPTextModel, CLIPTextModelWithProjection } from './clip-text.js';
import { VelodiffEmojiClassifier } from './emoji-classifier.js';
import type { DiffusersModel, LoadOptions } from './model.js';
import { FluxTransformer2DModel } from './flux-transformer.js';
import { PixArtTransformer2DModel } from './pixart-transformer.js';
import { SD3Transformer2DModel } from './sd3-transformer.js';
import { T5EncoderModel } from './t5-encoder.js';
import { UNet2DConditionModel } from './unet-2d-condition.js';

export { AutoencoderKL } from './autoencoder-kl.js';
export { CLIPTextModel, CLIPTextModelWithProjection } from './clip-text.js';
export { VelodiffEmojiClassifier } from './emoji-classifier.js';
export { FluxTransformer2DModel, fluxProportionalAttentionScale } from './flux-transformer.js';
export type { FluxPositionScaling } from './flux-transformer.js';
export { PixArtTransformer2DModel } from './pixart-transformer.js';
export { SD3Transformer2DModel } from './sd3-transformer.js';
export { T5EncoderModel } from './t5-encoder.js';
export { UNet2DConditionModel } from './unet-2d-condition.js';
export type { DiffusersModel, LoadOptions } from './model.js';

type Loader = (dir: string, options: LoadOptions) => Promise<DiffusersModel>;

/** Model classes by the name diffusers (`_class_name`) or transformers (`architectures[0]`) writes. */
export const MODEL_CLASSES: Readonly<Record<string, Loader>> = {
  PixArtTransformer2DModel: (d, o) => PixArtTransformer2DModel.fromPretrained(d, o),
  SD3Transformer2DModel: (d, o) => SD3Transformer2DModel.fromPretrained(d, o),
  FluxTransformer2DModel: (d, o) => FluxTransformer2DModel.fromPretrained(d, o),
  UNet2DConditionModel: (d, o) => UNet2DConditionModel.fromPretrained(d, o),
  AutoencoderKL: (d, o) => AutoencoderKL.fromPretrained(d, o),
  T5EncoderModel: (d, o) => T5EncoderModel.fromPretrained(d, o),
  CLIPTextModel: (d, o) => CLIPTextModel.fromPretrained(d, o),
  CLIPTextModelWithProjection: (d, o) => CLIPTextModelWithProjection.fromPretrained(d, o),
  VelodiffEmojiClassifier: (d, o) => VelodiffEmojiClassifier.fromPretrained(d, o),
};

/** The class a model folder's config.json names. */
export async function modelClassOf(dir: string): Promise<string> {
  const config = await readConfig(dir);
  const architectures = (config as { architectures?: unknown }).architectures;
  const name =
    typeof config._class_name === 'string'
      ? config._class_name
      : Array.isArray(architectures) && typeof architectures[0] === 'string'
        ? architectures[0]
        : undefined;
  if (!name) {
    const path = join(resolve(dir), 'config.json');
    throw new FileFormatError(
      `${path}: names no model class (no "_class_name" or "architectures")`,
      'CONFIG_CLASS',
      path,
    );
  }
  return name;
}

/** Load any supported model folder, choosing the class from its config.json. */
export async function loadModel(dir: string, options: LoadOptions): Promise<DiffusersModel> {
  const name = await modelClassOf(dir);
  const loader = MODEL_CLASSES[name];
  if (!loader) {
    const path = join(resolve(dir), 'config.json');
    throw new FileFormatError(
      `${path}: model class ${name} is not supported; velodiff loads ${Object.keys(MODEL_CLASSES).join(', ')}`,
      'MODEL_CLASS',
      path,
    );
  }
  return loader(dir, options);
}
