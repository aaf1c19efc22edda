/**
 * `distill-linfusion` runs: a LinFusion student of a PixArt teacher, as runTraining drives any kind.
 * LinFusion learns from real images (§2.4): each batch is the data set's images as the teacher's VAE
 * encodes them (the latent cache, one posterior sample per use, times the scaling factor) with their
 * first caption as the teacher's frozen text encoder encodes it (once, at the start); the step is
 * linfusion.ts's. The trained student ships as the authors' folder layout (config.json with
 * `modules_list`, diffusion_pytorch_model.safetensors), which `--attention linfusion
 * --attention-weights DIR` and `--accel linfusion` load.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

import { OptionError } from '../../errors.js';
import { writeFileAtomic } from '../../io/atomic.js';
import { WeightStore, readConfig } from '../../io/diffusers.js';
import type { ModelConfig } from '../../io/diffusers.js';
import { TEACHER_FILE, teacherRecord } from '../../pipelines/students.js';
import { PixArtPipeline } from '../../pipelines/pixart.js';
import { TorchGenerator } from '../../random/torch-generator.js';
import { hostTensor } from '../../runtime/host-tensor.js';
import type { Runtime } from '../../runtime/runtime.js';
import { DPMSolverMultistepScheduler } from '../../schedulers/dpm-solver-multistep.js';
import type { LinFusionDistillModelConfig } from '../config.js';
import type { ImageTextDataset } from '../data/dataset.js';
import { splitIndices } from '../data/dataset.js';
import { defaultCacheDir } from '../data/cache.js';
import { encodeDatasetLatents } from '../latent-cache.js';
import type { RunTrainer } from '../run-trainers.js';
import type { SampleGrid } from '../sample-grid.js';
import type { SampleOptions } from '../trainers/text-to-image.js';
import { renderImages } from '../trainers/text-to-image.js';
import { clearDistillBatch, distillPredictionType } from './clear.js';
import {
  linfusionDistillStepSpec,
  linfusionMidDim,
  linfusionModulesList,
  linfusionStudentInit,
  writeLinFusionFolder,
} from './linfusion.js';

export interface LinFusionDistillTrainerOptions {
  readonly model: LinFusionDistillModelConfig;
  readonly dataset: ImageTextDataset;
  readonly runtime: Runtime;
  readonly seed: number;
  readonly sample: SampleOptions;
  /** Where the VAE latents are cached (false: in memory only; default: the user cache). */
  readonly cacheDir?: string | false;
  readonly onEncodeProgress?: (done: number, total: number) => void;
  readonly onWarning?: (message: string) => void;
}

