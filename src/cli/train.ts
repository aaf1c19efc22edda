import { relative } from 'node:path';

import { OptionError } from '../errors.js';
import { Runtime } from '../runtime/runtime.js';
import { readTrainConfig } from '../train/config.js';
import { formatDuration, type ProgressReport } from '../train/progress.js';
import { exportCheckpoint, runTraining } from '../train/run.js';
import type { TrainConfig } from '../train/config.js';
import { StopRequest } from '../train/stop-signal.js';
import type { FlagSpec } from './args.js';
import { parseArgs, usage, type ParsedArgs } from './args.js';
import { progressBar, ProgressLine } from './progress.js';
import { runtimeFlags, runtimeOptions } from './runtime-flags.js';

const FLAGS: Record<string, FlagSpec> = {
  config: { type: 'string', description: 'the training configuration, a JSON file (see configs/)' },
  data: {
    type: 'string',
    description: "a folder of images with metadata.jsonl, instead of the config's data",
  },
  resume: { type: 'boolean', description: "continue from the run folder's newest checkpoint" },
  out: {
    type: 'string',
    description: 'the run folder (default: the config\'s "output", or runs/<config name>)',
  },
  export: {
    type: 'string',
    description: "write the model of the run's newest checkpoint (EMA weights) to DIR, without training",
  },
  checkpoint: { type: 'integer', description: 'with --export: the step of the checkpoint to export' },
  ...runtimeFlags,
  help: { type: 'boolean', description: 'show this help' },
};

const SUMMARY = `Train a VAE, the text-to-image model or the emoji classifier from a JSON configuration.
Progress goes to stderr; the run folder gets metrics.jsonl, samples/step-N.png, loss.png,
checkpoint-N/ and, at the end, model/. Ctrl-C saves a checkpoint and stops; --resume continues.`;

/** A number in 3 significant digits, scientific where that is shorter: 0.0123, 1.00e-4. */
function compact(value: number): string {
  if (!Number.isFinite(value)) return String(value);
  return Math.abs(value) >= 1e-3 && Math.abs(value) < 1e4 ? value.toPrecision(3) : value.toExponential(2);
}

function progressText(report: ProgressReport): string {
  const eta = report.etaSeconds === undefined ? '…' : formatDuration(report.etaSeconds);
  return (
    `step ${report.step}/${report.totalSteps} ${progressBar(report.step / report.totalSteps)} ` +
    `loss ${compact(report.smoothedLoss)} · ${report.samplesPerSecond.toFixed(1)} samples/s · ` +
    `lr ${compact(report.lr)} · ETA ${eta}`
  );
}

export async function trainCommand(argv: string[]): Promise<number> {
  const { positional, flags } = parseArgs(argv, FLAGS, 'train');
  if (flags.help) {
    console.log(
      usage(
        'train --config FILE [--data DIR] [--resume] [--out DIR] [--export DIR [--checkpoint N]]',
        SUMMARY,
        FLAGS,
      ),
    );
    return 0;
  }
  if (positional.length > 0) throw new OptionError(`train: unexpected argument "${positional[0]}"`);
  if (flags.config === undefined) throw new OptionError('train: give --config FILE (examples in configs/)');
  const configPath = String(flags.config);
  const config = await readTrainConfig(configPath, {
    data: flags.data as string | undefined,
    output: flags.out as string | undefined,
  });
  if (flags.checkpoint !== undefined && flags.export === undefined) {
    throw new OptionError('train: --checkpoint chooses the checkpoint of --export; give --export DIR too');
  }
  if (flags.export !== undefined) {
    if (flags.resume === true) throw new OptionError('train: --export does not train; drop --resume');
    return exportCommand(config, String(flags.export), flags);
  }
  const again = `velodiff train --config ${configPath} --resume${flags.out !== undefined ? ` --out ${String(flags.out)}` : ''}`;
  return runConfigured(config, flags, again);
}

