/**
 * A training run as `velodiff train --config FILE` runs it, for every kind of model: the data set,
 * the kind's trainer, the compiled step, optimizer, schedule, EMA and checkpoints wired into
 * trainLoop, and around it what a person watches: the metrics log, sample grids and the loss curve
 * every `sample.every` updates, and the trained model at the end.
 *
 * The run folder (config `output`, or `--out`):
 *
 *   config.json                 the configuration with every default filled in
 *   metrics.jsonl               one line per update: step, loss, loss_smoothed, lr, samples_per_s, …
 *   loss.png, loss.vl.json      the loss curve and its Vega-Lite spec, redrawn with each sample grid
 *   samples/step-000500.png     sample grids (the trainer's fixed prompts/seeds or validation images)
 *   checkpoint-<step>/, latest  resumable checkpoints, the newest `checkpoint.keep` kept (checkpoint.ts)
 *   model/                      the trained model (EMA weights when EMA is on), written at the end
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';

import { OptionError, VelodiffError } from '../errors.js';
import { isPlainObject } from '../io/json.js';
import { writeFileAtomic } from '../io/atomic.js';
import { MissingPackageError } from '../io/optional-package.js';
import type { ModelConfig } from '../io/diffusers.js';
import type { Runtime } from '../runtime/runtime.js';
import { CheckpointManager, type CheckpointEntry } from './checkpoint.js';
import {
  optimizerFromConfig,
  resumeIdentity,
  scheduleFromConfig,
  trainConfigJson,
  type CheckpointInit,
  type DataConfig,
  type TrainConfig,
} from './config.js';
import type { ImageTextDataset } from './data/dataset.js';
import { splitIndices } from './data/dataset.js';
import { loadEmojiDataset } from './data/emoji-dataset.js';
import { loadImageFolder } from './data/imagefolder.js';
import { DataLoader, type LoaderState } from './data/loader.js';
import { EmaModel } from './ema.js';
import { describeDifferences, type JsonObject, type JsonValue } from './json-value.js';
import { renderLossCurve } from './loss-curve.js';
import { trainLoop, type StepInfo } from './loop.js';
import { METRICS_LOG, MetricsLog, readMetricsLog } from './metrics-log.js';
import { TrainingProgress, type ProgressReport } from './progress.js';
import { clearDistillTrainer } from './distill/clear-trainer.js';
import { flashDistillTrainer } from './distill/flash-trainer.js';
import { linfusionDistillTrainer } from './distill/linfusion-trainer.js';
import { classifierRun, type RunTrainer } from './run-trainers.js';
import type { SampleOptions } from './trainers/text-to-image.js';
import { textToImageTrainer } from './trainers/text-to-image.js';
import { vaeTrainer } from './trainers/vae.js';
import { renderSampleGrid } from './sample-grid.js';
import type { StopRequest } from './stop-signal.js';
import { PreparationStopped } from './stop-signal.js';
import { TrainStep } from './train-step.js';

/** File and folder names of a run folder. */
export const RUN_FILES = {
  config: 'config.json',
  metrics: METRICS_LOG,
  lossCurve: 'loss.png',
  lossSpec: 'loss.vl.json',
  samples: 'samples',
  model: 'model',
} as const;

/** What a run reports as it goes, for a display (all optional). */
export interface TrainRunEvents {
  /** Preparing the data set: images done of total (not called when the cache has them). */
  onDataProgress?(done: number, total: number): void;
  /** Encoding the data set with the VAE (text-to-image; not called when the latent cache has it). */
  onEncodeProgress?(done: number, total: number): void;
  /** The data set is ready. */
  onData?(info: { images: number; train: number; validation: number; fromCache: boolean }): void;
  /** The step graph is compiled: parameter counts, FLOPs per step, checkpoints already in the run folder. */
  onStart?(info: { parameters: number; trainable: number; flops: number; checkpoints: number }): void;
  /** After every update. */
  onStep?(report: ProgressReport, info: StepInfo): void;
  /** A sample grid and the loss curve were written. */
  onSample?(info: { step: number; grid: string; lossCurve: string }): void;
  /** The trained model was written. */
  onModel?(dir: string): void;
  /** Something worth a line that does not stop the run (a plot that could not be drawn). */
  onNote?(message: string): void;
}

