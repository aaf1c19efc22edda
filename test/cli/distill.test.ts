/**
 * `velodiff distill clear` on the tiny PixArt pipeline as teacher and a 4-image folder of captions:
 * it runs, saves CLEAR's weights file, and `--resume` at the end is accepted; bad arguments say what
 * was expected.
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { cp, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { PNG } from 'pngjs';

import { gridLabel } from '../../bench/students.js';
import { SafetensorsFile } from '../../src/io/safetensors.js';
import { assertClose } from '../compare.js';
import { captionFolder } from '../fixtures/caption-folder.js';
import { tinyPixArtPipeline } from '../fixtures/tiny-pixart-pipeline.js';
import { loadEmojiDataset } from '../../src/train/data/emoji-dataset.js';
import { tinyEmojiClassifier } from '../fixtures/tiny-emoji-classifier.js';
import { useTempCacheDir } from '../helpers.js';
import { testSeed } from '../random.js';
import { captureCli } from './capture.js';

useTempCacheDir('velodiff-distill-cache-');

let work: string;
let teacher: string;
let folder: string;

before(async () => {
  work = await mkdtemp(join(tmpdir(), 'velodiff-distill-cli-'));
  teacher = await tinyPixArtPipeline();
  folder = await captionFolder(join(work, 'images'));
});
after(async () => {
  await rm(work, { recursive: true, force: true });
});

/** `velodiff bench students` on the tiny teacher, one thread, --json, with `extra` flags. */
function benchStudentsCli(
  students: string,
  classifier: string,
  extra: string[],
): ReturnType<typeof captureCli> {
  return captureCli([
    'bench',
    'students',
    '--model',
    teacher,
    '--students',
    students,
    '--classifier',
    classifier,
    '--threads',
    '1',
    '--json',
    ...extra,
  ]);
}

