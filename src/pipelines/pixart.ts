import { join, resolve } from 'node:path';
import { FileFormatError, OptionError } from '../errors.js';
import type { ModelIndex } from '../io/diffusers.js';
import { readModelIndex } from '../io/diffusers.js';
import { readTextFile } from '../io/text.js';
import { AutoencoderKL } from '../models/autoencoder-kl.js';
import type { QuantizeOption } from '../models/int8.js';
import { checkQuantizeOption } from '../models/int8.js';
import { PixArtTransformer2DModel } from '../models/pixart-transformer.js';
import type { WarningHandler } from '../warnings.js';
import type { NoiseGenerator } from '../random/torch-generator.js';
import type { HostTensor } from '../runtime/host-tensor.js';
import { hostTensor } from '../runtime/host-tensor.js';
import { Runtime } from '../runtime/runtime.js';
import type { Scheduler } from '../schedulers/scheduler.js';
import type { TGateOptions } from '../attention/tgate.js';
import { TGateCaches, pruneDeadStores, tgatePlan } from '../attention/tgate.js';
import type { AttentionOption } from '../attention/types.js';
import type { LoadedLora } from '../lora/adapters.js';
import { loadFlashLora } from '../lora/flash.js';
import { schedulerFromConfig } from '../schedulers/index.js';
import { asFloat, checkInteger, concatBatch, repeatBatch } from './batch.js';
import type { LoopCallbacks, PipelineOutput } from './denoise.js';
import { decodeImages, denoise, initialLatents, resolveGenerator } from './denoise.js';
import type { ImageToImageOptions } from './image-to-image.js';
import type { HighResOption, HighResStage } from './highres.js';
import { highResStages, refuseImageToImage, runHighResStages } from './highres.js';
import { imageHeightWidth, imageLatents, strengthTimesteps } from './image-to-image.js';
import type { PromptEncoder } from './prompt.js';
import { loadT5PromptEncoder } from './prompt.js';
import { aspectRatioBinsFor, classifyHeightWidthBin, resizeAndCropTensor } from './resolution-binning.js';

export interface PixArtRunOptions extends LoopCallbacks, ImageToImageOptions {
  prompt?: string | string[];
  negativePrompt?: string | string[];
  /** Precomputed T5 embeddings [B, L, C] with their masks [B, L] (1 = keep), instead of prompts. */
  promptEmbeds?: HostTensor;
  promptAttentionMask?: HostTensor;
  negativePromptEmbeds?: HostTensor;
  negativePromptAttentionMask?: HostTensor;
  /** Initial latents [B·n, C, H/8, W/8]; drawn from the generator when absent. */
  latents?: HostTensor;
  numInferenceSteps?: number;
  /** Classifier-free guidance scale; guidance runs when > 1 (diffusers' rule). */
  guidanceScale?: number;
  height?: number;
  width?: number;
  /**
   * diffusers' `use_resolution_binning`: generate at the nearest trained aspect-ratio bin, then resize
   * and center-crop the image to height × width. Default on where the transformer's sample_size has
   * a bin table (all released checkpoints), off elsewhere; `true` there is an error, as in diffusers.
   */
  useResolutionBinning?: boolean;
  numImagesPerPrompt?: number;
  /** Seed of a torch-compatible CPU generator (same seed → same latents as diffusers on CPU). */
  seed?: number;
  generator?: NoiseGenerator;
  /** DDIM's eta (ignored by schedulers without it). */
  eta?: number;
  /** Tokens per prompt (default 120 for PixArt-α, 300 for PixArt-Σ). */
  maxSequenceLength?: number;
  outputType?: 'image' | 'latent';
  /** T-GATE (methods/tgate_flash.md §1): cache attention outputs after the gate step and drop CFG. */
  tgate?: TGateOptions;
  /** Self-attention kernel: full (default), CLEAR or LinFusion, with the method's weights. */
  attention?: AttentionOption;
  /**
   * The staged high-resolution recipe CLEAR runs on FLUX (methods/clear_linfusion.md §1.7.2), with
   * PixArt's image-to-image: this run's options make the base image (at height × width, with the
   * run's attention), then each stage resizes the image ×scale as PIL's bicubic and refines it at
   * the new size with the stage's attention (e.g. a CLEAR student; default full) and T-GATE.
   * Defaults: strength 0.7, the run's numInferenceSteps and guidanceScale. The prompt options,
   * numImagesPerPrompt, maxSequenceLength, eta and the callbacks reach every stage; the noise of
   * every stage comes from the run's generator; outputType applies to the last stage.
   */
  highres?: HighResOption<PixArtHighResStage>;
}

