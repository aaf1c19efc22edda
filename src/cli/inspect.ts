import { existsSync, readdirSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { FileFormatError, OptionError } from '../errors.js';
import { WeightStore, readModelIndex } from '../io/diffusers.js';
import { modelClassOf } from '../models/index.js';
import type { FlagSpec } from './args.js';
import { parseArgs, usage } from './args.js';

const FLAGS: Record<string, FlagSpec> = {
  json: { type: 'boolean', description: 'print one JSON object' },
  help: { type: 'boolean', description: 'show this help' },
};

export interface ComponentInfo {
  name: string;
  className: string;
  /** Elements of the floating-point tensors: what torch's num_parameters() counts. */
  parameters: number;
  /** Those parameters by safetensors dtype. */
  dtypes: Record<string, number>;
  /** Elements of integer and bool tensors: saved buffers such as older CLIPs' position_ids, not parameters. */
  buffers: number;
  bytes: number;
}

/** A pipeline component with no weights to inspect (tokenizer, scheduler) or not in the folder. */
export interface SkippedComponent {
  name: string;
  className: string;
  reason: string;
}

/** Parameters must be floating point (torch's requires_grad needs it); anything else is a buffer. */
const PARAMETER_DTYPES: readonly string[] = ['F64', 'F32', 'F16', 'BF16', 'F8_E4M3', 'F8_E5M2'];

/** Class, parameter count, dtypes and size of one model folder. */
export async function inspectModel(dir: string, name = ''): Promise<ComponentInfo> {
  const className = await modelClassOf(dir);
  const store = await WeightStore.open(dir);
  try {
    let parameters = 0;
    let buffers = 0;
    const dtypes: Record<string, number> = {};
    for (const tensor of store.names()) {
      const info = store.info(tensor);
      const count = info.shape.reduce((a, b) => a * b, 1);
      if (!PARAMETER_DTYPES.includes(info.dtype)) {
        buffers += count;
        continue;
      }
      parameters += count;
      dtypes[info.dtype] = (dtypes[info.dtype] ?? 0) + count;
    }
    const bytes = store.files.reduce((n, f) => n + statSync(f.path).size, 0);
    return { name, className, parameters, dtypes, buffers, bytes };
  } finally {
    await store.close();
  }
}

/**
 * Why a pipeline component is not inspected, or undefined when it is a model to inspect: a folder
 * with a config.json or safetensors weights (a missing config.json is then an error naming it).
 */
function skipReason(dir: string): string | undefined {
  if (!existsSync(dir)) return 'no folder';
  if (existsSync(join(dir, 'config.json'))) return undefined;
  if (
    readdirSync(dir).some(
      (entry) => entry.endsWith('.safetensors') || entry.endsWith('.safetensors.index.json'),
    )
  )
    return undefined;
  return 'no weights';
}

function human(n: number, unit: string): string {
  const steps = unit === 'B' ? ['B', 'KB', 'MB', 'GB', 'TB'] : ['', 'K', 'M', 'B', 'T'];
  let i = 0;
  while (n >= 1000 && i < steps.length - 1) {
    n /= 1000;
    i++;
  }
  return `${n.toFixed(i === 0 ? 0 : 2)} ${steps[i]}`.trim();
}

export async function inspectCommand(argv: string[]): Promise<number> {
  const { positional, flags } = parseArgs(argv, FLAGS, 'inspect');
  if (flags.help) {
    console.log(
      usage(
        'inspect DIR [--json]',
        'Class, parameter count, dtypes and size of a model or pipeline folder.',
        FLAGS,
      ),
    );
    return 0;
  }
  if (positional.length !== 1) throw new OptionError('inspect: give exactly one folder');
  const dir = resolve(positional[0]);
  const result: {
    dir: string;
    pipeline?: string;
    components: ComponentInfo[];
    skipped?: SkippedComponent[];
  } = { dir, components: [] };
  if (existsSync(join(dir, 'model_index.json'))) {
    const index = await readModelIndex(dir);
    result.pipeline = index.className;
    result.skipped = [];
    for (const [name, [library, cls]] of Object.entries(index.components)) {
      if (library === null || cls === null) continue;
      const sub = join(dir, name);
      const reason = skipReason(sub);
      if (reason === undefined) result.components.push(await inspectModel(sub, name));
      else result.skipped.push({ name, className: cls, reason });
    }
  } else if (existsSync(join(dir, 'config.json'))) {
    result.components.push(await inspectModel(dir));
  } else {
    throw new FileFormatError(
      `${dir} has neither model_index.json (a pipeline) nor config.json (a model)`,
      'NOT_A_MODEL',
      dir,
    );
  }
  if (flags.json) {
    console.log(JSON.stringify(result));
    return 0;
  }
  if (result.pipeline) console.log(`${result.pipeline} (${dir})`);
  for (const c of result.components) {
    const dtypes = Object.entries(c.dtypes)
      .map(([d, n]) => `${d} ${human(n, '')}`)
      .join(', ');
    const buffers = c.buffers > 0 ? ` + ${human(c.buffers, '')} in integer buffers` : '';
    console.log(
      `${c.name ? c.name + ': ' : ''}${c.className} — ${human(c.parameters, '')} parameters (${dtypes})${buffers}, ${human(c.bytes, 'B')} on disk`,
    );
  }
  for (const s of result.skipped ?? []) console.log(`${s.name}: ${s.className} — skipped (${s.reason})`);
  return 0;
}
