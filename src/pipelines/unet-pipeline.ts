/**
 * What the Stable Diffusion pipelines (SD 1.x/2.x, SDXL, LCM, and their image-to-image forms) share:
 * the components (a UNet2DConditionModel, an AutoencoderKL, a scheduler), the run options, sizes,
 * the initial or image latents, LCM's guidance embedding, and the UNet call in the shared denoising
 * loop. Each pipeline says how prompts become the UNet's conditioning.
 */
import { join, resolve } from 'node:path';

import { FileFormatError, OptionError } from '../errors.js';
import type { DeepCacheOptions, DeepCacheStep } from '../attention/deepcache.js';
import {
  DeepCacheFeature,
  checkDeepCacheForUNet,
  deepCachePlan,
  tgateDeepCachePlan,
} from '../attention/deepcache.js';
import type { TGateOptions, TGateStep } from '../attention/tgate.js';
import { TGateCaches, pruneDeadStores, tgatePlan } from '../attention/tgate.js';
import type { AttentionOption } from '../attention/types.js';
import type { ModelIndex } from '../io/diffusers.js';
import { readModelIndex } from '../io/diffusers.js';
import { loadFlashLora } from '../lora/flash.js';
import type { LoadedLora } from '../lora/adapters.js';
import type { LoraComponent } from '../lora/format.js';
import type { LoraTarget } from '../lora/pipeline-adapters.js';
import { LoraPipeline } from '../lora/pipeline-adapters.js';
import type { CLIPTextModel, CLIPTextModelWithProjection } from '../models/clip-text.js';
import { readTextFile } from '../io/text.js';
import { AutoencoderKL } from '../models/autoencoder-kl.js';
import type { QuantizeOption } from '../models/int8.js';
import { checkQuantizeOption } from '../models/int8.js';
import type { LoadOptions } from '../models/model.js';
import { UNet2DConditionModel } from '../models/unet-2d-condition.js';
import type { NoiseGenerator } from '../random/torch-generator.js';
import type { HostTensor } from '../runtime/host-tensor.js';
import { hostTensor } from '../runtime/host-tensor.js';
import { Runtime } from '../runtime/runtime.js';
import type { Scheduler } from '../schedulers/scheduler.js';
import { schedulerFromConfig } from '../schedulers/index.js';
import type { WarningHandler } from '../warnings.js';
import { checkInteger, concatBatch } from './batch.js';
import type { LoopCallbacks, PipelineOutput } from './denoise.js';
import {
  decodeImages,
  denoise,
  guidanceScaleEmbedding,
  initialLatents,
  resolveGenerator,
} from './denoise.js';
import type { ImageToImageOptions } from './image-to-image.js';
import { imageHeightWidth, imageLatents, strengthTimesteps } from './image-to-image.js';

/** Options of every Stable Diffusion pipeline's `run` (diffusers' `__call__` arguments in camelCase). */
export interface StableDiffusionRunOptions extends LoopCallbacks, ImageToImageOptions {
  prompt?: string | string[];
  negativePrompt?: string | string[];
  /** Precomputed text embeddings [B, 77, cross_attention_dim], instead of prompts. */
  promptEmbeds?: HostTensor;
  negativePromptEmbeds?: HostTensor;
  /** Initial latents [B·n, 4, H/8, W/8] (text-to-image), or the already noised start (image-to-image). */
  latents?: HostTensor;
  numInferenceSteps?: number;
  /** Classifier-free guidance scale; guidance runs when > 1 and the UNet has no time_cond_proj_dim. */
  guidanceScale?: number;
  /** diffusers' guidance_rescale φ (Lin et al. 2023 §3.4), applied after guidance; default 0. */
  guidanceRescale?: number;
  /** Layers skipped from the end of the text encoder (diffusers' clip_skip); default none. */
  clipSkip?: number;
  height?: number;
  width?: number;
  numImagesPerPrompt?: number;
  /** Seed of a torch-compatible CPU generator (same seed → same latents as diffusers on CPU). */
  seed?: number;
  generator?: NoiseGenerator;
  /** DDIM's eta (ignored by schedulers without it). */
  eta?: number;
  outputType?: 'image' | 'latent';
  /**
   * T-GATE (methods/tgate_flash.md §1): attention outputs cached at the gate step, CFG dropped after
   * it. With LCM UNets (no CFG) pass `lcm: true`.
   */
  tgate?: TGateOptions;
  /**
   * DeepCache (horseee/DeepCache): full steps every `cacheInterval` steps, skip steps that reuse the
   * deep feature below `cacheBranchId`. With `tgate`, as T-GATE's DeepCache pipelines combine them.
   */
  deepCache?: DeepCacheOptions;
  attention?: AttentionOption;
}

