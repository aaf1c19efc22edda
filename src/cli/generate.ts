import { writeFileAtomic } from '../io/atomic.js';
import { encodePng, imagesToRgb } from '../io/png.js';
import { OptionError } from '../errors.js';
import { readImageFile } from '../io/image.js';
import type { HostTensor } from '../runtime/host-tensor.js';
import {
  DiffusionPipeline,
  FluxPipeline,
  PixArtPipeline,
  StableDiffusion3Pipeline,
} from '../pipelines/index.js';
import type { AnyPipeline, HighResStage, PipelineOutput, ProgressEvent } from '../pipelines/index.js';
import { highResStages } from '../pipelines/highres.js';
import { SHIPPED_MODEL_PATH, shippedModelDir } from '../pipelines/shipped-model.js';
import { Runtime } from '../runtime/runtime.js';
import { SCHEDULER_NAMES, schedulerFromConfig } from '../schedulers/index.js';
import type { FlagSpec, ParsedArgs } from './args.js';
import { parseArgs, usage } from './args.js';
import { progressBar, ProgressLine } from './progress.js';
import { runtimeFlags, runtimeOptions } from './runtime-flags.js';
import { accelFlags, applyAccel } from './accel.js';
import {
  attentionFlags,
  attentionOption,
  deepCacheFlags,
  deepCacheOption,
  loraOptions,
  quantizeFlag,
  quantizeOption,
  tgateFlag,
  tgateOption,
} from './acceleration-flags.js';

const FLAGS: Record<string, FlagSpec> = {
  model: {
    type: 'string',
    description: `a diffusers pipeline folder (model_index.json: PixArt-α/Σ, Stable Diffusion 1.x/2.x, SDXL, LCM, SD3/SD3.5, FLUX.1); default: the shipped emoji model, ${SHIPPED_MODEL_PATH}/`,
  },
  prompt: { type: 'string', description: 'what to draw (or give it as the first argument)' },
  'negative-prompt': {
    type: 'string',
    description: 'what to steer away from (with guidance > 1; FLUX: with --true-cfg-scale)',
  },
  steps: {
    type: 'integer',
    description: "denoising steps (default: the pipeline's, 20 PixArt, 50 SD/SDXL, 4 LCM, 28 SD3/FLUX)",
  },
  guidance: {
    type: 'number',
    description:
      "classifier-free guidance scale, off at ≤ 1 (default: the pipeline's, 4.5 PixArt, 7.5 SD, 5 SDXL, 7 SD3); FLUX.1-dev: its distilled guidance input (default 3.5)",
  },
  'true-cfg-scale': {
    type: 'number',
    description:
      'FLUX: true classifier-free guidance scale (> 1), with --negative-prompt; twice the batch per step',
  },
  'guidance-rescale': {
    type: 'number',
    description:
      'Stable Diffusion: rescale the guided prediction (Lin et al. 2023; 0.7 suggested), default 0',
  },
  'clip-skip': {
    type: 'integer',
    description: 'Stable Diffusion, SD3: text encoder layers to skip from the end',
  },
  'init-image': {
    type: 'string',
    description: 'image-to-image: a PNG (or, with sharp, JPEG/WebP) to start from; sets the output size',
  },
  strength: {
    type: 'number',
    description:
      'image-to-image: how much of the schedule to run from the noised image, in (0, 1] (default 0.8, SDXL 0.3, SD3 and FLUX 0.6)',
  },
  highres: {
    type: 'string',
    description:
      "staged high resolution (CLEAR's recipe), FLUX and PixArt: SCALE[:STRENGTH] per refine stage, comma-separated (4, 2:0.4,2:0.3); the base image is --width × --height with --steps/--guidance, each stage resizes ×SCALE (PIL bicubic) and refines by image-to-image (strength default 0.7); --attention (--accel's student, --tgate) runs in the refine stages",
  },
  'highres-steps': {
    type: 'integer',
    description: "with --highres: each refine stage's schedule length (default FLUX 20, PixArt --steps)",
  },
  'highres-guidance': {
    type: 'number',
    description: 'with --highres: the refine guidance (default FLUX 7.5, PixArt --guidance)',
  },
  seed: { type: 'integer', description: 'seed of the torch-compatible generator (random if absent)' },
  width: { type: 'integer', description: 'image width in pixels (default: the model size)' },
  height: { type: 'integer', description: 'image height in pixels (default: the model size)' },
  scheduler: {
    type: 'string',
    description: `sampler: ${Object.keys(SCHEDULER_NAMES).join(', ')} (default: the folder's)`,
  },
  images: { type: 'integer', description: 'images per prompt', default: 1 },
  out: {
    type: 'string',
    description: 'PNG file to write (-N is added for several images)',
    default: 'image.png',
  },
  ...accelFlags,
  ...attentionFlags,
  ...tgateFlag,
  ...deepCacheFlags,
  flash: {
    type: 'string',
    description: 'Flash Diffusion LoRA: fused, LCM, 4 steps, guidance 0 unless overridden',
  },
  ...quantizeFlag,
  ...runtimeFlags,
  help: { type: 'boolean', description: 'show this help' },
};

