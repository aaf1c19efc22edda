/**
 * Learning-rate schedules as pure functions of the optimizer step, as the factor that multiplies every
 * group's lr (torch's LambdaLR, which diffusers' get_scheduler builds). Being a function of the step,
 * a schedule resumes from a checkpoint by its step alone.
 *
 * The step is 0-based and counts optimizer updates (not micro-batches): as in transformers'
 * get_*_schedule_with_warmup, the factor during warm-up is step/warmupSteps, so the first update runs
 * at factor 0 and update `warmupSteps` is the first at the full lr.
 */
import { OptionError } from '../errors.js';
import type { JsonObject } from './json-value.js';

export interface LrSchedule {
  /** The lr factor for the update at 0-based optimizer step `step`. */
  factor(step: number): number;
  /** What defines the schedule, for the training configuration (and its hash). */
  readonly config: JsonObject;
}

export interface WarmupOptions {
  /** Updates during which the factor rises linearly from 0 to 1 (0: no warm-up). */
  warmupSteps: number;
}

export interface WarmupCosineOptions extends WarmupOptions {
  /** The update at which the cosine reaches its end; the factor stays at minLrRatio after it. */
  totalSteps: number;
  /** The final lr as a fraction of each group's lr (0 by default). */
  minLrRatio?: number;
}

/** Linear warm-up, then 1 (transformers' get_constant_schedule_with_warmup). */
export function constantWithWarmup({ warmupSteps }: WarmupOptions): LrSchedule {
  checkSteps('warmupSteps', warmupSteps);
  return {
    config: { kind: 'constant_with_warmup', warmup_steps: warmupSteps },
    factor(step) {
      checkStep(step);
      return step < warmupSteps ? step / warmupSteps : 1;
    },
  };
}

/**
 * Linear warm-up, then a half cosine from 1 down to minLrRatio at totalSteps (transformers'
 * get_cosine_with_min_lr_schedule_with_warmup with num_cycles 0.5; it holds the minimum after
 * totalSteps, where transformers' cosine would rise again).
 */
export function warmupCosine({ warmupSteps, totalSteps, minLrRatio = 0 }: WarmupCosineOptions): LrSchedule {
  checkSteps('warmupSteps', warmupSteps);
  checkSteps('totalSteps', totalSteps);
  if (totalSteps < warmupSteps) {
    throw new OptionError(
      `Expected totalSteps ≥ warmupSteps, found totalSteps ${totalSteps} < warmupSteps ${warmupSteps}.`,
      'LR_SCHEDULE',
    );
  }
  if (!(minLrRatio >= 0 && minLrRatio <= 1)) {
    throw new OptionError(`Expected minLrRatio in [0, 1], found ${minLrRatio}.`, 'LR_SCHEDULE');
  }
  const decaySteps = Math.max(1, totalSteps - warmupSteps);
  return {
    config: {
      kind: 'warmup_cosine',
      warmup_steps: warmupSteps,
      total_steps: totalSteps,
      min_lr_ratio: minLrRatio,
    },
    factor(step) {
      checkStep(step);
      if (step < warmupSteps) return step / warmupSteps;
      const progress = Math.min(1, (step - warmupSteps) / decaySteps);
      const cosine = 0.5 * (1 + Math.cos(Math.PI * progress));
      return minLrRatio + (1 - minLrRatio) * cosine;
    },
  };
}

function checkSteps(name: string, value: number): void {
  if (!Number.isSafeInteger(value) || value < 0) {
    throw new OptionError(`Expected ${name} to be an integer ≥ 0, found ${value}.`, 'LR_SCHEDULE');
  }
}

function checkStep(step: number): void {
  if (!Number.isSafeInteger(step) || step < 0) {
    throw new OptionError(`Expected the optimizer step to be an integer ≥ 0, found ${step}.`, 'LR_SCHEDULE');
  }
}
