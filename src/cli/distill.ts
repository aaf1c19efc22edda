import { resolve } from 'node:path';

import { OptionError } from '../errors.js';
import { parseTrainConfig } from '../train/config.js';
import type { FlagSpec } from './args.js';
import { parseArgs, usage } from './args.js';
import { runtimeFlags } from './runtime-flags.js';
import { runConfigured } from './train.js';
import { shippedModelDir } from '../pipelines/shipped-model.js';

const METHODS = ['clear', 'linfusion', 'flash'] as const;

const FLAGS: Record<string, FlagSpec> = {
  radius: { type: 'number', description: 'clear: the window radius in latent tokens (required)' },
  'down-factor': {
    type: 'integer',
    description: 'clear: side of the cells of pooled keys/values, 1 = none (default 1)',
  },
  'mid-dim-scale': {
    type: 'integer',
    description:
      "linfusion: the input MLPs' width is the model width / this (default 16, LinFusion-XL's; 1: LinFusion-1-5's)",
  },
  'lora-rank': { type: 'integer', description: 'flash: the LoRA rank (default 16)' },
  'lora-alpha': {
    type: 'number',
    description: "flash: the LoRA alpha (default 2: scale alpha/r = 0.125, flash-pixart's)",
  },
  'phase-steps': {
    type: 'integer',
    description: 'flash: updates per phase of the schedule (default a quarter of --steps)',
  },
  classifier: {
    type: 'string',
    description: 'flash: the emoji classifier of the distillation distance (default: the shipped one)',
  },
  teacher: {
    type: 'string',
    description: 'the teacher, a PixArt pipeline folder (default: the shipped models/emoji/)',
  },
  steps: { type: 'integer', description: 'optimizer updates (default 2000; flash 1400)' },
  'batch-size': { type: 'integer', description: 'images per update (default 32; flash 8)' },
  out: {
    type: 'string',
    description: 'the run folder (default runs/emoji-clear-rR[-dD], runs/emoji-linfusion, runs/emoji-flash)',
  },
  data: {
    type: 'string',
    description:
      'a folder of images with metadata.jsonl (default: the emoji): the captions the teacher draws (clear), the images and captions (linfusion)',
  },
  init: {
    type: 'string',
    description:
      "start from a student folder of the method (a shipped student, or a run's model/) instead of the method's initialisation: a new run with a fresh optimizer, e.g. after the teacher changed",
  },
  resume: { type: 'boolean', description: "continue from the run folder's newest checkpoint" },
  ...runtimeFlags,
  help: { type: 'boolean', description: 'show this help' },
};

const SUMMARY = `Distil a student from a text-to-image teacher. Each is a training run (velodiff train's checkpoints,
sample grids, loss plot and --resume); its model/ folder is the student, which --accel runs
(with --students DIR, or from models/emoji-students/ for the shipped model).

clear: the teacher with CLEAR's local attention in every self-attention, trained as CLEAR's
distill.py trains it (the self-attention projections and pooling weights; denoising, prediction and
attention-output losses; Prodigy at lr 1, weight decay 1e-4, gradient clipping 1) on samples the
teacher draws itself, one per training caption (25 steps, CFG 4.5; drawn first, into the run folder,
resumable). model/ holds CLEAR's weights file. The same run from a file: configs/emoji-clear-r4.json.

linfusion: every self-attention replaced by a LinFusion module (normalized linear attention with
input MLPs), initialised from the teacher's projections as the authors' original code did, trained
with LinFusion's losses (denoising, prediction, every self-attention's output; AdamW lr 1e-4, no
weight decay, no schedule, no clipping) on the real images. model/ is the authors' folder layout.
The same run from a file: configs/emoji-linfusion.json.

flash: a LoRA student trained as Flash Diffusion trains PixArt: the teacher's remaining steps of a
16-step DPM-Solver++ run with guidance U[2, 9] from a noised data latent are the target of one
student step; four phases of start-timestep modes and loss weights; a feature distance on the emoji
classifier (LPIPS' form; its VGG weights are not available offline), the distribution-matching term
and an LSGAN term with a small discriminator; AdamW lr 1e-4 (the authors' 1e-5 over a fourteen
times longer run), weight decay 0.01. model/ holds
pytorch_lora_weights.safetensors (diffusers format), sampled with LCM, 4 steps, no CFG. The same run
from a file: configs/emoji-flash.json.`;

