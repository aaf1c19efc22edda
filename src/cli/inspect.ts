import { existsSync, statSync } from 'node:fs';
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
  parameters: number;
  dtypes: Record<string, number>;
  bytes: number;
}

/** Class, parameter count, dtypes and size of one model folder. */
export async function inspectModel(dir: string, name = ''): Promise<ComponentInfo> {
  const className = await modelClassOf(dir);
  const store = await WeightStore.open(dir);
  try {
    let parameters = 0;
    const dtypes: Record<string, number> = {};
    for (const tensor of store.names()) {
      const info = store.info(tensor);
      const count = info.shape.reduce((a, b) => a * b, 1);
      parameters += count;
      dtypes[info.dtype] = (dtypes[info.dtype] ?? 0) + count;
    }
    const bytes = store.files.reduce((n, f) => n + statSync(f.path).size, 0);
    return { name, className, parameters, dtypes, bytes };
  } finally {
    await store.close();
  }
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
  const result: { dir: string; pipeline?: string; components: ComponentInfo[] } = { dir, components: [] };
  if (existsSync(join(dir, 'model_index.json'))) {
    const index = await readModelIndex(dir);
    result.pipeline = index.className;
    for (const [name, [library, cls]] of Object.entries(index.components)) {
      if (library === null || cls === null) continue;
      const sub = join(dir, name);
      if (!existsSync(join(sub, 'config.json'))) continue; // schedulers and tokenizers have no weights
      result.components.push(await inspectModel(sub, name));
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
    console.log(
      `${c.name ? c.name + ': ' : ''}${c.className} — ${human(c.parameters, '')} parameters (${dtypes}), ${human(c.bytes, 'B')} on disk`,
    );
  }
  return 0;
}
