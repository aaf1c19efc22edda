import { OptionError } from '../errors.js';
import type { FlagSpec } from './args.js';
import { parseArgs, usage } from './args.js';

const COMMON: Record<string, FlagSpec> = {
  threads: { type: 'integer', description: 'ORT intra-op threads, 0 = ORT default', default: 0 },
  json: { type: 'boolean', description: 'print the result as one JSON object on the last line' },
  help: { type: 'boolean', description: 'show this help' },
};

const ENGINE_FLAGS: Record<string, FlagSpec> = {
  m: { type: 'integer', description: 'rows of the activation', default: 1024 },
  k: { type: 'integer', description: 'width of each square weight', default: 1024 },
  layers: { type: 'integer', description: 'MatMuls in the chain', default: 8 },
  reps: { type: 'integer', description: 'timed runs per variant', default: 15 },
  ...COMMON,
};

const DIT_FLAGS: Record<string, FlagSpec> = {
  tokens: {
    type: 'string',
    description: 'image tokens (square numbers), comma-separated',
    default: '256,1024,4096',
  },
  layers: { type: 'integer', description: 'transformer blocks', default: 2 },
  batch: { type: 'integer', description: 'batch size', default: 1 },
  reps: { type: 'integer', description: 'timed runs per size', default: 5 },
  ...COMMON,
};

function positive(flags: Record<string, unknown>, keys: string[], command: string): void {
  for (const key of keys) {
    if ((flags[key] as number) < 1) throw new OptionError(`${command}: --${key} must be ≥ 1`);
  }
  if ((flags.threads as number) < 0) throw new OptionError(`${command}: --threads must be ≥ 0`);
}

export async function benchCommand(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === 'engine') return benchEngineCommand(rest);
  if (name === 'dit') return benchDitCommand(rest);
  throw new OptionError(`bench: unknown benchmark "${name ?? ''}"; available: engine, dit`);
}

// The benchmark code lives in bench/ and ships in the package build.

async function benchEngineCommand(argv: string[]): Promise<number> {
  const { flags } = parseArgs(argv, ENGINE_FLAGS, 'bench engine');
  if (flags.help) {
    console.log(
      usage(
        'bench engine [options]',
        'IR vs hand-written ONNX MatMul chain, per-run overhead, GFLOP/s.',
        ENGINE_FLAGS,
      ),
    );
    return 0;
  }
  positive(flags, ['m', 'k', 'layers', 'reps'], 'bench engine');
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

async function benchDitCommand(argv: string[]): Promise<number> {
  const { flags } = parseArgs(argv, DIT_FLAGS, 'bench dit');
  if (flags.help) {
    console.log(
      usage('bench dit [options]', 'PixArt-α-width denoiser forward vs MatMul throughput.', DIT_FLAGS),
    );
    return 0;
  }
  positive(flags, ['layers', 'batch', 'reps'], 'bench dit');
  const tokens = String(flags.tokens)
    .split(',')
    .map((t) => Number(t.trim()));
  for (const t of tokens) {
    const side = Math.round(Math.sqrt(t));
    if (!Number.isInteger(t) || t < 1 || side * side !== t) {
      throw new OptionError(
        `bench dit: --tokens must be square numbers (a square latent grid), got "${flags.tokens}"`,
      );
    }
  }
  const { benchDit } = await import('../../bench/dit.js');
  const json = flags.json === true;
  const rows = await benchDit(
    {
      tokens,
      layers: flags.layers as number,
      batch: flags.batch as number,
      reps: flags.reps as number,
      threads: flags.threads as number,
    },
    json ? (s) => console.error(s) : (s) => console.log(s),
  );
  if (json) {
    // One size: the object itself, as the contract says; several: the last line lists them all.
    console.log(JSON.stringify(rows.length === 1 ? rows[0] : rows));
  }
  return 0;
}
