/**
 * Gradient clipping by global norm, as torch.nn.utils.clip_grad_norm_ (norm_type 2): the norm of all
 * gradients together; when it exceeds maxNorm every gradient is scaled by maxNorm/(norm + 1e-6).
 * A non-finite norm (an inf or NaN somewhere) is not scaled into the parameters: by policy it throws,
 * naming the parameters, or reports a skip so the caller drops this update.
 */
import { OptionError, VelodiffError } from '../errors.js';
import { listNames } from '../warnings.js';
import type { NamedArrays } from './named-arrays.js';

/** torch's guard against division by a zero norm. */
const NORM_EPSILON = 1e-6;

/** What to do when the norm is not finite: 'error' throws NonFiniteGradientError; 'skip' leaves the
 * gradients as they are and returns `skipped: true` (drop the update, as a GradScaler does). */
export type NonFinitePolicy = 'error' | 'skip';

export interface ClipResult {
  /** The global L2 norm before clipping (NaN or Infinity when some gradient is not finite). */
  readonly norm: number;
  /** The factor the gradients were multiplied by (1 when within maxNorm or skipped). */
  readonly scale: number;
  /** True when the norm was not finite and the policy is 'skip': do not step the optimizer. */
  readonly skipped: boolean;
  /** Parameters whose gradient holds an inf or NaN (empty when the norm is finite). */
  readonly nonFinite: readonly string[];
}

export class NonFiniteGradientError extends VelodiffError {
  override readonly name: string = 'NonFiniteGradientError';
  constructor(
    message: string,
    /** The parameters whose gradients hold an inf or NaN. */
    readonly parameters: readonly string[],
  ) {
    super(message, 'GRADIENT_NOT_FINITE');
  }
}

/** The global L2 norm of `grads`, accumulated in float64. */
export function globalGradNorm(grads: NamedArrays): number {
  let sumOfSquares = 0;
  for (const grad of grads.values()) {
    for (let i = 0; i < grad.length; i++) sumOfSquares += grad[i] * grad[i];
  }
  return Math.sqrt(sumOfSquares);
}

/** Scales `grads` in place so that their global norm is at most `maxNorm`; see ClipResult. */
export function clipGradNorm(
  grads: NamedArrays,
  maxNorm: number,
  { nonFinite = 'error' }: { nonFinite?: NonFinitePolicy } = {},
): ClipResult {
  if (!(maxNorm > 0 && maxNorm < Infinity)) {
    throw new OptionError(`Expected maxNorm to be a finite number > 0, found ${maxNorm}.`, 'GRADIENT_CLIP');
  }
  const norm = globalGradNorm(grads);
  if (!Number.isFinite(norm)) {
    const names = [...grads].filter(([, grad]) => !grad.every(Number.isFinite)).map(([name]) => name);
    if (nonFinite === 'skip') return { norm, scale: 1, skipped: true, nonFinite: names };
    throw new NonFiniteGradientError(
      `The gradient norm is ${norm}: gradients of ${listNames(names)} hold inf or NaN. Lower the lr, ` +
        "check the loss for overflow, or clip with { nonFinite: 'skip' } to drop such updates.",
      names,
    );
  }
  const scale = Math.min(1, maxNorm / (norm + NORM_EPSILON));
  if (scale < 1) {
    for (const grad of grads.values()) {
      for (let i = 0; i < grad.length; i++) grad[i] *= scale;
    }
  }
  return { norm, scale, skipped: false, nonFinite: [] };
}
