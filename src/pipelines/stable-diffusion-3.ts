/**
 * Stable Diffusion 3 / 3.5 (diffusers' `StableDiffusion3Pipeline`, `StableDiffusion3Img2ImgPipeline`):
 * an SD3Transformer2DModel (MMDiT) sampled by flow matching, conditioned on three text encoders —
 * CLIP-L and CLIP-G, whose penultimate hidden states are joined along the channels and zero-padded to
 * T5's width, with T5's last hidden state appended along the sequence; the two CLIP `text_embeds`
 * joined as the pooled embedding — and a 16-channel VAE whose latents are shifted and scaled.
 */
import { OptionError } from '../errors.js';
import type { LoadedLora } from '../lora/adapters.js';
import { loadFlashFlowMatchLora } from '../lora/flash.js';
import type { LoraTarget } from '../lora/pipeline-adapters.js';
import { LoraPipeline } from '../lora/pipeline-adapters.js';
import type { AutoencoderKL } from '../models/autoencoder-kl.js';
import { SD3Transformer2DModel } from '../models/sd3-transformer.js';
import type { HostTensor } from '../runtime/host-tensor.js';
import { hostTensor } from '../runtime/host-tensor.js';
import type { Runtime } from '../runtime/runtime.js';
import type { Scheduler } from '../schedulers/scheduler.js';
import { asFloat, checkInteger, concatBatch, concatLastAxis, repeatBatch } from './batch.js';
import { ClipPromptEncoder } from './clip-prompt.js';
import type { PipelineOutput } from './denoise.js';
import { decodeImages, denoise, initialLatents, resolveGenerator } from './denoise.js';
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
import { imageHeightWidth, imageLatents, strengthTimesteps } from './image-to-image.js';
import { T5PromptEncoder, checkMaxSequenceLength } from './t5-prompt.js';
import type { DenoiserFolder, LoadPipelineOptions, RunDefaults } from './unet-pipeline.js';
import {
  checkEmbeds,
  loadPipelineFolder,
  negativeList,
  promptList,
  readPipelineIndex,
} from './unet-pipeline.js';

/** Options of `run` (diffusers' `__call__` arguments in camelCase). */
export interface StableDiffusion3RunOptions extends FlowMatchingRunOptions {
  /** The prompt for every encoder unless prompt2 / prompt3 say otherwise. */
  prompt?: string | string[];
  /** The prompt for tokenizer_2 / text_encoder_2 (CLIP-G); default `prompt`. */
  prompt2?: string | string[];
  /** The prompt for tokenizer_3 / text_encoder_3 (T5); default `prompt`. */
  prompt3?: string | string[];
  /** Default "" (encoded, as diffusers does; never zeros). */
  negativePrompt?: string | string[];
  negativePrompt3?: string | string[];
  /** Precomputed embeddings [B, 77 + T5 tokens, joint_attention_dim], instead of prompts. */
  promptEmbeds?: HostTensor;
  /** With promptEmbeds: both CLIP `text_embeds` joined, [B, pooled_projection_dim]. */
  pooledPromptEmbeds?: HostTensor;
  /** Initial latents [B·n, C, H/f, W/f] (text-to-image), or the already noised start (image-to-image). */
  latents?: HostTensor;
  /** Default 28 (50 for StableDiffusion3Img2ImgPipeline). */
  numInferenceSteps?: number;
  /** Custom noise levels, one per step, instead of the scheduler's schedule. */
  sigmas?: number[];
  /** The exponent of the dynamic shift; computed from the image size when the scheduler uses it. */
  mu?: number;
  /** Classifier-free guidance scale; guidance runs when > 1. Default 7. */
  guidanceScale?: number;
  /** Layers skipped from the end of both CLIP encoders for the prompt (hidden_states[−(k + 2)]). */
  clipSkip?: number;
}

export const STABLE_DIFFUSION_3_CLASSES = [
  'StableDiffusion3Pipeline',
  'StableDiffusion3Img2ImgPipeline',
] as const;
export type StableDiffusion3ClassName = (typeof STABLE_DIFFUSION_3_CLASSES)[number];

const DEFAULTS: Readonly<Record<StableDiffusion3ClassName, RunDefaults>> = {
  StableDiffusion3Pipeline: { numInferenceSteps: 28, guidanceScale: 7 },
  StableDiffusion3Img2ImgPipeline: { numInferenceSteps: 50, guidanceScale: 7, strength: 0.6 },
};

