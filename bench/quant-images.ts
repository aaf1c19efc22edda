import { imagesToRgb } from '../src/io/png.js';
import { DiffusionPipeline } from '../src/pipelines/index.js';
import type { HostTensor } from '../src/runtime/host-tensor.js';
import { Runtime } from '../src/runtime/runtime.js';
import type { RgbImage } from '../src/train/eval/image-similarity.js';
import { meanSsim, psnr } from '../src/train/eval/image-similarity.js';
import { median } from './stats.js';

export interface ImageComparisonOptions {
  modelDir: string;
  prompts: readonly string[];
  seeds: readonly number[];
  steps: number;
  guidance: number;
  threads?: number;
}

export interface ImageComparison {
  images: number;
  psnr_median: number;
  psnr_min: number;
  ssim_median: number;
  ssim_min: number;
  /** Per image: prompt, seed, PSNR (dB), SSIM. */
  rows: { prompt: string; seed: number; psnr: number; ssim: number }[];
}

/**
 * The same prompts and seeds through a pipeline loaded in float32 and with `quantize: 'int8'`
 * (same scheduler, same initial noise): PSNR and SSIM of each int8 image against its float32 twin.
 */
export async function compareInt8Images(o: ImageComparisonOptions): Promise<ImageComparison> {
  const runtime = new Runtime({ threads: o.threads ?? 0 });
  const pipes = [
    await DiffusionPipeline.fromPretrained(o.modelDir, { runtime }),
    await DiffusionPipeline.fromPretrained(o.modelDir, { runtime, quantize: 'int8' }),
  ];
  try {
    const rows: ImageComparison['rows'] = [];
    for (const prompt of o.prompts) {
      for (const seed of o.seeds) {
        const pair: RgbImage[] = [];
        for (const pipe of pipes) {
          const { images } = await pipe.run({
            prompt,
            seed,
            numInferenceSteps: o.steps,
            guidanceScale: o.guidance,
          });
          const t = images as HostTensor;
          const [rgb] = imagesToRgb(t.data as Float32Array, t.shape);
          pair.push({ width: t.shape[3], height: t.shape[2], data: rgb });
        }
        rows.push({ prompt, seed, psnr: psnr(pair[0], pair[1]), ssim: meanSsim(pair[0], pair[1]) });
      }
    }
    const p = rows.map((r) => r.psnr);
    const s = rows.map((r) => r.ssim);
    return {
      images: rows.length,
      psnr_median: median(p),
      psnr_min: Math.min(...p),
      ssim_median: median(s),
      ssim_min: Math.min(...s),
      rows,
    };
  } finally {
    for (const pipe of pipes) await pipe.close();
    await runtime.dispose();
  }
}