function stepLine(step: number, total: number, elapsedMs: number): string {
  const rate = step / (elapsedMs / 1000);
  const eta = rate > 0 ? (total - step) / rate : 0;
  return `step ${step}/${total} ${progressBar(step / total)} ${rate.toFixed(2)} it/s, ETA ${eta.toFixed(0)}s`;
}

export async function generateCommand(argv: string[]): Promise<number> {
  const { positional, flags } = parseArgs(argv, FLAGS, 'generate');
  if (flags.help) {
    console.log(
      usage(
        'generate "PROMPT" [--model DIR] [options]',
        'Text to image (or image to image with --init-image) with a diffusers PixArt-α/Σ, Stable Diffusion, SDXL, SD3 or FLUX folder.',
        FLAGS,
      ),
    );
    return 0;
  }
  if (flags.prompt !== undefined && positional.length > 0) {
    throw new OptionError(
      `generate: the prompt is given twice, as --prompt and as "${positional.join(' ')}"; give one`,
    );
  }
  const prompt = (flags.prompt as string | undefined) ?? positional.join(' ');
  if (!prompt) throw new OptionError('generate: give a prompt: velodiff generate "red heart"');
  const quantize = quantizeOption(flags, 'generate');
  // Checked before the model loads.
  highresFlag(flags);
  const model = flags.model === undefined ? shippedModelDir() : String(flags.model);
  const runtime = new Runtime(runtimeOptions(flags));
  try {
    const pipe = await DiffusionPipeline.fromPretrained(model, { runtime, quantize });
    try {
      // Said whether asked for or read from a folder in the int8 format.
      const denoiser = 'transformer' in pipe ? pipe.transformer : pipe.unet;
      if (denoiser.int8Modules) {
        console.error(
          `int8: ${denoiser.int8Modules.size} Linear modules of the ${denoiser.className} run in int8 (the VAE in float32)`,
        );
      }
      const output =
        pipe instanceof StableDiffusion3Pipeline || pipe instanceof FluxPipeline
          ? await runFlowMatching(pipe, flags, prompt)
          : await runDenoiser(pipe, flags, prompt);
      const images = output.images;
      if (!images) throw new Error('the pipeline returned no images');
      const [, , h, w] = images.shape;
      const rgbs = imagesToRgb(images.data as Float32Array, images.shape);
      const out = String(flags.out);
      for (let i = 0; i < rgbs.length; i++) {
        const path = rgbs.length === 1 ? out : out.replace(/(\.png)?$/i, `-${i}.png`);
        await writeFileAtomic(path, encodePng(rgbs[i], w, h));
        console.log(`wrote ${path} (${w}×${h})`);
      }
    } finally {
      await pipe.close();
    }
  } finally {
    await runtime.dispose();
  }
  return 0;
}

/**
 * `--highres SCALE[:STRENGTH][,…]` with `--highres-steps` and `--highres-guidance` (every stage),
 * as the stages of a run's `highres` option; undefined without `--highres`.
 */
