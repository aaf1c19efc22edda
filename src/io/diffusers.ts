/**
 * Diffusers model folders: `model_index.json` at the pipeline root, `config.json` per component, and
 * component weights as one safetensors file or shards listed in `<base>.safetensors.index.json`.
 */
import { readdir, readFile } from 'node:fs/promises';
import { isAbsolute, join, normalize, resolve, sep } from 'node:path';

import { FileFormatError, WeightError } from '../errors.js';
import { errnoCode } from './errno.js';
import { describeJson, isPlainObject } from './json.js';
import { SafetensorsFile, type TensorInfo } from './safetensors.js';
import type { SafetensorsDtype } from './dtypes.js';
import { didYouMean } from './suggest.js';

/** Parses the JSON file at `path`; `what` says what the file is for, for the error message. */
export async function readJsonFile(path: string, what: string): Promise<unknown> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (error) {
    const code = errnoCode(error);
    if (code === 'ENOENT') {
      throw new FileFormatError(
        `Expected ${what} at ${path}, but the file does not exist.`,
        'FILE_MISSING',
        path,
      );
    }
    throw new FileFormatError(
      `Cannot read ${what} at ${path}: ${(error as Error).message}.`,
      code === 'EISDIR' ? 'FILE_IS_DIRECTORY' : 'FILE_UNREADABLE',
      path,
    );
  }
  try {
    return JSON.parse(text);
  } catch (error) {
    throw new FileFormatError(
      `Expected ${what} at ${path} to be JSON, but it does not parse: ${(error as Error).message}.`,
      'JSON_INVALID',
      path,
    );
  }
}

// ---------------------------------------------------------------------------------------------
// model_index.json and config.json.

export interface ModelIndex {
  /** The pipeline class, e.g. 'PixArtSigmaPipeline'. */
  className: string;
  diffusersVersion?: string;
  /** Component folder → [library, class], e.g. transformer → ['diffusers', 'PixArtTransformer2DModel'];
   * [null, null] marks an absent optional component. */
  components: Record<string, [library: string | null, className: string | null]>;
  /** The whole parsed file, including pipeline options such as `requires_safety_checker`. */
  raw: Record<string, unknown>;
}

/** Reads and validates `<dir>/model_index.json`. */
export async function readModelIndex(dir: string): Promise<ModelIndex> {
  const path = join(dir, 'model_index.json');
  const raw = await readJsonFile(path, 'the pipeline description (model_index.json) of a diffusers folder');
  if (!isPlainObject(raw)) {
    throw new FileFormatError(
      `Expected ${path} to hold a JSON object, found ${describeJson(raw)}.`,
      'MODEL_INDEX_INVALID',
      path,
    );
  }
  const className = raw['_class_name'];
  if (typeof className !== 'string' || className === '') {
    throw new FileFormatError(
      `Expected ${path} to name the pipeline class in "_class_name", found ${describeJson(className)}. ` +
        'Is this a diffusers pipeline folder?',
      'MODEL_INDEX_INVALID',
      path,
    );
  }
  const version = raw['_diffusers_version'];
  const components: ModelIndex['components'] = {};
  for (const [key, value] of Object.entries(raw)) {
    // Underscored keys are bookkeeping; scalar values are pipeline options, not components.
    if (key.startsWith('_') || !Array.isArray(value)) continue;
    if (value.length !== 2 || !value.every((part) => part === null || typeof part === 'string')) {
      throw new FileFormatError(
        `Expected component '${key}' in ${path} to be [library, class] (strings or null), found ${describeJson(value)}.`,
        'MODEL_INDEX_INVALID',
        path,
      );
    }
    components[key] = [value[0] as string | null, value[1] as string | null];
  }
  return {
    className,
    ...(typeof version === 'string' ? { diffusersVersion: version } : {}),
    components,
    raw,
  };
}

/** A component's config: diffusers keys `_class_name`, `_diffusers_version`, then its arguments. */
export type ModelConfig = Record<string, unknown> & { _class_name?: string; _diffusers_version?: string };

/** Reads `<dir>/<fileName>` (config.json, or e.g. scheduler_config.json) as a JSON object. */
export async function readConfig(dir: string, fileName = 'config.json'): Promise<ModelConfig> {
  const path = join(dir, fileName);
  const config = await readJsonFile(path, `the component configuration (${fileName})`);
  if (!isPlainObject(config)) {
    throw new FileFormatError(
      `Expected ${path} to hold a JSON object, found ${describeJson(config)}.`,
      'CONFIG_INVALID',
      path,
    );
  }
  if ('_class_name' in config && typeof config['_class_name'] !== 'string') {
    throw new FileFormatError(
      `Expected "_class_name" in ${path} to be a string, found ${describeJson(config['_class_name'])}.`,
      'CONFIG_INVALID',
      path,
    );
  }
  return config;
}

