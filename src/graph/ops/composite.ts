import type { Tensor } from '../graph.js';
import { fail } from '../op.js';
import { dimEquals, formatShape } from '../shape.js';
import { add, exp, log, mul, rsqrt, sub } from './elementwise.js';
import { matmul } from './matmul.js';
import { transpose } from './movement.js';
import { max, mean, sum } from './reduce.js';

// Composites: built from primitives, so they need no lowering or VJP of their own.

/** The module path and op as apply() writes them, for errors raised outside an op's `infer`. */
function site(x: Tensor, op: string): string {
  const scope = x.graph.currentScope;
  return scope ? `${scope} (${op})` : op;
}

/** y = x·Wᵀ + b with W as stored by torch.nn.Linear: [out, in]. */
export function linear(x: Tensor, weight: Tensor, bias?: Tensor): Tensor {
  if (weight.rank !== 2) {
    fail(`${site(x, 'linear')}: weight must be [out, in], got ${formatShape(weight.shape)}`, 'SHAPE');
  }
  const [outDim, inDim] = weight.shape;
  if (x.rank < 1 || !dimEquals(x.shape[x.rank - 1], inDim)) {
    fail(`${site(x, 'linear')}: expected [*, ${String(inDim)}], got ${formatShape(x.shape)}`, 'SHAPE');
  }
  // Checked here because add() would broadcast a [1] or [N, out] bias without complaint.
  if (bias && (bias.rank !== 1 || !dimEquals(bias.shape[0], outDim))) {
    fail(
      `${site(x, 'linear')}: bias must be [${String(outDim)}] for weight ${formatShape(weight.shape)}, got ${formatShape(bias.shape)}`,
      'SHAPE',
    );
  }
  // ORT folds the transpose of a constant weight into a new initializer at session creation.
  const y = matmul(x, transpose(weight, [1, 0]));
  return bias ? add(y, bias) : y;
}

/** RMS norm over the last axis: x / √(mean(x²) + eps) · w. ORT fuses this to SimplifiedLayerNormalization. */
export function rmsNorm(x: Tensor, weight: Tensor | undefined, eps = 1e-6): Tensor {
  if (x.rank < 1) fail(`${site(x, 'rmsNorm')}: expected [*, D], got ${formatShape(x.shape)}`, 'SHAPE');
  const width = x.shape[x.rank - 1];
  // Checked here because mul() would broadcast a [1] or [N, D] weight without complaint.
  if (weight && (weight.rank !== 1 || !dimEquals(weight.shape[0], width))) {
    fail(
      `${site(x, 'rmsNorm')}: weight must be [${String(width)}] for input ${formatShape(x.shape)}, got ${formatShape(weight.shape)}`,
      'SHAPE',
    );
  }
  const normed = mul(x, rsqrt(add(mean(mul(x, x), -1, true), eps)));
  return weight ? mul(normed, weight) : normed;
}

/**
 * log softmax(x) along `axis`: x − m − log Σ exp(x − m) with m = max(x), so no exp overflows. The
 * max's own gradient cancels (Σ softmax = 1), so the VJP composed from the primitives is exact.
 */
export function logSoftmax(x: Tensor, axis = -1): Tensor {
  const shifted = sub(x, max(x, axis, true));
  return sub(shifted, log(sum(exp(shifted), axis, true)));
}
