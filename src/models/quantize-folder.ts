/**
 * `velodiff quantize`: a copy of a model or pipeline folder in velodiff's int8 format
 * (src/io/quantize.ts), so that loading it needs no quantization at load and reads a quarter of the
 * Linear weights' bytes. Which Linear layers become int8 is what `quantize: 'int8'` at load chooses
 * (the model class's rule, src/models/int8.ts): the folder loads to the same int8 weights.
 *
 * The copy is written beside its target under a hidden temporary name and renamed into place at the
 * end: a folder visible under the target's name is complete.
 */
import { randomBytes } from 'node:crypto';
import { cp, mkdir, readdir, rename, rm, rmdir, stat } from 'node:fs/promises';
import { basename, dirname, isAbsolute, join, relative, resolve } from 'node:path';

import { FileFormatError, OptionError, WeightError } from '../errors.js';
import { syncDirectory, writeFileAtomic } from '../io/atomic.js';
import type { ModelIndex } from '../io/diffusers.js';
import { WeightStore, readConfig, readModelIndex } from '../io/diffusers.js';
import { errnoCode } from '../io/errno.js';
import { int8QuantizationConfig, parseQuantizationConfig } from '../io/quantize.js';
import type { TensorToStream } from '../io/safetensors.js';
import { writeSafetensorsStreaming } from '../io/safetensors.js';
import type { Int8Site } from '../nn/params.js';
import type { Runtime } from '../runtime/runtime.js';
import type { WarningHandler } from '../warnings.js';
import { VelodiffWarning, emitWarning, listNames } from '../warnings.js';
import { MODEL_CLASSES, modelClassOf } from './index.js';
import { int8Tensors } from './int8.js';

/** The model classes `quantize: 'int8'` applies to; the others (the VAE) stay float32. */
export const INT8_MODEL_CLASSES: ReadonlySet<string> = new Set([
  'PixArtTransformer2DModel',
  'SD3Transformer2DModel',
  'FluxTransformer2DModel',
  'UNet2DConditionModel',
  'T5EncoderModel',
  'CLIPTextModel',
  'CLIPTextModelWithProjection',
]);

export interface QuantizeFolderOptions {
  /** The runtime the components are loaded with (nothing is compiled or run). */
  runtime: Runtime;
  /** Receives the components' load warnings and the weight files left out; default: a process warning. */
  onWarning?: WarningHandler;
  onProgress?: (event: QuantizeProgress) => void;
}

export interface QuantizeProgress {
  /** The component's folder in the pipeline ('' for a model folder). */
  component: string;
  /** 'load': learning its int8 modules; 'write': writing its weights, `done` of `total` tensors. */
  stage: 'load' | 'write';
  done: number;
  total: number;
}

export interface QuantizedComponent {
  /** The component's folder in the pipeline ('' for a model folder). */
  name: string;
  className: string;
  /**
   * 'quantized': its Linear weights were made int8 now; 'int8': it was in the int8 format already
   * and is copied; 'float': its class stays float32 (the VAE) and is copied.
   */
  status: 'quantized' | 'int8' | 'float';
  /** Linear modules stored as int8 in the output. */
  int8Modules: number;
  /** Bytes of its weight files in the input and in the output. */
  bytesBefore: number;
  bytesAfter: number;
}

export interface QuantizeFolderResult {
  /** Absolute paths of the input and the output folder. */
  dir: string;
  out: string;
  /** model_index.json's pipeline class, for a pipeline folder. */
  pipeline?: string;
  /** The components velodiff loads, in model_index.json's order (one for a model folder). */
  components: QuantizedComponent[];
  /** Bytes of every file of the input and of the output folder. */
  bytesBefore: number;
  bytesAfter: number;
}

/** A weight file a diffusers/transformers loader might pick (a variant, a shard index, a pickle). */
const WEIGHT_FILE = /\.(safetensors|bin|ckpt|pt|pth)(\.index\.json)?$/;

/** What is done to one component: its weight files are left out of the copy and written anew. */
interface ComponentPlan {
  name: string;
  dir: string;
  className: string;
  status: QuantizedComponent['status'];
  int8Modules: ReadonlySet<string>;
  /** Absolute paths in the input not to copy. */
  leftOut: string[];
  bytesBefore: number;
}

