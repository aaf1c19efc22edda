import type { AttentionOption } from '../attention/types.js';
import type { AdapterSet, LoadedLora } from '../lora/adapters.js';
import type { HostTensor } from '../runtime/host-tensor.js';
import type { Runtime } from '../runtime/runtime.js';

/**
 * A model loaded from a diffusers/transformers component folder. `forward` takes tensors named as
 * the Python forward's arguments (nested ones by their keys: PixArt's `resolution`, `aspect_ratio`)
 * and returns outputs named as diffusers/transformers name them (`sample`; `latent_mean`,
 * `latent_logvar`, `latent_std` for a VAE encode; `last_hidden_state`, `pooler_output`,
 * `text_embeds`, `hidden_states.N` for text encoders). Graphs are built for the shapes they are
 * called with and compiled once per shape by the runtime's session cache.
 */
export interface DiffusersModel {
  /** diffusers/transformers class name, e.g. 'PixArtTransformer2DModel'. */
  readonly className: string;
  /** The folder the model was loaded from. */
  readonly dir: string;
  /** Methods `forward` accepts besides the default (e.g. 'encode' and 'decode' for a VAE). */
  readonly methods: readonly string[];
  forward(
    inputs: Record<string, HostTensor>,
    options?: { method?: string; kwargs?: Record<string, unknown>; attention?: AttentionOption },
  ): Promise<Record<string, HostTensor>>;
  /** LoRA adapters, for models that take them (denoisers). */
  readonly adapters?: AdapterSet;
  /** Load a LoRA onto the model (denoisers). */
  loadLoraWeights?(path: string, options?: { adapterName?: string }): Promise<LoadedLora>;
  /** Release files held open. */
  close(): Promise<void>;
}

export interface LoadOptions {
  runtime: Runtime;
}
