/**
 * `evaluateTextToImage` end to end on the emoji data set with a tiny random classifier: a generator
 * that returns the held-out emoji themselves scores exactly the real ceiling; the tiny PixArt
 * pipeline (16×16 images, resized to the classifier's 64×64) gives figures in range, FED that the
 * test recomputes from the classifier's features, 0 for a set against itself, and images that do not
 * depend on the batch size.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { VelodiffEmojiClassifier } from '../../../src/models/emoji-classifier.js';
import { PixArtPipeline } from '../../../src/pipelines/pixart.js';
import { hostTensor } from '../../../src/runtime/host-tensor.js';
import type { HostTensor } from '../../../src/runtime/host-tensor.js';
import type { ImageTextDataset } from '../../../src/train/data/dataset.js';
import { datasetImage } from '../../../src/train/data/dataset.js';
import { loadEmojiDataset } from '../../../src/train/data/emoji-dataset.js';
import { boxReduce, evaluateTextToImage, pipelineGenerator } from '../../../src/train/eval/evaluate.js';
import type { GenerationRequest, ImageGenerator } from '../../../src/train/eval/evaluate.js';
import { featureStatistics, frechetDistance } from '../../../src/train/eval/fed.js';
import { heldOutSet } from '../../../src/train/eval/held-out.js';
import { accuracyByClass } from '../../../src/train/eval/accuracy.js';
import { classifierInput, datasetClassifierInput } from '../../../src/train/eval/images.js';
import { imagesToRgb } from '../../../src/io/png.js';
import { assertClose } from '../../compare.js';
import { tinyEmojiClassifier } from '../../fixtures/tiny-emoji-classifier.js';
import { tinyPixArtPipeline } from '../../fixtures/tiny-pixart-pipeline.js';
import { testRuntime } from '../../helpers.js';
import { testSeed } from '../../random.js';

let dataset: ImageTextDataset;
let classifier: VelodiffEmojiClassifier;
let pipeline: PixArtPipeline;

before(async () => {
  dataset = await loadEmojiDataset();
  const labelNames = dataset.labelNames;
  assert.ok(labelNames);
  classifier = await VelodiffEmojiClassifier.fromPretrained(
    await tinyEmojiClassifier(labelNames, testSeed('tiny classifier')),
    {
      runtime: testRuntime(),
    },
  );
  pipeline = await PixArtPipeline.fromPretrained(await tinyPixArtPipeline(), { runtime: testRuntime() });
});
after(async () => {
  await pipeline.close();
  await classifier.close();
});

test('the held-out set: validation emoji without skin tones, halves disjoint by emoji, every category referenced', () => {
  const set = heldOutSet(dataset);
  const all = [...set.reference, ...set.prompts];
  assert.equal(new Set(all).size, all.length);
  for (const i of all) {
    assert.equal(dataset.split[i], 'validation');
    assert.ok(!/-1F3F[B-F]/.test(dataset.items[i].id), `${dataset.items[i].id} has a skin tone`);
  }
  const groups = (indices: readonly number[]): Set<string> =>
    new Set(indices.map((i) => dataset.items[i].group));
  const referenceGroups = groups(set.reference);
  assert.ok(
    [...groups(set.prompts)].every((g) => !referenceGroups.has(g)),
    'an emoji is in both halves',
  );
  const categories = new Set(set.reference.map((i) => dataset.items[i].labels?.category));
  assert.equal(categories.size, dataset.labelNames?.category.length);
  const ratio = set.prompts.length / all.length;
  assert.ok(ratio > 0.4 && ratio < 0.6, `prompt half is ${set.prompts.length} of ${all.length}`);
});

test('a generator that draws the held-out emoji themselves scores the real ceiling', async () => {
  const byCaption = new Map(dataset.items.map((item, i) => [item.captions[0], i]));
  const perfect: ImageGenerator = async ({ prompts }) => {
    const size = dataset.size;
    const images = new Float32Array(prompts.length * 3 * size * size);
    prompts.forEach((prompt, n) => {
      const rgb = datasetImage(dataset, byCaption.get(prompt) as number);
      for (let p = 0; p < size * size; p++)
        for (let c = 0; c < 3; c++) images[(n * 3 + c) * size * size + p] = rgb[p * 3 + c] / 255;
    });
    return hostTensor('float32', [prompts.length, 3, size, size], images);
  };
  const result = await evaluateTextToImage({
    dataset,
    classifier,
    generate: perfect,
    samples: 40,
    steps: 1,
    seed: 0,
  });
  assertClose([result.generated.fed], [result.real.fed], {
    rtol: 1e-6,
    atol: 1e-9,
    what: 'FED against real FED',
  });
  assert.equal(result.generated.alignment, result.real.alignment);
  assert.equal(result.generated.subcategoryAlignment, result.real.subcategoryAlignment);
  assert.equal(result.samples, 40);
  for (const c of result.byCategory) assert.equal(c.generated, c.real, c.category);
  assertPerCategoryConsistent(result);
});

/**
 * The per-category alignments recounted from the prompts' own labels: every prompt counted once under
 * its category, and the prompt-weighted mean of the rows is the overall alignment.
 */
