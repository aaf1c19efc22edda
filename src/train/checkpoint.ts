/**
 * Training checkpoints: one folder per saved step, written atomically, the newest K kept.
 *
 *   <directory>/checkpoint-<step>/
 *     model/config.json, model/diffusion_pytorch_model.safetensors     the weights, a diffusers folder
 *     model_ema/config.json, model_ema/diffusion_pytorch_model.safetensors
 *                         the EMA weights; config.json also holds EMAModel's state as diffusers'
 *                         EMAModel.save_pretrained writes it, so EMAModel.from_pretrained reads it
 *     optimizer.safetensors    moments by '<slot>/<parameter>', scalars as JSON in the metadata
 *     trainer_state.json       step, epoch, data position, RNG states, lr schedule position, loss
 *                              history tail, the training configuration and its hash, and the size and
 *                              SHA-256 of every other file (written last)
 *   <directory>/latest         the name of the newest checkpoint, replaced atomically
 *
 * A checkpoint is written into a hidden temporary folder, every file synced, then renamed to its
 * name: a checkpoint visible under its name is complete. Old ones are renamed to a hidden name before
 * they are deleted, so a deletion cut short leaves nothing half-deleted in view. One process writes a
 * directory at a time.
 *
 * Resuming loads the newest checkpoint that is valid; a corrupt one (bad JSON, a truncated or changed
 * file) is reported with what is wrong and the previous one is tried. A checkpoint of another
 * configuration or other parameters is not skipped but refused, naming what differs.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, readdir, readFile, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';

import { FileFormatError, OptionError, WeightError } from '../errors.js';
import { syncDirectory, writeFileAtomic } from '../io/atomic.js';
import { readConfig, readJsonFile, type ModelConfig } from '../io/diffusers.js';
import { errnoCode } from '../io/errno.js';
import { describeJson, isPlainObject } from '../io/json.js';
import { SafetensorsFile, writeSafetensors, type TensorToWrite } from '../io/safetensors.js';
import { emitWarning, listNames, VelodiffWarning, type WarningHandler } from '../warnings.js';
import type { EmaState } from './ema.js';
import {
  canonicalJson,
  decodeNumber,
  describeDifferences,
  encodeNumber,
  type JsonObject,
  type JsonValue,
} from './json-value.js';
import type { NamedArrays } from './named-arrays.js';
import type { OptimizerState } from './optimizer.js';

/** What trainer_state.json says it is; a reader refuses other formats and newer versions. */
const STATE_FORMAT = 'velodiff.training-checkpoint';
const STATE_VERSION = 1;
const TRAINER_STATE = 'trainer_state.json';
const OPTIMIZER_FILE = 'optimizer.safetensors';
const LATEST_POINTER = 'latest';
/** The safetensors metadata key holding the optimizer's kind and scalars. */
const OPTIMIZER_METADATA_KEY = 'velodiff_optimizer';
/** The EMAModel keys diffusers writes into the EMA folder's config.json. */
const EMA_CONFIG_KEYS = [
  'decay',
  'min_decay',
  'optimization_step',
  'update_after_step',
  'use_ema_warmup',
  'inv_gamma',
  'power',
  'velodiff_ema_warmup',
];
const CHECKPOINT_NAME = /^checkpoint-(0|[1-9][0-9]*)$/;
const TEMPORARY_PREFIX = '.tmp-checkpoint-';
const TRASH_PREFIX = '.trash-';

/** Everything a training run needs to continue exactly where it stopped. */
export interface TrainingSnapshot {
  /** Optimizer updates done. */
  readonly step: number;
  readonly epoch: number;
  /** The trained parameters by name (exactly the manager's parameterShapes). */
  readonly weights: NamedArrays;
  readonly optimizer: OptimizerState;
  readonly ema?: EmaState;
  /** The data loader's position and shuffle state, as it serializes it. */
  readonly data: JsonValue;
  /** Generator states by name (e.g. TorchGenerator.getState()), stored as base64. */
  readonly rng: Readonly<Record<string, Uint8Array>>;
  /** The step the lr schedule is evaluated at next (the step itself unless the trainer says otherwise). */
  readonly lrSchedulePosition?: number;
  /** Recent losses, oldest first; the newest lossHistoryLength are stored. */
  readonly lossHistory: readonly number[];
  /** Anything else the trainer keeps (JSON). */
  readonly extra?: JsonObject;
}

