/**
 * RuntimeOptions.allowSpinning: it reaches every session's settings and ORT's session config as
 * `session.intra_op.allow_spinning`, a session created without spinning computes what one with it
 * does, and a value that is not a boolean is an OptionError.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { after, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

import { OptionError } from '../../src/errors.js';
import { Graph, linear } from '../../src/graph/index.js';
import { hostTensor } from '../../src/runtime/host-tensor.js';
import { sessionOptions } from '../../src/runtime/ort-node.js';
import { Runtime } from '../../src/runtime/runtime.js';
import { assertClose } from '../compare.js';
import { randomArray } from '../helpers.js';
import { seededUniform, testSeed } from '../random.js';

const runtimes: Runtime[] = [];
after(async () => {
  for (const rt of runtimes) await rt.dispose();
});

function sessionConfig(rt: Runtime): Record<string, string> {
  return (sessionOptions(rt.settings).extra as { session: Record<string, string> }).session;
}

describe('RuntimeOptions.allowSpinning', () => {
  it("is on by default (ORT's default) and reaches the session config both ways", () => {
    const plain = new Runtime({ worker: false });
    assert.equal(plain.settings.allowSpinning, true);
    assert.equal(sessionConfig(plain)['intra_op.allow_spinning'], '1');
    const off = new Runtime({ worker: false, allowSpinning: false });
    assert.equal(off.settings.allowSpinning, false);
    assert.equal(sessionConfig(off)['intra_op.allow_spinning'], '0');
    assert.equal(new Runtime({ worker: false, allowSpinning: true }).settings.allowSpinning, true);
  });

  it('compiles every graph under it, inline and in the worker, with the results of a spinning session', async () => {
    const uniform = seededUniform(testSeed('allowSpinning linear'));
    const [m, k, n] = [
      3 + Math.floor(uniform() * 30),
      16 + Math.floor(uniform() * 48),
      8 + Math.floor(uniform() * 24),
    ];
    const x = randomArray(m * k, uniform);
    const w = randomArray(n * k, uniform);
    const build = (): Graph => {
      const g = new Graph('spinning');
      const weight = g.weight('w', 'float32', [n, k], { kind: 'data', data: w, storedDType: 'float32' });
      g.output('y', linear(g.input('x', 'float32', [m, k]), weight));
      return g;
    };
    // float64 reference of x·Wᵀ.
    const expected = new Float64Array(m * n);
    for (let i = 0; i < m; i++)
      for (let j = 0; j < n; j++)
        for (let c = 0; c < k; c++) expected[i * n + j] += x[i * k + c] * w[j * k + c];
    for (const worker of [false, true]) {
      // Two threads, so that the session has an intra-op pool whose threads could spin.
      const rt = new Runtime({ worker, threads: 2, allowSpinning: false });
      runtimes.push(rt);
      const compiled = await rt.compile(build());
      assert.equal(compiled.settings.allowSpinning, false);
      const shared = await rt.compile(build(), rt.sharedWeightSettings);
      assert.equal(shared.settings.allowSpinning, false, 'per-graph overrides keep the runtime setting');
      const y = (await compiled.run({ x: hostTensor('float32', [m, k], x) })).y;
      assertClose(y.data as Float32Array, expected, { atol: 1e-5, rtol: 1e-5 });
    }
  });

  it("reaches ORT's session config as session.intra_op.allow_spinning (ORT's verbose log lists it)", () => {
    const module = (path: string): string => JSON.stringify(fileURLToPath(new URL(path, import.meta.url)));
    // A fresh process: ORT's default logger is per process, and it writes to the process's stderr.
    const script = `
      const { ort, sessionOptions } = await import(${module('../../src/runtime/ort-node.ts')});
      const { Runtime } = await import(${module('../../src/runtime/runtime.ts')});
      const { Graph, mul } = await import(${module('../../src/graph/index.ts')});
      const { serialize } = await import(${module('../../src/graph/serialize.ts')});
      const g = new Graph('spinning_log');
      g.output('y', mul(g.input('x', 'float32', [2]), 2));
      for (const allowSpinning of [false, true]) {
        const { settings } = new Runtime({ worker: false, threads: 2, allowSpinning });
        const options = { ...sessionOptions(settings), logSeverityLevel: 0 };
        await (await ort().InferenceSession.create(serialize(g).model, options)).release();
      }`;
    const child = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
      encoding: 'utf8',
    });
    assert.equal(child.status, 0, child.stderr);
    const configs = [...child.stderr.matchAll(/config_options: \{([^}]*)\}/g)].map((m) => m[1]);
    assert.equal(configs.length, 2, child.stderr.slice(0, 2000));
    assert.match(configs[0], /session\.intra_op\.allow_spinning: 0(\s|$)/);
    assert.match(configs[1], /session\.intra_op\.allow_spinning: 1(\s|$)/);
  });

  it('rejects a value that is not a boolean with an OptionError', () => {
    for (const value of ['0', 0, 'no', null]) {
      assert.throws(
        () => new Runtime({ worker: false, allowSpinning: value as unknown as boolean }),
        (e: unknown) => e instanceof OptionError && /allowSpinning must be true or false/.test(e.message),
        String(value),
      );
    }
  });
});
