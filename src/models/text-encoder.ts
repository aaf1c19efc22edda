/**
 * What transformers' text encoders (T5EncoderModel, CLIPTextModel) share around their graphs: the
 * inputs and kwargs `forward` takes, the input layout a graph is built for, the token id check, and
 * the value transformers adds at masked keys.
 */
import { RuntimeError } from '../errors.js';
import { formatShape } from '../graph/shape.js';
import type { HostTensor } from '../runtime/host-tensor.js';
import type { RunnableModel } from '../runtime/runnable-model.js';

/** torch.finfo(torch.float32).min, which transformers multiplies the inverted mask by. */
export const FLOAT32_MIN = -3.4028234663852886e38;

/** The input layout one text encoder graph is built for. */
export interface TextEncoderLayout {
  /** Sequence length S (position tables and biases are built for it). */
  seqLength: number;
  /** Element type of `input_ids`. */
  idsDType: 'int64' | 'int32';
  /** Element type of `attention_mask` (1 = keep), or undefined when there is none. */
  maskDType?: 'int64' | 'int32' | 'float32' | 'bool';
  /** Also output `hidden_states.0` … `hidden_states.{layers}` as transformers numbers them. */
  outputHiddenStates: boolean;
}

/**
 * Checks a text encoder's `forward(input_ids, attention_mask=None, **kwargs)` call: `input_ids` [B, S]
 * (int64 or int32, each in [0, vocabSize), 1 ≤ S ≤ maxLength when there is one), `attention_mask`
 * [B, S] (1 = attend; int64, int32, float32 or bool), kwargs `output_hidden_states` and `return_dict`.
 * Returns the layout of the call and its feeds. `encoder` names the model in the token id error
 * ('the T5 encoder').
 */
export function textEncoderCall<Layout>(
  runnable: RunnableModel<Layout>,
  inputs: Record<string, HostTensor>,
  options: { method?: string; kwargs?: Record<string, unknown> },
  o: { vocabSize: number; maxLength?: number; encoder: string },
): { layout: TextEncoderLayout; feeds: Record<string, HostTensor> } {
  runnable.checkMethod(options.method, ['forward']);
  const kwargs = options.kwargs ?? {};
  runnable.checkKwargs(kwargs, ['output_hidden_states', 'return_dict']);
  const dims = runnable.checkInputs(inputs, {
    input_ids: { dtypes: ['int64', 'int32'], shape: ['B', 'S'] },
    attention_mask: { dtypes: ['int64', 'int32', 'float32', 'bool'], shape: ['B', 'S'], optional: true },
  });
  const ids = inputs.input_ids;
  if (o.maxLength === undefined && dims.S < 1) {
    throw runnable.inputError('input_ids', `expected at least one token, got ${formatShape(ids.shape)}`);
  }
  if (o.maxLength !== undefined && (dims.S < 1 || dims.S > o.maxLength)) {
    throw runnable.inputError(
      'input_ids',
      `expected 1 to ${o.maxLength} tokens (max_position_embeddings), got ${formatShape(ids.shape)}; ` +
        "truncate the prompt to the tokenizer's model_max_length",
    );
  }
  checkTokenIds(ids, o.vocabSize, `${o.encoder} in ${runnable.dir}`);
  const mask = inputs.attention_mask;
  return {
    layout: {
      seqLength: dims.S,
      idsDType: ids.dtype as TextEncoderLayout['idsDType'],
      ...(mask ? { maskDType: mask.dtype as TextEncoderLayout['maskDType'] } : {}),
      outputHiddenStates: kwargs.output_hidden_states === true,
    },
    feeds: mask ? { input_ids: ids, attention_mask: mask } : { input_ids: ids },
  };
}

/** torch's embedding rejects ids outside the table; ORT's Gather would read negative ids from the end. */
function checkTokenIds(ids: HostTensor, vocabSize: number, model: string): void {
  const data = ids.data;
  for (let i = 0; i < data.length; i++) {
    const id = Number(data[i]);
    if (id >= 0 && id < vocabSize) continue;
    const seq = ids.shape[1];
    throw new RuntimeError(
      `input_ids[${Math.floor(i / seq)}, ${i % seq}] is ${id}, outside the vocabulary [0, ${vocabSize}) of ${model}; ` +
        'the ids come from a tokenizer with a larger vocabulary than this model (vocab_size in config.json)',
      'INPUT_RANGE',
    );
  }
}
