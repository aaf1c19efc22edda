/**
 * FLUX.1 dev / schnell (diffusers' `FluxPipeline`, and `FluxImg2ImgPipeline` through
 * `run({ image, strength })`): a FluxTransformer2DModel sampled by flow matching on latents packed
 * into 2×2 patches, conditioned on T5's sequence embeddings and CLIP's pooled output, with the
 * guidance scale as a model input where the transformer was guidance-distilled (dev), and a VAE whose
 * latents are shifted and scaled.
 */
import { join } from 'node:path';

import { FileFormatError, OptionError } from '../errors.js';
import type { AttentionOption } from '../attention/types.js';
import type { LoraTarget } from '../lora/pipeline-adapters.js';
import { LoraPipeline } from '../lora/pipeline-adapters.js';
import type { AutoencoderKL } from '../models/autoencoder-kl.js';
import { FluxTransformer2DModel, checkRopeNtkFactor } from '../models/flux-transformer.js';
import type { HostTensor } from '../runtime/host-tensor.js';
import { hostTensor } from '../runtime/host-tensor.js';
import type { Runtime } from '../runtime/runtime.js';
import { FlowMatchEulerDiscreteScheduler } from '../schedulers/index.js';
import { linspace } from '../schedulers/numerics.js';
import type { Scheduler } from '../schedulers/scheduler.js';
import { asFloat, checkInteger, concatBatch, splitBatch } from './batch.js';
import { ClipPromptEncoder } from './clip-prompt.js';
import type { PipelineOutput } from './denoise.js';
import { decodeImages, denoise, resolveGenerator } from './denoise.js';
import type {
  FlowMatchingComponents,
  FlowMatchingRunOptions,
  TextConditioning,
} from './flow-matching-pipeline.js';
import {
  checkEmbedsWidth,
  configShift,
  orPrompt,
  repeatConditioning,
  requireVae,
} from './flow-matching-pipeline.js';
import type { HighResOption, HighResStage } from './highres.js';
import { highResStages, refuseImageToImage, runHighResStages } from './highres.js';
import { imageHeightWidth, imageLatents, strengthTimesteps } from './image-to-image.js';
import { MAX_SEQUENCE_LENGTH, T5PromptEncoder, checkMaxSequenceLength } from './t5-prompt.js';
import type { DenoiserFolder, LoadPipelineOptions } from './unet-pipeline.js';
import {
  checkEmbeds,
  loadPipelineFolder,
  negativeList,
  promptList,
  readPipelineIndex,
} from './unet-pipeline.js';

/** Options of `run` (diffusers' `FluxPipeline.__call__` arguments in camelCase). */
export interface FluxRunOptions extends FlowMatchingRunOptions {
  /** The prompt for both encoders unless prompt2 says otherwise (CLIP's pooled output comes from it). */
  prompt?: string | string[];
  /** The prompt for tokenizer_2 / text_encoder_2 (T5); default `prompt`. */
  prompt2?: string | string[];
  /** Used only under true CFG (`trueCfgScale` > 1). */
  negativePrompt?: string | string[];
  /**
   * True classifier-free guidance: runs when > 1 and a negative prompt (or negative embeddings) is
   * given, and is silently off otherwise, as in diffusers. Default 1.
   */
  trueCfgScale?: number;
  /** Precomputed T5 embeddings [B, L, joint_attention_dim], instead of prompts. */
  promptEmbeds?: HostTensor;
  /** With promptEmbeds: CLIP's pooled output [B, pooled_projection_dim]. */
  pooledPromptEmbeds?: HostTensor;
  /**
   * Initial latents, packed as diffusers' `_pack_latents` leaves them: [B·n, (H/f/2)·(W/f/2), 4·C]
   * for a VAE factor f and C latent channels (see `packLatents`). With an image, the already noised start.
   */
  latents?: HostTensor;
  /** Default 28. */
  numInferenceSteps?: number;
  /** Custom noise levels, one per step, instead of linspace(1, 1/steps, steps). */
  sigmas?: number[];
  /**
   * The distilled guidance FLUX.1-dev takes as a model input (default 3.5); ignored by models without
   * guidance_embeds (schnell), as in diffusers. Not classifier-free guidance: see trueCfgScale.
   */
  guidanceScale?: number;
  /**
   * The transformer's attention kernel: full (default) or CLEAR (`{ kind: 'clear', radius,
   * downFactor?, weights? }`, methods/clear_linfusion.md §1), its window on the packed latent grid,
   * resolved once per run. The authors' text_length 512 is the default maxSequenceLength, to which
   * prompts are always padded.
   */
  attention?: AttentionOption;
  /**
   * CLEAR's `ntk_factor` (Huage001/CLEAR transformer_flux.py): RoPE's θ multiplied by it on every
   * axis, so that positions beyond the trained grid rotate less. Default 1 (diffusers' RoPE).
   */
  ropeNtkFactor?: number;
  /**
   * CLEAR's `proportional_attention`: every softmax scaled by sqrt(log_4608(keys) / head_dim)
   * instead of 1/√head_dim (`fluxProportionalAttentionScale`). Default off.
   */
  proportionalAttention?: boolean;
  /**
   * CLEAR's staged high-resolution recipe (methods/clear_linfusion.md §1.7.2): this run's options
   * make the base image (height × width, default 20 steps, the run's attention, full by default),
   * then each stage resizes the image ×scale as PIL's bicubic and refines it by image-to-image at
   * the new size. A stage's defaults are the notebook's: strength 0.7, 20 steps, guidance 7.5,
   * ropeNtkFactor 10, proportionalAttention on, full attention, the static shift of the scheduler
   * config (3.0 for FLUX.1-dev) with dynamic shifting off. The prompt options, numImagesPerPrompt,
   * maxSequenceLength and the callbacks reach every stage; the noise of every stage comes from the
   * run's generator; outputType applies to the last stage.
   */
  highres?: HighResOption<FluxHighResStage>;
}

