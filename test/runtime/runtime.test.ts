import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { RuntimeError, OptionError } from '../../src/errors.js';
import { Graph, add, gather, linear, matmul, mul } from '../../src/graph/index.js';
import { f32ToBf16, f32ToF16 } from '../../src/io/dtypes.js';
import { SafetensorsFile, writeSafetensors } from '../../src/io/safetensors.js';
import { weightFromFile } from '../../src/nn/weights.js';
import { hostTensor } from '../../src/runtime/host-tensor.js';
import { Runtime } from '../../src/runtime/runtime.js';
import { assertClose } from '../compare.js';
import { randomArray } from '../helpers.js';
import { seededUniform } from '../random.js';

const dir = mkdtempSync(join(tmpdir(), 'velodiff-rt-test-'));
const runtimes: Runtime[] = [];
function runtime(worker: boolean): Runtime {
  const rt = new Runtime({ worker, threads: 1 });
  runtimes.push(rt);
  return rt;
}
after(async () => {
  for (const rt of runtimes) await rt.dispose();
});

/** float64 reference of x·Wᵀ + b for x [m, k], W [n, k]. */
function linearRef(
  x: Float32Array,
  w: ArrayLike<number>,
  b: ArrayLike<number>,
  m: number,
  k: number,
  n: number,
): Float64Array {
  const y = new Float64Array(m * n);
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      let s = b[j];
      for (let p = 0; p < k; p++) s += x[i * k + p] * w[j * k + p];
      y[i * n + j] = s;
    }
  }
  return y;
}

