/**
 * The emoji classifier and its trainer on a tiny configuration: the loss's gradient against finite
 * differences, learning a synthetic two-level labelling to 100 % from scratch, the folder round trip,
 * and the shift augmentation.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';

import { add } from '../../../src/graph/index.js';
import type { Tensor } from '../../../src/graph/index.js';
import {
  VelodiffEmojiClassifier,
  emojiClassifierForward,
  parseEmojiClassifierConfig,
} from '../../../src/models/emoji-classifier.js';
import { loadModel } from '../../../src/models/index.js';
import { hostTensor } from '../../../src/runtime/host-tensor.js';
import { AdamW } from '../../../src/train/adamw.js';
import type { ImageTextDataset, LabelNames } from '../../../src/train/data/dataset.js';
import { DataLoader } from '../../../src/train/data/loader.js';
import type { Batch } from '../../../src/train/data/loader.js';
import { classifierTrainer } from '../../../src/train/eval/classifier-trainer.js';
import { crossEntropy } from '../../../src/train/losses.js';
import { weightDecayGroups } from '../../../src/train/optimizer.js';
import { TrainStep } from '../../../src/train/train-step.js';
import { gradCheck, paramsOf } from '../../graph/gradcheck.js';
import { assertExactlyEqual, assertMaxAbsError, assertScaledMaxAbsError } from '../../compare.js';
import { testRuntime } from '../../helpers.js';
import { seededUniform, testSeed } from '../../random.js';

const TINY = {
  stem_channels: 8,
  block_out_channels: [8, 16],
  norm_num_groups: 4,
  feature_dim: 16,
  sample_size: 16,
};

const LABELS: LabelNames = {
  category: ['blocks', 'lines'],
  subcategory: ['square', 'ring', 'horizontal bar', 'vertical bar'],
  style: ['noto', 'twemoji'],
};

/** Whether pixel (x, y) of a shape drawn at (0, 0) is inked: a 6×6 square, its 1-pixel outline, a 2×10 bar, a 10×2 bar. */
const SHAPES: readonly ((x: number, y: number) => boolean)[] = [
  (x, y) => x < 6 && y < 6,
  (x, y) => x < 6 && y < 6 && (x === 0 || y === 0 || x === 5 || y === 5),
  (x, y) => x < 10 && y < 2,
  (x, y) => x < 2 && y < 10,
];

/**
 * A labelled data set of `count` 16×16 images: one shape (the subcategory) in a random dark colour at
 * a random place on white; category 'blocks' for squares and rings, 'lines' for bars.
 */
function shapes(count: number, random: () => number, split: 'train' | 'validation'): ImageTextDataset {
  const size = 16;
  const pixels = new Uint8Array(count * size * size * 3).fill(255);
  const items = Array.from({ length: count }, (_, i) => {
    const subcategory = i % 4;
    const colour = [0, 1, 2].map(() => Math.floor(random() * 160));
    const [x0, y0] = [Math.floor(random() * 6), Math.floor(random() * 6)];
    for (let y = 0; y < 10; y++)
      for (let x = 0; x < 10; x++)
        if (SHAPES[subcategory](x, y)) pixels.set(colour, ((i * size + y0 + y) * size + x0 + x) * 3);
    return {
      id: `shape/${i}`,
      captions: [LABELS.subcategory[subcategory]],
      group: String(i),
      labels: { category: subcategory < 2 ? 0 : 1, subcategory, style: 0 },
    };
  });
  return {
    size,
    pixels,
    items,
    labelNames: LABELS,
    split: items.map(() => split),
    badFiles: [],
    key: 'shapes',
    cacheEntry: undefined,
    fromCache: false,
  };
}