/**
 * Writes `out`, a copy of the model or pipeline folder `dir` in which every component of a class
 * that quantizes (INT8_MODEL_CLASSES) is in velodiff's int8 format: its Linear modules that
 * `quantize: 'int8'` makes int8 stored as I8 weights with F32 `weight_scale`s, every other tensor
 * copied byte for byte, one safetensors file named as the input's (a sharded input becomes one
 * file), and `quantization_config` added to its config.json. Every other file is copied as it is.
 * `out` must not exist or be empty; a failure leaves it as it was.
 */
export async function quantizeFolder(
  dir: string,
  out: string,
  options: QuantizeFolderOptions,
): Promise<QuantizeFolderResult> {
  const source = resolve(dir);
  const target = resolve(out);
  const index = await checkFolders(source, target);
  const components = await componentFolders(source, index);
  const plans: ComponentPlan[] = [];
  for (const component of components) plans.push(await planComponent(component, options));

  const parent = dirname(target);
  const createdParent = await mkdir(parent, { recursive: true });
  const temporary = join(parent, `.${basename(target)}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`);
  const written: QuantizedComponent[] = [];
  try {
    const leftOut = new Set(plans.flatMap((p) => p.leftOut));
    // Hugging Face cache snapshots are symlinks into a blob store: the copy holds the files themselves.
    await cp(source, temporary, { recursive: true, dereference: true, filter: (path) => !leftOut.has(path) });
    for (const plan of plans) written.push(await writeComponent(plan, join(temporary, plan.name), options));
    await syncDirectory(temporary);
    if (await isDirectory(target)) await rmdir(target);
    await rename(temporary, target);
  } catch (error) {
    await rm(temporary, { recursive: true, force: true });
    if (createdParent !== undefined) await rm(createdParent, { recursive: true, force: true });
    throw error;
  }
  await syncDirectory(parent);
  return {
    dir: source,
    out: target,
    ...(index ? { pipeline: index.className } : {}),
    components: written,
    bytesBefore: await folderBytes(source),
    bytesAfter: await folderBytes(target),
  };
}

/** Checks the two folders before anything is written; returns model_index.json for a pipeline folder. */
async function checkFolders(source: string, target: string): Promise<ModelIndex | undefined> {
  const what = 'a diffusers pipeline folder (model_index.json) or a model folder (config.json)';
  if (!(await isDirectory(source))) {
    const exists = (await stat(source).catch(() => undefined)) !== undefined;
    throw new FileFormatError(
      `quantize: ${source} ${exists ? 'is a file' : 'does not exist'}; expected ${what}`,
      exists ? 'FILE_NOT_DIRECTORY' : 'FILE_MISSING',
      source,
    );
  }
  const entries = await readdir(source);
  if (!entries.includes('model_index.json') && !entries.includes('config.json')) {
    throw new FileFormatError(
      `quantize: ${source} has neither model_index.json (a pipeline) nor config.json (a model); expected ${what}`,
      'NOT_A_MODEL',
      source,
    );
  }
  if (target === source) {
    throw new OptionError(
      `quantize: the output folder is the input folder ${source}; give another output folder (the input is read while the output is written)`,
      'OUTPUT_IS_INPUT',
    );
  }
  const inside = relative(source, target);
  if (!inside.startsWith('..') && !isAbsolute(inside)) {
    throw new OptionError(
      `quantize: the output folder ${target} is inside the input folder ${source}, which is copied into it; give a folder outside it`,
      'OUTPUT_IN_INPUT',
    );
  }
  const existing = await stat(target).catch((error: unknown) => {
    if (errnoCode(error) === 'ENOENT') return undefined;
    throw error;
  });
  if (existing !== undefined && !existing.isDirectory()) {
    throw new OptionError(
      `quantize: the output ${target} is a file; give a new folder as the output`,
      'OUTPUT_EXISTS',
    );
  }
  if (existing !== undefined && (await readdir(target)).length > 0) {
    throw new OptionError(
      `quantize: the output folder ${target} exists and is not empty; quantize writes a new folder and replaces nothing: give a new output folder, or empty or remove this one`,
      'OUTPUT_EXISTS',
    );
  }
  return entries.includes('model_index.json') ? readModelIndex(source) : undefined;
}