/** A refine stage of FluxPipeline's `highres`, with CLEAR's high-resolution options. */
export interface FluxHighResStage extends HighResStage {
  /** Default 10 (the notebook's `ntk_factor`). */
  ropeNtkFactor?: number;
  /** Default true (the notebook's `proportional_attention`). */
  proportionalAttention?: boolean;
  /**
   * The static shift σ' = shift·σ / (1 + (shift − 1)·σ) of the refine's schedule; dynamic
   * shifting is off (the notebook's `use_dynamic_shifting = False`). Default: the scheduler
   * config's `shift`, 3.0 for FLUX.1-dev.
   */
  shift?: number;
}

/** The notebook's values (inference_t2i_highres.ipynb; methods/clear_linfusion.md §1.7.2). */
const HIGHRES_BASE_STEPS = 20;
const HIGHRES_STAGE_DEFAULTS = {
  strength: 0.7,
  numInferenceSteps: 20,
  guidanceScale: 7.5,
  ropeNtkFactor: 10,
  proportionalAttention: true,
} as const;

export const FLUX_CLASSES = ['FluxPipeline'] as const;

/** diffusers' `default_sample_size`: FluxTransformer2DModel has no sample_size, so the pipeline fixes 128 latents. */
const DEFAULT_SAMPLE_SIZE = 128;

/** FluxImg2ImgPipeline's default strength. */
const DEFAULT_STRENGTH = 0.6;

export interface FluxComponents extends FlowMatchingComponents<FluxTransformer2DModel> {
  /** tokenizer + text_encoder (a CLIPTextModel, for its pooled output); absent in folders for embeddings only. */
  clipEncoder?: ClipPromptEncoder;
  /** tokenizer_2 + text_encoder_2 (T5). */
  t5Encoder?: T5PromptEncoder;
}

/**
 * Text-to-image with FLUX.1 folders, and image-to-image (FluxImg2ImgPipeline's semantics) through
 * `run({ image, strength })`. Options are diffusers' `__call__` arguments in camelCase; see FluxRunOptions.
 */
export class FluxPipeline extends LoraPipeline {
  readonly className = 'FluxPipeline';
  readonly transformer: FluxTransformer2DModel;
  readonly vae: AutoencoderKL | undefined;
  scheduler: Scheduler;
  readonly clipEncoder: ClipPromptEncoder | undefined;
  readonly t5Encoder: T5PromptEncoder | undefined;
  readonly runtime: Runtime;

  private constructor(
    readonly dir: string,
    components: FluxComponents,
    private readonly ownsRuntime: boolean,
  ) {
    super();
    this.transformer = components.transformer;
    this.vae = components.vae;
    this.scheduler = components.scheduler;
    this.clipEncoder = components.clipEncoder;
    this.t5Encoder = components.t5Encoder;
    this.runtime = components.runtime;
    if (components.vae) checkLatentChannels(components.transformer, components.vae);
  }

