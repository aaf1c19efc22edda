// The README's sample grid of the shipped model: fixed prompts (rows) × seeds (columns), each image
// the one `velodiff generate "<prompt>" --seed <seed>` draws (25 steps, CFG 4.5).
//
//   node --import tsx scripts/sample-grid.ts [MODEL_DIR] [OUT.png]
//
// (defaults: models/emoji, docs/emoji-samples.png). Not part of the package.
import { mkdir, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';

import { imagesToRgb } from '../src/io/png.js';
import { DiffusionPipeline } from '../src/pipelines/index.js';
import type { HostTensor } from '../src/runtime/host-tensor.js';
import { README_GRID_PROMPTS, renderSampleGrid, type GridRow } from '../src/train/sample-grid.js';

export const PROMPTS = README_GRID_PROMPTS;
const SEEDS = [0, 1, 2, 3];
const STEPS = 25;
const GUIDANCE = 4.5;

const [modelDir = 'models/emoji', out = 'docs/emoji-samples.png'] = process.argv.slice(2);
const pipe = await DiffusionPipeline.fromPretrained(modelDir);
try {
  const rows: GridRow[] = [];
  for (const prompt of PROMPTS) {
    const cells = [];
    for (const seed of SEEDS) {
      const { images } = await pipe.run({
        prompt,
        seed,
        numInferenceSteps: STEPS,
        guidanceScale: GUIDANCE,
        height: 64,
        width: 64,
      });
      const t = images as HostTensor;
      const [rgb] = imagesToRgb(t.data as Float32Array, t.shape);
      cells.push({ image: { width: 64, height: 64, data: rgb } });
    }
    rows.push({ label: prompt, cells });
    process.stderr.write(`${prompt}\n`);
  }
  const png = await renderSampleGrid(
    {
      title: [`${modelDir}: ${STEPS} steps, CFG ${GUIDANCE}`],
      columnLabels: SEEDS.map((s) => `seed ${s}`),
      rows,
    },
    { scale: 2 },
  );
  await mkdir(dirname(out), { recursive: true });
  await writeFile(out, png);
  console.log(out);
} finally {
  await pipe.close();
}