/** The UNet's conditioning for the positive (and, under CFG, negative) half of the batch. */
export interface UNetConditioning {
  /** [B·n, L, cross_attention_dim] */
  embeds: HostTensor;
  negEmbeds?: HostTensor;
  /** SDXL's added_cond_kwargs, per half: `text_embeds` [B·n, T] and `time_ids` [B·n, N]. */
  added?: {
    textEmbeds: HostTensor;
    timeIds: HostTensor;
    negTextEmbeds?: HostTensor;
    negTimeIds?: HostTensor;
  };
}

export interface LoadPipelineOptions {
  runtime?: Runtime;
  /** model_index.json, when the caller has read it already. */
  index?: ModelIndex;
  /** Receives each component's ignored config keys and tensors (default: a process warning). */
  onWarning?: WarningHandler;
  /**
   * 'int8': the UNet's and the CLIP text encoders' Linear layers on tokens and pixels run in int8,
   * quantized at load (LoadOptions.quantize); the VAE stays float32. A folder written by `velodiff
   * quantize` is int8 without it.
   */
  quantize?: QuantizeOption;
}

export interface UNetComponents {
  unet: UNet2DConditionModel;
  /** Absent in pipelines built from components for latent output only. */
  vae?: AutoencoderKL;
  scheduler: Scheduler;
}

/** Defaults of a pipeline class's run, as its diffusers `__call__` signature has them. */
export interface RunDefaults {
  numInferenceSteps: number;
  guidanceScale: number;
  /** Image-to-image classes: the default strength, and an image is required. */
  strength?: number;
}

export abstract class UNetPipeline extends LoraPipeline {
  /** The pipeline class model_index.json names (or the class built from components). */
  abstract readonly className: string;
  abstract readonly defaults: RunDefaults;
  readonly unet: UNet2DConditionModel;
  readonly vae: AutoencoderKL | undefined;
  scheduler: Scheduler;

  protected constructor(
    readonly dir: string,
    components: UNetComponents,
    readonly runtime: Runtime,
    protected readonly ownsRuntime: boolean,
  ) {
    super();
    this.unet = components.unet;
    this.vae = components.vae;
    this.scheduler = components.scheduler;
  }

  /** diffusers' `vae_scale_factor`: 2^(VAE levels − 1), 8 without a VAE. */
  get vaeScaleFactor(): number {
    return this.vae?.vaeScaleFactor ?? 8;
  }

  /** Default output [height, width]: the UNet's sample_size × the VAE factor (512 for SD 1.5, 1024 for SDXL). */
  get defaultSize(): [number, number] {
    const s = this.unet.config.sampleSize ?? 64;
    const [h, w] = typeof s === 'number' ? [s, s] : s;
    return [h * this.vaeScaleFactor, w * this.vaeScaleFactor];
  }

  /** SDXL scales latents with the VAE's latents_mean/latents_std where it has them; SD 1.x/2.x does not. */
  protected get latentsStatistics(): boolean {
    return false;
  }

  /** How prompts (or given embeddings) become the UNet's conditioning, repeated per image. */
  protected abstract encodePrompt(
    o: StableDiffusionRunOptions,
    cfg: boolean,
    perPrompt: number,
    size: { height: number; width: number },
  ): Promise<UNetConditioning>;