  /** A pipeline from loaded components (diffusers' `FluxPipeline(transformer=…, …)`). */
  static fromComponents(components: FluxComponents): FluxPipeline {
    return new FluxPipeline(components.transformer.dir, components, false);
  }

  /**
   * Loads a diffusers FLUX folder (model_index.json of a FluxPipeline). Text encoders listed as null
   * load as absent, and the pipeline then takes embeddings only. `quantize: 'int8'` reaches the
   * transformer and the text encoders, not the VAE.
   */
  static async fromPretrained(dir: string, options: LoadPipelineOptions = {}): Promise<FluxPipeline> {
    const { abs, index } = await readPipelineIndex(dir, options, FLUX_CLASSES, 'a FLUX pipeline');
    const clipClass = index.components.text_encoder?.[1];
    const transformerFolder = {
      folder: 'transformer',
      load: (path, o) => FluxTransformer2DModel.fromPretrained(path, o),
      checkIndex: () => {
        if (clipClass && clipClass !== 'CLIPTextModel') {
          throw new FileFormatError(
            `${join(abs, 'model_index.json')}: "text_encoder" is ${clipClass}; FLUX takes the pooled output of a CLIPTextModel`,
            'COMPONENT_CLASS',
            join(abs, 'text_encoder'),
          );
        }
      },
    } satisfies DenoiserFolder<FluxTransformer2DModel>;
    const loaded = await loadPipelineFolder(
      abs,
      index,
      options,
      transformerFolder,
      async (load, { denoiser: transformer, vae, scheduler }) => {
        const clipFolders = { tokenizer: 'tokenizer', textEncoder: 'text_encoder' };
        const clipEncoder = await ClipPromptEncoder.fromModelIndex(abs, index, clipFolders, load);
        if (clipEncoder) load.track(clipEncoder);
        const t5Folders = { tokenizer: 'tokenizer_2', textEncoder: 'text_encoder_2' };
        const t5Encoder = await T5PromptEncoder.fromModelIndex(abs, index, t5Folders, load);
        if (t5Encoder) load.track(t5Encoder);
        // Built here, so that the constructor's checks also close what was loaded when they fail.
        return new FluxPipeline(
          abs,
          { transformer, vae, scheduler, clipEncoder, t5Encoder, runtime: load.runtime },
          options.runtime === undefined,
        );
      },
    );
    return loaded.extra;
  }

  /** diffusers' `vae_scale_factor`: 2^(VAE levels − 1), 8 without a VAE. */
  get vaeScaleFactor(): number {
    return this.vae?.vaeScaleFactor ?? 8;
  }

  /** Default output size: diffusers' default_sample_size 128 × the VAE factor (1024 for FLUX.1). */
  get defaultSize(): number {
    return DEFAULT_SAMPLE_SIZE * this.vaeScaleFactor;
  }

  /** Latent channels C: the transformer reads 2×2 patches of them, in_channels = 4·C. */
  get numChannelsLatents(): number {
    return this.transformer.config.inChannels / 4;
  }

  async run(o: FluxRunOptions = {}): Promise<PipelineOutput> {
    return o.highres === undefined ? this.generate(o, this.scheduler) : this.runHighRes(o, o.highres);
  }

