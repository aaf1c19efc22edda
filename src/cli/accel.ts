/**
 * `--accel clear|linfusion|flash|tgate` (and `+` combinations) for `generate` and `eval`: the
 * distilled students of the model (pipelines/students.ts) from `--students DIR`, or the shipped
 * students when the model is the shipped one.
 */
import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';

import type { AttentionOption } from '../attention/types.js';
import type { TGateOptions } from '../attention/tgate.js';
import { OptionError } from '../errors.js';
import type { PixArtPipeline } from '../pipelines/pixart.js';
import { shippedStudentsDir } from '../pipelines/shipped-model.js';
import { defaultTGate, listStudents, parseAccel, resolveAccel } from '../pipelines/students.js';
import { hashModelFolder } from '../train/latent-cache.js';
import type { FlagSpec, ParsedArgs } from './args.js';

export const accelFlags: Record<string, FlagSpec> = {
  accel: {
    type: 'string',
    description:
      "distilled students and T-GATE: clear[:R[:D]] | linfusion | flash | tgate, or a '+' combination (flash+tgate, clear+tgate); flash samples with LCM, 4 steps, no CFG unless --steps/--guidance say otherwise",
  },
  students: {
    type: 'string',
    description:
      "the folder of the model's students (velodiff distill's model/ folders, one per subfolder); default: the shipped students when the model is the shipped one",
  },
};

/** The run settings an `--accel` choice makes, after the Flash LoRA (if any) is fused into `pipe`. */
export interface AppliedAccel {
  readonly attention?: AttentionOption;
  readonly tgate?: TGateOptions;
  readonly steps?: number;
  readonly guidance?: number;
  /** One line per student used, for the console. */
  readonly lines: readonly string[];
}

/**
 * Applies `--accel` to a loaded pipeline. `explicit` are the command's own choices (steps, guidance,
 * `--attention`, `--tgate`, `--flash`), which `--accel` must not contradict; `shipped` says the model
 * is the shipped one (then the shipped students are the default).
 */
export async function applyAccel(
  pipe: PixArtPipeline,
  flags: ParsedArgs['flags'],
  o: {
    command: string;
    shipped: boolean;
    steps?: number;
    guidance?: number;
    tgate?: TGateOptions;
    attention?: AttentionOption;
    flash?: boolean;
  },
): Promise<AppliedAccel | undefined> {
  const text = flags.accel as string | undefined;
  const studentsFlag = flags.students as string | undefined;
  if (text === undefined) {
    if (studentsFlag !== undefined) throw new OptionError(`${o.command}: --students needs --accel`);
    return undefined;
  }
  const spec = parseAccel(text);
  if (spec.attention && o.attention) {
    throw new OptionError(
      `${o.command}: --accel ${text} chooses the self-attention; drop --attention (or --accel's ${spec.attention.kind})`,
    );
  }
  if (spec.flash && o.flash) throw new OptionError(`${o.command}: --accel flash and --flash FILE: give one`);
  const needsStudents = spec.attention !== undefined || spec.flash;
  let studentsDir = studentsFlag === undefined ? undefined : resolve(studentsFlag);
  if (needsStudents && studentsDir === undefined) {
    if (!o.shipped) {
      throw new OptionError(
        `${o.command}: --accel ${text} needs the students of ${pipe.dir}: give --students DIR (velodiff distill's model/ folders)`,
      );
    }
    studentsDir = shippedStudentsDir();
  }
  let attention: AttentionOption | undefined;
  let flashLora: string | undefined;
  const lines: string[] = [];
  if (needsStudents && studentsDir !== undefined) {
    const students = existsSync(studentsDir) ? await listStudents(studentsDir) : [];
    const resolved = resolveAccel(spec, students, {
      teacherSha256: await hashModelFolder(join(pipe.dir, 'transformer')),
      studentsDir,
    });
    attention = resolved.attention;
    flashLora = resolved.flashLora;
    for (const s of resolved.students) lines.push(`student: ${s.kind} from ${s.dir}`);
  }
  let steps = o.steps;
  let guidance = o.guidance;
  if (flashLora !== undefined) {
    const { adapter, runOptions } = await pipe.useFlashDiffusion(flashLora);
    steps ??= runOptions.numInferenceSteps;
    guidance ??= runOptions.guidanceScale;
    lines.push(`Flash Diffusion: ${adapter.modules.length} LoRA modules fused, LCM sampling`);
  }
  let tgate = o.tgate;
  if (spec.tgate && tgate === undefined) {
    const lcm = flashLora !== undefined || (guidance !== undefined && guidance <= 1);
    // PixArt's default is 20 steps when neither the command nor Flash sets them.
    tgate = defaultTGate(steps ?? 20, lcm);
    lines.push(
      `T-GATE: gate step ${tgate.gateStep}, self-attention interval ${tgate.spInterval}, warm-up ${tgate.warmUp}${tgate.lcm ? ', lcm' : ''}`,
    );
  }
  return {
    ...(attention ? { attention } : {}),
    ...(tgate ? { tgate } : {}),
    ...(steps !== undefined ? { steps } : {}),
    ...(guidance !== undefined ? { guidance } : {}),
    lines,
  };
}