  async run(o: StableDiffusionRunOptions = {}): Promise<PipelineOutput> {
    // LinFusion runs on UNets (every attn1); CLEAR is a DiT method.
    if (o.attention?.kind === 'clear') throw notYet(`attention 'clear'`, this.className);
    const steps = o.numInferenceSteps ?? this.defaults.numInferenceSteps;
    const guidance = o.guidanceScale ?? this.defaults.guidanceScale;
    const rescale = o.guidanceRescale ?? 0;
    const perPrompt = o.numImagesPerPrompt ?? 1;
    checkInteger(steps, 'numInferenceSteps', 1);
    checkInteger(perPrompt, 'numImagesPerPrompt', 1);
    if (!Number.isFinite(guidance)) throw new OptionError(`guidanceScale must be a number, got ${guidance}`);
    if (!Number.isFinite(rescale) || rescale < 0) {
      throw new OptionError(`guidanceRescale must be a number ≥ 0 (0.7 in Lin et al.), got ${rescale}`);
    }
    if (o.clipSkip !== undefined) checkInteger(o.clipSkip, 'clipSkip', 0);
    // A branch this UNet lacks fails here, before the text encoders or any step run.
    if (o.deepCache) checkDeepCacheForUNet(o.deepCache, this.unet.config);
    if (this.defaults.strength !== undefined && !o.image) {
      throw new OptionError(`${this.className} needs an image (run({ image, strength }))`);
    }
    const [height, width] = o.image
      ? imageHeightWidth(o.image, this.vaeScaleFactor, o)
      : [o.height ?? this.defaultSize[0], o.width ?? this.defaultSize[1]];
    const factor = this.vaeScaleFactor;
    for (const [name, v] of [
      ['height', height],
      ['width', width],
    ] as const) {
      checkInteger(v, name, 1);
      if (v % factor !== 0) {
        throw new OptionError(
          `${name} ${v} must be a multiple of ${factor} (the VAE factor); try ${Math.max(factor, Math.round(v / factor) * factor)}`,
        );
      }
    }
    const timeCondDim = this.unet.config.timeCondProjDim;
    // diffusers: LCM UNets take the guidance scale as an embedding and never run CFG.
    const cfg = guidance > 1 && timeCondDim === null;
    const cond = await this.encodePrompt(o, cfg, perPrompt, { height, width });
    const batch = cond.embeds.shape[0];

    const scheduler = this.scheduler;
    scheduler.setTimesteps(steps);
    const generator = resolveGenerator(o);
    let timesteps = [...scheduler.timesteps];
    let latents: HostTensor;
    if (o.image) {
      ({ timesteps } = strengthTimesteps(scheduler, steps, o.strength ?? this.defaults.strength ?? 0.8));
      const shape = [batch, this.unet.config.inChannels, height / factor, width / factor];
      if (o.latents) {
        if (o.noise) throw new OptionError('give latents (the noised start) or noise, not both');
        latents = initialLatents(shape, o.latents, generator, 1);
      } else {
        latents = await imageLatents({
          vae: this.requireVae('image-to-image'),
          image: o.image,
          batch,
          numImagesPerPrompt: perPrompt,
          generator,
          scheduler,
          timestep: timesteps[0],
          noise: o.noise,
          latentsStatistics: this.latentsStatistics,
        });
      }
    } else {
      if (o.strength !== undefined || o.noise !== undefined) {
        throw new OptionError('strength and noise are image-to-image options: give an image too');
      }
      const shape = [batch, this.unet.config.inChannels, height / factor, width / factor];
      latents = initialLatents(shape, o.latents, generator, scheduler.initNoiseSigma);
    }

    // LCM's w embedding of guidance − 1 (diffusers' get_guidance_scale_embedding).
    const timestepCond =
      timeCondDim === null ? undefined : guidanceScaleEmbedding(guidance - 1, batch, timeCondDim);
    // The CFG pair [negative; positive]; after T-GATE's gate the negative (null) conditioning alone,
    // SDXL's pooled text and time ids included (§1.5), or the positive one in runs without CFG.
    const conditioning = (stepCfg: boolean): Record<string, HostTensor> => {
      const pick = (neg: HostTensor | undefined, pos: HostTensor): HostTensor =>
        stepCfg ? concatBatch(neg as HostTensor, pos) : cfg ? (neg as HostTensor) : pos;
      const added = cond.added;
      return {
        encoder_hidden_states: pick(cond.negEmbeds, cond.embeds),
        ...(added
          ? {
              text_embeds: pick(added.negTextEmbeds, added.textEmbeds),
              time_ids: pick(added.negTimeIds, added.timeIds),
            }
          : {}),
      };
    };
    const plan = accelerationPlan(timesteps.length, o, cfg);
    // The kept attention outputs and deep feature, where the sessions run; released after every generation.
    const tgateCaches = new TGateCaches(this.runtime);
    const deepFeature = new DeepCacheFeature(this.runtime);
    try {
      latents = await denoise({
        scheduler,
        timesteps,
        latents,
        generator,
        eta: o.eta ?? 0,
        guidanceScale: guidance,
        guidanceRescale: rescale,
        latentChannels: this.unet.config.inChannels,
        cfgAt: (i) => (plan.tgate ? plan.tgate[i].cfg : cfg),
        predict: async (modelInput, t, i, stepCfg) => {
          const n = modelInput.shape[0];
          const inputs: Record<string, HostTensor> = {
            sample: modelInput,
            timestep: hostTensor('float32', [n], new Float32Array(n).fill(t)),
            ...conditioning(stepCfg),
          };
          if (timestepCond) inputs.timestep_cond = timestepCond;
          const tgate = plan.tgate?.[i];
          const deep = plan.deepCache?.[i];
          const result = await this.unet.step(inputs, {
            ...(tgate
              ? {
                  tgate: {
                    selfAttention: tgate.selfAttention,
                    crossAttention: tgate.crossAttention,
                    average: tgate.average && stepCfg,
                  },
                }
              : {}),
            ...(deep && o.deepCache
              ? { deepCache: { cacheBranchId: o.deepCache.cacheBranchId, step: deep } }
              : {}),
            cached: { ...tgateCaches.current, ...deepFeature.current },
            ...(o.attention ? { attention: o.attention } : {}),
          });
          await tgateCaches.keep(result.retained);
          await deepFeature.keep(result.retained);
          return result.host.sample;
        },
        callbackOnStepEnd: o.callbackOnStepEnd,
        onProgress: o.onProgress,
        signal: o.signal,
      });
    } finally {
      await tgateCaches.release();
      await deepFeature.release();
    }
    if (o.outputType === 'latent') return { latents, timesteps };
    const images = await decodeImages(this.requireVae('image output'), latents, {
      latentsStatistics: this.latentsStatistics,
    });
    return { images, latents, timesteps };
  }