  /**
   * CLEAR's staged recipe (`highres`): the base image from this run's options, then each stage's
   * image-to-image on the image upscaled ×scale, with the stage's options over the notebook's.
   */
  private async runHighRes(
    o: FluxRunOptions,
    option: HighResOption<FluxHighResStage>,
  ): Promise<PipelineOutput> {
    const where = 'FluxPipeline.run';
    refuseImageToImage(o, where);
    const stages = highResStages(option, where).map((stage) => ({
      ...stage,
      strength: stage.strength ?? HIGHRES_STAGE_DEFAULTS.strength,
      numInferenceSteps: stage.numInferenceSteps ?? HIGHRES_STAGE_DEFAULTS.numInferenceSteps,
      guidanceScale: stage.guidanceScale ?? HIGHRES_STAGE_DEFAULTS.guidanceScale,
      ropeNtkFactor: stage.ropeNtkFactor ?? HIGHRES_STAGE_DEFAULTS.ropeNtkFactor,
      proportionalAttention: stage.proportionalAttention ?? HIGHRES_STAGE_DEFAULTS.proportionalAttention,
    }));
    // Checked before the base stage runs: NTK factors, attention options (CLEAR's window and file), shifts.
    for (const stage of stages) {
      checkRopeNtkFactor(stage.ropeNtkFactor, where);
      await this.transformer.resolveAcceleration(stage.attention);
    }
    const schedulers = stages.map((stage) => this.refineScheduler(stage.shift));
    const generator = resolveGenerator(o);
    const text = {
      prompt: o.prompt,
      prompt2: o.prompt2,
      negativePrompt: o.negativePrompt,
      negativePrompt2: o.negativePrompt2,
      trueCfgScale: o.trueCfgScale,
      promptEmbeds: o.promptEmbeds,
      pooledPromptEmbeds: o.pooledPromptEmbeds,
      negativePromptEmbeds: o.negativePromptEmbeds,
      negativePooledPromptEmbeds: o.negativePooledPromptEmbeds,
      numImagesPerPrompt: o.numImagesPerPrompt,
      maxSequenceLength: o.maxSequenceLength,
      callbackOnStepEnd: o.callbackOnStepEnd,
      onProgress: o.onProgress,
      signal: o.signal,
    };
    return runHighResStages({
      base: () =>
        this.generate(
          {
            ...o,
            highres: undefined,
            numInferenceSteps: o.numInferenceSteps ?? HIGHRES_BASE_STEPS,
            generator,
            outputType: 'image',
          },
          this.scheduler,
        ),
      stages,
      refine: (stage, image, index) =>
        this.generate(
          {
            ...text,
            image,
            strength: stage.strength,
            numInferenceSteps: stage.numInferenceSteps,
            guidanceScale: stage.guidanceScale,
            attention: stage.attention,
            ropeNtkFactor: stage.ropeNtkFactor,
            proportionalAttention: stage.proportionalAttention,
            generator,
            outputType: index === stages.length - 1 ? o.outputType : 'image',
          },
          schedulers[index],
        ),
    });
  }

  /**
   * A refine stage's scheduler: the folder's flow-matching config with dynamic shifting off, as the
   * notebook sets `use_dynamic_shifting = False`, and `shift` where given.
   */
  private refineScheduler(shift: number | undefined): Scheduler {
    if (!(this.scheduler instanceof FlowMatchEulerDiscreteScheduler)) {
      throw new OptionError(
        `FluxPipeline.run: highres refines with FlowMatchEulerDiscreteScheduler and a static shift, but the pipeline's scheduler is ${this.scheduler.constructor.name}`,
      );
    }
    return FlowMatchEulerDiscreteScheduler.fromConfig(this.scheduler.config, {
      use_dynamic_shifting: false,
      ...(shift === undefined ? {} : { shift }),
    });
  }

