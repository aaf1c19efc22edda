/**
 * Prompts through a CLIP tokenizer and text encoder as Stable Diffusion pipelines do (diffusers'
 * `encode_prompt`): tokens padded and truncated to the tokenizer's model_max_length (77), a warning
 * for the truncated part, and the hidden state the pipeline picks — the last one, an earlier layer's
 * for clip-skip, SDXL's penultimate — with the pooled `text_embeds` of a projection encoder.
 */
import { join } from 'node:path';

import { OptionError } from '../errors.js';
import type { ModelIndex } from '../io/diffusers.js';
import { CLIPTextModel, CLIPTextModelWithProjection } from '../models/clip-text.js';
import type { QuantizeOption } from '../models/int8.js';
import { checkQuantizeOption } from '../models/int8.js';
import type { HostTensor } from '../runtime/host-tensor.js';
import { hostTensor } from '../runtime/host-tensor.js';
import type { Runtime } from '../runtime/runtime.js';
import { CLIPTokenizer } from '../tokenizers/clip-tokenizer.js';
import type { WarningHandler } from '../warnings.js';
import { VelodiffWarning, emitWarning } from '../warnings.js';
import { concatLastAxis } from './batch.js';

/** Which hidden state a pipeline takes as the prompt embedding. */
export type HiddenStateChoice =
  /** `last_hidden_state` (after the final layer norm). */
  | { kind: 'last' }
  /** `final_layer_norm(hidden_states[-fromEnd])`: SD's clip-skip. */
  | { kind: 'normed'; fromEnd: number }
  /** `hidden_states[-fromEnd]` as it is: SDXL's (2 = the penultimate layer's output). */
  | { kind: 'raw'; fromEnd: number };

export interface ClipEncoding {
  /** [B, L, hidden] */
  hidden: HostTensor;
  /** CLIPTextModelWithProjection's `text_embeds` [B, projection_dim]; absent for CLIPTextModel. */
  pooled?: HostTensor;
  /** CLIPTextModel's `pooler_output` [B, hidden] (FLUX's pooled prompt embedding); absent for the projection class. */
  poolerOutput?: HostTensor;
}

/** One tokenizer + text encoder pair of a pipeline folder (`tokenizer` + `text_encoder`, or the `_2` pair). */
export class ClipPromptEncoder {
  private constructor(
    readonly tokenizer: CLIPTokenizer,
    readonly textEncoder: CLIPTextModel | CLIPTextModelWithProjection,
    private readonly onWarning: WarningHandler,
  ) {}

  /**
   * The tokenizer and text encoder in `folders` of a pipeline folder; `quantize: 'int8'` makes the
   * encoder's Linear layers int8 at load (LoadOptions.quantize).
   */
  static async fromPretrained(
    pipelineDir: string,
    folders: { tokenizer: string; textEncoder: string },
    className: string,
    options: { runtime: Runtime; onWarning?: WarningHandler; quantize?: QuantizeOption },
  ): Promise<ClipPromptEncoder> {
    const quantize = checkQuantizeOption(options.quantize, 'ClipPromptEncoder.fromPretrained');
    const tokenizer = await CLIPTokenizer.fromPretrained(join(pipelineDir, folders.tokenizer));
    const load = { runtime: options.runtime, onWarning: options.onWarning, quantize };
    const dir = join(pipelineDir, folders.textEncoder);
    let encoder: CLIPTextModel | CLIPTextModelWithProjection;
    if (className === 'CLIPTextModel') encoder = await CLIPTextModel.fromPretrained(dir, load);
    else if (className === 'CLIPTextModelWithProjection')
      encoder = await CLIPTextModelWithProjection.fromPretrained(dir, load);
    else {
      throw new OptionError(
        `${dir}: text encoder class ${className} is not a CLIP text encoder (CLIPTextModel or CLIPTextModelWithProjection)`,
      );
    }
    return new ClipPromptEncoder(tokenizer, encoder, options.onWarning ?? emitWarning);
  }