  // --- LoRA (diffusers' StableDiffusionLoraLoaderMixin / StableDiffusionXLLoraLoaderMixin) ----------

  /** The text encoders LoRA keys can be routed to, by the component name their keys carry. */
  protected loraTextEncoders(): {
    component: Exclude<LoraComponent, 'denoiser'>;
    model: CLIPTextModel | CLIPTextModelWithProjection;
  }[] {
    return [];
  }

  protected loraTargets(): LoraTarget[] {
    const targets: LoraTarget[] = [
      { component: 'denoiser', adapters: this.unet.adapters, modelParameters: this.unet.weights },
      ...this.loraTextEncoders().map(({ component, model }) => ({
        component,
        adapters: model.adapters,
        modelParameters: model.weights,
      })),
    ];
    return targets;
  }

  /**
   * The Flash Diffusion recipe for flash-sd / flash-sdxl (methods/tgate_flash.md §2.5): the LoRA
   * loaded onto the UNet and fused at the authors' scale (its own alpha/r: 1 for both, alpha = r),
   * LCMScheduler from this pipeline's scheduler config (timestep_spacing "trailing", which LCM
   * ignores: 4 steps are [999, 759, 499, 259]), and the run options 4 steps, guidance 0 (no CFG).
   */
  async useFlashDiffusion(
    path: string,
    options: { adapterName?: string; fuse?: boolean } = {},
  ): Promise<{
    adapter: LoadedLora;
    runOptions: Pick<StableDiffusionRunOptions, 'numInferenceSteps' | 'guidanceScale'>;
  }> {
    const flash = await loadFlashLora(this.unet.adapters, path, {
      modelParameters: this.unet.weights,
      schedulerConfig: this.scheduler.config as Record<string, unknown>,
      adapterName: options.adapterName,
      fuse: options.fuse,
    });
    this.scheduler = flash.scheduler;
    return { adapter: flash.adapter, runOptions: flash.runOptions };
  }