  /** One text-to-image or image-to-image run with `scheduler`. */
  private async generate(o: FluxRunOptions, scheduler: Scheduler): Promise<PipelineOutput> {
    const steps = o.numInferenceSteps ?? 28;
    const guidance = o.guidanceScale ?? 3.5;
    const trueCfgScale = o.trueCfgScale ?? 1;
    const perPrompt = o.numImagesPerPrompt ?? 1;
    const maxSequenceLength = o.maxSequenceLength ?? MAX_SEQUENCE_LENGTH;
    if (o.sigmas === undefined) checkInteger(steps, 'numInferenceSteps', 1);
    checkInteger(perPrompt, 'numImagesPerPrompt', 1);
    checkMaxSequenceLength(maxSequenceLength);
    if (!Number.isFinite(guidance)) throw new OptionError(`guidanceScale must be a number, got ${guidance}`);
    if (!Number.isFinite(trueCfgScale)) {
      throw new OptionError(`trueCfgScale must be a number, got ${trueCfgScale}`);
    }
    const ropeNtkFactor = o.ropeNtkFactor ?? 1;
    checkRopeNtkFactor(ropeNtkFactor, 'FluxPipeline.run');
    const proportionalAttention = o.proportionalAttention ?? false;
    const [height, width] = o.image
      ? imageHeightWidth(o.image, this.vaeScaleFactor, o)
      : [o.height ?? this.defaultSize, o.width ?? this.defaultSize];
    this.checkSize(height, width);
    // Once per run: CLEAR's window checked and its weights file opened before any encoder runs.
    const resolved = await this.transformer.resolveAcceleration(o.attention);

    // diffusers' check_inputs, whether or not true CFG runs.
    if (o.negativePromptEmbeds && !o.negativePooledPromptEmbeds) {
      throw new OptionError(
        'negativePooledPromptEmbeds must be given with negativePromptEmbeds (the CLIP pooled output, from the encoders that made them)',
      );
    }
    if (o.negativePromptEmbeds && (o.negativePrompt !== undefined || o.negativePrompt2 !== undefined)) {
      throw new OptionError('give either negativePrompt (2) or negativePromptEmbeds, not both');
    }
    const hasNegative =
      o.negativePrompt !== undefined ||
      (o.negativePromptEmbeds !== undefined && o.negativePooledPromptEmbeds !== undefined);
    const trueCfg = trueCfgScale > 1 && hasNegative;
    const cond = await this.encodePrompt(o, perPrompt, maxSequenceLength);
    const negative = trueCfg
      ? await this.encodeNegativePrompt(o, cond, perPrompt, maxSequenceLength)
      : undefined;
    const batch = cond.embeds.shape[0];

    // The latent grid, and the packed grid of 2×2 patches the transformer sees as tokens.
    const latentHeight = height / this.vaeScaleFactor;
    const latentWidth = width / this.vaeScaleFactor;
    const imageSeqLen = (latentHeight / 2) * (latentWidth / 2);
    const packedShape = [batch, imageSeqLen, this.transformer.config.inChannels];

    const sigmas = o.sigmas ?? Array.from(linspace(1, 1 / steps, steps));
    scheduler.setTimesteps(o.sigmas ? o.numInferenceSteps : steps, {
      sigmas,
      mu: this.dynamicShift(imageSeqLen),
    });
    const generator = resolveGenerator(o);
    let timesteps = [...scheduler.timesteps];
    let latents: HostTensor;
    if (o.image) {
      ({ timesteps } = strengthTimesteps(
        scheduler,
        timesteps.length / scheduler.order,
        o.strength ?? DEFAULT_STRENGTH,
        { initTimestep: 'float' },
      ));
      if (o.latents) {
        if (o.noise) throw new OptionError('give latents (the noised start) or noise, not both');
        latents = checkLatents(o.latents, packedShape);
      } else {
        // scale_noise on the unpacked latents, then packed (FluxImg2ImgPipeline.prepare_latents).
        const noised = await imageLatents({
          vae: requireVae(this.vae, 'image-to-image'),
          image: o.image,
          batch,
          numImagesPerPrompt: perPrompt,
          generator,
          scheduler,
          timestep: timesteps[0],
          noise: o.noise,
          shiftFactor: true,
        });
        latents = packLatents(noised);
      }
    } else {
      if (o.strength !== undefined || o.noise !== undefined) {
        throw new OptionError('strength and noise are image-to-image options: give an image too');
      }
      // diffusers draws the noise unpacked, so a seed gives the same latents as there.
      const shape = [batch, this.numChannelsLatents, latentHeight, latentWidth];
      latents = o.latents
        ? checkLatents(o.latents, packedShape)
        : packLatents(hostTensor('float32', shape, generator.randn(shape)));
      beginAt(scheduler, 0);
    }

    // The packed grid the img_ids lay out, given to the transformer so CLEAR need not read it back from them.
    const grid = { height: latentHeight / 2, width: latentWidth / 2 };
    const imgIds = latentImageIds(grid.height, grid.width);
    const guidanceInput = (n: number): Record<string, HostTensor> =>
      this.transformer.config.guidanceEmbeds
        ? { guidance: hostTensor('float32', [n], new Float32Array(n).fill(guidance)) }
        : {};
    const forward = async (
      hiddenStates: HostTensor,
      t: number,
      conditioning: TextConditioning,
    ): Promise<HostTensor> => {
      const n = hiddenStates.shape[0];
      const textTokens = conditioning.embeds.shape[1];
      const result = await this.transformer.step(
        {
          hidden_states: hiddenStates,
          // diffusers: t.expand(B) / 1000 in float32.
          timestep: hostTensor('float32', [n], new Float32Array(n).fill(t / 1000)),
          ...guidanceInput(n),
          pooled_projections: conditioning.pooled,
          encoder_hidden_states: conditioning.embeds,
          txt_ids: hostTensor('float32', [textTokens, 3], new Float32Array(textTokens * 3)),
          img_ids: imgIds,
        },
        {
          attention: resolved.attention,
          acceleration: resolved.acceleration,
          grid,
          ropeNtkFactor,
          proportionalAttention,
        },
      );
      return result.host.sample;
    };
    // Under true CFG both halves go through one call where the text lengths agree ([negative; positive]).
    const joined =
      negative && negative.embeds.shape[1] === cond.embeds.shape[1]
        ? {
            embeds: concatBatch(negative.embeds, cond.embeds),
            pooled: concatBatch(negative.pooled, cond.pooled),
          }
        : undefined;
    latents = await denoise({
      scheduler,
      timesteps,
      latents,
      generator,
      eta: 0,
      guidanceScale: trueCfgScale,
      cfgAt: () => trueCfg,
      predict: async (modelInput, t, _step, cfg) => {
        if (!cfg) return forward(modelInput, t, cond);
        if (joined) return forward(modelInput, t, joined);
        const [uncondInput, condInput] = splitBatch(modelInput);
        return concatBatch(
          await forward(uncondInput, t, negative as TextConditioning),
          await forward(condInput, t, cond),
        );
      },
      callbackOnStepEnd: o.callbackOnStepEnd,
      onProgress: o.onProgress,
      signal: o.signal,
    });
    if (o.outputType === 'latent') return { latents, timesteps };
    // diffusers: vae.decode(unpack(latents) / scaling_factor + shift_factor).
    const unpacked = unpackLatents(latents, latentHeight, latentWidth);
    const images = await decodeImages(requireVae(this.vae, 'image output'), unpacked, { shiftFactor: true });
    return { images, latents, timesteps };
  }

