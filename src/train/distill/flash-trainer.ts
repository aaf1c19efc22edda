/**
 * `distill-flash` runs: a Flash Diffusion LoRA student of a PixArt teacher, as runTraining drives
 * any kind. Each batch (makeBatch) draws, in a fixed order from the checkpointed generator: the start
 * index k of the teacher's 16-step trailing DPM-Solver++ schedule from the phase's four-mode
 * distribution; the data latents (one posterior sample each) and the noise of x_t; the teacher's
 * guidance w ~ U[2, 9]; then runs the teacher's remaining K − k solver steps with CFG from x_t (x̃₀,
 * no gradients); then draws the DMD timesteps, noise and guidance and the GAN timesteps and noise.
 * The step is flash.ts's. The trained student ships as a diffusers LoRA file,
 * `pytorch_lora_weights.safetensors` (`transformer.<module>.lora_A/lora_B.weight` and `.alpha`), which
 * `--flash FILE` and `--accel flash` load (LCM, 4 steps, no CFG).
 */
import { mkdir } from 'node:fs/promises';
import { join, resolve } from 'node:path';

import { FileFormatError, OptionError } from '../../errors.js';
import { writeFileAtomic } from '../../io/atomic.js';
import type { ModelConfig } from '../../io/diffusers.js';
import { WeightStore, readConfig } from '../../io/diffusers.js';
import { writeSafetensors } from '../../io/safetensors.js';
import { flashScheduler } from '../../lora/flash.js';
import { parseEmojiClassifierConfig } from '../../models/emoji-classifier.js';
import { parseAutoencoderKLConfig } from '../../models/vae/config.js';
import { denoise } from '../../pipelines/denoise.js';
import { FLASH_LORA_FILE, TEACHER_FILE, teacherRecord } from '../../pipelines/students.js';
import { TorchGenerator } from '../../random/torch-generator.js';
import type { HostTensor } from '../../runtime/host-tensor.js';
import { hostTensor } from '../../runtime/host-tensor.js';
import type { Runtime } from '../../runtime/runtime.js';
import { DPMSolverMultistepScheduler } from '../../schedulers/dpm-solver-multistep.js';
import type { SchedulerConfigInput } from '../../schedulers/index.js';
import type { FlashDistillModelConfig } from '../config.js';
import type { ImageTextDataset } from '../data/dataset.js';
import { shippedClassifierDir } from '../eval/shipped-classifier.js';
import type { RunTrainer } from '../run-trainers.js';
import type { SampleOptions } from '../trainers/text-to-image.js';
import { readExactWeights } from '../init-weights.js';
import { studentSampleGrid } from './student-grid.js';
import { studentToStartFrom } from './student-init.js';
import { TEACHER } from './clear.js';
import {
  CLASSIFIER,
  DISCRIMINATOR,
  FLASH_PIXART,
  LORA_PREFIX,
  VAE,
  flashDistillStepSpec,
  flashIndexProbabilities,
  flashPhase,
  loraNames,
  pickIndex,
} from './flash.js';
import type { FlashLoraModule } from './flash.js';
import type { StudentDType } from './student-file.js';
import { studentTensor } from './student-file.js';
import { captionRows, gatherRows, posteriorLatents, realDistillData } from './real-data.js';

export interface FlashDistillTrainerOptions {
  readonly model: FlashDistillModelConfig;
  readonly dataset: ImageTextDataset;
  readonly runtime: Runtime;
  readonly seed: number;
  /** The run's updates: the phases last a quarter of them unless the config says otherwise. */
  readonly steps: number;
  readonly sample: SampleOptions;
  readonly cacheDir?: string | false;
  readonly onEncodeProgress?: (done: number, total: number) => void;
}

async function readFolder(dir: string, prefix: string): Promise<Map<string, Float32Array>> {
  const store = await WeightStore.open(dir);
  const out = new Map<string, Float32Array>();
  try {
    for (const name of store.names()) out.set(`${prefix}.${name}`, await store.readFloat32(name));
  } finally {
    await store.close();
  }
  return out;
}