/** The components velodiff has a model class for: each folder of model_index.json, or `source` itself. */
async function componentFolders(
  source: string,
  index: ModelIndex | undefined,
): Promise<{ name: string; dir: string; className: string }[]> {
  if (index === undefined) {
    const className = await modelClassOf(source);
    if (!MODEL_CLASSES[className]) {
      const path = join(source, 'config.json');
      throw new FileFormatError(
        `quantize: ${path} names model class ${className}, which velodiff does not load; it quantizes ${[...INT8_MODEL_CLASSES].join(', ')}`,
        'MODEL_CLASS',
        path,
      );
    }
    return [{ name: '', dir: source, className }];
  }
  const found: { name: string; dir: string; className: string }[] = [];
  for (const [name, [, className]] of Object.entries(index.components)) {
    if (className === null || !MODEL_CLASSES[className]) continue;
    const dir = join(source, name);
    if (!(await isDirectory(dir))) {
      throw new FileFormatError(
        `quantize: ${join(source, 'model_index.json')} lists component "${name}" (${className}), but ${dir} does not exist; the download is incomplete`,
        'COMPONENT_MISSING',
        dir,
      );
    }
    found.push({ name, dir, className });
  }
  return found;
}

/**
 * Loads a component as `quantize: 'int8'` would to learn its int8 modules (and to check it loads at
 * all), and decides which of its files the copy leaves out.
 */
async function planComponent(
  component: { name: string; dir: string; className: string },
  options: QuantizeFolderOptions,
): Promise<ComponentPlan> {
  const { name, dir, className } = component;
  const bytesBefore = await weightBytes(dir);
  const plan: Omit<ComponentPlan, 'status' | 'int8Modules'> = {
    name,
    dir,
    className,
    leftOut: [],
    bytesBefore,
  };
  if (!INT8_MODEL_CLASSES.has(className)) return { ...plan, status: 'float', int8Modules: new Set<string>() };
  // A folder with another quantization method is an error here, before anything is loaded.
  const configPath = join(dir, 'config.json');
  const folderInt8 = parseQuantizationConfig((await readConfig(dir)).quantization_config, configPath);
  options.onProgress?.({ component: name, stage: 'load', done: 0, total: 1 });
  const model = await MODEL_CLASSES[className](dir, {
    runtime: options.runtime,
    onWarning: options.onWarning,
    ...(folderInt8 ? {} : { quantize: 'int8' as const }),
  });
  const int8Modules = model.int8Modules ?? new Set<string>();
  await model.close();
  options.onProgress?.({ component: name, stage: 'load', done: 1, total: 1 });
  if (folderInt8 !== undefined) return { ...plan, status: 'int8', int8Modules };
  if (int8Modules.size === 0) return { ...plan, status: 'float', int8Modules };

  const store = await WeightStore.open(dir);
  const leftOut = [store.sourcePath, ...store.files.map((f) => f.path)];
  await store.close();
  const variants = (await readdir(dir))
    .filter((entry) => WEIGHT_FILE.test(entry))
    .map((entry) => join(dir, entry))
    .filter((path) => !leftOut.includes(path));
  if (variants.length > 0) {
    (options.onWarning ?? emitWarning)(
      new VelodiffWarning(
        `quantize: ${dir}: ${listNames(variants.map((p) => basename(p)))} not copied: other weight files ` +
          `(variants) would not match the int8 config.json; the output has only ${outputWeightsName(store.sourcePath)}`,
        'WEIGHTS_LEFT_OUT',
        dir,
        variants,
      ),
    );
  }
  return { ...plan, status: 'quantized', int8Modules, leftOut: [...leftOut, ...variants] };
}

