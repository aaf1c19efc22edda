/**
 * The runnable-model helper every model class runs through: input checks against a method's specs
 * with errors naming the model, the input, what was expected and what was found; one graph per
 * input layout; feeds the compiled graph rejects named with the model; retained outputs.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { GraphBuildError, OptionError, RuntimeError } from '../../src/errors.js';
import { Graph, add, mul } from '../../src/graph/index.js';
import type { HostTensor } from '../../src/runtime/host-tensor.js';
import { hostTensor } from '../../src/runtime/host-tensor.js';
import type { InputSpecs } from '../../src/runtime/runnable-model.js';
import { NUMERIC_DTYPES, RunnableModel, asBatch, asFloat32 } from '../../src/runtime/runnable-model.js';
import { assertExactlyEqual } from '../compare.js';
import { randomTensor, testRuntime } from '../helpers.js';
import { seededUniform, testSeed } from '../random.js';

const SPECS: InputSpecs = {
  sample: { dtypes: ['float32'], shape: ['B', 4, 'H', 'W'] },
  timestep: { dtypes: NUMERIC_DTYPES, shape: { oneOf: [[], [1], ['B']] } },
  context: { dtypes: ['float32'], shape: ['B', 'L', 3] },
  mask: { dtypes: ['int64', 'bool'], shape: ['B', 'L'], optional: true },
};

/** y = x·scale + bias over [B, N] for layout { scale }; `kept.y` is y·2 (an output to retain). */
function buildScaled(layout: { scale: number }): Graph {
  const g = new Graph('scaled');
  const x = g.input('x', 'float32', ['B', 'N']);
  const bias = g.input('bias', 'float32', ['N']);
  const y = add(mul(x, layout.scale), bias);
  g.output('y', y);
  g.output('kept.y', mul(y, 2));
  return g;
}

function model(build = buildScaled): RunnableModel<{ scale: number }> {
  return new RunnableModel({ className: 'TinyModel', dir: '/models/tiny', runtime: testRuntime(), build });
}

function rejectsWith(
  kind: typeof OptionError | typeof RuntimeError,
  code: string,
  message: RegExp,
): (e: unknown) => boolean {
  return (e) => {
    assert.ok(e instanceof kind, `expected a ${kind.name}, got ${String(e)}`);
    assert.equal((e as RuntimeError).code, code);
    assert.match((e as Error).message, message);
    return true;
  };
}

