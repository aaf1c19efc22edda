/**
 * A CLIP text encoder's `text_model.final_layer_norm` on its own: Stable Diffusion 1.x/2.x pipelines
 * apply it to an earlier layer's hidden state for clip-skip (diffusers' `encode_prompt`:
 * `text_encoder.text_model.final_layer_norm(hidden_states[-(clip_skip + 1)])`). It reads the one
 * module's weights from the text encoder's folder.
 */
import { resolve } from 'node:path';

import { Graph } from '../graph/graph.js';
import type { WeightStore } from '../io/diffusers.js';
import { LayerNorm } from '../nn/layers.js';
import { Params } from '../nn/params.js';
import type { TensorSource } from '../nn/weights.js';
import type { HostTensor } from '../runtime/host-tensor.js';
import { RunnableModel } from '../runtime/runnable-model.js';
import type { CLIPTextConfig } from './clip-text.js';
import type { LoadOptions } from './model.js';
import { openCheckedWeights } from './model.js';

interface Layout {
  seqLength: number;
}

function buildGraph(config: CLIPTextConfig, weights: TensorSource, seqLength: number): Graph {
  const g = new Graph('CLIPTextModel.final_layer_norm');
  const x = g.input('hidden_states', 'float32', ['B', seqLength, config.hiddenSize]);
  const p = Params.of(g, weights).child('text_model').child('final_layer_norm');
  g.output('last_hidden_state', LayerNorm(p, x, config.hiddenSize, { eps: config.layerNormEps }));
  return g;
}

export class CLIPFinalLayerNorm {
  private constructor(
    private readonly weights: WeightStore,
    private readonly runnable: RunnableModel<Layout>,
  ) {}

  /** The module of the CLIP text encoder in `dir` whose config is `config`. */
  static async fromPretrained(
    dir: string,
    config: CLIPTextConfig,
    options: LoadOptions,
  ): Promise<CLIPFinalLayerNorm> {
    const abs = resolve(dir);
    const weights = await openCheckedWeights(abs, {
      className: 'CLIPTextModel.final_layer_norm',
      build: (source) => buildGraph(config, source, 1),
      // The rest of the encoder is the CLIPTextModel's; only this module is read here.
      ignoreUnused: () => true,
      onWarning: options.onWarning,
    });
    const runnable = new RunnableModel<Layout>({
      className: 'CLIPTextModel.final_layer_norm',
      dir: abs,
      runtime: options.runtime,
      build: ({ seqLength }) => buildGraph(config, weights, seqLength),
    });
    return new CLIPFinalLayerNorm(weights, runnable);
  }

  /** hidden_states [B, S, hidden] → final_layer_norm(hidden_states). */
  async forward(hiddenStates: HostTensor): Promise<HostTensor> {
    const dims = this.runnable.checkInputs(
      { hidden_states: hiddenStates },
      { hidden_states: { dtypes: ['float32'], shape: ['B', 'S', hiddenStates.shape[2]] } },
    );
    const out = await this.runnable.run({ seqLength: dims.S }, { hidden_states: hiddenStates });
    return out.host.last_hidden_state;
  }

  async close(): Promise<void> {
    this.runnable.clear();
    await this.weights.close();
  }
}