export interface TrainRunOptions extends TrainRunEvents {
  readonly config: TrainConfig;
  readonly runtime: Runtime;
  /** Continue from the run folder's newest valid checkpoint (a fresh start when it has none). */
  readonly resume?: boolean;
  /** A graceful stop (SIGINT): the update in progress finishes, a checkpoint is written, the run returns. */
  readonly stop?: StopRequest;
  /** The data set, when the caller has it already (tests); otherwise read as `config.data` says. */
  readonly dataset?: ImageTextDataset;
  /** The kind's trainer, when the caller builds it (tests); otherwise createRunTrainer. */
  readonly trainer?: RunTrainer;
}

export interface TrainRunResult {
  /** Updates done, counting a resumed run's. */
  readonly step: number;
  /** The checkpoint step the run continued from. */
  readonly resumedFrom: number | undefined;
  /** True when a stop request ended the run before `steps`. */
  readonly stopped: boolean;
  readonly output: string;
  /** The trained model's folder (absent when the run was stopped). */
  readonly modelDir: string | undefined;
  /** When the stop came before the first update: what was being prepared (its finished part is kept). */
  readonly stoppedDuring?: string;
}

/** The data set `config` names: the emoji packages or an image folder, prepared through the cache. */
export async function loadConfiguredDataset(
  data: DataConfig,
  onProgress?: (done: number, total: number) => void,
): Promise<ImageTextDataset> {
  const cacheDir = data.cacheDir;
  if (data.source === 'emoji') {
    return loadEmojiDataset({
      size: data.size,
      sets: data.sets,
      skinTones: data.skinTones,
      unified: data.unified,
      validationFraction: data.validationFraction,
      cacheDir,
      onProgress,
    });
  }
  return loadImageFolder(data.folder, {
    size: data.size,
    onBadFile: data.onBadFile,
    captionColumn: data.captionColumn,
    validationFraction: data.validationFraction,
    cacheDir,
    onProgress,
  });
}

/** The sample grids' prompts, seeds, steps and guidance of a configuration. */
function gridOptions(config: TrainConfig): SampleOptions {
  const { prompts, seeds, steps, guidance } = config.sample;
  return { prompts, seeds, steps, guidance };
}

/** The trainer of `config.kind` over `dataset`, with the configuration's model and sample options. */
export async function createRunTrainer(
  config: TrainConfig,
  dataset: ImageTextDataset,
  runtime: Runtime,
  onEncodeProgress?: (done: number, total: number) => void,
  stop?: { readonly requested: boolean },
): Promise<RunTrainer> {
  switch (config.kind) {
    case 'vae': {
      const trainer = vaeTrainer({
        vae: config.model.vae,
        klWeight: config.model.klWeight,
        seed: config.seed,
        dataset,
        runtime,
        sampleCount: config.sample.count,
      });
      // Its makeBatch's second argument is a noise generator, not the update.
      return { ...trainer, makeBatch: (batch) => trainer.makeBatch(batch) };
    }
    case 'text-to-image':
      return textToImageTrainer({
        model: config.model,
        dataset,
        runtime,
        seed: config.seed,
        sample: gridOptions(config),
        cacheDir: config.data.cacheDir,
        onEncodeProgress,
      });
    case 'classifier':
      return classifierRun(config, dataset, runtime);
    case 'distill-clear':
      return clearDistillTrainer({
        model: config.model,
        dataset,
        runtime,
        seed: config.seed,
        output: config.output,
        sample: gridOptions(config),
        onSamplesProgress: onEncodeProgress,
        ...(stop ? { stop } : {}),
      });
    case 'distill-flash':
      return flashDistillTrainer({
        model: config.model,
        dataset,
        runtime,
        seed: config.seed,
        steps: config.steps,
        sample: gridOptions(config),
        cacheDir: config.data.cacheDir,
        onEncodeProgress,
      });
    case 'distill-linfusion':
      return linfusionDistillTrainer({
        model: config.model,
        dataset,
        runtime,
        seed: config.seed,
        sample: gridOptions(config),
        cacheDir: config.data.cacheDir,
        onEncodeProgress,
      });
  }
}

/** The checkpoints in a run folder, oldest first. */
export async function checkpointsIn(directory: string): Promise<CheckpointEntry[]> {
  // Listing reads only folder names: the manager's shapes and configs are not consulted.
  const lister = new CheckpointManager({
    directory,
    parameterShapes: new Map(),
    modelConfig: {},
    trainingConfig: {},
  });
  return lister.list();
}

