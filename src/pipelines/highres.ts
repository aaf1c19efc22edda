/**
 * Staged high resolution (CLEAR's `inference_t2i_highres.ipynb`, methods/clear_linfusion.md §1.7.2;
 * LinFusion's SDEdit chain, §2.6): a base image generated from the prompt at a low resolution, then
 * per stage the image resized ×scale in pixel space as the authors' PIL `image.resize` does
 * (bicubic, on the 8-bit image) and refined by image-to-image (SDEdit) at the new size. The
 * pipelines say what a stage runs with; this file holds what they share.
 */
import { OptionError } from '../errors.js';
import type { AttentionOption } from '../attention/types.js';
import type { HostTensor } from '../runtime/host-tensor.js';
import { checkInteger } from './batch.js';
import type { PipelineOutput } from './denoise.js';
import { checkStrength } from './image-to-image.js';
import { resizeBicubic } from './pil-resize.js';

/** One refine stage of a staged high-resolution run. */
export interface HighResStage {
  /** Per-side factor over the previous stage's image (the base image for the first): an integer ≥ 2. */
  scale: number;
  /** SDEdit strength of the refine, in (0, 1]. */
  strength?: number;
  /** Steps of the full schedule, of which int(steps · strength) (FLUX: one more when not whole) run. */
  numInferenceSteps?: number;
  guidanceScale?: number;
  /** The refine's attention (e.g. CLEAR with its weights); the base stage uses the run's own. */
  attention?: AttentionOption;
}

/** A run's `highres` option: one stage, or stages run in order. */
export type HighResOption<S extends HighResStage = HighResStage> = S | readonly S[];

/**
 * The stages of a `highres` option as a list, each checked before any model runs: scale an integer
 * ≥ 2, strength in (0, 1], steps an integer ≥ 1, guidance a finite number. `where` names the run.
 */
export function highResStages<S extends HighResStage>(option: HighResOption<S>, where: string): S[] {
  const stages: S[] = Array.isArray(option) ? [...(option as readonly S[])] : [option as S];
  if (stages.length === 0) throw new OptionError(`${where}: highres needs at least one stage`);
  stages.forEach((stage, i) => {
    const name = Array.isArray(option) ? `highres[${i}]` : 'highres';
    if (typeof stage !== 'object' || stage === null) {
      throw new OptionError(
        `${where}: ${name} must be an object { scale, strength?, … }, got ${String(stage)}`,
      );
    }
    if (!Number.isInteger(stage.scale) || stage.scale < 2) {
      throw new OptionError(
        `${where}: ${name}.scale must be an integer ≥ 2 (the factor per side over the previous image), got ${stage.scale}`,
      );
    }
    if (stage.strength !== undefined) checkStrength(stage.strength, `${where}: ${name}.strength`);
    if (stage.numInferenceSteps !== undefined) {
      checkInteger(stage.numInferenceSteps, `${where}: ${name}.numInferenceSteps`, 1);
    }
    if (stage.guidanceScale !== undefined && !Number.isFinite(stage.guidanceScale)) {
      throw new OptionError(`${where}: ${name}.guidanceScale must be a number, got ${stage.guidanceScale}`);
    }
  });
  return stages;
}

/**
 * A staged run starts from the prompt: image-to-image options have no stage to go to. `o` holds the
 * run's options.
 */
export function refuseImageToImage(
  o: { image?: HostTensor; strength?: number; noise?: HostTensor },
  where: string,
): void {
  for (const name of ['image', 'strength', 'noise'] as const) {
    if (o[name] !== undefined) {
      throw new OptionError(
        `${where}: ${name} does not go with highres, which generates its base image from the prompt; give each stage's strength in highres, or run image-to-image without highres`,
      );
    }
  }
}

/**
 * Images [N, 3, H, W] in [0, 1] resized ×scale per side as the notebook's `image.resize((W, H))`:
 * Pillow's bicubic on the 8-bit image diffusers' postprocess makes, read back as v / 255.
 */
export function upscaleImages(images: HostTensor, scale: number): HostTensor {
  const [, , height, width] = images.shape;
  return resizeBicubic(images, { height: height * scale, width: width * scale }, { precision: 'uint8' });
}

/**
 * The base image, then each stage in order: its input is the previous image upscaled ×scale.
 * Returns the last stage's output.
 */
export async function runHighResStages<S extends HighResStage>(o: {
  base: () => Promise<PipelineOutput>;
  stages: readonly S[];
  refine: (stage: S, image: HostTensor, index: number) => Promise<PipelineOutput>;
}): Promise<PipelineOutput> {
  let output = await o.base();
  for (const [index, stage] of o.stages.entries()) {
    if (!output.images) throw new Error('highres: a stage before the last returned no images');
    output = await o.refine(stage, upscaleImages(output.images, stage.scale), index);
  }
  return output;
}
