/**
 * One graph with named dims B and S, compiled once and served at several sizes in changing order.
 * Each run is compared with a float64 reference of the same block, and the runtime must keep a
 * single session for it.
 */
import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';

import type { Tensor } from '../../src/graph/index.js';
import {
  Graph,
  attention,
  avgPool2d,
  concat,
  conv2d,
  expand,
  matmul,
  pad,
  reshape,
  serialize,
  slice,
  split,
  transpose,
  upsample2d,
} from '../../src/graph/index.js';
import type { HostTensor } from '../../src/runtime/host-tensor.js';
import { hostTensor } from '../../src/runtime/host-tensor.js';
import { Runtime } from '../../src/runtime/runtime.js';
import { attentionRef } from '../reference/attention.js';
import { avgPool2dRef, conv2dRef, upsampleBilinearRef, upsampleNearestRef } from '../reference/conv.js';
import type { RefArray } from '../reference/layout.js';
import {
  assertMatchesRef,
  concatRef,
  fromHost,
  expandRef,
  generate,
  padRef,
  at,
  refArray,
  sliceRef,
  splitRef,
  transposeRef,
} from '../reference/layout.js';
import { randomArray, randomTensor } from '../helpers.js';
import { seededUniform } from '../random.js';

const HIDDEN = 8;
const HEADS = 2;
const HEAD_DIM = HIDDEN / HEADS;
const TOL = { atol: 1e-5, rtol: 1e-5 };

const weightValues = randomArray(HIDDEN * 3 * HIDDEN, seededUniform(401));

/**
 * x [B, S, 8] → qkv projection → split → (a) heads [B, 2, S, 4] with a key-padding mask, explicit
 * attention, merged back; (b) packed fused attention → concat with x → split / slice / reshape.
 */
function buildBlock(): Graph {
  const g = new Graph('dynamic-block');
  const x = g.input('x', 'float32', ['B', 'S', HIDDEN]);
  const keep = g.input('keep', 'bool', ['B', 1, 1, 'S']);
  const w = g.weight('qkv.weight', 'float32', [HIDDEN, 3 * HIDDEN], {
    kind: 'data',
    data: weightValues,
    storedDType: 'float32',
  });
  const [q, k, v] = split(matmul(x, w), 3, -1);
  const toHeads = (t: Tensor): Tensor => transpose(reshape(t, ['B', 'S', HEADS, HEAD_DIM]), [0, 2, 1, 3]);
  const masked = attention(toHeads(q), toHeads(k), toHeads(v), { numHeads: HEADS, mask: keep });
  const merged = reshape(transpose(masked, [0, 2, 1, 3]), ['B', 'S', HIDDEN]);
  const fused = attention(q, k, v, { numHeads: HEADS });
  const joined = concat([merged, fused, x], -1);
  const [left, right] = split(joined, [2 * HIDDEN, HIDDEN], -1);
  const rows = reshape(left, [-1, 2 * HIDDEN]);
  g.output('joined', joined);
  g.output('rows', rows);
  g.output('back', reshape(rows, ['B', 'S', 2 * HIDDEN]));
  g.output('first', slice(joined, { axis: 1, start: 0, end: 1 }));
  g.output('tail', slice(right, { axis: 1, start: -2 }));
  g.output('reversed', concat([slice(x, { axis: 1, step: -1 }), x], 1));
  return g;
}

function matmulRef(a: RefArray, b: RefArray): RefArray {
  const [batch, seq, inner] = a.shape;
  return generate([batch, seq, b.shape[1]], ([i, j, n]) => {
    let sum = 0;
    for (let c = 0; c < inner; c++) sum += at(a, [i, j, c]) * at(b, [c, n]);
    return sum;
  });
}

function blockRef(x: RefArray, keep: Uint8Array): Record<string, RefArray> {
  const [batch, seq] = x.shape;
  const [q, k, v] = splitRef(
    matmulRef(x, refArray([HIDDEN, 3 * HIDDEN], weightValues)),
    [HIDDEN, HIDDEN, HIDDEN],
    2,
  );
  const toHeads = (t: RefArray): RefArray =>
    transposeRef(refArray([batch, seq, HEADS, HEAD_DIM], t.data), [0, 2, 1, 3]);
  const masked = attentionRef(toHeads(q), toHeads(k), toHeads(v), HEADS, {
    mask: { shape: [batch, 1, 1, seq], data: keep, kind: 'bool' },
  });
  const merged = refArray([batch, seq, HIDDEN], transposeRef(masked, [0, 2, 1, 3]).data);
  const joined = concatRef([merged, attentionRef(q, k, v, HEADS), x], 2);
  const [left, right] = splitRef(joined, [2 * HIDDEN, HIDDEN], 2);
  return {
    joined,
    rows: refArray([batch * seq, 2 * HIDDEN], left.data),
    back: left,
    first: sliceRef(joined, [{ axis: 1, start: 0, end: 1 }]),
    tail: sliceRef(right, [{ axis: 1, start: -2 }]),
    reversed: concatRef([sliceRef(x, [{ axis: 1, step: -1 }]), x], 1),
  };
}

function feedsFor(batch: number, seq: number, seed: number): Record<string, HostTensor> {
  const random = seededUniform(seed);
  const keep = Uint8Array.from({ length: batch * seq }, () => (random() < 0.7 ? 1 : 0));
  for (let b = 0; b < batch; b++) keep[b * seq + Math.floor(random() * seq)] = 1;
  return {
    x: randomTensor([batch, seq, HIDDEN], random),
    keep: hostTensor('bool', [batch, 1, 1, seq], keep),
  };
}

