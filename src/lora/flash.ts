/**
 * Flash Diffusion (Jasper Research, arXiv 2406.02347): a few-step student distilled into a LoRA,
 * sampled with the LCM scheduler in 4 steps without guidance. The official recipe
 * (methods/tgate_flash.md §2.5) for flash-sd, flash-sdxl and flash-pixart:
 *
 *   pipe.scheduler = LCMScheduler.from_pretrained(base, subfolder="scheduler", timestep_spacing="trailing")
 *   load the LoRA (load_lora_weights, or PeftModel.from_pretrained for PixArt), optionally fuse_lora()
 *   pipe(prompt, num_inference_steps=4, guidance_scale=0)
 *
 * flash-sd3 is the same recipe with the fork's FlashFlowMatchEulerDiscreteScheduler in place of LCM
 * (`FLASH_SD3_PRESET`, `loadFlashFlowMatchLora`).
 *
 * The LoRA scale is the adapter's own alpha/r (§2.6 e): PixArt and SD3 were trained with PEFT's
 * default lora_alpha 8 at r 64, so 0.125, while SD-1.5/SDXL use alpha = r, so 1. It comes from the
 * file (adapter_config.json, alpha tensors) and is never assumed; `fuse` gets loraScale 1.
 */
import { OptionError } from '../errors.js';
import type { SchedulerConfigInput } from '../schedulers/config.js';
import type { Scheduler } from '../schedulers/index.js';
import {
  FlashFlowMatchEulerDiscreteScheduler,
  LCMScheduler,
  schedulerFromConfig,
} from '../schedulers/index.js';
import type { AdapterSet, LoadedLora } from './adapters.js';
import type { ModelParameters } from './format.js';

/** The sampling settings of the official Flash pipelines (§2.5). */
export const FLASH_PRESET = {
  scheduler: 'LCMScheduler',
  numInferenceSteps: 4,
  /** 0: the diffusers pipelines then build no CFG batch; only the prompt is encoded. */
  guidanceScale: 0,
  /** What the recipe passes; diffusers' LCMScheduler ignores it (§2.6 b, §3.2). */
  timestepSpacing: 'trailing',
} as const;

/** The sampling settings of jasperai/flash-sd3 (§2.5): the fork's flow-matching sampler, 4 steps, no CFG. */
export const FLASH_SD3_PRESET = {
  scheduler: 'FlashFlowMatchEulerDiscreteScheduler',
  numInferenceSteps: 4,
  /** 0: StableDiffusion3Pipeline then encodes no negative prompt and runs no CFG batch. */
  guidanceScale: 0,
} as const;

/**
 * The LCM scheduler of the Flash recipe, from the base pipeline's scheduler config (parsed
 * scheduler_config.json or its text): `LCMScheduler.from_config(config, timestep_spacing="trailing")`.
 * With 4 steps its timesteps are [999, 759, 499, 259], as the official pipelines sample.
 */
export function flashScheduler(baseConfig: SchedulerConfigInput | string): LCMScheduler {
  const scheduler = schedulerFromConfig(baseConfig, {
    _class_name: FLASH_PRESET.scheduler,
    timestep_spacing: FLASH_PRESET.timestepSpacing,
  });
  if (!(scheduler instanceof LCMScheduler)) throw new OptionError('flashScheduler: expected an LCMScheduler');
  return scheduler;
}

/**
 * The flash-sd3 sampler from the SD3 pipeline's scheduler config (its num_train_timesteps and shift,
 * 3.0 for SD3-medium): `FlashFlowMatchEulerDiscreteScheduler.from_config(config)`. With 4 steps its
 * timesteps are [1000, 857.69, 602.15, 8.93] (§2.5).
 */
export function flashFlowMatchScheduler(
  baseConfig: SchedulerConfigInput | string,
): FlashFlowMatchEulerDiscreteScheduler {
  const scheduler = schedulerFromConfig(baseConfig, { _class_name: FLASH_SD3_PRESET.scheduler });
  if (!(scheduler instanceof FlashFlowMatchEulerDiscreteScheduler)) {
    throw new OptionError('flashFlowMatchScheduler: expected a FlashFlowMatchEulerDiscreteScheduler');
  }
  return scheduler;
}