/** A refine stage of PixArtPipeline's `highres`. */
export interface PixArtHighResStage extends HighResStage {
  tgate?: TGateOptions;
}

/** The refine strength of CLEAR's notebook (methods/clear_linfusion.md §1.7.2). */
const HIGHRES_STRENGTH = 0.7;

export type { AttentionOption } from '../attention/types.js';
export type { ProgressEvent, StepEndInfo } from './denoise.js';

export interface GeneratedImage {
  width: number;
  height: number;
  /** 8-bit RGB, row-major. */
  rgb: Uint8Array;
}

export type PixArtOutput = PipelineOutput;

/** The PixArt-α / PixArt-Σ text-to-image pipeline (diffusers `PixArtAlphaPipeline`, `PixArtSigmaPipeline`). */
export class PixArtPipeline {
  private constructor(
    readonly className: string,
    readonly dir: string,
    readonly transformer: PixArtTransformer2DModel,
    /** Absent in pipelines built from components for latent output only. */
    readonly vae: AutoencoderKL | undefined,
    public scheduler: Scheduler,
    readonly promptEncoder: PromptEncoder | undefined,
    readonly runtime: Runtime,
    private readonly ownsRuntime: boolean,
  ) {}

  /**
   * A pipeline from loaded components (diffusers' `PixArtAlphaPipeline(transformer=…, …)`). Without
   * a VAE it produces latents only, assuming the PixArt VAE's factor of 8.
   */
  static fromComponents(components: {
    transformer: PixArtTransformer2DModel;
    scheduler: Scheduler;
    vae?: AutoencoderKL;
    promptEncoder?: PromptEncoder;
    runtime: Runtime;
    className?: 'PixArtAlphaPipeline' | 'PixArtSigmaPipeline';
  }): PixArtPipeline {
    const c = components;
    return new PixArtPipeline(
      c.className ?? 'PixArtAlphaPipeline',
      c.transformer.dir,
      c.transformer,
      c.vae,
      c.scheduler,
      c.promptEncoder,
      c.runtime,
      false,
    );
  }

  /** The VAE's downsampling factor (8 for every PixArt VAE; assumed when there is no VAE). */
  get vaeScaleFactor(): number {
    return this.vae?.vaeScaleFactor ?? 8;
  }

