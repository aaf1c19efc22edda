/**
 * What the σ-parameterised schedulers (Euler, Euler ancestral, DPM-Solver, flow matching) share: the
 * step index that follows `timesteps`, set from the first timestep seen or from `setBeginIndex`, and
 * the σ of each batch item for `addNoise`.
 */
import { OptionError } from '../errors.js';
import { indexForTimestep, timestepNotFound, timestepsPerItem, type SchedulerTensor } from './scheduler.js';

export class StepIndex {
  /** The index into `timesteps` of the next step; undefined until the first step. */
  current: number | undefined;
  /** Where sampling starts (image-to-image sets it); undefined to find it from the first timestep. */
  begin: number | undefined;

  constructor(
    private readonly className: string,
    /** How a schedule that lacks a timestep answers: diffusers' DPM takes the last index, the others fail. */
    private readonly onMissing: 'throw' | 'last' = 'throw',
  ) {}

  reset(): void {
    this.current = undefined;
    this.begin = undefined;
  }

  /** The index of `timestep` in `schedule` (diffusers' `index_for_timestep`). */
  find(schedule: readonly number[], timestep: number): number {
    const index = indexForTimestep(schedule, timestep);
    if (index !== undefined) return index;
    if (this.onMissing === 'last') return schedule.length - 1;
    throw timestepNotFound(this.className, timestep, schedule);
  }

  /** The current index, initialised on the first call of a run (diffusers' `_init_step_index`). */
  resolve(schedule: readonly number[], timestep: number): number {
    this.current ??= this.begin ?? this.find(schedule, timestep);
    return this.current;
  }

  /** Indices of the noise levels for `addNoise`, one per batch item of `shape`. */
  forAddNoise(
    schedule: readonly number[],
    timesteps: number | readonly number[],
    shape: readonly number[],
  ): number[] {
    const perItem = timestepsPerItem(this.className, timesteps, shape);
    if (this.begin === undefined) return perItem.map((t) => this.find(schedule, t));
    return perItem.map(() => this.current ?? (this.begin as number));
  }

  checkBegin(value: number, length: number): number {
    if (!Number.isSafeInteger(value) || value < 0 || value >= length) {
      throw new OptionError(
        `${this.className}.setBeginIndex: ${value} is not an index of the ${length} timesteps.`,
      );
    }
    return value;
  }
}

/** A tensor with the shape of `like` around `data`. */
export function withShape(data: Float32Array, like: SchedulerTensor): SchedulerTensor {
  return { data, shape: [...like.shape] };
}
