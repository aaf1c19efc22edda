/**
 * What the flow-matching transformer pipelines (diffusers' `StableDiffusion3Pipeline` and
 * `FluxPipeline`) share: the run options and components they have in common, the conditioning a
 * transformer call takes, prompt_2's fallback, the checks of given embeddings, and calculate_shift
 * from the scheduler config; their folders load through `loadPipelineFolder`, as the UNet pipelines'
 * do. Each pipeline says how prompts become that conditioning and how latents are laid out.
 */
import { OptionError } from '../errors.js';
import type { AutoencoderKL } from '../models/autoencoder-kl.js';
import type { NoiseGenerator } from '../random/torch-generator.js';
import type { HostTensor } from '../runtime/host-tensor.js';
import type { Runtime } from '../runtime/runtime.js';
import { calculateShift } from '../schedulers/index.js';
import type { Scheduler } from '../schedulers/scheduler.js';
import { repeatBatch } from './batch.js';
import type { LoopCallbacks } from './denoise.js';
import type { ImageToImageOptions } from './image-to-image.js';
import { negativeList } from './unet-pipeline.js';

/** The `run` options both pipelines take alike (diffusers' `__call__` arguments in camelCase). */
export interface FlowMatchingRunOptions extends LoopCallbacks, ImageToImageOptions {
  negativePrompt2?: string | string[];
  negativePromptEmbeds?: HostTensor;
  negativePooledPromptEmbeds?: HostTensor;
  /**
   * Default `defaultSize` (1024 for SD3 medium and FLUX.1); multiples of the VAE factor × the patch
   * size (SD3) or × 2 (FLUX's 2×2 latent patches).
   */
  height?: number;
  width?: number;
  numImagesPerPrompt?: number;
  /** Seed of a torch-compatible CPU generator (same seed → same latents as diffusers on CPU). */
  seed?: number;
  generator?: NoiseGenerator;
  /** T5 tokens per prompt, at most 512 (MAX_SEQUENCE_LENGTH); default 256 for SD3, 512 for FLUX. */
  maxSequenceLength?: number;
  /** 'latent' returns the latents before decoding (FLUX's packed), as diffusers' output_type 'latent'. */
  outputType?: 'image' | 'latent';
}

/** The components besides the text encoders, `T` the pipeline's transformer class. */
export interface FlowMatchingComponents<T> {
  transformer: T;
  /** Absent in pipelines built from components for latent output only. */
  vae?: AutoencoderKL;
  scheduler: Scheduler;
  runtime: Runtime;
}

/** One side (positive or negative) of the transformer's text conditioning. */
export interface TextConditioning {
  /** encoder_hidden_states [B, L, joint_attention_dim] */
  embeds: HostTensor;
  /** pooled_projections [B, pooled_projection_dim] */
  pooled: HostTensor;
}

/** Both parts of `c` repeated per image (numImagesPerPrompt). */
export function repeatConditioning(c: TextConditioning, perPrompt: number): TextConditioning {
  return { embeds: repeatBatch(c.embeds, perPrompt), pooled: repeatBatch(c.pooled, perPrompt) };
}

/** diffusers' `prompt_2 = prompt_2 or prompt`: an absent or empty prompt2 (prompt3, …) falls back to the prompts. */
export function orPrompt(value: string | string[] | undefined, prompts: string[], what: string): string[] {
  if (value === undefined || value === '' || (Array.isArray(value) && value.length === 0)) return prompts;
  return negativeList(value, prompts.length, what);
}

/**
 * The transformer reads [B, L, joint_attention_dim]; a wrong width of embeddings given or encoded is
 * named here, not deep in its graph.
 */
export function checkEmbedsWidth(
  name: string,
  t: HostTensor,
  transformer: { dir: string; config: { jointAttentionDim: number } },
): HostTensor {
  const width = transformer.config.jointAttentionDim;
  if (t.shape.length !== 3 || t.shape[2] !== width) {
    throw new OptionError(
      `${name} must have shape [B, L, ${width}] (joint_attention_dim of ${transformer.dir}), got [${t.shape.join(', ')}]`,
    );
  }
  return t;
}

/** The pipeline's VAE, which `what` needs; pipelines built without one give latents only. */
export function requireVae(vae: AutoencoderKL | undefined, what: string): AutoencoderKL {
  if (!vae) throw new OptionError(`this pipeline has no VAE, which ${what} needs: use outputType "latent"`);
  return vae;
}

/**
 * diffusers' `calculate_shift` of the image's token count with the scheduler config's keys, and the
 * pipeline's fallbacks where they are absent: diffusers' 256, 4096 and 0.5, and `maxShift` for
 * max_shift (1.16 in StableDiffusion3Pipeline, 1.15 in FluxPipeline).
 */
export function configShift(scheduler: Scheduler, imageSeqLen: number, maxShift: number): number {
  const config = scheduler.config as Record<string, unknown>;
  const value = (key: string, fallback: number): number =>
    typeof config[key] === 'number' ? (config[key] as number) : fallback;
  return calculateShift(
    imageSeqLen,
    value('base_image_seq_len', 256),
    value('max_image_seq_len', 4096),
    value('base_shift', 0.5),
    value('max_shift', maxShift),
  );
}