/** Flags that belong to one method only. */
const METHOD_FLAGS: Record<(typeof METHODS)[number], readonly string[]> = {
  clear: ['radius', 'down-factor'],
  linfusion: ['mid-dim-scale'],
  flash: ['lora-rank', 'lora-alpha', 'phase-steps', 'classifier'],
};

export async function distillCommand(argv: string[]): Promise<number> {
  const { positional, flags } = parseArgs(argv, FLAGS, 'distill');
  if (flags.help) {
    console.log(
      usage(
        'distill clear --radius R [--down-factor D] | linfusion [--mid-dim-scale S] | flash [--lora-rank R]  [--teacher DIR] [--init STUDENT_DIR] [--steps N] [--resume]',
        SUMMARY,
        FLAGS,
      ),
    );
    return 0;
  }
  const [method, ...extra] = positional;
  if (method === undefined || !(METHODS as readonly string[]).includes(method)) {
    throw new OptionError(
      `distill: expected a method (${METHODS.join(', ')}), found ${method === undefined ? 'nothing' : `"${method}"`}`,
    );
  }
  if (extra.length > 0) throw new OptionError(`distill: unexpected argument "${extra[0]}"`);
  const m = method as (typeof METHODS)[number];
  for (const other of METHODS) {
    if (other === m) continue;
    for (const flag of METHOD_FLAGS[other])
      if (flags[flag] !== undefined)
        throw new OptionError(`distill ${m}: --${flag} belongs to distill ${other}`);
  }
  const teacher = (flags.teacher as string | undefined) ?? shippedModelDir();
  const common = {
    steps: (flags.steps as number | undefined) ?? 2000,
    batchSize: (flags['batch-size'] as number | undefined) ?? 32,
    checkpoint: { every: 250, keep: 2 },
    ...(flags.data !== undefined ? { data: String(flags.data) } : {}),
    ...(flags.init !== undefined ? { init: { student: String(flags.init) } } : {}),
  };
  let name: string;
  let raw: Record<string, unknown>;
  if (m === 'clear') {
    if (flags.radius === undefined)
      throw new OptionError('distill clear: give --radius R (latent tokens, ≥ 1)');
    const radius = Number(flags.radius);
    const downFactor = (flags['down-factor'] as number | undefined) ?? 1;
    name = `emoji-clear-r${radius}${downFactor > 1 ? `-d${downFactor}` : ''}`;
    raw = {
      kind: 'distill-clear',
      ...common,
      optimizer: {
        kind: 'prodigy',
        lr: 1,
        weightDecay: 1e-4,
        safeguardWarmup: true,
        useBiasCorrection: true,
      },
      lrSchedule: { kind: 'constant', warmupSteps: 0 },
      clip: 1,
      model: { teacher, radius, downFactor },
    };
  } else if (m === 'flash') {
    name = 'emoji-flash';
    raw = {
      kind: 'distill-flash',
      ...common,
      steps: (flags.steps as number | undefined) ?? 1400,
      batchSize: (flags['batch-size'] as number | undefined) ?? 8,
      optimizer: { kind: 'adamw', lr: 1e-4, weightDecay: 0.01 },
      lrSchedule: { kind: 'constant', warmupSteps: 0 },
      clip: null,
      sample: { steps: 4, guidance: 0 },
      model: {
        teacher,
        ...(flags['lora-rank'] !== undefined ? { loraRank: flags['lora-rank'] } : {}),
        ...(flags['lora-alpha'] !== undefined ? { loraAlpha: flags['lora-alpha'] } : {}),
        ...(flags['phase-steps'] !== undefined ? { phaseSteps: flags['phase-steps'] } : {}),
        ...(flags.classifier !== undefined ? { classifier: flags.classifier } : {}),
      },
    };
  } else {
    name = 'emoji-linfusion';
    raw = {
      kind: 'distill-linfusion',
      ...common,
      optimizer: { kind: 'adamw', lr: 1e-4, weightDecay: 0 },
      lrSchedule: { kind: 'constant', warmupSteps: 0 },
      clip: null,
      model: {
        teacher,
        ...(flags['mid-dim-scale'] !== undefined ? { midDimScale: flags['mid-dim-scale'] } : {}),
      },
    };
  }
  const output = (flags.out as string | undefined) ?? resolve('runs', name);
  const config = parseTrainConfig({ ...raw, output }, { path: `velodiff distill ${m} (${name})` });
  const again = ['velodiff distill', ...argv.filter((a) => a !== '--resume'), '--resume'].join(' ');
  return runConfigured(config, flags, again);
}
