/**
 * A graceful stop for a training loop: SIGINT or SIGTERM sets a flag that the loop reads after each
 * update, so it finishes the update, writes a checkpoint and returns. A second signal means "now": the
 * handler steps aside and the signal is raised again with its default action (checkpoints are written
 * atomically, so stopping during a write leaves the previous one intact).
 */
export type StopSignalName = 'SIGINT' | 'SIGTERM' | 'SIGHUP';

export class StopRequest {
  #signal: StopSignalName | undefined;
  readonly #listeners = new Map<StopSignalName, () => void>();

  /** Listens for `signals` until dispose(). */
  constructor(readonly signals: readonly StopSignalName[] = ['SIGINT', 'SIGTERM']) {
    for (const signal of signals) {
      const listener = (): void => this.#onSignal(signal);
      this.#listeners.set(signal, listener);
      process.on(signal, listener);
    }
  }

  /** True once a stop was asked for (a signal, or request()). */
  get requested(): boolean {
    return this.#signal !== undefined;
  }

  /** The signal that asked, if any. */
  get signal(): StopSignalName | undefined {
    return this.#signal;
  }

  /** Asks for a stop from code (as if SIGTERM had arrived). */
  request(signal: StopSignalName = 'SIGTERM'): void {
    this.#signal ??= signal;
  }

  /** Stops listening; later signals have their default action again. */
  dispose(): void {
    for (const [signal, listener] of this.#listeners) process.off(signal, listener);
    this.#listeners.clear();
  }

  #onSignal(signal: StopSignalName): void {
    if (this.#signal === undefined) {
      this.#signal = signal;
      return;
    }
    this.dispose();
    process.kill(process.pid, signal);
  }
}

/**
 * Thrown by a run's preparation (the teacher's samples of a distillation) when a stop was asked for
 * before the first update: what is finished is kept, and the same command continues from it.
 */
export class PreparationStopped extends Error {
  constructor(
    /** What was being prepared. */
    readonly phase: string,
    readonly done: number,
    readonly total: number,
  ) {
    super(`stopped during ${phase} at ${done}/${total}`);
    this.name = 'PreparationStopped';
  }
}