describe('RunnableModel.checkInputs', () => {
  const random = seededUniform(testSeed('test/runtime/runnable-model.test.ts'));
  const sample = randomTensor([2, 4, 3, 5], random);
  const context = randomTensor([2, 7, 3], random);
  const timestep = hostTensor('int64', [], [999]);
  const m = model();

  it('returns the value of every named dim, with a shape from oneOf and an optional input left out', () => {
    assert.deepEqual(m.checkInputs({ sample, timestep, context }, SPECS), { B: 2, H: 3, W: 5, L: 7 });
    const perSample = hostTensor('float32', [2], [1, 2]);
    const mask = hostTensor('bool', [2, 7]);
    assert.deepEqual(m.checkInputs({ sample, timestep: perSample, context, mask }, SPECS), {
      B: 2,
      H: 3,
      W: 5,
      L: 7,
    });
  });

  it('unknown and missing inputs are OptionErrors naming the model, the input and the expected names', () => {
    assert.throws(
      () => m.checkInputs({ sample, timestep, context, inputs_embeds: context }, SPECS),
      rejectsWith(
        OptionError,
        'INPUT',
        /^TinyModel\.forward \(\/models\/tiny\): unknown input "inputs_embeds"; expected sample, timestep, context, mask$/,
      ),
    );
    assert.throws(
      () => m.checkInputs({ sample, timestep }, SPECS, 'decode'),
      rejectsWith(
        OptionError,
        'INPUT',
        /^TinyModel\.decode \(\/models\/tiny\): missing input "context" \(float32 \[B, L, 3\]\)$/,
      ),
    );
  });

  it('a dtype outside the accepted ones names both', () => {
    const ids = hostTensor('int32', [2, 7]);
    assert.throws(
      () => m.checkInputs({ sample, timestep, context, mask: ids }, SPECS),
      rejectsWith(
        RuntimeError,
        'DTYPE',
        /^TinyModel\.forward \(\/models\/tiny\): input "mask": expected int64 or bool \[B, L\], got int32 \[2, 7\]$/,
      ),
    );
  });

  it('a wrong rank or fixed dim names the expected and the found shape', () => {
    assert.throws(
      () => m.checkInputs({ sample: randomTensor([2, 3, 3, 5], random), timestep, context }, SPECS),
      rejectsWith(
        RuntimeError,
        'SHAPE',
        /input "sample": expected float32 \[B, 4, H, W\], got float32 \[2, 3, 3, 5\]$/,
      ),
    );
    assert.throws(
      () => m.checkInputs({ sample: randomTensor([2, 4, 3], random), timestep, context }, SPECS),
      rejectsWith(
        RuntimeError,
        'SHAPE',
        /input "sample": expected float32 \[B, 4, H, W\], got float32 \[2, 4, 3\]$/,
      ),
    );
  });

  it('a name repeated in one shape must repeat its value', () => {
    const square: InputSpecs = { image: { dtypes: ['float32'], shape: ['N', 3, 'S', 'S'] } };
    assert.deepEqual(m.checkInputs({ image: randomTensor([1, 3, 4, 4], random) }, square), { N: 1, S: 4 });
    assert.throws(
      () => m.checkInputs({ image: randomTensor([1, 3, 4, 5], random) }, square),
      rejectsWith(
        RuntimeError,
        'SHAPE',
        /input "image": expected float32 \[N, 3, S, S\], got float32 \[1, 3, 4, 5\]$/,
      ),
    );
  });

  it('a named dim that disagrees with an earlier input names the input that set it', () => {
    const otherBatch = randomTensor([3, 7, 3], random);
    assert.throws(
      () => m.checkInputs({ sample, timestep, context: otherBatch }, SPECS),
      rejectsWith(
        RuntimeError,
        'SHAPE',
        /input "context": expected float32 \[B, L, 3\] with B = 2 \(from input "sample"\), got float32 \[3, 7, 3\]$/,
      ),
    );
    assert.throws(
      () => m.checkInputs({ sample, timestep: hostTensor('float32', [3], [1, 2, 3]), context }, SPECS),
      rejectsWith(
        RuntimeError,
        'SHAPE',
        /input "timestep": expected float32, float64, int64, int32 or bool \[\], \[1\] or \[B\] with B = 2 \(from input "sample"\), got float32 \[3\]$/,
      ),
    );
  });

  it('data that does not fill the shape', () => {
    const short: HostTensor = { dtype: 'float32', shape: [2, 7, 3], data: new Float32Array(41) };
    assert.throws(
      () => m.checkInputs({ sample, timestep, context: short }, SPECS),
      rejectsWith(RuntimeError, 'SHAPE', /input "context": shape \[2, 7, 3\] needs 42 values, got 41$/),
    );
  });

  it('methods and kwargs', () => {
    assert.equal(m.checkMethod(undefined, ['forward']), 'forward');
    assert.throws(
      () => m.checkMethod('encode', ['forward']),
      rejectsWith(OptionError, 'METHOD', /^TinyModel has no method "encode"; it has only forward$/),
    );
    m.checkKwargs({ return_dict: false, output_hidden_states: null }, [
      'return_dict',
      'output_hidden_states',
    ]);
    assert.throws(
      () => m.checkKwargs({ output_attentions: true }, ['return_dict']),
      rejectsWith(OptionError, 'KWARG', /unknown kwarg "output_attentions"; expected return_dict$/),
    );
    assert.throws(
      () => m.checkKwargs({ return_dict: 'yes' }, ['return_dict']),
      rejectsWith(OptionError, 'KWARG', /kwarg "return_dict" must be true or false, got "yes"$/),
    );
  });
});

