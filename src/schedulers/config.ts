/**
 * Reading diffusers' `scheduler_config.json`: snake_case keys exactly as diffusers writes them, the
 * defaults of diffusers 0.40, and an OptionError naming the key, the value and what is allowed when a
 * value is one diffusers would reject. Keys a class does not know are ignored, as diffusers ignores
 * them (`_class_name`, `_diffusers_version`, keys of other schedulers in a shared config).
 */
import { OptionError } from '../errors.js';

/** A scheduler config as parsed from JSON: diffusers' snake_case keys, anything else ignored. */
export type SchedulerConfigInput = Readonly<Record<string, unknown>>;

/** A typed config input: the known keys with their types (null where diffusers accepts None), plus any others. */
export type ConfigInput<Config> = {
  readonly [Key in keyof Config]?: Config[Key] | null;
} & SchedulerConfigInput;

function describe(value: unknown): string {
  if (typeof value === 'string') return JSON.stringify(value);
  if (typeof value === 'number') return String(value);
  if (Array.isArray(value)) return `an array of ${value.length}`;
  if (value === null) return 'null';
  return typeof value === 'object' ? 'an object' : String(value);
}

/** Reads typed values from a config object for one scheduler class, applying diffusers' defaults. */
export class ConfigReader {
  constructor(
    readonly className: string,
    private readonly input: SchedulerConfigInput,
  ) {
    if (typeof input !== 'object' || input === null || Array.isArray(input)) {
      throw new OptionError(`${className}: expected a config object, found ${describe(input)}.`);
    }
  }

  /** The raw value, with null and undefined both meaning "not given". */
  private raw(key: string): unknown {
    const value = this.input[key];
    return value === null ? undefined : value;
  }

  invalid(key: string, value: unknown, expected: string): OptionError {
    return new OptionError(
      `${this.className}: config key "${key}" is ${describe(value)}; expected ${expected}.`,
    );
  }

  number(key: string, fallback: number): number {
    const value = this.raw(key);
    if (value === undefined) return fallback;
    if (typeof value !== 'number' || Number.isNaN(value)) throw this.invalid(key, value, 'a number');
    return value;
  }

  /** A number that must be finite and positive (a shift, a scale). */
  positiveNumber(key: string, fallback: number): number {
    const value = this.number(key, fallback);
    if (!(value > 0) || !Number.isFinite(value)) throw this.invalid(key, value, 'a finite number > 0');
    return value;
  }

  nullableNumber(key: string): number | null {
    const value = this.raw(key);
    if (value === undefined) return null;
    if (typeof value !== 'number' || Number.isNaN(value)) throw this.invalid(key, value, 'a number or null');
    return value;
  }

  integer(key: string, fallback: number, minimum: number): number {
    const value = this.raw(key);
    if (value === undefined) return fallback;
    if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < minimum) {
      throw this.invalid(key, value, `an integer ≥ ${minimum}`);
    }
    return value;
  }

  /** A boolean; null reads as false where diffusers types the key `bool | None`. */
  boolean(key: string, fallback: boolean): boolean {
    const value = this.raw(key);
    if (value === undefined) return this.input[key] === null ? false : fallback;
    if (typeof value !== 'boolean') throw this.invalid(key, value, 'true or false');
    return value;
  }

  /** A string that must be one of `allowed`; `aliases` maps values diffusers rewrites on load. */
  oneOf<Value extends string>(
    key: string,
    allowed: readonly Value[],
    fallback: Value,
    aliases: Readonly<Record<string, Value>> = {},
  ): Value {
    const value = this.raw(key);
    if (value === undefined) return fallback;
    if (typeof value === 'string') {
      if ((allowed as readonly string[]).includes(value)) return value as Value;
      if (Object.hasOwn(aliases, value)) return aliases[value];
    }
    throw this.invalid(key, value, `one of ${allowed.map((v) => JSON.stringify(v)).join(', ')}`);
  }

  /** As oneOf, but null (diffusers' None) is a value of its own. */
  nullableOneOf<Value extends string>(key: string, allowed: readonly Value[]): Value | null {
    const value = this.raw(key);
    if (value === undefined) return null;
    if (typeof value === 'string' && (allowed as readonly string[]).includes(value)) return value as Value;
    throw this.invalid(key, value, `null or one of ${allowed.map((v) => JSON.stringify(v)).join(', ')}`);
  }

  nullableNumberArray(key: string): number[] | null {
    const value = this.raw(key);
    if (value === undefined) return null;
    if (
      !Array.isArray(value) ||
      !value.every((v): v is number => typeof v === 'number' && Number.isFinite(v))
    ) {
      throw this.invalid(key, value, 'null or an array of finite numbers');
    }
    return [...value];
  }
}

/** Non-standard JSON tokens Python's json module writes for float('inf') and float('nan'). */
const PYTHON_FLOAT_TOKENS: Readonly<Record<string, number>> = {
  '-Infinity': -Infinity,
  Infinity: Infinity,
  NaN: NaN,
};
const PYTHON_FLOAT_MARKER = '\u0000velodiff-python-float:';

/**
 * Parses JSON as Python's `json` module writes it, which is what `save_config` produces: standard JSON
 * plus the bare tokens `Infinity`, `-Infinity` and `NaN` (DPMSolverMultistepScheduler saves
 * `"lambda_min_clipped": -Infinity`).
 */
export function parsePythonJson(text: string): unknown {
  let rewritten = '';
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const char = text[i];
    if (inString) {
      rewritten += char;
      if (char === '\\') rewritten += text[++i] ?? '';
      else if (char === '"') inString = false;
      continue;
    }
    if (char === '"') inString = true;
    const token = Object.keys(PYTHON_FLOAT_TOKENS).find((t) => text.startsWith(t, i));
    if (token !== undefined) {
      rewritten += JSON.stringify(PYTHON_FLOAT_MARKER + token);
      i += token.length - 1;
    } else {
      rewritten += char;
    }
  }
  return JSON.parse(rewritten, (_key, value: unknown) =>
    typeof value === 'string' && value.startsWith(PYTHON_FLOAT_MARKER)
      ? PYTHON_FLOAT_TOKENS[value.slice(PYTHON_FLOAT_MARKER.length)]
      : value,
  );
}