  private requireVae(what: string): AutoencoderKL {
    if (!this.vae)
      throw new OptionError(`this pipeline has no VAE, which ${what} needs: use outputType "latent"`);
    return this.vae;
  }

  /** Text encoders and tokenizers, closed with the pipeline. */
  protected abstract closeEncoders(): Promise<void>;

  async close(): Promise<void> {
    await this.unet.close();
    await this.vae?.close();
    await this.closeEncoders();
    if (this.ownsRuntime) await this.runtime.dispose();
  }
}

/**
 * The step kinds of a run: T-GATE's plan (stores nobody reads pruned), DeepCache's full and skip
 * steps, or both as T-GATE's DeepCache pipelines combine them; absent parts are not accelerated.
 */
export function accelerationPlan(
  numSteps: number,
  o: { tgate?: TGateOptions; deepCache?: DeepCacheOptions },
  cfg: boolean,
): { tgate?: TGateStep[]; deepCache?: DeepCacheStep[] } {
  if (o.tgate && o.deepCache) return tgateDeepCachePlan(numSteps, o.tgate, o.deepCache, cfg);
  if (o.tgate) return { tgate: pruneDeadStores(tgatePlan(numSteps, o.tgate, cfg)) };
  if (o.deepCache) return { deepCache: deepCachePlan(numSteps, o.deepCache) };
  return {};
}

function notYet(what: string, className: string): OptionError {
  return new OptionError(
    `${what} is not available for ${className} yet (UNet accelerations are issue 10 §3); it runs on PixArt pipelines`,
  );
}

/**
 * The folder's model_index.json (or `options.index`), which must name one of `classes`; `kind` says
 * what they are in the error.
 */
export async function readPipelineIndex<C extends string>(
  dir: string,
  options: { index?: ModelIndex },
  classes: readonly C[],
  kind: string,
): Promise<{ abs: string; index: ModelIndex; className: C }> {
  const abs = resolve(dir);
  const index = options.index ?? (await readModelIndex(abs));
  const className = index.className as C;
  if (!classes.includes(className)) {
    throw new FileFormatError(
      `${join(abs, 'model_index.json')}: ${index.className} is not ${kind} (${classes.join(', ')})`,
      'PIPELINE_CLASS',
      abs,
    );
  }
  return { abs, index, className };
}

/** What the component loaders of a pipeline folder are given. */
export interface FolderLoad {
  runtime: Runtime;
  onWarning?: WarningHandler;
  quantize?: QuantizeOption;
  /** Registers a loaded component, to be closed again when a later one fails to load. */
  track: <C extends { close(): Promise<void> }>(component: C) => C;
}

/** A pipeline folder's denoiser: its component folder and its class's `fromPretrained`. */
export interface DenoiserFolder<D> {
  folder: 'unet' | 'transformer';
  load: (dir: string, options: LoadOptions) => Promise<D>;
  /** Further checks of model_index.json, made after the components' presence and before anything loads. */
  checkIndex?: () => void;
}

/**
 * Loads a diffusers pipeline folder's shared components — the denoiser, the VAE and the scheduler —
 * and then `more` (its text encoders, and whatever else needs them); what was loaded before a
 * failure is closed again, and a runtime made here disposed. `quantize` reaches the denoiser and
 * `more`'s encoders, not the VAE.
 */