/** Data keys that change what the loader draws but not the data set, its split or its captions. */
const LOADER_ONLY_KEYS = new Set(['captionDropout', 'horizontalFlip', 'maxPerGroup', 'cacheDir']);

/**
 * The weights `config.init.checkpoint` names: the checkpoint is loaded whole and checked (files, model
 * config, parameter names and shapes), and must come from a run of the same kind on the same data set,
 * split and captions (the tokenizer is built from the training captions, so other data means other
 * token ids).
 */
async function checkpointWeights(
  config: TrainConfig,
  init: CheckpointInit,
  modelConfig: ModelConfig,
  parameterShapes: ReadonlyMap<string, readonly number[]>,
): Promise<ReadonlyMap<string, Float32Array>> {
  const manager = new CheckpointManager({
    directory: dirname(init.checkpoint),
    parameterShapes,
    modelConfig,
    trainingConfig: resumeIdentity(config),
  });
  const where = `init.checkpoint ${init.checkpoint}`;
  let snapshot;
  try {
    snapshot = await manager.load(basename(init.checkpoint), { checkTrainingConfig: false });
  } catch (error) {
    if (error instanceof VelodiffError) {
      throw new OptionError(`train: ${where} cannot be used: ${error.message}`, 'INIT_CHECKPOINT');
    }
    throw error;
  }
  const dataOf = (c: unknown): JsonObject => {
    const data = isPlainObject(c) && isPlainObject(c.data) ? (c.data as JsonObject) : {};
    return Object.fromEntries(Object.entries(data).filter(([key]) => !LOADER_ONLY_KEYS.has(key)));
  };
  const theirs = snapshot.trainingConfig;
  const kind = isPlainObject(theirs) ? theirs.kind : undefined;
  const differences = describeDifferences(dataOf(theirs), dataOf(trainConfigJson(config)), [
    'checkpoint',
    'now',
  ]);
  if (kind !== config.kind || differences.length > 0) {
    throw new OptionError(
      `train: ${where} was trained ` +
        (kind !== config.kind
          ? `as '${String(kind)}', and this run is '${config.kind}'`
          : `on other data (${differences.join('; ')})`) +
        ': a run can only start from a checkpoint of the same kind of model on the same data set',
      'INIT_CHECKPOINT',
    );
  }
  if (init.weights === 'ema') {
    if (snapshot.ema === undefined) {
      throw new OptionError(
        `train: ${where} has no EMA weights; set init.weights to 'model'`,
        'INIT_CHECKPOINT',
      );
    }
    return snapshot.ema.shadow;
  }
  return snapshot.weights;
}

/**
 * The weights of the folder `config.init.pipeline` or `config.init.student` names, read and checked by
 * the trainer that writes such folders (text-to-image: its models, tokenizer, VAE and every tensor must
 * be this run's; a distillation: the student's method, settings and trained tensors).
 */
async function folderWeights(
  config: TrainConfig,
  key: 'pipeline' | 'student',
  dir: string,
  trainer: RunTrainer,
): Promise<ReadonlyMap<string, Float32Array>> {
  const where = `init.${key} ${dir}`;
  const code = key === 'pipeline' ? 'INIT_PIPELINE' : 'INIT_STUDENT';
  const read = key === 'pipeline' ? trainer.readPipeline : trainer.readStudent;
  if (read === undefined) {
    throw new OptionError(
      `train: ${where}: a '${config.kind}' run cannot start from a ${key} folder; use init.checkpoint`,
      code,
    );
  }
  try {
    return await read.call(trainer, dir);
  } catch (error) {
    if (error instanceof VelodiffError) {
      throw new OptionError(`train: ${where} cannot be used: ${error.message}`, code);
    }
    throw error;
  }
}