export interface StableDiffusion3Components extends FlowMatchingComponents<SD3Transformer2DModel> {
  /**
   * tokenizer + text_encoder (CLIP-L) and tokenizer_2 + text_encoder_2 (CLIP-G), both
   * CLIPTextModelWithProjection; empty in folders for embeddings only.
   */
  clipEncoders?: ClipPromptEncoder[];
  /** tokenizer_3 + text_encoder_3; without it the T5 part of the embeddings is zeros, as in diffusers. */
  t5Encoder?: T5PromptEncoder;
}

/** The transformer's conditioning, each repeated per image: the positive half and (under CFG) the negative one. */
interface SD3Conditioning extends TextConditioning {
  negEmbeds?: HostTensor;
  negPooled?: HostTensor;
}

type Parts = [
  string,
  Required<Omit<StableDiffusion3Components, 't5Encoder' | 'runtime'>>,
  T5PromptEncoder | undefined,
  Runtime,
  boolean,
];

/**
 * Text-to-image with SD3 / SD3.5 folders, and image-to-image through `run({ image, strength })`.
 * Options are diffusers' `__call__` arguments in camelCase; see StableDiffusion3RunOptions.
 */
export class StableDiffusion3Pipeline extends LoraPipeline {
  readonly defaults: RunDefaults;
  readonly transformer: SD3Transformer2DModel;
  readonly vae: AutoencoderKL | undefined;
  scheduler: Scheduler;
  readonly clipEncoders: readonly ClipPromptEncoder[];

  protected constructor(
    readonly className: StableDiffusion3ClassName,
    readonly dir: string,
    components: Omit<StableDiffusion3Components, 't5Encoder' | 'runtime'>,
    readonly t5Encoder: T5PromptEncoder | undefined,
    readonly runtime: Runtime,
    private readonly ownsRuntime: boolean,
  ) {
    super();
    this.defaults = DEFAULTS[className];
    this.transformer = components.transformer;
    this.vae = components.vae;
    this.scheduler = components.scheduler;
    this.clipEncoders = components.clipEncoders ?? [];
  }

  /** A pipeline from loaded components (diffusers' `StableDiffusion3Pipeline(transformer=…, …)`). */
  static fromComponents(
    components: StableDiffusion3Components,
    className: StableDiffusion3ClassName = 'StableDiffusion3Pipeline',
  ): StableDiffusion3Pipeline {
    return new StableDiffusion3Pipeline(
      className,
      components.transformer.dir,
      components,
      components.t5Encoder,
      components.runtime,
      false,
    );
  }

  /**
   * Loads a diffusers SD3 folder (model_index.json with one of STABLE_DIFFUSION_3_CLASSES). Text
   * encoders listed as null load as absent: without the CLIP pair the pipeline takes embeddings only,
   * without T5 its part of the embeddings is zeros. `quantize: 'int8'` reaches the transformer and the
   * text encoders, not the VAE.
   */
  static async fromPretrained(
    dir: string,
    options: LoadPipelineOptions = {},
  ): Promise<StableDiffusion3Pipeline> {
    const parts = await StableDiffusion3Pipeline.loadParts(dir, options);
    return new StableDiffusion3Pipeline(parts.className, ...parts.rest);
  }

  /** The folder's components; `as` overrides the class whose defaults the pipeline takes. */
  protected static async loadParts(
    dir: string,
    options: LoadPipelineOptions,
    as?: StableDiffusion3ClassName,
  ): Promise<{ className: StableDiffusion3ClassName; rest: Parts }> {
    const { abs, index, className } = await readPipelineIndex(
      dir,
      options,
      STABLE_DIFFUSION_3_CLASSES,
      'a Stable Diffusion 3 pipeline',
    );
    const transformerFolder = {
      folder: 'transformer',
      load: (path, o) => SD3Transformer2DModel.fromPretrained(path, o),
    } satisfies DenoiserFolder<SD3Transformer2DModel>;
    const loaded = await loadPipelineFolder(abs, index, options, transformerFolder, async (load) => {
      const clipEncoders: ClipPromptEncoder[] = [];
      for (const [tokenizer, textEncoder] of [
        ['tokenizer', 'text_encoder'],
        ['tokenizer_2', 'text_encoder_2'],
      ]) {
        const folders = { tokenizer, textEncoder };
        const encoder = await ClipPromptEncoder.fromModelIndex(abs, index, folders, load);
        if (encoder) clipEncoders.push(load.track(encoder));
      }
      const t5Folders = { tokenizer: 'tokenizer_3', textEncoder: 'text_encoder_3' };
      const t5 = await T5PromptEncoder.fromModelIndex(abs, index, t5Folders, load);
      return { clipEncoders, t5: t5 && load.track(t5) };
    });
    const { denoiser: transformer, vae, scheduler } = loaded;
    return {
      className: as ?? className,
      rest: [
        abs,
        { transformer, vae, scheduler, clipEncoders: loaded.extra.clipEncoders },
        loaded.extra.t5,
        loaded.runtime,
        loaded.ownsRuntime,
      ],
    };
  }

