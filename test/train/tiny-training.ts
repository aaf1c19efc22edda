/**
 * A tiny but complete training run for the checkpoint tests, in plain TypeScript (no graph, no ORT):
 * a 2-layer tanh MLP regressing a fixed random teacher, mini-batches from a per-epoch shuffle
 * (MT19937), input noise from a TorchGenerator, 2 micro-batches accumulated per update, global-norm
 * clipping, AdamW or Prodigy with no decay on biases, a warm-up + cosine schedule, and an EMA. Every
 * piece of state that a resume must restore is there: weights, optimizer, EMA, RNG, data position.
 */
import assert from 'node:assert/strict';

import { Mt19937 } from '../../src/random/mt19937.js';
import { TorchGenerator } from '../../src/random/torch-generator.js';
import { AdamW } from '../../src/train/adamw.js';
import {
  CheckpointManager,
  type CheckpointOptions,
  type TrainingSnapshot,
} from '../../src/train/checkpoint.js';
import { EmaModel } from '../../src/train/ema.js';
import { GradientAccumulator } from '../../src/train/grad-accumulation.js';
import { clipGradNorm } from '../../src/train/grad-clip.js';
import type { JsonObject } from '../../src/train/json-value.js';
import { warmupCosine } from '../../src/train/lr-schedule.js';
import { weightDecayGroups, type Optimizer } from '../../src/train/optimizer.js';
import { Prodigy } from '../../src/train/prodigy.js';
import { assertExactlyEqual } from '../compare.js';
import { seededUniform } from '../random.js';

export type OptimizerKind = 'adamw' | 'prodigy';

const INPUTS = 3;
const HIDDEN = 8;
const OUTPUTS = 2;
const SAMPLES = 24;
const MICRO_BATCH = 4;
const ACCUMULATION = 2;
const DATA_SEED = 1234;
const NOISE_SEED = 42;
const INPUT_NOISE = 0.05;

export const PARAMETER_SHAPES: ReadonlyMap<string, readonly number[]> = new Map([
  ['layers.0.weight', [HIDDEN, INPUTS]],
  ['layers.0.bias', [HIDDEN]],
  ['layers.1.weight', [OUTPUTS, HIDDEN]],
  ['layers.1.bias', [OUTPUTS]],
]);

export const MODEL_CONFIG = {
  _class_name: 'TinyMlp',
  _diffusers_version: '0.30.0',
  in_features: INPUTS,
  hidden_features: HIDDEN,
  out_features: OUTPUTS,
};

export function trainingConfig(kind: OptimizerKind, totalSteps: number): JsonObject {
  return {
    optimizer: kind,
    total_steps: totalSteps,
    micro_batch: MICRO_BATCH,
    accumulation: ACCUMULATION,
    data_seed: DATA_SEED,
    noise_seed: NOISE_SEED,
    schedule: warmupCosine({ warmupSteps: 2, totalSteps }).config,
  };
}

export interface DataPosition extends JsonObject {
  epoch: number;
  /** Samples of this epoch's permutation already used. */
  position: number;
}

export interface TinyRun {
  readonly kind: OptimizerKind;
  readonly totalSteps: number;
  readonly params: Map<string, Float32Array>;
  readonly optimizer: Optimizer;
  readonly ema: EmaModel;
  readonly noise: TorchGenerator;
  data: DataPosition;
  step: number;
  losses: number[];
}

/** The data set: a fixed random teacher network's outputs on fixed random inputs. */
const dataset = ((): { x: Float64Array[]; y: Float64Array[] } => {
  const random = seededUniform(DATA_SEED);
  const teacher = Array.from({ length: OUTPUTS * INPUTS }, () => 2 * random() - 1);
  const x = Array.from({ length: SAMPLES }, () =>
    Float64Array.from({ length: INPUTS }, () => 2 * random() - 1),
  );
  const y = x.map((row) =>
    Float64Array.from({ length: OUTPUTS }, (_, o) =>
      Math.sin(row.reduce((sum, v, i) => sum + v * teacher[o * INPUTS + i], 0) * 2),
    ),
  );
  return { x, y };
})();