export async function linfusionDistillTrainer(o: LinFusionDistillTrainerOptions): Promise<RunTrainer> {
  const { model, dataset, runtime } = o;
  const teacherDir = resolve(model.teacher);
  const pipeline = await PixArtPipeline.fromPretrained(teacherDir, { runtime });
  try {
    const transformer = pipeline.transformer.config;
    const encoder = pipeline.promptEncoder;
    if (!encoder) {
      throw new OptionError(
        `distill linfusion: the teacher (${teacherDir}) has no text encoder, which the captions need`,
        'DISTILL_TEACHER',
      );
    }
    const store = await WeightStore.open(join(teacherDir, 'transformer'));
    const teacher = new Map<string, Float32Array>();
    try {
      for (const name of store.names()) teacher.set(name, await store.readFloat32(name));
    } finally {
      await store.close();
    }
    const train = splitIndices(dataset, 'train');
    if (train.length === 0)
      throw new OptionError('distill linfusion: the data set has no training images', 'TRAIN_CONFIG');

    const latents = await encodeDatasetLatents(dataset, join(teacherDir, 'vae'), {
      runtime,
      cacheDir: o.cacheDir === false ? false : (o.cacheDir ?? defaultCacheDir()),
      onProgress: o.onEncodeProgress,
    });
    const [, channels, side] = latents.shape;
    if (channels !== transformer.inChannels) {
      throw new OptionError(
        `distill linfusion: the teacher's VAE gives ${channels}-channel latents, its transformer takes ${transformer.inChannels}`,
        'DISTILL_TEACHER',
      );
    }
    // The first caption of every training image, encoded once by the frozen text encoder.
    const length = pipeline.defaultMaxSequenceLength;
    const width = transformer.captionChannels;
    const embeds = new Float32Array(train.length * length * width);
    const mask = new Float32Array(train.length * length);
    for (let start = 0; start < train.length; start += 64) {
      const prompts = train.slice(start, start + 64).map((i) => dataset.items[i].captions[0]);
      const encoded = await encoder.encode(prompts, length);
      embeds.set(encoded.embeds.data as Float32Array, start * length * width);
      mask.set(encoded.mask.data as Float32Array, start * length);
    }
    const sampleOf = new Map(train.map((index, k) => [index, k]));

    const midDim = linfusionMidDim(transformer.innerDim, model.midDimScale);
    const spec = linfusionDistillStepSpec({ transformer, latentSize: side, textLength: length, midDim });
    const modules = linfusionModulesList(transformer, midDim);
    const schedulerConfig = (await readConfig(
      join(teacherDir, 'scheduler'),
      'scheduler_config.json',
    )) as Record<string, unknown>;
    const alphasCumprod = new DPMSolverMultistepScheduler(schedulerConfig).alphasCumprod;
    const predictionType = distillPredictionType(schedulerConfig);
    const generator = new TorchGenerator(o.seed);
    const teacherOf = await teacherRecord(teacherDir);
    const modelConfig: ModelConfig = { _class_name: 'LinFusion', modules_list: modules };
    const per = channels * side * side;

    return {
      modelConfig,
      generators: { batch: generator },
      initialParameters: () => {
        const { values, unfolded } = linfusionStudentInit(teacher, spec, new TorchGenerator(o.seed));
        if (unfolded.length > 0)
          o.onWarning?.(
            `distill linfusion: singular projections, their biases dropped at initialisation: ${unfolded.join(', ')}`,
          );
        return values;
      },
      stepSpec: (batchSize) => ({ ...spec, dims: { B: batchSize } }),
      makeBatch(batch) {
        const indices = batch.indices.map((i) => {
          const k = sampleOf.get(i);
          if (k === undefined) {
            throw new OptionError(
              `distill linfusion: image ${i} of the data set is not in the training split`,
              'TRAIN_CONFIG',
            );
          }
          return k;
        });
        // x₀: one posterior sample per image, drawn first, times the scaling factor.
        const n = indices.length;
        const posterior = generator.randn([n, channels, side, side]);
        const x0 = new Float32Array(n * per);
        batch.indices.forEach((item, b) => {
          const from = item * per;
          for (let i = 0; i < per; i++) {
            const sample =
              latents.mean[from + i] + Math.fround(latents.std[from + i] * posterior[b * per + i]);
            x0[b * per + i] = Math.fround(sample * latents.scalingFactor);
          }
        });
        const gather = (source: Float32Array, size: number): Float32Array => {
          const out = new Float32Array(n * size);
          indices.forEach((k, b) => out.set(source.subarray(k * size, (k + 1) * size), b * size));
          return out;
        };
        return clearDistillBatch(
          {
            latents: hostTensor('float32', [n, channels, side, side], x0),
            promptEmbeds: hostTensor('float32', [n, length, width], gather(embeds, length * width)),
            promptAttentionMask: hostTensor('float32', [n, length], gather(mask, length)),
          },
          indices.map((_, b) => b),
          generator,
          alphasCumprod,
          predictionType,
        );
      },
      async sampleGrid(weights, step): Promise<SampleGrid> {
        const root = await mkdtemp(join(tmpdir(), 'velodiff-linfusion-grid-'));
        // At the training resolution.
        const size = side * pipeline.vaeScaleFactor;
        try {
          await writeLinFusionFolder(root, weights, spec.shapes, modules);
          const images = await renderImages(teacherDir, runtime, {
            ...o.sample,
            size,
            latentShape: [channels, side, side],
            maxTextLength: length,
            runOptions: { attention: { kind: 'linfusion', weights: root } },
          });
          return {
            title: [
              `step ${step}`,
              `LinFusion (MLP width ${midDim}), ${o.sample.steps} steps, CFG ${o.sample.guidance}`,
            ],
            columnLabels: o.sample.seeds.map((seed) => `seed ${seed}`),
            rows: o.sample.prompts.map((prompt, row) => ({
              label: prompt,
              cells: images[row].map((data) => ({ image: { width: size, height: size, data } })),
            })),
          };
        } finally {
          await rm(root, { recursive: true, force: true });
        }
      },
      async saveModel(dir, weights) {
        await writeLinFusionFolder(dir, weights, spec.shapes, modules);
        await writeFileAtomic(join(dir, TEACHER_FILE), `${JSON.stringify(teacherOf, null, 2)}\n`);
      },
    };
  } finally {
    await pipeline.close();
  }
}
