import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { sessionOptions } from '../../src/runtime/ort-node.js';
import { Runtime } from '../../src/runtime/runtime.js';

const RUNTIME = fileURLToPath(new URL('../../src/runtime/runtime.ts', import.meta.url));
const GRAPH = fileURLToPath(new URL('../../src/graph/index.ts', import.meta.url));
const HOST = fileURLToPath(new URL('../../src/runtime/host-tensor.ts', import.meta.url));

/**
 * 1e-20 · 1e-20 = 1e-40, a denormal float32, computed by a fresh process whose first session uses
 * `options` (ORT applies the setting to the thread that creates the first session of a process).
 */
function productInFreshProcess(options: string): number {
  const script = `
    const { Runtime } = await import(${JSON.stringify(RUNTIME)});
    const { Graph, mul } = await import(${JSON.stringify(GRAPH)});
    const { hostTensor } = await import(${JSON.stringify(HOST)});
    const g = new Graph('denormal');
    g.output('y', mul(g.input('x', 'float32', [4]), 1e-20));
    const rt = new Runtime(${options});
    const c = await rt.compile(g);
    const y = await c.run({ x: hostTensor('float32', [4], new Float32Array(4).fill(1e-20)) });
    console.log(JSON.stringify(Array.from(y.y.data)));
    await rt.dispose();`;
  const out = execFileSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
    encoding: 'utf8',
  });
  const values = JSON.parse(out.trim().split('\n').pop() as string) as number[];
  assert.equal(values.length, 4);
  return values[0];
}

describe('flushing denormals', () => {
  it('is on by default and passed to ORT as session.set_denormal_as_zero', () => {
    assert.equal(new Runtime({ worker: false }).settings.flushDenormals, true);
    const on = sessionOptions({ ...new Runtime({ worker: false }).settings });
    assert.equal((on.extra as { session: Record<string, string> }).session.set_denormal_as_zero, '1');
    const off = sessionOptions({ ...new Runtime({ worker: false, flushDenormals: false }).settings });
    assert.equal((off.extra as { session: Record<string, string> }).session.set_denormal_as_zero, undefined);
  });

  it('turns a denormal product into 0, and keeps it when off', () => {
    assert.equal(productInFreshProcess('{ worker: false }'), 0);
    assert.equal(productInFreshProcess('{}'), 0); // in the worker thread
    const kept = productInFreshProcess('{ worker: false, flushDenormals: false }');
    assert.ok(kept > 0 && kept < 1.2e-38, `expected the denormal 1e-40, got ${kept}`);
    assert.ok(Math.abs(kept - 1e-40) < 1e-44, `expected 1e-40, got ${kept}`);
  });
});