function assertPerCategoryConsistent(result: Awaited<ReturnType<typeof evaluateTextToImage>>): void {
  const set = heldOutSet(dataset);
  const names = dataset.labelNames?.category ?? [];
  const counts = new Map<string, number>();
  for (let i = 0; i < result.samples; i++) {
    const item = dataset.items[set.prompts[i % set.prompts.length]];
    const name = names[item.labels?.category ?? -1];
    counts.set(name, (counts.get(name) ?? 0) + 1);
  }
  assert.deepEqual(
    new Map(result.byCategory.map((c) => [c.category, c.prompts])),
    counts,
    'prompts per category',
  );
  for (const key of ['generated', 'real'] as const) {
    const mean = result.byCategory.reduce((sum, c) => sum + c.prompts * c[key], 0) / result.samples;
    const overall = key === 'generated' ? result.generated.alignment : result.real.alignment;
    assertClose([mean], [overall], {
      rtol: 1e-12,
      atol: 1e-12,
      what: `${key} alignment from its categories`,
    });
  }
}

test('accuracyByClass: counts and hits per label, argmax taking the first of a tie', () => {
  // Rows of 3 logits; labels 2, 0, 2, 1, 2 — predictions 2, 0, 0 (tie → first), 2, 2.
  const logits = Float32Array.from([0, 1, 5, 9, 1, 1, 4, 4, 0, 0, 1, 3, -1, -2, 0]);
  const byClass = accuracyByClass(logits, 3, Int32Array.from([2, 0, 2, 1, 2]));
  assert.deepEqual(
    byClass,
    new Map([
      [2, { count: 3, hits: 2 }],
      [0, { count: 1, hits: 1 }],
      [1, { count: 1, hits: 0 }],
    ]),
  );
  assert.throws(() => accuracyByClass(logits, 3, Int32Array.from([0])), /5 rows of logits but 1 labels/);
});

