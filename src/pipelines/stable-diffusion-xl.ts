/**
 * Stable Diffusion XL (diffusers' `StableDiffusionXLPipeline`, `StableDiffusionXLImg2ImgPipeline`):
 * two CLIP encoders whose penultimate hidden states are joined along the channel axis, the second
 * one's projected `text_embeds` as the pooled embedding, and the micro-conditioning time ids
 * (original size, crop corner, target size — or the refiner's aesthetic score) as `added_cond_kwargs`.
 */
import { basename, join } from 'node:path';

import { FileFormatError, OptionError } from '../errors.js';
import type { HostTensor } from '../runtime/host-tensor.js';
import { hostTensor } from '../runtime/host-tensor.js';
import type { Runtime } from '../runtime/runtime.js';
import { asFloat, repeatBatch, rows } from './batch.js';
import { ClipPromptEncoder, encodeJoined } from './clip-prompt.js';
import type { PipelineOutput } from './denoise.js';
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

/** [height, width] or [top, left] in pixels, as diffusers' tuples. */
export type SizePair = readonly [number, number];

export interface StableDiffusionXLRunOptions extends StableDiffusionRunOptions {
  /** The prompt for tokenizer_2 / text_encoder_2; default `prompt`. */
  prompt2?: string | string[];
  negativePrompt2?: string | string[];
  /** With promptEmbeds: text_encoder_2's pooled `text_embeds` [B, projection_dim]. */
  pooledPromptEmbeds?: HostTensor;
  negativePooledPromptEmbeds?: HostTensor;
  /** SDXL micro-conditioning (Podell et al. 2023, §2.2): default [height, width]. */
  originalSize?: SizePair;
  /** Default [0, 0]. */
  cropsCoordsTopLeft?: SizePair;
  /** Default [height, width]. */
  targetSize?: SizePair;
  /** The negative half's time ids; each defaults to the positive one. */
  negativeOriginalSize?: SizePair;
  negativeCropsCoordsTopLeft?: SizePair;
  negativeTargetSize?: SizePair;
  /** Refiner folders (requires_aesthetics_score): the score in place of target_size; default 6 and 2.5. */
  aestheticScore?: number;
  negativeAestheticScore?: number;
}

export const STABLE_DIFFUSION_XL_CLASSES = [
  'StableDiffusionXLPipeline',
  'StableDiffusionXLImg2ImgPipeline',
] as const;
export type StableDiffusionXLClassName = (typeof STABLE_DIFFUSION_XL_CLASSES)[number];

const DEFAULTS: Readonly<Record<StableDiffusionXLClassName, RunDefaults>> = {
  StableDiffusionXLPipeline: { numInferenceSteps: 50, guidanceScale: 5 },
  StableDiffusionXLImg2ImgPipeline: { numInferenceSteps: 50, guidanceScale: 5, strength: 0.3 },
};

/** The pipeline options model_index.json carries for SDXL (diffusers' register_to_config). */
export interface StableDiffusionXLFlags {
  /** Negative conditioning is zeros when no negative prompt is given (default true). */
  forceZerosForEmptyPrompt: boolean;
  /** Refiner: time ids end with the aesthetic score instead of the target size (default false). */
  requiresAestheticsScore: boolean;
}

type Parts = [string, UNetComponents, ClipPromptEncoder[], StableDiffusionXLFlags, Runtime, boolean];

export class StableDiffusionXLPipeline extends UNetPipeline {
  readonly defaults: RunDefaults;

  protected constructor(
    readonly className: StableDiffusionXLClassName,
    dir: string,
    components: UNetComponents,
    /** text_encoder (CLIPTextModel) then text_encoder_2 (CLIPTextModelWithProjection); the refiner has only the second. */
    readonly promptEncoders: ClipPromptEncoder[],
    readonly flags: StableDiffusionXLFlags,
    runtime: Runtime,
    ownsRuntime: boolean,
  ) {
    super(dir, components, runtime, ownsRuntime);
    this.defaults = DEFAULTS[className];
  }

  static fromComponents(
    components: UNetComponents & {
      promptEncoders?: ClipPromptEncoder[];
      runtime: Runtime;
      flags?: Partial<StableDiffusionXLFlags>;
    },
    className: StableDiffusionXLClassName = 'StableDiffusionXLPipeline',
  ): StableDiffusionXLPipeline {
    return new StableDiffusionXLPipeline(
      className,
      components.unet.dir,
      components,
      components.promptEncoders ?? [],
      { forceZerosForEmptyPrompt: true, requiresAestheticsScore: false, ...components.flags },
      components.runtime,
      false,
    );
  }

  static async fromPretrained(
    dir: string,
    options: LoadPipelineOptions = {},
  ): Promise<StableDiffusionXLPipeline> {
    const parts = await StableDiffusionXLPipeline.loadParts(dir, options);
    return new StableDiffusionXLPipeline(parts.className, ...parts.rest);
  }

