import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { OptionError } from '../../src/errors.js';
import type { TGateStep } from '../../src/attention/tgate.js';
import {
  TGateCaches,
  isTGateCacheOutput,
  pruneDeadStores,
  tgateCacheFeeds,
  tgateCacheName,
  tgateCachedName,
  tgatePlan,
} from '../../src/attention/tgate.js';
import type { TensorRef } from '../../src/runtime/backend.js';

/** The plan as the worked schedules of methods/tgate_flash.md §1.3 write it: ✓ compute, ★ store, ♻ reuse. */
function symbols(plan: TGateStep[], role: 'selfAttention' | 'crossAttention'): string {
  return plan.map((s) => ({ compute: '✓', store: '★', reuse: '♻' })[s[role]]).join('');
}

describe('T-GATE V2 plan (tgate_scheduler)', () => {
  it('PixArt-α/Σ, 25 steps, gate 15, sp 3, fi 1, warm-up 2 (README V2 settings)', () => {
    const plan = tgatePlan(25, { gateStep: 15, spInterval: 3, fiInterval: 1, warmUp: 2 }, true);
    // SA ✓ 0,1; ★ 2,3,6,9,12,14; ♻ 4,5,7,8,10,11,13; in FI (fi 1) computed and stored every step.
    assert.equal(symbols(plan, 'selfAttention'), '✓✓★★♻♻★♻♻★♻♻★♻★' + '★'.repeat(10));
    assert.equal(symbols(plan, 'crossAttention'), '✓'.repeat(14) + '★' + '♻'.repeat(10));
    assert.deepEqual(
      plan.map((s) => s.cfg),
      [...new Array(15).fill(true), ...new Array(10).fill(false)],
    );
    assert.deepEqual(
      plan.map((s) => s.average),
      plan.map((_, i) => i === 14),
    );
  });

  it('SDXL, 25 steps, gate 10, sp 5, warm-up 2', () => {
    const plan = tgatePlan(25, { gateStep: 10, spInterval: 5, fiInterval: 1, warmUp: 2 }, true);
    assert.equal(symbols(plan, 'selfAttention').slice(0, 10), '✓✓★♻♻★♻♻♻★');
    assert.equal(symbols(plan, 'crossAttention'), '✓'.repeat(9) + '★' + '♻'.repeat(15));
    assert.equal(plan.filter((s) => s.cfg).length, 10);
  });

  it('LCM, 4 steps, gate 1, sp 1, warm-up 0, lcm (no CFG): stores at step 0, never averages', () => {
    const plan = tgatePlan(4, { gateStep: 1, spInterval: 1, warmUp: 0, lcm: true }, false);
    assert.equal(symbols(plan, 'crossAttention'), '★♻♻♻');
    assert.equal(symbols(plan, 'selfAttention'), '★★★★');
    assert.ok(plan.every((s) => !s.average && !s.cfg));
  });

  it("reuse before anything was stored computes instead (the authors' fallback)", () => {
    const plan = tgatePlan(6, { gateStep: 4, spInterval: 2, warmUp: 5 }, true);
    // Warm-up covers the whole planning phase: nothing stored before the gate, so no self-attention reuse.
    assert.ok(plan.slice(0, 3).every((s) => s.selfAttention === 'compute'));
  });

  it('pruning drops only stores nobody reads', () => {
    const plan = pruneDeadStores(
      tgatePlan(25, { gateStep: 15, spInterval: 3, fiInterval: 1, warmUp: 2 }, true),
    );
    // Self-attention stores read later: 2, 3 (read at 4, 5), 6, 9, 12; the gate's and FI's are dead.
    assert.equal(symbols(plan, 'selfAttention'), '✓✓✓★♻♻★♻♻★♻♻★♻✓' + '✓'.repeat(10));
    assert.equal(symbols(plan, 'crossAttention'), '✓'.repeat(14) + '★' + '♻'.repeat(10));
    // Step 2's store is overwritten at step 3 before any reuse, so it is dead too.
    assert.equal(plan[2].selfAttention, 'compute');
    assert.ok(plan[14].average, 'the gate step still averages the cross-attention it stores');
  });

  it('rejects invalid options and lcm with a CFG batch', () => {
    assert.throws(
      () => tgatePlan(10, { gateStep: 0 }, true),
      (e: unknown) => e instanceof OptionError && /gateStep/.test(e.message),
    );
    assert.throws(() => tgatePlan(10, { gateStep: 3, spInterval: 0 }, true), /spInterval/);
    assert.throws(() => tgatePlan(10, { gateStep: 3, warmUp: -1 }, true), /warmUp/);
    assert.throws(() => tgatePlan(4, { gateStep: 1, lcm: true }, true), /guidanceScale ≤ 1/);
  });
});

describe('T-GATE cache names, spelled by tgate.ts only', () => {
  const ref = (id: number): TensorRef => ({ ref: id, dtype: 'float32', shape: [2, 4, 8] });

  it('a step graph reuses, under its cached inputs, what earlier steps stored', () => {
    const stored = tgateCacheName(3, 'attn2');
    assert.ok(isTGateCacheOutput(stored));
    assert.ok(!isTGateCacheOutput('sample'));
    assert.ok(!isTGateCacheOutput(tgateCachedName(3, 'attn2')), 'an input name is not an output name');
    const inputs = [{ name: 'hidden_states' }, { name: tgateCachedName(3, 'attn2') }];
    assert.deepEqual(tgateCacheFeeds(inputs, { [stored]: ref(7), [tgateCacheName(0, 'attn1')]: ref(8) }), {
      [tgateCachedName(3, 'attn2')]: ref(7),
    });
    assert.throws(
      () => tgateCacheFeeds(inputs, { [tgateCacheName(0, 'attn1')]: ref(8) }),
      (e: unknown) =>
        e instanceof OptionError && e.message.includes(`reuses "${stored}", which no earlier step stored`),
    );
  });

  it('TGateCaches keeps the latest output of each layer and frees the ones it replaces', async () => {
    const released: number[] = [];
    const caches = new TGateCaches({
      releaseTensors: async (refs) => {
        released.push(...refs.map((r) => r.ref));
      },
    });
    const a1 = tgateCacheName(0, 'attn1');
    const a2 = tgateCacheName(0, 'attn2');
    await caches.keep({ [a1]: ref(1), [a2]: ref(2), other: ref(3) });
    assert.deepEqual(Object.keys(caches.current).sort(), [a1, a2].sort(), 'only T-GATE outputs are kept');
    await caches.keep({ [a1]: ref(4) });
    assert.deepEqual(released, [1]);
    assert.equal(caches.current[a1].ref, 4);
    await caches.release();
    assert.deepEqual(released.sort(), [1, 2, 4]);
    assert.deepEqual(caches.current, {});
  });
});
