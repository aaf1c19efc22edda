/**
 * `init.student` (`velodiff distill … --init DIR`): a distillation that starts from a student folder of
 * its method. Each method's run with learning rate 0 must save exactly the student it started from
 * (the folder's float16 values, read to float32 and written back), while the same run without
 * `init.student` saves the method's own initialisation, which differs; and a folder that is not such
 * a student is refused, saying what was expected and what was found.
 */
import assert from 'node:assert/strict';
import { cp, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { writeSafetensors } from '../../src/io/safetensors.js';
import { loadEmojiDataset } from '../../src/train/data/emoji-dataset.js';
import { assertExactlyEqual } from '../compare.js';
import { tinyEmojiClassifier } from '../fixtures/tiny-emoji-classifier.js';
import { captionFolder } from '../fixtures/caption-folder.js';
import { tinyPixArtPipeline } from '../fixtures/tiny-pixart-pipeline.js';
import { readAllTensors, useTempCacheDir } from '../helpers.js';
import { testSeed } from '../random.js';
import { captureCli } from './capture.js';

useTempCacheDir('velodiff-distill-init-cache-');

let work: string;
let teacher: string;
let folder: string;
let classifier: string;

before(async () => {
  work = await mkdtemp(join(tmpdir(), 'velodiff-distill-init-'));
  teacher = await tinyPixArtPipeline();
  folder = await captionFolder(join(work, 'images'), 50);
  const labelNames = (await loadEmojiDataset()).labelNames;
  assert.ok(labelNames);
  classifier = await tinyEmojiClassifier(labelNames, testSeed('distill init classifier'));
});
after(async () => {
  await rm(work, { recursive: true, force: true });
});

type Method = 'clear' | 'linfusion' | 'flash';

/** Each method's model options on the tiny teacher, and its weights file in the saved model/. */
const METHOD: Record<Method, { model: () => Record<string, unknown>; file: string }> = {
  clear: { model: () => ({ teacher, radius: 2, teacherSteps: 2 }), file: 'clear_local_2.safetensors' },
  linfusion: { model: () => ({ teacher, midDimScale: 4 }), file: 'diffusion_pytorch_model.safetensors' },
  flash: {
    model: () => ({ teacher, loraRank: 2, loraAlpha: 1, phaseSteps: 1, classifier }),
    file: 'pytorch_lora_weights.safetensors',
  },
};

/** `velodiff train --config` of a `method` distillation: `steps` updates of AdamW at `lr`. */
async function distil(
  method: Method,
  name: string,
  o: { lr: number; steps: number; init?: string; model?: Record<string, unknown> },
) {
  const output = join(work, name);
  const path = join(work, `${name}.json`);
  const config = {
    kind: `distill-${method}`,
    output,
    seed: 5,
    steps: o.steps,
    batchSize: 2,
    optimizer: { kind: 'adamw', lr: o.lr, weightDecay: 0.01 },
    clip: null,
    checkpoint: { every: 100, keep: 1 },
    sample: { every: 0, prompts: ['red heart'], seeds: [0], steps: 2 },
    data: folder,
    model: { ...METHOD[method].model(), ...o.model },
    ...(o.init !== undefined ? { init: { student: o.init } } : {}),
  };
  await writeFile(path, JSON.stringify(config));
  const r = await captureCli(['train', '--config', path, '--threads', '1']);
  return { ...r, model: join(output, 'model') };
}

async function tensorsOf(method: Method, model: string) {
  return readAllTensors(join(model, METHOD[method].file));
}

describe('distill … init.student (tiny teacher)', () => {
  for (const method of ['linfusion', 'flash', 'clear'] as const) {
    it(`${method}: a run at lr 0 saves the student it started from; without init.student it does not`, async () => {
      const trained = await distil(method, `${method}-trained`, { lr: 0.01, steps: 2 });
      assert.equal(trained.code, 0, trained.err);
      const warm = await distil(method, `${method}-warm`, { lr: 0, steps: 1, init: trained.model });
      assert.equal(warm.code, 0, warm.err);
      // The student was distilled from this very teacher: nothing to report.
      assert.doesNotMatch(warm.err, /INIT_STUDENT_TEACHER|distilled from another teacher/);
      const cold = await distil(method, `${method}-cold`, { lr: 0, steps: 1 });
      assert.equal(cold.code, 0, cold.err);

      const [a, b, c] = await Promise.all(
        [trained.model, warm.model, cold.model].map((m) => tensorsOf(method, m)),
      );
      assert.deepEqual(Object.keys(b).sort(), Object.keys(a).sort());
      let changed = 0;
      for (const name of Object.keys(a)) {
        assertExactlyEqual(b[name].data as Float32Array, a[name].data as Float32Array, `${method} ${name}`);
        const [x, y] = [a[name].data as Float32Array, c[name].data as Float32Array];
        if (x.some((v, i) => v !== y[i])) changed++;
      }
      // The trained student is not the method's initialisation, so the equality above says something.
      assert.ok(changed > 0, `${method}: the trained student equals a fresh initialisation`);
    });
  }

  it('refuses a folder that is not a student of the run: missing, another method, other settings, other tensors', async () => {
    const linfusion = join(work, 'linfusion-trained', 'model');
    const flash = join(work, 'flash-trained', 'model');
    const clear = join(work, 'clear-trained', 'model');

    let r = await distil('linfusion', 'refuse-missing', { lr: 0, steps: 1, init: join(work, 'nowhere') });
    assert.notEqual(r.code, 0);
    assert.match(r.err, /init\.student .*nowhere cannot be used: .*nowhere: no such folder/);

    r = await distil('clear', 'refuse-kind', { lr: 0, steps: 1, init: linfusion });
    assert.notEqual(r.code, 0);
    assert.match(r.err, /a linfusion student, and this run distils clear/);

    r = await distil('clear', 'refuse-radius', { lr: 0, steps: 1, init: clear, model: { radius: 3 } });
    assert.notEqual(r.code, 0);
    assert.match(r.err, /a CLEAR student of radius 2 and down factor 1; this run's are 3 and 1/);

    r = await distil('linfusion', 'refuse-mid', {
      lr: 0,
      steps: 1,
      init: linfusion,
      model: { midDimScale: 2 },
    });
    assert.notEqual(r.code, 0);
    assert.match(
      r.err,
      /its modules_list is not this run's \(.*projection_mid_dim: this run \d+, the folder \d+/,
    );

    r = await distil('flash', 'refuse-alpha', { lr: 0, steps: 1, init: flash, model: { loraAlpha: 2 } });
    assert.notEqual(r.code, 0);
    assert.match(r.err, /has LoRA alpha 1, and this run's loraAlpha is 2/);

    r = await distil('flash', 'refuse-rank', { lr: 0, steps: 1, init: flash, model: { loraRank: 4 } });
    assert.notEqual(r.code, 0);
    assert.match(r.err, /not this run's parameters; .*lora_A\.weight' \[2, \d+\] \(this run: \[4, \d+\]\)/);

    // A student whose file lost a tensor.
    const broken = join(work, 'linfusion-broken');
    await cp(linfusion, broken, { recursive: true });
    const tensors = await readAllTensors(join(broken, 'diffusion_pytorch_model.safetensors'));
    const [dropped, ...kept] = Object.keys(tensors).sort();
    await writeSafetensors(
      join(broken, 'diffusion_pytorch_model.safetensors'),
      Object.fromEntries(
        kept.map((n) => [
          n,
          { dtype: 'F32' as const, shape: [...tensors[n].shape], data: tensors[n].data as Float32Array },
        ]),
      ),
    );
    r = await distil('linfusion', 'refuse-broken', { lr: 0, steps: 1, init: broken });
    assert.notEqual(r.code, 0);
    assert.match(r.err, new RegExp(`missing: '${dropped.replace(/\./g, '\\.')}'`));
  });

  it('a student of another teacher starts the run, with a warning that names both teachers', async () => {
    const other = join(work, 'linfusion-other-teacher');
    await cp(join(work, 'linfusion-trained', 'model'), other, { recursive: true });
    const record = JSON.parse(await readFile(join(other, 'teacher.json'), 'utf8'));
    await writeFile(
      join(other, 'teacher.json'),
      JSON.stringify({ ...record, transformer_sha256: 'f'.repeat(64) }),
    );
    const warnings: Error[] = [];
    const listen = (w: Error) => void warnings.push(w);
    process.on('warning', listen);
    try {
      const r = await distil('linfusion', 'other-teacher', { lr: 0, steps: 1, init: other });
      assert.equal(r.code, 0, r.err);
      await new Promise((done) => setImmediate(done)); // process warnings are emitted on the next tick
    } finally {
      process.off('warning', listen);
    }
    const warning = warnings.find((w) => (w as { code?: string }).code === 'INIT_STUDENT_TEACHER');
    assert.ok(warning, `no INIT_STUDENT_TEACHER warning among ${warnings.map((w) => w.message).join('; ')}`);
    assert.match(warning.message, /distilled from another teacher \(transformer sha256 ffffffffffff…\)/);
  });
});