export function createRun(kind: OptimizerKind, totalSteps: number): TinyRun {
  const random = seededUniform(7);
  const params = new Map(
    [...PARAMETER_SHAPES].map(([name, shape]) => {
      const count = shape.reduce((a, b) => a * b, 1);
      const fanIn = shape.length > 1 ? shape[1] : 1;
      return [name, Float32Array.from({ length: count }, () => (2 * random() - 1) / Math.sqrt(fanIn))];
    }),
  );
  const groups = weightDecayGroups<{ weightDecay: number }>([...params.keys()]);
  const optimizer =
    kind === 'adamw'
      ? new AdamW(groups, { lr: 0.05, weightDecay: 0.01 })
      : new Prodigy(groups, { weightDecay: 0.01, d0: 1e-4, useBiasCorrection: true, safeguardWarmup: true });
  return {
    kind,
    totalSteps,
    params,
    optimizer,
    ema: new EmaModel(params, { decay: 0.9 }),
    noise: new TorchGenerator(NOISE_SEED),
    data: { epoch: 0, position: 0 },
    step: 0,
    losses: [],
  };
}

/** The epoch's sample order: Fisher–Yates on MT19937 seeded by the data seed and the epoch. */
function permutation(epoch: number): number[] {
  const engine = new Mt19937(DATA_SEED + epoch);
  const order = Array.from({ length: SAMPLES }, (_, i) => i);
  for (let i = SAMPLES - 1; i > 0; i--) {
    const j = engine.nextUint32() % (i + 1);
    [order[i], order[j]] = [order[j], order[i]];
  }
  return order;
}

function nextMicroBatch(run: TinyRun): number[] {
  if (run.data.position + MICRO_BATCH > SAMPLES) run.data = { epoch: run.data.epoch + 1, position: 0 };
  const rows = permutation(run.data.epoch).slice(run.data.position, run.data.position + MICRO_BATCH);
  run.data = { epoch: run.data.epoch, position: run.data.position + MICRO_BATCH };
  return rows;
}

/** Loss and gradients of ½·mean‖mlp(x + noise) − y‖² over `rows`, in float64, returned as float32. */
function lossAndGradients(run: TinyRun, rows: number[]): { loss: number; grads: Map<string, Float32Array> } {
  const w0 = run.params.get('layers.0.weight')!;
  const b0 = run.params.get('layers.0.bias')!;
  const w1 = run.params.get('layers.1.weight')!;
  const b1 = run.params.get('layers.1.bias')!;
  const g = new Map(
    [...PARAMETER_SHAPES].map(([name, shape]) => [name, new Float64Array(shape.reduce((a, b) => a * b, 1))]),
  );
  const gw0 = g.get('layers.0.weight')!;
  const gb0 = g.get('layers.0.bias')!;
  const gw1 = g.get('layers.1.weight')!;
  const gb1 = g.get('layers.1.bias')!;
  const noise = run.noise.randn([rows.length, INPUTS]);
  let loss = 0;
  rows.forEach((row, r) => {
    const x = dataset.x[row].map((v, i) => v + INPUT_NOISE * noise[r * INPUTS + i]);
    const hidden = Float64Array.from({ length: HIDDEN }, (_, h) =>
      Math.tanh(b0[h] + x.reduce((s, v, i) => s + v * w0[h * INPUTS + i], 0)),
    );
    const errors = Float64Array.from(
      { length: OUTPUTS },
      (_, o) => b1[o] + hidden.reduce((s, v, h) => s + v * w1[o * HIDDEN + h], 0) - dataset.y[row][o],
    );
    const scale = 1 / rows.length;
    for (let o = 0; o < OUTPUTS; o++) {
      loss += 0.5 * errors[o] * errors[o] * scale;
      gb1[o] += errors[o] * scale;
      for (let h = 0; h < HIDDEN; h++) gw1[o * HIDDEN + h] += errors[o] * hidden[h] * scale;
    }
    for (let h = 0; h < HIDDEN; h++) {
      let back = 0;
      for (let o = 0; o < OUTPUTS; o++) back += errors[o] * w1[o * HIDDEN + h];
      const pre = back * (1 - hidden[h] * hidden[h]) * scale;
      gb0[h] += pre;
      for (let i = 0; i < INPUTS; i++) gw0[h * INPUTS + i] += pre * x[i];
    }
  });
  return { loss, grads: new Map([...g].map(([name, values]) => [name, Float32Array.from(values)])) };
}

