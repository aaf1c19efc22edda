import { OptionError } from '../errors.js';
import { readHostTensors, writeHostTensors } from '../io/host-tensors.js';
import { loadModel, modelClassOf } from '../models/index.js';
import { INT8_MODEL_CLASSES } from '../models/quantize-folder.js';
import { Runtime } from '../runtime/runtime.js';
import type { FlagSpec } from './args.js';
import { parseArgs, usage } from './args.js';
import { runtimeFlags, runtimeOptions } from './runtime-flags.js';
import {
  attentionFlags,
  attentionOption,
  loraOptions,
  quantizeFlag,
  quantizeOption,
} from './acceleration-flags.js';

const FLAGS: Record<string, FlagSpec> = {
  inputs: { type: 'string', description: 'safetensors file of inputs named as the forward arguments' },
  out: { type: 'string', description: 'safetensors file to write the outputs to' },
  method: { type: 'string', description: 'encode | decode for a VAE (default: forward)' },
  kwargs: {
    type: 'string',
    description: 'JSON of non-tensor arguments, e.g. {"output_hidden_states": true}',
  },
  ...attentionFlags,
  ...quantizeFlag,
  ...runtimeFlags,
  help: { type: 'boolean', description: 'show this help' },
};

const SUMMARY = `One forward call of a model folder (config.json + safetensors) on input tensors named as the
Python forward's arguments (nested ones by their keys, e.g. resolution, aspect_ratio); outputs are
written named as diffusers/transformers name them (sample; latent_mean/latent_logvar/latent_std;
last_hidden_state, hidden_states.N).`;

export async function forwardCommand(argv: string[]): Promise<number> {
  const { positional, flags } = parseArgs(argv, FLAGS, 'forward');
  if (flags.help) {
    console.log(
      usage('forward MODEL_DIR --inputs in.safetensors --out out.safetensors [options]', SUMMARY, FLAGS),
    );
    return 0;
  }
  if (positional.length !== 1) throw new OptionError('forward: give exactly one MODEL_DIR');
  if (!flags.inputs) throw new OptionError('forward: --inputs FILE is required');
  if (!flags.out) throw new OptionError('forward: --out FILE is required');
  let kwargs: Record<string, unknown> | undefined;
  if (flags.kwargs !== undefined) {
    try {
      kwargs = JSON.parse(String(flags.kwargs)) as Record<string, unknown>;
    } catch (e) {
      throw new OptionError(`forward: --kwargs is not valid JSON: ${(e as Error).message}`);
    }
    if (typeof kwargs !== 'object' || kwargs === null || Array.isArray(kwargs)) {
      throw new OptionError('forward: --kwargs must be a JSON object');
    }
  }
  const quantize = quantizeOption(flags, 'forward');
  if (quantize !== undefined) {
    const className = await modelClassOf(positional[0]);
    if (!INT8_MODEL_CLASSES.has(className)) {
      throw new OptionError(
        `forward: --quantize applies to ${[...INT8_MODEL_CLASSES].join(', ')}; ${className} stays float32`,
      );
    }
  }
  const runtime = new Runtime(runtimeOptions(flags));
  try {
    const model = await loadModel(positional[0], { runtime, quantize });
    try {
      const method = flags.method === undefined ? undefined : String(flags.method);
      if (method !== undefined && method !== 'forward' && !model.methods.includes(method)) {
        throw new OptionError(
          `forward: ${model.className} has no method "${method}"; it has ${['forward', ...model.methods].join(', ')}`,
        );
      }
      const attention = attentionOption(flags);
      const loras = loraOptions(flags);
      const adapters = model.adapters;
      const takesLora = adapters !== undefined && model.loadLoraWeights !== undefined;
      const takesAttention = model.attentionKinds !== undefined;
      if ((attention && !takesAttention) || (loras.length > 0 && !takesLora)) {
        throw new OptionError(
          takesAttention || takesLora
            ? `forward: ${model.className} takes ${takesAttention ? '--attention' : '--lora'} but not ${takesAttention ? '--lora' : '--attention'}`
            : `forward: --attention and --lora apply to denoisers; ${model.className} takes neither`,
        );
      }
      for (const [i, { path }] of loras.entries())
        await model.loadLoraWeights?.(path, { adapterName: `lora_${i}` });
      if (loras.length > 0) {
        adapters?.setAdapters(
          loras.map((_, i) => `lora_${i}`),
          loras.map((l) => l.scale),
        );
      }
      const inputs = await readHostTensors(String(flags.inputs));
      const outputs = await model.forward(inputs, { method, kwargs, ...(attention ? { attention } : {}) });
      await writeHostTensors(String(flags.out), outputs);
      for (const [name, t] of Object.entries(outputs))
        console.log(`${name}: ${t.dtype}[${t.shape.join(', ')}]`);
    } finally {
      await model.close();
    }
  } finally {
    await runtime.dispose();
  }
  return 0;
}