  /**
   * Loads every component with its model class's load checks; an error names the component's file,
   * and `onWarning` (default: a process warning) receives each component's ignored keys and tensors.
   * `quantize: 'int8'` makes the transformer's and the T5 encoder's Linear layers on tokens int8 at
   * load (LoadOptions.quantize); the VAE stays float32. A folder written by `velodiff quantize` is
   * int8 without it.
   */
  static async fromPretrained(
    dir: string,
    options: {
      runtime?: Runtime;
      index?: ModelIndex;
      onWarning?: WarningHandler;
      quantize?: QuantizeOption;
    } = {},
  ): Promise<PixArtPipeline> {
    const quantize = checkQuantizeOption(options.quantize, 'PixArtPipeline.fromPretrained');
    const abs = resolve(dir);
    const index = options.index ?? (await readModelIndex(abs));
    if (index.className !== 'PixArtAlphaPipeline' && index.className !== 'PixArtSigmaPipeline') {
      throw new FileFormatError(
        `${join(abs, 'model_index.json')}: ${index.className} is not a PixArt pipeline`,
        'PIPELINE_CLASS',
        abs,
      );
    }
    for (const part of ['transformer', 'vae', 'scheduler']) {
      const entry = index.components[part];
      if (!entry || entry[1] === null) {
        throw new FileFormatError(
          `${join(abs, 'model_index.json')}: the pipeline has no "${part}" component; a PixArt folder needs transformer/, vae/ and scheduler/`,
          'COMPONENT_MISSING',
          abs,
        );
      }
    }
    const runtime = options.runtime ?? new Runtime();
    const load = { runtime, onWarning: options.onWarning };
    const quantized = { ...load, quantize };
    // Components loaded before a failing one are closed again, so a failed load holds no files.
    const loaded: { close(): Promise<void> }[] = [];
    const track = <T extends { close(): Promise<void> }>(component: T): T => {
      loaded.push(component);
      return component;
    };
    let transformer: PixArtTransformer2DModel;
    let vae: AutoencoderKL;
    let scheduler: Scheduler;
    let promptEncoder: PromptEncoder | undefined;
    try {
      transformer = track(await PixArtTransformer2DModel.fromPretrained(join(abs, 'transformer'), quantized));
      vae = track(await AutoencoderKL.fromPretrained(join(abs, 'vae'), load));
      const schedulerPath = join(abs, 'scheduler', 'scheduler_config.json');
      // diffusers writes Python's -Infinity/NaN into some configs; schedulerFromConfig parses the text itself.
      scheduler = schedulerFromConfig(await readTextFile(schedulerPath, 'the scheduler config'));
      const hasText = index.components.text_encoder?.[1] && index.components.tokenizer?.[1];
      promptEncoder = hasText ? await loadT5PromptEncoder(abs, runtime, quantized) : undefined;
    } catch (error) {
      await Promise.all(loaded.map((component) => component.close()));
      if (options.runtime === undefined) await runtime.dispose();
      throw error;
    }
    return new PixArtPipeline(
      index.className,
      abs,
      transformer,
      vae,
      scheduler,
      promptEncoder,
      runtime,
      options.runtime === undefined,
    );
  }

  /** Default tokens per prompt: 120 for PixArt-α, 300 for PixArt-Σ (as diffusers). */
  get defaultMaxSequenceLength(): number {
    return this.className === 'PixArtSigmaPipeline' ? 300 : 120;
  }

  /** Default output size: the transformer's sample size × the VAE factor (1024 for PixArt-α 1024). */
  get defaultSize(): number {
    return this.transformer.config.sampleSize * this.vaeScaleFactor;
  }

  /**
   * Text-to-image, or image-to-image with `image` and `strength` (SDEdit, as diffusers'
   * StableDiffusionImg2ImgPipeline; diffusers has no PixArt image-to-image pipeline, so this is
   * velodiff's extension). With an image the output has the image's size and resolution binning is off.
   * With `highres`, the staged high-resolution recipe.
   */
  async run(o: PixArtRunOptions = {}): Promise<PixArtOutput> {
    return o.highres === undefined ? this.generate(o) : this.runHighRes(o, o.highres);
  }

  /**
   * The staged recipe (`highres`): the base image from this run's options, then each stage's
   * image-to-image on the image upscaled ×scale.
   */
  private async runHighRes(
    o: PixArtRunOptions,
    option: HighResOption<PixArtHighResStage>,
  ): Promise<PixArtOutput> {
    const where = 'PixArtPipeline.run';
    refuseImageToImage(o, where);
    const stages = highResStages(option, where);
    // A stage's attention option (CLEAR's window, its weights) is checked before the base stage runs.
    for (const stage of stages) await this.transformer.resolveAcceleration(stage.attention);
    const generator = resolveGenerator(o);
    const text = {
      prompt: o.prompt,
      negativePrompt: o.negativePrompt,
      promptEmbeds: o.promptEmbeds,
      promptAttentionMask: o.promptAttentionMask,
      negativePromptEmbeds: o.negativePromptEmbeds,
      negativePromptAttentionMask: o.negativePromptAttentionMask,
      numImagesPerPrompt: o.numImagesPerPrompt,
      maxSequenceLength: o.maxSequenceLength,
      eta: o.eta,
      callbackOnStepEnd: o.callbackOnStepEnd,
      onProgress: o.onProgress,
      signal: o.signal,
    };
    return runHighResStages({
      base: () => this.generate({ ...o, highres: undefined, generator, outputType: 'image' }),
      stages,
      refine: (stage, image, index) =>
        this.generate({
          ...text,
          image,
          strength: stage.strength ?? HIGHRES_STRENGTH,
          numInferenceSteps: stage.numInferenceSteps ?? o.numInferenceSteps,
          guidanceScale: stage.guidanceScale ?? o.guidanceScale,
          attention: stage.attention,
          tgate: stage.tgate,
          generator,
          outputType: index === stages.length - 1 ? o.outputType : 'image',
        }),
    });
  }