export async function loadPipelineFolder<D extends { close(): Promise<void> }, T>(
  dir: string,
  index: ModelIndex,
  options: { runtime?: Runtime; onWarning?: WarningHandler; quantize?: QuantizeOption },
  denoiser: DenoiserFolder<D>,
  more: (
    load: FolderLoad,
    components: { denoiser: D; vae: AutoencoderKL; scheduler: Scheduler },
  ) => Promise<T>,
): Promise<{
  denoiser: D;
  vae: AutoencoderKL;
  scheduler: Scheduler;
  extra: T;
  runtime: Runtime;
  ownsRuntime: boolean;
}> {
  const quantize = checkQuantizeOption(options.quantize, `${index.className}.fromPretrained`);
  for (const part of [denoiser.folder, 'vae', 'scheduler']) {
    const entry = index.components[part];
    if (!entry || entry[1] === null) {
      throw new FileFormatError(
        `${join(dir, 'model_index.json')}: the pipeline has no "${part}" component; a ${index.className} folder needs ${denoiser.folder}/, vae/ and scheduler/`,
        'COMPONENT_MISSING',
        dir,
      );
    }
  }
  denoiser.checkIndex?.();
  const runtime = options.runtime ?? new Runtime();
  const load = { runtime, onWarning: options.onWarning };
  const quantized = { ...load, quantize };
  const loaded: { close(): Promise<void> }[] = [];
  const track = <C extends { close(): Promise<void> }>(component: C): C => {
    loaded.push(component);
    return component;
  };
  try {
    const model = track(await denoiser.load(join(dir, denoiser.folder), quantized));
    const vae = track(await AutoencoderKL.fromPretrained(join(dir, 'vae'), load));
    const schedulerPath = join(dir, 'scheduler', 'scheduler_config.json');
    const scheduler = schedulerFromConfig(await readTextFile(schedulerPath, 'the scheduler config'));
    const extra = await more({ ...quantized, track }, { denoiser: model, vae, scheduler });
    return {
      denoiser: model,
      vae,
      scheduler,
      extra,
      runtime,
      ownsRuntime: options.runtime === undefined,
    };
  } catch (error) {
    await Promise.all(loaded.map((component) => component.close()));
    if (options.runtime === undefined) await runtime.dispose();
    throw error;
  }
}

/** `loadPipelineFolder` of a UNet pipeline folder (unet/, vae/, scheduler/), its components as UNetPipeline takes them. */
export async function loadUNetFolder<T>(
  dir: string,
  index: ModelIndex,
  options: { runtime?: Runtime; onWarning?: WarningHandler; quantize?: QuantizeOption },
  more: (load: FolderLoad) => Promise<T>,
): Promise<{ components: Required<UNetComponents>; extra: T; runtime: Runtime; ownsRuntime: boolean }> {
  const unet = {
    folder: 'unet',
    load: (path, o) => UNet2DConditionModel.fromPretrained(path, o),
  } satisfies DenoiserFolder<UNet2DConditionModel>;
  const loaded = await loadPipelineFolder(dir, index, options, unet, more);
  return {
    components: { unet: loaded.denoiser, vae: loaded.vae, scheduler: loaded.scheduler },
    extra: loaded.extra,
    runtime: loaded.runtime,
    ownsRuntime: loaded.ownsRuntime,
  };
}

/** `prompt` as a list, the batch size it gives, or undefined for `promptEmbeds` (used as given). */
export function promptList(o: {
  prompt?: string | string[];
  promptEmbeds?: HostTensor;
  clipSkip?: number;
}): string[] | undefined {
  if (o.promptEmbeds) {
    if (o.prompt !== undefined) throw new OptionError('give either prompt or promptEmbeds, not both');
    if (o.clipSkip !== undefined) {
      throw new OptionError('clipSkip applies to prompts; promptEmbeds are used as given');
    }
    return undefined;
  }
  if (o.prompt === undefined) throw new OptionError('give a prompt (or promptEmbeds)');
  const prompts = typeof o.prompt === 'string' ? [o.prompt] : o.prompt;
  if (prompts.length === 0) throw new OptionError('prompt is an empty list');
  return prompts;
}

/** A negative prompt (or list) for `count` prompts, default "" (diffusers' uncond tokens). */
export function negativeList(
  negative: string | string[] | undefined,
  count: number,
  what = 'negativePrompt',
): string[] {
  const neg = negative ?? '';
  const list = typeof neg === 'string' ? new Array<string>(count).fill(neg) : neg;
  if (list.length !== count) {
    throw new OptionError(
      `${what} has ${list.length} entries for ${count} prompts; give one, or one per prompt`,
    );
  }
  return list;
}

/** Checks a given embedding's shape against what it must match. */
export function checkEmbeds(name: string, t: HostTensor | undefined, shape: readonly number[]): HostTensor {
  if (!t || t.shape.join() !== shape.join()) {
    throw new OptionError(
      `${name} must have shape [${shape.join(', ')}]${t ? `, got [${t.shape.join(', ')}]` : ''}`,
    );
  }
  return t;
}
