import type { AttentionOption } from '../attention/types.js';
import { WeightStore } from '../io/diffusers.js';
import type { AdapterSet, LoadedLora } from '../lora/adapters.js';
import type { HostTensor } from '../runtime/host-tensor.js';
import type { Runtime } from '../runtime/runtime.js';
import type { TensorSource } from '../nn/weights.js';
import { checkWeights } from '../nn/weights.js';
import type { WarningHandler } from '../warnings.js';
import type { QuantizeOption } from './int8.js';

/**
 * A model loaded from a diffusers/transformers component folder. `forward` takes tensors named as
 * the Python forward's arguments (nested ones by their keys: PixArt's `resolution`, `aspect_ratio`)
 * and returns outputs named as diffusers/transformers name them (`sample`; `latent_mean`,
 * `latent_logvar`, `latent_std` for a VAE encode; `last_hidden_state`, `pooler_output`,
 * `text_embeds`, `hidden_states.N` for text encoders). Graphs are built for the shapes they are
 * called with, through runtime/'s RunnableModel: inputs checked against the method's specs, one
 * graph per input layout.
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
  /**
   * The attention kinds `forward`'s `attention` option takes (denoisers); undefined for models that
   * take no attention option.
   */
  readonly attentionKinds?: readonly AttentionOption['kind'][];
  /** LoRA adapters, for models that take them (denoisers). */
  readonly adapters?: AdapterSet;
  /** Load a LoRA onto the model (denoisers). */
  loadLoraWeights?(path: string, options?: { adapterName?: string }): Promise<LoadedLora>;
  /** The Linear modules that run in int8, for models that quantize (README "int8"); undefined when float. */
  readonly int8Modules?: ReadonlySet<string>;
  /** Release files held open. */
  close(): Promise<void>;
}

export interface LoadOptions {
  runtime: Runtime;
  /**
   * Receives what the load accepts but ignores (config keys the class does not read, tensors it does
   * not use); default: a process warning (`console.warn` in browsers). Errors are thrown, not passed.
   */
  onWarning?: WarningHandler;
  /**
   * 'int8': Linear weights applied to tokens or pixels become symmetric per-output-channel int8 at
   * load and run on ORT's int8 GEMM with activations quantized at run time (README "int8"). A folder
   * in velodiff's int8 format (`velodiff quantize`) is int8 whatever this says.
   */
  quantize?: QuantizeOption;
  /**
   * With `quantize: 'int8'`: Linear and Conv2d modules (paths as in the checkpoint, such as
   * `transformer_blocks.0.ff.net.2`) to leave float beyond those the class keeps float itself.
   */
  keepFloat?: (modulePath: string) => boolean;
}

/**
 * The weights in `dir`, checked as every model class checks them at load (`checkWeights`: presence,
 * shape and dtype of each tensor `build` reads, a warning for the ones none reads); closed again when
 * a check fails.
 */
export async function openCheckedWeights(
  dir: string,
  options: {
    className: string;
    build: (source: TensorSource, weights: WeightStore) => void;
    ignoreUnused?: (name: string) => boolean;
    onWarning?: WarningHandler;
  },
): Promise<WeightStore> {
  const weights = await WeightStore.open(dir);
  try {
    checkWeights(weights, { ...options, build: (source) => options.build(source, weights) });
  } catch (error) {
    await weights.close();
    throw error;
  }
  return weights;
}
