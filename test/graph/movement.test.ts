/**
 * Data-movement ops (src/graph/ops/movement.ts) run through ONNX Runtime and compared element by
 * element with the float64 loops of test/reference/layout.ts. No arithmetic happens, so results
 * must match exactly.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import type { PadMode, SliceSpec, Tensor } from '../../src/graph/index.js';
import {
  concat,
  expand,
  gather,
  pad,
  reshape,
  slice,
  split,
  squeeze,
  transpose,
  unsqueeze,
} from '../../src/graph/index.js';
import { hostTensor } from '../../src/runtime/host-tensor.js';
import {
  assertMatchesRef,
  concatRef,
  expandRef,
  fromHost,
  gatherRef,
  padRef,
  reshapeRef,
  sliceRef,
  splitRef,
  transposeRef,
} from '../reference/layout.js';
import { randomTensor, runGraph } from '../helpers.js';
import { seededUniform } from '../random.js';

describe('reshape', () => {
  it('static target with and without -1', async () => {
    const x = randomTensor([2, 3, 4], seededUniform(101));
    const out = await runGraph(
      (_g, { x: t }) => ({ a: reshape(t, [4, -1]), b: reshape(t, [6, 4]), c: reshape(t, [-1]) }),
      { x },
    );
    assertMatchesRef(out.a, reshapeRef(fromHost(x), [4, 6]), 'reshape [4, -1]');
    assertMatchesRef(out.b, reshapeRef(fromHost(x), [6, 4]), 'reshape [6, 4]');
    assertMatchesRef(out.c, reshapeRef(fromHost(x), [24]), 'reshape [-1]');
  });

  it('named dims: split the last dim into heads, then merge everything but one with -1', async () => {
    const x = randomTensor([3, 5, 6], seededUniform(102));
    let heads: Tensor | undefined;
    let rows: Tensor | undefined;
    const out = await runGraph(
      (_g, { x: t }) => {
        heads = reshape(t, ['B', 'S', 2, 3]);
        rows = reshape(heads, [-1, 3]);
        return { heads, rows, back: reshape(rows, ['B', 'S', 6]) };
      },
      { x },
      { x: ['B', 'S', 6] },
    );
    assert.deepEqual(heads?.shape, ['B', 'S', 2, 3]);
    assert.deepEqual(rows?.shape, ['2*B*S', 3]);
    assertMatchesRef(out.heads, reshapeRef(fromHost(x), [3, 5, 2, 3]), 'heads');
    assertMatchesRef(out.rows, reshapeRef(fromHost(x), [30, 3]), 'rows');
    assertMatchesRef(out.back, reshapeRef(fromHost(x), [3, 5, 6]), 'back');
  });
});

describe('transpose', () => {
  const cases: { shape: number[]; perm?: number[]; seed: number }[] = [
    { shape: [2, 3, 4], perm: [1, 0, 2], seed: 111 },
    { shape: [2, 3, 4], perm: [2, 0, 1], seed: 112 },
    { shape: [2, 3, 4], perm: [0, 2, 1], seed: 113 },
    { shape: [2, 3, 4], seed: 114 },
    { shape: [2, 3, 4, 5], perm: [0, 2, 3, 1], seed: 115 },
    { shape: [2, 3, 4, 5], perm: [3, 1, 0, 2], seed: 116 },
  ];
  for (const { shape, perm, seed } of cases) {
    it(`[${shape.join(', ')}] by ${perm ? `[${perm.join(', ')}]` : 'reversal'}`, async () => {
      const x = randomTensor(shape, seededUniform(seed));
      const out = await runGraph((_g, { x: t }) => ({ y: transpose(t, perm) }), { x });
      const p = perm ?? shape.map((_, i) => shape.length - 1 - i);
      assertMatchesRef(out.y, transposeRef(fromHost(x), p), 'transpose');
    });
  }
});

describe('concat', () => {
  const cases: { shapes: number[][]; axis: number; seed: number }[] = [
    {
      shapes: [
        [1, 3, 4],
        [2, 3, 4],
        [3, 3, 4],
      ],
      axis: 0,
      seed: 121,
    },
    {
      shapes: [
        [2, 1, 4],
        [2, 5, 4],
        [2, 2, 4],
      ],
      axis: 1,
      seed: 122,
    },
    {
      shapes: [
        [2, 3, 2],
        [2, 3, 1],
        [2, 3, 4],
      ],
      axis: -1,
      seed: 123,
    },
  ];
  for (const { shapes, axis, seed } of cases) {
    it(`three inputs along axis ${axis}`, async () => {
      const random = seededUniform(seed);
      const feeds = {
        a: randomTensor(shapes[0], random),
        b: randomTensor(shapes[1], random),
        c: randomTensor(shapes[2], random),
      };
      const out = await runGraph((_g, { a, b, c }) => ({ y: concat([a, b, c], axis) }), feeds);
      const ax = axis < 0 ? axis + 3 : axis;
      assertMatchesRef(
        out.y,
        concatRef([fromHost(feeds.a), fromHost(feeds.b), fromHost(feeds.c)], ax),
        'concat',
      );
    });
  }
});

describe('split', () => {
  it('by sizes along axis 1', async () => {
    const x = randomTensor([2, 6, 3], seededUniform(131));
    const out = await runGraph(
      (_g, { x: t }) => {
        const [p, q, r] = split(t, [1, 3, 2], 1);
        return { p, q, r };
      },
      { x },
    );
    const [p, q, r] = splitRef(fromHost(x), [1, 3, 2], 1);
    assertMatchesRef(out.p, p, 'part 0');
    assertMatchesRef(out.q, q, 'part 1');
    assertMatchesRef(out.r, r, 'part 2');
  });

  it('into equal parts along the last axis', async () => {
    const x = randomTensor([2, 3, 6], seededUniform(132));
    const out = await runGraph(
      (_g, { x: t }) => {
        const [p, q, r] = split(t, 3, -1);
        return { p, q, r };
      },
      { x },
    );
    const [p, q, r] = splitRef(fromHost(x), [2, 2, 2], 2);
    assertMatchesRef(out.p, p, 'part 0');
    assertMatchesRef(out.q, q, 'part 1');
    assertMatchesRef(out.r, r, 'part 2');
  });
});

describe('slice (Python semantics)', () => {
  const cases: { name: string; specs: SliceSpec[]; seed: number }[] = [
    { name: 'positive start and end', specs: [{ axis: 0, start: 1, end: 4 }], seed: 141 },
    { name: 'negative start and end', specs: [{ axis: 1, start: -4, end: -1 }], seed: 142 },
    { name: 'step 2', specs: [{ axis: 2, start: 1, end: 7, step: 2 }], seed: 143 },
    { name: 'step 3 from a negative start to the end', specs: [{ axis: 2, start: -6, step: 3 }], seed: 144 },
    { name: 'reversal (step -1)', specs: [{ axis: 2, step: -1 }], seed: 145 },
    { name: 'step -2 between bounds', specs: [{ axis: 1, start: 4, end: 0, step: -2 }], seed: 146 },
    { name: 'step -3 from a negative start', specs: [{ axis: 2, start: -2, step: -3 }], seed: 147 },
    { name: 'end beyond the dim', specs: [{ axis: 1, start: 2, end: 50 }], seed: 148 },
    { name: 'start before the beginning', specs: [{ axis: 1, start: -100, end: 3 }], seed: 149 },
    {
      name: 'negative step starting beyond the dim',
      specs: [{ axis: 0, start: 10, end: -10, step: -2 }],
      seed: 150,
    },
    {
      name: 'negative step from before the beginning is empty',
      specs: [{ axis: 0, start: -10, step: -1 }],
      seed: 151,
    },
    {
      name: 'several axes at once',
      specs: [
        { axis: 0, start: -3 },
        { axis: 2, start: 2, end: 100, step: 3 },
        { axis: 1, start: 5, end: -7, step: -2 },
      ],
      seed: 152,
    },
  ];
  for (const { name, specs, seed } of cases) {
    it(name, async () => {
      const x = randomTensor([5, 6, 7], seededUniform(seed));
      let y: Tensor | undefined;
      const out = await runGraph(
        (_g, { x: t }) => {
          y = slice(t, specs);
          return { y };
        },
        { x },
      );
      const expected = sliceRef(fromHost(x), specs);
      assert.deepEqual(y?.shape, expected.shape, 'inferred shape');
      assertMatchesRef(out.y, expected, 'slice');
    });
  }
});

describe('gather', () => {
  it('axis 0 with int64 indices, negative ones included', async () => {
    const x = randomTensor([5, 4], seededUniform(161));
    const idx = [4, -1, 0, -5, 2];
    const out = await runGraph((_g, { x: t, i }) => ({ y: gather(t, i, 0) }), {
      x,
      i: hostTensor('int64', [5], idx),
    });
    assertMatchesRef(out.y, gatherRef(fromHost(x), idx, [5], 0), 'gather');
  });

  it('axis 1 with 2-D int32 indices', async () => {
    const x = randomTensor([3, 5], seededUniform(162));
    const idx = [1, -1, 0, 2, -3, 4];
    const out = await runGraph((_g, { x: t, i }) => ({ y: gather(t, i, 1) }), {
      x,
      i: hostTensor('int32', [2, 3], Int32Array.from(idx)),
    });
    assertMatchesRef(out.y, gatherRef(fromHost(x), idx, [2, 3], 1), 'gather');
  });

  it('axis 1 of a 3-D tensor with constant 2-D int64 indices', async () => {
    const x = randomTensor([2, 4, 3], seededUniform(163));
    const idx = [3, 0, -2, 1];
    const out = await runGraph(
      (g, { x: t }) => ({ y: gather(t, g.constant(BigInt64Array.from(idx, BigInt), 'int64', [2, 2]), 1) }),
      { x },
    );
    assertMatchesRef(out.y, gatherRef(fromHost(x), idx, [2, 2], 1), 'gather');
  });
});

describe('expand', () => {
  const cases: { from: number[]; to: number[]; seed: number }[] = [
    { from: [3, 1], to: [2, 3, 4], seed: 171 },
    { from: [1, 4], to: [3, 4], seed: 172 },
    { from: [2, 1, 3], to: [2, 5, 3], seed: 173 },
    { from: [4], to: [2, 3, 1], seed: 174 },
  ];
  for (const { from, to, seed } of cases) {
    it(`[${from.join(', ')}] to [${to.join(', ')}]`, async () => {
      const x = randomTensor(from, seededUniform(seed));
      const out = await runGraph((_g, { x: t }) => ({ y: expand(t, to) }), { x });
      assertMatchesRef(out.y, expandRef(fromHost(x), to), 'expand');
    });
  }
});

describe('pad', () => {
  const cases: {
    name: string;
    shape: number[];
    pads: [number, number][];
    mode: PadMode;
    value?: number;
    seed: number;
  }[] = [
    {
      name: 'constant with a value',
      shape: [2, 3, 4],
      pads: [
        [0, 0],
        [1, 2],
        [2, 1],
      ],
      mode: 'constant',
      value: 1.5,
      seed: 181,
    },
    {
      name: 'reflect',
      shape: [2, 3, 5],
      pads: [
        [0, 0],
        [2, 1],
        [1, 3],
      ],
      mode: 'reflect',
      seed: 182,
    },
    {
      name: 'edge',
      shape: [2, 3, 4],
      pads: [
        [1, 0],
        [0, 2],
        [3, 1],
      ],
      mode: 'edge',
      seed: 183,
    },
    {
      name: 'negative widths crop',
      shape: [2, 5, 6],
      pads: [
        [0, 0],
        [-1, 2],
        [1, -3],
      ],
      mode: 'constant',
      value: -2,
      seed: 184,
    },
  ];
  for (const { name, shape, pads, mode, value, seed } of cases) {
    it(name, async () => {
      const x = randomTensor(shape, seededUniform(seed));
      const out = await runGraph((_g, { x: t }) => ({ y: pad(t, pads, { mode, value }) }), { x });
      assertMatchesRef(out.y, padRef(fromHost(x), pads, mode, value ?? 0), `pad ${mode}`);
    });
  }
});

describe('unsqueeze and squeeze', () => {
  it('unsqueeze at positive and negative axes', async () => {
    const x = randomTensor([2, 3], seededUniform(191));
    const out = await runGraph(
      (_g, { x: t }) => ({ a: unsqueeze(t, [0, -1]), b: unsqueeze(t, 1), c: unsqueeze(t, []) }),
      { x },
    );
    assertMatchesRef(out.a, reshapeRef(fromHost(x), [1, 2, 3, 1]), 'unsqueeze [0, -1]');
    assertMatchesRef(out.b, reshapeRef(fromHost(x), [2, 1, 3]), 'unsqueeze 1');
    assertMatchesRef(out.c, reshapeRef(fromHost(x), [2, 3]), 'unsqueeze []');
  });

  it('squeeze only the named unit axes', async () => {
    const x = randomTensor([1, 2, 1, 3, 1], seededUniform(192));
    const out = await runGraph(
      (_g, { x: t }) => ({ a: squeeze(t, [0, 2]), b: squeeze(t, -1), c: squeeze(t, []) }),
      { x },
    );
    assertMatchesRef(out.a, reshapeRef(fromHost(x), [2, 3, 1]), 'squeeze [0, 2]');
    assertMatchesRef(out.b, reshapeRef(fromHost(x), [1, 2, 1, 3]), 'squeeze -1');
    assertMatchesRef(out.c, reshapeRef(fromHost(x), [1, 2, 1, 3, 1]), 'squeeze []');
  });
});
