/**
 * The sample grid of a distillation run: the teacher's pipeline with the student written to a
 * temporary folder (float32) and loaded as the method loads it, fixed prompts × seeds.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import type { Runtime } from '../../runtime/runtime.js';
import type { SampleGrid } from '../sample-grid.js';
import type { SampleOptions } from '../trainers/text-to-image.js';
import { renderImages } from '../trainers/text-to-image.js';

/** How the student is run: the render options the written student needs. */
export type StudentRender = Partial<
  Pick<Parameters<typeof renderImages>[2], 'runOptions' | 'prepare' | 'steps' | 'guidance'>
>;

export async function studentSampleGrid(o: {
  teacherDir: string;
  runtime: Runtime;
  sample: SampleOptions;
  /** Latent channels and side; the images are side × vaeScaleFactor pixels. */
  channels: number;
  side: number;
  vaeScaleFactor: number;
  maxTextLength: number;
  /** The grid's title lines. */
  title: string[];
  /** Writes the student into `dir` and says how to run it. */
  write: (dir: string) => Promise<StudentRender>;
}): Promise<SampleGrid> {
  const root = await mkdtemp(join(tmpdir(), 'velodiff-student-grid-'));
  const size = o.side * o.vaeScaleFactor;
  try {
    const render = await o.write(root);
    const images = await renderImages(o.teacherDir, o.runtime, {
      ...o.sample,
      ...render,
      size,
      latentShape: [o.channels, o.side, o.side],
      maxTextLength: o.maxTextLength,
    });
    return {
      title: o.title,
      columnLabels: o.sample.seeds.map((seed) => `seed ${seed}`),
      rows: o.sample.prompts.map((prompt, row) => ({
        label: prompt,
        cells: images[row].map((data) => ({ image: { width: size, height: size, data } })),
      })),
    };
  } finally {
    await rm(root, { recursive: true, force: true });
  }
}