  /** Multiples of twice the VAE factor: the latents are packed into 2×2 patches. */
  private checkSize(height: number, width: number): void {
    const multiple = this.vaeScaleFactor * 2;
    for (const [name, v] of [
      ['height', height],
      ['width', width],
    ] as const) {
      checkInteger(v, name, 1);
      // diffusers warns and rounds down; velodiff asks for the size it will make.
      if (v % multiple !== 0) {
        throw new OptionError(
          `${name} ${v} must be a multiple of ${multiple} (VAE factor ${this.vaeScaleFactor} × 2 for the 2×2 latent patches); try ${Math.max(multiple, Math.round(v / multiple) * multiple)}`,
        );
      }
    }
  }

  /**
   * diffusers' `calculate_shift` of the image's token count with the scheduler config's keys (and
   * FluxPipeline's defaults where they are absent); schedulers without dynamic shifting ignore it.
   */
  private dynamicShift(imageSeqLen: number): number {
    return configShift(this.scheduler, imageSeqLen, 1.15);
  }

  /**
   * diffusers' FLUX `encode_prompt`: CLIP's pooled output of `prompt` and T5's last hidden state of
   * `prompt2` (default `prompt`), or the given embeddings with their pooled ones; repeated per image.
   */
  private async encodePrompt(
    o: FluxRunOptions,
    perPrompt: number,
    maxSequenceLength: number,
  ): Promise<TextConditioning> {
    const prompts = promptList(o);
    let conditioning: TextConditioning;
    if (prompts) {
      if (o.pooledPromptEmbeds) {
        throw new OptionError('give either prompt or pooledPromptEmbeds (with promptEmbeds), not both');
      }
      conditioning = await this.encodeTexts(
        prompts,
        orPrompt(o.prompt2, prompts, 'prompt2'),
        maxSequenceLength,
      );
    } else {
      if (o.prompt2 !== undefined) throw new OptionError('give either prompt2 or promptEmbeds, not both');
      if (!o.pooledPromptEmbeds) {
        throw new OptionError(
          'pooledPromptEmbeds must be given with promptEmbeds (the CLIP pooled output, from the encoders that made promptEmbeds)',
        );
      }
      conditioning = {
        embeds: checkEmbedsWidth('promptEmbeds', asFloat(o.promptEmbeds as HostTensor), this.transformer),
        pooled: asFloat(o.pooledPromptEmbeds),
      };
    }
    const count = conditioning.embeds.shape[0];
    checkEmbeds('pooledPromptEmbeds', conditioning.pooled, [
      count,
      this.transformer.config.pooledProjectionDim,
    ]);
    // diffusers repeats encoded prompts per image but passes given embeddings on as they are (a
    // batch mismatch for numImagesPerPrompt > 1); velodiff repeats both.
    return repeatConditioning(conditioning, perPrompt);
  }

