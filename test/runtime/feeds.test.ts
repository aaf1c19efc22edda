/**
 * A compiled graph rejects feeds that do not fit its inputs with a RuntimeError naming the input,
 * what was expected and what was given, and keeps working afterwards.
 */
import assert from 'node:assert/strict';
import { before, describe, it } from 'node:test';

import { RuntimeError } from '../../src/errors.js';
import { Graph, concat, transpose } from '../../src/graph/index.js';
import type { HostTensor } from '../../src/runtime/host-tensor.js';
import { hostTensor } from '../../src/runtime/host-tensor.js';
import type { CompiledGraph } from '../../src/runtime/runtime.js';
import { assertMatchesRef, concatRef, fromHost } from '../reference/layout.js';
import { randomTensor, testRuntime } from '../helpers.js';
import { seededUniform } from '../random.js';

/** x [B, S, 4] and m [B, S, 4]: y = concat(m, x) along S. */
function buildGraph(): Graph {
  const g = new Graph('feeds');
  const x = g.input('x', 'float32', ['B', 'S', 4]);
  const m = g.input('m', 'float32', ['B', 'S', 4]);
  g.output('y', concat([m, x], 1));
  return g;
}

function rejects(code: string, message: RegExp): (e: unknown) => boolean {
  return (e) => {
    assert.ok(e instanceof RuntimeError, `expected a RuntimeError, got ${String(e)}`);
    assert.equal(e.code, code);
    assert.match(e.message, message);
    return true;
  };
}

describe('feeds are checked against the compiled inputs', () => {
  let compiled: CompiledGraph;
  const random = seededUniform(501);
  const x = randomTensor([2, 3, 4], random);
  const m = randomTensor([2, 3, 4], random);
  before(async () => {
    compiled = await testRuntime().compile(buildGraph());
  });

  it('wrong dtype', async () => {
    const ints = hostTensor('int32', [2, 3, 4], new Int32Array(24));
    await assert.rejects(
      compiled.run({ x: ints, m }),
      rejects('DTYPE', /^input "x": expected float32, got int32$/),
    );
  });

  it('data array that does not fit the dtype', async () => {
    const wrong: HostTensor = { dtype: 'float32', shape: [2, 3, 4], data: new Int32Array(24) };
    await assert.rejects(
      compiled.run({ x, m: wrong }),
      rejects('DTYPE', /^input "m": float32 data must be a Float32Array, got Int32Array$/),
    );
  });

  it('wrong static dim', async () => {
    await assert.rejects(
      compiled.run({ x: randomTensor([2, 3, 5], random), m }),
      rejects('SHAPE', /^input "x": expected shape \[B, S, 4\], got \[2, 3, 5\]$/),
    );
  });

  it('wrong rank', async () => {
    await assert.rejects(
      compiled.run({ x, m: randomTensor([6, 4], random) }),
      rejects('SHAPE', /^input "m": expected shape \[B, S, 4\], got \[6, 4\]$/),
    );
  });

  it('a named dim bound to two different values', async () => {
    await assert.rejects(
      compiled.run({ x, m: randomTensor([2, 5, 4], random) }),
      rejects('SHAPE', /^input "m": dim S is 5 here but 3 in input "x" \(shape \[2, 5, 4\]\)$/),
    );
  });

  it('a named dim repeated within one input', async () => {
    const g = new Graph('square');
    g.output('y', transpose(g.input('a', 'float32', ['N', 'N'])));
    const square = await testRuntime().compile(g);
    await assert.rejects(
      square.run({ a: randomTensor([3, 4], random) }),
      rejects('SHAPE', /^input "a": dim N is 4 here but 3 in input "a" \(shape \[3, 4\]\)$/),
    );
  });

  it('a shape that disagrees with the data length', async () => {
    const short: HostTensor = { dtype: 'float32', shape: [2, 3, 4], data: new Float32Array(20) };
    await assert.rejects(
      compiled.run({ x: short, m }),
      rejects('SHAPE', /^input "x": shape \[2, 3, 4\] needs 24 values, got 20$/),
    );
  });

  it('missing input', async () => {
    await assert.rejects(compiled.run({ x }), rejects('INPUT', /^missing input "m" \(float32\[B, S, 4\]\)$/));
  });

  it('unknown input', async () => {
    await assert.rejects(
      compiled.run({ x, m, z: x }),
      rejects('INPUT', /^unknown input "z"; the graph takes x, m$/),
    );
  });

  it('unknown output', async () => {
    await assert.rejects(
      compiled.run({ x, m }, { outputs: ['w'] }),
      rejects('OUTPUT', /^unknown output "w"; the graph has y$/),
    );
  });

  it('still runs correctly after rejecting feeds', async () => {
    const out = await compiled.run({ x, m });
    assertMatchesRef(out.y, concatRef([fromHost(m), fromHost(x)], 1), 'y');
  });
});