test('the tiny PixArt pipeline: figures in range, FED recomputed from the features, 0 against itself, batch-independent', async () => {
  const recorded: HostTensor[] = [];
  const captured: HostTensor[] = [];
  const requests: GenerationRequest[] = [];
  const generate = pipelineGenerator(pipeline, {
    guidance: 4.5,
    onImages: (images) => captured.push(images),
  });
  const recording: ImageGenerator = async (request) => {
    requests.push(request);
    const images = await generate(request);
    if (request.warmUp !== true) recorded.push(images);
    return images;
  };
  const samples = 12;
  const result = await evaluateTextToImage({
    dataset,
    classifier,
    generate: recording,
    samples,
    steps: 2,
    seed: 7,
    batchSize: 5,
  });
  for (const [name, value] of Object.entries({
    fed: result.generated.fed,
    real_fed: result.real.fed,
  }))
    assert.ok(Number.isFinite(value) && value >= -1e-9, `${name} = ${value}`);
  for (const value of [
    result.generated.alignment,
    result.generated.subcategoryAlignment,
    result.real.alignment,
    result.real.subcategoryAlignment,
  ]) {
    assert.ok(value >= 0 && value <= 1, `alignment ${value}`);
  }
  assert.ok(result.msPerImage > 0 && Number.isFinite(result.msPerImage));
  assertPerCategoryConsistent(result);
  // 12 images and 8 feature dims: full rank, no ε.
  assert.equal(result.fedEpsilon, 0);

  // One warm-up per batch shape (5 and 12 mod 5 = 2), flagged, 1 step, before the measured calls;
  // onImages sees only the measured calls' images, which the bench's PSNR, SSIM and grids use.
  assert.deepEqual(
    requests.map((r) => [r.prompts.length, r.steps, r.warmUp === true]),
    [
      [5, 1, true],
      [2, 1, true],
      [5, 2, false],
      [5, 2, false],
      [2, 2, false],
    ],
  );
  assert.equal(captured.length, recorded.length);
  captured.forEach((images, k) => assert.deepEqual(images.data, recorded[k].data));

  // The same FED from the recorded images, classified here.
  const rgb = recorded.flatMap((images) => imagesToRgb(images.data as Float32Array, images.shape));
  assert.equal(rgb.length, samples);
  assert.deepEqual(recorded[0].shape.slice(2), [16, 16]);
  const dims = classifier.config.featureDim;
  const generated = await classifier.classify(await classifierInput(rgb, 16, 16, 64));
  const referenceImages = await classifier.classify(
    await datasetClassifierInput(dataset, heldOutSet(dataset).reference, 64),
  );
  const generatedStats = featureStatistics(generated.features, samples, dims);
  const reference = featureStatistics(referenceImages.features, referenceImages.count, dims);
  assertClose([frechetDistance(generatedStats, reference).distance], [result.generated.fed], {
    rtol: 1e-9,
    atol: 1e-12,
    what: 'FED',
  });
  const self = frechetDistance(generatedStats, generatedStats).distance;
  let trace = 0;
  for (let d = 0; d < dims; d++) trace += generatedStats.covariance[d * dims + d];
  // Within rounding of 0 even for the tiny random classifier's nearly singular covariance (fed.ts
  // takes no square root of a squared small eigenvalue; before it did, one seed gave 3.3e-9·trace).
  assert.ok(
    Math.abs(self) <= 1e-12 * Math.max(trace, 1e-12),
    `FED of the generated set with itself: ${self} (trace ${trace})`,
  );

  // Image i comes from seed + i whatever the batch: another batch size gives the same figures.
  const again = await evaluateTextToImage({
    dataset,
    classifier,
    generate,
    samples,
    steps: 2,
    seed: 7,
    batchSize: 4,
  });
  assertClose([again.generated.fed], [result.generated.fed], {
    rtol: 1e-5,
    atol: 1e-9,
    what: 'FED with batch 4 against batch 5',
  });
  assert.equal(again.generated.alignment, result.generated.alignment);
});

test('boxReduce: each output pixel is the mean of its factor × factor block', () => {
  // One image, two channels, 4×4 → 2×2.
  const data = Float32Array.from({ length: 2 * 16 }, (_, i) => i);
  const out = boxReduce(hostTensor('float32', [1, 2, 4, 4], data), 2);
  assert.deepEqual(out.shape, [1, 2, 2, 2]);
  // Channel 0, block (0,0): 0, 1, 4, 5 → 2.5; block (1,1): 10, 11, 14, 15 → 12.5; channel 1 is +16.
  assert.deepEqual([...(out.data as Float32Array)], [2.5, 4.5, 10.5, 12.5, 18.5, 20.5, 26.5, 28.5]);
  assert.throws(
    () => boxReduce(hostTensor('float32', [1, 1, 3, 3], new Float32Array(9)), 2),
    /not a multiple of 2/,
  );
});

test('pipelineGenerator at twice the model size: the images come back at the model size, a size that is not a multiple is refused', async () => {
  const runtime = testRuntime();
  const pipeline = await PixArtPipeline.fromPretrained(await tinyPixArtPipeline(), { runtime });
  try {
    const size = pipeline.defaultSize;
    const generate = pipelineGenerator(pipeline, { guidance: 1, size: 2 * size });
    const images = await generate({ prompts: ['red heart'], seeds: [1], steps: 2 });
    assert.deepEqual(images.shape, [1, 3, size, size]);
    assert.throws(() => pipelineGenerator(pipeline, { guidance: 1, size: size + 1 }), /whole multiple of/);
  } finally {
    await pipeline.close();
  }
});