  /** The negative side of true CFG, from negative embeddings or prompts encoded as `encodePrompt` does. */
  private async encodeNegativePrompt(
    o: FluxRunOptions,
    cond: TextConditioning,
    perPrompt: number,
    maxSequenceLength: number,
  ): Promise<TextConditioning> {
    const count = cond.embeds.shape[0] / perPrompt;
    let negative: TextConditioning;
    if (o.negativePromptEmbeds) {
      negative = {
        embeds: checkEmbedsWidth('negativePromptEmbeds', asFloat(o.negativePromptEmbeds), this.transformer),
        pooled: asFloat(o.negativePooledPromptEmbeds as HostTensor),
      };
      // diffusers: embeddings given on both sides must match.
      if (o.promptEmbeds) {
        checkEmbeds('negativePromptEmbeds', negative.embeds, o.promptEmbeds.shape);
      }
    } else {
      const negs = negativeList(o.negativePrompt, count);
      const negs2 = orPrompt(o.negativePrompt2, negs, 'negativePrompt2');
      negative = await this.encodeTexts(negs, negs2, maxSequenceLength);
    }
    checkEmbeds('negativePromptEmbeds', negative.embeds, [
      count,
      negative.embeds.shape[1],
      this.transformer.config.jointAttentionDim,
    ]);
    checkEmbeds('negativePooledPromptEmbeds', negative.pooled, [
      count,
      this.transformer.config.pooledProjectionDim,
    ]);
    return repeatConditioning(negative, perPrompt);
  }

  /** CLIP's pooled output of `clipTexts` and T5's last hidden state of `t5Texts` (max_sequence_length tokens). */
  private async encodeTexts(
    clipTexts: string[],
    t5Texts: string[],
    maxSequenceLength: number,
  ): Promise<TextConditioning> {
    const [clip, t5] = this.requireEncoders();
    const { poolerOutput } = await clip.encode(clipTexts, { kind: 'last' });
    if (!poolerOutput) {
      throw new OptionError(`${clip.textEncoder.dir}: FLUX takes the pooled output of a CLIPTextModel`);
    }
    const embeds = checkEmbedsWidth(
      'the T5 embeddings',
      await t5.encode(t5Texts, maxSequenceLength),
      this.transformer,
    );
    return { embeds, pooled: poolerOutput };
  }

  private requireEncoders(): [ClipPromptEncoder, T5PromptEncoder] {
    if (!this.clipEncoder || !this.t5Encoder) {
      const missing = [
        this.clipEncoder ? undefined : 'text_encoder (CLIP)',
        this.t5Encoder ? undefined : 'text_encoder_2 (T5)',
      ].filter((m) => m !== undefined);
      throw new OptionError(
        `this pipeline folder has no ${missing.join(' and ')} with its tokenizer (model_index.json lists them as null): pass promptEmbeds and pooledPromptEmbeds (and, for true CFG, negativePromptEmbeds and negativePooledPromptEmbeds)`,
      );
    }
    return [this.clipEncoder, this.t5Encoder];
  }

  // --- LoRA (diffusers' FluxLoraLoaderMixin) ----------------------------------------------------

  /** The transformer and the CLIP encoder (text_encoder); T5 takes no LoRA, as in diffusers. */
  protected loraTargets(): LoraTarget[] {
    const targets: LoraTarget[] = [
      {
        component: 'denoiser',
        adapters: this.transformer.adapters,
        modelParameters: this.transformer.weights,
      },
    ];
    const clip = this.clipEncoder?.textEncoder;
    if (clip)
      targets.push({ component: 'text_encoder', adapters: clip.adapters, modelParameters: clip.weights });
    return targets;
  }

  async close(): Promise<void> {
    await this.transformer.close();
    await this.vae?.close();
    await this.clipEncoder?.close();
    await this.t5Encoder?.close();
    if (this.ownsRuntime) await this.runtime.dispose();
  }
}

/**
 * diffusers' `_pack_latents`: [B, C, H, W] → [B, (H/2)·(W/2), 4·C], each token one 2×2 patch, its
 * features channel-major (c, dy, dx).
 */