describe('RunnableModel compile and run', () => {
  const random = seededUniform(testSeed('test/runtime/runnable-model.test.ts run'));
  const x = randomTensor([2, 3], random);
  const bias = randomTensor([3], random);

  it('builds one graph per layout, and runs it', async () => {
    const built: number[] = [];
    const m = model((layout) => {
      built.push(layout.scale);
      return buildScaled(layout);
    });
    const first = await m.compile({ scale: 3 });
    assert.equal(await m.compile({ scale: 3 }), first);
    assert.notEqual(await m.compile({ scale: 0.5 }), first);
    assert.deepEqual(built, [3, 0.5]);
    assert.equal(m.compiledLayouts, 2);
    const { host, retained } = await m.run({ scale: 3 }, { x, bias });
    assert.deepEqual(built, [3, 0.5], 'a run of a compiled layout builds nothing');
    assert.deepEqual(Object.keys(retained), []);
    const xs = x.data as Float32Array;
    const bs = bias.data as Float32Array;
    const expected = Float32Array.from(xs, (v, i) => Math.fround(Math.fround(v * 3) + bs[i % 3]));
    assertExactlyEqual(host.y.data as Float32Array, expected, 'y = 3x + bias');
  });

  it("compiles each layout under the settings the model gives it, the others under the runtime's", async () => {
    const runtime = testRuntime();
    const m = new RunnableModel<{ scale: number }>({
      className: 'TinyModel',
      dir: '/models/tiny',
      runtime,
      build: buildScaled,
      settings: (layout) => (layout.scale < 0 ? { optimizationLevel: 'basic', disablePrepacking: true } : {}),
    });
    const scale = -1 - Math.floor(random() * 4);
    const own = await m.compile({ scale });
    const plain = await m.compile({ scale: 2 });
    assert.deepEqual([own.settings.optimizationLevel, own.settings.disablePrepacking], ['basic', true]);
    assert.deepEqual(
      [plain.settings.optimizationLevel, plain.settings.disablePrepacking],
      [runtime.settings.optimizationLevel, runtime.settings.disablePrepacking],
    );
    const { host } = await m.run({ scale }, { x, bias });
    const xs = x.data as Float32Array;
    const bs = bias.data as Float32Array;
    const expected = Float32Array.from(xs, (v, i) => Math.fround(Math.fround(v * scale) + bs[i % 3]));
    assertExactlyEqual(host.y.data as Float32Array, expected, `y = ${scale}x + bias`);
  });

  it('a build error rejects and is not kept', async () => {
    let calls = 0;
    const m = model((layout) => {
      calls++;
      if (calls === 1) throw new GraphBuildError('transformer_blocks.0: no');
      return buildScaled(layout);
    });
    await assert.rejects(m.compile({ scale: 1 }), GraphBuildError);
    assert.equal(m.compiledLayouts, 0);
    await m.compile({ scale: 1 });
    assert.equal(calls, 2);
  });

  it('feeds the compiled graph rejects are errors naming the model', async () => {
    const m = model();
    await assert.rejects(
      m.run({ scale: 2 }, { x, bias: randomTensor([4], random) }),
      rejectsWith(
        RuntimeError,
        'SHAPE',
        /^TinyModel\.forward \(\/models\/tiny\): input "bias": dim N is 4 here but 3 in input "x"/,
      ),
    );
    await assert.rejects(
      m.run({ scale: 2 }, { x }, { method: 'step' }),
      rejectsWith(RuntimeError, 'INPUT', /^TinyModel\.step \(\/models\/tiny\): missing input "bias"/),
    );
  });

  it('keeps the outputs `retain` picks where the session runs, and adds graph-dependent feeds', async () => {
    const m = model();
    const { host, retained } = await m.run(
      { scale: 2 },
      { x },
      {
        retain: (name) => name.startsWith('kept.'),
        graphFeeds: (graph) => {
          assert.deepEqual(
            graph.inputs.map((i) => i.name),
            ['x', 'bias'],
          );
          return { bias };
        },
      },
    );
    assert.deepEqual(Object.keys(retained), ['kept.y']);
    assert.deepEqual([...retained['kept.y'].shape], [2, 3]);
    // A retained output fed back as an input of the next run.
    const again = await m.run({ scale: 1 }, { x: retained['kept.y'], bias: hostTensor('float32', [3]) });
    const y = host.y.data as Float32Array;
    assertExactlyEqual(
      again.host.y.data as Float32Array,
      Float32Array.from(y, (v) => Math.fround(2 * v)),
      '2y',
    );
    await testRuntime().releaseTensors(Object.values(retained));
  });
});

describe('feed conversions', () => {
  it('asFloat32 converts numbers, asBatch broadcasts a scalar or [1] to the batch', () => {
    const fromInt64 = asFloat32(hostTensor('int64', [2], [999, -3]));
    assert.equal(fromInt64.dtype, 'float32');
    assertExactlyEqual(fromInt64.data as Float32Array, [999, -3], 'int64');
    assertExactlyEqual(asFloat32(hostTensor('bool', [3], [1, 0, 1])).data as Float32Array, [1, 0, 1], 'bool');
    const t = hostTensor('float32', [], [0.25]);
    assert.deepEqual([...asBatch(t, 3).shape], [3]);
    assertExactlyEqual(asBatch(t, 3).data as Float32Array, [0.25, 0.25, 0.25], 'scalar');
    assert.deepEqual([...(asBatch(hostTensor('int64', [1], [7]), 2).data as BigInt64Array)], [7n, 7n]);
    const perSample = hostTensor('float32', [2], [1, 2]);
    assert.equal(asBatch(perSample, 2), perSample);
    assert.throws(() => asBatch(perSample, 3), /expected a scalar, \[1\] or \[3\], got \[2\]/);
  });
});
