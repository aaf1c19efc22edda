/**
 * The progress line every long command draws on stderr: redrawn in place on a terminal, one line
 * every so often when stderr is a file or a pipe (a `nohup` run's log), so a log stays readable.
 */

/** `|████····|` for `fraction` of `width` cells. */
export function progressBar(fraction: number, width = 24): string {
  const filled = Math.round(Math.min(1, Math.max(0, fraction)) * width);
  return `|${'█'.repeat(filled)}${' '.repeat(width - filled)}|`;
}

/** Writes progress lines to a stream: in place on a terminal, as whole lines otherwise. */
export class ProgressLine {
  #drawn = false;

  constructor(
    private readonly stream: NodeJS.WriteStream = process.stderr,
    /** Redraw in place; by default when the stream is a terminal. */
    readonly inPlace: boolean = stream.isTTY === true,
  ) {}

  /** Shows `line`: replaces the last one on a terminal, appends it elsewhere. */
  update(line: string): void {
    if (this.inPlace) {
      this.stream.write(`\r${line}\x1b[K`);
      this.#drawn = true;
    } else this.stream.write(`${line}\n`);
  }

  /** Ends the line being redrawn, so that what is written next starts on a line of its own. */
  done(): void {
    if (this.#drawn) this.stream.write('\n');
    this.#drawn = false;
  }

  /** Writes a whole line of its own, below the progress line, which is drawn again by the next update. */
  note(line: string): void {
    this.done();
    this.stream.write(`${line}\n`);
  }
}