  /** diffusers' `vae_scale_factor`: 2^(VAE levels − 1), 8 without a VAE. */
  get vaeScaleFactor(): number {
    return this.vae?.vaeScaleFactor ?? 8;
  }

  /** Default output size: the transformer's sample_size × the VAE factor (1024 for SD3 medium). */
  get defaultSize(): number {
    return this.transformer.config.sampleSize * this.vaeScaleFactor;
  }

  async run(o: StableDiffusion3RunOptions = {}): Promise<PipelineOutput> {
    const guidance = o.guidanceScale ?? this.defaults.guidanceScale;
    const perPrompt = o.numImagesPerPrompt ?? 1;
    const maxSequenceLength = o.maxSequenceLength ?? 256;
    checkInteger(perPrompt, 'numImagesPerPrompt', 1);
    if (o.numInferenceSteps !== undefined) checkInteger(o.numInferenceSteps, 'numInferenceSteps', 1);
    checkMaxSequenceLength(maxSequenceLength);
    if (!Number.isFinite(guidance)) throw new OptionError(`guidanceScale must be a number, got ${guidance}`);
    if (o.clipSkip !== undefined) checkInteger(o.clipSkip, 'clipSkip', 0);
    if (this.defaults.strength !== undefined && !o.image) {
      throw new OptionError(`${this.className} needs an image (run({ image, strength }))`);
    }
    const [height, width] = o.image
      ? imageHeightWidth(o.image, this.vaeScaleFactor, o)
      : [o.height ?? this.defaultSize, o.width ?? this.defaultSize];
    this.checkSize(height, width);
    const cfg = guidance > 1;
    const cond = await this.encodePrompt(o, cfg, perPrompt, maxSequenceLength);
    const batch = cond.embeds.shape[0];

    const factor = this.vaeScaleFactor;
    const { inChannels, patchSize } = this.transformer.config;
    const latentShape = [batch, inChannels, height / factor, width / factor];
    const scheduler = this.scheduler;
    // diffusers' retrieve_timesteps: custom sigmas set the step count; dynamic shifting needs mu.
    const steps = o.sigmas ? o.numInferenceSteps : (o.numInferenceSteps ?? this.defaults.numInferenceSteps);
    const imageSeqLen = (height / factor / patchSize) * (width / factor / patchSize);
    scheduler.setTimesteps(steps, { sigmas: o.sigmas, mu: o.mu ?? this.dynamicShift(imageSeqLen) });
    const generator = resolveGenerator(o);
    let timesteps = [...scheduler.timesteps];
    let latents: HostTensor;
    if (o.image) {
      const strength = o.strength ?? this.defaults.strength ?? 0.6;
      const scheduled = timesteps.length / scheduler.order;
      ({ timesteps } = strengthTimesteps(scheduler, scheduled, strength, { initTimestep: 'float' }));
      if (o.latents) {
        if (o.noise) throw new OptionError('give latents (the noised start) or noise, not both');
        latents = initialLatents(latentShape, o.latents, generator, 1);
      } else {
        latents = await imageLatents({
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
      }
    } else {
      if (o.strength !== undefined || o.noise !== undefined) {
        throw new OptionError('strength and noise are image-to-image options: give an image too');
      }
      // diffusers' SD3 prepare_latents does not scale by init_noise_sigma (1 for flow matching).
      latents = initialLatents(latentShape, o.latents, generator, 1);
    }

    // The CFG pair [negative; positive], fed whole at every step.
    const encoderHiddenStates = cfg ? concatBatch(cond.negEmbeds as HostTensor, cond.embeds) : cond.embeds;
    const pooledProjections = cfg ? concatBatch(cond.negPooled as HostTensor, cond.pooled) : cond.pooled;
    latents = await denoise({
      scheduler,
      timesteps,
      latents,
      generator,
      eta: 0,
      guidanceScale: guidance,
      latentChannels: inChannels,
      cfgAt: () => cfg,
      predict: async (modelInput, t) => {
        const n = modelInput.shape[0];
        const out = await this.transformer.forward({
          hidden_states: modelInput,
          // The scheduler's timestep (σ · num_train_timesteps) expanded to the batch.
          timestep: hostTensor('float32', [n], new Float32Array(n).fill(t)),
          encoder_hidden_states: encoderHiddenStates,
          pooled_projections: pooledProjections,
        });
        return out.sample;
      },
      callbackOnStepEnd: o.callbackOnStepEnd,
      onProgress: o.onProgress,
      signal: o.signal,
    });
    if (o.outputType === 'latent') return { latents, timesteps };
    // diffusers: vae.decode(latents / scaling_factor + shift_factor).
    const images = await decodeImages(requireVae(this.vae, 'image output'), latents, { shiftFactor: true });
    return { images, latents, timesteps };
  }

  /** Multiples of VAE factor × patch size, within the transformer's position-embedding table. */
  private checkSize(height: number, width: number): void {
    const { patchSize, posEmbedMaxSize } = this.transformer.config;
    const multiple = this.vaeScaleFactor * patchSize;
    const largest = posEmbedMaxSize * multiple;
    for (const [name, v] of [
      ['height', height],
      ['width', width],
    ] as const) {
      checkInteger(v, name, 1);
      if (v % multiple !== 0) {
        throw new OptionError(
          `${name} ${v} must be a multiple of ${multiple} (VAE factor ${this.vaeScaleFactor} × patch size ${patchSize}); try ${Math.max(multiple, Math.round(v / multiple) * multiple)}`,
        );
      }
      if (v > largest) {
        throw new OptionError(
          `${name} ${v} is larger than the transformer's position embeddings reach: at most pos_embed_max_size ${posEmbedMaxSize} × ${multiple} = ${largest}`,
        );
      }
    }
  }

  /**
   * diffusers' `calculate_shift` of the image's token count when the scheduler shifts dynamically
   * (SD3.5 large turbo folders do not; some fine-tunes do), else undefined.
   */
  private dynamicShift(imageSeqLen: number): number | undefined {
    const config = this.scheduler.config as Record<string, unknown>;
    if (config.use_dynamic_shifting !== true) return undefined;
    // The pipeline's max_shift fallback is 1.16, the scheduler's default 1.15.
    return configShift(this.scheduler, imageSeqLen, 1.16);
  }

  /**
   * diffusers' SD3 `encode_prompt`: prompts through the three encoders (clipSkip for the prompt only,
   * the negative prompt always hidden_states[−2]), or the given embeddings with their pooled ones;
   * under CFG the negative prompt (default "") encoded the same way. Every part is repeated per image.
   */
  private async encodePrompt(
    o: StableDiffusion3RunOptions,
    cfg: boolean,
    perPrompt: number,
    maxSequenceLength: number,
  ): Promise<SD3Conditioning> {
    const prompts = promptList(o);
    let embeds: HostTensor;
    let pooled: HostTensor;
    if (prompts) {
      const fromEnd = o.clipSkip === undefined ? 2 : o.clipSkip + 2;
      const prompts2 = orPrompt(o.prompt2, prompts, 'prompt2');
      const prompts3 = orPrompt(o.prompt3, prompts, 'prompt3');
      ({ embeds, pooled } = await this.encodeTexts(
        [prompts, prompts2, prompts3],
        fromEnd,
        maxSequenceLength,
      ));
    } else {
      if (o.prompt2 !== undefined || o.prompt3 !== undefined) {
        throw new OptionError('give either prompt2/prompt3 or promptEmbeds, not both');
      }
      if (!o.pooledPromptEmbeds) {
        throw new OptionError(
          'pooledPromptEmbeds must be given with promptEmbeds (both CLIP text_embeds joined, from the encoders that made promptEmbeds)',
        );
      }
      embeds = checkEmbedsWidth('promptEmbeds', asFloat(o.promptEmbeds as HostTensor), this.transformer);
      pooled = asFloat(o.pooledPromptEmbeds);
    }
    const count = embeds.shape[0];
    checkEmbeds('pooledPromptEmbeds', pooled, [count, this.transformer.config.pooledProjectionDim]);

    let negEmbeds = o.negativePromptEmbeds && asFloat(o.negativePromptEmbeds);
    let negPooled = o.negativePooledPromptEmbeds && asFloat(o.negativePooledPromptEmbeds);
    if (negEmbeds && !negPooled) {
      throw new OptionError('negativePooledPromptEmbeds must be given with negativePromptEmbeds');
    }
    const negativePrompts = [o.negativePrompt, o.negativePrompt2, o.negativePrompt3];
    if (negEmbeds && negativePrompts.some((p) => p !== undefined)) {
      throw new OptionError('give either negativePrompt (2, 3) or negativePromptEmbeds, not both');
    }
    if (cfg && !negEmbeds) {
      if (this.clipEncoders.length === 0) {
        throw new OptionError(
          'guidance needs negativePromptEmbeds and negativePooledPromptEmbeds when the pipeline has no text encoders',
        );
      }
      const negs = negativeList(o.negativePrompt || undefined, count);
      const negs2 = negativeList(
        o.negativePrompt2 || o.negativePrompt || undefined,
        count,
        'negativePrompt2',
      );
      const negs3 = negativeList(
        o.negativePrompt3 || o.negativePrompt || undefined,
        count,
        'negativePrompt3',
      );
      ({ embeds: negEmbeds, pooled: negPooled } = await this.encodeTexts(
        [negs, negs2, negs3],
        2,
        maxSequenceLength,
      ));
    }
    if (cfg) {
      checkEmbeds('negativePromptEmbeds', negEmbeds, embeds.shape);
      checkEmbeds('negativePooledPromptEmbeds', negPooled, pooled.shape);
    }
    // diffusers repeats encoded prompts per image but passes given embeddings on as they are (a
    // batch mismatch for numImagesPerPrompt > 1); velodiff repeats both.
    return {
      ...repeatConditioning({ embeds, pooled }, perPrompt),
      negEmbeds: cfg ? repeatBatch(negEmbeds as HostTensor, perPrompt) : undefined,
      negPooled: cfg ? repeatBatch(negPooled as HostTensor, perPrompt) : undefined,
    };
  }

  /**
   * `texts[i]` through encoder i: CLIP-L's and CLIP-G's hidden_states[−fromEnd] joined along the
   * channels and zero-padded to T5's width, T5's last hidden state (zeros [B, maxSequenceLength,
   * joint_attention_dim] without T5) appended along the sequence; both CLIP text_embeds joined.
   */
  private async encodeTexts(
    texts: [string[], string[], string[]],
    fromEnd: number,
    maxSequenceLength: number,
  ): Promise<TextConditioning> {
    const [clipL, clipG] = this.requireClipEncoders();
    // diffusers pads both CLIP prompts to the first tokenizer's model_max_length.
    const clipLength = clipL.maxLength;
    const l = await clipL.encode(texts[0], { kind: 'raw', fromEnd }, clipLength);
    const g = await clipG.encode(texts[1], { kind: 'raw', fromEnd }, clipLength);
    if (!l.pooled || !g.pooled) {
      const plain = l.pooled ? clipG : clipL;
      throw new OptionError(
        `${plain.textEncoder.dir}: SD3 takes the pooled text_embeds of both CLIP encoders, so both must be CLIPTextModelWithProjection`,
      );
    }
    const t5 = this.t5Encoder
      ? checkEmbedsWidth(
          'the T5 embeddings',
          await this.t5Encoder.encode(texts[2], maxSequenceLength),
          this.transformer,
        )
      : zeros([texts[2].length, maxSequenceLength, this.transformer.config.jointAttentionDim]);
    const clip = padLastAxis(concatLastAxis([l.hidden, g.hidden]), t5.shape[2]);
    return { embeds: concatSequence(clip, t5), pooled: concatLastAxis([l.pooled, g.pooled]) };
  }

  private requireClipEncoders(): [ClipPromptEncoder, ClipPromptEncoder] {
    const encoders = this.clipEncoders;
    if (encoders.length === 0) {
      throw new OptionError(
        'this pipeline folder has no CLIP text encoders/tokenizers (model_index.json lists them as null): pass promptEmbeds and pooledPromptEmbeds (and, for guidance, negativePromptEmbeds and negativePooledPromptEmbeds)',
      );
    }
    if (encoders.length !== 2) {
      throw new OptionError(
        `SD3 prompts need both CLIP encoders (text_encoder and text_encoder_2 with their tokenizers); this pipeline has only ${encoders[0].textEncoder.dir}`,
      );
    }
    return [encoders[0], encoders[1]];
  }

  // --- LoRA (diffusers' SD3LoraLoaderMixin) ------------------------------------------------------

  /** The transformer and, when the pipeline has both, the CLIP encoders text_encoder and text_encoder_2. */
  protected loraTargets(): LoraTarget[] {
    const targets: LoraTarget[] = [
      {
        component: 'denoiser',
        adapters: this.transformer.adapters,
        modelParameters: this.transformer.weights,
      },
    ];
    // With one encoder its folder is unknown here; SD3 prompts need both anyway (requireClipEncoders).
    if (this.clipEncoders.length === 2) {
      const [clipL, clipG] = this.clipEncoders.map((encoder) => encoder.textEncoder);
      targets.push(
        { component: 'text_encoder', adapters: clipL.adapters, modelParameters: clipL.weights },
        { component: 'text_encoder_2', adapters: clipG.adapters, modelParameters: clipG.weights },
      );
    }
    return targets;
  }

  /**
   * The flash-sd3 recipe (methods/tgate_flash.md §2.5): the PEFT LoRA of jasperai/flash-sd3 loaded
   * onto the transformer and fused at its own alpha/r (8/64), FlashFlowMatchEulerDiscreteScheduler
   * from this pipeline's scheduler config (shift 3 for SD3-medium), and the run options 4 steps,
   * guidance 0 — with which `run` encodes no negative prompt and runs no CFG batch, as diffusers.
   */
  async useFlashDiffusion(
    path: string,
    options: { adapterName?: string; fuse?: boolean } = {},
  ): Promise<{
    adapter: LoadedLora;
    runOptions: Pick<StableDiffusion3RunOptions, 'numInferenceSteps' | 'guidanceScale'>;
  }> {
    const flash = await loadFlashFlowMatchLora(this.transformer.adapters, path, {
      modelParameters: this.transformer.weights,
      schedulerConfig: this.scheduler.config as Record<string, unknown>,
      adapterName: options.adapterName,
      fuse: options.fuse,
    });
    this.scheduler = flash.scheduler;
    return { adapter: flash.adapter, runOptions: flash.runOptions };
  }

  async close(): Promise<void> {
    await this.transformer.close();
    await this.vae?.close();
    for (const encoder of this.clipEncoders) await encoder.close();
    await this.t5Encoder?.close();
    if (this.ownsRuntime) await this.runtime.dispose();
  }
}

/**
 * diffusers' `StableDiffusion3Img2ImgPipeline`: the same pipeline with an image required, strength
 * 0.6 and 50 steps by default. Any SD3 folder loads as it.
 */
export class StableDiffusion3Img2ImgPipeline extends StableDiffusion3Pipeline {
  static override async fromPretrained(
    dir: string,
    options: LoadPipelineOptions = {},
  ): Promise<StableDiffusion3Img2ImgPipeline> {
    const parts = await StableDiffusion3Pipeline.loadParts(dir, options, 'StableDiffusion3Img2ImgPipeline');
    return new StableDiffusion3Img2ImgPipeline(parts.className, ...parts.rest);
  }
}

function zeros(shape: number[]): HostTensor {
  return hostTensor('float32', shape, new Float32Array(shape.reduce((a, b) => a * b, 1)));
}

/** [B, L, C] zero-padded to [B, L, width] (torch.nn.functional.pad(x, (0, width − C))). */
function padLastAxis(t: HostTensor, width: number): HostTensor {
  const [batch, length, channels] = t.shape;
  if (channels > width) {
    throw new OptionError(
      `the CLIP hidden states are ${channels} wide together, wider than the T5 embeddings (${width}); SD3 pads them to T5's width`,
    );
  }
  if (channels === width) return t;
  const out = new Float32Array(batch * length * width);
  const data = t.data as Float32Array;
  for (let row = 0; row < batch * length; row++) {
    out.set(data.subarray(row * channels, (row + 1) * channels), row * width);
  }
  return hostTensor('float32', [batch, length, width], out);
}

/** [B, L1, C] and [B, L2, C] joined along the sequence axis (torch.cat(…, dim=-2)). */
function concatSequence(first: HostTensor, second: HostTensor): HostTensor {
  const [batch, length1, channels] = first.shape;
  const length2 = second.shape[1];
  const item1 = length1 * channels;
  const item2 = length2 * channels;
  const out = new Float32Array(batch * (item1 + item2));
  for (let b = 0; b < batch; b++) {
    out.set((first.data as Float32Array).subarray(b * item1, (b + 1) * item1), b * (item1 + item2));
    out.set((second.data as Float32Array).subarray(b * item2, (b + 1) * item2), b * (item1 + item2) + item1);
  }
  return hostTensor('float32', [batch, length1 + length2, channels], out);
}