/** A snapshot as loaded: the stored loss history and schedule position always present. */
export interface LoadedSnapshot extends TrainingSnapshot {
  readonly lrSchedulePosition: number;
  readonly ema: EmaState | undefined;
  readonly extra: JsonObject;
  /** The training configuration the checkpoint was written with (CheckpointOptions.trainingConfig). */
  readonly trainingConfig: JsonValue;
}

export interface CheckpointOptions {
  /** The run's folder; each checkpoint is a subfolder `checkpoint-<step>`. */
  readonly directory: string;
  /** Name → shape of every trained parameter: what a checkpoint must hold, no more, no less. */
  readonly parameterShapes: ReadonlyMap<string, readonly number[]>;
  /** The model's diffusers config, written as config.json and checked on resume. */
  readonly modelConfig: ModelConfig;
  /** What must not change across a resume (hyperparameters, data set, schedule, seeds): stored with
   * its SHA-256 and compared on load. */
  readonly trainingConfig: JsonObject;
  /** Checkpoints kept, newest first; 3 by default. */
  readonly keepLast?: number;
  /** shouldSave(step) is true every this many steps; 0 (default) never. */
  readonly saveEvery?: number;
  /** The weight file's base name: 'diffusion_pytorch_model' (diffusers, default) or 'model'. */
  readonly weightsName?: 'diffusion_pytorch_model' | 'model';
  /** The weights' subfolder, 'model' by default; the EMA weights go to `<modelFolder>_ema`. */
  readonly modelFolder?: string;
  /** Record and verify the SHA-256 of every file (true by default; it reads each file once more). */
  readonly checksums?: boolean;
  /** Losses kept in trainer_state.json, 1000 by default. */
  readonly lossHistoryLength?: number;
  /** Receives reports of skipped (corrupt) checkpoints; emitWarning by default. */
  readonly onWarning?: WarningHandler;
}

/** A checkpoint folder in view. */
export interface CheckpointEntry {
  readonly name: string;
  readonly step: number;
  readonly path: string;
}

/** A checkpoint resume() passed over, and why. */
export interface SkippedCheckpoint {
  readonly name: string;
  readonly path: string;
  readonly reason: string;
}

export interface ResumeResult {
  readonly checkpoint: CheckpointEntry;
  readonly snapshot: LoadedSnapshot;
  /** Newer checkpoints that were corrupt, newest first. */
  readonly skipped: readonly SkippedCheckpoint[];
}

interface FileRecord {
  readonly bytes: number;
  readonly sha256?: string;
}

export class CheckpointManager {
  readonly directory: string;
  readonly keepLast: number;
  readonly saveEvery: number;
  readonly configHash: string;
  readonly #options: CheckpointOptions;
  readonly #weightsFile: string;
  readonly #modelFolder: string;
  readonly #emaFolder: string;
  readonly #checksums: boolean;
  readonly #lossHistoryLength: number;
  readonly #onWarning: WarningHandler;
  #saving = false;

