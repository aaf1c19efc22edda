import assert from 'node:assert/strict';
import { test } from 'node:test';

import { constantWithWarmup, warmupCosine } from '../../src/train/lr-schedule.js';
import { assertClose } from '../compare.js';

test('warmupCosine: known values', () => {
  const schedule = warmupCosine({ warmupSteps: 10, totalSteps: 110, minLrRatio: 0.1 });
  const steps = [0, 5, 9, 10, 35, 60, 85, 110, 500];
  // Warm-up: step/10. Decay over 100 steps: 0.1 + 0.9·½(1 + cos(π·p)); p = 0.25 gives
  // 0.1 + 0.9·0.8535534 = 0.8681981, p = 0.5 gives 0.55, p = 0.75 gives 0.1 + 0.9·0.1464466 = 0.2318019.
  const expected = [0, 0.5, 0.9, 1, 0.8681981, 0.55, 0.2318019, 0.1, 0.1];
  assertClose(
    steps.map((s) => schedule.factor(s)),
    expected,
    { atol: 1e-7, rtol: 0, what: 'factors' },
  );
});

test('warmupCosine: every step against cos² of the half angle', () => {
  const warmupSteps = 7;
  const totalSteps = 53;
  const minLrRatio = 0.05;
  const schedule = warmupCosine({ warmupSteps, totalSteps, minLrRatio });
  const actual: number[] = [];
  const expected: number[] = [];
  for (let step = 0; step <= totalSteps + 5; step++) {
    actual.push(schedule.factor(step));
    // ½(1 + cos x) = cos²(x/2): the same curve by another identity.
    const progress = Math.min(1, Math.max(0, (step - warmupSteps) / (totalSteps - warmupSteps)));
    const value =
      step < warmupSteps
        ? step / warmupSteps
        : minLrRatio + (1 - minLrRatio) * Math.cos((Math.PI * progress) / 2) ** 2;
    expected.push(value);
  }
  assertClose(actual, expected, { atol: 1e-12, rtol: 0, what: 'warmupCosine' });
  // Monotone: up through warm-up, then down.
  for (let step = 1; step <= totalSteps; step++) {
    const rising = step <= warmupSteps;
    assert.ok(rising ? actual[step] > actual[step - 1] : actual[step] < actual[step - 1], `step ${step}`);
  }
});

test('constantWithWarmup: linear warm-up then 1; no warm-up starts at 1', () => {
  const schedule = constantWithWarmup({ warmupSteps: 4 });
  assertClose(
    [0, 1, 2, 3, 4, 5, 1000].map((s) => schedule.factor(s)),
    [0, 0.25, 0.5, 0.75, 1, 1, 1],
    {
      atol: 0,
      rtol: 0,
      what: 'factors',
    },
  );
  assertClose(
    [
      constantWithWarmup({ warmupSteps: 0 }).factor(0),
      warmupCosine({ warmupSteps: 0, totalSteps: 10 }).factor(0),
    ],
    [1, 1],
    { atol: 0, rtol: 0, what: 'no warm-up' },
  );
  assert.deepEqual(schedule.config, { kind: 'constant_with_warmup', warmup_steps: 4 });
});

test('schedules reject bad options and steps', () => {
  assert.throws(() => warmupCosine({ warmupSteps: 10, totalSteps: 5 }), /totalSteps ≥ warmupSteps/);
  assert.throws(() => warmupCosine({ warmupSteps: 0, totalSteps: 5, minLrRatio: 2 }), /minLrRatio/);
  assert.throws(() => constantWithWarmup({ warmupSteps: -1 }), /warmupSteps/);
  assert.throws(() => constantWithWarmup({ warmupSteps: 1 }).factor(1.5), /integer ≥ 0, found 1.5/);
});