/** The student's LoRA as a diffusers file: `transformer.<path>.lora_A.weight`, `.lora_B.weight` and `.alpha`. */
export async function writeFlashLora(
  path: string,
  weights: ReadonlyMap<string, Float32Array>,
  modules: readonly FlashLoraModule[],
  shapes: ReadonlyMap<string, readonly number[]>,
  alpha: number,
  dtype: StudentDType = 'F16',
): Promise<void> {
  const tensors: Parameters<typeof writeSafetensors>[1] = {};
  for (const m of modules) {
    const names = loraNames(m.path);
    for (const [role, name] of [
      ['lora_A', names.down],
      ['lora_B', names.up],
    ] as const) {
      const data = weights.get(name);
      const shape = shapes.get(name);
      if (!data || !shape) throw new OptionError(`flash: the weights have no '${name}'`);
      tensors[`transformer.${m.path}.${role}.weight`] = studentTensor(data, shape, dtype);
    }
    tensors[`transformer.${m.path}.alpha`] = { dtype: 'F32', shape: [], data: Float32Array.of(alpha) };
  }
  await writeSafetensors(path, tensors);
}

export async function flashDistillTrainer(o: FlashDistillTrainerOptions): Promise<RunTrainer> {
  const { model, dataset, runtime } = o;
  const what = 'distill flash';
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
    const classifierDir = model.classifier === null ? shippedClassifierDir() : resolve(model.classifier);
    const classifierRaw = await readConfig(classifierDir);
    const classifierConfig = parseEmojiClassifierConfig(classifierRaw, join(classifierDir, 'config.json'));
    const vaeDir = join(teacherDir, 'vae');
    const vaeConfig = parseAutoencoderKLConfig(await readConfig(vaeDir), join(vaeDir, 'config.json'));
    const frozen = new Map<string, Float32Array>([
      ...[...data.teacher].map(([name, value]) => [`${TEACHER}.${name}`, value] as const),
      ...(await readFolder(vaeDir, VAE)),
      ...(await readFolder(classifierDir, CLASSIFIER)),
    ]);
    const spec = flashDistillStepSpec({
      transformer,
      vae: vaeConfig,
      classifier: classifierConfig,
      latentSize: side,
      textLength: length,
      loraRank: model.loraRank,
      loraAlpha: model.loraAlpha,
      teacherShapes: data.teacherShapes,
    });
    const phaseSteps = model.phaseSteps ?? Math.max(1, Math.ceil(o.steps / FLASH_PIXART.phases.length));
    const K = model.teacherSteps;
    const schedulerConfig = {
      ...data.schedulerConfig,
      algorithm_type: 'dpmsolver++' as const,
      solver_order: 2,
      timestep_spacing: 'trailing' as const,
    } as ConstructorParameters<typeof DPMSolverMultistepScheduler>[0];
    const solver = new DPMSolverMultistepScheduler(schedulerConfig);
    solver.setTimesteps(K);
    const schedule = [...solver.timesteps];
    const lcm = flashScheduler(data.schedulerConfig as SchedulerConfigInput);
    const alphas = data.alphasCumprod;
    const vParam = data.predictionType === 'v_prediction';
    // x₀ = a·x + b·output: ε: (x − √(1−ᾱ)·ε)/√ᾱ; v: √ᾱ·x − √(1−ᾱ)·v.
    const x0Coefficients = (t: number): [number, number] => {
      const a = Math.sqrt(alphas[t]);
      const s = Math.sqrt(1 - alphas[t]);
      return vParam ? [a, -s] : [1 / a, -s / a];
    };
    const generator = new TorchGenerator(o.seed);
    const teacherOf = await teacherRecord(teacherDir);
    const modelConfig: ModelConfig = {
      _class_name: 'FlashDiffusionLora',
      teacher: teacherDir,
      lora_rank: model.loraRank,
      lora_alpha: model.loraAlpha,
      target_modules: [...FLASH_PIXART.targetModules],
    };
    const vector = (values: ArrayLike<number>): HostTensor =>
      hostTensor('float32', [values.length], Float32Array.from(values));

    /** The teacher's remaining solver steps with CFG from x_t at schedule index k. */
    async function rollout(
      xt: Float32Array,
      n: number,
      k: number,
      w: number,
      text: HostTensor,
      mask: HostTensor,
    ): Promise<Float32Array> {
      const scheduler = new DPMSolverMultistepScheduler(schedulerConfig);
      scheduler.setTimesteps(K);
      scheduler.setBeginIndex(k);
      const negText = hostTensor('float32', [n, length, width], repeat(data.empty.embeds, n));
      const negMask = hostTensor('float32', [n, length], repeat(data.empty.mask, n));
      const bothText = hostTensor('float32', [2 * n, length, width], concat2(negText, text));
      const bothMask = hostTensor('float32', [2 * n, length], concat2(negMask, mask));
      const out = await denoise({
        scheduler,
        timesteps: schedule.slice(k),
        latents: hostTensor('float32', [n, channels, side, side], xt),
        generator: new TorchGenerator(0),
        eta: 0,
        guidanceScale: w,
        latentChannels: channels,
        cfgAt: () => true,
        predict: async (modelInput, t) => {
          const m = modelInput.shape[0];
          const result = await pipeline.transformer.step({
            hidden_states: modelInput,
            timestep: hostTensor('float32', [m], new Float32Array(m).fill(t)),
            encoder_hidden_states: bothText,
            encoder_attention_mask: bothMask,
          });
          return result.host.sample;
        },
      });
      return out.data as Float32Array;
    }

    return {
      modelConfig,
      generators: { batch: generator },
      initialParameters: (seed) => {
        const init = new TorchGenerator(seed);
        const values = new Map(frozen);
        for (const [name, shape] of [...spec.shapes].sort(([a], [b]) => a.localeCompare(b))) {
          if (values.has(name)) continue;
          const count = shape.reduce((a, b) => a * b, 1);
          if (!name.startsWith(`${LORA_PREFIX}.`) && !name.startsWith(`${DISCRIMINATOR}.`))
            throw new OptionError(`${what}: no value for the frozen parameter '${name}'`, 'DISTILL_TEACHER');
          if (name.endsWith('.lora_B.weight')) values.set(name, new Float32Array(count));
          else if (/\.norm\.weight$/.test(name)) values.set(name, new Float32Array(count).fill(1));
          else if (/\.norm\.bias$/.test(name)) values.set(name, new Float32Array(count));
          else {
            // LoRA A (PEFT) and the discriminator's convolutions (PyTorch): U(−1/√fan_in, 1/√fan_in).
            const fanIn = shape.slice(1).reduce((a, b) => a * b, 1);
            const bound = 1 / Math.sqrt(fanIn);
            values.set(
              name,
              Float32Array.from(init.rand([count]), (u) => (2 * u - 1) * bound),
            );
          }
        }
        return values;
      },
      stepSpec: (batchSize) => ({ ...spec, dims: { B: batchSize } }),
      async makeBatch(batch, step) {
        const rows = captionRows(data, batch.indices, what);
        const n = rows.length;
        const phase = FLASH_PIXART.phases[flashPhase(step, phaseSteps)];
        const k = pickIndex(flashIndexProbabilities(K, phase.modeProbs), generator.rand([1])[0]);
        const t = schedule[k];
        const z = posteriorLatents(data, batch.indices, generator);
        const eps = generator.randn([n, channels, side, side]);
        const sa = Math.fround(Math.sqrt(alphas[t]));
        const s = Math.fround(Math.sqrt(1 - alphas[t]));
        // At k = 0 the authors start from pure noise.
        const xt =
          k === 0 ? Float32Array.from(eps) : Float32Array.from(z, (v, i) => Math.fround(sa * v + s * eps[i]));
        const [gMin, gMax] = model.guidance;
        const w = gMin + (gMax - gMin) * generator.rand([1])[0];
        const text = hostTensor('float32', [n, length, width], gatherRows(data.embeds, rows, length * width));
        const mask = hostTensor('float32', [n, length], gatherRows(data.mask, rows, length));
        const teacherX0 = await rollout(xt, n, k, w, text, mask);

        const dmdT = Array.from(generator.rand([n]), (u) => Math.min(999, Math.floor(u * 1000)));
        const dmdNoise = generator.randn([n, channels, side, side]);
        const dmdW = gMin + (gMax - gMin) * generator.rand([1])[0];
        const ganT = Array.from(
          generator.rand([n]),
          (u) => FLASH_PIXART.ganTimesteps[Math.min(3, Math.floor(u * 4))],
        );
        const ganNoise = generator.randn([n, channels, side, side]);

        const { cSkip, cOut } = lcm.boundaryConditionScalings(t);
        const [a, b] = x0Coefficients(t);
        const dmd = dmdT.map(x0Coefficients);
        const latent = (values: Float32Array): HostTensor =>
          hostTensor('float32', [n, channels, side, side], values);
        return {
          hidden_states: latent(xt),
          timestep: vector(new Array(n).fill(t)),
          encoder_hidden_states: text,
          encoder_attention_mask: mask,
          negative_encoder_hidden_states: hostTensor(
            'float32',
            [n, length, width],
            repeat(data.empty.embeds, n),
          ),
          negative_encoder_attention_mask: hostTensor('float32', [n, length], repeat(data.empty.mask, n)),
          teacher_x0: latent(teacherX0),
          real_latents: latent(z),
          c_skip: vector(new Array(n).fill(cSkip)),
          c_out: vector(new Array(n).fill(cOut)),
          x0_a: vector(new Array(n).fill(a)),
          x0_b: vector(new Array(n).fill(b)),
          dmd_timestep: vector(dmdT),
          dmd_noise: latent(dmdNoise),
          dmd_alpha: vector(dmdT.map((tau) => Math.sqrt(alphas[tau]))),
          dmd_sigma: vector(dmdT.map((tau) => Math.sqrt(1 - alphas[tau]))),
          dmd_x0_a: vector(dmd.map((c) => c[0])),
          dmd_x0_b: vector(dmd.map((c) => c[1])),
          dmd_guidance: vector(new Array(n).fill(dmdW)),
          gan_timestep: vector(ganT),
          gan_noise: latent(ganNoise),
          gan_alpha: vector(ganT.map((tau) => Math.sqrt(alphas[tau]))),
          gan_sigma: vector(ganT.map((tau) => Math.sqrt(1 - alphas[tau]))),
          loss_weights: vector([phase.distill, phase.dmd, phase.adv]),
        };
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
          title: [`step ${step}`, `Flash Diffusion LoRA (r ${model.loraRank}), LCM, 4 steps, no CFG`],
          write: async (dir) => {
            const file = join(dir, FLASH_LORA_FILE);
            await writeFlashLora(file, weights, spec.loraModules, spec.shapes, model.loraAlpha, 'F32');
            return {
              steps: 4,
              guidance: 0,
              prepare: async (pipe) => {
                await pipe.useFlashDiffusion(file);
              },
            };
          },
        }),
      async readStudent(dir) {
        // The LoRA only: the discriminator is not shipped, and starts as initialParameters draws it.
        const student = await studentToStartFrom(dir, 'flash', teacherOf);
        const shapes = new Map<string, readonly number[]>();
        for (const m of spec.loraModules) {
          const names = loraNames(m.path);
          shapes.set(`transformer.${m.path}.lora_A.weight`, spec.shapes.get(names.down) ?? []);
          shapes.set(`transformer.${m.path}.lora_B.weight`, spec.shapes.get(names.up) ?? []);
          shapes.set(`transformer.${m.path}.alpha`, []);
        }
        const file = await readExactWeights(
          student.dir,
          shapes,
          'INIT_STUDENT',
          FLASH_LORA_FILE.replace(/\.safetensors$/, ''),
        );
        const out = new Map<string, Float32Array>();
        for (const m of spec.loraModules) {
          const alpha = (file.get(`transformer.${m.path}.alpha`) as Float32Array)[0];
          if (alpha !== Math.fround(model.loraAlpha)) {
            throw new FileFormatError(
              `${student.weights}: '${m.path}' has LoRA alpha ${alpha}, and this run's loraAlpha is ` +
                `${model.loraAlpha} (the same A and B would scale the update otherwise)`,
              'INIT_STUDENT_CONFIG',
              student.weights,
            );
          }
          const names = loraNames(m.path);
          out.set(names.down, file.get(`transformer.${m.path}.lora_A.weight`) as Float32Array);
          out.set(names.up, file.get(`transformer.${m.path}.lora_B.weight`) as Float32Array);
        }
        return out;
      },
      async saveModel(dir, weights) {
        await mkdir(dir, { recursive: true });
        await writeFlashLora(
          join(dir, FLASH_LORA_FILE),
          weights,
          spec.loraModules,
          spec.shapes,
          model.loraAlpha,
        );
        // The shipped folder names its teacher as teacher.json does, not by this machine's path.
        const shipped = { ...modelConfig, teacher: teacherOf.teacher };
        await writeFileAtomic(join(dir, 'config.json'), `${JSON.stringify(shipped, null, 2)}\n`);
        await writeFileAtomic(join(dir, TEACHER_FILE), `${JSON.stringify(teacherOf, null, 2)}\n`);
      },
    };
  } catch (error) {
    await pipeline.close();
    throw error;
  }
}

function repeat(values: Float32Array, n: number): Float32Array {
  const out = new Float32Array(values.length * n);
  for (let i = 0; i < n; i++) out.set(values, i * values.length);
  return out;
}

function concat2(a: HostTensor, b: HostTensor): Float32Array {
  const x = a.data as Float32Array;
  const y = b.data as Float32Array;
  const out = new Float32Array(x.length + y.length);
  out.set(x);
  out.set(y, x.length);
  return out;
}