describe('a graph with named dims served at several sizes', () => {
  const runtime = new Runtime({ worker: false, threads: 1 });
  after(() => runtime.dispose());

  it('matches the reference at every (B, S), in changing order, with one session', async () => {
    const graph = buildBlock();
    const compiled = await runtime.compile(graph);
    assert.equal(runtime.cachedSessions, 1);
    assert.deepEqual(
      compiled.inputs.map((i) => [i.name, i.shape]),
      [
        ['x', ['B', 'S', HIDDEN]],
        ['keep', ['B', 1, 1, 'S']],
      ],
    );
    const sizes: [number, number][] = [
      [2, 5],
      [1, 3],
      [3, 2],
      [2, 5],
      [1, 7],
      [1, 3],
    ];
    for (const [i, [batch, seq]] of sizes.entries()) {
      const feeds = feedsFor(batch, seq, 410 + i);
      const out = await compiled.run(feeds);
      const expected = blockRef(fromHost(feeds.x), feeds.keep.data as Uint8Array);
      for (const [name, ref] of Object.entries(expected))
        assertMatchesRef(out[name], ref, `B=${batch} S=${seq} ${name}`, TOL);
      assert.equal(runtime.cachedSessions, 1, `sessions after B=${batch} S=${seq}`);
    }
  });

  it('compiling the same graph again returns the cached session', async () => {
    const graph = buildBlock();
    const first = await runtime.compile(graph);
    const sessions = runtime.cachedSessions;
    assert.equal(await runtime.compile(graph), first, 'same Graph object');
    assert.equal(await runtime.compile(buildBlock()), first, 'an identical graph built again');
    assert.equal(await runtime.compile(serialize(buildBlock())), first, 'its serialized form');
    assert.equal(runtime.cachedSessions, sessions);
    assert.equal(runtime.cachedSessions, 1);
  });
});

const convWeight = randomArray(4 * 3 * 3 * 3, seededUniform(420));

/** x [B, 3, H, W] → strided conv → nearest ×2 → pool, bilinear ×2, edge pad, and a broadcast. */
function buildImageGraph(): Graph {
  const g = new Graph('dynamic-image');
  const x = g.input('x', 'float32', ['B', 3, 'H', 'W']);
  const bias = g.input('bias', 'float32', ['B', 4, 1, 1]);
  const w = g.weight('conv.weight', 'float32', [4, 3, 3, 3], {
    kind: 'data',
    data: convWeight,
    storedDType: 'float32',
  });
  const conv = conv2d(x, w, undefined, { stride: 2, padding: [1, 1, 0, 0] });
  const up = upsample2d(conv, { scale: 2 });
  g.output('conv', conv);
  g.output('pooled', avgPool2d(up, 3, { stride: 2, padding: 1, ceilMode: true, countIncludePad: false }));
  g.output('smooth', upsample2d(x, { scale: 2, mode: 'bilinear' }));
  g.output(
    'padded',
    pad(
      x,
      [
        [0, 0],
        [0, 0],
        [2, 1],
        [1, 0],
      ],
      { mode: 'edge' },
    ),
  );
  g.output('biasMap', expand(bias, ['B', 4, 'H', 'W']));
  return g;
}

describe('an image graph with named H and W', () => {
  it('matches the reference at several sizes with one session', async () => {
    const runtime = new Runtime({ worker: false, threads: 1 });
    try {
      const compiled = await runtime.compile(buildImageGraph());
      const sizes: [number, number, number][] = [
        [1, 8, 6],
        [2, 5, 7],
        [1, 9, 4],
        [1, 8, 6],
      ];
      for (const [i, [batch, h, w]] of sizes.entries()) {
        const random = seededUniform(430 + i);
        const feeds = {
          x: randomTensor([batch, 3, h, w], random),
          bias: randomTensor([batch, 4, 1, 1], random),
        };
        const out = await compiled.run(feeds);
        const x = fromHost(feeds.x);
        const conv = conv2dRef(x, refArray([4, 3, 3, 3], convWeight), undefined, {
          stride: [2, 2],
          pads: [1, 1, 0, 0],
          dilation: [1, 1],
          groups: 1,
        });
        const up = upsampleNearestRef(conv, [conv.shape[2] * 2, conv.shape[3] * 2]);
        const what = `B=${batch} H=${h} W=${w}`;
        assertMatchesRef(out.conv, conv, `${what} conv`, TOL);
        assertMatchesRef(
          out.pooled,
          avgPool2dRef(up, [3, 3], [2, 2], [1, 1], false, true),
          `${what} pooled`,
          TOL,
        );
        assertMatchesRef(out.smooth, upsampleBilinearRef(x, [2 * h, 2 * w], false), `${what} smooth`, TOL);
        const edge: [number, number][] = [
          [0, 0],
          [0, 0],
          [2, 1],
          [1, 0],
        ];
        assertMatchesRef(out.padded, padRef(x, edge, 'edge'), `${what} padded`);
        assertMatchesRef(out.biasMap, expandRef(fromHost(feeds.bias), [batch, 4, h, w]), `${what} bias`);
      }
      assert.equal(runtime.cachedSessions, 1);
    } finally {
      await runtime.dispose();
    }
  });
});