/**
 * Runs (or resumes, with --resume) the training `config` describes, with a progress line on stderr;
 * `again` is the command that continues it after a stop. Shared by `train` and `distill`.
 */
export async function runConfigured(
  config: TrainConfig,
  flags: ParsedArgs['flags'],
  again: string,
): Promise<number> {
  const where = relative(process.cwd(), config.output) || '.';
  const line = new ProgressLine();
  const stop = new StopRequest(['SIGINT', 'SIGTERM']);
  const runtime = new Runtime(runtimeOptions(flags));
  try {
    line.note(
      `training ${config.kind}: ${config.steps} steps of ${config.batchSize}` +
        `${config.accumulation > 1 ? `×${config.accumulation}` : ''} images → ${where}/`,
    );
    const result = await runTraining({
      config,
      runtime,
      resume: flags.resume === true,
      stop,
      onDataProgress: (done, total) => {
        if (line.inPlace || done === total || done % 500 === 0)
          line.update(`preparing images ${done}/${total}`);
      },
      onEncodeProgress: (done, total) => {
        if (line.inPlace || done === total || done % 500 === 0)
          line.update(`${preparing(config)} ${done}/${total}`);
      },
      onData: (info) =>
        line.note(
          `data: ${info.images} images (${info.train} train, ${info.validation} validation)` +
            `${info.fromCache ? ', from the cache' : ''}`,
        ),
      onStart: (info) =>
        line.note(
          `model: ${info.parameters.toLocaleString('en-US')} parameters, ${info.trainable.toLocaleString('en-US')} trained` +
            `${info.checkpoints > 0 ? `; resuming from the newest of ${info.checkpoints} checkpoints` : ''}`,
        ),
      onStep: (report) => {
        if (line.inPlace || report.step % config.log.every === 0 || report.step === report.totalSteps) {
          line.update(progressText(report));
        }
      },
      onSample: (info) =>
        line.note(
          `step ${info.step}: ${relative(process.cwd(), info.grid)}, ${relative(process.cwd(), info.lossCurve)}`,
        ),
      onNote: (message) => line.note(`note: ${message}`),
      onModel: (dir) => line.note(`model: ${relative(process.cwd(), dir) || '.'}/`),
    });
    line.done();
    if (result.stoppedDuring !== undefined) {
      console.error(
        `stopped during ${result.stoppedDuring} (${stop.signal ?? 'stop'}), before the first update: ` +
          `what is finished is kept in ${where}/. Continue with: ${again}`,
      );
      return 130;
    }
    if (result.stopped) {
      console.error(
        `stopped at step ${result.step} (${stop.signal ?? 'stop'}): checkpoint saved in ${where}/. ` +
          `Continue with: ${again}`,
      );
      return 130;
    }
    console.log(
      `trained ${result.step} steps; model in ${relative(process.cwd(), result.modelDir ?? where)}/`,
    );
    return 0;
  } finally {
    line.done();
    stop.dispose();
    await runtime.dispose();
  }
}

/** What a run prepares before its first update, for the progress line. */
function preparing(config: TrainConfig): string {
  return config.kind === 'distill-clear' ? 'teacher samples' : 'encoding latents';
}

async function exportCommand(config: TrainConfig, out: string, flags: ParsedArgs['flags']): Promise<number> {
  const line = new ProgressLine();
  const runtime = new Runtime(runtimeOptions(flags));
  try {
    const result = await exportCheckpoint({
      config,
      runtime,
      out,
      step: flags.checkpoint as number | undefined,
      onDataProgress: (done, total) => {
        if (line.inPlace || done === total) line.update(`preparing images ${done}/${total}`);
      },
      onEncodeProgress: (done, total) => {
        if (line.inPlace || done === total) line.update(`${preparing(config)} ${done}/${total}`);
      },
    });
    line.done();
    console.log(
      `exported step ${result.step} (${relative(process.cwd(), result.checkpoint)}) → ${relative(process.cwd(), result.modelDir) || '.'}/`,
    );
    return 0;
  } finally {
    line.done();
    await runtime.dispose();
  }
}
