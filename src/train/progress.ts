/**
 * What a training run's progress display shows, computed from the loop's per-step reports: the loss
 * smoothed as an exponential moving average with Adam's bias correction (so the first steps are not
 * pulled toward 0), the throughput, and the time left. Pure arithmetic: the CLI draws it.
 */

export interface ProgressReport {
  readonly step: number;
  readonly totalSteps: number;
  readonly loss: number;
  readonly smoothedLoss: number;
  readonly lr: number;
  readonly samplesPerSecond: number;
  /** Seconds left at the recent pace; undefined until two steps were timed. */
  readonly etaSeconds: number | undefined;
  readonly elapsedSeconds: number;
}

export interface ProgressOptions {
  readonly totalSteps: number;
  /** Weight of the past in the loss average (0.98: about the last 50 steps). */
  readonly lossSmoothing?: number;
  /** Weight of the past in the step-time average (0.9: about the last 10 steps). */
  readonly timeSmoothing?: number;
  /** Milliseconds now (performance.now by default); tests pass a fake clock. */
  readonly now?: () => number;
}

export class TrainingProgress {
  readonly #options: Required<ProgressOptions>;
  readonly #started: number;
  #lossAverage = 0;
  #lossCount = 0;
  #stepSeconds: number | undefined;
  #last: { step: number; time: number } | undefined;

  constructor(options: ProgressOptions) {
    this.#options = {
      lossSmoothing: 0.98,
      timeSmoothing: 0.9,
      now: () => performance.now(),
      ...options,
    };
    this.#started = this.#options.now();
  }

  /** Takes the loop's report of one finished update and returns what to show. */
  update(info: {
    readonly step: number;
    readonly loss: number;
    readonly lr: number;
    readonly samplesPerSecond: number;
  }): ProgressReport {
    const { lossSmoothing, timeSmoothing, totalSteps } = this.#options;
    const now = this.#options.now();
    if (Number.isFinite(info.loss)) {
      this.#lossAverage = lossSmoothing * this.#lossAverage + (1 - lossSmoothing) * info.loss;
      this.#lossCount++;
    }
    // The first update includes compiling the step graph: the pace is timed from its end on.
    if (this.#last && info.step > this.#last.step) {
      const seconds = (now - this.#last.time) / 1000 / (info.step - this.#last.step);
      this.#stepSeconds =
        this.#stepSeconds === undefined
          ? seconds
          : timeSmoothing * this.#stepSeconds + (1 - timeSmoothing) * seconds;
    }
    this.#last = { step: info.step, time: now };
    return {
      step: info.step,
      totalSteps,
      loss: info.loss,
      smoothedLoss: this.#lossCount === 0 ? NaN : this.#lossAverage / (1 - lossSmoothing ** this.#lossCount),
      lr: info.lr,
      samplesPerSecond: info.samplesPerSecond,
      etaSeconds:
        this.#stepSeconds === undefined ? undefined : Math.max(0, totalSteps - info.step) * this.#stepSeconds,
      elapsedSeconds: (now - this.#started) / 1000,
    };
  }
}

/** 3725 → '1:02:05', 65 → '1:05'. */
export function formatDuration(seconds: number): string {
  const total = Math.round(seconds);
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const s = total % 60;
  const mm = h > 0 ? String(m).padStart(2, '0') : String(m);
  return `${h > 0 ? `${h}:` : ''}${mm}:${String(s).padStart(2, '0')}`;
}
