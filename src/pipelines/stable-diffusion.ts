/**
 * Stable Diffusion 1.x/2.x (diffusers' `StableDiffusionPipeline`, `StableDiffusionImg2ImgPipeline`,
 * `LatentConsistencyModelPipeline`): one CLIP tokenizer + CLIPTextModel, a UNet2DConditionModel, an
 * AutoencoderKL and the folder's scheduler. No safety checker runs (folders that list one load
 * without it).
 */
import { OptionError } from '../errors.js';
import type { Runtime } from '../runtime/runtime.js';
import { asFloat, repeatBatch } from './batch.js';
import { ClipPromptEncoder } from './clip-prompt.js';
import type {
  LoadPipelineOptions,
  RunDefaults,
  StableDiffusionRunOptions,
  UNetComponents,
  UNetConditioning,
} from './unet-pipeline.js';
import {
  UNetPipeline,
  checkEmbeds,
  loadUNetFolder,
  negativeList,
  promptList,
  readPipelineIndex,
} from './unet-pipeline.js';

export type { StableDiffusionRunOptions } from './unet-pipeline.js';

export const STABLE_DIFFUSION_CLASSES = [
  'StableDiffusionPipeline',
  'StableDiffusionImg2ImgPipeline',
  'LatentConsistencyModelPipeline',
] as const;
export type StableDiffusionClassName = (typeof STABLE_DIFFUSION_CLASSES)[number];

const DEFAULTS: Readonly<Record<StableDiffusionClassName, RunDefaults>> = {
  StableDiffusionPipeline: { numInferenceSteps: 50, guidanceScale: 7.5 },
  StableDiffusionImg2ImgPipeline: { numInferenceSteps: 50, guidanceScale: 7.5, strength: 0.8 },
  LatentConsistencyModelPipeline: { numInferenceSteps: 4, guidanceScale: 8.5 },
};

/**
 * Text-to-image with SD 1.x/2.x (and image-to-image through `run({ image, strength })`). Options are
 * diffusers' `__call__` arguments in camelCase; see StableDiffusionRunOptions.
 */
export class StableDiffusionPipeline extends UNetPipeline {
  readonly defaults: RunDefaults;

  protected constructor(
    readonly className: StableDiffusionClassName,
    dir: string,
    components: UNetComponents,
    /** The tokenizer + text_encoder pair; absent in folders that list them as null (embeddings only). */
    readonly promptEncoder: ClipPromptEncoder | undefined,
    runtime: Runtime,
    ownsRuntime: boolean,
  ) {
    super(dir, components, runtime, ownsRuntime);
    this.defaults = DEFAULTS[className];
  }

  /** A pipeline from loaded components (diffusers' `StableDiffusionPipeline(unet=…, …)`). */
  static fromComponents(
    components: UNetComponents & { promptEncoder?: ClipPromptEncoder; runtime: Runtime },
    className: StableDiffusionClassName = 'StableDiffusionPipeline',
  ): StableDiffusionPipeline {
    return new StableDiffusionPipeline(
      className,
      components.unet.dir,
      components,
      components.promptEncoder,
      components.runtime,
      false,
    );
  }

  /** Loads a diffusers SD 1.x/2.x folder (model_index.json with one of STABLE_DIFFUSION_CLASSES). */
  static async fromPretrained(
    dir: string,
    options: LoadPipelineOptions = {},
  ): Promise<StableDiffusionPipeline> {
    const parts = await StableDiffusionPipeline.loadParts(dir, options);
    return new StableDiffusionPipeline(parts.className, ...parts.rest);
  }

  /** The folder's components; `as` overrides the class whose defaults the pipeline takes. */
  protected static async loadParts(
    dir: string,
    options: LoadPipelineOptions,
    as?: StableDiffusionClassName,
  ): Promise<{
    className: StableDiffusionClassName;
    rest: [string, UNetComponents, ClipPromptEncoder | undefined, Runtime, boolean];
  }> {
    const { abs, index, className } = await readPipelineIndex(
      dir,
      options,
      STABLE_DIFFUSION_CLASSES,
      'a Stable Diffusion 1.x/2.x pipeline',
    );
    const loaded = await loadUNetFolder(abs, index, options, async (load) => {
      const folders = { tokenizer: 'tokenizer', textEncoder: 'text_encoder' };
      const encoder = await ClipPromptEncoder.fromModelIndex(abs, index, folders, load);
      return encoder && load.track(encoder);
    });
    return {
      className: as ?? className,
      rest: [abs, loaded.components, loaded.extra, loaded.runtime, loaded.ownsRuntime],
    };
  }

