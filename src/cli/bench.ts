import { OptionError } from '../errors.js';
import type { FlagSpec } from './args.js';
import { parseArgs, usage } from './args.js';

const ENGINE_FLAGS: Record<string, FlagSpec> = {
  m: { type: 'integer', description: 'rows of the activation', default: 1024 },
  k: { type: 'integer', description: 'width of each square weight', default: 1024 },
  layers: { type: 'integer', description: 'MatMuls in the chain', default: 8 },
  reps: { type: 'integer', description: 'timed runs per variant', default: 15 },
  threads: { type: 'integer', description: 'ORT intra-op threads, 0 = ORT default', default: 0 },
  json: { type: 'boolean', description: 'print the result as one JSON object on the last line' },
  help: { type: 'boolean', description: 'show this help' },
};

export async function benchCommand(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name !== 'engine') {
    throw new OptionError(`bench: unknown benchmark "${name ?? ''}"; available: engine`);
  }
  const { flags } = parseArgs(rest, ENGINE_FLAGS, 'bench engine');
  if (flags.help) {
    console.log(usage('bench engine [options]', 'IR vs hand-written ONNX MatMul chain, per-run overhead, GFLOP/s.', ENGINE_FLAGS));
    return 0;
  }
  for (const key of ['m', 'k', 'layers', 'reps'] as const) {
    if ((flags[key] as number) < 1) throw new OptionError(`bench engine: --${key} must be ≥ 1`);
  }
  if ((flags.threads as number) < 0) throw new OptionError('bench engine: --threads must be ≥ 0');
  // The benchmark code lives in bench/ and ships in the package build.
  const { benchEngine } = await import('../../bench/engine.js');
  const json = flags.json === true;
  const result = await benchEngine(
    {
      m: flags.m as number,
      k: flags.k as number,
      layers: flags.layers as number,
      reps: flags.reps as number,
      threads: flags.threads as number,
    },
    json ? (s) => console.error(s) : (s) => console.log(s),
  );
  if (json) console.log(JSON.stringify(result));
  return 0;
}
