import { OptionError } from '../errors.js';
import type { ExecutionProvider, SessionSettings } from '../runtime/backend.js';
import type { RuntimeOptions } from '../runtime/runtime.js';
import type { FlagSpec, ParsedArgs } from './args.js';

/** Flags every command that runs models shares. */
export const runtimeFlags: Record<string, FlagSpec> = {
  provider: {
    type: 'string',
    description: 'execution providers in order of preference, e.g. cuda,cpu',
    default: 'cpu',
  },
  threads: { type: 'integer', description: 'ORT intra-op threads, 0 = one per physical core', default: 0 },
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

const OPTIMIZATION_LEVELS: readonly SessionSettings['optimizationLevel'][] = [
  'disabled',
  'basic',
  'extended',
  'all',
];

/**
 * ORT's session settings that trade speed for memory (notes/onnxruntime.md §4, §6): at 'all' the
 * CPU EP re-lays every Conv weight out (NCHWc) and, with prepacking, every MatMul weight, a copy per
 * session; at 'extended' without prepacking the sessions read the mmapped checkpoint.
 */
export const sessionFlags: Record<string, FlagSpec> = {
  'optimization-level': {
    type: 'string',
    description:
      'ORT graph optimization: disabled, basic, extended or all (all copies Conv weights per session)',
    default: 'all',
  },
  'disable-prepacking': {
    type: 'boolean',
    description: "skip ORT's MatMul weight prepacking (no per-session copy of those weights)",
  },
};

export function sessionFlagOptions(
  flags: Readonly<Record<string, unknown>>,
  command: string,
): Required<Pick<RuntimeOptions, 'optimizationLevel' | 'disablePrepacking'>> {
  const level = String(flags['optimization-level'] ?? 'all');
  const optimizationLevel = OPTIMIZATION_LEVELS.find((l) => l === level);
  if (optimizationLevel === undefined) {
    throw new OptionError(
      `${command}: --optimization-level must be ${OPTIMIZATION_LEVELS.join(', ')}, got "${level}"`,
    );
  }
  return { optimizationLevel, disablePrepacking: flags['disable-prepacking'] === true };
}
