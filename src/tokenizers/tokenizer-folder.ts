/**
 * A tokenizer folder as transformers saves it: the tokenizer's own files, `tokenizer_config.json`
 * and `special_tokens_map.json`; found in the folder given or in its `tokenizer/` subfolder (the
 * diffusers pipeline layout).
 */
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';

import { FileFormatError } from '../errors.js';
import { readJsonFile } from '../io/diffusers.js';
import { errnoCode } from '../io/errno.js';
import { describeJson, isPlainObject } from '../io/json.js';

/** transformers' "no limit" model_max_length (VERY_LARGE_INTEGER) and anything near it. */
const NO_LIMIT = 1e20;

/**
 * `dir` itself when it holds every file of one of `layouts` (tried in order), else its
 * `tokenizer/` subfolder; `hint` ends the error when neither does.
 */
export async function findTokenizerFolder<Layout extends readonly string[]>(
  dir: string,
  layouts: readonly Layout[],
  hint: string,
): Promise<{ dir: string; layout: Layout }> {
  const looked: string[] = [];
  for (const candidate of [dir, join(dir, 'tokenizer')]) {
    const entries = await listIfFolder(candidate);
    if (entries === undefined) continue;
    looked.push(candidate);
    const layout = layouts.find((files) => files.every((f) => entries.includes(f)));
    if (layout) return { dir: candidate, layout };
  }
  if (looked.length === 0) {
    throw new FileFormatError(
      `Expected a tokenizer folder at ${dir}, but it does not exist or is not a folder.`,
      'FILE_MISSING',
      dir,
    );
  }
  const wanted = layouts.map((files) => files.join(' + ')).join(' or ');
  throw new FileFormatError(
    `No tokenizer found: expected ${wanted} in ${looked.join(' or ')}. ${hint}`,
    'TOKENIZER_MISSING',
    dir,
  );
}

async function listIfFolder(dir: string): Promise<string[] | undefined> {
  try {
    return await readdir(dir);
  } catch (error) {
    const code = errnoCode(error);
    if (code === 'ENOENT' || code === 'ENOTDIR') return undefined;
    throw error;
  }
}

/** The JSON object in `dir/name`, or {} when the folder has no such file. */
export async function readOptionalJsonObject(
  dir: string,
  name: string,
  what: string,
): Promise<Record<string, unknown>> {
  const entries = await readdir(dir);
  if (!entries.includes(name)) return {};
  const path = join(dir, name);
  const value = await readJsonFile(path, what);
  if (!isPlainObject(value)) {
    throw new FileFormatError(
      `Expected ${path} to hold a JSON object, found ${describeJson(value)}.`,
      'CONFIG_INVALID',
      path,
    );
  }
  return value;
}

/**
 * tokenizer_config.json with special_tokens_map.json's entries over it, as transformers'
 * from_pretrained applies them.
 */
export async function readTokenizerConfig(dir: string): Promise<Record<string, unknown>> {
  const config = await readOptionalJsonObject(
    dir,
    'tokenizer_config.json',
    'the tokenizer configuration (tokenizer_config.json)',
  );
  const specialTokens = await readOptionalJsonObject(
    dir,
    'special_tokens_map.json',
    'the special tokens (special_tokens_map.json)',
  );
  return { ...config, ...specialTokens };
}

/** A special token as tokenizer_config.json writes it: a string or an AddedToken object. */
export function tokenContent(value: unknown): string | undefined {
  if (typeof value === 'string') return value;
  if (isPlainObject(value) && typeof value.content === 'string') return value.content;
  return undefined;
}

/** tokenizer_config.json's model_max_length when it sets a real limit. */
export function modelMaxLength(config: Record<string, unknown>): number | undefined {
  const value = config.model_max_length;
  return typeof value === 'number' && Number.isInteger(value) && value > 0 && value < NO_LIMIT
    ? value
    : undefined;
}