/**
 * The timesteps the student was trained at, which the Flash repository's own sampling passes as
 * custom LCM timesteps (§2.5): trailing spacing, [999, 749, 499, 249] for 4 steps. An option for
 * `scheduler.setTimesteps(undefined, { timesteps })`; the default recipe uses LCM's own.
 */
export function flashTrainedTimesteps(
  numInferenceSteps: number = FLASH_PRESET.numInferenceSteps,
  numTrainTimesteps = 1000,
): number[] {
  if (
    !Number.isSafeInteger(numInferenceSteps) ||
    numInferenceSteps < 1 ||
    numInferenceSteps > numTrainTimesteps
  ) {
    throw new OptionError(
      `flashTrainedTimesteps: numInferenceSteps is ${numInferenceSteps}; expected 1..${numTrainTimesteps}`,
    );
  }
  const ratio = numTrainTimesteps / numInferenceSteps;
  // diffusers "trailing": round(arange(T, 0, -T/n)) − 1.
  return Array.from({ length: numInferenceSteps }, (_, i) => Math.round(numTrainTimesteps - i * ratio) - 1);
}

export interface FlashSetup<S extends Scheduler = LCMScheduler> {
  readonly adapter: LoadedLora;
  readonly scheduler: S;
  readonly numInferenceSteps: number;
  readonly guidanceScale: number;
  /** The two settings above as the options a pipeline's run takes (spread into `run`). */
  readonly runOptions: { numInferenceSteps: number; guidanceScale: number };
  /** The adapter's alpha/r per module (e.g. [0.125] for flash-pixart): the LoRA scale in effect. */
  readonly loraScale: readonly number[];
  readonly fused: boolean;
}

/** What the Flash loaders take besides the adapter set and the LoRA's path. */
export interface FlashLoadOptions {
  modelParameters: ModelParameters;
  /** The base pipeline's scheduler config, which the Flash scheduler is built from. */
  schedulerConfig: SchedulerConfigInput | string;
  adapterName?: string;
  fuse?: boolean;
}

/**
 * Loads a Flash LoRA into `adapters` and returns the rest of the recipe. Fused by default (no
 * per-step cost); `fuse: false` keeps it switchable, e.g. to combine it with a style LoRA via
 * `setAdapters(['flash', 'style'], [1, 1])` (§2.8).
 */
export async function loadFlashLora(
  adapters: AdapterSet,
  path: string,
  options: FlashLoadOptions,
): Promise<FlashSetup> {
  return loadFlashAdapter(adapters, path, options, flashScheduler(options.schedulerConfig), FLASH_PRESET);
}

/**
 * flash-sd3's recipe (§2.5): the PEFT LoRA at its own alpha/r (8/64), as `loadFlashLora`, with
 * FlashFlowMatchEulerDiscreteScheduler from the SD3 scheduler config, 4 steps, guidance 0.
 */
export async function loadFlashFlowMatchLora(
  adapters: AdapterSet,
  path: string,
  options: FlashLoadOptions,
): Promise<FlashSetup<FlashFlowMatchEulerDiscreteScheduler>> {
  const scheduler = flashFlowMatchScheduler(options.schedulerConfig);
  return loadFlashAdapter(adapters, path, options, scheduler, FLASH_SD3_PRESET);
}

/** The recipe's common part: the adapter loaded (and fused), with the given scheduler and step settings. */
async function loadFlashAdapter<S extends Scheduler>(
  adapters: AdapterSet,
  path: string,
  options: FlashLoadOptions,
  scheduler: S,
  preset: { readonly numInferenceSteps: number; readonly guidanceScale: number },
): Promise<FlashSetup<S>> {
  const adapter = await adapters.load(path, {
    adapterName: options.adapterName ?? 'flash',
    modelParameters: options.modelParameters,
  });
  const fuse = options.fuse ?? true;
  // alpha/r is applied per module from the file, so the fuse-time multiplier is 1 (fuse_lora's default).
  if (fuse) adapters.fuse({ adapterNames: [adapter.adapterName], loraScale: 1 });
  const { numInferenceSteps, guidanceScale } = preset;
  return {
    adapter,
    scheduler,
    numInferenceSteps,
    guidanceScale,
    runOptions: { numInferenceSteps, guidanceScale },
    loraScale: adapter.alphaOverRank,
    fused: fuse,
  };
}
