import { OptionError } from '../errors.js';
import type { ExecutionProvider } from '../runtime/backend.js';
import type { RuntimeOptions } from '../runtime/runtime.js';
import type { FlagSpec, ParsedArgs } from './args.js';

/** Flags every command that runs models shares. */
export const runtimeFlags: Record<string, FlagSpec> = {
  provider: {
    type: 'string',
    description: 'execution providers in order of preference, e.g. cuda,cpu',
    default: 'cpu',
  },
  threads: { type: 'integer', description: 'ORT intra-op threads, 0 = ORT default', default: 0 },
};

export function runtimeOptions(flags: ParsedArgs['flags']): RuntimeOptions {
  const providers = String(flags.provider ?? 'cpu')
    .split(',')
    .map((p) => p.trim())
    .filter(Boolean) as ExecutionProvider[];
  const threads = (flags.threads as number | undefined) ?? 0;
  if (threads < 0) throw new OptionError('--threads must be ≥ 0');
  return { executionProviders: providers, threads };
}
