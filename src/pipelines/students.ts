/**
 * Distilled students of a teacher and the `--accel` choice that runs them (issue 12).
 *
 * A students folder holds one subfolder per student, each as `velodiff distill` writes a run's
 * `model/`:
 * - CLEAR: `config.json` (`_class_name: "ClearAttentionWeights"`, radius, down_factor) and CLEAR's
 *   `clear_local_R[_down_D].safetensors`;
 * - LinFusion: the authors' folder (`config.json` with `_class_name: "LinFusion"` and
 *   `modules_list`, `diffusion_pytorch_model.safetensors`);
 * - Flash Diffusion: a diffusers LoRA, `pytorch_lora_weights.safetensors`;
 * and in every one `teacher.json`, the hash of the teacher's transformer folder, so that a student is
 * never run on a teacher it was not distilled from. A student's own folder is also accepted as a
 * students folder of one.
 */
import { existsSync, statSync } from 'node:fs';
import { readFile, readdir } from 'node:fs/promises';
import { basename, join, resolve } from 'node:path';

import { FileFormatError, OptionError } from '../errors.js';
import type { AttentionOption } from '../attention/types.js';
import type { TGateOptions } from '../attention/tgate.js';
import { hashModelFolder } from '../train/latent-cache.js';

export type StudentKind = 'clear' | 'linfusion' | 'flash';

export interface Student {
  readonly kind: StudentKind;
  /** The student's folder. */
  readonly dir: string;
  /** CLEAR: the window radius and the pooling cell side (1 = no pooled keys/values). */
  readonly radius?: number;
  readonly downFactor?: number;
  /** The file or folder the pipeline option takes: CLEAR's safetensors, LinFusion's folder, the LoRA file. */
  readonly weights: string;
  /** sha256 of the teacher's transformer folder (hashModelFolder), when the folder records it. */
  readonly teacherSha256?: string;
}

/** The file each student folder carries to name its teacher. */
export const TEACHER_FILE = 'teacher.json';
export const FLASH_LORA_FILE = 'pytorch_lora_weights.safetensors';

/** What `teacher.json` holds. */
export interface TeacherRecord {
  /** Where the teacher was when the student was distilled (informative). */
  teacher: string;
  /** hashModelFolder of the teacher's `transformer/`. */
  transformer_sha256: string;
}

export async function teacherRecord(teacherDir: string): Promise<TeacherRecord> {
  return {
    teacher: basename(resolve(teacherDir)),
    transformer_sha256: await hashModelFolder(join(resolve(teacherDir), 'transformer')),
  };
}

async function readJson(path: string): Promise<Record<string, unknown>> {
  let value: unknown;
  try {
    value = JSON.parse(await readFile(path, 'utf8'));
  } catch (error) {
    throw new FileFormatError(
      `${path}: not readable JSON (${(error as Error).message})`,
      'STUDENT_CONFIG',
      path,
    );
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new FileFormatError(`${path}: expected a JSON object`, 'STUDENT_CONFIG', path);
  }
  return value as Record<string, unknown>;
}

/** The student in `dir`, or undefined when the folder is not one. */
export async function readStudent(dir: string): Promise<Student | undefined> {
  const abs = resolve(dir);
  const teacherPath = join(abs, TEACHER_FILE);
  const teacherSha256 = existsSync(teacherPath)
    ? String((await readJson(teacherPath)).transformer_sha256 ?? '') || undefined
    : undefined;
  const configPath = join(abs, 'config.json');
  if (existsSync(configPath)) {
    const config = await readJson(configPath);
    if (config._class_name === 'ClearAttentionWeights') {
      const radius = config.radius;
      const downFactor = config.down_factor ?? 1;
      const file = config.weights;
      if (
        typeof radius !== 'number' ||
        typeof downFactor !== 'number' ||
        !Number.isInteger(downFactor) ||
        downFactor < 1 ||
        typeof file !== 'string'
      ) {
        throw new FileFormatError(
          `${configPath}: a CLEAR student needs "radius" (number), "down_factor" (integer ≥ 1) and "weights" (file name); found ${JSON.stringify({ radius, down_factor: downFactor, weights: file })}`,
          'STUDENT_CONFIG',
          configPath,
        );
      }
      const weights = join(abs, file);
      if (!existsSync(weights)) {
        throw new FileFormatError(
          `${configPath} names the weights file ${file}, which is not in ${abs}`,
          'STUDENT_WEIGHTS_MISSING',
          weights,
        );
      }
      return { kind: 'clear', dir: abs, radius, downFactor, weights, teacherSha256 };
    }
    if (config._class_name === 'LinFusion' || config._class_name === 'StableMamba') {
      return { kind: 'linfusion', dir: abs, weights: abs, teacherSha256 };
    }
  }
  if (existsSync(join(abs, FLASH_LORA_FILE))) {
    return { kind: 'flash', dir: abs, weights: join(abs, FLASH_LORA_FILE), teacherSha256 };
  }
  return undefined;
}

