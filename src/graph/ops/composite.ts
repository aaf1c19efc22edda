import type { Tensor } from '../graph.js';
import { fail } from '../op.js';
import { dimEquals, formatShape } from '../shape.js';
import { add, mul, rsqrt } from './elementwise.js';
import { matmul } from './matmul.js';
import { transpose } from './movement.js';
import { mean } from './reduce.js';

// Composites: built from primitives, so they need no lowering or VJP of their own.

/** y = x·Wᵀ + b with W as stored by torch.nn.Linear: [out, in]. */
export function linear(x: Tensor, weight: Tensor, bias?: Tensor): Tensor {
  if (weight.rank !== 2) fail(`linear: weight must be [out, in], got ${formatShape(weight.shape)}`, 'SHAPE');
  const inDim = weight.shape[1];
  if (x.rank < 1 || !dimEquals(x.shape[x.rank - 1], inDim)) {
    const where = x.graph.currentScope;
    fail(
      `${where ? where + ' (linear)' : 'linear'}: expected [*, ${String(inDim)}], got ${formatShape(x.shape)}`,
      'SHAPE',
    );
  }
  // ORT folds the transpose of a constant weight into a new initializer at session creation.
  const y = matmul(x, transpose(weight, [1, 0]));
  return bias ? add(y, bias) : y;
}

/** RMS norm over the last axis: x / √(mean(x²) + eps) · w. ORT fuses this to SimplifiedLayerNormalization. */
export function rmsNorm(x: Tensor, weight: Tensor | undefined, eps = 1e-6): Tensor {
  const normed = mul(x, rsqrt(add(mean(mul(x, x), -1, true), eps)));
  return weight ? mul(normed, weight) : normed;
}
