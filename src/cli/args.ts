import { OptionError } from '../errors.js';

export interface FlagSpec {
  /** 'boolean' flags take no value. */
  type: 'string' | 'number' | 'integer' | 'boolean';
  description: string;
  /** May be given several times; the values are collected in a list (strings only). */
  multiple?: boolean;
  default?: string | number | boolean;
}

export interface ParsedArgs {
  positional: string[];
  flags: Record<string, string | number | boolean | string[] | undefined>;
}

/** Parse `--name value`, `--name=value` and boolean `--name`; unknown flags and bad numbers are errors. */
export function parseArgs(
  argv: readonly string[],
  specs: Record<string, FlagSpec>,
  command: string,
): ParsedArgs {
  const positional: string[] = [];
  const flags: ParsedArgs['flags'] = {};
  for (const [name, spec] of Object.entries(specs)) flags[name] = spec.default;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (!arg.startsWith('--')) {
      positional.push(arg);
      continue;
    }
    const eq = arg.indexOf('=');
    const name = arg.slice(2, eq < 0 ? undefined : eq);
    const spec = specs[name];
    if (!spec) {
      const known = Object.keys(specs)
        .map((k) => `--${k}`)
        .join(', ');
      throw new OptionError(`${command}: unknown option --${name}; known options: ${known || 'none'}`);
    }
    if (spec.type === 'boolean') {
      if (eq >= 0) throw new OptionError(`${command}: --${name} takes no value`);
      flags[name] = true;
      continue;
    }
    const value = eq >= 0 ? arg.slice(eq + 1) : argv[++i];
    if (value === undefined) throw new OptionError(`${command}: --${name} needs a value`);
    if (spec.multiple) flags[name] = [...((flags[name] as string[] | undefined) ?? []), value];
    else if (spec.type === 'string') flags[name] = value;
    else {
      const n = Number(value);
      if (value.trim() === '' || !Number.isFinite(n) || (spec.type === 'integer' && !Number.isInteger(n))) {
        throw new OptionError(
          `${command}: --${name} expects ${spec.type === 'integer' ? 'an integer' : 'a number'}, got "${value}"`,
        );
      }
      flags[name] = n;
    }
  }
  return { positional, flags };
}

export function usage(command: string, summary: string, specs: Record<string, FlagSpec>): string {
  const lines = [`usage: velodiff ${command}`, '', summary, ''];
  for (const [name, spec] of Object.entries(specs)) {
    const value = spec.type === 'boolean' ? '' : ` <${spec.type}>`;
    const def =
      spec.default === undefined || spec.type === 'boolean' ? '' : ` (default ${String(spec.default)})`;
    lines.push(`  --${name}${value}`.padEnd(28) + `${spec.description}${def}`);
  }
  return lines.join('\n');
}