  /** One text-to-image or image-to-image run. */
  private async generate(o: PixArtRunOptions): Promise<PixArtOutput> {
    const steps = o.numInferenceSteps ?? 20;
    const guidance = o.guidanceScale ?? 4.5;
    const perPrompt = o.numImagesPerPrompt ?? 1;
    const imageSize = o.image ? imageHeightWidth(o.image, this.vaeScaleFactor, o) : undefined;
    const origHeight = imageSize?.[0] ?? o.height ?? this.defaultSize;
    const origWidth = imageSize?.[1] ?? o.width ?? this.defaultSize;
    checkInteger(origHeight, 'height', 1);
    checkInteger(origWidth, 'width', 1);
    if (o.image && o.useResolutionBinning) {
      throw new OptionError('useResolutionBinning applies to text-to-image only: the image sets the size');
    }
    const bins = o.image
      ? undefined
      : aspectRatioBinsFor(this.className, this.transformer.config.sampleSize, o.useResolutionBinning);
    const [height, width] = bins
      ? classifyHeightWidthBin(origHeight, origWidth, bins)
      : [origHeight, origWidth];
    checkInteger(steps, 'numInferenceSteps', 1);
    checkInteger(perPrompt, 'numImagesPerPrompt', 1);
    if (!Number.isFinite(guidance)) throw new OptionError(`guidanceScale must be a number, got ${guidance}`);
    const factor = this.vaeScaleFactor * this.transformer.config.patchSize;
    for (const [name, v] of [
      ['height', height],
      ['width', width],
    ] as const) {
      checkInteger(v, name, 1);
      if (v % factor !== 0) {
        throw new OptionError(
          `${name} ${v} must be a multiple of ${factor} (VAE factor ${this.vaeScaleFactor} × patch size ${this.transformer.config.patchSize}); try ${Math.max(factor, Math.round(v / factor) * factor)}`,
        );
      }
    }
    const cfg = guidance > 1;
    const { embeds, mask, negEmbeds, negMask } = await this.encodePrompts(o, cfg, perPrompt);
    const batch = embeds.shape[0];

    const scheduler = this.scheduler;
    scheduler.setTimesteps(steps);
    const generator = resolveGenerator(o);
    const channels = this.transformer.config.inChannels;
    const latentShape = [batch, channels, height / this.vaeScaleFactor, width / this.vaeScaleFactor];
    let timesteps = [...scheduler.timesteps];
    let latents: HostTensor;
    if (o.image) {
      const vae = this.requireVae('image-to-image');
      ({ timesteps } = strengthTimesteps(scheduler, steps, o.strength ?? 0.8));
      latents = await imageLatents({
        vae,
        image: o.image,
        batch,
        numImagesPerPrompt: perPrompt,
        generator,
        scheduler,
        timestep: timesteps[0],
        noise: o.noise,
      });
    } else {
      if (o.strength !== undefined || o.noise !== undefined) {
        throw new OptionError('strength and noise are image-to-image options: give an image too');
      }
      latents = initialLatents(latentShape, o.latents, generator, scheduler.initNoiseSigma);
    }

    const textEmbeds = cfg ? concatBatch(negEmbeds as HostTensor, embeds) : embeds;
    const textMask = cfg ? concatBatch(negMask as HostTensor, mask) : mask;
    // After T-GATE's gate CFG is dropped and the negative (null) conditioning is fed (§1.5).
    const singleEmbeds = cfg ? (negEmbeds as HostTensor) : embeds;
    const singleMask = cfg ? (negMask as HostTensor) : mask;
    const microConditions = (n: number): Record<string, HostTensor> => {
      if (!this.transformer.config.useAdditionalConditions) return {};
      return {
        resolution: hostTensor(
          'float32',
          [n, 2],
          Float32Array.from({ length: 2 * n }, (_, i) => (i % 2 ? width : height)),
        ),
        aspect_ratio: hostTensor('float32', [n, 1], new Float32Array(n).fill(Math.fround(height / width))),
      };
    };
    const resolved = await this.transformer.resolveAcceleration(o.attention);
    const plan = o.tgate ? pruneDeadStores(tgatePlan(timesteps.length, o.tgate, cfg)) : undefined;
    // T-GATE's kept attention outputs, where the sessions run; released after every generation.
    const caches = new TGateCaches(this.runtime);
    try {
      latents = await denoise({
        scheduler,
        timesteps,
        latents,
        generator,
        eta: o.eta ?? 0,
        guidanceScale: guidance,
        latentChannels: channels,
        cfgAt: (i) => (plan ? plan[i].cfg : cfg),
        predict: async (modelInput, t, i, stepCfg) => {
          const stepPlan = plan?.[i];
          const n = modelInput.shape[0];
          const inputs: Record<string, HostTensor> = {
            hidden_states: modelInput,
            timestep: hostTensor('float32', [n], new Float32Array(n).fill(t)),
            ...microConditions(n),
          };
          if (stepPlan?.crossAttention !== 'reuse') {
            inputs.encoder_hidden_states = stepCfg ? textEmbeds : singleEmbeds;
            inputs.encoder_attention_mask = stepCfg ? textMask : singleMask;
          }
          const tgate = stepPlan
            ? {
                selfAttention: stepPlan.selfAttention,
                crossAttention: stepPlan.crossAttention,
                average: stepPlan.average && stepCfg,
              }
            : undefined;
          const result = await this.transformer.step(inputs, {
            tgate,
            cached: caches.current,
            attention: resolved.attention,
            acceleration: resolved.acceleration,
          });
          await caches.keep(result.retained);
          return result.host.sample;
        },
        callbackOnStepEnd: o.callbackOnStepEnd,
        onProgress: o.onProgress,
        signal: o.signal,
      });
    } finally {
      await caches.release();
    }
    if (o.outputType === 'latent') return { latents, timesteps };
    const vae = this.requireVae('image output');
    // Binned back before the [0, 1] mapping, as diffusers (its clamp does not commute with the resize).
    const images = await decodeImages(vae, latents, {
      beforeMapping: bins
        ? (decoded) => resizeAndCropTensor(this.runtime, decoded, origWidth, origHeight)
        : undefined,
    });
    return { images, latents, timesteps };
  }

