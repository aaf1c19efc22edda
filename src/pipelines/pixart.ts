import { join, resolve } from 'node:path';
import { FileFormatError, OptionError } from '../errors.js';
import type { ModelIndex } from '../io/diffusers.js';
import { readModelIndex } from '../io/diffusers.js';
import { readTextFile } from '../io/text.js';
import { AutoencoderKL } from '../models/autoencoder-kl.js';
import { PixArtTransformer2DModel } from '../models/pixart-transformer.js';
import type { WarningHandler } from '../warnings.js';
import type { NoiseGenerator } from '../random/torch-generator.js';
import { TorchGenerator } from '../random/torch-generator.js';
import type { HostTensor } from '../runtime/host-tensor.js';
import { hostTensor } from '../runtime/host-tensor.js';
import { Runtime } from '../runtime/runtime.js';
import type { Scheduler, SchedulerTensor } from '../schedulers/scheduler.js';
import type { TGateOptions } from '../attention/tgate.js';
import { TGateCaches, pruneDeadStores, tgatePlan } from '../attention/tgate.js';
import type { AttentionOption } from '../attention/types.js';
import type { LoadedLora } from '../lora/adapters.js';
import { FLASH_PRESET, loadFlashLora } from '../lora/flash.js';
import { schedulerFromConfig } from '../schedulers/index.js';
import type { PromptEncoder } from './prompt.js';
import { loadT5PromptEncoder } from './prompt.js';
import { aspectRatioBinsFor, classifyHeightWidthBin, resizeAndCropTensor } from './resolution-binning.js';

export interface StepEndInfo {
  step: number;
  timestep: number;
  latents: HostTensor;
}

export interface ProgressEvent {
  step: number;
  totalSteps: number;
  timestep: number;
  elapsedMs: number;
}

export interface PixArtRunOptions {
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
  /** Called after each step; may return new latents. */
  callbackOnStepEnd?: (
    info: StepEndInfo,
  ) => void | { latents?: HostTensor } | Promise<void | { latents?: HostTensor }>;
  onProgress?: (event: ProgressEvent) => void;
  signal?: AbortSignal;
  outputType?: 'image' | 'latent';
  /** T-GATE (methods/tgate_flash.md §1): cache attention outputs after the gate step and drop CFG. */
  tgate?: TGateOptions;
  /** Self-attention kernel: full (default), CLEAR or LinFusion, with the method's weights. */
  attention?: AttentionOption;
}

export type { AttentionOption } from '../attention/types.js';

export interface GeneratedImage {
  width: number;
  height: number;
  /** 8-bit RGB, row-major. */
  rgb: Uint8Array;
}

