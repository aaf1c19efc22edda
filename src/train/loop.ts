/**
 * The training loop, read top to bottom as one optimizer update:
 *
 *   for each of `accumulation` micro-batches: batch → feeds → forward + backward (one ORT run)
 *   average the gradients → clip by global norm → optimizer step at the schedule's lr → EMA
 *   → checkpoint every N updates
 *
 * and a checkpoint when it stops (the last update, or a StopRequest after the update in progress).
 * With `resume`, the newest valid checkpoint restores weights, optimizer, EMA, the generators that
 * draw noise and timesteps, and the data position, so that a resumed run gives the same losses and
 * weights as an uninterrupted one, bit for bit.
 */
import { OptionError } from '../errors.js';
import type { HostTensor } from '../runtime/host-tensor.js';
import type { CheckpointManager, TrainingSnapshot } from './checkpoint.js';
import type { EmaModel } from './ema.js';
import { GradientAccumulator } from './grad-accumulation.js';
import { clipGradNorm } from './grad-clip.js';
import type { JsonValue } from './json-value.js';
import type { LrSchedule } from './lr-schedule.js';
import type { Optimizer } from './optimizer.js';
import type { StopRequest } from './stop-signal.js';
import type { TrainStep } from './train-step.js';

/** Where batches come from (a DataLoader is one): the next batch, and a position a checkpoint keeps. */
export interface BatchSource<B> {
  next(): B;
  /** JSON-serialisable (a DataLoader's LoaderState); given back to `TrainLoopOptions.loader` on resume. */
  readonly state: unknown;
}

/** A generator whose state a checkpoint keeps (TorchGenerator is one). */
export interface StatefulGenerator {
  getState(): Uint8Array;
  setState(state: Uint8Array): void;
}

export interface StepInfo {
  /** Updates done, this one included. */
  step: number;
  /** Mean loss over the update's micro-batches. */
  loss: number;
  /** The lr of the optimizer's first group at this update (its lr × the schedule's factor). */
  lr: number;
  /** Samples of this update per second of its wall-clock time. */
  samplesPerSecond: number;
  /** Each metric's mean over the micro-batches, and `grad_norm` (before clipping) when clipping. */
  metrics: Record<string, number>;
}

export interface TrainLoopOptions<B> {
  step: TrainStep;
  /** Every parameter the step reads; the trainable ones are updated in place. */
  params: Map<string, Float32Array>;
  /** Built over exactly `step.trainable`. */
  optimizer: Optimizer;
  /** The lr factor per update (default 1). */
  schedule?: LrSchedule;
  /** Over exactly `step.trainable`. */
  ema?: EmaModel;
  /** Max global gradient norm (clipGradNorm); no clipping when undefined. */
  clip?: number;
  /** Micro-batches per optimizer update, gradients averaged (default 1). */
  accumulation?: number;
  /** Saves every `checkpoints.saveEvery` updates and when the loop ends. */
  checkpoints?: CheckpointManager;
  /** Continue from the newest valid checkpoint of `checkpoints`, when there is one. */
  resume?: boolean;
  /**
   * Opens the batch source at a saved position (undefined: from the start), e.g.
   * `(state) => new DataLoader(dataset, { batchSize, seed, state: state as LoaderState | undefined })`.
   */
  loader(state: JsonValue | undefined): BatchSource<B>;
  /**
   * The step graph's batch inputs for one batch of update `step` (0-based, counting a resumed run's
   * earlier updates): a phase schedule may depend on it.
   */
  makeBatch(batch: B, step: number): Record<string, HostTensor> | Promise<Record<string, HostTensor>>;
  /** Generators makeBatch draws from (noise, timesteps, posterior samples): saved and restored. */
  generators?: Readonly<Record<string, StatefulGenerator>>;
  /** Samples in a batch, for samples/s; default the leading dim of the first batch input. */
  samplesPerBatch?: number;
  /** Updates to reach, counting those of a resumed run. */
  totalSteps: number;
  stop?: StopRequest;
  onStep?(info: StepInfo): void | Promise<void>;
  /** Anything else a checkpoint should keep (JSON), e.g. the trainer's name. */
  extra?: Record<string, JsonValue>;
}

export interface TrainLoopResult {
  /** Updates done (counting a resumed run's). */
  step: number;
  /** Loss per update: the resumed checkpoint's history, then this call's. */
  losses: number[];
  /** The checkpoint the run continued from, if any. */
  resumedFrom?: number;
  /** True when a StopRequest ended the loop before totalSteps. */
  stopped: boolean;
}