  constructor(options: CheckpointOptions) {
    this.#options = options;
    this.directory = options.directory;
    this.keepLast = options.keepLast ?? 3;
    this.saveEvery = options.saveEvery ?? 0;
    if (!Number.isSafeInteger(this.keepLast) || this.keepLast < 1) {
      throw new OptionError(
        `Expected keepLast to be an integer ≥ 1, found ${this.keepLast}.`,
        'CHECKPOINT_OPTION',
      );
    }
    if (!Number.isSafeInteger(this.saveEvery) || this.saveEvery < 0) {
      throw new OptionError(
        `Expected saveEvery to be an integer ≥ 0, found ${this.saveEvery}.`,
        'CHECKPOINT_OPTION',
      );
    }
    const modelFolder = options.modelFolder ?? 'model';
    if (!/^[A-Za-z0-9_.-]+$/.test(modelFolder) || modelFolder.startsWith('.')) {
      throw new OptionError(
        `Expected modelFolder to be a plain folder name, found '${modelFolder}'.`,
        'CHECKPOINT_OPTION',
      );
    }
    for (const [name, shape] of options.parameterShapes) {
      if (!shape.every((dim) => Number.isSafeInteger(dim) && dim >= 0)) {
        throw new OptionError(
          `Parameter '${name}': expected a shape of integers ≥ 0, found [${shape.join(', ')}].`,
        );
      }
    }
    this.#weightsFile = `${options.weightsName ?? 'diffusion_pytorch_model'}.safetensors`;
    this.#modelFolder = modelFolder;
    this.#emaFolder = `${modelFolder}_ema`;
    this.#checksums = options.checksums ?? true;
    this.#lossHistoryLength = options.lossHistoryLength ?? 1000;
    this.#onWarning = options.onWarning ?? emitWarning;
    this.configHash = `sha256:${sha256Hex(canonicalJson(options.trainingConfig))}`;
  }

  /** True when `step` is a multiple of saveEvery (and saveEvery > 0). */
  shouldSave(step: number): boolean {
    return this.saveEvery > 0 && step > 0 && step % this.saveEvery === 0;
  }

  /** The checkpoints in view, oldest first. */
  async list(): Promise<CheckpointEntry[]> {
    let names: string[];
    try {
      names = await readdir(this.directory);
    } catch (error) {
      if (errnoCode(error) === 'ENOENT') return [];
      throw error;
    }
    const entries: CheckpointEntry[] = [];
    for (const name of names) {
      const match = CHECKPOINT_NAME.exec(name);
      if (match === null) continue;
      const path = join(this.directory, name);
      if (!(await isDirectory(path))) continue;
      entries.push({ name, step: Number(match[1]), path });
    }
    return entries.sort((a, b) => a.step - b.step);
  }

  /**
   * Writes `snapshot` as `checkpoint-<step>` (replacing one of that step), points `latest` at it, and
   * deletes checkpoints beyond keepLast and any of a later step (a future that a resume from an earlier
   * checkpoint abandoned). Returns the new checkpoint. The snapshot's arrays are read until the promise
   * settles: await it before the next update.
   */
  async save(snapshot: TrainingSnapshot): Promise<CheckpointEntry> {
    if (this.#saving) {
      throw new OptionError(
        'A checkpoint is already being saved; await save() before calling it again.',
        'CHECKPOINT_BUSY',
      );
    }
    this.#saving = true;
    try {
      return await this.#save(snapshot);
    } finally {
      this.#saving = false;
    }
  }

