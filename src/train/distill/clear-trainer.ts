/**
 * `distill-clear` runs: a CLEAR student of a PixArt teacher, as runTraining drives any kind. The
 * teacher first draws one sample per training image's caption (teacher-samples.ts, into the run's
 * `teacher-samples/`, resumable); each batch of the loader's images then becomes the step's inputs
 * from those samples (clearDistillBatch), and the step is clear.ts's. The trained student ships as
 * CLEAR's weights file — the self-attention projections and pooling weights under the base model's
 * names, loaded non-strictly over the teacher (`attention: { kind: 'clear', weights }`,
 * `--attention clear:R[:D] --attention-weights FILE`) — with a config.json of its radius, down factor
 * and teacher.
 */
import { mkdir } from 'node:fs/promises';
import { basename, join, resolve } from 'node:path';

import { FileFormatError, OptionError } from '../../errors.js';
import { writeFileAtomic } from '../../io/atomic.js';
import { WeightStore } from '../../io/diffusers.js';
import type { ModelConfig } from '../../io/diffusers.js';
import { writeSafetensors } from '../../io/safetensors.js';
import { PixArtPipeline } from '../../pipelines/pixart.js';
import { TorchGenerator } from '../../random/torch-generator.js';
import type { Runtime } from '../../runtime/runtime.js';
import { DPMSolverMultistepScheduler } from '../../schedulers/dpm-solver-multistep.js';
import type { ClearDistillModelConfig } from '../config.js';
import type { ImageTextDataset } from '../data/dataset.js';
import { splitIndices } from '../data/dataset.js';
import type { RunTrainer } from '../run-trainers.js';
import type { SampleOptions } from '../trainers/text-to-image.js';
import { componentParameters } from '../trainers/text-to-image.js';
import { readExactWeights } from '../init-weights.js';
import { studentSampleGrid } from './student-grid.js';
import { prefixed, studentToStartFrom } from './student-init.js';
import {
  STUDENT,
  clearDistillBatch,
  clearDistillStepSpec,
  clearStudentInit,
  distillPredictionType,
} from './clear.js';
import { teacherSamples } from './teacher-samples.js';
import type { StudentDType } from './student-file.js';
import { studentTensor } from './student-file.js';
import { TEACHER_FILE, teacherRecord } from '../../pipelines/students.js';

/** The student's file in a saved model folder: CLEAR's layout, named after its window. */
export function clearWeightsFile(radius: number, downFactor: number): string {
  return `clear_local_${radius}${downFactor > 1 ? `_down_${downFactor}` : ''}.safetensors`;
}

export interface ClearDistillTrainerOptions {
  readonly model: ClearDistillModelConfig;
  readonly dataset: ImageTextDataset;
  readonly runtime: Runtime;
  readonly seed: number;
  /** The run folder: the teacher's samples are kept in its `teacher-samples/`. */
  readonly output: string;
  readonly sample: SampleOptions;
  readonly onSamplesProgress?: (done: number, total: number) => void;
  /** A stop asked for while the teacher samples: sampling ends with PreparationStopped. */
  readonly stop?: { readonly requested: boolean };
}

/** The student's weights under the base model's names (CLEAR's file), from a run's `student.` parameters. */
function studentWeights(weights: ReadonlyMap<string, Float32Array>): Map<string, Float32Array> {
  const out = new Map<string, Float32Array>();
  for (const [name, value] of weights)
    if (name.startsWith(`${STUDENT}.`)) out.set(name.slice(STUDENT.length + 1), value);
  return out;
}

async function writeStudent(
  path: string,
  weights: ReadonlyMap<string, Float32Array>,
  shapes: ReadonlyMap<string, readonly number[]>,
  dtype: StudentDType,
): Promise<void> {
  const tensors: Parameters<typeof writeSafetensors>[1] = {};
  for (const [name, data] of studentWeights(weights)) {
    tensors[name] = studentTensor(data, shapes.get(`${STUDENT}.${name}`) ?? [data.length], dtype);
  }
  await writeSafetensors(path, tensors);
}

