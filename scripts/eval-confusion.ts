// Which category the shipped classifier sees in each generated image of a `bench students` row:
// the confusion matrix of the prompts' categories against the classifier's, and, with a category
// prefix, each prompt of that category with what its image was taken for.
//
//   node --import tsx scripts/eval-confusion.ts RESULTS.jsonl [ROW_ID] [CATEGORY_PREFIX]
//
// RESULTS.jsonl is a `bench students --results` file of one size (64² rows: the images are the
// classifier's size); ROW_ID defaults to teacher. The row's images are the held-out prompts in eval's
// order (rows written before 2026-12-07 also hold the warm-up's images first: skipped).
// Not part of the package.
import { readFileSync } from 'node:fs';

import { VelodiffEmojiClassifier } from '../src/models/emoji-classifier.js';
import { Runtime } from '../src/runtime/runtime.js';
import { loadEmojiDataset } from '../src/train/data/emoji-dataset.js';
import { argmaxRows, headIndexOf } from '../src/train/eval/accuracy.js';
import { heldOutSet, promptItems } from '../src/train/eval/held-out.js';
import { classifierInput } from '../src/train/eval/images.js';
import { shippedClassifierDir } from '../src/train/eval/shipped-classifier.js';

const [file, id = 'teacher', list] = process.argv.slice(2);
if (file === undefined) throw new Error('usage: eval-confusion.ts RESULTS.jsonl [ROW_ID] [CATEGORY_PREFIX]');
type Entry = { key: string; result: { images: string } };
const entries = readFileSync(file, 'utf8')
  .trim()
  .split('\n')
  .map((line) => JSON.parse(line) as Entry);
const entry = entries.find((e) => (JSON.parse(e.key) as { id: string }).id === id);
if (entry === undefined) throw new Error(`no row '${id}' in ${file}`);
const key = JSON.parse(entry.key) as { size: number; samples: number };
if (key.size !== 64) throw new Error(`row '${id}' is at ${key.size}²; this script reads 64² rows`);

const runtime = new Runtime({});
const dataset = await loadEmojiDataset();
const classifier = await VelodiffEmojiClassifier.fromPretrained(shippedClassifierDir(), { runtime });
const items = promptItems(heldOutSet(dataset), key.samples);
const bytes = Buffer.from(entry.result.images, 'base64');
const perImage = 64 * 64 * 3;
const skip = bytes.length / perImage - items.length;
const rgb = items.map(
  (_, k) => new Uint8Array(bytes.subarray((skip + k) * perImage, (skip + k + 1) * perImage)),
);
const result = await classifier.classify(await classifierInput(rgb, 64, 64, 64));
const head = classifier.config.heads.find((h) => h.label === 'category');
const labelNames = dataset.labelNames;
if (head === undefined || labelNames === undefined) throw new Error('no category head or labels');
const toHead = headIndexOf(head, labelNames.category);
const predicted = argmaxRows(result.logits.category, head.classes.length);
const short = head.classes.map((c) => c.split(/[ &]/)[0].slice(0, 10));
const matrix = head.classes.map(() => head.classes.map(() => 0));
items.forEach((i, k) => {
  const labels = dataset.items[i].labels;
  if (labels === undefined) throw new Error(`image '${dataset.items[i].id}' has no labels`);
  const truth = toHead[labels.category];
  matrix[truth][predicted[k]]++;
  if (list !== undefined && head.classes[truth].startsWith(list)) {
    console.log(`${dataset.items[i].captions[0]} → ${head.classes[predicted[k]]}`);
  }
});
const cell = (s: string): string => s.padStart(11);
console.log(`${cell('prompt\\seen')}${short.map(cell).join('')}  right`);
matrix.forEach((row, t) => {
  const total = row.reduce((a, b) => a + b, 0);
  if (total > 0)
    console.log(`${cell(short[t])}${row.map((n) => cell(String(n))).join('')}  ${row[t]}/${total}`);
});
await classifier.close();