test('the classifier loss (Σ heads’ cross-entropy) has the gradient of finite differences (float32)', async () => {
  const config = parseEmojiClassifierConfig(
    { ...TINY, sample_size: 8, heads: { category: LABELS.category, subcategory: LABELS.subcategory } },
    'test',
  );
  const trainer = classifierTrainer({
    classifier: { ...TINY, sample_size: 8 },
    labels: ['category', 'subcategory'],
    labelNames: LABELS,
  });
  const inputs = Object.fromEntries(
    [...trainer.shapes].map(([name, shape]) => [
      name,
      /norm\d\.weight$/.test(name) ? { shape, range: [0.5, 1.5] as const } : { shape },
    ]),
  );
  await gradCheck({
    what: 'emoji classifier loss',
    dtype: 'float32',
    coordinates: 6,
    inputs: {
      ...inputs,
      pixels: { shape: [3, 3, 8, 8], grad: false },
      category: { shape: [3], dtype: 'int32', values: Int32Array.of(0, 1, 1) },
      subcategory: { shape: [3], dtype: 'int32', values: Int32Array.of(3, 0, 2) },
    },
    build: (g, all) => {
      const { logits } = emojiClassifierForward(paramsOf(g, all), all.pixels, config);
      return add(
        crossEntropy(logits.category, all.category),
        crossEntropy(logits.subcategory, all.subcategory),
      ) as Tensor;
    },
  });
});