  private requireVae(what: string): AutoencoderKL {
    if (!this.vae)
      throw new OptionError(`this pipeline has no VAE, which ${what} needs: use outputType "latent"`);
    return this.vae;
  }

  private async encodePrompts(
    o: PixArtRunOptions,
    cfg: boolean,
    perPrompt: number,
  ): Promise<{ embeds: HostTensor; mask: HostTensor; negEmbeds?: HostTensor; negMask?: HostTensor }> {
    let embeds: HostTensor;
    let mask: HostTensor;
    let negEmbeds = o.negativePromptEmbeds;
    let negMask = o.negativePromptAttentionMask;
    const maxLength = o.maxSequenceLength ?? this.defaultMaxSequenceLength;
    if (o.promptEmbeds) {
      if (o.prompt !== undefined) throw new OptionError('give either prompt or promptEmbeds, not both');
      embeds = o.promptEmbeds;
      mask =
        o.promptAttentionMask ??
        hostTensor(
          'float32',
          embeds.shape.slice(0, 2),
          new Float32Array(embeds.shape[0] * embeds.shape[1]).fill(1),
        );
    } else {
      if (o.prompt === undefined) throw new OptionError('give a prompt (or promptEmbeds)');
      const encoder = this.requireEncoder();
      const prompts = typeof o.prompt === 'string' ? [o.prompt] : o.prompt;
      ({ embeds, mask } = await encoder.encode(prompts, maxLength));
    }
    if (cfg && !negEmbeds) {
      if (
        o.negativePromptEmbeds === undefined &&
        o.promptEmbeds &&
        o.negativePrompt === undefined &&
        !this.promptEncoder
      ) {
        throw new OptionError(
          'guidance needs negativePromptEmbeds when promptEmbeds are given and the pipeline has no text encoder',
        );
      }
      const encoder = this.requireEncoder();
      const n = embeds.shape[0];
      const neg = o.negativePrompt ?? '';
      const negs = typeof neg === 'string' ? new Array<string>(n).fill(neg) : neg;
      if (negs.length !== n)
        throw new OptionError(`negativePrompt has ${negs.length} entries for ${n} prompts`);
      ({ embeds: negEmbeds, mask: negMask } = await encoder.encode(negs, embeds.shape[1]));
    }
    if (cfg) {
      if (!negEmbeds || negEmbeds.shape.join() !== embeds.shape.join()) {
        throw new OptionError(
          `negativePromptEmbeds must have the shape of promptEmbeds [${embeds.shape.join(', ')}]`,
        );
      }
      negMask ??= hostTensor(
        'float32',
        negEmbeds.shape.slice(0, 2),
        new Float32Array(negEmbeds.shape[0] * negEmbeds.shape[1]).fill(1),
      );
    }
    const repeat = (t: HostTensor | undefined): HostTensor | undefined =>
      t ? repeatBatch(asFloat(t), perPrompt) : undefined;
    return {
      embeds: repeat(embeds) as HostTensor,
      mask: repeat(mask) as HostTensor,
      negEmbeds: repeat(negEmbeds),
      negMask: repeat(negMask),
    };
  }

