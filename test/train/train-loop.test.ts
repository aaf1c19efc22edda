/**
 * TrainStep and trainLoop: gradients of a step graph against a float64 reference, frozen parameters
 * without gradient outputs, the FLOP count against the hand count; a tiny PixArt learning a fixed
 * batch; and a run stopped (StopRequest) and resumed from its checkpoint equal to an uninterrupted one,
 * bit for bit (losses, weights, EMA, optimizer state), with accumulation, clipping, a schedule, EMA,
 * generator state and data position all in play.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';

import {
  add,
  attention,
  conv2d,
  convTranspose2d,
  Graph,
  matmul,
  mean,
  mul,
  sub,
  tanh,
} from '../../src/graph/index.js';
import { TorchGenerator } from '../../src/random/torch-generator.js';
import { hostTensor } from '../../src/runtime/host-tensor.js';
import { AdamW } from '../../src/train/adamw.js';
import { CheckpointManager } from '../../src/train/checkpoint.js';
import { EmaModel } from '../../src/train/ema.js';
import { trainLoop, type TrainLoopResult } from '../../src/train/loop.js';
import { warmupCosine } from '../../src/train/lr-schedule.js';
import { weightDecayGroups } from '../../src/train/optimizer.js';
import { initParameters } from '../../src/train/parameters.js';
import { StopRequest } from '../../src/train/stop-signal.js';
import { countFlops, TrainStep } from '../../src/train/train-step.js';
import { assertClose, assertExactlyEqual } from '../compare.js';
import { randomArray, testRuntime } from '../helpers.js';
import { seededUniform, testSeed } from '../random.js';
import { IndexSource, tinyDenoiser } from './tiny-denoiser.js';

const B = 5;
const I = 3;
const H = 4;
const O = 2;

describe('TrainStep', () => {
  it('returns the loss, the trainable gradients (float64 reference), metrics, and counts FLOPs', async () => {
    const seed = testSeed('TrainStep MLP');
    const random = seededUniform(seed);
    const shapes = new Map<string, number[]>([
      ['l1.weight', [I, H]],
      ['l1.bias', [H]],
      ['l2.weight', [H, O]],
    ]);
    const step = await TrainStep.compile(testRuntime(), {
      shapes,
      trainable: ['l1.weight', 'l2.weight'],
      build(g, params) {
        const x = g.input('x', 'float32', [B, I]);
        const y = g.input('y', 'float32', [B, O]);
        const p = (name: string): ReturnType<typeof g.input> =>
          params.tensor(g, name, 'float32', shapes.get(name)!);
        const h = tanh(add(matmul(x, p('l1.weight')), p('l1.bias')));
        const error = sub(matmul(h, p('l2.weight')), y);
        return { loss: mean(mul(error, error), [0, 1]), metrics: { first: mean(h, [0, 1]) } };
      },
    });
    const params = new Map(
      [...shapes].map(([name, shape]) => [
        name,
        randomArray(
          shape.reduce((a, b) => a * b),
          random,
        ),
      ]),
    );
    const x = randomArray(B * I, random);
    const y = randomArray(B * O, random);
    // Static batch shapes: the FLOP count is known before the first run.
    assert.equal(step.flops, 2 * B * I * H + 2 * B * H * O + 2 * (2 * B * H * O) + 2 * B * I * H);
    const result = await step.run(params, {
      x: hostTensor('float32', [B, I], x),
      y: hostTensor('float32', [B, O], y),
    });
    assert.deepEqual(
      [...result.grads.keys()],
      ['l1.weight', 'l2.weight'],
      'gradients of the trainable parameters only',
    );

    // float64 reference: loss = mean((tanh(x·W1 + b1)·W2 − y)²).
    const [w1, b1, w2] = ['l1.weight', 'l1.bias', 'l2.weight'].map((n) => params.get(n)!);
    const gw1 = new Float64Array(I * H);
    const gw2 = new Float64Array(H * O);
    let loss = 0;
    let hiddenMean = 0;
    for (let r = 0; r < B; r++) {
      const h = Array.from({ length: H }, (_, j) =>
        Math.tanh(b1[j] + [0, 1, 2].reduce((s, i) => s + x[r * I + i] * w1[i * H + j], 0)),
      );
      hiddenMean += h.reduce((a, b) => a + b) / (B * H);
      for (let o = 0; o < O; o++) {
        const e = h.reduce((s, v, j) => s + v * w2[j * O + o], 0) - y[r * O + o];
        loss += (e * e) / (B * O);
        const de = (2 * e) / (B * O);
        for (let j = 0; j < H; j++) {
          gw2[j * O + o] += de * h[j];
          const dh = de * w2[j * O + o] * (1 - h[j] * h[j]);
          for (let i = 0; i < I; i++) gw1[i * H + j] += dh * x[r * I + i];
        }
      }
    }
    const tolerance = { atol: 1e-6, rtol: 1e-5 };
    assertClose([result.loss], [loss], { ...tolerance, what: `loss (seed ${seed})` });
    assertClose([result.metrics['first']], [hiddenMean], { ...tolerance, what: 'metric' });
    assertClose(result.grads.get('l1.weight')!, gw1, { ...tolerance, what: `dW1 (seed ${seed})` });
    assertClose(result.grads.get('l2.weight')!, gw2, { ...tolerance, what: `dW2 (seed ${seed})` });
    // Forward x·W1 and h·W2; backward dW2 = hᵀ·dy, dh = dy·W2ᵀ, dW1 = xᵀ·dpre (no dx: x is not trained).
    assert.equal(step.flops, 2 * B * I * H + 2 * B * H * O + 2 * (2 * B * H * O) + 2 * B * I * H);
  });

  it('counts convolution, transposed convolution and attention FLOPs, with named dims from the first run', () => {
    const g = new Graph('flops');
    const x = g.input('x', 'float32', ['B', 6, 10, 8]);
    // Conv 6 → 4 channels, 3×3, stride 2, padding 1, groups 2: out [B, 4, 5, 4], 3·3·3 MACs each.
    const y = conv2d(x, g.input('w', 'float32', [4, 3, 3, 3]), undefined, {
      stride: 2,
      padding: 1,
      groups: 2,
    });
    // Transposed conv of that back to 6 channels: in [B, 4, 5, 4], 6·2·2 MACs per input element.
    convTranspose2d(y, g.input('wt', 'float32', [4, 6, 2, 2]), undefined, { stride: 2 });
    // Attention, 2 heads of 4 over 7 queries and 9 keys, values of 2 heads × 3.
    const q = g.input('q', 'float32', ['B', 7, 8]);
    const k = g.input('k', 'float32', ['B', 9, 8]);
    const v = g.input('v', 'float32', ['B', 9, 6]);
    attention(q, k, v, { numHeads: 2 });
    const perBatch = 2 * (4 * 5 * 4 * 27) + 2 * (4 * 5 * 4 * 24) + 2 * 7 * 9 * (8 + 6);
    assert.equal(countFlops(g.nodes, { B: 3 }), 3 * perBatch);
    assert.ok(Number.isNaN(countFlops(g.nodes)), 'an unknown named dim makes the count NaN');
  });

  it('refuses a trainable parameter the loss does not read', async () => {
    await assert.rejects(
      TrainStep.compile(testRuntime(), {
        shapes: new Map([
          ['a', [2]],
          ['b', [2]],
        ]),
        trainable: ['a', 'b'],
        build(g, params) {
          const a = params.tensor(g, 'a', 'float32', [2]);
          return { loss: mean(mul(a, a), 0) };
        },
      }),
      (e: unknown) => e instanceof Error && e.message.includes("'b'"),
    );
  });
});

describe('trainLoop with a tiny PixArt', () => {
  const roots: string[] = [];
  after(async () => {
    for (const root of roots) await rm(root, { recursive: true, force: true });
  });

  it('learns a fixed batch: the loss falls', async () => {
    const denoiser = await tinyDenoiser();
    const step = await TrainStep.compile(testRuntime(), denoiser.spec());
    const params = initParameters(denoiser.shapes, { seed: 11 });
    const fixed = denoiser.makeBatch([0, 1], new TorchGenerator(5));
    const result = await trainLoop({
      step,
      params,
      optimizer: new AdamW([...denoiser.shapes.keys()], { lr: 3e-3 }),
      loader: () => ({ next: () => 0, state: null }),
      makeBatch: () => fixed,
      totalSteps: 40,
    });
    const first = result.losses[0];
    const last = result.losses.slice(-5).reduce((a, b) => a + b) / 5;
    assert.ok(last < 0.3 * first, `loss ${first} → ${last}: expected it to fall below 30 %`);
  });

  it('a run stopped and resumed from its checkpoint equals an uninterrupted one, bit for bit', async () => {
    const denoiser = await tinyDenoiser();
    const names = [...denoiser.shapes.keys()];
    const step = await TrainStep.compile(testRuntime(), denoiser.spec());
    const totalSteps = 5;
    const schedule = warmupCosine({ warmupSteps: 2, totalSteps });
    const root = await mkdtemp(join(tmpdir(), 'velodiff-train-loop-'));
    roots.push(root);

    const run = async (directory: string, options: { stopAfter?: number; resume?: boolean }) => {
      const params = initParameters(denoiser.shapes, { seed: 21 });
      const optimizer = new AdamW(weightDecayGroups(names), { lr: 2e-3, weightDecay: 0.01 });
      const ema = new EmaModel(params, { decay: 0.9 });
      const noise = new TorchGenerator(77);
      const stop = new StopRequest([]);
      const checkpoints = new CheckpointManager({
        directory,
        parameterShapes: denoiser.shapes,
        modelConfig: { _class_name: 'PixArtTransformer2DModel', num_layers: denoiser.config.numLayers },
        trainingConfig: { total_steps: totalSteps, schedule: schedule.config },
        saveEvery: 2,
      });
      const result: TrainLoopResult = await trainLoop({
        step,
        params,
        optimizer,
        schedule,
        ema,
        clip: 0.5,
        accumulation: 2,
        checkpoints,
        resume: options.resume,
        loader: (state) => new IndexSource(state),
        makeBatch: (indices) => denoiser.makeBatch(indices, noise),
        generators: { noise },
        totalSteps,
        stop,
        onStep: ({ step: done }) => {
          if (done === options.stopAfter) stop.request();
        },
      });
      stop.dispose();
      return { result, params, optimizer, ema, noise };
    };

    const whole = await run(join(root, 'whole'), {});
    const interrupted = await run(join(root, 'parts'), { stopAfter: 3 });
    assert.equal(interrupted.result.stopped, true);
    assert.equal(interrupted.result.step, 3);
    const resumed = await run(join(root, 'parts'), { resume: true });
    assert.equal(resumed.result.resumedFrom, 3, 'resumed from the checkpoint written at the stop');
    assert.equal(resumed.result.step, totalSteps);

    assertExactlyEqual(resumed.result.losses, whole.result.losses, 'losses');
    assert.ok(whole.result.losses.every(Number.isFinite));
    for (const name of names) {
      assertExactlyEqual(resumed.params.get(name)!, whole.params.get(name)!, `weights ${name}`);
      assertExactlyEqual(resumed.ema.shadow.get(name)!, whole.ema.shadow.get(name)!, `EMA ${name}`);
    }
    const a = resumed.optimizer.stateDict();
    const e = whole.optimizer.stateDict();
    assert.deepEqual(a.scalars, e.scalars, 'optimizer scalars');
    for (const [key, tensor] of e.tensors)
      assertExactlyEqual(a.tensors.get(key)!, tensor, `optimizer ${key}`);
    assert.deepEqual(resumed.noise.getState(), whole.noise.getState(), 'generator state');
    // The interrupted run's weights at step 3 differ from the end: the resume did train.
    assert.notDeepEqual(interrupted.params.get(names[0]), whole.params.get(names[0]));
  });
});
