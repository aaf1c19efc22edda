import type { Tensor } from '../graph/graph.js';
import { add, exp, gelu, log, mul, relu, silu, tanh } from '../graph/ops/index.js';

/** The activation names diffusers' `get_activation` knows (activations.py ACT2CLS). */
export const ACTIVATIONS = ['silu', 'swish', 'mish', 'gelu', 'relu'] as const;
export type Activation = (typeof ACTIVATIONS)[number];

export function isActivation(name: unknown): name is Activation {
  return (ACTIVATIONS as readonly unknown[]).includes(name);
}

/** diffusers' `get_activation(name)(x)`. */
export function activation(x: Tensor, act: Activation): Tensor {
  switch (act) {
    case 'silu':
    case 'swish':
      return silu(x);
    case 'gelu':
      return gelu(x);
    case 'relu':
      return relu(x);
    case 'mish':
      // x·tanh(softplus(x)); softplus as log(1 + eˣ) is exact enough here: for large x it is +inf and
      // tanh gives 1.
      return mul(x, tanh(log(add(exp(x), 1))));
  }
}
