import { OptionError } from '../errors.js';
import type { Tensor } from '../graph/graph.js';
import { Attention } from '../nn/attention.js';
import { clearSelfAttention } from './clear.js';
import type { LinFusionWeights } from './linfusion.js';
import { linfusionSelfAttention } from './linfusion.js';
import type { AttentionChoice, SelfAttentionLayer } from './types.js';

/**
 * A denoiser's self-attention module (nn/'s diffusers `Attention`: to_q/to_k/to_v, the kernel,
 * to_out.0) with the kernel the build chose. Every model builds its self-attention layers through this, so
 * CLEAR and LinFusion reach them by configuration.
 */
export function selfAttentionModule(
  layer: SelfAttentionLayer,
  choice: AttentionChoice,
  extras: { linfusion?: LinFusionWeights } = {},
): Tensor {
  switch (choice.kind) {
    case 'full': {
      const { params: p, x, dim, heads, qkvBias } = layer;
      return Attention(p, x, undefined, { queryDim: dim, heads, dimHead: dim / heads, bias: qkvBias });
    }
    case 'clear':
      return clearSelfAttention(layer, { radius: choice.radius, downFactor: choice.downFactor ?? 1 });
    case 'linfusion':
      if (!extras.linfusion) {
        throw new OptionError(
          "attention kind 'linfusion' needs LinFusion weights (a folder with config.json and the safetensors)",
        );
      }
      return linfusionSelfAttention(layer, extras.linfusion, layer.params.path);
  }
}
