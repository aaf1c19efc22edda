/**
 * Child process for file-handles.test.ts: loads something that opens weight files, uses it, drops
 * every reference to it without close(), collects garbage, and prints one JSON line with the file
 * descriptors it saw. Run with `node --expose-gc --trace-warnings --import tsx` and one argument:
 * `pipeline` (a tiny PixArt pipeline run for two steps from a prompt, on the default worker runtime),
 * `model` (a PixArt transformer on its own run once), or `file` (a SafetensorsFile read once).
 */
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { SafetensorsFile } from '../../src/io/safetensors.js';
import { PixArtTransformer2DModel } from '../../src/models/pixart-transformer.js';
import { DiffusionPipeline } from '../../src/pipelines/index.js';
import { hostTensor } from '../../src/runtime/host-tensor.js';
import { Runtime } from '../../src/runtime/runtime.js';
import { tinyPixArtPipeline } from '../fixtures/tiny-pixart-pipeline.js';

const GOLDEN_PIPELINE = fileURLToPath(
  new URL('../golden/pipelines/pipeline_pixart_alpha_ddim/pipeline/', import.meta.url),
);

type Subject = 'pipeline' | 'model' | 'file';

/** Paths of this process's open descriptors (Linux; an empty list elsewhere). */
function openFileTargets(): string[] {
  let entries: string[];
  try {
    entries = readdirSync('/proc/self/fd');
  } catch {
    return [];
  }
  const targets: string[] = [];
  for (const fd of entries) {
    try {
      targets.push(readlinkSync(join('/proc/self/fd', fd)));
    } catch {
      // The descriptor readdir itself used, closed by now.
    }
  }
  return targets;
}

/** Weight files mapped into memory: ONNX Runtime maps external data while a session lives (Linux). */
function weightFilesMapped(): string[] {
  let maps: string;
  try {
    maps = readFileSync('/proc/self/maps', 'utf8');
  } catch {
    return [];
  }
  const files = maps.split('\n').filter((line) => line.includes('.safetensors'));
  return [...new Set(files.map((line) => line.slice(line.indexOf('/'))))];
}

function weightFilesOpen(): string[] {
  return openFileTargets().filter((target) => target.endsWith('.safetensors'));
}

/** Loads and uses the subject in a scope of its own, so that nothing outlives the call. */
async function useAndDrop(subject: Subject, pipelineDir: string): Promise<string[]> {
  if (subject === 'file') {
    const file = await SafetensorsFile.open(
      join(GOLDEN_PIPELINE, 'transformer', 'diffusion_pytorch_model.safetensors'),
    );
    await file.readFloat32(file.names()[0]);
    return weightFilesOpen();
  }
  if (subject === 'model') {
    const runtime = new Runtime({ threads: 1 });
    const model = await PixArtTransformer2DModel.fromPretrained(join(GOLDEN_PIPELINE, 'transformer'), {
      runtime,
    });
    const { sampleSize, inChannels, captionChannels } = model.config;
    const side = sampleSize;
    await model.forward({
      hidden_states: hostTensor(
        'float32',
        [1, inChannels, side, side],
        new Float32Array(inChannels * side * side),
      ),
      encoder_hidden_states: hostTensor(
        'float32',
        [1, 4, captionChannels],
        new Float32Array(4 * captionChannels),
      ),
      timestep: hostTensor('float32', [1], new Float32Array([500])),
    });
    return weightFilesOpen();
  }
  const pipe = await DiffusionPipeline.fromPretrained(pipelineDir);
  await pipe.run({ prompt: 'a red heart', numInferenceSteps: 2, height: 16, width: 16, seed: 1 });
  return weightFilesOpen();
}

async function collectGarbage(gc: () => void): Promise<void> {
  // Finalizers run in tasks after a collection, so each collection is followed by turns of the loop.
  for (let i = 0; i < 6; i++) {
    gc();
    await new Promise((resolve) => setImmediate(resolve));
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** Collects until `settled()` holds or 10 s pass: a dropped runtime's worker takes a while to stop. */
async function collectUntil(gc: () => void, settled: () => boolean): Promise<void> {
  const deadline = Date.now() + 10_000;
  do await collectGarbage(gc);
  while (!settled() && Date.now() < deadline);
}

async function main(): Promise<void> {
  const gc = (globalThis as { gc?: () => void }).gc;
  if (gc === undefined) throw new Error('run with node --expose-gc');
  const subject = process.argv[2] as Subject;
  if (!['pipeline', 'model', 'file'].includes(subject)) throw new Error(`unknown subject ${subject}`);
  const pipelineDir = subject === 'pipeline' ? await tinyPixArtPipeline() : GOLDEN_PIPELINE;

  // One round first, so that what stays open for good (ORT's library, tsx's caches) is open before counting.
  await useAndDrop(subject, pipelineDir);
  await collectUntil(gc, () => weightFilesMapped().length === 0);
  const before = openFileTargets();
  const whileLoaded = await useAndDrop(subject, pipelineDir);
  await useAndDrop(subject, pipelineDir);
  await collectUntil(gc, () => {
    const open = openFileTargets();
    return weightFilesMapped().length === 0 && open.every((target) => before.includes(target));
  });
  const after = openFileTargets();
  const mappedAfter = weightFilesMapped();
  if (pipelineDir !== GOLDEN_PIPELINE) await rm(dirname(pipelineDir), { recursive: true, force: true });
  process.stdout.write(
    `${JSON.stringify({
      weightFilesWhileLoaded: whileLoaded,
      descriptorsBefore: before.length,
      descriptorsAfter: after.length,
      weightFilesAfter: after.filter((target) => target.endsWith('.safetensors')),
      weightFilesMappedAfter: mappedAfter,
      opened: after.filter((target) => !before.includes(target)),
    })}\n`,
  );
}

await main();
