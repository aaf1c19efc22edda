import { resolve } from 'node:path';

import { OptionError } from '../errors.js';
import { parseTrainConfig } from '../train/config.js';
import type { FlagSpec } from './args.js';
import { parseArgs, usage } from './args.js';
import { runtimeFlags } from './runtime-flags.js';
import { runConfigured } from './train.js';

const METHODS = ['clear'] as const;

const FLAGS: Record<string, FlagSpec> = {
  radius: { type: 'number', description: "CLEAR's window radius in latent tokens (required)" },
  'down-factor': {
    type: 'integer',
    description: 'side of the cells of pooled keys/values, 1 = none (default 1)',
  },
  teacher: {
    type: 'string',
    description: 'the teacher, a PixArt pipeline folder (default: the shipped models/emoji/)',
  },
  steps: { type: 'integer', description: 'optimizer updates (default 2000)' },
  'batch-size': { type: 'integer', description: 'images per update (default 32, as CLEAR)' },
  out: { type: 'string', description: 'the run folder (default runs/emoji-clear-rR[-dD])' },
  data: {
    type: 'string',
    description:
      'a folder of images with metadata.jsonl whose captions the teacher draws (default: the emoji)',
  },
  resume: { type: 'boolean', description: "continue from the run folder's newest checkpoint" },
  ...runtimeFlags,
  help: { type: 'boolean', description: 'show this help' },
};

const SUMMARY = `Distil a student from a text-to-image teacher. clear: the teacher with CLEAR's local attention
in every self-attention, trained as CLEAR's distill.py trains it (the self-attention projections and
pooling weights; denoising, prediction and attention-output losses; Prodigy at lr 1, weight decay 1e-4,
gradient clipping 1) on samples the teacher draws itself, one per training caption (25 steps, CFG
4.5; drawn first, into the run folder, resumable). The run is a training run (velodiff train's
checkpoints, samples and --resume); its model/ holds CLEAR's weights file for
--attention clear:R[:D] --attention-weights FILE. The same run from a file: configs/emoji-clear-r4.json.`;

export async function distillCommand(argv: string[]): Promise<number> {
  const { positional, flags } = parseArgs(argv, FLAGS, 'distill');
  if (flags.help) {
    console.log(
      usage(
        'distill clear --radius R [--down-factor D] [--teacher DIR] [--steps N] [--resume]',
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
  if (flags.radius === undefined)
    throw new OptionError('distill clear: give --radius R (latent tokens, ≥ 1)');
  const radius = Number(flags.radius);
  const downFactor = (flags['down-factor'] as number | undefined) ?? 1;
  const name = `emoji-clear-r${radius}${downFactor > 1 ? `-d${downFactor}` : ''}`;
  const output = (flags.out as string | undefined) ?? resolve('runs', name);
  const config = parseTrainConfig(
    {
      kind: 'distill-clear',
      output,
      steps: (flags.steps as number | undefined) ?? 2000,
      batchSize: (flags['batch-size'] as number | undefined) ?? 32,
      optimizer: {
        kind: 'prodigy',
        lr: 1,
        weightDecay: 1e-4,
        safeguardWarmup: true,
        useBiasCorrection: true,
      },
      lrSchedule: { kind: 'constant', warmupSteps: 0 },
      clip: 1,
      checkpoint: { every: 250, keep: 2 },
      ...(flags.data !== undefined ? { data: String(flags.data) } : {}),
      model: {
        teacher: (flags.teacher as string | undefined) ?? 'models/emoji',
        radius,
        downFactor,
      },
    },
    { path: `velodiff distill clear (${name})` },
  );
  const again = ['velodiff distill', ...argv.filter((a) => a !== '--resume'), '--resume'].join(' ');
  return runConfigured(config, flags, again);
}