/** Every student in a students folder (or the one student a student's own folder is). */
export async function listStudents(dir: string): Promise<Student[]> {
  const abs = resolve(dir);
  if (!existsSync(abs)) {
    throw new OptionError(`the students folder ${abs} does not exist`, 'STUDENTS_MISSING');
  }
  const own = await readStudent(abs);
  if (own) return [own];
  const students: Student[] = [];
  for (const entry of (await readdir(abs, { withFileTypes: true })).sort((a, b) =>
    a.name.localeCompare(b.name),
  )) {
    const path = join(abs, entry.name);
    // A link to a run's model/ folder counts as the folder (statSync follows it; a dangling one is skipped).
    const folder =
      entry.isDirectory() ||
      (entry.isSymbolicLink() && statSync(path, { throwIfNoEntry: false })?.isDirectory());
    if (!folder) continue;
    const student = await readStudent(path);
    if (student) students.push(student);
  }
  return students;
}

/** What `--accel` asks for: at most one attention student, Flash or not, T-GATE or not. */
export interface AccelSpec {
  readonly attention?: { kind: 'clear'; radius?: number; downFactor?: number } | { kind: 'linfusion' };
  readonly flash: boolean;
  readonly tgate: boolean;
}

const ACCEL_SYNTAX = 'clear[:R[:D]], linfusion, flash, tgate, or a "+" combination such as flash+tgate';

/** Parses `clear`, `clear:8:2`, `linfusion`, `flash`, `tgate` joined by `+`. */
export function parseAccel(text: string): AccelSpec {
  const parts = text.split('+').map((p) => p.trim());
  let attention: AccelSpec['attention'];
  let flash = false;
  let tgate = false;
  for (const part of parts) {
    const [name, ...args] = part.split(':');
    const once = (seen: boolean): void => {
      if (seen) throw new OptionError(`--accel "${text}": ${name} is named twice`, 'ACCEL');
    };
    if (name === 'clear' && args.length <= 2) {
      if (attention)
        throw new OptionError(
          `--accel "${text}": one self-attention at a time (${attention.kind} and clear)`,
          'ACCEL',
        );
      const [r, d] = args.map((a, i) => {
        const n = Number(a);
        if (a.trim() === '' || !Number.isInteger(n) || n < 1) {
          throw new OptionError(
            `--accel "${text}": the CLEAR ${i === 0 ? 'radius' : 'down factor'} must be an integer ≥ 1, got "${a}"`,
            'ACCEL',
          );
        }
        return n;
      });
      attention = {
        kind: 'clear',
        ...(r !== undefined ? { radius: r } : {}),
        ...(d !== undefined ? { downFactor: d } : {}),
      };
    } else if (name === 'linfusion' && args.length === 0) {
      if (attention)
        throw new OptionError(
          `--accel "${text}": one self-attention at a time (${attention.kind} and linfusion)`,
          'ACCEL',
        );
      attention = { kind: 'linfusion' };
    } else if (name === 'flash' && args.length === 0) {
      once(flash);
      flash = true;
    } else if (name === 'tgate' && args.length === 0) {
      once(tgate);
      tgate = true;
    } else {
      throw new OptionError(`--accel "${text}": "${part}" is not one of ${ACCEL_SYNTAX}`, 'ACCEL');
    }
  }
  return { ...(attention ? { attention } : {}), flash, tgate };
}

