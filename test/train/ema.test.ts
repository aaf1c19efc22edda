import assert from 'node:assert/strict';
import { test } from 'node:test';

import { EmaModel } from '../../src/train/ema.js';
import { assertClose, assertExactlyEqual } from '../compare.js';
import { normalArray, seededUniform, testSeed } from '../random.js';

test('EMA decay schedule: known values of diffusers EMAModel.get_decay', () => {
  const params = new Map([['w', new Float32Array(1)]]);
  // Update n uses t = n − update_after_step − 1: 0 for t ≤ 0, else min(decay, (1 + t)/(10 + t)).
  const diffusers = new EmaModel(params, { decay: 0.5 });
  assertClose(
    [1, 2, 3, 4, 100].map((n) => diffusers.decayAt(n)),
    [0, 2 / 11, 3 / 12, 4 / 13, 0.5],
    {
      atol: 1e-15,
      rtol: 0,
      what: 'diffusers warm-up',
    },
  );
  const delayed = new EmaModel(params, { updateAfterStep: 2 });
  assertClose(
    [1, 2, 3, 4].map((n) => delayed.decayAt(n)),
    [0, 0, 0, 2 / 11],
    { atol: 1e-15, rtol: 0, what: 'update_after_step' },
  );
  // use_ema_warmup: 1 − (1 + t/inv_gamma)^(−power), power 2/3: t = 1 gives 1 − 2^(−2/3) = 0.3700395, raised
  // to min_decay 0.4; t = 2 gives 1 − 3^(−2/3) = 0.5192501. The first update stays 0 (before the clamp).
  const power = new EmaModel(params, { warmup: 'power', minDecay: 0.4 });
  assertClose(
    [1, 2, 3].map((n) => power.decayAt(n)),
    [0, 0.4, 0.5192501],
    { atol: 1e-7, rtol: 0, what: 'power warm-up' },
  );
  const constant = new EmaModel(params, { warmup: 'none', decay: 0.9 });
  assertClose(
    [1, 2, 50].map((n) => constant.decayAt(n)),
    [0, 0.9, 0.9],
    { atol: 0, rtol: 0, what: 'no warm-up' },
  );
});

test('EMA: shadow weights against a float64 loop; state saved and loaded continues bit-identically', () => {
  const random = seededUniform(testSeed('EMA'));
  const names = ['w', 'b'];
  const initial = new Map(names.map((name, i) => [name, normalArray(6 + i, random)]));
  const trajectory = Array.from(
    { length: 12 },
    () => new Map(names.map((name, i) => [name, normalArray(6 + i, random)])),
  );
  const ema = new EmaModel(initial, { decay: 0.8 });
  const reference = new Map([...initial].map(([name, p]) => [name, Float64Array.from(p)]));
  trajectory.forEach((params, index) => {
    const decay = ema.step(params);
    const n = index + 1;
    const expectedDecay = n === 1 ? 0 : Math.min(0.8, n / (9 + n));
    assertClose([decay], [expectedDecay], { atol: 1e-15, rtol: 0, what: `decay at update ${n}` });
    for (const [name, shadow] of reference) {
      const p = params.get(name)!;
      for (let i = 0; i < shadow.length; i++)
        shadow[i] = expectedDecay * shadow[i] + (1 - expectedDecay) * p[i];
      assertClose(ema.shadow.get(name)!, shadow, { atol: 1e-6, rtol: 1e-6, what: `${name} at update ${n}` });
    }
  });

  const half = new EmaModel(initial, { decay: 0.8 });
  for (const params of trajectory.slice(0, 5)) half.step(params);
  const saved = half.stateDict();
  const restored = new EmaModel(initial, { decay: 0.8 });
  restored.loadStateDict({
    scalars: JSON.parse(JSON.stringify(saved.scalars)),
    shadow: new Map([...saved.shadow].map(([n, s]) => [n, s.slice()])),
  });
  assert.equal(restored.optimizationStep, 5);
  for (const params of trajectory.slice(5)) restored.step(params);
  for (const name of names) assertExactlyEqual(restored.shadow.get(name)!, ema.shadow.get(name)!, name);

  const target = new Map(names.map((name, i) => [name, new Float32Array(6 + i)]));
  ema.copyTo(target);
  for (const name of names) assertExactlyEqual(target.get(name)!, ema.shadow.get(name)!, `copyTo ${name}`);
  assert.throws(
    () => new EmaModel(initial, { decay: 0.9 }).loadStateDict(saved),
    /decay: expected 0.9, found 0.8/,
  );
  assert.throws(() => new EmaModel(initial, { decay: 1.5 }), /decay in \[0, 1\]/);
});
