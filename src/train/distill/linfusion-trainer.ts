/**
 * `distill-linfusion` runs: a LinFusion student of a PixArt teacher, as runTraining drives any kind.
 * LinFusion learns from real images (§2.4): each batch is the data set's images as the teacher's VAE
 * encodes them (the latent cache, one posterior sample per use, times the scaling factor) with their
 * first caption as the teacher's frozen text encoder encodes it (once, at the start); the step is
 * linfusion.ts's. The trained student ships as the authors' folder layout (config.json with
 * `modules_list`, diffusion_pytorch_model.safetensors), which `--attention linfusion
 * --attention-weights DIR` and `--accel linfusion` load.
 */
import { join } from 'node:path';

import { FileFormatError } from '../../errors.js';
import { writeFileAtomic } from '../../io/atomic.js';
import { readJsonFile } from '../../io/diffusers.js';
import type { ModelConfig } from '../../io/diffusers.js';
import { TEACHER_FILE, teacherRecord } from '../../pipelines/students.js';
import { TorchGenerator } from '../../random/torch-generator.js';
import { hostTensor } from '../../runtime/host-tensor.js';
import type { Runtime } from '../../runtime/runtime.js';
import type { LinFusionDistillModelConfig } from '../config.js';
import type { ImageTextDataset } from '../data/dataset.js';
import type { RunTrainer } from '../run-trainers.js';
import type { SampleOptions } from '../trainers/text-to-image.js';
import { componentParameters } from '../trainers/text-to-image.js';
import { studentSampleGrid } from './student-grid.js';
import { clearDistillBatch } from './clear.js';
import { readExactWeights } from '../init-weights.js';
import { describeDifferences, type JsonObject } from '../json-value.js';
import { prefixed, studentToStartFrom } from './student-init.js';
import {
  LINFUSION_PREFIX,
  linfusionDistillStepSpec,
  linfusionMidDim,
  linfusionModulesList,
  linfusionStudentInit,
  writeLinFusionFolder,
} from './linfusion.js';
import { captionRows, gatherRows, posteriorLatents, realDistillData } from './real-data.js';

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
  const what = 'distill linfusion';
  const data = await realDistillData({
    what,
    teacher: model.teacher,
    dataset,
    runtime,
    cacheDir: o.cacheDir,
    onEncodeProgress: o.onEncodeProgress,
  });
  const { pipeline, teacherDir, channels, side, length, width } = data;
  try {
    const transformer = pipeline.transformer.config;
    const midDim = linfusionMidDim(transformer.innerDim, model.midDimScale);
    const spec = linfusionDistillStepSpec({
      transformer,
      latentSize: side,
      textLength: length,
      midDim,
      ...(model.lossWeights ? { weights: model.lossWeights } : {}),
    });
    const modules = linfusionModulesList(transformer, midDim);
    const generator = new TorchGenerator(o.seed);
    const teacherOf = await teacherRecord(teacherDir);
    const modelConfig: ModelConfig = { _class_name: 'LinFusion', modules_list: modules };

    return {
      modelConfig,
      generators: { batch: generator },
      initialParameters: () => {
        const { values, unfolded } = linfusionStudentInit(data.teacher, spec, new TorchGenerator(o.seed));
        if (unfolded.length > 0)
          o.onWarning?.(
            `${what}: singular projections, their biases dropped at initialisation: ${unfolded.join(', ')}`,
          );
        return values;
      },
      stepSpec: (batchSize) => ({ ...spec, dims: { B: batchSize } }),
      makeBatch(batch) {
        const rows = captionRows(data, batch.indices, what);
        // x₀ first (one posterior sample per image), then the noise and timesteps.
        const x0 = posteriorLatents(data, batch.indices, generator);
        const n = rows.length;
        return clearDistillBatch(
          {
            latents: hostTensor('float32', [n, channels, side, side], x0),
            promptEmbeds: hostTensor(
              'float32',
              [n, length, width],
              gatherRows(data.embeds, rows, length * width),
            ),
            promptAttentionMask: hostTensor('float32', [n, length], gatherRows(data.mask, rows, length)),
          },
          rows.map((_, b) => b),
          generator,
          data.alphasCumprod,
          data.predictionType,
          { dropped: batch.dropped, unconditional: data.empty },
        );
      },
      sampleGrid: (weights, step) =>
        studentSampleGrid({
          teacherDir,
          runtime,
          sample: o.sample,
          channels,
          side,
          vaeScaleFactor: pipeline.vaeScaleFactor,
          maxTextLength: length,
          title: [
            `step ${step}`,
            `LinFusion (MLP width ${midDim}), ${o.sample.steps} steps, CFG ${o.sample.guidance}`,
          ],
          write: async (dir) => {
            await writeLinFusionFolder(dir, weights, spec.shapes, modules, 'F32');
            return { runOptions: { attention: { kind: 'linfusion', weights: dir } } };
          },
        }),
      async readStudent(dir) {
        const student = await studentToStartFrom(dir, 'linfusion', teacherOf);
        const configPath = join(student.dir, 'config.json');
        const theirs = (await readJsonFile(configPath, 'a LinFusion config')) as JsonObject;
        const differences = describeDifferences(
          JSON.parse(JSON.stringify(modules)),
          theirs.modules_list,
          ['this run', 'the folder'],
          5,
        );
        if (differences.length > 0) {
          throw new FileFormatError(
            `${configPath}: its modules_list is not this run's (${differences.join('; ')})`,
            'INIT_STUDENT_CONFIG',
            configPath,
          );
        }
        const shapes = componentParameters(spec.shapes, LINFUSION_PREFIX);
        const weights = await readExactWeights(
          student.dir,
          shapes,
          'INIT_STUDENT',
          'diffusion_pytorch_model',
        );
        return prefixed(weights, LINFUSION_PREFIX);
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