describe('runtime', () => {
  it('runs weights stored as f32, f16 and bf16 in a safetensors file in place, cast to float32 in the graph', async () => {
    const random = seededUniform(11);
    const [m, k, n] = [3, 8, 5];
    const w = randomArray(n * k, random);
    const b = randomArray(n, random);
    const path = join(dir, 'weights.safetensors');
    await writeSafetensors(path, {
      'f32.weight': { dtype: 'F32', shape: [n, k], data: w },
      'f16.weight': { dtype: 'F16', shape: [n, k], data: f32ToF16(w) },
      'bf16.weight': { dtype: 'BF16', shape: [n, k], data: f32ToBf16(w) },
      bias: { dtype: 'F32', shape: [n], data: b },
    });
    const file = await SafetensorsFile.open(path);
    const g = new Graph();
    const x = g.input('x', 'float32', ['B', k]);
    const bias = weightFromFile(g, file, 'bias', { path });
    for (const kind of ['f32', 'f16', 'bf16']) {
      g.output(
        kind,
        linear(x, weightFromFile(g, file, `${kind}.weight`, { path, expectedShape: [n, k] }), bias),
      );
    }
    const xs = randomArray(m * k, random);
    const out = await (await runtime(false).compile(g)).run({ x: hostTensor('float32', [m, k], xs) });
    // The half-precision weights are rounded first: compare each with the reference of its own rounding.
    const round = (bits: Uint16Array, bf: boolean): number[] =>
      Array.from(bits, (v) => {
        if (bf) return new Float32Array(new Uint32Array([v << 16]).buffer)[0];
        const s = v & 0x8000 ? -1 : 1;
        const e = (v >> 10) & 0x1f;
        const f = v & 0x3ff;
        return e === 0 ? s * f * 2 ** -24 : s * (1 + f / 1024) * 2 ** (e - 15);
      });
    assertClose(out.f32.data as Float32Array, linearRef(xs, w, b, m, k, n), { what: 'f32' });
    assertClose(out.f16.data as Float32Array, linearRef(xs, round(f32ToF16(w), false), b, m, k, n), {
      what: 'f16',
    });
    assertClose(out.bf16.data as Float32Array, linearRef(xs, round(f32ToBf16(w), true), b, m, k, n), {
      what: 'bf16',
    });
    await file.close();
  });

  it('reads weights through symbolic links, as in a Hub cache (snapshot → blob)', async () => {
    const blobs = join(dir, 'cache', 'blobs');
    const snapshot = join(dir, 'cache', 'snapshots', 'rev', 'transformer');
    mkdirSync(blobs, { recursive: true });
    mkdirSync(snapshot, { recursive: true });
    const w = Float32Array.of(1, 2, 3, 4, 5, 6);
    await writeSafetensors(join(blobs, 'abc123'), { w: { dtype: 'F32', shape: [2, 3], data: w } });
    const link = join(snapshot, 'diffusion_pytorch_model.safetensors');
    symlinkSync('../../../blobs/abc123', link);
    const file = await SafetensorsFile.open(link);
    const g = new Graph();
    g.output('y', matmul(g.input('x', 'float32', [1, 2]), weightFromFile(g, file, 'w', { path: link })));
    const out = await (await runtime(false).compile(g)).run({ x: hostTensor('float32', [1, 2], [10, 100]) });
    assert.deepEqual([...(out.y.data as Float32Array)], [410, 520, 630]);
    await file.close();
  });

  it('gives the same results in a worker thread and in this thread', async () => {
    const random = seededUniform(12);
    const build = (): Graph => {
      const g = new Graph();
      const a = g.input('a', 'float32', ['N', 4]);
      g.output('y', mul(add(matmul(a, g.input('b', 'float32', [4, 'M'])), 1), 0.5));
      return g;
    };
    const feeds = {
      a: hostTensor('float32', [3, 4], randomArray(12, random)),
      b: hostTensor('float32', [4, 2], randomArray(8, random)),
    };
    const [w, i] = await Promise.all([
      (await runtime(true).compile(build())).run(feeds),
      (await runtime(false).compile(build())).run(feeds),
    ]);
    assert.deepEqual(w.y.shape, [3, 2]);
    assert.deepEqual([...(w.y.data as Float32Array)], [...(i.y.data as Float32Array)]);
  });

  it('compiles a graph once: an identical graph reuses the cached session', async () => {
    const rt = runtime(false);
    const build = (scale: number): Graph => {
      const g = new Graph();
      g.output('y', mul(g.input('x', 'float32', ['N']), scale));
      return g;
    };
    const first = await rt.compile(build(2));
    const again = await rt.compile(build(2));
    const other = await rt.compile(build(3));
    assert.equal(first, again);
    assert.notEqual(first, other);
    assert.equal(rt.cachedSessions, 2);
  });

  it('keeps the event loop free while a worker runs a long graph', async () => {
    // A chain of MatMuls long enough that the event loop turns many times while it runs; in-thread,
    // ORT's synchronous run would let it turn at most once.
    const g = new Graph();
    let y = g.input('x', 'float32', [256, 256]);
    const w = g.input('w', 'float32', [256, 256]);
    for (let i = 0; i < 400; i++) y = matmul(y, w);
    g.output('y', y);
    const feeds = { x: hostTensor('float32', [256, 256]), w: hostTensor('float32', [256, 256]) };
    const countTurns = async (worker: boolean): Promise<number> => {
      const compiled = await runtime(worker).compile(g);
      let turns = 0;
      let done = false;
      const spin = (): void => {
        if (done) return;
        turns++;
        setImmediate(spin);
      };
      const running = compiled.run(feeds).then(() => (done = true));
      setImmediate(spin);
      await running;
      return turns;
    };
    const inWorker = await countTurns(true);
    const inThread = await countTurns(false);
    assert.ok(inWorker >= 20, `event loop turned ${inWorker} times during a worker run`);
    assert.ok(inThread <= 2, `event loop turned ${inThread} times during an in-thread run`);
  });

  for (const worker of [false, true]) {
    it(`keeps retained outputs in the ${worker ? 'worker' : 'same thread'} and feeds them to another graph`, async () => {
      const rt = runtime(worker);
      const a = new Graph('produce');
      const x = a.input('x', 'float32', ['N']);
      a.output('doubled', mul(x, 2));
      a.output('plus', add(x, 1));
      const b = new Graph('consume');
      b.output('y', mul(b.input('cache', 'float32', ['N']), 10));
      const [produce, consume] = [await rt.compile(a), await rt.compile(b)];
      const { host, retained } = await produce.runRetaining({ x: hostTensor('float32', [3], [1, 2, 3]) }, [
        'doubled',
      ]);
      assert.deepEqual(Object.keys(host), ['plus']);
      assert.deepEqual([...(host.plus.data as Float32Array)], [2, 3, 4]);
      assert.deepEqual(retained.doubled.shape, [3]);
      const out = await consume.run({ cache: retained.doubled });
      assert.deepEqual([...(out.y.data as Float32Array)], [20, 40, 60]);
      await rt.releaseTensors([retained.doubled]);
      await assert.rejects(consume.run({ cache: retained.doubled }), /retained tensor .* was released/);
    });
  }

  it('reports ORT failures from the worker as RuntimeError', async () => {
    const g = new Graph();
    const x = g.input('x', 'float32', [4, 3]);
    g.output('y', gather(x, g.input('i', 'int64', ['N'])));
    const compiled = await runtime(true).compile(g);
    // Index values are data, so an out-of-range index is only found by ORT at run time.
    await assert.rejects(
      compiled.run({ x: hostTensor('float32', [4, 3]), i: hostTensor('int64', [2], [1, 10]) }),
      (e: unknown) =>
        e instanceof RuntimeError && e.code === 'ORT' && /Gather|out of|bounds/i.test(e.message),
    );
  });

  it('rejects bfloat16 at the graph boundary and unknown providers with clear errors', async () => {
    assert.throws(() => hostTensor('bfloat16', [2]), /bfloat16 .*cast to float32 inside the graph/);
    assert.throws(
      () => new Runtime({ executionProviders: ['tpu' as 'cpu'] }),
      (e: unknown) => e instanceof OptionError && /tpu/.test(e.message),
    );
    assert.throws(() => new Runtime({ executionProviders: ['coreml'] }), /coreml not available/);
    // A preference list keeps what this install can load; the CPU provider always ships.
    assert.deepEqual(new Runtime({ executionProviders: ['coreml', 'cpu'] }).settings.executionProviders, [
      'cpu',
    ]);
  });
});