  /**
   * Loads the newest valid checkpoint; undefined when there is none. Corrupt checkpoints are reported
   * (onWarning, and `skipped`) and passed over; a checkpoint of another configuration or other
   * parameters throws.
   */
  async resume(): Promise<ResumeResult | undefined> {
    await this.#removeLeftovers();
    await this.#checkLatestPointer();
    const skipped: SkippedCheckpoint[] = [];
    const entries = (await this.list()).reverse();
    for (const entry of entries) {
      try {
        const snapshot = await this.load(entry.name);
        return { checkpoint: entry, snapshot, skipped };
      } catch (error) {
        if (!(error instanceof FileFormatError)) throw error;
        const reason = error.message;
        skipped.push({ name: entry.name, path: entry.path, reason });
        this.#onWarning(
          new VelodiffWarning(
            `Checkpoint ${entry.name} in ${this.directory} is not usable and was skipped: ${reason}`,
            'CHECKPOINT_INVALID',
            entry.path,
            [entry.name],
          ),
        );
      }
    }
    if (skipped.length > 0) {
      throw new FileFormatError(
        `No usable checkpoint in ${this.directory}: ${skipped.map((s) => `${s.name}: ${s.reason}`).join(' | ')}. ` +
          'Delete the checkpoint folders to start over.',
        'CHECKPOINT_NONE_VALID',
        this.directory,
      );
    }
    return undefined;
  }

  /**
   * Loads and checks checkpoint `name` completely. Throws FileFormatError when a file is missing,
   * truncated, changed or malformed; OptionError when it was written with another training or model
   * configuration; WeightError when its parameters differ from parameterShapes. With
   * `checkTrainingConfig: false` another run's checkpoint loads (a run that starts from its weights:
   * TrainConfig.init); the model's configuration and parameters must still match.
   */
  async load(
    name: string,
    options: { readonly checkTrainingConfig?: boolean } = {},
  ): Promise<LoadedSnapshot> {
    if (!CHECKPOINT_NAME.test(name)) {
      throw new OptionError(
        `Expected a checkpoint name 'checkpoint-<step>', found '${name}'.`,
        'CHECKPOINT_NAME',
      );
    }
    const folder = join(this.directory, name);
    const statePath = join(folder, TRAINER_STATE);
    const state = await readJsonFile(statePath, `the trainer state of checkpoint ${name}`);
    const fields = parseTrainerState(state, statePath);
    // Integrity first: a damaged checkpoint is skipped, whatever configuration it claims.
    for (const [file, record] of Object.entries(fields.files)) await verifyFile(folder, file, record);
    if (options.checkTrainingConfig ?? true) this.#checkTrainingConfig(fields, name);

    const modelPath = join(folder, this.#modelFolder);
    const modelConfig = await readConfig(modelPath);
    this.#checkModelConfig(modelConfig, modelPath, name);
    const weights = await this.#readWeights(join(modelPath, this.#weightsFile), name);

    let ema: EmaState | undefined;
    if (fields.hasEma) {
      const emaPath = join(folder, this.#emaFolder);
      const emaConfig = await readConfig(emaPath);
      const scalars: JsonObject = {};
      for (const key of EMA_CONFIG_KEYS) {
        if (!(key in emaConfig)) {
          throw new FileFormatError(
            `Expected the EMA config ${join(emaPath, 'config.json')} to hold '${key}' (EMAModel state); it does not.`,
            'CHECKPOINT_EMA_INVALID',
            join(emaPath, 'config.json'),
          );
        }
        scalars[key] = emaConfig[key] as JsonValue;
      }
      ema = { scalars, shadow: await this.#readWeights(join(emaPath, this.#weightsFile), name) };
    }

    const optimizer = await readOptimizer(join(folder, OPTIMIZER_FILE));
    return {
      step: fields.step,
      epoch: fields.epoch,
      weights,
      optimizer,
      ema,
      data: fields.data,
      rng: fields.rng,
      lrSchedulePosition: fields.lrSchedulePosition,
      lossHistory: fields.lossHistory,
      extra: fields.extra,
      trainingConfig: fields.trainingConfig,
    };
  }

  async #save(snapshot: TrainingSnapshot): Promise<CheckpointEntry> {
    const { step } = snapshot;
    if (!Number.isSafeInteger(step) || step < 0) {
      throw new OptionError(
        `Expected the snapshot's step to be an integer ≥ 0, found ${step}.`,
        'CHECKPOINT_SNAPSHOT',
      );
    }
    const weights = this.#weightTensors(snapshot.weights, 'weights');
    const emaWeights =
      snapshot.ema === undefined ? undefined : this.#weightTensors(snapshot.ema.shadow, 'EMA weights');
    const optimizerTensors = optimizerTensorsToWrite(snapshot.optimizer);

    await mkdir(this.directory, { recursive: true });
    await this.#removeLeftovers();
    const name = `checkpoint-${step}`;
    const temporary = join(
      this.directory,
      `${TEMPORARY_PREFIX}${step}-${process.pid}-${randomBytes(4).toString('hex')}`,
    );
    await mkdir(temporary);
    try {
      const written: string[] = [];
      const writeModel = async (
        folder: string,
        config: JsonObject,
        tensors: Record<string, TensorToWrite>,
      ): Promise<void> => {
        await mkdir(join(temporary, folder));
        await writeFileAtomic(join(temporary, folder, 'config.json'), `${JSON.stringify(config, null, 2)}\n`);
        await writeSafetensors(join(temporary, folder, this.#weightsFile), tensors, { format: 'pt' });
        await syncDirectory(join(temporary, folder));
        written.push(`${folder}/config.json`, `${folder}/${this.#weightsFile}`);
      };
      await writeModel(this.#modelFolder, this.#options.modelConfig as JsonObject, weights);
      if (snapshot.ema !== undefined && emaWeights !== undefined) {
        // As diffusers' EMAModel.save_pretrained: the model config with the EMA state registered in it.
        await writeModel(
          this.#emaFolder,
          { ...(this.#options.modelConfig as JsonObject), ...snapshot.ema.scalars },
          emaWeights,
        );
      }
      await writeSafetensors(join(temporary, OPTIMIZER_FILE), optimizerTensors, {
        format: 'pt',
        [OPTIMIZER_METADATA_KEY]: JSON.stringify({
          kind: snapshot.optimizer.kind,
          scalars: snapshot.optimizer.scalars,
        }),
      });
      written.push(OPTIMIZER_FILE);

      const files: Record<string, FileRecord> = {};
      for (const file of written) files[file] = await this.#record(join(temporary, file));
      const lossHistory = snapshot.lossHistory.slice(-this.#lossHistoryLength).map(encodeNumber);
      const rng: Record<string, string> = {};
      for (const [key, bytes] of Object.entries(snapshot.rng))
        rng[key] = Buffer.from(bytes).toString('base64');
      const trainerState = {
        format: STATE_FORMAT,
        format_version: STATE_VERSION,
        step,
        epoch: snapshot.epoch,
        lr_schedule_position: snapshot.lrSchedulePosition ?? step,
        data: snapshot.data,
        rng,
        loss_history: lossHistory,
        ema: snapshot.ema !== undefined,
        optimizer: snapshot.optimizer.kind,
        config_hash: this.configHash,
        training_config: this.#options.trainingConfig,
        extra: snapshot.extra ?? {},
        files: files as unknown as JsonObject,
        written_at: new Date().toISOString(),
      } satisfies JsonObject;
      await writeFileAtomic(join(temporary, TRAINER_STATE), `${JSON.stringify(trainerState, null, 2)}\n`);
      await syncDirectory(temporary);

      const path = join(this.directory, name);
      if (await exists(path)) await this.#discard(name);
      await rename(temporary, path);
      await syncDirectory(this.directory);
    } catch (error) {
      await rm(temporary, { recursive: true, force: true }).catch(() => undefined);
      throw error;
    }
    await writeFileAtomic(join(this.directory, LATEST_POINTER), `${name}\n`);
    await this.#prune(step);
    return { name, step, path: join(this.directory, name) };
  }

  /** Deletes checkpoints of a later step than `step`, then the oldest beyond keepLast. */
  async #prune(step: number): Promise<void> {
    const entries = await this.list();
    const later = entries.filter((entry) => entry.step > step);
    const kept = entries.filter((entry) => entry.step <= step);
    const old = kept.slice(0, Math.max(0, kept.length - this.keepLast));
    for (const entry of [...later, ...old]) await this.#discard(entry.name);
  }

  /** Takes a checkpoint out of view atomically (a rename), then deletes it. */
  async #discard(name: string): Promise<void> {
    const trash = join(
      this.directory,
      `${TRASH_PREFIX}${name}-${process.pid}-${randomBytes(4).toString('hex')}`,
    );
    await rename(join(this.directory, name), trash);
    await syncDirectory(this.directory);
    await rm(trash, { recursive: true, force: true });
  }

  /** Removes temporary and trash folders that an interrupted save or prune left (by a process no longer running). */
  async #removeLeftovers(): Promise<void> {
    let names: string[];
    try {
      names = await readdir(this.directory);
    } catch (error) {
      if (errnoCode(error) === 'ENOENT') return;
      throw error;
    }
    for (const name of names) {
      const leftover = [TEMPORARY_PREFIX, TRASH_PREFIX, `.${LATEST_POINTER}.tmp-`].some((prefix) =>
        name.startsWith(prefix),
      );
      if (!leftover) continue;
      const pid = Number(/-(\d+)-[0-9a-f]+$/.exec(name)?.[1]);
      if (Number.isSafeInteger(pid) && pid !== process.pid && isProcessAlive(pid)) continue;
      await rm(join(this.directory, name), { recursive: true, force: true });
    }
  }

  /** Reports a `latest` pointer that names no checkpoint in view (resume does not depend on it). */
  async #checkLatestPointer(): Promise<void> {
    const pointer = join(this.directory, LATEST_POINTER);
    let target: string;
    try {
      target = (await readFile(pointer, 'utf8')).trim();
    } catch (error) {
      if (errnoCode(error) === 'ENOENT') return;
      throw error;
    }
    if (CHECKPOINT_NAME.test(target) && (await isDirectory(join(this.directory, target)))) return;
    this.#onWarning(
      new VelodiffWarning(
        `${pointer} names ${describeJson(target)}, which is not a checkpoint in ${this.directory}; ` +
          'the newest valid checkpoint is used instead.',
        'CHECKPOINT_LATEST_STALE',
        pointer,
        [target],
      ),
    );
  }

  async #record(path: string): Promise<FileRecord> {
    const { size } = await stat(path);
    return this.#checksums ? { bytes: size, sha256: await sha256File(path) } : { bytes: size };
  }

  #weightTensors(arrays: NamedArrays, what: string): Record<string, TensorToWrite> {
    const shapes = this.#options.parameterShapes;
    const missing = [...shapes.keys()].filter((name) => !arrays.has(name));
    const unexpected = [...arrays.keys()].filter((name) => !shapes.has(name));
    if (missing.length > 0 || unexpected.length > 0) {
      throw new WeightError(
        `Cannot save the ${what}: expected exactly the ${shapes.size} parameters of parameterShapes; ` +
          (missing.length > 0 ? `missing ${listNames(missing)}; ` : '') +
          (unexpected.length > 0 ? `unexpected ${listNames(unexpected)}.` : ''),
        'CHECKPOINT_PARAMETERS',
      );
    }
    const tensors: Record<string, TensorToWrite> = {};
    for (const [name, shape] of shapes) {
      tensors[name] = { dtype: 'F32', shape: [...shape], data: arrays.get(name) as Float32Array };
    }
    return tensors;
  }

  /** Reads a weight file, checking that it holds exactly parameterShapes in F32. */
  async #readWeights(path: string, checkpoint: string): Promise<Map<string, Float32Array>> {
    const file = await SafetensorsFile.open(path);
    const shapes = this.#options.parameterShapes;
    const names = file.names();
    const missing = [...shapes.keys()].filter((name) => !file.has(name));
    const unexpected = names.filter((name) => !shapes.has(name));
    const reshaped = [...shapes]
      .filter(([name, shape]) => file.has(name) && file.info(name).shape.join(',') !== shape.join(','))
      .map(
        ([name, shape]) =>
          `'${name}': expected [${shape.join(', ')}], found [${file.info(name).shape.join(', ')}]`,
      );
    if (missing.length > 0 || unexpected.length > 0 || reshaped.length > 0) {
      throw new WeightError(
        `Checkpoint ${checkpoint} does not fit the model's parameters (${path}): ` +
          [
            missing.length > 0 ? `missing ${listNames(missing)}` : '',
            unexpected.length > 0 ? `unexpected ${listNames(unexpected)}` : '',
            reshaped.length > 0 ? `other shapes: ${reshaped.slice(0, 10).join('; ')}` : '',
          ]
            .filter((part) => part !== '')
            .join('; ') +
          '. Resume with the model the checkpoint was trained with.',
        'CHECKPOINT_PARAMETERS',
      );
    }
    const weights = new Map<string, Float32Array>();
    for (const name of shapes.keys()) {
      const info = file.info(name);
      if (info.dtype !== 'F32') {
        throw new FileFormatError(
          `Expected tensor '${name}' in ${path} to be F32 (as checkpoints are written), found ${info.dtype}.`,
          'CHECKPOINT_DTYPE',
          path,
        );
      }
      weights.set(name, await file.readFloat32(name));
    }
    return weights;
  }

  #checkTrainingConfig(fields: TrainerStateFields, checkpoint: string): void {
    if (fields.configHash === this.configHash) return;
    const differences = describeDifferences(fields.trainingConfig, this.#options.trainingConfig, [
      'checkpoint',
      'now',
    ]);
    throw new OptionError(
      `Checkpoint ${checkpoint} in ${this.directory} was written with another training configuration ` +
        `(config hash ${fields.configHash}, now ${this.configHash}): ` +
        (differences.length > 0
          ? differences.join('; ')
          : 'the stored configuration does not match its own hash') +
        '. Resume with the configuration of the run, or use a new checkpoint directory.',
      'CHECKPOINT_CONFIG_MISMATCH',
    );
  }

  #checkModelConfig(found: ModelConfig, path: string, checkpoint: string): void {
    const differences = describeDifferences(found, this.#options.modelConfig, ['checkpoint', 'now']);
    if (differences.length === 0) return;
    throw new OptionError(
      `Checkpoint ${checkpoint}'s model config (${join(path, 'config.json')}) differs from the model's: ` +
        `${differences.join('; ')}. Resume with the model the checkpoint was trained with.`,
      'CHECKPOINT_MODEL_CONFIG_MISMATCH',
    );
  }
}

