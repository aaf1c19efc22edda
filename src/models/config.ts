import { FileFormatError } from '../errors.js';

/**
 * Typed access to a config.json: each key read with its type and default, unsupported values and
 * keys no known version of the class has rejected with the file and key named.
 */
export class ConfigReader {
  private readonly read = new Set<string>();

  constructor(
    readonly raw: Record<string, unknown>,
    /** The config file, for messages. */
    readonly path: string,
    readonly className: string,
  ) {}

  private fail(key: string, expected: string): never {
    throw new FileFormatError(
      `${this.path}: "${key}" is ${JSON.stringify(this.raw[key])}; expected ${expected} for ${this.className}`,
      'CONFIG_VALUE',
      this.path,
    );
  }

  private value(key: string): unknown {
    this.read.add(key);
    return this.raw[key];
  }

  number(key: string, fallback: number): number {
    const v = this.value(key);
    if (v === undefined || v === null) return fallback;
    if (typeof v !== 'number' || !Number.isFinite(v)) this.fail(key, 'a number');
    return v;
  }

  integer(key: string, fallback: number, min = 0): number {
    const v = this.number(key, fallback);
    if (!Number.isInteger(v) || v < min) this.fail(key, `an integer ≥ ${min}`);
    return v;
  }

  optionalNumber(key: string): number | undefined {
    const v = this.value(key);
    if (v === undefined || v === null) return undefined;
    if (typeof v !== 'number' || !Number.isFinite(v)) this.fail(key, 'a number or null');
    return v;
  }

  boolean(key: string, fallback: boolean): boolean {
    const v = this.value(key);
    if (v === undefined || v === null) return fallback;
    if (typeof v !== 'boolean') this.fail(key, 'true or false');
    return v;
  }

  optionalBoolean(key: string): boolean | undefined {
    const v = this.value(key);
    if (v === undefined || v === null) return undefined;
    if (typeof v !== 'boolean') this.fail(key, 'true, false or null');
    return v;
  }

  string<T extends string>(key: string, fallback: T, allowed?: readonly T[]): T {
    const v = this.value(key);
    if (v === undefined || v === null) return fallback;
    if (typeof v !== 'string') this.fail(key, 'a string');
    if (allowed && !allowed.includes(v as T))
      this.fail(
        key,
        `one of ${allowed.map((a) => JSON.stringify(a)).join(', ')} (the values velodiff supports)`,
      );
    return v as T;
  }

  numbers(key: string, fallback: number[]): number[] {
    const v = this.value(key);
    if (v === undefined || v === null) return fallback;
    if (!Array.isArray(v) || v.some((x) => typeof x !== 'number')) this.fail(key, 'a list of numbers');
    return v as number[];
  }

  strings(key: string, fallback: string[]): string[] {
    const v = this.value(key);
    if (v === undefined || v === null) return fallback;
    if (!Array.isArray(v) || v.some((x) => typeof x !== 'string')) this.fail(key, 'a list of strings');
    return v as string[];
  }

  /** Mark keys that older or newer diffusers versions write and that do not change the model. */
  accept(...keys: string[]): void {
    for (const k of keys) this.read.add(k);
  }

  /** Throw for keys that were never read or accepted (underscore keys are metadata). */
  checkNoUnknownKeys(): void {
    const unknown = Object.keys(this.raw).filter((k) => !k.startsWith('_') && !this.read.has(k));
    if (unknown.length > 0) {
      throw new FileFormatError(
        `${this.path}: unknown config key${unknown.length > 1 ? 's' : ''} ${unknown.map((k) => `"${k}"`).join(', ')} for ${this.className}; ` +
          'the checkpoint may need a newer velodiff, or the folder holds another model',
        'CONFIG_UNKNOWN_KEY',
        this.path,
      );
    }
  }
}
