/**
 * Typed errors. Every message says what was expected, what was found, where, and (when there is
 * something to do) what to do.
 */
export class VelodiffError extends Error {
  override readonly name: string = 'VelodiffError';
  constructor(
    message: string,
    /** A stable machine-readable code, e.g. 'SAFETENSORS_TRUNCATED'. */
    readonly code: string,
  ) {
    super(message);
  }
}

/** A graph could not be built: a shape, dtype or attribute does not fit the op. */
export class GraphBuildError extends VelodiffError {
  override readonly name: string = 'GraphBuildError';
  constructor(message: string, code = 'GRAPH_BUILD') {
    super(message, code);
  }
}

/** A file (safetensors, config, model folder) is missing, malformed or inconsistent. */
export class FileFormatError extends VelodiffError {
  override readonly name: string = 'FileFormatError';
  constructor(
    message: string,
    code: string,
    /** The file the problem is in. */
    readonly path: string,
  ) {
    super(message, code);
  }
}

/** A named tensor is absent from a checkpoint or has the wrong shape or dtype. */
export class WeightError extends VelodiffError {
  override readonly name: string = 'WeightError';
  constructor(message: string, code: string) {
    super(message, code);
  }
}

/** A run was given inputs that do not fit the compiled graph, or the engine failed. */
export class RuntimeError extends VelodiffError {
  override readonly name: string = 'RuntimeError';
  constructor(message: string, code = 'RUNTIME') {
    super(message, code);
  }
}

/** An option passed by the caller (API or CLI) is invalid. */
export class OptionError extends VelodiffError {
  override readonly name: string = 'OptionError';
  constructor(message: string, code = 'INVALID_OPTION') {
    super(message, code);
  }
}