function highresFlag(flags: ParsedArgs['flags']): HighResStage[] | undefined {
  const spec = flags.highres as string | undefined;
  if (spec === undefined) {
    for (const flag of ['highres-steps', 'highres-guidance']) {
      if (flags[flag] !== undefined) throw new OptionError(`generate: --${flag} needs --highres SCALE`);
    }
    return undefined;
  }
  for (const flag of ['init-image', 'strength']) {
    if (flags[flag] !== undefined) {
      throw new OptionError(
        `generate: --${flag} does not go with --highres, which makes its base image from the prompt; give the refine strength as --highres SCALE:STRENGTH`,
      );
    }
  }
  const steps = flags['highres-steps'] as number | undefined;
  const guidance = flags['highres-guidance'] as number | undefined;
  const stages = spec.split(',').map((part): HighResStage => {
    const fields = part.split(':');
    const numbers = fields.map((f) => (f.trim() === '' ? Number.NaN : Number(f)));
    if (fields.length > 2 || numbers.some((n) => !Number.isFinite(n))) {
      throw new OptionError(
        `generate: --highres "${spec}": expected SCALE[:STRENGTH] per stage, comma-separated (e.g. 4, 2:0.5 or 2:0.4,2:0.3), got "${part}"`,
      );
    }
    return {
      scale: numbers[0],
      ...(numbers.length === 2 ? { strength: numbers[1] } : {}),
      ...(steps === undefined ? {} : { numInferenceSteps: steps }),
      ...(guidance === undefined ? {} : { guidanceScale: guidance }),
    };
  });
  // The library's own checks (scale an integer ≥ 2, strength in (0, 1], steps ≥ 1), named by the flag.
  return highResStages(stages.length === 1 ? stages[0] : stages, `generate: --highres "${spec}"`);
}

/** The LoRA verbs the PixArt, UNet, SD3 and FLUX pipelines share, and the Flash recipe of those that have one. */
interface LoraVerbs {
  readonly className: string;
  loadLoraWeights(path: string, options: { adapterName?: string }): Promise<{ ignored: readonly unknown[] }>;
  setAdapters(names: string[], weights: number[]): void;
  useFlashDiffusion?(path: string): Promise<{
    adapter: { modules: readonly unknown[]; alphaOverRank: readonly number[]; ignored: readonly unknown[] };
    runOptions: { numInferenceSteps?: number; guidanceScale?: number };
  }>;
  readonly scheduler: object;
}

/**
 * --flash (the pipeline's Flash recipe: its LoRA fused, its scheduler, and the steps and guidance it
 * returns as defaults) and each --lora FILE[:SCALE] as adapter lora_i at its scale.
 */
async function applyLoraFlags(
  pipe: LoraVerbs,
  flags: ParsedArgs['flags'],
  loras: ReturnType<typeof loraOptions>,
): Promise<{ steps?: number; guidance?: number }> {
  const recipe: { steps?: number; guidance?: number } = {};
  if (flags.flash !== undefined) {
    if (!pipe.useFlashDiffusion)
      throw new OptionError(`generate: --flash: ${pipe.className} has no Flash Diffusion recipe`);
    const { adapter, runOptions } = await pipe.useFlashDiffusion(String(flags.flash));
    recipe.steps = runOptions.numInferenceSteps;
    recipe.guidance = runOptions.guidanceScale;
    console.error(
      `Flash Diffusion: ${adapter.modules.length} LoRA modules fused (alpha/r ${adapter.alphaOverRank.join(', ')}), ${pipe.scheduler.constructor.name}`,
    );
    if (adapter.ignored.length > 0) {
      console.error(
        `warning: ${String(flags.flash)}: ${adapter.ignored.length} keys match no module of the model and are ignored`,
      );
    }
  }
  for (const [i, { path }] of loras.entries()) {
    const loaded = await pipe.loadLoraWeights(path, { adapterName: `lora_${i}` });
    if (loaded.ignored.length > 0) {
      console.error(
        `warning: ${path}: ${loaded.ignored.length} keys match no module of the model and are ignored`,
      );
    }
  }
  if (loras.length > 0)
    pipe.setAdapters(
      loras.map((_, i) => `lora_${i}`),
      loras.map((l) => l.scale),
    );
  return recipe;
}

