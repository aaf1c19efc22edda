/**
 * `init.student`: a distillation that starts from a student folder of its method (a shipped student,
 * or another run's model/) rather than from the method's initialisation. The folder is checked to be
 * a student of the run's method; one distilled from another teacher is allowed (the warm start after
 * a teacher changed) and reported.
 */
import { existsSync } from 'node:fs';
import { resolve } from 'node:path';

import { FileFormatError } from '../../errors.js';
import type { Student, StudentKind, TeacherRecord } from '../../pipelines/students.js';
import { readStudent, TEACHER_FILE } from '../../pipelines/students.js';
import { emitWarning, VelodiffWarning, type WarningHandler } from '../../warnings.js';

/** The student in `dir`, which must be one of `kind`; a student of another teacher is reported to `onWarning`. */
export async function studentToStartFrom(
  dir: string,
  kind: StudentKind,
  teacher: TeacherRecord,
  onWarning: WarningHandler = emitWarning,
): Promise<Student> {
  const abs = resolve(dir);
  if (!existsSync(abs)) throw new FileFormatError(`${abs}: no such folder`, 'INIT_STUDENT_MISSING', abs);
  const student = await readStudent(abs);
  if (student === undefined) {
    throw new FileFormatError(
      `${abs}: not a student folder (expected a config.json of CLEAR ("ClearAttentionWeights") or ` +
        'LinFusion ("LinFusion"), or a Flash LoRA file pytorch_lora_weights.safetensors)',
      'INIT_STUDENT_KIND',
      abs,
    );
  }
  if (student.kind !== kind) {
    throw new FileFormatError(
      `${abs}: a ${student.kind} student, and this run distils ${kind}`,
      'INIT_STUDENT_KIND',
      abs,
    );
  }
  if (student.teacherSha256 !== teacher.transformer_sha256) {
    onWarning(
      new VelodiffWarning(
        `${abs} was distilled from ` +
          (student.teacherSha256 === undefined
            ? `a teacher it does not record (no ${TEACHER_FILE})`
            : `another teacher (transformer sha256 ${student.teacherSha256.slice(0, 12)}…)`) +
          ` than this run's ${teacher.teacher} (${teacher.transformer_sha256.slice(0, 12)}…): ` +
          'its weights are a starting point, and the run distils them towards this teacher',
        'INIT_STUDENT_TEACHER',
        abs,
        [],
      ),
    );
  }
  return student;
}

/** The student file's tensors under the run's names. */
export function prefixed(
  weights: ReadonlyMap<string, Float32Array>,
  prefix: string,
): Map<string, Float32Array> {
  return new Map([...weights].map(([name, value]) => [`${prefix}.${name}`, value]));
}