/** Writes a quantized component's weights and config.json into `outDir` (the copy of its folder). */
async function writeComponent(
  plan: ComponentPlan,
  outDir: string,
  options: QuantizeFolderOptions,
): Promise<QuantizedComponent> {
  const { name, className, status, int8Modules, bytesBefore } = plan;
  const result = { name, className, status, int8Modules: int8Modules.size, bytesBefore };
  if (status !== 'quantized') return { ...result, bytesAfter: bytesBefore };

  const store = await WeightStore.open(plan.dir);
  try {
    const path = join(outDir, outputWeightsName(store.sourcePath));
    const tensors = quantizedTensors(store, int8Modules);
    let done = 0;
    const counted = tensors.map((t) => ({
      ...t,
      data: async () => {
        const data = await t.data();
        options.onProgress?.({ component: name, stage: 'write', done: ++done, total: tensors.length });
        return data;
      },
    }));
    const metadata: Record<string, string> = {};
    for (const file of store.files) Object.assign(metadata, file.metadata);
    await writeSafetensorsStreaming(path, counted, Object.keys(metadata).length > 0 ? metadata : undefined);
    const config = await readConfig(plan.dir);
    const quantized = { ...config, quantization_config: int8QuantizationConfig(int8Modules) };
    await writeFileAtomic(join(outDir, 'config.json'), `${JSON.stringify(quantized, null, 2)}\n`);
    return { ...result, bytesAfter: (await stat(path)).size };
  } finally {
    await store.close();
  }
}

/**
 * Every tensor of `store` as it is stored, except the weights of `int8Modules`, which become I8 with
 * an F32 `weight_scale` beside each.
 */
function quantizedTensors(store: WeightStore, int8Modules: ReadonlySet<string>): TensorToStream[] {
  const sites: Int8Site[] = [];
  for (const modulePath of [...int8Modules].sort()) {
    const name = `${modulePath}.weight`;
    const { dtype, shape } = store.info(name);
    if ((shape.length !== 2 && shape.length !== 4) || !['F32', 'F16', 'BF16', 'F64'].includes(dtype)) {
      throw new WeightError(
        `quantize: tensor '${name}' in ${store.sourcePath} is ${dtype} [${shape.join(', ')}]; an int8 weight is made from a float Linear [out, in] or Conv2d [out, in, kH, kW] weight`,
        'WEIGHT_DTYPE',
      );
    }
    if (store.has(`${name}_scale`)) {
      throw new WeightError(
        `quantize: ${store.sourcePath} already has '${name}_scale', the name the int8 scale of '${name}' takes; the file is not a float checkpoint`,
        'WEIGHT_NAME',
      );
    }
    sites.push({
      modulePath,
      outFeatures: shape[0],
      inFeatures: shape[1],
      inputRank: shape.length === 4 ? 4 : 3,
      ...(shape.length === 4 ? { kernel: [shape[2], shape[3]] as const, int8Capable: true } : {}),
    });
  }
  const replaced = new Set(sites.map((s) => `${s.modulePath}.weight`));
  const unchanged: TensorToStream[] = store
    .names()
    .filter((name) => !replaced.has(name))
    .map((name) => {
      const { dtype, shape } = store.info(name);
      return { name, dtype, shape: [...shape], data: () => store.readBytes(name) };
    });
  return [...unchanged, ...int8Tensors(store, sites)];
}

/** The output's weight file: the input's name, or for a sharded input the unsharded name of its base. */
function outputWeightsName(sourcePath: string): string {
  return basename(sourcePath).replace(/\.safetensors\.index\.json$/, '.safetensors');
}

/** Bytes of the weight files a component folder loads from (0 where it has none). */
async function weightBytes(dir: string): Promise<number> {
  let store: WeightStore;
  try {
    store = await WeightStore.open(dir);
  } catch (error) {
    if (error instanceof FileFormatError && error.code === 'WEIGHTS_MISSING') return 0;
    throw error;
  }
  try {
    const sizes = await Promise.all(store.files.map(async (f) => (await stat(f.path)).size));
    return sizes.reduce((a, b) => a + b, 0);
  } finally {
    await store.close();
  }
}

/** Bytes of every file under `dir`, following symlinks as the copy does. */
async function folderBytes(dir: string): Promise<number> {
  let total = 0;
  for (const entry of await readdir(dir)) {
    const path = join(dir, entry);
    const s = await stat(path);
    total += s.isDirectory() ? await folderBytes(path) : s.size;
  }
  return total;
}

async function isDirectory(path: string): Promise<boolean> {
  return (await stat(path).catch(() => undefined))?.isDirectory() ?? false;
}