test('trained from scratch, the classifier learns a synthetic labelling; its folder classifies as the parameters did', async () => {
  const seed = testSeed('classifier training');
  const random = seededUniform(seed);
  const runtime = testRuntime();
  const trainer = classifierTrainer({
    classifier: TINY,
    labels: ['category', 'subcategory'],
    labelNames: LABELS,
    maxShift: 2,
    seed,
  });
  const train = shapes(96, random, 'train');
  const validation = shapes(16, random, 'validation');
  const params = trainer.initialParameters(seed);
  const step = await TrainStep.compile(runtime, trainer.stepSpec(16));
  const optimizer = new AdamW(weightDecayGroups([...params.keys()]), { lr: 0.003, weightDecay: 0 });
  const loader = new DataLoader(train, { batchSize: 16, seed });
  const losses: number[] = [];
  for (let i = 0; i < 240; i++) {
    const result = await step.run(params, trainer.makeBatch(loader.next()));
    losses.push(result.loss);
    optimizer.step(params, result.grads, 1);
  }
  const before = await trainer.evaluate(runtime, trainer.initialParameters(seed), validation);
  const after = await trainer.evaluate(runtime, params, validation);
  const mean = (xs: number[]): number => xs.reduce((a, b) => a + b, 0) / xs.length;
  assert.ok(
    mean(losses.slice(-5)) < 0.3 * mean(losses.slice(0, 5)),
    `losses ${losses.map((l) => l.toFixed(2)).join(' ')}`,
  );
  assert.equal(after.count, 16);
  // Chance is 0.5 and 0.25; 16 unseen images leave room for one or two misses (seen in 1 of 30 seeds).
  assert.ok(
    after.accuracy.category >= 0.875,
    `category accuracy ${after.accuracy.category} (before ${before.accuracy.category})`,
  );
  assert.ok(
    after.accuracy.subcategory >= 0.75,
    `subcategory accuracy ${after.accuracy.subcategory} (before ${before.accuracy.subcategory})`,
  );

  const dir = await mkdtemp(join(tmpdir(), 'velodiff-classifier-'));
  try {
    await trainer.saveFolder(join(dir, 'classifier'), params);
    const loaded = await loadModel(join(dir, 'classifier'), { runtime });
    assert.ok(loaded instanceof VelodiffEmojiClassifier);
    assert.deepEqual(loaded.config.heads, trainer.config.heads);
    const images = hostTensor(
      'float32',
      [5, 3, 16, 16],
      Float32Array.from({ length: 5 * 3 * 256 }, () => 2 * random() - 1),
    );
    const fromFolder = await loaded.classify(images);
    const inMemory = await VelodiffEmojiClassifier.fromParameters(
      trainer.config,
      params,
      trainer.shapes,
      runtime,
    ).classify(images);
    // Not bit-equal: ORT prepacks constant weights (the folder's) and not graph inputs (the parameters).
    assertScaledMaxAbsError(fromFolder.features, inMemory.features, 1e-5, 'features, folder against memory');
    assertScaledMaxAbsError(
      fromFolder.logits.subcategory,
      inMemory.logits.subcategory,
      1e-5,
      'logits, folder against memory',
    );
    // Through forward(), as `velodiff forward` calls it; a batch over the run size is cut and padded.
    const many = hostTensor(
      'float32',
      [40, 3, 16, 16],
      Float32Array.from({ length: 40 * 768 }, () => 2 * random() - 1),
    );
    const out = await loaded.forward({ pixel_values: many });
    assert.deepEqual(out.category_logits.shape, [40, 2]);
    const first = await loaded.classify(
      hostTensor('float32', [1, 3, 16, 16], (many.data as Float32Array).slice(39 * 768)),
    );
    assertMaxAbsError(
      (out.category_logits.data as Float32Array).subarray(78),
      first.logits.category,
      1e-5,
      'image 39 alone and in a batch',
    );
    await loaded.close();
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('makeBatch shifts each image by at most maxShift, fills with white, and repeats exactly', () => {
  const random = seededUniform(testSeed('classifier shift'));
  const trainer = classifierTrainer({
    classifier: TINY,
    labels: ['subcategory'],
    labelNames: LABELS,
    maxShift: 3,
    seed: 5,
  });
  const count = 12;
  const images = Float32Array.from({ length: count * 3 * 256 }, () => random() * 1.8 - 0.9);
  const batch: Batch = {
    images,
    shape: [count, 3, 16, 16],
    captions: [],
    dropped: [],
    labels: {
      category: new Int32Array(count),
      subcategory: Int32Array.from({ length: count }, (_, i) => i % 4),
      style: new Int32Array(count),
    },
    indices: Array.from({ length: count }, (_, i) => 100 + i),
    flipped: [],
    epoch: 3,
  };
  const feeds = trainer.makeBatch(batch);
  assert.deepEqual([...(feeds.subcategory_labels.data as Int32Array)], [...batch.labels!.subcategory]);
  const out = feeds.pixel_values.data as Float32Array;
  const shifts = new Set<string>();
  for (let n = 0; n < count; n++) {
    // The one (dx, dy) whose reference shift equals the output: out(y, x) = in(y − dy, x − dx), or 1 outside.
    const matches: string[] = [];
    for (let dy = -3; dy <= 3; dy++)
      for (let dx = -3; dx <= 3; dx++) {
        let same = true;
        for (let c = 0; c < 3 && same; c++)
          for (let y = 0; y < 16 && same; y++)
            for (let x = 0; x < 16 && same; x++) {
              const [sy, sx] = [y - dy, x - dx];
              const inside = sy >= 0 && sy < 16 && sx >= 0 && sx < 16;
              const expected = inside ? images[((n * 3 + c) * 16 + sy) * 16 + sx] : 1;
              same = out[((n * 3 + c) * 16 + y) * 16 + x] === expected;
            }
        if (same) matches.push(`${dx},${dy}`);
      }
    assert.equal(matches.length, 1, `image ${n}: shifts matching the output: [${matches.join('; ')}]`);
    shifts.add(matches[0]);
  }
  assert.ok(shifts.size >= 4, `only ${shifts.size} distinct shifts in ${count} images`);
  assertExactlyEqual(trainer.makeBatch(batch).pixel_values.data as Float32Array, out, 'the same batch again');
  const otherEpoch = trainer.makeBatch({ ...batch, epoch: 4 }).pixel_values.data as Float32Array;
  assert.ok(
    otherEpoch.some((v, i) => v !== out[i]),
    'another epoch shifts differently',
  );
});

test('the classifier config: defaults, errors that name the key and file, unknown keys reported', () => {
  const config = parseEmojiClassifierConfig({}, 'c.json');
  assert.deepEqual(config.blockOutChannels, [32, 64, 128, 256]);
  assert.equal(config.featureDim, 128);
  assert.deepEqual(config.heads, []);
  assert.throws(
    () => parseEmojiClassifierConfig({ block_out_channels: [32, 60] }, 'c.json'),
    /c\.json: "block_out_channels" is \[32,60\]; expected channel counts divisible by norm_num_groups \(8\)/,
  );
  assert.throws(
    () => parseEmojiClassifierConfig({ sample_size: 40 }, 'c.json'),
    /"sample_size" .* multiple of 2\^4/,
  );
  assert.throws(() => parseEmojiClassifierConfig({ heads: { category: ['only one'] } }, 'c.json'), /"heads"/);
  const warnings: string[] = [];
  parseEmojiClassifierConfig({ dropout: 0.1 }, 'c.json', (w) => warnings.push(w.message));
  assert.match(warnings.join(), /"dropout"/);
});
