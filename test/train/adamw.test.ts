import assert from 'node:assert/strict';
import { test } from 'node:test';

import { OptionError } from '../../src/errors.js';
import { AdamW } from '../../src/train/adamw.js';
import { weightDecayGroups } from '../../src/train/optimizer.js';
import { assertClose, assertExactlyEqual } from '../compare.js';
import { normalArray, seededUniform, testSeed } from '../random.js';

interface ReferenceGroup {
  names: string[];
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  amsgrad: boolean;
  maximize: boolean;
}

/**
 * AdamW in float64 from Loshchilov & Hutter (2019), Algorithm 2, in the form torch documents for
 * torch.optim.AdamW: θ ← θ − γλθ; m̂ = m/(1 − β1ᵗ); v̂ = v/(1 − β2ᵗ) (or its running max with amsgrad);
 * θ ← θ − γ·m̂/(√v̂ + ε).
 */
class ReferenceAdamW {
  readonly params = new Map<string, Float64Array>();
  readonly m = new Map<string, Float64Array>();
  readonly v = new Map<string, Float64Array>();
  readonly vMax = new Map<string, Float64Array>();
  t = 0;
  constructor(
    readonly groups: ReferenceGroup[],
    initial: Map<string, Float32Array>,
  ) {
    for (const [name, p] of initial) {
      this.params.set(name, Float64Array.from(p));
      this.m.set(name, new Float64Array(p.length));
      this.v.set(name, new Float64Array(p.length));
      this.vMax.set(name, new Float64Array(p.length));
    }
  }
  step(grads: Map<string, Float32Array>, lrFactor: number): void {
    this.t++;
    for (const group of this.groups) {
      const lr = group.lr * lrFactor;
      for (const name of group.names) {
        const theta = this.params.get(name)!;
        const m = this.m.get(name)!;
        const v = this.v.get(name)!;
        const vMax = this.vMax.get(name)!;
        const grad = grads.get(name)!;
        for (let i = 0; i < theta.length; i++) {
          const g = group.maximize ? -grad[i] : grad[i];
          theta[i] -= lr * group.weightDecay * theta[i];
          m[i] = group.beta1 * m[i] + (1 - group.beta1) * g;
          v[i] = group.beta2 * v[i] + (1 - group.beta2) * g * g;
          vMax[i] = Math.max(vMax[i], v[i]);
          const mHat = m[i] / (1 - group.beta1 ** this.t);
          const vHat = (group.amsgrad ? vMax[i] : v[i]) / (1 - group.beta2 ** this.t);
          theta[i] -= (lr * mHat) / (Math.sqrt(vHat) + group.eps);
        }
      }
    }
  }
}

test('AdamW: 1-D known values (hand-derived)', () => {
  const p = new Float32Array([1]);
  const params = new Map([['w', p]]);
  const optimizer = new AdamW(['w'], { lr: 0.1, weightDecay: 0.1 });
  // Step 1, g = 0.5: m = 0.05, v = 2.5e-4, bias corrections 0.1 and 1e-3, so the step size is 1 and
  // √v̂ = 0.5: p = 1·(1 − 0.01) − 0.05/(0.5 + 1e-8) = 0.890000002.
  optimizer.step(params, new Map([['w', new Float32Array([0.5])]]));
  assertClose(p, [0.890000002], { atol: 1e-7, rtol: 0, what: 'p after step 1' });
  // Step 2, g = −0.5: m = −0.005, v = 4.9975e-4, v̂ = 4.9975e-4/1.999e-3 = 0.25 exactly,
  // p = 0.89·0.99 + (0.1/0.19)·0.005/(0.5 + 1e-8) = 0.886363158.
  optimizer.step(params, new Map([['w', new Float32Array([-0.5])]]));
  assertClose(p, [0.8863631578], { atol: 1e-7, rtol: 0, what: 'p after step 2' });
  const state = optimizer.stateDict();
  assertClose(state.tensors.get('exp_avg/w')!, [-0.005], { atol: 1e-9, rtol: 1e-6, what: 'exp_avg' });
  assertClose(state.tensors.get('exp_avg_sq/w')!, [4.9975e-4], { atol: 0, rtol: 1e-6, what: 'exp_avg_sq' });
  assert.equal(state.scalars['step'], 2);
});

