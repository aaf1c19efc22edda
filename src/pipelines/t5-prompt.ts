/**
 * Prompts through a T5 tokenizer and encoder as SD3's and FLUX's `_get_t5_prompt_embeds` do: the text
 * as given (PixArt's lower-casing and mask are not theirs), `</s>` appended, padded and truncated to
 * max_sequence_length, a warning for the truncated part, and the encoder's last hidden state computed
 * without an attention mask (padding tokens are attended to, as in diffusers).
 */
import { join } from 'node:path';

import { FileFormatError, OptionError } from '../errors.js';
import type { ModelIndex } from '../io/diffusers.js';
import type { QuantizeOption } from '../models/int8.js';
import { checkQuantizeOption } from '../models/int8.js';
import { T5EncoderModel } from '../models/t5-encoder.js';
import type { HostTensor } from '../runtime/host-tensor.js';
import { hostTensor } from '../runtime/host-tensor.js';
import type { Runtime } from '../runtime/runtime.js';
import { T5Tokenizer } from '../tokenizers/t5-tokenizer.js';
import type { WarningHandler } from '../warnings.js';
import { VelodiffWarning, emitWarning } from '../warnings.js';
import { checkInteger } from './batch.js';

/** diffusers' check_inputs of SD3 and FLUX: T5 takes at most 512 tokens. */
export const MAX_SEQUENCE_LENGTH = 512;

/** The `maxSequenceLength` run option: T5 tokens per prompt, an integer from 1 to MAX_SEQUENCE_LENGTH. */
export function checkMaxSequenceLength(maxSequenceLength: number): void {
  checkInteger(maxSequenceLength, 'maxSequenceLength', 1);
  if (maxSequenceLength > MAX_SEQUENCE_LENGTH) {
    throw new OptionError(
      `maxSequenceLength must be at most ${MAX_SEQUENCE_LENGTH}, got ${maxSequenceLength}`,
    );
  }
}

/** One tokenizer + T5 encoder pair of a pipeline folder (SD3's `tokenizer_3` + `text_encoder_3`). */
export class T5PromptEncoder {
  private constructor(
    readonly tokenizer: T5Tokenizer,
    readonly textEncoder: T5EncoderModel,
    private readonly onWarning: WarningHandler,
  ) {}

  /**
   * The pair `folders` of a pipeline folder as model_index.json lists it, or undefined where it lists
   * the tokenizer or the text encoder as null or not at all (SD3 folders saved without T5).
   * `quantize: 'int8'` makes the encoder's Linear layers int8 at load (LoadOptions.quantize).
   */
  static async fromModelIndex(
    pipelineDir: string,
    index: ModelIndex,
    folders: { tokenizer: string; textEncoder: string },
    options: { runtime: Runtime; onWarning?: WarningHandler; quantize?: QuantizeOption },
  ): Promise<T5PromptEncoder | undefined> {
    const className = index.components[folders.textEncoder]?.[1];
    if (!className || !index.components[folders.tokenizer]?.[1]) return undefined;
    const dir = join(pipelineDir, folders.textEncoder);
    if (className !== 'T5EncoderModel') {
      throw new FileFormatError(
        `${join(pipelineDir, 'model_index.json')}: "${folders.textEncoder}" is ${className}; velodiff reads it as a T5EncoderModel`,
        'COMPONENT_CLASS',
        dir,
      );
    }
    const quantize = checkQuantizeOption(options.quantize, 'T5PromptEncoder.fromModelIndex');
    const tokenizer = await T5Tokenizer.fromPretrained(join(pipelineDir, folders.tokenizer));
    const textEncoder = await T5EncoderModel.fromPretrained(dir, {
      runtime: options.runtime,
      onWarning: options.onWarning,
      quantize,
    });
    return new T5PromptEncoder(tokenizer, textEncoder, options.onWarning ?? emitWarning);
  }

  /** The width of the embeddings (d_model: 4096 for T5-XXL). */
  get width(): number {
    return this.textEncoder.config.dModel;
  }

  /** `last_hidden_state` [B, maxLength, d_model] of `prompts` padded and truncated to `maxLength` tokens. */
  async encode(prompts: string[], maxLength: number): Promise<HostTensor> {
    const encoding = this.tokenizer.encode(prompts, { maxLength, padding: 'max_length', truncation: true });
    this.warnTruncated(prompts, maxLength);
    const ids = hostTensor(
      'int64',
      [prompts.length, maxLength],
      BigInt64Array.from(encoding.inputIds.flat(), (v) => BigInt(v)),
    );
    return (await this.textEncoder.forward({ input_ids: ids })).last_hidden_state;
  }

  /** diffusers logs the part of a prompt that max_sequence_length cuts off; velodiff warns. */
  private warnTruncated(prompts: string[], maxLength: number): void {
    for (const prompt of prompts) {
      const ids = this.tokenizer.encode(prompt).inputIds[0];
      if (ids.length <= maxLength) continue;
      const removed = this.tokenizer.decode(ids.slice(maxLength - 1, -1));
      this.onWarning(
        new VelodiffWarning(
          `The following part of your input was truncated because \`max_sequence_length\` is set to ${maxLength} tokens: ${removed}`,
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