/** PixArt, Stable Diffusion 1.x/2.x, SDXL and LCM folders, with their accelerations and LoRAs. */
async function runDenoiser(
  pipe: Exclude<AnyPipeline, StableDiffusion3Pipeline | FluxPipeline>,
  flags: ParsedArgs['flags'],
  prompt: string,
): Promise<PipelineOutput> {
  let steps = flags.steps as number | undefined;
  let guidance = flags.guidance as number | undefined;
  const loras = loraOptions(flags);
  if (flags['true-cfg-scale'] !== undefined) {
    throw new OptionError(
      `generate: --true-cfg-scale applies to FLUX folders, not ${pipe.className}: use --guidance`,
    );
  }
  const highres = highresFlag(flags);
  if (highres && !(pipe instanceof PixArtPipeline)) {
    throw new OptionError(
      `generate: --highres runs on FLUX and PixArt folders, not ${pipe.className}; for a larger image, run --init-image with a resized image`,
    );
  }
  if (pipe instanceof PixArtPipeline) {
    for (const flag of ['guidance-rescale', 'clip-skip']) {
      if (flags[flag] !== undefined)
        throw new OptionError(
          `generate: --${flag} applies to Stable Diffusion folders, not ${pipe.className}`,
        );
    }
  }
  const recipe = await applyLoraFlags(pipe, flags, loras);
  steps ??= recipe.steps;
  guidance ??= recipe.guidance;
  if (flags.scheduler !== undefined) {
    const name = String(flags.scheduler);
    const className = SCHEDULER_NAMES[name] ?? name;
    pipe.scheduler = schedulerFromConfig({ ...pipe.scheduler.config, _class_name: className });
  }
  if (flags.strength !== undefined && flags['init-image'] === undefined) {
    throw new OptionError('generate: --strength needs --init-image FILE');
  }
  let attention = attentionOption(flags);
  let tgate = tgateOption(flags);
  if (flags.accel !== undefined) {
    if (!(pipe instanceof PixArtPipeline)) {
      throw new OptionError(
        `generate: --accel runs velodiff's distilled students of PixArt models, not ${pipe.className}; use --attention, --tgate, --flash, --deep-cache-interval`,
      );
    }
    const accel = await applyAccel(pipe, flags, {
      command: 'generate',
      shipped: flags.model === undefined,
      steps,
      guidance,
      tgate,
      attention,
      flash: flags.flash !== undefined,
    });
    for (const line of accel?.lines ?? []) console.error(line);
    attention = accel?.attention ?? attention;
    tgate = accel?.tgate ?? tgate;
    steps = accel?.steps ?? steps;
    guidance = accel?.guidance ?? guidance;
  } else if (flags.students !== undefined) {
    throw new OptionError('generate: --students needs --accel');
  }
  let image: HostTensor | undefined;
  if (flags['init-image'] !== undefined) image = await readImageFile(String(flags['init-image']));
  const progress = new ProgressLine();
  const common = {
    prompt,
    negativePrompt: flags['negative-prompt'] as string | undefined,
    numInferenceSteps: steps,
    guidanceScale: guidance,
    attention,
    tgate,
    seed: flags.seed as number | undefined,
    width: flags.width as number | undefined,
    height: flags.height as number | undefined,
    numImagesPerPrompt: flags.images as number,
    image,
    strength: flags.strength as number | undefined,
    onProgress: (e: ProgressEvent) => progress.update(stepLine(e.step, e.totalSteps, e.elapsedMs)),
  };
  const deepCache = deepCacheOption(flags);
  if (deepCache && pipe instanceof PixArtPipeline) {
    throw new OptionError(
      'generate: --deep-cache-interval works on UNet models (SD 1.x/2.x, SDXL), not PixArt',
    );
  }
  // With --highres the accelerations run in the refine stages; the base image uses full attention.
  const staged = highres
    ? {
        ...common,
        attention: undefined,
        tgate: undefined,
        highres: highres.map((stage) => ({ ...stage, attention, tgate })),
      }
    : common;
  const output =
    pipe instanceof PixArtPipeline
      ? await pipe.run(staged)
      : await pipe.run({
          ...common,
          deepCache,
          guidanceRescale: flags['guidance-rescale'] as number | undefined,
          clipSkip: flags['clip-skip'] as number | undefined,
        });
  progress.done();
  return output;
}

/** Why the flags of the PixArt and UNet paths do not reach SD3 or FLUX. */
const NOT_FOR_SD3_OR_FLUX: Readonly<Record<string, string>> = {
  accel: "runs velodiff's distilled students of PixArt models",
  students: "belongs to --accel, which runs velodiff's distilled students of PixArt models",
  tgate: 'T-GATE runs on PixArt and UNet (SD 1.x/2.x, SDXL) folders',
  'deep-cache-interval': 'DeepCache works on UNet models (SD 1.x/2.x, SDXL)',
  'deep-cache-branch': 'DeepCache works on UNet models (SD 1.x/2.x, SDXL)',
  'guidance-rescale': 'guidance rescale is a Stable Diffusion 1.x/2.x and SDXL option',
};