const schedules = new Map<number, ReturnType<typeof warmupCosine>>();

/** One optimizer update: ACCUMULATION micro-batches, clip, step, EMA. Returns the update's mean loss. */
export function trainStep(run: TinyRun): number {
  const accumulator = new GradientAccumulator([...run.params.keys()], ACCUMULATION);
  let loss = 0;
  while (!accumulator.ready) {
    const result = lossAndGradients(run, nextMicroBatch(run));
    accumulator.add(result.grads);
    loss += result.loss / ACCUMULATION;
  }
  const grads = accumulator.take();
  clipGradNorm(grads, 1.0);
  let schedule = schedules.get(run.totalSteps);
  if (schedule === undefined) {
    schedule = warmupCosine({ warmupSteps: 2, totalSteps: run.totalSteps });
    schedules.set(run.totalSteps, schedule);
  }
  run.optimizer.step(run.params, grads, schedule.factor(run.step));
  run.ema.step(run.params);
  run.step++;
  run.losses.push(loss);
  return loss;
}

export function snapshotOf(run: TinyRun): TrainingSnapshot {
  return {
    step: run.step,
    epoch: run.data.epoch,
    weights: run.params,
    optimizer: run.optimizer.stateDict(),
    ema: run.ema.stateDict(),
    data: run.data,
    rng: { noise: run.noise.getState() },
    lossHistory: run.losses,
  };
}

/** Puts a loaded snapshot into a fresh run. */
export function restore(run: TinyRun, snapshot: TrainingSnapshot): void {
  for (const [name, values] of snapshot.weights) run.params.get(name)!.set(values);
  run.optimizer.loadStateDict(snapshot.optimizer);
  if (snapshot.ema === undefined) throw new Error('the tiny run always saves an EMA');
  run.ema.loadStateDict(snapshot.ema);
  run.noise.setState(snapshot.rng['noise']);
  const data = snapshot.data as DataPosition;
  run.data = { epoch: data.epoch, position: data.position };
  run.step = snapshot.step;
  run.losses = [...snapshot.lossHistory];
}

export function checkpointManager(
  directory: string,
  kind: OptimizerKind,
  totalSteps: number,
  options: Partial<CheckpointOptions> = {},
): CheckpointManager {
  return new CheckpointManager({
    directory,
    parameterShapes: PARAMETER_SHAPES,
    modelConfig: MODEL_CONFIG,
    trainingConfig: trainingConfig(kind, totalSteps),
    keepLast: 3,
    saveEvery: 1,
    ...options,
  });
}

/** Asserts that two runs are in the same state, bit for bit. */
export function assertSameRun(actual: TinyRun, expected: TinyRun, what: string): void {
  assert.equal(actual.step, expected.step, `${what}: step`);
  assert.deepEqual(actual.data, expected.data, `${what}: data position`);
  assertExactlyEqual(actual.losses, expected.losses, `${what}: losses`);
  for (const name of PARAMETER_SHAPES.keys()) {
    assertExactlyEqual(actual.params.get(name)!, expected.params.get(name)!, `${what}: weights ${name}`);
    assertExactlyEqual(actual.ema.shadow.get(name)!, expected.ema.shadow.get(name)!, `${what}: EMA ${name}`);
  }
  const a = actual.optimizer.stateDict();
  const e = expected.optimizer.stateDict();
  assert.deepEqual(a.scalars, e.scalars, `${what}: optimizer scalars`);
  assert.deepEqual([...a.tensors.keys()].sort(), [...e.tensors.keys()].sort(), `${what}: optimizer tensors`);
  for (const [key, tensor] of e.tensors)
    assertExactlyEqual(a.tensors.get(key)!, tensor, `${what}: optimizer ${key}`);
  assert.deepEqual(actual.ema.stateDict().scalars, expected.ema.stateDict().scalars, `${what}: EMA scalars`);
  assert.deepEqual(actual.noise.getState(), expected.noise.getState(), `${what}: RNG state`);
}