export async function clearDistillTrainer(o: ClearDistillTrainerOptions): Promise<RunTrainer> {
  const { model, dataset, runtime } = o;
  const teacherDir = resolve(model.teacher);
  const pipeline = await PixArtPipeline.fromPretrained(teacherDir, { runtime });
  try {
    const transformer = pipeline.transformer.config;
    const store = await WeightStore.open(join(teacherDir, 'transformer'));
    const teacher = new Map<string, Float32Array>();
    try {
      for (const name of store.names()) teacher.set(name, await store.readFloat32(name));
    } finally {
      await store.close();
    }

    const train = splitIndices(dataset, 'train');
    if (train.length === 0)
      throw new OptionError('distill clear: the data set has no training images', 'TRAIN_CONFIG');
    const sampleOf = new Map(train.map((index, k) => [index, k]));
    const samples = await teacherSamples({
      pipeline,
      prompts: train.map((i) => dataset.items[i].captions[0]),
      dir: join(o.output, 'teacher-samples'),
      steps: model.teacherSteps,
      guidance: model.teacherGuidance,
      seed: o.seed,
      onProgress: o.onSamplesProgress,
      ...(o.stop ? { stop: o.stop } : {}),
    });
    const latentSize = samples.latents.shape[2] as number;
    const textLength = samples.promptEmbeds.shape[1] as number;
    // teacherSamples has checked that the teacher has a text encoder.
    const encodedEmpty = await pipeline.promptEncoder!.encode([''], textLength);
    const unconditional = {
      embeds: encodedEmpty.embeds.data as Float32Array,
      mask: encodedEmpty.mask.data as Float32Array,
    };
    const spec = clearDistillStepSpec({
      transformer,
      radius: model.radius,
      downFactor: model.downFactor,
      latentSize,
      textLength,
      ...(model.featureLayers ? { featureLayers: model.featureLayers } : {}),
      ...(model.lossWeights ? { weights: model.lossWeights } : {}),
    });
    // The pipeline's parsed config: diffusers writes Python's -Infinity into scheduler configs.
    const schedulerConfig = { ...pipeline.scheduler.config } as Record<string, unknown>;
    const alphasCumprod = new DPMSolverMultistepScheduler(schedulerConfig).alphasCumprod;
    const predictionType = distillPredictionType(schedulerConfig);
    const generator = new TorchGenerator(o.seed);
    const attention = {
      kind: 'clear' as const,
      radius: model.radius,
      ...(model.downFactor > 1 ? { downFactor: model.downFactor } : {}),
    };
    const teacherOf = await teacherRecord(teacherDir);
    const modelConfig: ModelConfig = {
      _class_name: 'ClearAttentionWeights',
      teacher: teacherDir,
      radius: model.radius,
      down_factor: model.downFactor,
      weights: clearWeightsFile(model.radius, model.downFactor),
    };

    return {
      modelConfig,
      generators: { batch: generator },
      initialParameters: () => clearStudentInit(teacher, spec),
      stepSpec: (batchSize) => ({ ...spec, dims: { B: batchSize } }),
      makeBatch(batch) {
        const indices = batch.indices.map((i) => {
          const k = sampleOf.get(i);
          if (k === undefined) {
            throw new OptionError(
              `distill clear: image ${i} of the data set is not in the training split the teacher sampled`,
              'TRAIN_CONFIG',
            );
          }
          return k;
        });
        return clearDistillBatch(samples, indices, generator, alphasCumprod, predictionType, {
          dropped: batch.dropped,
          unconditional,
        });
      },
      sampleGrid: (weights, step) =>
        studentSampleGrid({
          teacherDir,
          runtime,
          sample: o.sample,
          channels: transformer.inChannels,
          side: latentSize,
          vaeScaleFactor: pipeline.vaeScaleFactor,
          maxTextLength: textLength,
          title: [
            `step ${step}`,
            `CLEAR r=${model.radius}${model.downFactor > 1 ? ` d=${model.downFactor}` : ''}, ${o.sample.steps} steps, CFG ${o.sample.guidance}`,
          ],
          write: async (dir) => {
            const file = join(dir, 'student.safetensors');
            await writeStudent(file, weights, spec.shapes, 'F32');
            return { runOptions: { attention: { ...attention, weights: file } } };
          },
        }),
      async readStudent(dir) {
        const student = await studentToStartFrom(dir, 'clear', teacherOf);
        if (student.radius !== model.radius || student.downFactor !== model.downFactor) {
          const path = join(student.dir, 'config.json');
          throw new FileFormatError(
            `${path}: a CLEAR student of radius ${student.radius} and down factor ${student.downFactor}; ` +
              `this run's are ${model.radius} and ${model.downFactor}`,
            'INIT_STUDENT_CONFIG',
            path,
          );
        }
        const shapes = componentParameters(spec.shapes, STUDENT);
        const file = basename(student.weights).replace(/\.safetensors$/, '');
        return prefixed(await readExactWeights(student.dir, shapes, 'INIT_STUDENT', file), STUDENT);
      },
      async saveModel(dir, weights) {
        await mkdir(dir, { recursive: true });
        await writeStudent(
          join(dir, clearWeightsFile(model.radius, model.downFactor)),
          weights,
          spec.shapes,
          'F16',
        );
        // The shipped folder names its teacher as teacher.json does, not by this machine's path.
        const shipped = { ...modelConfig, teacher: teacherOf.teacher };
        await writeFileAtomic(join(dir, 'config.json'), `${JSON.stringify(shipped, null, 2)}\n`);
        await writeFileAtomic(join(dir, TEACHER_FILE), `${JSON.stringify(teacherOf, null, 2)}\n`);
      },
    };
  } finally {
    await pipeline.close();
  }
}
