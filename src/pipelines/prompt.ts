import { join } from 'node:path';
import type { QuantizeOption } from '../models/int8.js';
import { checkQuantizeOption } from '../models/int8.js';
import { T5EncoderModel } from '../models/t5-encoder.js';
import type { HostTensor } from '../runtime/host-tensor.js';
import { hostTensor } from '../runtime/host-tensor.js';
import type { Runtime } from '../runtime/runtime.js';
import { T5Tokenizer, toModelInputs } from '../tokenizers/t5-tokenizer.js';
import type { WarningHandler } from '../warnings.js';

/** Turns prompts into text-encoder embeddings and masks. */
export interface PromptEncoder {
  /** Embeddings [B, maxLength, C] and masks [B, maxLength] (float32, 1 = token). */
  encode(prompts: string[], maxLength: number): Promise<{ embeds: HostTensor; mask: HostTensor }>;
  close(): Promise<void>;
}

/**
 * PixArt's prompt encoding: text lower-cased and stripped (diffusers' `_text_preprocessing` without
 * the optional bs4/ftfy caption cleaning), T5 tokens padded and truncated to `maxLength`, and the
 * encoder's last hidden state with the attention mask. `quantize: 'int8'` makes the encoder's Linear
 * layers int8 at load (LoadOptions.quantize).
 */
export async function loadT5PromptEncoder(
  pipelineDir: string,
  runtime: Runtime,
  options: { onWarning?: WarningHandler; quantize?: QuantizeOption } = {},
): Promise<PromptEncoder> {
  const quantize = checkQuantizeOption(options.quantize, 'loadT5PromptEncoder');
  const tokenizer = await T5Tokenizer.fromPretrained(join(pipelineDir, 'tokenizer'));
  const encoder = await T5EncoderModel.fromPretrained(join(pipelineDir, 'text_encoder'), {
    runtime,
    onWarning: options.onWarning,
    quantize,
  });
  return {
    async encode(prompts, maxLength) {
      const texts = prompts.map((p) => p.toLowerCase().trim());
      const encoding = tokenizer.encode(texts, { maxLength, padding: 'max_length', truncation: true });
      const inputs = toModelInputs(encoding);
      const { last_hidden_state: embeds } = await encoder.forward(inputs);
      const mask = hostTensor(
        'float32',
        inputs.attention_mask.shape,
        Float32Array.from(inputs.attention_mask.data as BigInt64Array, Number),
      );
      return { embeds, mask };
    },
    close: () => encoder.close(),
  };
}