// ---------------------------------------------------------------------------------------------
// Component weights.

/** Weight file base names tried in order when none is given: diffusers, then transformers. */
const DEFAULT_BASE_NAMES = ['diffusion_pytorch_model', 'model'];

/** Checkpoint formats that would need a pickle loader, which running untrusted code requires. */
const PICKLE_EXTENSIONS = ['.bin', '.pt', '.pth', '.ckpt', '.pkl'];

/**
 * The weights of one component folder, from a single safetensors file or from shards. Every file is
 * opened once (header only); tensors are read on demand.
 */
/** Stored float types a graph casts to float32. */
const CAST_TO_FLOAT32: ReadonlySet<SafetensorsDtype> = new Set<SafetensorsDtype>([
  'F16',
  'BF16',
  'F64',
  'F8_E4M3',
  'F8_E5M2',
]);

export class WeightStore {
  private constructor(
    /** Absolute path of the component folder. */
    readonly dir: string,
    /** The file the store was opened from: the .safetensors file or the .index.json. */
    readonly sourcePath: string,
    readonly files: readonly SafetensorsFile[],
    /** Tensor name → the file holding it. */
    private readonly owners: Map<string, SafetensorsFile>,
  ) {}

  /**
   * Opens the weights in `dir`: `<baseName>.safetensors`, else `<baseName>.safetensors.index.json`.
   * Without `baseName`, diffusers' `diffusion_pytorch_model` is tried first, then transformers'
   * `model`. Pass a variant base name such as `diffusion_pytorch_model.fp16` to load a variant.
   */
  static async open(dir: string, baseName?: string): Promise<WeightStore> {
    const absoluteDir = resolve(dir);
    const entries = await listFolder(absoluteDir);
    for (const base of baseName === undefined ? DEFAULT_BASE_NAMES : [baseName]) {
      if (entries.includes(`${base}.safetensors`)) {
        const path = join(absoluteDir, `${base}.safetensors`);
        const file = await SafetensorsFile.open(path);
        return new WeightStore(absoluteDir, path, [file], new Map(file.names().map((name) => [name, file])));
      }
      if (entries.includes(`${base}.safetensors.index.json`)) {
        return WeightStore.#openSharded(absoluteDir, join(absoluteDir, `${base}.safetensors.index.json`));
      }
    }
    throw new FileFormatError(
      missingWeightsMessage(absoluteDir, entries, baseName),
      'WEIGHTS_MISSING',
      absoluteDir,
    );
  }

  static async #openSharded(dir: string, indexPath: string): Promise<WeightStore> {
    const weightMap = parseWeightMap(
      await readJsonFile(indexPath, 'the index of a sharded checkpoint'),
      indexPath,
    );
    const shardNames = [...new Set(weightMap.values())].sort();
    const shards = new Map<string, SafetensorsFile>();
    try {
      for (const shardName of shardNames) {
        shards.set(shardName, await openShard(dir, shardName, indexPath));
      }
      // The index is authoritative: a tensor it lists must be where it says; tensors a shard holds but
      // the index does not list are ignored, as the Python loaders do.
      const owners = new Map<string, SafetensorsFile>();
      for (const [tensorName, shardName] of weightMap) {
        const shard = shards.get(shardName) as SafetensorsFile;
        if (!shard.has(tensorName)) {
          throw new FileFormatError(
            `The index ${indexPath} places tensor '${tensorName}' in ${shardName}, but that shard does not ` +
              `contain it.${didYouMean(tensorName, shard.names())} The index and shards are from different ` +
              'checkpoints or a download is incomplete.',
            'WEIGHT_INDEX_MISMATCH',
            indexPath,
          );
        }
        owners.set(tensorName, shard);
      }
      return new WeightStore(dir, indexPath, [...shards.values()], owners);
    } catch (error) {
      await Promise.all([...shards.values()].map((shard) => shard.close()));
      throw error;
    }
  }

  /** Tensor names, in index order (sharded) or file order (single file). */
  names(): string[] {
    return [...this.owners.keys()];
  }

  has(name: string): boolean {
    return this.owners.has(name);
  }

  /** The dtypes its tensors are stored in. */
  dtypes(): Set<SafetensorsDtype> {
    return new Set([...this.owners].map(([name, file]) => file.info(name).dtype));
  }

  /**
   * Whether graphs can read every float tensor in place: none is stored in a float type a graph
   * casts to float32, which ORT folds into a copy per session (notes/onnxruntime.md §9).
   */
  readsInPlace(): boolean {
    return [...this.dtypes()].every((d) => !CAST_TO_FLOAT32.has(d));
  }

  /** Where tensor `name` is: its dtype, shape, byte range and the absolute path of its file. */
  info(name: string): TensorInfo & { path: string } {
    const owner = this.#owner(name);
    return { ...owner.info(name), path: owner.path };
  }

  async readBytes(name: string): Promise<Uint8Array> {
    return this.#owner(name).readBytes(name);
  }

  async readFloat32(name: string): Promise<Float32Array> {
    return this.#owner(name).readFloat32(name);
  }

  async close(): Promise<void> {
    await Promise.all(this.files.map((file) => file.close()));
  }

  #owner(name: string): SafetensorsFile {
    const owner = this.owners.get(name);
    if (owner === undefined) {
      throw new WeightError(
        `Tensor '${name}' is not in the weights of ${this.dir} (${this.owners.size} tensors, from ` +
          `${this.sourcePath}).${didYouMean(name, this.owners.keys())}`,
        'WEIGHT_MISSING',
      );
    }
    return owner;
  }
}