/** Runs (or resumes) the training `options.config` describes; see the file comment for the run folder. */
export async function runTraining(options: TrainRunOptions): Promise<TrainRunResult> {
  const { config, runtime } = options;
  const output = config.output;
  await mkdir(join(output, RUN_FILES.samples), { recursive: true });

  // Refused before the data set is prepared (which can take minutes): a new run over an old one.
  const existing = await checkpointsIn(output);
  if (existing.length > 0 && !options.resume) {
    throw new OptionError(
      `train: ${output} already holds checkpoints (the newest at step ${existing[existing.length - 1].step}): ` +
        'pass --resume to continue that run, or --out DIR to start a new one elsewhere',
      'RUN_EXISTS',
    );
  }

  const dataset = options.dataset ?? (await loadConfiguredDataset(config.data, options.onDataProgress));
  const validation = splitIndices(dataset, 'validation').length;
  options.onData?.({
    images: dataset.items.length,
    train: dataset.items.length - validation,
    validation,
    fromCache: dataset.fromCache,
  });

  let trainer: RunTrainer;
  try {
    trainer =
      options.trainer ??
      (await createRunTrainer(config, dataset, runtime, options.onEncodeProgress, options.stop));
  } catch (e) {
    if (!(e instanceof PreparationStopped)) throw e;
    const step = existing.length ? existing[existing.length - 1].step : 0;
    return {
      step,
      resumedFrom: undefined,
      stopped: true,
      output,
      modelDir: undefined,
      stoppedDuring: e.phase,
    };
  }
  try {
    return await trainWith(trainer);
  } finally {
    // A trainer given by the caller is the caller's to close.
    if (!options.trainer) await trainer.close?.();
  }

  async function trainWith(trainer: RunTrainer): Promise<TrainRunResult> {
    const spec = trainer.stepSpec(config.batchSize);
    const params = trainer.initialParameters(config.seed);
    const trainableShapes = new Map(spec.trainable.map((name) => [name, spec.shapes.get(name) ?? []]));
    const init = config.init;
    if (init !== undefined && existing.length === 0) {
      // A resumed run has its own checkpoints; only a run's first start reads the weights it starts from.
      const weights =
        'pipeline' in init
          ? await folderWeights(config, 'pipeline', init.pipeline, trainer)
          : 'student' in init
            ? await folderWeights(config, 'student', init.student, trainer)
            : await checkpointWeights(config, init, trainer.modelConfig, trainableShapes);
      for (const [name, values] of weights) params.set(name, values);
    }
    const checkpoints = new CheckpointManager({
      directory: output,
      parameterShapes: trainableShapes,
      modelConfig: trainer.modelConfig,
      trainingConfig: resumeIdentity(config),
      keepLast: config.checkpoint.keep,
      saveEvery: config.checkpoint.every,
    });
    await writeFileAtomic(
      join(output, RUN_FILES.config),
      `${JSON.stringify(trainConfigJson(config), null, 2)}\n`,
    );

    const step = await TrainStep.compile(runtime, spec);
    const trained = new Map(spec.trainable.map((name) => [name, params.get(name) as Float32Array]));
    const ema = config.ema === null ? undefined : new EmaModel(trained, config.ema);
    options.onStart?.({
      parameters: [...params.values()].reduce((n, p) => n + p.length, 0),
      trainable: [...trained.values()].reduce((n, p) => n + p.length, 0),
      flops: step.flops,
      checkpoints: existing.length,
    });

    /** The weights to sample with and to ship: the EMA's where there is one. */
    const currentWeights = (): Map<string, Float32Array> => {
      const weights = new Map(params);
      if (ema) for (const [name, values] of ema.shadow) weights.set(name, values);
      return weights;
    };

    let log: MetricsLog | undefined;
    const progress = new TrainingProgress({ totalSteps: config.steps });
    let lastSampled = -1;
    const writeSamples = async (at: number): Promise<void> => {
      lastSampled = at;
      const grid = join(output, RUN_FILES.samples, `step-${String(at).padStart(6, '0')}.png`);
      await writeFileAtomic(grid, await renderSampleGrid(await trainer.sampleGrid(currentWeights(), at)));
      const lossCurve = join(output, RUN_FILES.lossCurve);
      try {
        const { png, spec: plot } = await renderLossCurve(
          await readMetricsLog(join(output, RUN_FILES.metrics)),
          {
            title: `${config.kind} training loss`,
          },
        );
        await writeFileAtomic(lossCurve, png);
        await writeFile(join(output, RUN_FILES.lossSpec), `${JSON.stringify(plot)}\n`);
      } catch (error) {
        // A missing plotting package costs the plot, not the run.
        if (!(error instanceof MissingPackageError)) throw error;
        options.onNote?.(error.message);
      }
      options.onSample?.({ step: at, grid, lossCurve });
    };

    const result = await trainLoop({
      step,
      params,
      optimizer: optimizerFromConfig(config.optimizer, spec.trainable),
      schedule: scheduleFromConfig(config.lrSchedule, config.steps),
      ema,
      clip: config.clip ?? undefined,
      accumulation: config.accumulation,
      checkpoints,
      resume: options.resume,
      loader: (state: JsonValue | undefined) =>
        new DataLoader(dataset, {
          batchSize: config.batchSize,
          seed: config.seed,
          split: 'train',
          captionDropout: config.data.captionDropout,
          horizontalFlip: config.data.horizontalFlip,
          maxPerGroup: config.data.maxPerGroup,
          state: state as LoaderState | undefined,
        }),
      makeBatch: (batch, step) => trainer.makeBatch(batch, step),
      generators: trainer.generators,
      totalSteps: config.steps,
      stop: options.stop,
      extra: { kind: config.kind },
      async onStep(info) {
        if (log === undefined) {
          // The first update of this process: a resumed run's log loses the lines past its checkpoint.
          const resumedAt = info.step - 1;
          log = await MetricsLog.open(join(output, RUN_FILES.metrics), resumedAt > 0 ? resumedAt : undefined);
        }
        const report = progress.update(info);
        await log.append({
          ...info.metrics,
          step: info.step,
          loss: info.loss,
          loss_smoothed: report.smoothedLoss,
          lr: info.lr,
          samples_per_s: info.samplesPerSecond,
          elapsed_s: report.elapsedSeconds,
          time: new Date().toISOString(),
        });
        options.onStep?.(report, info);
        if (config.sample.every > 0 && info.step % config.sample.every === 0) await writeSamples(info.step);
      },
    });

    let modelDir: string | undefined;
    if (!result.stopped) {
      if (lastSampled !== result.step) await writeSamples(result.step);
      modelDir = join(output, RUN_FILES.model);
      await trainer.saveModel(modelDir, currentWeights());
      options.onModel?.(modelDir);
    }
    return { step: result.step, resumedFrom: result.resumedFrom, stopped: result.stopped, output, modelDir };
  }
}