/**
 * T-GATE's settings for a run of `steps` steps: the authors' PixArt setting at 25 steps (gate 15,
 * self-attention interval 3, warm-up 2) scaled to the step count, and their LCM setting (gate 2,
 * intervals 1, no warm-up, lcm) for Flash's CFG-free few-step runs.
 */
export function defaultTGate(steps: number, lcm: boolean): TGateOptions {
  if (lcm) return { gateStep: Math.min(2, steps), spInterval: 1, fiInterval: 1, warmUp: 0, lcm: true };
  return { gateStep: Math.max(1, Math.round((15 * steps) / 25)), spInterval: 3, fiInterval: 1, warmUp: 2 };
}

function describe(s: Student): string {
  if (s.kind === 'clear') return `clear:${s.radius}${s.downFactor! > 1 ? `:${s.downFactor}` : ''} (${s.dir})`;
  return `${s.kind} (${s.dir})`;
}

/** What the pipeline runs for an `--accel` choice. */
export interface ResolvedAccel {
  readonly attention?: AttentionOption;
  /** The Flash LoRA file for useFlashDiffusion. */
  readonly flashLora?: string;
  readonly tgate: boolean;
  /** The students used, for messages. */
  readonly students: readonly Student[];
}

/**
 * Picks the students an `--accel` choice needs from `students`, checked against the teacher's
 * transformer hash. `clear` alone takes the CLEAR student of the smallest radius without pooling
 * (or the smallest with it, when there is none without).
 */
export function resolveAccel(
  spec: AccelSpec,
  students: readonly Student[],
  options: { teacherSha256: string; studentsDir: string },
): ResolvedAccel {
  const used: Student[] = [];
  const available = students.length > 0 ? students.map(describe).join(', ') : 'none';
  const missing = (what: string): OptionError =>
    new OptionError(
      `--accel: no ${what} student in ${options.studentsDir} (it has: ${available}). ` +
        'Train one with velodiff distill, or give --students DIR',
      'STUDENT_MISSING',
    );
  let attention: AttentionOption | undefined;
  if (spec.attention?.kind === 'clear') {
    const want = spec.attention;
    const clear = students
      .filter((s) => s.kind === 'clear')
      .filter((s) => want.radius === undefined || s.radius === want.radius)
      .filter((s) =>
        want.downFactor !== undefined
          ? s.downFactor === want.downFactor
          : want.radius === undefined || s.downFactor === 1,
      )
      .sort((a, b) => (a.downFactor! > 1 ? 1 : 0) - (b.downFactor! > 1 ? 1 : 0) || a.radius! - b.radius!);
    const what =
      want.radius === undefined
        ? 'CLEAR'
        : `CLEAR r=${want.radius}${want.downFactor ? ` d=${want.downFactor}` : ''}`;
    if (clear.length === 0) throw missing(what);
    const s = clear[0];
    used.push(s);
    attention = {
      kind: 'clear',
      radius: s.radius!,
      ...(s.downFactor! > 1 ? { downFactor: s.downFactor } : {}),
      weights: s.weights,
    };
  } else if (spec.attention?.kind === 'linfusion') {
    const s = students.find((x) => x.kind === 'linfusion');
    if (!s) throw missing('LinFusion');
    used.push(s);
    attention = { kind: 'linfusion', weights: s.weights };
  }
  let flashLora: string | undefined;
  if (spec.flash) {
    const s = students.find((x) => x.kind === 'flash');
    if (!s) throw missing('Flash Diffusion');
    used.push(s);
    flashLora = s.weights;
  }
  for (const s of used) {
    if (s.teacherSha256 !== undefined && s.teacherSha256 !== options.teacherSha256) {
      throw new OptionError(
        `--accel: the student ${describe(s)} was distilled from another teacher ` +
          `(its ${TEACHER_FILE} records transformer sha256 ${s.teacherSha256.slice(0, 12)}…, this model's is ${options.teacherSha256.slice(0, 12)}…); ` +
          'distil it again from this model, or run the model it was made for',
        'STUDENT_TEACHER_MISMATCH',
      );
    }
  }
  return {
    ...(attention ? { attention } : {}),
    ...(flashLora ? { flashLora } : {}),
    tgate: spec.tgate,
    students: used,
  };
}
