/**
 * Replays a golden scheduler case (test/golden/schedulers/<case>/, from diffusers 0.40) exactly as its
 * meta.json `loop`, `add_noise` and table fields describe, comparing every recorded tensor.
 */
import assert from 'node:assert/strict';
import { it } from 'node:test';
import { readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { SafetensorsFile } from '../../src/io/safetensors.js';
import {
  schedulerFromConfig,
  type AnyScheduler,
  type NoiseGenerator,
  type SchedulerTensor,
  type SetTimestepsOptions,
  type StepOptions,
} from '../../src/schedulers/index.js';

const GOLDEN_DIR = join(dirname(fileURLToPath(import.meta.url)), '..', 'golden', 'schedulers');

export interface GoldenTensor {
  readonly dtype: string;
  readonly shape: number[];
  /** The values as float64 numbers (int64 converted exactly: golden timesteps are small). */
  readonly values: Float64Array;
}

interface Meta {
  readonly scheduler_class: string;
  readonly num_inference_steps: number;
  readonly set_timesteps_kwargs: { mu?: number; sigmas?: number[] };
  readonly step_kwargs: { eta?: number };
  readonly noise: null | 'variance_noise' | 'generator';
  readonly notes: string[];
  readonly table_set_timesteps_kwargs: string;
}

export interface GoldenCase {
  readonly name: string;
  readonly meta: Meta;
  readonly configText: string;
  readonly inputs: Map<string, GoldenTensor>;
  readonly outputs: Map<string, GoldenTensor>;
}

async function readTensors(path: string): Promise<Map<string, GoldenTensor>> {
  const file = await SafetensorsFile.open(path);
  try {
    const tensors = new Map<string, GoldenTensor>();
    for (const name of file.names()) {
      const { dtype, shape } = file.info(name);
      let values: Float64Array;
      if (dtype === 'F32') values = Float64Array.from(await file.readFloat32(name));
      else {
        const bytes = await file.readBytes(name);
        const buffer = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
        if (dtype === 'F64') values = new Float64Array(buffer);
        else if (dtype === 'I64') values = Float64Array.from(new BigInt64Array(buffer), Number);
        else throw new Error(`${path}: unexpected dtype ${dtype} for ${name}`);
      }
      tensors.set(name, { dtype, shape: [...shape], values });
    }
    return tensors;
  } finally {
    await file.close();
  }
}

export async function loadGoldenCase(name: string): Promise<GoldenCase> {
  const dir = join(GOLDEN_DIR, name);
  const [metaText, configText, inputs, outputs] = await Promise.all([
    readFile(join(dir, 'meta.json'), 'utf8'),
    readFile(join(dir, 'scheduler_config.json'), 'utf8'),
    readTensors(join(dir, 'inputs.safetensors')),
    readTensors(join(dir, 'outputs.safetensors')),
  ]);
  return { name, meta: JSON.parse(metaText) as Meta, configText, inputs, outputs };
}

function tensor(tensors: Map<string, GoldenTensor>, name: string): GoldenTensor {
  const found = tensors.get(name);
  assert.ok(found !== undefined, `golden tensor ${name} is missing`);
  return found;
}

/** Item `index` along the first axis, as a scheduler tensor. */
export function item(source: GoldenTensor, index: number): SchedulerTensor {
  const shape = source.shape.slice(1);
  const size = shape.reduce((a, b) => a * b, 1);
  return { data: Float32Array.from(source.values.subarray(index * size, (index + 1) * size)), shape };
}

export function whole(source: GoldenTensor): SchedulerTensor {
  return { data: Float32Array.from(source.values), shape: [...source.shape] };
}

/** The suggested golden check: max|ours − golden| ≤ 1e-4 · max(1, max|golden|). */
export function assertGoldenClose(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  what: string,
): number {
  assert.equal(actual.length, expected.length, `${what}: length`);
  let scale = 1;
  for (let i = 0; i < expected.length; i++) scale = Math.max(scale, Math.abs(expected[i]));
  let worst = 0;
  let worstIndex = 0;
  for (let i = 0; i < expected.length; i++) {
    const error = Math.abs(actual[i] - expected[i]);
    if (!(error <= worst)) {
      worst = error;
      worstIndex = i;
    }
  }
  assert.ok(
    worst <= 1e-4 * scale,
    `${what}: max |ours − golden| = ${worst} at ${worstIndex} (ours ${actual[worstIndex]}, golden ` +
      `${expected[worstIndex]}) exceeds 1e-4 · ${scale}`,
  );
  return worst / scale;
}

export function assertExact(actual: ArrayLike<number>, expected: ArrayLike<number>, what: string): void {
  assert.deepEqual(Array.from(actual), Array.from(expected), what);
}

/** Timesteps: exact when diffusers keeps them int64, within the golden tolerance when float32. */
function assertTimesteps(actual: readonly number[], expected: GoldenTensor, what: string): void {
  if (expected.dtype === 'I64') assertExact(actual, expected.values, what);
  else assertGoldenClose(actual, expected.values, what);
}

/** numpy's linspace for the FLUX case's sigmas (its last value is exactly `stop`). */
function numpyLinspace(start: number, stop: number, count: number): number[] {
  if (count === 1) return [start];
  const step = (stop - start) / (count - 1);
  return Array.from({ length: count }, (_, i) => (i === count - 1 ? stop : start + i * step));
}

/** A generator that hands out the recorded noise of each step, checking the shape asked for. */
class ReplayGenerator implements NoiseGenerator {
  readonly shapes: number[][] = [];
  constructor(private readonly noises: GoldenTensor) {}
  randn(shape: readonly number[]): Float32Array {
    const drawn = item(this.noises, this.shapes.length);
    assert.deepEqual([...shape], drawn.shape, 'shape of the noise drawn');
    this.shapes.push([...shape]);
    return drawn.data;
  }
}

export interface ReplayReport {
  /** Worst error relative to max(1, max|golden|), over every compared float tensor. */
  readonly worstRelative: number;
  readonly comparisons: number;
}

/** Builds the case's scheduler from its scheduler_config.json text. */
export function schedulerOf(golden: GoldenCase): AnyScheduler {
  const scheduler = schedulerFromConfig(golden.configText);
  assert.equal(scheduler.constructor.name, golden.meta.scheduler_class);
  return scheduler;
}

function setTimestepsOptions(golden: GoldenCase): SetTimestepsOptions {
  const { mu, sigmas } = golden.meta.set_timesteps_kwargs;
  return { ...(mu === undefined ? {} : { mu }), ...(sigmas === undefined ? {} : { sigmas }) };
}

export function replayGoldenCase(golden: GoldenCase): ReplayReport {
  const { meta, inputs, outputs } = golden;
  let worstRelative = 0;
  let comparisons = 0;
  const close = (actual: ArrayLike<number>, expected: ArrayLike<number>, what: string): void => {
    worstRelative = Math.max(worstRelative, assertGoldenClose(actual, expected, `${golden.name} ${what}`));
    comparisons += 1;
  };

  // The loop.
  const scheduler = schedulerOf(golden);
  scheduler.setTimesteps(meta.num_inference_steps, setTimestepsOptions(golden));
  const timesteps = tensor(outputs, 'timesteps');
  assertTimesteps(scheduler.timesteps, timesteps, `${golden.name} timesteps`);
  const goldenSigmas = outputs.get('sigmas');
  if (goldenSigmas !== undefined) {
    assert.ok('sigmas' in scheduler, `${golden.name}: the scheduler exposes sigmas`);
    close(scheduler.sigmas, goldenSigmas.values, 'sigmas');
  }
  const goldenAlphasCumprod = outputs.get('alphas_cumprod');
  if (goldenAlphasCumprod !== undefined) {
    assert.ok('alphasCumprod' in scheduler, `${golden.name}: the scheduler exposes alphasCumprod`);
    close(scheduler.alphasCumprod, goldenAlphasCumprod.values, 'alphas_cumprod');
  }
  close([scheduler.initNoiseSigma], tensor(outputs, 'init_noise_sigma').values, 'init_noise_sigma');

  const generator = meta.noise === 'generator' ? new ReplayGenerator(tensor(inputs, 'noises')) : undefined;
  const predictedOriginal = outputs.get('pred_original_samples') ?? outputs.get('denoised');
  let sample = whole(tensor(inputs, 'sample'));
  scheduler.timesteps.forEach((t, i) => {
    const scaled = outputs.get('scaled_model_inputs');
    if (scaled !== undefined)
      close(scheduler.scaleModelInput(sample, t).data, item(scaled, i).data, `scaled_model_inputs[${i}]`);
    const options: StepOptions = {
      ...(meta.step_kwargs.eta === undefined ? {} : { eta: meta.step_kwargs.eta }),
      ...(meta.noise === 'variance_noise' ? { noise: item(tensor(inputs, 'noises'), i) } : {}),
      ...(generator === undefined ? {} : { generator }),
    };
    const out = scheduler.step(item(tensor(inputs, 'model_outputs'), i), t, sample, options);
    assert.deepEqual(out.prevSample.shape, sample.shape);
    close(out.prevSample.data, item(tensor(outputs, 'prev_samples'), i).data, `prev_samples[${i}]`);
    if (predictedOriginal !== undefined) {
      close(
        out.predOriginalSample.data,
        item(predictedOriginal, i).data,
        `pred_original_samples/denoised[${i}]`,
      );
    }
    sample = out.prevSample;
  });
  if (generator !== undefined) {
    // LCM draws on every step but the last.
    assert.equal(generator.shapes.length, scheduler.timesteps.length - 1, 'noise draws');
  }

  // add_noise (FlowMatch: scale_noise) on a fresh scheduler.
  const fresh = schedulerOf(golden);
  fresh.setTimesteps(meta.num_inference_steps, setTimestepsOptions(golden));
  const addNoiseTimesteps = tensor(outputs, 'add_noise_timesteps');
  addNoiseTimesteps.values.forEach((t, j) => {
    const noisy = fresh.addNoise(
      whole(tensor(inputs, 'add_noise_original')),
      whole(tensor(inputs, 'add_noise_noise')),
      [t],
    );
    close(noisy.data, item(tensor(outputs, 'add_noise_results'), j).data, `add_noise_results[${j}]`);
  });

  // Tables of set_timesteps(N).
  const flux = meta.table_set_timesteps_kwargs === 'see notes';
  for (const [name, expected] of outputs) {
    const match = /^table_timesteps_n(\d+)$/.exec(name);
    if (match === null) continue;
    const count = Number(match[1]);
    const table = schedulerOf(golden);
    const options: SetTimestepsOptions = flux
      ? { mu: meta.set_timesteps_kwargs.mu, sigmas: numpyLinspace(1, 1 / count, count) }
      : setTimestepsOptions(golden);
    table.setTimesteps(count, options);
    assertTimesteps(table.timesteps, expected, `${golden.name} ${name}`);
    comparisons += 1;
    const expectedSigmas = outputs.get(`table_sigmas_n${count}`);
    if (expectedSigmas !== undefined) {
      assert.ok('sigmas' in table, `${golden.name}: the scheduler exposes sigmas`);
      close(table.sigmas, expectedSigmas.values, `table_sigmas_n${count}`);
    }
  }
  return { worstRelative, comparisons };
}

/**
 * One test per case: the replay must stay within the golden tolerance, and (what velodiff achieves
 * by following torch's float32 operations) match diffusers bit for bit.
 */
export function testGoldenCases(caseNames: readonly string[]): void {
  for (const name of caseNames) {
    it(`${name}: matches diffusers' loop, add_noise and set_timesteps tables`, async () => {
      const report = replayGoldenCase(await loadGoldenCase(name));
      assert.ok(report.comparisons > 20, `${name}: only ${report.comparisons} comparisons`);
      assert.equal(
        report.worstRelative,
        0,
        `${name}: within tolerance but not bit for bit (worst relative error ${report.worstRelative})`,
      );
    });
  }
}
