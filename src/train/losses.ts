/** Training losses as graph builders: composed from primitives, so `grad()` differentiates them. */
import { GraphBuildError } from '../errors.js';
import type { DType } from '../graph/dtype.js';
import type { Tensor } from '../graph/graph.js';
import { cast, equal, logSoftmax, mean, mul, neg, sum, unsqueeze } from '../graph/ops/index.js';
import { formatShape } from '../graph/shape.js';

/**
 * Integer class indices [B] (int32 or int64) → one-hot rows [B, classes] of `dtype`: the labels are
 * compared with 0…classes−1, so gradients stop at the integers by themselves. An index outside
 * [0, classes) gives a row of zeros.
 */
export function oneHot(labels: Tensor, classes: number, dtype: DType): Tensor {
  if (labels.rank !== 1 || (labels.dtype !== 'int32' && labels.dtype !== 'int64')) {
    throw new GraphBuildError(`oneHot: labels must be int32 or int64 [B], got ${labels.toString()}`, 'SHAPE');
  }
  const indices =
    labels.dtype === 'int32'
      ? labels.graph.constant(
          Int32Array.from({ length: classes }, (_, k) => k),
          'int32',
          [1, classes],
        )
      : labels.graph.constant(
          BigInt64Array.from({ length: classes }, (_, k) => BigInt(k)),
          'int64',
          [1, classes],
        );
  return cast(equal(unsqueeze(labels, 1), indices), dtype);
}

/**
 * torch.nn.functional.cross_entropy(logits, labels) with reduction 'mean': −mean_b log softmax(logits_b)[labels_b]
 * for logits [B, K] and class indices [B]. A label outside [0, K) contributes 0, where torch raises:
 * callers check labels against the head's classes.
 */
export function crossEntropy(logits: Tensor, labels: Tensor): Tensor {
  const classes = logits.shape[1];
  if (logits.rank !== 2 || typeof classes !== 'number') {
    throw new GraphBuildError(
      `crossEntropy: logits must be [B, K] with a fixed K, got ${formatShape(logits.shape)}`,
      'SHAPE',
    );
  }
  return neg(mean(sum(mul(oneHot(labels, classes, logits.dtype), logSoftmax(logits, 1)), 1), 0));
}