// ---------------------------------------------------------------------------------------------
// trainer_state.json

interface TrainerStateFields {
  readonly step: number;
  readonly epoch: number;
  readonly lrSchedulePosition: number;
  readonly data: JsonValue;
  readonly rng: Record<string, Uint8Array>;
  readonly lossHistory: number[];
  readonly hasEma: boolean;
  readonly configHash: string;
  readonly trainingConfig: JsonValue;
  readonly extra: JsonObject;
  readonly files: Record<string, FileRecord>;
}

function parseTrainerState(state: unknown, path: string): TrainerStateFields {
  const bad = (detail: string): FileFormatError =>
    new FileFormatError(`Invalid trainer state ${path}: ${detail}`, 'CHECKPOINT_STATE_INVALID', path);
  if (!isPlainObject(state)) throw bad(`expected a JSON object, found ${describeJson(state)}.`);
  if (state['format'] !== STATE_FORMAT) {
    throw bad(`expected "format": "${STATE_FORMAT}", found ${describeJson(state['format'])}.`);
  }
  if (state['format_version'] !== STATE_VERSION) {
    throw bad(`expected "format_version": ${STATE_VERSION}, found ${describeJson(state['format_version'])}.`);
  }
  const count = (key: string): number => {
    const value = state[key];
    if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) {
      throw bad(`expected "${key}" to be an integer ≥ 0, found ${describeJson(value)}.`);
    }
    return value;
  };
  const rngField = state['rng'];
  if (!isPlainObject(rngField)) throw bad(`expected "rng" to be an object, found ${describeJson(rngField)}.`);
  const rng: Record<string, Uint8Array> = {};
  for (const [key, value] of Object.entries(rngField)) {
    if (typeof value !== 'string' || !/^[A-Za-z0-9+/]*={0,2}$/.test(value)) {
      throw bad(`expected rng["${key}"] to be base64, found ${describeJson(value)}.`);
    }
    rng[key] = new Uint8Array(Buffer.from(value, 'base64'));
  }
  const lossField = state['loss_history'];
  if (!Array.isArray(lossField))
    throw bad(`expected "loss_history" to be an array, found ${describeJson(lossField)}.`);
  const lossHistory = lossField.map((value, index) => {
    const number = decodeNumber(value);
    if (number === undefined)
      throw bad(`expected loss_history[${index}] to be a number, found ${describeJson(value)}.`);
    return number;
  });
  const filesField = state['files'];
  if (!isPlainObject(filesField) || Object.keys(filesField).length === 0) {
    throw bad(`expected "files" to list the checkpoint's files, found ${describeJson(filesField)}.`);
  }
  const files: Record<string, FileRecord> = {};
  for (const [file, record] of Object.entries(filesField)) {
    if (
      file.split('/').some((part) => part === '' || part === '.' || part === '..') ||
      !isPlainObject(record) ||
      typeof record['bytes'] !== 'number' ||
      !(record['sha256'] === undefined || typeof record['sha256'] === 'string')
    ) {
      throw bad(
        `expected files["${file}"] to be {bytes, sha256} of a file inside the checkpoint, found ${describeJson(record)}.`,
      );
    }
    files[file] = {
      bytes: record['bytes'],
      ...(typeof record['sha256'] === 'string' ? { sha256: record['sha256'] } : {}),
    };
  }
  const configHash = state['config_hash'];
  if (typeof configHash !== 'string')
    throw bad(`expected "config_hash" to be a string, found ${describeJson(configHash)}.`);
  const extra = state['extra'];
  if (!isPlainObject(extra)) throw bad(`expected "extra" to be an object, found ${describeJson(extra)}.`);
  if (typeof state['ema'] !== 'boolean')
    throw bad(`expected "ema" to be true or false, found ${describeJson(state['ema'])}.`);
  if (!('data' in state)) throw bad('the "data" field (the data loader position) is missing.');
  return {
    step: count('step'),
    epoch: count('epoch'),
    lrSchedulePosition: count('lr_schedule_position'),
    data: state['data'] as JsonValue,
    rng,
    lossHistory,
    hasEma: state['ema'],
    configHash,
    trainingConfig: (state['training_config'] ?? null) as JsonValue,
    extra: extra as JsonObject,
    files,
  };
}