export function packLatents(latents: HostTensor): HostTensor {
  const [batch, channels, height, width] = latents.shape;
  if (latents.shape.length !== 4 || height % 2 !== 0 || width % 2 !== 0) {
    throw new OptionError(
      `packLatents: expected [B, C, H, W] with even H and W, got [${latents.shape.join(', ')}]`,
    );
  }
  const source = asFloat(latents).data as Float32Array;
  const out = new Float32Array(source.length);
  const rows = height / 2;
  const columns = width / 2;
  let k = 0;
  for (let b = 0; b < batch; b++) {
    for (let i = 0; i < rows; i++) {
      for (let j = 0; j < columns; j++) {
        for (let c = 0; c < channels; c++) {
          const plane = (b * channels + c) * height;
          for (let dy = 0; dy < 2; dy++) {
            const row = (plane + 2 * i + dy) * width + 2 * j;
            out[k++] = source[row];
            out[k++] = source[row + 1];
          }
        }
      }
    }
  }
  return hostTensor('float32', [batch, rows * columns, 4 * channels], out);
}

/** diffusers' `_unpack_latents`: packed [B, (H/2)·(W/2), 4·C] back to [B, C, H, W] for the latent size H × W. */
export function unpackLatents(packed: HostTensor, height: number, width: number): HostTensor {
  const [batch, tokens, features] = packed.shape;
  const rows = height / 2;
  const columns = width / 2;
  if (packed.shape.length !== 3 || tokens !== rows * columns || features % 4 !== 0) {
    throw new OptionError(
      `unpackLatents: expected [B, ${rows * columns}, 4·C] for a ${height}×${width} latent, got [${packed.shape.join(', ')}]`,
    );
  }
  const channels = features / 4;
  const source = asFloat(packed).data as Float32Array;
  const out = new Float32Array(source.length);
  let k = 0;
  for (let b = 0; b < batch; b++) {
    for (let i = 0; i < rows; i++) {
      for (let j = 0; j < columns; j++) {
        for (let c = 0; c < channels; c++) {
          const plane = (b * channels + c) * height;
          for (let dy = 0; dy < 2; dy++) {
            const row = (plane + 2 * i + dy) * width + 2 * j;
            out[row] = source[k++];
            out[row + 1] = source[k++];
          }
        }
      }
    }
  }
  return hostTensor('float32', [batch, channels, height, width], out);
}

/** diffusers' `_prepare_latent_image_ids`: (0, row, column) per packed token, [rows·columns, 3]. */
export function latentImageIds(rows: number, columns: number): HostTensor {
  const ids = new Float32Array(rows * columns * 3);
  for (let i = 0; i < rows; i++) {
    for (let j = 0; j < columns; j++) {
      ids[(i * columns + j) * 3 + 1] = i;
      ids[(i * columns + j) * 3 + 2] = j;
    }
  }
  return hostTensor('float32', [rows * columns, 3], ids);
}

/** The transformer reads 2×2 patches of the VAE's latents and writes as many features back. */
function checkLatentChannels(transformer: FluxTransformer2DModel, vae: AutoencoderKL): void {
  const { inChannels, outChannels, patchSize } = transformer.config;
  const packed = 4 * vae.config.latentChannels;
  if (inChannels !== packed || outChannels * patchSize * patchSize !== inChannels) {
    throw new FileFormatError(
      `${transformer.dir}: in_channels ${inChannels} and out_channels ${outChannels} (patch size ${patchSize}) must both be 4 × the VAE's latent_channels ${vae.config.latentChannels} = ${packed}: FLUX packs the latents into 2×2 patches`,
      'CONFIG_VALUE',
      transformer.dir,
    );
  }
}

function checkLatents(latents: HostTensor, shape: readonly number[]): HostTensor {
  if (latents.shape.join() !== shape.join()) {
    const unpacked = latents.shape.length === 4 ? ' (unpacked latents: pack them with packLatents)' : '';
    throw new OptionError(
      `latents: expected packed shape [${shape.join(', ')}] (batch, 2×2 patches, 4 × latent channels), got [${latents.shape.join(', ')}]${unpacked}`,
    );
  }
  if (latents.dtype !== 'float32') throw new OptionError(`latents must be float32, got ${latents.dtype}`);
  return latents;
}

/** diffusers' `set_begin_index(0)` before the loop, for schedulers that keep a step index. */
function beginAt(scheduler: Scheduler, index: number): void {
  const indexed = scheduler as Scheduler & { setBeginIndex?: (index: number) => void };
  if (typeof indexed.setBeginIndex === 'function') indexed.setBeginIndex(index);
}
