import assert from 'node:assert/strict';
import { test } from 'node:test';

import { Prodigy, type ProdigyGlobalOptions, type ProdigyGroupOptions } from '../../src/train/prodigy.js';
import { assertClose, assertExactlyEqual } from '../compare.js';
import { normalArray, seededUniform, testSeed } from '../random.js';

interface ReferenceGroup extends ProdigyGroupOptions {
  names: string[];
}

/**
 * Prodigy in float64 from Mishchenko & Defazio (2023), Algorithm 3 (Prodigy with Adam updates), with
 * the published package's conventions: the d/d0 scaling of r and s, β3 = √β2 by default, bias correction
 * folded into dlr, safeguard warm-up (s accumulates d·g), slice_p, growth_rate, coupled or decoupled
 * weight decay, and a group of lr 0 that only decays.
 */
class ReferenceProdigy {
  readonly theta = new Map<string, Float64Array>();
  readonly theta0 = new Map<string, Float64Array>();
  readonly m = new Map<string, Float64Array>();
  readonly v = new Map<string, Float64Array>();
  readonly s = new Map<string, Float64Array>();
  d: number;
  dMax: number;
  dHat: number;
  r = 0;
  sNorm = 0;
  k = 0;
  constructor(
    readonly groups: ReferenceGroup[],
    readonly o: ProdigyGlobalOptions,
    initial: Map<string, Float32Array>,
  ) {
    this.d = o.d0;
    this.dMax = o.d0;
    this.dHat = o.d0;
    for (const group of groups) {
      for (const name of group.names) {
        const p = Float64Array.from(initial.get(name)!);
        this.theta.set(name, p);
        this.theta0.set(
          name,
          p.filter((_, i) => i % group.sliceP === 0),
        );
        this.m.set(name, new Float64Array(p.length));
        this.v.set(name, new Float64Array(p.length));
        this.s.set(name, new Float64Array(Math.ceil(p.length / group.sliceP)));
      }
    }
  }
  step(grads: Map<string, Float32Array>, lrFactor: number): void {
    const [beta1, beta2] = this.o.betas;
    const beta3 = this.o.beta3 ?? Math.sqrt(beta2);
    const lrs = this.groups.map((g) => g.lr * lrFactor);
    const lr = Math.max(...lrs);
    const t = this.k + 1;
    const dlr = this.d * lr * (this.o.useBiasCorrection ? Math.sqrt(1 - beta2 ** t) / (1 - beta1 ** t) : 1);
    const ratio = this.d / this.o.d0;
    let r = beta3 * this.r;
    let sNorm = 0;
    this.groups.forEach((group, gi) => {
      if (lrs[gi] === 0) return;
      for (const name of group.names) {
        const theta = this.theta.get(name)!;
        const g = Array.from(
          grads.get(name)!,
          (x, i) => x + (this.o.decouple ? 0 : group.weightDecay * theta[i]),
        );
        const m = this.m.get(name)!;
        const v = this.v.get(name)!;
        const s = this.s.get(name)!;
        const theta0 = this.theta0.get(name)!;
        for (let j = 0; j < s.length; j++) {
          const i = j * group.sliceP;
          r += ratio * dlr * g[i] * (theta0[j] - theta[i]);
          s[j] = beta3 * s[j] + ratio * (group.safeguardWarmup ? this.d : dlr) * g[i];
          sNorm += Math.abs(s[j]);
        }
        for (let i = 0; i < theta.length; i++) {
          m[i] = beta1 * m[i] + (1 - beta1) * this.d * g[i];
          v[i] = beta2 * v[i] + (1 - beta2) * this.d * this.d * g[i] * g[i];
        }
      }
    });
    if (sNorm === 0) return;
    const dHat = (this.o.dCoef * r) / sNorm;
    let d = this.d === this.o.d0 ? Math.max(this.d, dHat) : this.d;
    this.dMax = Math.max(this.dMax, dHat);
    d = Math.min(this.dMax, d * this.o.growthRate);
    this.r = r;
    this.sNorm = sNorm;
    this.dHat = dHat;
    this.d = d;
    for (const group of this.groups) {
      for (const name of group.names) {
        const theta = this.theta.get(name)!;
        const m = this.m.get(name)!;
        const v = this.v.get(name)!;
        for (let i = 0; i < theta.length; i++) {
          if (this.o.decouple) theta[i] -= group.weightDecay * dlr * theta[i];
          theta[i] -= (dlr * m[i]) / (Math.sqrt(v[i]) + d * group.eps);
        }
      }
    }
    this.k++;
  }
}