export interface ExportOptions {
  config: TrainConfig;
  runtime: Runtime;
  /** Where the model folder is written (replaced if it exists). */
  out: string;
  /** The checkpoint's step; the newest when absent. */
  step?: number;
  dataset?: ImageTextDataset;
  onDataProgress?: (done: number, total: number) => void;
  onEncodeProgress?: (done: number, total: number) => void;
}

/**
 * Writes the model of one checkpoint of a run (EMA weights when the run keeps an EMA), as the run
 * would have written it at its end, without training: to try a model while its run goes on, or to
 * ship the state a stopped run reached. Only reads the run folder, so it is safe beside a live run.
 */
export async function exportCheckpoint(
  options: ExportOptions,
): Promise<{ step: number; checkpoint: string; modelDir: string }> {
  const { config } = options;
  const entries = await checkpointsIn(config.output);
  if (entries.length === 0) {
    throw new OptionError(
      `train --export: ${config.output} holds no checkpoint to export`,
      'RUN_NO_CHECKPOINT',
    );
  }
  const entry =
    options.step === undefined ? entries[entries.length - 1] : entries.find((e) => e.step === options.step);
  if (entry === undefined) {
    throw new OptionError(
      `train --export: ${config.output} has no checkpoint at step ${options.step}; ` +
        `it has ${entries.map((e) => e.step).join(', ')}`,
      'RUN_NO_CHECKPOINT',
    );
  }
  const dataset = options.dataset ?? (await loadConfiguredDataset(config.data, options.onDataProgress));
  const trainer = await createRunTrainer(config, dataset, options.runtime, options.onEncodeProgress);
  try {
    const spec = trainer.stepSpec(config.batchSize);
    const params = trainer.initialParameters(config.seed);
    const manager = new CheckpointManager({
      directory: config.output,
      parameterShapes: new Map(spec.trainable.map((name) => [name, spec.shapes.get(name) ?? []])),
      modelConfig: trainer.modelConfig,
      trainingConfig: resumeIdentity(config),
    });
    const snapshot = await manager.load(entry.name);
    const weights = new Map(params);
    for (const [name, values] of snapshot.weights) weights.set(name, values);
    if (snapshot.ema) for (const [name, values] of snapshot.ema.shadow) weights.set(name, values);
    await trainer.saveModel(options.out, weights);
    return { step: snapshot.step, checkpoint: entry.path, modelDir: options.out };
  } finally {
    await trainer.close?.();
  }
}
