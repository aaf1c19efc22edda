import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readFileSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { RuntimeError, OptionError } from '../../src/errors.js';
import { Graph, add, conv2d, gather, linear, matmul, mul } from '../../src/graph/index.js';
import { f32ToBf16, f32ToF16 } from '../../src/io/dtypes.js';
import { SafetensorsFile, writeSafetensors } from '../../src/io/safetensors.js';
import { weightFromFile } from '../../src/nn/weights.js';
import { hostTensor } from '../../src/runtime/host-tensor.js';
import { Runtime } from '../../src/runtime/runtime.js';
import { assertClose } from '../compare.js';
import { randomArray } from '../helpers.js';
import { seededUniform, testSeed } from '../random.js';

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

  it('compiles a graph under its own optimization level and prepacking, one session per setting', async () => {
    const rt = runtime(false);
    const build = (): Graph => {
      const g = new Graph();
      g.output('y', mul(g.input('x', 'float32', ['N']), 2));
      return g;
    };
    const plain = await rt.compile(build());
    const shared = await rt.compile(build(), rt.sharedWeightSettings);
    assert.deepEqual(rt.sharedWeightSettings, { optimizationLevel: 'extended', disablePrepacking: true });
    assert.equal(
      await rt.compile(build(), { optimizationLevel: 'extended', disablePrepacking: true }),
      shared,
    );
    assert.notEqual(shared, plain);
    assert.deepEqual([plain.settings.optimizationLevel, plain.settings.disablePrepacking], ['all', false]);
    assert.deepEqual(
      [shared.settings.optimizationLevel, shared.settings.disablePrepacking, shared.settings.intraOpThreads],
      ['extended', true, 1],
    );
    const x = hostTensor('float32', [5], randomArray(5, seededUniform(testSeed('per-graph settings'))));
    assert.deepEqual((await shared.run({ x })).y.data, (await plain.run({ x })).y.data);
    // A lower level than 'extended' is kept; the option off leaves every graph the runtime's settings.
    const basic = new Runtime({ worker: false, optimizationLevel: 'basic' });
    const off = new Runtime({ worker: false, shareWeightsAcrossGraphs: false });
    runtimes.push(basic, off);
    assert.deepEqual(basic.sharedWeightSettings, { optimizationLevel: 'basic', disablePrepacking: true });
    assert.deepEqual(off.sharedWeightSettings, {});
  });

  it('sessions under sharedWeightSettings read float32 Linear and Conv weights in place: no copy each', async (t) => {
    if (process.platform !== 'linux') return t.skip('reads RssAnon from /proc/self/status');
    const privateMb = (): number =>
      Number(/^RssAnon:\s+(\d+) kB$/m.exec(readFileSync('/proc/self/status', 'utf8'))?.[1]) / 1024;
    const random = seededUniform(testSeed('runtime weights in place'));
    const [width, channels] = [1024, 256];
    const path = join(dir, 'in-place.safetensors');
    const tensors: Record<string, { dtype: 'F32'; shape: number[]; data: Float32Array }> = {};
    for (let i = 0; i < 4; i++) {
      tensors[`linear${i}`] = {
        dtype: 'F32',
        shape: [width, width],
        data: randomArray(width * width, random),
      };
      tensors[`conv${i}`] = {
        dtype: 'F32',
        shape: [channels, channels, 3, 3],
        data: randomArray(channels * channels * 9, random),
      };
    }
    await writeSafetensors(path, tensors);
    const weightMb = (4 * (width * width + channels * channels * 9) * 4) / 2 ** 20; // 25 MB
    const file = await SafetensorsFile.open(path);
    const build = (session: number): Graph => {
      const g = new Graph(`in_place_${session}`);
      let h = g.input('h', 'float32', [2, 3, width]);
      let c = g.input('c', 'float32', [1, channels, 4, 4]);
      for (let i = 0; i < 4; i++) {
        h = linear(h, weightFromFile(g, file, `linear${i}`, { path }));
        c = conv2d(c, weightFromFile(g, file, `conv${i}`, { path }), undefined, { padding: 1 });
      }
      g.output('h_out', h);
      g.output('c_out', c);
      return g;
    };
    const rt = runtime(false);
    const before = privateMb();
    const sessions = 4;
    for (let s = 0; s < sessions; s++) await rt.compile(build(s), rt.sharedWeightSettings);
    const grown = privateMb() - before;
    // A copy of the weights per session would be 4 × 25 MB; ORT's own bookkeeping is far below one copy.
    t.diagnostic(
      `${sessions} sessions: private memory +${grown.toFixed(1)} MB (weights ${weightMb.toFixed(0)} MB)`,
    );
    assert.ok(grown < weightMb, `${sessions} sessions grew private memory by ${grown.toFixed(1)} MB`);
    await file.close();
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