describe('velodiff distill clear', () => {
  it('distils a CLEAR student and writes its weights file', async () => {
    const out = join(work, 'run');
    const argv = ['distill', 'clear', '--radius', '2', '--teacher', teacher, '--data', folder];
    const r = await captureCli([
      ...argv,
      '--steps',
      '2',
      '--batch-size',
      '2',
      '--out',
      out,
      '--threads',
      '1',
    ]);
    assert.equal(r.code, 0, r.err);
    assert.match(r.err, /training distill-clear: 2 steps of 2 images/);
    assert.ok(existsSync(join(out, 'model', 'clear_local_2.safetensors')));
    assert.ok(existsSync(join(out, 'teacher-samples', 'manifest.json')));
    // Shipped students are float16.
    const file = await SafetensorsFile.open(join(out, 'model', 'clear_local_2.safetensors'));
    try {
      assert.deepEqual(new Set(file.names().map((n) => file.info(n).dtype)), new Set(['F16']));
    } finally {
      await file.close();
    }
    const record = JSON.parse(await readFile(join(out, 'model', 'teacher.json'), 'utf8'));
    assert.match(record.transformer_sha256, /^[0-9a-f]{64}$/);
  });

  it('generate --accel clear runs the distilled student as --attention clear:R with its weights file', async () => {
    const model = join(work, 'run', 'model');
    const base = [
      'generate',
      'red heart',
      '--model',
      teacher,
      '--seed',
      '1',
      '--steps',
      '2',
      '--threads',
      '1',
    ];
    const viaAccel = join(work, 'accel.png');
    const viaAttention = join(work, 'attention.png');
    const plain = join(work, 'plain.png');
    let r = await captureCli([...base, '--accel', 'clear', '--students', model, '--out', viaAccel]);
    assert.equal(r.code, 0, r.err);
    assert.match(r.err, /student: clear from /);
    r = await captureCli([
      ...base,
      '--attention',
      'clear:2',
      '--attention-weights',
      join(model, 'clear_local_2.safetensors'),
      '--out',
      viaAttention,
    ]);
    assert.equal(r.code, 0, r.err);
    r = await captureCli([...base, '--out', plain]);
    assert.equal(r.code, 0, r.err);
    assert.deepEqual(await readFile(viaAccel), await readFile(viaAttention));
    // The student's weights change the image (the tiny teacher's 4×4 grid is wider than radius 2).
    assert.notDeepEqual(await readFile(viaAccel), await readFile(plain));
  });

  it('--accel refuses a student of another teacher, an absent student, and --accel without --students on a non-shipped model', async () => {
    const model = join(work, 'run', 'model');
    const moved = join(work, 'other-teacher');
    await mkdir(moved, { recursive: true });
    for (const f of ['config.json', 'clear_local_2.safetensors'])
      await writeFile(join(moved, f), await readFile(join(model, f)));
    await writeFile(
      join(moved, 'teacher.json'),
      JSON.stringify({ teacher: 'x', transformer_sha256: '0'.repeat(64) }),
    );
    const base = [
      'generate',
      'red heart',
      '--model',
      teacher,
      '--steps',
      '1',
      '--threads',
      '1',
      '--out',
      join(work, 'x.png'),
    ];
    let r = await captureCli([...base, '--accel', 'clear', '--students', moved]);
    assert.notEqual(r.code, 0);
    assert.match(r.err, /was distilled from another teacher/);
    r = await captureCli([...base, '--accel', 'linfusion', '--students', model]);
    assert.notEqual(r.code, 0);
    assert.match(r.err, /no LinFusion student in .* \(it has: clear:2 /);
    r = await captureCli([...base, '--accel', 'clear:8', '--students', model]);
    assert.match(r.err, /no CLEAR r=8 student/);
    r = await captureCli([...base, '--accel', 'clear']);
    assert.match(r.err, /needs the students of .*: give --students DIR/);
    r = await captureCli([...base, '--accel', 'clear', '--attention', 'full', '--students', model]);
    assert.match(r.err, /drop --attention/);
  });

  it("distill linfusion writes the authors' folder layout, which --accel linfusion runs as --attention linfusion", async () => {
    const out = join(work, 'run-linfusion');
    const r = await captureCli([
      'distill',
      'linfusion',
      '--mid-dim-scale',
      '4',
      '--teacher',
      teacher,
      '--data',
      folder,
      '--steps',
      '2',
      '--batch-size',
      '2',
      '--out',
      out,
      '--threads',
      '1',
    ]);
    assert.equal(r.code, 0, r.err);
    assert.match(r.err, /training distill-linfusion: 2 steps of 2 images/);
    const model = join(out, 'model');
    const config = JSON.parse(await readFile(join(model, 'config.json'), 'utf8'));
    assert.equal(config._class_name, 'LinFusion');
    assert.equal(config.modules_list.length, 2);
    assert.equal(config.modules_list[0].module_name, 'transformer_blocks.0.attn1');
    assert.equal(config.modules_list[0].projection_mid_dim, config.modules_list[0].dim_n / 4);
    assert.ok(existsSync(join(model, 'diffusion_pytorch_model.safetensors')));
    assert.ok(existsSync(join(model, 'teacher.json')));

    const base = [
      'generate',
      'red heart',
      '--model',
      teacher,
      '--seed',
      '2',
      '--steps',
      '2',
      '--threads',
      '1',
    ];
    const viaAccel = join(work, 'lf-accel.png');
    const viaAttention = join(work, 'lf-attention.png');
    let g = await captureCli([...base, '--accel', 'linfusion', '--students', model, '--out', viaAccel]);
    assert.equal(g.code, 0, g.err);
    g = await captureCli([
      ...base,
      '--attention',
      'linfusion',
      '--attention-weights',
      model,
      '--out',
      viaAttention,
    ]);
    assert.equal(g.code, 0, g.err);
    assert.deepEqual(await readFile(viaAccel), await readFile(viaAttention));
  });

  it('distill flash writes a diffusers LoRA that --accel flash runs as --flash FILE (LCM, 4 steps, no CFG)', async () => {
    const labelNames = (await loadEmojiDataset()).labelNames;
    assert.ok(labelNames);
    const classifier = await tinyEmojiClassifier(labelNames, testSeed('distill flash classifier'));
    const out = join(work, 'run-flash');
    const r = await captureCli([
      'distill',
      'flash',
      '--lora-rank',
      '2',
      '--lora-alpha',
      '1',
      '--phase-steps',
      '1',
      '--classifier',
      classifier,
      '--teacher',
      teacher,
      '--data',
      folder,
      '--steps',
      '2',
      '--batch-size',
      '2',
      '--out',
      out,
      '--threads',
      '1',
    ]);
    assert.equal(r.code, 0, r.err);
    assert.match(r.err, /training distill-flash: 2 steps of 2 images/);
    const model = join(out, 'model');
    assert.ok(existsSync(join(model, 'pytorch_lora_weights.safetensors')));
    assert.ok(existsSync(join(model, 'teacher.json')));
    const metrics = (await readFile(join(out, 'metrics.jsonl'), 'utf8'))
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l));
    assert.equal(metrics.length, 2);
    for (const m of metrics)
      for (const key of ['distill', 'dmd', 'gan_g', 'gan_d'])
        assert.ok(Number.isFinite(m[key]), `${key} = ${m[key]}`);

    const base = ['generate', 'red heart', '--model', teacher, '--seed', '3', '--threads', '1'];
    const viaAccel = join(work, 'flash-accel.png');
    const viaFlag = join(work, 'flash-flag.png');
    let g = await captureCli([...base, '--accel', 'flash', '--students', model, '--out', viaAccel]);
    assert.equal(g.code, 0, g.err);
    assert.match(g.err, /Flash Diffusion: \d+ LoRA modules fused/);
    g = await captureCli([
      ...base,
      '--flash',
      join(model, 'pytorch_lora_weights.safetensors'),
      '--out',
      viaFlag,
    ]);
    assert.equal(g.code, 0, g.err);
    assert.deepEqual(await readFile(viaAccel), await readFile(viaFlag));
  });

  it('bench students: the teacher and the three students in one table, speed-ups predicted from FLOPs', async () => {
    const labelNames = (await loadEmojiDataset()).labelNames;
    assert.ok(labelNames);
    const classifier = await tinyEmojiClassifier(labelNames, testSeed('bench students classifier'));
    const students = join(work, 'students');
    await mkdir(students, { recursive: true });
    for (const [run, name] of [
      ['run', 'clear-r2'],
      ['run-linfusion', 'linfusion'],
      ['run-flash', 'flash'],
    ])
      await cp(join(work, run, 'model'), join(students, name), { recursive: true });
    const gridFile = join(work, 'students.png');
    const r = await benchStudentsCli(students, classifier, [
      '--samples',
      '4',
      '--batch',
      '4',
      '--rows',
      'tgate,teacher-4,clear:2,linfusion,flash,flash-2',
      '--grid',
      gridFile,
      '--grid-images',
      '3',
    ]);
    assert.equal(r.code, 0, r.err);
    const { rows } = JSON.parse(r.out.trimEnd().split('\n').at(-1) ?? '') as {
      rows: {
        id: string;
        fed: number;
        psnr: number;
        ssim: number;
        gflop_per_image: number;
        predicted_speedup: number;
        speedup: number;
      }[];
    };
    assert.deepEqual(
      rows.map((x) => x.id),
      ['teacher', 'tgate', 'teacher-4', 'clear:2', 'linfusion', 'flash', 'flash-2'],
    );
    const byId = new Map(rows.map((x) => [x.id, x]));
    const teacherRow = byId.get('teacher')!;
    assert.equal(teacherRow.ssim, 1);
    for (const x of rows) {
      assert.ok(Number.isFinite(x.fed) && x.fed >= 0, `${x.id} FED ${x.fed}`);
      assert.ok(x.ssim <= 1 && x.ssim > -1, `${x.id} SSIM ${x.ssim}`);
      assert.ok(x.speedup > 0 && x.predicted_speedup > 0);
    }
    // FLOPs are linear in the steps and the CFG batch: with f one batch-1 step and v the decoder,
    // flash = 4f + v and flash-2 = 2f + v, so the teacher's 25 CFG steps are 50f + v.
    const f = (byId.get('flash')!.gflop_per_image - byId.get('flash-2')!.gflop_per_image) / 2;
    const v = byId.get('flash-2')!.gflop_per_image - 2 * f;
    assertClose([teacherRow.gflop_per_image], [50 * f + v], { rtol: 1e-9, atol: 0, what: 'teacher GFLOP' });
    assertClose([byId.get('teacher-4')!.gflop_per_image], [8 * f + v], {
      rtol: 1e-9,
      atol: 0,
      what: 'teacher at 4 steps GFLOP',
    });
    assert.ok(byId.get('tgate')!.predicted_speedup > 1);
    // Three columns of the rows' images: tiles of about 128 px with 6 px gaps.
    const { size } = JSON.parse(r.out.trimEnd().split('\n').at(-1) ?? '') as { size: number };
    const tile = size * Math.max(1, Math.round(128 / size));
    assert.equal(PNG.sync.read(await readFile(gridFile)).width, 6 + 3 * (tile + 6));
  });

  it("bench students --size --highres: CLEAR's staged recipe, its FLOPs the base pass, the encoder and the refine's int(steps · strength) steps", async () => {
    const labelNames = (await loadEmojiDataset()).labelNames;
    assert.ok(labelNames);
    const classifier = await tinyEmojiClassifier(labelNames, testSeed('bench students highres classifier'));
    const students = join(work, 'students');
    assert.ok(existsSync(students), 'the previous test makes the students folder');
    type Row = { id: string; fed: number; ssim: number; gflop_per_image: number };
    type Result = { rows: Row[]; size: number; recipe: unknown; predictions: unknown[]; log: string };
    const bench = async (extra: string[]): Promise<Result> => {
      const r = await benchStudentsCli(students, classifier, [
        '--samples',
        '2',
        '--batch',
        '2',
        '--rows',
        'flash,flash-2',
        ...extra,
      ]);
      assert.equal(r.code, 0, r.err);
      return { ...JSON.parse(r.out.trimEnd().split('\n').at(-1) ?? ''), log: r.err + r.out };
    };
    const base = await bench([]);
    const side = base.size * 2;
    const resultsFile = join(work, 'students-results.jsonl');
    const zeroShot = await bench(['--size', String(side), '--results', resultsFile]);
    const staged = await bench(['--size', String(side), '--highres', '0.7']);
    assert.equal(zeroShot.size, side);
    assert.deepEqual(staged.recipe, { staged: { strength: 0.7 } });
    const gflop = (r: { rows: Row[] }, id: string): number =>
      r.rows.find((x) => x.id === id)!.gflop_per_image;
    // Per image: one batch-1 step f and the decoder v, at each size, from the 4- and 2-step rows.
    const fv = (r: { rows: Row[] }): [number, number] => {
      const f = (gflop(r, 'flash') - gflop(r, 'flash-2')) / 2;
      return [f, gflop(r, 'flash-2') - 2 * f];
    };
    const [fBase, vBase] = fv(base);
    const [fSide, vSide] = fv(zeroShot);
    // Four times the tokens: more than twice a step's work (the caption's part does not grow).
    assert.ok(fSide > 2 * fBase, `a step at 2× side against one at 1×: ${fSide} vs ${fBase}`);
    // Staged: the base run, the encoder e at 2×, then int(steps · 0.7) steps at 2× (25 CFG → 17 of
    // batch 2; 4 → 2; 2 → 1) and the decoder. The encoder must come out the same from every row.
    const encoder = [
      gflop(staged, 'teacher') - (50 * fBase + vBase) - (34 * fSide + vSide),
      gflop(staged, 'flash') - (4 * fBase + vBase) - (2 * fSide + vSide),
      gflop(staged, 'flash-2') - (2 * fBase + vBase) - (1 * fSide + vSide),
    ];
    assert.ok(encoder[0] > 0, `encoder GFLOP ${encoder[0]}`);
    assertClose(encoder.slice(1), [encoder[0], encoder[0]], {
      rtol: 1e-9,
      atol: 1e-12,
      what: 'encoder GFLOP',
    });
    for (const r of [...zeroShot.rows, ...staged.rows])
      assert.ok(Number.isFinite(r.fed), `${r.id} FED ${r.fed}`);
    // The staged images are not the zero-shot ones.
    assert.ok(
      staged.rows.find((x) => x.id === 'teacher')!.fed !== zeroShot.rows.find((x) => x.id === 'teacher')!.fed,
    );
    // --results: a rerun reuses every row, figures and images (PSNR against the teacher's) alike.
    const again = await bench(['--size', String(side), '--results', resultsFile]);
    assert.match(again.log, /reusing Flash, LCM 2 steps/);
    assert.deepEqual(again.rows, zeroShot.rows);
    // Results written before 2026-12-07 held the warm-up's images ahead of the measured ones: they
    // are skipped, so the pairs (PSNR, SSIM) are the measured images' alone.
    const stored = (await readFile(resultsFile, 'utf8')).trimEnd().split('\n');
    const pixels = side * side * 3;
    const withWarmUp = stored.map((line, k) => {
      const row = JSON.parse(line) as { key: string; result: { images: string } };
      const warmUp = Buffer.alloc(2 * pixels, 40 * k); // a different flat grey per row
      row.result.images = Buffer.concat([warmUp, Buffer.from(row.result.images, 'base64')]).toString(
        'base64',
      );
      return JSON.stringify(row);
    });
    await writeFile(resultsFile, withWarmUp.join('\n') + '\n');
    const old = await bench(['--size', String(side), '--results', resultsFile]);
    assert.deepEqual(old.rows, zeroShot.rows);
    // --predict: the same GFLOP, nothing generated.
    const predicted = await bench(['--size', String(side), '--highres', '0.7', '--predict']);
    assert.deepEqual(predicted.rows, []);
    const predictions = predicted.predictions as { id: string; gflop_per_image: number }[];
    assert.deepEqual(
      predictions.map((p) => [p.id, p.gflop_per_image]),
      staged.rows.map((x) => [x.id, x.gflop_per_image]),
    );
    // --quantize int8: every row int8, the teacher's images no longer the float32 ones.
    const int8 = await bench(['--quantize', 'int8']);
    const teacherFed = (r: Result): number => r.rows.find((x) => x.id === 'teacher')!.fed;
    assert.equal((int8 as unknown as { quantize: unknown }).quantize, 'int8');
    assert.ok(Number.isFinite(teacherFed(int8)) && teacherFed(int8) !== teacherFed(base));
    let r = await captureCli(['bench', 'students', '--quantize', 'int4']);
    assert.equal(r.code, 2);
    assert.match(r.err, /--quantize must be int8/);
    r = await captureCli(['bench', 'students', '--highres', '0.7']);
    assert.equal(r.code, 2);
    assert.match(r.err, /--highres needs --size/);
  });

  it('bad arguments say what was expected', async () => {
    let r = await captureCli(['distill', 'sharpen', '--radius', '2']);
    assert.equal(r.code, 2);
    assert.match(r.err, /distill: expected a method \(clear, linfusion, flash\), found "sharpen"/);
    r = await captureCli(['distill', 'linfusion', '--radius', '4']);
    assert.equal(r.code, 2);
    assert.match(r.err, /distill linfusion: --radius belongs to distill clear/);
    r = await captureCli(['distill', 'clear']);
    assert.equal(r.code, 2);
    assert.match(r.err, /give --radius R/);
    r = await captureCli(['distill', 'clear', '--radius', '0.5', '--teacher', teacher, '--data', folder]);
    assert.notEqual(r.code, 0);
    assert.match(r.err, /radius: expected a window radius ≥ 1 \(latent tokens\), found 0\.5/);
  });
});

describe('bench students grid labels', () => {
  it('shortens a prompt to 17 characters (or the width asked), the style kept', () => {
    assert.equal(gridLabel('red heart, noto style'), 'red heart (noto)');
    assert.equal(gridLabel('person getting haircut, twemoji style'), 'person… (twemoji)');
    assert.equal(gridLabel('person getting haircut, twemoji style', 20), 'person ge… (twemoji)');
    assert.equal(gridLabel('flag: Japan'), 'flag: Japan');
    assert.equal(gridLabel('a prompt without any style word at all'), 'a prompt without…');
  });
});