  /**
   * The pair `folders` of a pipeline folder as model_index.json lists it, or undefined where it lists
   * the tokenizer or the text encoder as null or not at all (a folder for embeddings only).
   */
  static async fromModelIndex(
    pipelineDir: string,
    index: ModelIndex,
    folders: { tokenizer: string; textEncoder: string },
    options: { runtime: Runtime; onWarning?: WarningHandler; quantize?: QuantizeOption },
  ): Promise<ClipPromptEncoder | undefined> {
    const className = index.components[folders.textEncoder]?.[1];
    if (!className || !index.components[folders.tokenizer]?.[1]) return undefined;
    return ClipPromptEncoder.fromPretrained(pipelineDir, folders, className, options);
  }

  /** The tokenizer's model_max_length (77 for every released CLIP). */
  get maxLength(): number {
    return this.tokenizer.modelMaxLength ?? this.textEncoder.config.maxPositionEmbeddings;
  }

  /** The encoder's layer count: `hidden_states` has one more entry. */
  get numHiddenLayers(): number {
    return this.textEncoder.config.numHiddenLayers;
  }

  /** Encodes `prompts` padded to `maxLength` (default model_max_length), taking the hidden state `choice`. */
  async encode(
    prompts: string[],
    choice: HiddenStateChoice,
    maxLength = this.maxLength,
  ): Promise<ClipEncoding> {
    const encoding = this.tokenizer.encode(prompts, { maxLength, padding: 'max_length', truncation: true });
    this.warnTruncated(prompts, maxLength);
    const ids = hostTensor(
      'int64',
      [prompts.length, maxLength],
      BigInt64Array.from(encoding.inputIds.flat(), (v) => BigInt(v)),
    );
    const layers = this.numHiddenLayers;
    const wantsStates = choice.kind !== 'last';
    if (wantsStates && (choice.fromEnd < 1 || choice.fromEnd > layers + 1)) {
      throw new OptionError(
        `clipSkip reaches hidden state ${-choice.fromEnd}, but ${this.textEncoder.dir} has only ${layers + 1} (num_hidden_layers ${layers} + embeddings)`,
      );
    }
    const out = await this.textEncoder.forward(
      { input_ids: ids },
      wantsStates ? { kwargs: { output_hidden_states: true } } : {},
    );
    let hidden: HostTensor;
    if (choice.kind === 'last') hidden = out.last_hidden_state;
    else {
      const state = out[`hidden_states.${layers + 1 - choice.fromEnd}`];
      hidden = choice.kind === 'raw' ? state : await this.textEncoder.finalLayerNorm(state);
    }
    if (out.text_embeds) return { hidden, pooled: out.text_embeds };
    return out.pooler_output ? { hidden, poolerOutput: out.pooler_output } : { hidden };
  }

  /** diffusers logs the part of a prompt that CLIP's 77 tokens cut off; so does velodiff, as a warning. */
  private warnTruncated(prompts: string[], maxLength: number): void {
    for (const prompt of prompts) {
      const ids = this.tokenizer.encode(prompt).inputIds[0];
      if (ids.length <= maxLength) continue;
      const removed = this.tokenizer.decode(ids.slice(maxLength - 1, -1));
      this.onWarning(
        new VelodiffWarning(
          `The following part of your input was truncated because CLIP can only handle sequences up to ${maxLength} tokens: ${removed}`,
          'PROMPT_TRUNCATED',
          this.tokenizer.path,
          [],
        ),
      );
    }
  }

  async close(): Promise<void> {
    await this.textEncoder.close();
  }
}

/**
 * Prompts through several encoders, as SDXL's `encode_prompt`: `prompts[i]` through `encoders[i]`, the
 * hidden states `choice` joined along the channel axis, and the first pooled `text_embeds` found.
 */
export async function encodeJoined(
  encoders: readonly ClipPromptEncoder[],
  prompts: readonly string[][],
  choice: HiddenStateChoice,
  maxLength?: number,
): Promise<ClipEncoding> {
  const hidden: HostTensor[] = [];
  let pooled: HostTensor | undefined;
  for (const [i, encoder] of encoders.entries()) {
    const encoded = await encoder.encode(prompts[i], choice, maxLength);
    pooled ??= encoded.pooled;
    hidden.push(encoded.hidden);
  }
  const joined = concatLastAxis(hidden);
  return pooled ? { hidden: joined, pooled } : { hidden: joined };
}