/** SD3 / SD3.5 and FLUX.1 folders: flow matching with their folder's scheduler, no accelerations but FLUX's CLEAR. */
async function runFlowMatching(
  pipe: StableDiffusion3Pipeline | FluxPipeline,
  flags: ParsedArgs['flags'],
  prompt: string,
): Promise<PipelineOutput> {
  const flux = pipe instanceof FluxPipeline;
  const refused: Record<string, string> = flux
    ? {
        ...NOT_FOR_SD3_OR_FLUX,
        'clip-skip': "FLUX reads CLIP's pooled output, which skipping layers does not reach",
        flash: 'Flash Diffusion students exist for PixArt, SD 1.5, SDXL and SD3, not FLUX',
      }
    : {
        ...NOT_FOR_SD3_OR_FLUX,
        attention: "CLEAR has a FLUX form only, and LinFusion a UNet one; SD3's attention stays full",
        'attention-weights':
          "CLEAR has a FLUX form only, and LinFusion a UNet one; SD3's attention stays full",
        'true-cfg-scale': 'SD3 guides by classifier-free guidance already: use --guidance',
        highres: "CLEAR's staged recipe runs on FLUX (and PixArt) folders",
        'highres-steps': "CLEAR's staged recipe runs on FLUX (and PixArt) folders",
        'highres-guidance': "CLEAR's staged recipe runs on FLUX (and PixArt) folders",
      };
  for (const [flag, why] of Object.entries(refused)) {
    if (flags[flag] !== undefined)
      throw new OptionError(`generate: --${flag} does not apply to ${pipe.className}: ${why}`);
  }
  if (flags.scheduler !== undefined) {
    const name = String(flags.scheduler);
    if ((SCHEDULER_NAMES[name] ?? name) !== 'FlowMatchEulerDiscreteScheduler') {
      throw new OptionError(
        `generate: --scheduler ${name} does not apply to ${pipe.className}, which samples by flow matching: leave --scheduler out or give flow-match`,
      );
    }
  }
  if (flags.strength !== undefined && flags['init-image'] === undefined) {
    throw new OptionError('generate: --strength needs --init-image FILE');
  }
  const negativePrompt = flags['negative-prompt'] as string | undefined;
  const trueCfgScale = flags['true-cfg-scale'] as number | undefined;
  // diffusers turns true CFG off without a word when either half is missing; the CLI says so.
  if (flux && (negativePrompt === undefined) !== (trueCfgScale === undefined)) {
    throw new OptionError(
      negativePrompt === undefined
        ? 'generate: --true-cfg-scale on FluxPipeline needs --negative-prompt TEXT'
        : 'generate: --negative-prompt on FluxPipeline steers only under true CFG: add --true-cfg-scale S (> 1); --guidance is FLUX.1-dev distilled guidance, not CFG',
    );
  }
  const attention = attentionOption(flags);
  const recipe = await applyLoraFlags(pipe, flags, loraOptions(flags));
  const image =
    flags['init-image'] === undefined ? undefined : await readImageFile(String(flags['init-image']));
  const progress = new ProgressLine();
  const common = {
    prompt,
    negativePrompt,
    numInferenceSteps: (flags.steps as number | undefined) ?? recipe.steps,
    guidanceScale: (flags.guidance as number | undefined) ?? recipe.guidance,
    seed: flags.seed as number | undefined,
    width: flags.width as number | undefined,
    height: flags.height as number | undefined,
    numImagesPerPrompt: flags.images as number,
    image,
    strength: flags.strength as number | undefined,
    onProgress: (e: ProgressEvent) => progress.update(stepLine(e.step, e.totalSteps, e.elapsedMs)),
  };
  const highres = highresFlag(flags);
  const output =
    pipe instanceof FluxPipeline
      ? await pipe.run({
          ...common,
          trueCfgScale,
          // With --highres, --attention is the refine stages' (the notebook's base runs full attention).
          ...(highres ? { highres: highres.map((stage) => ({ ...stage, attention })) } : { attention }),
        })
      : await pipe.run({ ...common, clipSkip: flags['clip-skip'] as number | undefined });
  progress.done();
  return output;
}
