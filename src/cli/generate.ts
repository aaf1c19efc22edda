import { writeFileAtomic } from '../io/atomic.js';
import { encodePng, imagesToRgb } from '../io/png.js';
import { OptionError } from '../errors.js';
import { DiffusionPipeline } from '../pipelines/index.js';
import { SHIPPED_MODEL_PATH, shippedModelDir } from '../pipelines/shipped-model.js';
import { Runtime } from '../runtime/runtime.js';
import { SCHEDULER_NAMES, schedulerFromConfig } from '../schedulers/index.js';
import type { FlagSpec } from './args.js';
import { parseArgs, usage } from './args.js';
import { progressBar, ProgressLine } from './progress.js';
import { runtimeFlags, runtimeOptions } from './runtime-flags.js';
import {
  attentionFlags,
  attentionOption,
  loraOptions,
  tgateFlag,
  tgateOption,
} from './acceleration-flags.js';

const FLAGS: Record<string, FlagSpec> = {
  model: {
    type: 'string',
    description: `a diffusers pipeline folder (model_index.json); default: the shipped emoji model, ${SHIPPED_MODEL_PATH}/`,
  },
  prompt: { type: 'string', description: 'what to draw (or give it as the first argument)' },
  'negative-prompt': { type: 'string', description: 'what to steer away from (with guidance > 1)' },
  steps: { type: 'integer', description: 'denoising steps', default: 20 },
  guidance: { type: 'number', description: 'classifier-free guidance scale (off at ≤ 1)', default: 4.5 },
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
  ...attentionFlags,
  ...tgateFlag,
  flash: {
    type: 'string',
    description: 'Flash Diffusion LoRA: fused, LCM, 4 steps, guidance 0 unless overridden',
  },
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
        'Text to image with a diffusers PixArt-α/Σ folder.',
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
  const model = flags.model === undefined ? shippedModelDir() : String(flags.model);
  const runtime = new Runtime(runtimeOptions(flags));
  try {
    const pipe = await DiffusionPipeline.fromPretrained(model, { runtime });
    try {
      const stepsGiven = argv.some((a) => a === '--steps' || a.startsWith('--steps='));
      const guidanceGiven = argv.some((a) => a === '--guidance' || a.startsWith('--guidance='));
      let steps = flags.steps as number;
      let guidance = flags.guidance as number;
      if (flags.flash !== undefined) {
        const { adapter, runOptions } = await pipe.useFlashDiffusion(String(flags.flash));
        if (!stepsGiven) steps = runOptions.numInferenceSteps as number;
        if (!guidanceGiven) guidance = runOptions.guidanceScale as number;
        console.error(
          `Flash Diffusion: ${adapter.modules.length} LoRA modules fused (alpha/r ${adapter.alphaOverRank.join(', ')}), LCM sampling`,
        );
      }
      const loras = loraOptions(flags);
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
      if (flags.scheduler !== undefined) {
        const name = String(flags.scheduler);
        const className = SCHEDULER_NAMES[name] ?? name;
        pipe.scheduler = schedulerFromConfig({ ...pipe.scheduler.config, _class_name: className });
      }
      const progress = new ProgressLine();
      const output = await pipe.run({
        prompt,
        negativePrompt: flags['negative-prompt'] as string | undefined,
        numInferenceSteps: steps,
        guidanceScale: guidance,
        attention: attentionOption(flags),
        tgate: tgateOption(flags),
        seed: flags.seed as number | undefined,
        width: flags.width as number | undefined,
        height: flags.height as number | undefined,
        numImagesPerPrompt: flags.images as number,
        onProgress: (e) => progress.update(stepLine(e.step, e.totalSteps, e.elapsedMs)),
      });
      progress.done();
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