async function listFolder(dir: string): Promise<string[]> {
  try {
    return (await readdir(dir)).sort();
  } catch (error) {
    const code = errnoCode(error);
    if (code === 'ENOENT') {
      throw new FileFormatError(
        `Expected a model folder at ${dir}, but it does not exist.`,
        'FILE_MISSING',
        dir,
      );
    }
    if (code === 'ENOTDIR') {
      throw new FileFormatError(
        `Expected a model folder at ${dir}, but it is a file.`,
        'FILE_NOT_DIRECTORY',
        dir,
      );
    }
    throw error;
  }
}

function missingWeightsMessage(dir: string, entries: string[], baseName: string | undefined): string {
  const wanted = (baseName === undefined ? DEFAULT_BASE_NAMES : [baseName])
    .flatMap((base) => [`${base}.safetensors`, `${base}.safetensors.index.json`])
    .join(', ');
  const shown = entries.length > 20 ? [...entries.slice(0, 20), `… ${entries.length - 20} more`] : entries;
  let message =
    `No weights found in ${dir}: expected one of ${wanted}. ` +
    `The folder contains: ${shown.length === 0 ? '(nothing)' : shown.join(', ')}.`;
  if (entries.some((entry) => PICKLE_EXTENSIONS.some((extension) => entry.endsWith(extension)))) {
    message +=
      ' PyTorch pickle checkpoints (.bin, .pt, .ckpt) are not supported, because loading them can run ' +
      'arbitrary code; convert them to safetensors (e.g. save_pretrained(..., safe_serialization=True)).';
  } else {
    message += ' Only safetensors weights are supported (not .bin / pickle checkpoints).';
  }
  const variants = entries.filter(
    (entry) => entry.endsWith('.safetensors') || entry.endsWith('.safetensors.index.json'),
  );
  if (variants.length > 0) {
    const bases = variants.map((entry) => entry.replace(/\.safetensors(\.index\.json)?$/, ''));
    message += ` To use a variant, pass its base name: ${[...new Set(bases)].map((base) => `'${base}'`).join(', ')}.`;
  }
  return message;
}

/** Validates `weight_map` of a shard index: tensor name → shard file name inside the folder. */
function parseWeightMap(index: unknown, indexPath: string): Map<string, string> {
  const weightMap = isPlainObject(index) ? index['weight_map'] : undefined;
  if (!isPlainObject(weightMap)) {
    throw new FileFormatError(
      `Expected ${indexPath} to be an object with "weight_map": {tensor name: shard file}, found ` +
        `${describeJson(isPlainObject(index) ? weightMap : index)}.`,
      'WEIGHT_INDEX_INVALID',
      indexPath,
    );
  }
  const result = new Map<string, string>();
  for (const [tensorName, shardName] of Object.entries(weightMap)) {
    // Shards must stay inside the folder: a hostile index must not make us open arbitrary files.
    if (
      typeof shardName !== 'string' ||
      shardName === '' ||
      isAbsolute(shardName) ||
      normalize(shardName).split(sep).includes('..')
    ) {
      throw new FileFormatError(
        `Expected weight_map['${tensorName}'] in ${indexPath} to be a shard file name inside the folder, ` +
          `found ${describeJson(shardName)}.`,
        'WEIGHT_INDEX_INVALID',
        indexPath,
      );
    }
    result.set(tensorName, shardName);
  }
  return result;
}

async function openShard(dir: string, shardName: string, indexPath: string): Promise<SafetensorsFile> {
  try {
    return await SafetensorsFile.open(join(dir, shardName));
  } catch (error) {
    if (error instanceof FileFormatError && error.code === 'FILE_MISSING') {
      throw new FileFormatError(
        `The index ${indexPath} lists the shard ${shardName}, but ${join(dir, shardName)} does not exist. ` +
          'The download is incomplete; fetch the missing shard.',
        'FILE_MISSING',
        join(dir, shardName),
      );
    }
    throw error;
  }
}