export async function trainLoop<B>(o: TrainLoopOptions<B>): Promise<TrainLoopResult> {
  const accumulation = o.accumulation ?? 1;
  if (!Number.isSafeInteger(accumulation) || accumulation < 1) {
    throw new OptionError(
      `trainLoop: accumulation must be an integer ≥ 1, found ${accumulation}`,
      'TRAIN_LOOP',
    );
  }
  if (!Number.isSafeInteger(o.totalSteps) || o.totalSteps < 0) {
    throw new OptionError(
      `trainLoop: totalSteps must be an integer ≥ 0, found ${o.totalSteps}`,
      'TRAIN_LOOP',
    );
  }
  if (o.resume && o.checkpoints === undefined) {
    throw new OptionError(
      'trainLoop: resume needs checkpoints (a CheckpointManager) to resume from',
      'TRAIN_LOOP',
    );
  }
  // The optimizer and EMA see the trainable parameters only: the same arrays, updated in place.
  const trained = new Map<string, Float32Array>();
  for (const name of o.step.trainable) {
    const values = o.params.get(name);
    if (values === undefined) {
      throw new OptionError(`trainLoop: no values for the trainable parameter '${name}'`, 'TRAIN_LOOP');
    }
    trained.set(name, values);
  }

  let step = 0;
  let losses: number[] = [];
  let loaderState: JsonValue | undefined;
  let resumedFrom: number | undefined;
  if (o.resume && o.checkpoints !== undefined) {
    const resumed = await o.checkpoints.resume();
    if (resumed !== undefined) {
      const { snapshot } = resumed;
      for (const [name, values] of snapshot.weights) {
        const target = trained.get(name);
        if (target === undefined) {
          throw new OptionError(
            `trainLoop: the checkpoint ${resumed.checkpoint.path} holds '${name}', which is not trainable here`,
            'TRAIN_LOOP',
          );
        }
        target.set(values);
      }
      o.optimizer.loadStateDict(snapshot.optimizer);
      if (o.ema !== undefined) {
        if (snapshot.ema === undefined) {
          throw new OptionError(
            `trainLoop: the checkpoint ${resumed.checkpoint.path} has no EMA, but this run keeps one`,
            'TRAIN_LOOP',
          );
        }
        o.ema.loadStateDict(snapshot.ema);
      }
      for (const [name, generator] of Object.entries(o.generators ?? {})) {
        const state = snapshot.rng[name];
        if (state === undefined) {
          throw new OptionError(
            `trainLoop: the checkpoint ${resumed.checkpoint.path} has no state for the generator '${name}'`,
            'TRAIN_LOOP',
          );
        }
        generator.setState(state);
      }
      loaderState = snapshot.data;
      step = snapshot.step;
      losses = [...snapshot.lossHistory];
      resumedFrom = snapshot.step;
    }
  }
  const loader = o.loader(loaderState);

  const snapshot = (): TrainingSnapshot => {
    const data = loader.state as JsonValue;
    const epoch =
      data !== null && typeof data === 'object' && !Array.isArray(data) && typeof data['epoch'] === 'number'
        ? data['epoch']
        : 0;
    return {
      step,
      epoch,
      weights: trained,
      optimizer: o.optimizer.stateDict(),
      ema: o.ema?.stateDict(),
      data,
      rng: Object.fromEntries(Object.entries(o.generators ?? {}).map(([name, g]) => [name, g.getState()])),
      lrSchedulePosition: step,
      lossHistory: losses,
      extra: o.extra ?? {},
    };
  };

  let savedStep = resumedFrom;
  let stopped = false;
  while (step < o.totalSteps) {
    if (o.stop?.requested) {
      stopped = true;
      break;
    }
    const started = performance.now();
    const accumulator = new GradientAccumulator(o.step.trainable, accumulation);
    let loss = 0;
    let samples = 0;
    const metrics: Record<string, number> = {};
    while (!accumulator.ready) {
      const feeds = await o.makeBatch(loader.next(), step);
      samples += o.samplesPerBatch ?? leadingDim(feeds);
      const result = await o.step.run(o.params, feeds);
      accumulator.add(result.grads);
      loss += result.loss / accumulation;
      for (const [name, value] of Object.entries(result.metrics)) {
        metrics[name] = (metrics[name] ?? 0) + value / accumulation;
      }
    }
    const grads = accumulator.take();
    if (o.clip !== undefined) metrics['grad_norm'] = clipGradNorm(grads, o.clip).norm;
    const lrFactor = o.schedule?.factor(step) ?? 1;
    o.optimizer.step(trained, grads, lrFactor);
    o.ema?.step(trained);
    step++;
    losses.push(loss);
    const seconds = (performance.now() - started) / 1000;
    await o.onStep?.({
      step,
      loss,
      lr: firstGroupLr(o.optimizer) * lrFactor,
      samplesPerSecond: samples / seconds,
      metrics,
    });
    if (o.checkpoints?.shouldSave(step)) {
      await o.checkpoints.save(snapshot());
      savedStep = step;
    }
  }
  if (o.checkpoints !== undefined && savedStep !== step) await o.checkpoints.save(snapshot());
  return { step, losses, resumedFrom, stopped };
}

function leadingDim(feeds: Record<string, HostTensor>): number {
  const first = Object.values(feeds)[0];
  return first === undefined || first.shape.length === 0 ? 1 : first.shape[0];
}

/** The lr of an optimizer's first group (AdamW's and Prodigy's groups); 1 when it has none to show. */
function firstGroupLr(optimizer: Optimizer): number {
  const groups = (optimizer as { groups?: readonly { options: { lr?: unknown } }[] }).groups;
  const lr = groups?.[0]?.options.lr;
  return typeof lr === 'number' ? lr : 1;
}
