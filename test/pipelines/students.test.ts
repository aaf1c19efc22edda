/**
 * `--accel` parsing, T-GATE's defaults for it, which student a choice picks, and which folders a
 * students folder holds (pipelines/students.ts).
 */
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';

import { defaultTGate, listStudents, parseAccel, resolveAccel } from '../../src/pipelines/students.js';
import type { Student } from '../../src/pipelines/students.js';

const sha = 'a'.repeat(64);
const students: Student[] = [
  { kind: 'clear', dir: '/s/r8d2', radius: 8, downFactor: 2, weights: '/s/r8d2/w', teacherSha256: sha },
  { kind: 'clear', dir: '/s/r8', radius: 8, downFactor: 1, weights: '/s/r8/w', teacherSha256: sha },
  { kind: 'clear', dir: '/s/r4', radius: 4, downFactor: 1, weights: '/s/r4/w', teacherSha256: sha },
  { kind: 'flash', dir: '/s/flash', weights: '/s/flash/l.safetensors', teacherSha256: sha },
];
const where = { teacherSha256: sha, studentsDir: '/s' };

describe('parseAccel', () => {
  it('reads single methods and + combinations', () => {
    assert.deepEqual(parseAccel('tgate'), { flash: false, tgate: true });
    assert.deepEqual(parseAccel('clear'), { attention: { kind: 'clear' }, flash: false, tgate: false });
    assert.deepEqual(parseAccel('clear:8:2+tgate'), {
      attention: { kind: 'clear', radius: 8, downFactor: 2 },
      flash: false,
      tgate: true,
    });
    assert.deepEqual(parseAccel('flash+tgate'), { flash: true, tgate: true });
    assert.deepEqual(parseAccel('linfusion + flash'), {
      attention: { kind: 'linfusion' },
      flash: true,
      tgate: false,
    });
  });

  it('rejects unknown parts, two attentions, repeats and bad radii', () => {
    assert.throws(() => parseAccel('deepcache'), /"deepcache" is not one of clear\[:R\[:D\]\]/);
    assert.throws(
      () => parseAccel('clear+linfusion'),
      /one self-attention at a time \(clear and linfusion\)/,
    );
    assert.throws(() => parseAccel('tgate+tgate'), /tgate is named twice/);
    assert.throws(() => parseAccel('clear:0'), /radius must be an integer ≥ 1, got "0"/);
    assert.throws(() => parseAccel('clear:4:x'), /down factor must be an integer ≥ 1, got "x"/);
    assert.throws(() => parseAccel(''), /"" is not one of/);
  });
});

describe('resolveAccel', () => {
  it('clear alone takes the smallest radius without pooling; clear:R[:D] that student', () => {
    assert.deepEqual(resolveAccel(parseAccel('clear'), students, where).attention, {
      kind: 'clear',
      radius: 4,
      weights: '/s/r4/w',
    });
    assert.deepEqual(resolveAccel(parseAccel('clear:8'), students, where).attention, {
      kind: 'clear',
      radius: 8,
      weights: '/s/r8/w',
    });
    assert.deepEqual(resolveAccel(parseAccel('clear:8:2'), students, where).attention, {
      kind: 'clear',
      radius: 8,
      downFactor: 2,
      weights: '/s/r8d2/w',
    });
  });

  it('flash gives the LoRA file; missing students and other teachers are errors', () => {
    const r = resolveAccel(parseAccel('flash+tgate'), students, where);
    assert.equal(r.flashLora, '/s/flash/l.safetensors');
    assert.equal(r.tgate, true);
    assert.equal(r.attention, undefined);
    assert.throws(
      () => resolveAccel(parseAccel('linfusion'), students, where),
      /no LinFusion student in \/s \(it has: clear:8:2 \(\/s\/r8d2\), clear:8 \(\/s\/r8\), clear:4 \(\/s\/r4\), flash/,
    );
    assert.throws(() => resolveAccel(parseAccel('clear:16'), students, where), /no CLEAR r=16 student/);
    assert.throws(
      () => resolveAccel(parseAccel('clear'), students, { ...where, teacherSha256: 'b'.repeat(64) }),
      /distilled from another teacher .*sha256 aaaaaaaaaaaa…, this model.s is bbbbbbbbbbbb…/,
    );
  });
});

describe('defaultTGate', () => {
  it("is the authors' PixArt setting at 25 steps, scaled with the steps, and their LCM setting for Flash", () => {
    assert.deepEqual(defaultTGate(25, false), { gateStep: 15, spInterval: 3, fiInterval: 1, warmUp: 2 });
    assert.deepEqual(defaultTGate(20, false), { gateStep: 12, spInterval: 3, fiInterval: 1, warmUp: 2 });
    assert.deepEqual(defaultTGate(4, true), {
      gateStep: 2,
      spInterval: 1,
      fiInterval: 1,
      warmUp: 0,
      lcm: true,
    });
    assert.deepEqual(defaultTGate(1, true).gateStep, 1);
  });
});

describe('listStudents', () => {
  /** A CLEAR student folder of radius `radius` (its weights file only has to exist here). */
  function clearStudent(dir: string, radius: number): void {
    mkdirSync(dir, { recursive: true });
    const weights = `clear_local_${radius}.safetensors`;
    writeFileSync(
      join(dir, 'config.json'),
      JSON.stringify({ _class_name: 'ClearAttentionWeights', radius, down_factor: 1, weights }),
    );
    writeFileSync(join(dir, weights), '');
  }

  it("takes real folders and links to folders (a run's model/), and skips files and dangling links", async () => {
    const root = mkdtempSync(join(tmpdir(), 'velodiff-students-'));
    try {
      const students = join(root, 'students');
      clearStudent(join(students, 'clear-r4'), 4);
      clearStudent(join(root, 'runs', 'r8', 'model'), 8);
      symlinkSync(join(root, 'runs', 'r8', 'model'), join(students, 'clear-r8'));
      symlinkSync(join(root, 'nowhere'), join(students, 'dangling'));
      writeFileSync(join(students, 'notes.txt'), 'not a student');
      const found = await listStudents(students);
      assert.deepEqual(
        found.map((s) => (s.kind === 'clear' ? [s.radius, s.dir] : [s.kind, s.dir])),
        [
          [4, join(students, 'clear-r4')],
          [8, join(students, 'clear-r8')],
        ],
      );
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });
});