  /**
   * diffusers' `encode_prompt`: the last hidden state, or with clipSkip k the final layer norm of
   * hidden_states[−(k + 1)]; the negative prompt (default "") always takes the last hidden state, as
   * diffusers does.
   */
  protected async encodePrompt(
    o: StableDiffusionRunOptions,
    cfg: boolean,
    perPrompt: number,
  ): Promise<UNetConditioning> {
    const prompts = promptList(o);
    let embeds = o.promptEmbeds;
    if (prompts) {
      const encoder = this.requireEncoder();
      const choice =
        o.clipSkip === undefined
          ? { kind: 'last' as const }
          : { kind: 'normed' as const, fromEnd: o.clipSkip + 1 };
      embeds = (await encoder.encode(prompts, choice)).hidden;
    }
    embeds = asFloat(embeds as typeof o.promptEmbeds & object);
    const count = embeds.shape[0];
    let negEmbeds = o.negativePromptEmbeds;
    if (cfg && !negEmbeds) {
      if (!this.promptEncoder) {
        throw new OptionError(
          'guidance needs negativePromptEmbeds when promptEmbeds are given and the pipeline has no text encoder',
        );
      }
      const negs = negativeList(o.negativePrompt, count);
      negEmbeds = (await this.promptEncoder.encode(negs, { kind: 'last' }, embeds.shape[1])).hidden;
    }
    if (cfg) checkEmbeds('negativePromptEmbeds', negEmbeds, embeds.shape);
    return {
      embeds: repeatBatch(embeds, perPrompt),
      negEmbeds: cfg && negEmbeds ? repeatBatch(negEmbeds, perPrompt) : undefined,
    };
  }

  private requireEncoder(): ClipPromptEncoder {
    if (!this.promptEncoder) {
      throw new OptionError(
        `this pipeline folder has no text encoder/tokenizer (model_index.json lists them as null): pass promptEmbeds and negativePromptEmbeds`,
      );
    }
    return this.promptEncoder;
  }

  protected override loraTextEncoders(): ReturnType<UNetPipeline['loraTextEncoders']> {
    return this.promptEncoder ? [{ component: 'text_encoder', model: this.promptEncoder.textEncoder }] : [];
  }

  protected async closeEncoders(): Promise<void> {
    await this.promptEncoder?.close();
  }
}

/**
 * diffusers' `StableDiffusionImg2ImgPipeline`: the same pipeline with an image required and strength
 * 0.8 by default. Any SD 1.x/2.x folder loads as it.
 */
export class StableDiffusionImg2ImgPipeline extends StableDiffusionPipeline {
  static override async fromPretrained(
    dir: string,
    options: LoadPipelineOptions = {},
  ): Promise<StableDiffusionImg2ImgPipeline> {
    const parts = await StableDiffusionPipeline.loadParts(dir, options, 'StableDiffusionImg2ImgPipeline');
    return new StableDiffusionImg2ImgPipeline(parts.className, ...parts.rest);
  }
}

/**
 * diffusers' `LatentConsistencyModelPipeline`: an LCM-distilled UNet (time_cond_proj_dim) with the
 * LCM scheduler; guidance enters as the UNet's `timestep_cond` embedding of guidance − 1, never as
 * CFG. 4 steps and guidance 8.5 by default.
 */
export class LatentConsistencyModelPipeline extends StableDiffusionPipeline {
  static override async fromPretrained(
    dir: string,
    options: LoadPipelineOptions = {},
  ): Promise<LatentConsistencyModelPipeline> {
    const parts = await StableDiffusionPipeline.loadParts(dir, options, 'LatentConsistencyModelPipeline');
    return new LatentConsistencyModelPipeline(parts.className, ...parts.rest);
  }
}
