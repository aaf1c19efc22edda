/**
 * JSON values for training state files: a type, a lossless encoding of non-finite numbers (JSON has
 * none, but Prodigy's default growth rate is Infinity and a loss can be NaN), a canonical form to hash,
 * and a difference listing for "the checkpoint was written with another configuration" errors.
 */
import { describeJson, isPlainObject } from '../io/json.js';

export type JsonValue = null | boolean | number | string | JsonValue[] | JsonObject;
export interface JsonObject {
  [key: string]: JsonValue;
}

/** A number as JSON: finite numbers as they are, NaN and ±Infinity as the strings 'NaN', 'Infinity'. */
export function encodeNumber(value: number): number | string {
  return Number.isFinite(value) ? value : String(value);
}

/** Reverses encodeNumber; undefined when `value` is neither a number nor such a string. */
export function decodeNumber(value: unknown): number | undefined {
  if (typeof value === 'number') return value;
  if (value === 'NaN' || value === 'Infinity' || value === '-Infinity') return Number(value);
  return undefined;
}

/** JSON text with object keys sorted at every level: equal values give equal text (and hash). */
export function canonicalJson(value: JsonValue): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  if (value !== null && typeof value === 'object') {
    const keys = Object.keys(value).sort();
    return `{${keys.map((key) => `${JSON.stringify(key)}:${canonicalJson(value[key])}`).join(',')}}`;
  }
  return JSON.stringify(value);
}

/**
 * The paths at which `after` differs from `before`, each as "path: <before label> X, <after label> Y"
 * (at most `limit`, then a count), for an error message. Empty when they are equal.
 */
export function describeDifferences(
  before: unknown,
  after: unknown,
  [beforeLabel, afterLabel]: readonly [string, string] = ['expected', 'found'],
  limit = 10,
): string[] {
  const lines: string[] = [];
  let count = 0;
  const visit = (a: unknown, b: unknown, path: string): void => {
    if (isPlainObject(a) && isPlainObject(b)) {
      const keys = [...new Set([...Object.keys(a), ...Object.keys(b)])].sort();
      for (const key of keys) visit(a[key], b[key], path === '' ? key : `${path}.${key}`);
      return;
    }
    if (Array.isArray(a) && Array.isArray(b) && a.length === b.length) {
      a.forEach((item, index) => visit(item, b[index], `${path}[${index}]`));
      return;
    }
    if (JSON.stringify(a) === JSON.stringify(b)) return;
    count++;
    if (lines.length < limit) {
      lines.push(
        `${path === '' ? '(root)' : path}: ${beforeLabel} ${describeJson(a)}, ${afterLabel} ${describeJson(b)}`,
      );
    }
  };
  visit(before, after, '');
  if (count > lines.length) lines.push(`… ${count - lines.length} more`);
  return lines;
}