  /**
   * Load a LoRA (diffusers/PEFT file or folder, or kohya file) onto the transformer. It becomes
   * active with weight 1 as a switchable side branch; `fuseLora` merges it. Keys that match no
   * module are reported in the result's `ignored`, as diffusers warns.
   */
  async loadLoraWeights(path: string, options: { adapterName?: string } = {}): Promise<LoadedLora> {
    return this.transformer.loadLoraWeights(path, options);
  }

  /** Activate adapters with weights (default 1 each); switching needs no recompilation. */
  setAdapters(names: string | string[], weights?: number | number[]): void {
    this.transformer.adapters.setAdapters(names, weights);
  }

  /** Merge the active adapters into the weights (ORT folds W + s·B·A once; no per-step cost). */
  fuseLora(options: { loraScale?: number; adapterNames?: string[] } = {}): void {
    this.transformer.adapters.fuse(options);
  }

  unfuseLora(): void {
    this.transformer.adapters.unfuse();
  }

  unloadLoraWeights(names?: string | string[]): void {
    this.transformer.adapters.unload(typeof names === 'string' ? [names] : names);
  }

  /**
   * The Flash Diffusion recipe (methods/tgate_flash.md §2.5): load the Flash LoRA fused at the
   * authors' scale (its own alpha/r, e.g. 8/64 for flash-pixart), switch to LCM sampling, and
   * return the run options to use: 4 steps, guidance 0 (no CFG batch).
   */
  async useFlashDiffusion(
    path: string,
    options: { adapterName?: string } = {},
  ): Promise<{
    adapter: LoadedLora;
    runOptions: Pick<PixArtRunOptions, 'numInferenceSteps' | 'guidanceScale'>;
  }> {
    const flash = await loadFlashLora(this.transformer.adapters, path, {
      modelParameters: this.transformer.weights,
      schedulerConfig: this.scheduler.config as Record<string, unknown>,
      adapterName: options.adapterName,
    });
    this.scheduler = flash.scheduler;
    return { adapter: flash.adapter, runOptions: flash.runOptions };
  }

  private requireEncoder(): PromptEncoder {
    if (!this.promptEncoder) {
      throw new OptionError(
        `this pipeline folder has no text encoder/tokenizer (model_index.json lists them as null): pass promptEmbeds and negativePromptEmbeds`,
      );
    }
    return this.promptEncoder;
  }

  async close(): Promise<void> {
    await this.transformer.close();
    await this.vae?.close();
    await this.promptEncoder?.close();
    if (this.ownsRuntime) await this.runtime.dispose();
  }
}