const GROUP_DEFAULTS: ProdigyGroupOptions = {
  lr: 1,
  weightDecay: 0,
  eps: 1e-8,
  safeguardWarmup: false,
  sliceP: 1,
};
const GLOBAL_DEFAULTS: ProdigyGlobalOptions = {
  betas: [0.9, 0.999],
  beta3: undefined,
  decouple: true,
  useBiasCorrection: false,
  d0: 1e-6,
  dCoef: 1,
  growthRate: Infinity,
};

test('Prodigy: 1-D known values with the defaults (hand-derived)', () => {
  const p = new Float32Array([0]);
  const params = new Map([['w', p]]);
  const optimizer = new Prodigy(['w']);
  const grad = new Map([['w', new Float32Array([0.5])]]);
  // Step 1: d = d0 = 1e-6 = dlr; p = p0 so r = 0 and d̂ = 0, d stays 1e-6. m = d(1 − β1)g = 5e-8,
  // v = d²(1 − β2)g² = 2.5e-16, so p = −dlr·m/(√v + dε) = −1e-6·5e-8/(1.58113883e-8 + 1e-14) = −3.16227566e-6.
  optimizer.step(params, grad);
  assertClose(p, [-3.16227566e-6], { atol: 0, rtol: 1e-7, what: 'p after step 1' });
  assertExactlyEqual([optimizer.estimate.d, optimizer.estimate.dHat], [1e-6, 0], 'd, d̂ after step 1');
  // Step 2: r = (d/d0)·dlr·g·(p0 − p) = 1e-6·0.5·3.16227566e-6 = 1.58113783e-12; s = 5e-7·(1 + √0.999)
  // = 9.99749937e-7; d̂ = r/s = 1.58153331e-6 > d0, so d = d_max = d̂. m = 9.5e-8, v = 4.9975e-16 and the
  // step still uses dlr = 1e-6: p = −3.16227566e-6 − 1e-6·9.5e-8/(2.23550889e-8 + d̂·1e-8) = −7.41186434e-6.
  optimizer.step(params, grad);
  assertClose(
    [optimizer.estimate.dHat, optimizer.estimate.d, optimizer.estimate.dMax],
    [1.58153331e-6, 1.58153331e-6, 1.58153331e-6],
    {
      atol: 0,
      rtol: 1e-6,
      what: 'd̂, d, d_max after step 2',
    },
  );
  assertClose(p, [-7.41186434e-6], { atol: 0, rtol: 1e-6, what: 'p after step 2' });
  assert.equal(optimizer.stepCount, 2);
});

