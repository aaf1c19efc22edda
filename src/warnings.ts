/**
 * Warnings: what a load accepted but did not use — config keys a model class does not read, tensors
 * a checkpoint holds that the model does not use — which diffusers logs and velodiff reports the same
 * way, to a handler the caller chooses.
 */
export class VelodiffWarning extends Error {
  override readonly name: string = 'VelodiffWarning';
  constructor(
    message: string,
    /** A stable machine-readable code: 'CONFIG_UNUSED_KEYS', 'WEIGHTS_UNUSED'. */
    readonly code: string,
    /** The file the warning is about (a config.json, a safetensors file or shard index). */
    readonly path: string,
    /** The config keys or tensor names it is about, all of them (the message may shorten the list). */
    readonly names: readonly string[],
  ) {
    super(message);
  }
}

/** Receives load warnings: pass `() => {}` to silence them, or collect them to inspect. */
export type WarningHandler = (warning: VelodiffWarning) => void;

/**
 * The default handler: a Node process warning (printed once to stderr, silenced by `--no-warnings`,
 * seen by `process.on('warning')`), or `console.warn` where there is no `process` (browsers).
 */
export function emitWarning(warning: VelodiffWarning): void {
  const host = (globalThis as { process?: { emitWarning?: (warning: Error) => void } }).process;
  if (typeof host?.emitWarning === 'function') host.emitWarning(warning);
  else console.warn(`${warning.name} [${warning.code}]: ${warning.message}`);
}

/** `names` quoted and listed, at most `limit` of them, for a message. */
export function listNames(names: readonly string[], limit = 10): string {
  const shown = names.slice(0, limit).map((n) => `'${n}'`);
  if (names.length > limit) shown.push(`… ${names.length - limit} more`);
  return shown.join(', ');
}