export interface PixArtOutput {
  /** Images in [0, 1], [B, 3, H, W] (diffusers' output_type 'pt'); absent for outputType 'latent'. */
  images?: HostTensor;
  /** The final latents (before VAE scaling is undone). */
  latents: HostTensor;
  timesteps: number[];
}

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
   */
  static async fromPretrained(
    dir: string,
    options: { runtime?: Runtime; index?: ModelIndex; onWarning?: WarningHandler } = {},
  ): Promise<PixArtPipeline> {
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
      transformer = track(await PixArtTransformer2DModel.fromPretrained(join(abs, 'transformer'), load));
      vae = track(await AutoencoderKL.fromPretrained(join(abs, 'vae'), load));
      const schedulerPath = join(abs, 'scheduler', 'scheduler_config.json');
      // diffusers writes Python's -Infinity/NaN into some configs; schedulerFromConfig parses the text itself.
      scheduler = schedulerFromConfig(await readTextFile(schedulerPath, 'the scheduler config'));
      const hasText = index.components.text_encoder?.[1] && index.components.tokenizer?.[1];
      promptEncoder = hasText ? await loadT5PromptEncoder(abs, runtime, load) : undefined;
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

  async run(o: PixArtRunOptions = {}): Promise<PixArtOutput> {
    const steps = o.numInferenceSteps ?? 20;
    const guidance = o.guidanceScale ?? 4.5;
    const perPrompt = o.numImagesPerPrompt ?? 1;
    const origHeight = o.height ?? this.defaultSize;
    const origWidth = o.width ?? this.defaultSize;
    checkInteger(origHeight, 'height', 1);
    checkInteger(origWidth, 'width', 1);
    const bins = aspectRatioBinsFor(
      this.className,
      this.transformer.config.sampleSize,
      o.useResolutionBinning,
    );
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
    const timesteps = [...scheduler.timesteps];
    const generator =
      o.generator ??
      (o.seed !== undefined
        ? new TorchGenerator(o.seed)
        : new TorchGenerator(Math.floor(Math.random() * 2 ** 31)));
    const channels = this.transformer.config.inChannels;
    const latentShape = [batch, channels, height / this.vaeScaleFactor, width / this.vaeScaleFactor];
    let latents: HostTensor;
    if (o.latents) {
      if (o.latents.shape.join() !== latentShape.join()) {
        throw new OptionError(
          `latents: expected shape [${latentShape.join(', ')}], got [${o.latents.shape.join(', ')}]`,
        );
      }
      latents = o.latents;
    } else {
      latents = hostTensor('float32', latentShape, generator.randn(latentShape));
    }
    // diffusers' prepare_latents: latents · init_noise_sigma, in float32.
    const sigma = scheduler.initNoiseSigma;
    if (sigma !== 1)
      latents = hostTensor(
        'float32',
        latentShape,
        (latents.data as Float32Array).map((v) => Math.fround(v * sigma)),
      );

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
    const started = Date.now();
    try {
      for (let i = 0; i < timesteps.length; i++) {
        o.signal?.throwIfAborted();
        const t = timesteps[i];
        const stepPlan = plan?.[i];
        const stepCfg = stepPlan ? stepPlan.cfg : cfg;
        const modelInput = stepCfg ? concatBatch(latents, latents) : latents;
        const scaled = scheduler.scaleModelInput(schedulerTensor(modelInput), t);
        const n = modelInput.shape[0];
        const inputs: Record<string, HostTensor> = {
          hidden_states: hostTensor('float32', modelInput.shape, scaled.data),
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
        let eps = result.host.sample;
        if (stepCfg) eps = guide(eps, guidance);
        // Learned sigma: the model predicts [ε, σ]; the sampler uses ε.
        if (eps.shape[1] === 2 * channels) eps = firstChannels(eps, channels);
        const out = scheduler.step(schedulerTensor(eps), t, schedulerTensor(latents), {
          generator,
          eta: o.eta ?? 0,
        });
        latents = hostTensor('float32', out.prevSample.shape, out.prevSample.data);
        if (o.callbackOnStepEnd) {
          const r = await o.callbackOnStepEnd({ step: i, timestep: t, latents });
          if (r && r.latents) latents = r.latents;
        }
        o.onProgress?.({
          step: i + 1,
          totalSteps: timesteps.length,
          timestep: t,
          elapsedMs: Date.now() - started,
        });
      }
    } finally {
      await caches.release();
    }
    o.signal?.throwIfAborted();
    if (o.outputType === 'latent') return { latents, timesteps };
    if (!this.vae) throw new OptionError('this pipeline has no VAE: use outputType "latent"');
    const scale = this.vae.config.scalingFactor;
    const z = hostTensor(
      'float32',
      latents.shape,
      (latents.data as Float32Array).map((v) => Math.fround(v / scale)),
    );
    let decoded = (await this.vae.decode(z)).sample;
    // Binned back before the [0, 1] mapping, as diffusers (its clamp does not commute with the resize).
    if (bins) decoded = await resizeAndCropTensor(this.runtime, decoded, origWidth, origHeight);
    // (x / 2 + 0.5).clamp(0, 1), in float32 as torch.
    const images = hostTensor(
      'float32',
      decoded.shape,
      (decoded.data as Float32Array).map((v) =>
        Math.min(1, Math.max(0, Math.fround(Math.fround(v / 2) + 0.5))),
      ),
    );
    return { images, latents, timesteps };
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
    const setup = await loadFlashLora(this.transformer.adapters, path, {
      modelParameters: this.transformer.weights,
      schedulerConfig: this.scheduler.config as Record<string, unknown>,
      adapterName: options.adapterName,
    });
    this.scheduler = setup.scheduler;
    return {
      adapter: setup.adapter,
      runOptions: {
        numInferenceSteps: FLASH_PRESET.numInferenceSteps,
        guidanceScale: FLASH_PRESET.guidanceScale,
      },
    };
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

function schedulerTensor(t: HostTensor): SchedulerTensor {
  if (t.dtype !== 'float32') throw new OptionError(`expected float32 latents, got ${t.dtype}`);
  return { data: t.data as Float32Array, shape: t.shape };
}

function checkInteger(v: number, name: string, min: number): void {
  if (!Number.isInteger(v) || v < min) throw new OptionError(`${name} must be an integer ≥ ${min}, got ${v}`);
}

function asFloat(t: HostTensor): HostTensor {
  if (t.dtype === 'float32') return t;
  if (t.dtype === 'int64')
    return hostTensor('float32', t.shape, Float32Array.from(t.data as BigInt64Array, Number));
  return hostTensor('float32', t.shape, Float32Array.from(t.data as Int32Array));
}

/** Concatenate along the batch axis. */
function concatBatch(a: HostTensor, b: HostTensor): HostTensor {
  const fa = asFloat(a);
  const fb = asFloat(b);
  const data = new Float32Array(fa.data.length + fb.data.length);
  data.set(fa.data as Float32Array);
  data.set(fb.data as Float32Array, fa.data.length);
  return hostTensor('float32', [fa.shape[0] + fb.shape[0], ...fa.shape.slice(1)], data);
}

/** Each batch item repeated n times in place (torch's repeat + view as diffusers does). */
function repeatBatch(t: HostTensor, n: number): HostTensor {
  if (n === 1) return t;
  const item = t.data.length / t.shape[0];
  const data = new Float32Array(t.data.length * n);
  for (let b = 0; b < t.shape[0]; b++) {
    for (let r = 0; r < n; r++)
      data.set((t.data as Float32Array).subarray(b * item, (b + 1) * item), (b * n + r) * item);
  }
  return hostTensor('float32', [t.shape[0] * n, ...t.shape.slice(1)], data);
}

/** uncond + g·(text − uncond) on the two batch halves, in float32 as torch. */
function guide(out: HostTensor, g: number): HostTensor {
  const half = out.data.length / 2;
  const d = out.data as Float32Array;
  const r = new Float32Array(half);
  const f = Math.fround;
  const gf = f(g);
  for (let i = 0; i < half; i++) r[i] = f(d[i] + f(gf * f(d[half + i] - d[i])));
  return hostTensor('float32', [out.shape[0] / 2, ...out.shape.slice(1)], r);
}

/** The first `c` channels of [B, C', H, W]. */
function firstChannels(t: HostTensor, c: number): HostTensor {
  const [b, all, h, w] = t.shape;
  const plane = h * w;
  const r = new Float32Array(b * c * plane);
  for (let i = 0; i < b; i++)
    r.set((t.data as Float32Array).subarray(i * all * plane, (i * all + c) * plane), i * c * plane);
  return hostTensor('float32', [b, c, h, w], r);
}