function runAgainstReference(
  what: string,
  groups: ReferenceGroup[],
  globals: ProdigyGlobalOptions,
  lrFactors: number[],
  check: (
    optimizer: Prodigy,
    reference: ReferenceProdigy,
    params: Map<string, Float32Array>,
  ) => void = () => {},
): void {
  const random = seededUniform(testSeed(`Prodigy ${what}`));
  const names = groups.flatMap((g) => g.names);
  const initial = new Map(names.map((name, i) => [name, normalArray(7 + 5 * i, random)]));
  const optimizer = new Prodigy(
    groups.map(({ names: params, ...options }) => ({ params, options })),
    globals,
  );
  const reference = new ReferenceProdigy(groups, globals, initial);
  const params = new Map([...initial].map(([name, p]) => [name, p.slice()]));
  // A persistent direction plus noise, as the gradients of a loss are: d then grows well past d0.
  const drift = new Map(names.map((name) => [name, normalArray(initial.get(name)!.length, random)]));
  lrFactors.forEach((lrFactor, step) => {
    const grads = new Map(
      names.map((name) => [
        name,
        normalArray(initial.get(name)!.length, random).map((x, i) => drift.get(name)![i] + 0.5 * x),
      ]),
    );
    optimizer.step(params, grads, lrFactor);
    reference.step(grads, lrFactor);
    const at = `${what}, step ${step + 1}`;
    const e = optimizer.estimate;
    // r sums ⟨g, p0 − p⟩ with p0 − p a difference of float32 values (relative error ~1e-5 when p moved
    // by 1e-3 of its size), and its terms cancel: d, d̂ and r are compared on the scale of d.
    const dScale = Math.max(reference.dMax, Math.abs(reference.dHat));
    assertClose([e.d, e.dMax, e.dHat], [reference.d, reference.dMax, reference.dHat], {
      atol: 1e-4 * dScale,
      rtol: 0,
      what: `d, d_max, d̂ (${at})`,
    });
    assertClose([e.dNumerator], [reference.r], {
      atol: 1e-4 * dScale * reference.sNorm,
      rtol: 0,
      what: `r (${at})`,
    });
    assertClose([e.dDenominator], [reference.sNorm], { atol: 0, rtol: 1e-4, what: `‖s‖₁ (${at})` });
    for (const name of names) {
      assertClose(params.get(name)!, reference.theta.get(name)!, {
        atol: 1e-6,
        rtol: 1e-5,
        what: `${name} (${at})`,
      });
    }
    check(optimizer, reference, params);
  });
  assert.ok(optimizer.estimate.d > 1.25 * globals.d0, `${what}: d grew only to ${optimizer.estimate.d}`);
  // The run moved the parameters by much more than the tolerance, so the comparison had teeth.
  const moved = Math.max(
    ...names.map((name) => Math.max(...params.get(name)!.map((p, i) => Math.abs(p - initial.get(name)![i])))),
  );
  assert.ok(moved > 1e-3, `${what}: parameters moved only ${moved}`);
}

test('Prodigy: decoupled decay, bias correction, safeguard warm-up, growth rate, large eps vs float64', () => {
  runAgainstReference(
    'decoupled',
    [
      { ...GROUP_DEFAULTS, names: ['blocks.0.weight', 'blocks.1.weight'], weightDecay: 0.1 },
      { ...GROUP_DEFAULTS, names: ['blocks.0.bias'], eps: 0.05 },
    ],
    { ...GLOBAL_DEFAULTS, d0: 1e-3, useBiasCorrection: true, growthRate: 1.5, dCoef: 0.8 },
    [1, 0.9, 0.8, 1, 1, 0.7, 1, 1, 1, 1, 1, 1],
  );
  runAgainstReference(
    'safeguard warm-up',
    [{ ...GROUP_DEFAULTS, names: ['a', 'b'], weightDecay: 1e-2, safeguardWarmup: true }],
    { ...GLOBAL_DEFAULTS, d0: 1e-3, betas: [0.85, 0.99], beta3: 0.9 },
    [0.25, 0.5, 0.75, 1, 1, 1],
  );
});