  protected static async loadParts(
    dir: string,
    options: LoadPipelineOptions,
    as?: StableDiffusionXLClassName,
  ): Promise<{ className: StableDiffusionXLClassName; rest: Parts }> {
    const { abs, index, className } = await readPipelineIndex(
      dir,
      options,
      STABLE_DIFFUSION_XL_CLASSES,
      'an SDXL pipeline',
    );
    const flag = (key: string, fallback: boolean): boolean => {
      const value = index.raw[key];
      if (value === undefined) return fallback;
      if (typeof value !== 'boolean') {
        throw new FileFormatError(
          `${join(abs, 'model_index.json')}: "${key}" is ${JSON.stringify(value)}; expected true or false`,
          'CONFIG_VALUE',
          abs,
        );
      }
      return value;
    };
    const flags: StableDiffusionXLFlags = {
      forceZerosForEmptyPrompt: flag('force_zeros_for_empty_prompt', true),
      requiresAestheticsScore: flag('requires_aesthetics_score', false),
    };
    const loaded = await loadUNetFolder(abs, index, options, async (load) => {
      const encoders: ClipPromptEncoder[] = [];
      for (const [tokenizer, textEncoder] of [
        ['tokenizer', 'text_encoder'],
        ['tokenizer_2', 'text_encoder_2'],
      ]) {
        const encoder = await ClipPromptEncoder.fromModelIndex(abs, index, { tokenizer, textEncoder }, load);
        if (encoder) encoders.push(load.track(encoder));
      }
      return encoders;
    });
    return {
      className: as ?? className,
      rest: [abs, loaded.components, loaded.extra, flags, loaded.runtime, loaded.ownsRuntime],
    };
  }

  protected override get latentsStatistics(): boolean {
    return true;
  }

  override run(o: StableDiffusionXLRunOptions = {}): Promise<PipelineOutput> {
    return super.run(o);
  }

  /**
   * diffusers' SDXL `encode_prompt` and `_get_add_time_ids`: each encoder's hidden_states[−2] (with
   * clipSkip k, hidden_states[−(k + 2)]; the negative prompt always [−2]) joined along the channels,
   * text_encoder_2's text_embeds as the pooled embedding; zeros for the negative half when no negative
   * prompt is given and force_zeros_for_empty_prompt is set.
   */
  protected async encodePrompt(
    options: StableDiffusionRunOptions,
    cfg: boolean,
    perPrompt: number,
    size: { height: number; width: number },
  ): Promise<UNetConditioning> {
    const o = options as StableDiffusionXLRunOptions;
    const prompts = promptList(o);
    let embeds = o.promptEmbeds;
    let pooled = o.pooledPromptEmbeds;
    if (prompts) {
      const encoders = this.requireEncoders();
      const prompts2 = o.prompt2 === undefined ? prompts : negativeList(o.prompt2, prompts.length, 'prompt2');
      const fromEnd = o.clipSkip === undefined ? 2 : o.clipSkip + 2;
      const encoded = await encodeJoined(encoders, [prompts, prompts2], { kind: 'raw', fromEnd });
      embeds = encoded.hidden;
      pooled ??= encoded.pooled;
    } else if (!pooled) {
      throw new OptionError(
        "pooledPromptEmbeds must be given with promptEmbeds (text_encoder_2's text_embeds)",
      );
    }
    embeds = asFloat(embeds as HostTensor);
    if (!pooled)
      throw new OptionError('no pooled embedding: the pipeline has no CLIPTextModelWithProjection encoder');
    pooled = asFloat(pooled);
    const count = embeds.shape[0];
    checkEmbeds('pooledPromptEmbeds', pooled, [count, pooled.shape[1]]);

    let negEmbeds = o.negativePromptEmbeds;
    let negPooled = o.negativePooledPromptEmbeds;
    if (cfg && negEmbeds && !negPooled) {
      throw new OptionError('negativePooledPromptEmbeds must be given with negativePromptEmbeds');
    }
    if (cfg && !negEmbeds) {
      if (o.negativePrompt === undefined && this.flags.forceZerosForEmptyPrompt) {
        negEmbeds = hostTensor('float32', embeds.shape, new Float32Array(embeds.data.length));
        negPooled = hostTensor('float32', pooled.shape, new Float32Array(pooled.data.length));
      } else {
        const encoders = this.promptEncoders;
        if (encoders.length === 0) {
          throw new OptionError(
            'guidance needs negativePromptEmbeds and negativePooledPromptEmbeds when the pipeline has no text encoders',
          );
        }
        const negs = negativeList(o.negativePrompt, count);
        const negs2 =
          o.negativePrompt2 === undefined ? negs : negativeList(o.negativePrompt2, count, 'negativePrompt2');
        const encoded = await encodeJoined(
          encoders,
          [negs, negs2],
          { kind: 'raw', fromEnd: 2 },
          embeds.shape[1],
        );
        negEmbeds = encoded.hidden;
        negPooled = encoded.pooled;
      }
    }
    if (cfg) {
      checkEmbeds('negativePromptEmbeds', negEmbeds, embeds.shape);
      checkEmbeds('negativePooledPromptEmbeds', negPooled, pooled.shape);
    }
    const { positive, negative } = this.timeIds(o, size, pooled.shape[1]);
    const batch = count * perPrompt;
    return {
      embeds: repeatBatch(embeds, perPrompt),
      negEmbeds: cfg ? repeatBatch(negEmbeds as HostTensor, perPrompt) : undefined,
      added: {
        textEmbeds: repeatBatch(pooled, perPrompt),
        negTextEmbeds: cfg ? repeatBatch(negPooled as HostTensor, perPrompt) : undefined,
        timeIds: rows(batch, positive),
        negTimeIds: cfg ? rows(batch, negative) : undefined,
      },
    };
  }

