/**
 * A trained model as a diffusers or transformers model folder (`config.json` + one safetensors file),
 * the layout `from_pretrained` reads in Python and `fromPretrained` reads here.
 *
 * The folder is written beside its target under a hidden temporary name, every file synced, then
 * renamed into place (a previous folder of that name is renamed away first and deleted after): a
 * folder visible under its name is complete.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, rename, rm, stat } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';

import { OptionError, WeightError } from '../errors.js';
import { formatShape } from '../graph/shape.js';
import { syncDirectory, writeFileAtomic } from '../io/atomic.js';
import { f32ToBf16, f32ToF16 } from '../io/dtypes.js';
import { errnoCode } from '../io/errno.js';
import { writeSafetensors, type TensorToWrite } from '../io/safetensors.js';
import { listNames } from '../warnings.js';

/** The library versions written into configs: the diffusers/transformers releases velodiff's models follow. */
export const DIFFUSERS_VERSION = '0.40.0';
export const TRANSFORMERS_VERSION = '4.45.0';

export type SavedDType = 'float32' | 'float16' | 'bfloat16';

export interface SaveModelOptions {
  /** The Python class, e.g. 'PixArtTransformer2DModel', 'AutoencoderKL', 'T5EncoderModel'. */
  className: string;
  /** The class's constructor arguments as config.json spells them (snake_case). */
  config: Record<string, unknown>;
  params: ReadonlyMap<string, Float32Array>;
  /** Every parameter's shape: what the file must hold, no more, no less. */
  shapes: ReadonlyMap<string, readonly number[]>;
  /** Stored dtype (default float32); velodiff converts fp16/bf16 back to float32 at load. */
  dtype?: SavedDType;
  /** The weight file's base name; default diffusion_pytorch_model (diffusers) or model (transformers). */
  weightsName?: string;
  /** Which config conventions to write (default diffusers). */
  library?: 'diffusers' | 'transformers';
}

const TORCH_DTYPE: Readonly<Record<SavedDType, string>> = {
  float32: 'float32',
  float16: 'float16',
  bfloat16: 'bfloat16',
};

/**
 * Writes `dir` (replacing it) atomically: config.json — with `_class_name` and `_diffusers_version`
 * for diffusers, `architectures` and `transformers_version` for transformers — and the weights as
 * `<weightsName>.safetensors` in `dtype` (round to nearest even).
 */
export async function saveModelFolder(dir: string, options: SaveModelOptions): Promise<void> {
  const library = options.library ?? 'diffusers';
  const dtype = options.dtype ?? 'float32';
  if (!(dtype in TORCH_DTYPE)) {
    throw new OptionError(
      `saveModelFolder: dtype must be float32, float16 or bfloat16, found ${String(dtype)}`,
      'SAVE_DTYPE',
    );
  }
  const weightsName = options.weightsName ?? (library === 'diffusers' ? 'diffusion_pytorch_model' : 'model');
  if (!/^[A-Za-z0-9_.-]+$/.test(weightsName) || weightsName.startsWith('.')) {
    throw new OptionError(`saveModelFolder: weightsName must be a plain file name, found '${weightsName}'`);
  }
  const tensors = tensorsToWrite(options.params, options.shapes, dtype);
  const config =
    library === 'diffusers'
      ? {
          _class_name: options.className,
          _diffusers_version: DIFFUSERS_VERSION,
          ...withoutClassKeys(options.config),
        }
      : {
          ...withoutClassKeys(options.config),
          architectures: [options.className],
          torch_dtype: TORCH_DTYPE[dtype],
          transformers_version: TRANSFORMERS_VERSION,
        };

  const target = resolve(dir);
  const parent = dirname(target);
  await mkdir(parent, { recursive: true });
  const suffix = `${process.pid}-${randomBytes(4).toString('hex')}`;
  const temporary = join(parent, `.${basename(target)}.tmp-${suffix}`);
  await mkdir(temporary);
  try {
    await writeFileAtomic(join(temporary, 'config.json'), `${JSON.stringify(config, null, 2)}\n`);
    await writeSafetensors(join(temporary, `${weightsName}.safetensors`), tensors, { format: 'pt' });
    await syncDirectory(temporary);
  } catch (error) {
    await rm(temporary, { recursive: true, force: true });
    throw error;
  }
  const trash = join(parent, `.${basename(target)}.old-${suffix}`);
  const replacing = await exists(target);
  if (replacing) await rename(target, trash);
  await rename(temporary, target);
  await syncDirectory(parent);
  if (replacing) await rm(trash, { recursive: true, force: true });
}

/** The class keys are the saver's to write; a config read from a folder carries its own. */
function withoutClassKeys(config: Record<string, unknown>): Record<string, unknown> {
  const rest: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(config)) {
    if (
      ['_class_name', '_diffusers_version', 'architectures', 'transformers_version', 'torch_dtype'].includes(
        key,
      )
    )
      continue;
    rest[key] = value;
  }
  return rest;
}

function tensorsToWrite(
  params: ReadonlyMap<string, Float32Array>,
  shapes: ReadonlyMap<string, readonly number[]>,
  dtype: SavedDType,
): Record<string, TensorToWrite> {
  const missing = [...shapes.keys()].filter((name) => !params.has(name));
  const extra = [...params.keys()].filter((name) => !shapes.has(name));
  if (missing.length > 0 || extra.length > 0) {
    throw new WeightError(
      `saveModelFolder: the parameters do not match the model's shapes` +
        (missing.length > 0 ? `; missing: ${listNames(missing)}` : '') +
        (extra.length > 0 ? `; not in the model: ${listNames(extra)}` : ''),
      'WEIGHT_MISSING',
    );
  }
  const tensors: Record<string, TensorToWrite> = {};
  for (const [name, shape] of shapes) {
    const values = params.get(name) as Float32Array;
    const count = shape.reduce((a, b) => a * b, 1);
    if (values.length !== count) {
      throw new WeightError(
        `saveModelFolder: parameter '${name}' has ${values.length} values; its shape ${formatShape(shape)} needs ${count}`,
        'WEIGHT_SIZE',
      );
    }
    tensors[name] =
      dtype === 'float32'
        ? { dtype: 'F32', shape: [...shape], data: values }
        : dtype === 'float16'
          ? { dtype: 'F16', shape: [...shape], data: f32ToF16(values) }
          : { dtype: 'BF16', shape: [...shape], data: f32ToBf16(values) };
  }
  return tensors;
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch (error) {
    if (errnoCode(error) === 'ENOENT') return false;
    throw error;
  }
}