test('Prodigy: coupled decay, slice_p, and a frozen (lr 0) group vs float64', () => {
  runAgainstReference(
    'coupled, sliced',
    [
      { ...GROUP_DEFAULTS, names: ['x', 'y'], weightDecay: 0.05, sliceP: 3 },
      { ...GROUP_DEFAULTS, names: ['frozen'], lr: 0, weightDecay: 0.3 },
    ],
    { ...GLOBAL_DEFAULTS, d0: 1e-2, decouple: false },
    [1, 1, 1, 1, 1],
  );
  // With decoupled decay the frozen group keeps zero moments but decays by wd·dlr every step, as the
  // package does.
  let previous: Float32Array | undefined;
  runAgainstReference(
    'frozen group decays',
    [
      { ...GROUP_DEFAULTS, names: ['x'] },
      { ...GROUP_DEFAULTS, names: ['frozen'], lr: 0, weightDecay: 0.3 },
    ],
    { ...GLOBAL_DEFAULTS, d0: 0.05 },
    [1, 1, 1, 1],
    (optimizer, _reference, params) => {
      const frozen = params.get('frozen')!;
      if (previous !== undefined)
        assert.ok(
          frozen.some((p, i) => p !== previous![i]),
          'the frozen group decayed',
        );
      previous = frozen.slice();
      const moments = optimizer.stateDict().tensors.get('exp_avg/frozen')!;
      assertExactlyEqual(moments, new Float32Array(moments.length), 'frozen exp_avg');
    },
  );
});

test('Prodigy: zero gradients leave parameters and the step count alone (the package returns early)', () => {
  const params = new Map([['w', new Float32Array([1, 2, 3])]]);
  const optimizer = new Prodigy(['w']);
  optimizer.step(params, new Map([['w', new Float32Array(3)]]));
  assertExactlyEqual(params.get('w')!, [1, 2, 3], 'w');
  assert.equal(optimizer.stepCount, 0);
});

test('Prodigy: state round trip continues bit-identically; mismatches are named', () => {
  const random = seededUniform(testSeed('Prodigy state'));
  const make = (): Prodigy =>
    new Prodigy(
      [
        { params: ['a'], options: { weightDecay: 0.01 } },
        { params: ['b'], options: { sliceP: 2 } },
      ],
      { d0: 1e-3 },
    );
  const initial = new Map([
    ['a', normalArray(9, random)],
    ['b', normalArray(5, random)],
  ]);
  const grads = Array.from(
    { length: 6 },
    () =>
      new Map([
        ['a', normalArray(9, random)],
        ['b', normalArray(5, random)],
      ]),
  );
  const straight = make();
  const straightParams = new Map([...initial].map(([n, p]) => [n, p.slice()]));
  for (const g of grads) straight.step(straightParams, g);

  const first = make();
  const params = new Map([...initial].map(([n, p]) => [n, p.slice()]));
  for (const g of grads.slice(0, 2)) first.step(params, g);
  const saved = first.stateDict();
  const json = JSON.parse(JSON.stringify(saved.scalars));
  const second = make();
  second.loadStateDict({
    kind: saved.kind,
    scalars: json,
    tensors: new Map([...saved.tensors].map(([k, t]) => [k, t.slice()])),
  });
  for (const g of grads.slice(2)) second.step(params, g);
  for (const name of ['a', 'b']) assertExactlyEqual(params.get(name)!, straightParams.get(name)!, name);
  assert.deepEqual(second.estimate, straight.estimate);

  const other = new Prodigy(
    [
      { params: ['a'], options: { weightDecay: 0.02 } },
      { params: ['b'], options: { sliceP: 2 } },
    ],
    { d0: 1e-3 },
  );
  assert.throws(
    () => other.loadStateDict(saved),
    /groups\[0\]\.options\.weight_decay: state 0\.01, now 0\.02/,
  );
  assert.throws(
    () =>
      new Prodigy([
        { params: ['a'], options: { lr: 1 } },
        { params: ['b'], options: { lr: 0.5 } },
      ]).step(
        new Map([
          ['a', new Float32Array(1)],
          ['b', new Float32Array(1)],
        ]),
        new Map([
          ['a', new Float32Array([1])],
          ['b', new Float32Array([1])],
        ]),
      ),
    /largest lr \(1\) or 0; group 1 has 0.5/,
  );
});