test('AdamW: several steps, groups, amsgrad, maximize and a large eps against a float64 derivation', () => {
  const random = seededUniform(testSeed('AdamW steps'));
  const shapes: Record<string, number> = {
    'proj.weight': 24,
    'proj.bias': 6,
    'norm.weight': 6,
    'out.weight': 12,
  };
  const initial = new Map(Object.entries(shapes).map(([name, n]) => [name, normalArray(n, random)]));
  // eps = 0.05 makes its placement (outside the root, after the bias correction) visible at every step.
  const groups: ReferenceGroup[] = [
    {
      names: ['proj.weight'],
      lr: 0.05,
      beta1: 0.9,
      beta2: 0.999,
      eps: 0.05,
      weightDecay: 0.1,
      amsgrad: false,
      maximize: false,
    },
    {
      names: ['proj.bias', 'norm.weight'],
      lr: 0.02,
      beta1: 0.8,
      beta2: 0.99,
      eps: 1e-8,
      weightDecay: 0,
      amsgrad: true,
      maximize: false,
    },
    {
      names: ['out.weight'],
      lr: 0.03,
      beta1: 0.9,
      beta2: 0.95,
      eps: 1e-3,
      weightDecay: 0.2,
      amsgrad: false,
      maximize: true,
    },
  ];
  const optimizer = new AdamW(
    groups.map((g) => ({
      params: g.names,
      options: {
        lr: g.lr,
        betas: [g.beta1, g.beta2] as const,
        eps: g.eps,
        weightDecay: g.weightDecay,
        amsgrad: g.amsgrad,
        maximize: g.maximize,
      },
    })),
  );
  const reference = new ReferenceAdamW(groups, initial);
  const params = new Map([...initial].map(([name, p]) => [name, p.slice()]));
  for (let step = 0; step < 8; step++) {
    // Shrinking gradients make amsgrad's running maximum differ from v.
    const scale = 2 / (1 + step);
    const grads = new Map(
      Object.entries(shapes).map(([name, n]) => [name, normalArray(n, random).map((g) => g * scale)]),
    );
    const lrFactor = 0.5 + random();
    optimizer.step(params, grads, lrFactor);
    reference.step(grads, lrFactor);
    for (const name of Object.keys(shapes)) {
      assertClose(params.get(name)!, reference.params.get(name)!, {
        atol: 2e-6,
        rtol: 2e-6,
        what: `${name} at step ${step + 1}`,
      });
    }
  }
  const state = optimizer.stateDict();
  for (const name of Object.keys(shapes)) {
    assertClose(state.tensors.get(`exp_avg/${name}`)!, reference.m.get(name)!, {
      atol: 1e-7,
      rtol: 1e-5,
      what: `exp_avg ${name}`,
    });
    assertClose(state.tensors.get(`exp_avg_sq/${name}`)!, reference.v.get(name)!, {
      atol: 1e-9,
      rtol: 1e-5,
      what: `exp_avg_sq ${name}`,
    });
  }
  assert.ok(state.tensors.has('max_exp_avg_sq/proj.bias'));
  assert.ok(!state.tensors.has('max_exp_avg_sq/proj.weight'));
});

test('AdamW: a state restored into a new optimizer continues bit-identically', () => {
  const random = seededUniform(testSeed('AdamW state'));
  const names = ['a.weight', 'a.bias'];
  const params = new Map(names.map((name) => [name, normalArray(10, random)]));
  const gradSteps = Array.from(
    { length: 6 },
    () => new Map(names.map((name) => [name, normalArray(10, random)])),
  );
  const groups = weightDecayGroups<{ weightDecay: number }>(names);
  const straight = new AdamW(groups, { lr: 0.01, amsgrad: true });
  const straightParams = new Map([...params].map(([n, p]) => [n, p.slice()]));
  for (const grads of gradSteps) straight.step(straightParams, grads);

  const first = new AdamW(groups, { lr: 0.01, amsgrad: true });
  const resumedParams = new Map([...params].map(([n, p]) => [n, p.slice()]));
  for (const grads of gradSteps.slice(0, 3)) first.step(resumedParams, grads);
  const saved = first.stateDict();
  const copy = { ...saved, tensors: new Map([...saved.tensors].map(([k, t]) => [k, t.slice()])) };
  const second = new AdamW(groups, { lr: 0.01, amsgrad: true });
  second.loadStateDict(copy);
  for (const grads of gradSteps.slice(3)) second.step(resumedParams, grads);
  for (const name of names) assertExactlyEqual(resumedParams.get(name)!, straightParams.get(name)!, name);
  assert.equal(second.stepCount, 6);
});

test('AdamW: rejects bad options, mismatched states and gradients clearly', () => {
  assert.throws(() => new AdamW(['w'], { betas: [1, 0.999] }), /betas\[0\]/);
  assert.throws(() => new AdamW(['w'], { lr: -1 }), OptionError);
  assert.throws(() => new AdamW([{ params: ['w'] }, { params: ['w'] }]), /more than one group/);
  const optimizer = new AdamW(['w', 'b']);
  const params = new Map([
    ['w', new Float32Array(3)],
    ['b', new Float32Array(2)],
  ]);
  assert.throws(() => optimizer.step(params, new Map([['w', new Float32Array(3)]])), /missing: 'b'/);
  assert.throws(
    () =>
      optimizer.step(
        params,
        new Map([
          ['w', new Float32Array(3)],
          ['b', new Float32Array(5)],
        ]),
      ),
    /'b' to have 2 elements, found 5/,
  );
  optimizer.step(
    params,
    new Map([
      ['w', new Float32Array(3)],
      ['b', new Float32Array(2)],
    ]),
  );
  const other = new AdamW(['w', 'b'], { weightDecay: 0.5 });
  assert.throws(() => other.loadStateDict(optimizer.stateDict()), /weight_decay: state 0.01, now 0.5/);
});

test('weightDecayGroups: no decay for biases and norm weights, by diffusers names', () => {
  const names = [
    'transformer_blocks.0.attn1.to_q.weight',
    'transformer_blocks.0.attn1.to_q.bias',
    'transformer_blocks.0.norm1.weight',
    'down_blocks.0.resnets.0.norm2.weight',
    'norm_out.linear.weight',
    'ln_f.weight',
    'scale_shift_table',
  ];
  assert.deepEqual(weightDecayGroups(names), [
    { params: ['transformer_blocks.0.attn1.to_q.weight', 'norm_out.linear.weight', 'scale_shift_table'] },
    {
      params: [
        'transformer_blocks.0.attn1.to_q.bias',
        'transformer_blocks.0.norm1.weight',
        'down_blocks.0.resnets.0.norm2.weight',
        'ln_f.weight',
      ],
      options: { weightDecay: 0 },
    },
  ]);
});