/** Checks that `file` (relative to the checkpoint folder) has the recorded size and digest. */
async function verifyFile(folder: string, file: string, record: FileRecord): Promise<void> {
  const path = join(folder, ...file.split('/'));
  let size: number;
  try {
    size = (await stat(path)).size;
  } catch (error) {
    if (errnoCode(error) === 'ENOENT') {
      throw new FileFormatError(`The checkpoint file ${path} is missing.`, 'CHECKPOINT_FILE_MISSING', path);
    }
    throw error;
  }
  if (size !== record.bytes) {
    throw new FileFormatError(
      `The checkpoint file ${path} has ${size} bytes; ${record.bytes} were written. It was truncated or changed.`,
      'CHECKPOINT_FILE_SIZE',
      path,
    );
  }
  if (record.sha256 !== undefined) {
    const digest = await sha256File(path);
    if (digest !== record.sha256) {
      throw new FileFormatError(
        `The checkpoint file ${path} has SHA-256 ${digest}; ${record.sha256} was written. It was changed or damaged.`,
        'CHECKPOINT_FILE_CHECKSUM',
        path,
      );
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Optimizer file.

function optimizerTensorsToWrite(state: OptimizerState): Record<string, TensorToWrite> {
  const tensors: Record<string, TensorToWrite> = {};
  for (const [key, data] of state.tensors) tensors[key] = { dtype: 'F32', shape: [data.length], data };
  return tensors;
}

async function readOptimizer(path: string): Promise<OptimizerState> {
  const file = await SafetensorsFile.open(path);
  const text = file.metadata[OPTIMIZER_METADATA_KEY];
  let parsed: unknown;
  try {
    parsed = text === undefined ? undefined : JSON.parse(text);
  } catch (error) {
    throw new FileFormatError(
      `The optimizer state ${path} has unparsable metadata '${OPTIMIZER_METADATA_KEY}': ${(error as Error).message}.`,
      'CHECKPOINT_OPTIMIZER_INVALID',
      path,
    );
  }
  if (!isPlainObject(parsed) || typeof parsed['kind'] !== 'string' || !isPlainObject(parsed['scalars'])) {
    throw new FileFormatError(
      `Expected the optimizer state ${path} to hold metadata '${OPTIMIZER_METADATA_KEY}' = {kind, scalars}, ` +
        `found ${describeJson(parsed)}.`,
      'CHECKPOINT_OPTIMIZER_INVALID',
      path,
    );
  }
  const tensors = new Map<string, Float32Array>();
  for (const name of file.names()) tensors.set(name, await file.readFloat32(name));
  return { kind: parsed['kind'], scalars: parsed['scalars'] as JsonObject, tensors };
}

// ---------------------------------------------------------------------------------------------

function sha256Hex(text: string): string {
  return createHash('sha256').update(text).digest('hex');
}

async function sha256File(path: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest('hex');
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

async function isDirectory(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isDirectory();
  } catch (error) {
    if (errnoCode(error) === 'ENOENT') return false;
    throw error;
  }
}

function isProcessAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return errnoCode(error) === 'EPERM';
  }
}
