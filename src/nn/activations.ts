import type { Tensor } from '../graph/graph.js';
import { add, exp, gelu, log, mul, relu, sigmoid, silu, tanh } from '../graph/ops/index.js';

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

/** The names transformers' ACT2FN maps a config's `hidden_act` (CLIP) or `dense_act_fn` (T5) to that velodiff builds. */
export const TRANSFORMERS_ACTIVATIONS = [
  'relu',
  'gelu',
  'gelu_new',
  'gelu_pytorch_tanh',
  'gelu_fast',
  'quick_gelu',
  'silu',
  'swish',
] as const;
export type TransformersActivation = (typeof TRANSFORMERS_ACTIVATIONS)[number];

/** transformers' `ACT2FN[name](x)`. */
export function transformersActivation(x: Tensor, name: TransformersActivation): Tensor {
  switch (name) {
    case 'relu':
      return relu(x);
    case 'gelu':
      return gelu(x, 'none');
    // gelu_new, gelu_pytorch_tanh and gelu_fast are all 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))).
    case 'gelu_new':
    case 'gelu_pytorch_tanh':
    case 'gelu_fast':
      return gelu(x, 'tanh');
    // OpenAI CLIP's x·σ(1.702·x) (transformers' QuickGELUActivation).
    case 'quick_gelu':
      return mul(x, sigmoid(mul(x, 1.702)));
    case 'silu':
    case 'swish':
      return silu(x);
  }
}