  /**
   * The time ids of each half: original_size + crops_coords_top_left + target_size (6 values), or for
   * refiners original_size + crops + aesthetic score (5), checked against the UNet's add_embedding.
   */
  timeIds(
    o: StableDiffusionXLRunOptions,
    size: { height: number; width: number },
    pooledWidth: number,
  ): { positive: number[]; negative: number[] } {
    const own: SizePair = [size.height, size.width];
    const original = o.originalSize ?? own;
    const crops = o.cropsCoordsTopLeft ?? [0, 0];
    const target = o.targetSize ?? own;
    const negOriginal = o.negativeOriginalSize ?? original;
    const negCrops = o.negativeCropsCoordsTopLeft ?? crops;
    const negTarget = o.negativeTargetSize ?? target;
    for (const [name, pair] of Object.entries({
      original,
      crops,
      target,
      negOriginal,
      negCrops,
      negTarget,
    })) {
      if (pair.length !== 2 || !pair.every(Number.isFinite)) {
        throw new OptionError(
          `${name}: expected two numbers [height, width] or [top, left], got ${JSON.stringify(pair)}`,
        );
      }
    }
    const [positive, negative] = this.flags.requiresAestheticsScore
      ? [
          [...original, ...crops, o.aestheticScore ?? 6],
          [...negOriginal, ...negCrops, o.negativeAestheticScore ?? 2.5],
        ]
      : [
          [...original, ...crops, ...target],
          [...negOriginal, ...negCrops, ...negTarget],
        ];
    const textTime = this.unet.config.textTime;
    if (!textTime) {
      throw new OptionError(
        `${this.unet.dir}: this UNet has no text_time added embedding (addition_embed_type is not 'text_time'); it is not an SDXL UNet`,
      );
    }
    const passed = textTime.timeEmbedDim * positive.length + pooledWidth;
    if (passed !== textTime.projectionInputDim) {
      const hint = this.flags.requiresAestheticsScore
        ? 'the folder sets requires_aesthetics_score; does its UNet take 5 time ids?'
        : 'refiner UNets take 5 time ids: set requires_aesthetics_score in model_index.json';
      throw new OptionError(
        `the UNet's add_embedding expects ${textTime.projectionInputDim} inputs, but ${positive.length} time ids × ` +
          `addition_time_embed_dim ${textTime.timeEmbedDim} + pooled ${pooledWidth} = ${passed}; ${hint}`,
      );
    }
    return { positive, negative };
  }

  private requireEncoders(): ClipPromptEncoder[] {
    if (this.promptEncoders.length === 0) {
      throw new OptionError(
        'this pipeline folder has no text encoders/tokenizers (model_index.json lists them as null): pass promptEmbeds and pooledPromptEmbeds',
      );
    }
    return this.promptEncoders;
  }

  /** text_encoder and text_encoder_2; a refiner's one encoder is text_encoder_2. */
  protected override loraTextEncoders(): ReturnType<UNetPipeline['loraTextEncoders']> {
    const encoders = this.promptEncoders;
    const components = ['text_encoder', 'text_encoder_2'] as const;
    const offset = components.length - encoders.length;
    return encoders.map((encoder, i) => {
      // The folder's name where it is one of the two, else the position (built from components).
      const folder = basename(encoder.textEncoder.dir);
      const component = components.find((c) => c === folder) ?? components[offset + i];
      return { component, model: encoder.textEncoder };
    });
  }

  protected async closeEncoders(): Promise<void> {
    for (const encoder of this.promptEncoders) await encoder.close();
  }
}

/**
 * diffusers' `StableDiffusionXLImg2ImgPipeline`: an image required, strength 0.3 by default; refiner
 * folders (requires_aesthetics_score) take the aesthetic score in their time ids.
 */
export class StableDiffusionXLImg2ImgPipeline extends StableDiffusionXLPipeline {
  static override async fromPretrained(
    dir: string,
    options: LoadPipelineOptions = {},
  ): Promise<StableDiffusionXLImg2ImgPipeline> {
    const parts = await StableDiffusionXLPipeline.loadParts(dir, options, 'StableDiffusionXLImg2ImgPipeline');
    return new StableDiffusionXLImg2ImgPipeline(parts.className, ...parts.rest);
  }
}
