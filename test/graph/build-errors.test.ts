/**
 * Shape, dtype and attribute errors are raised while the graph is built (not when ONNX Runtime
 * loads it), as GraphBuildErrors that name the module path, the op and the shapes involved, and
 * leave the graph unchanged.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { GraphBuildError } from '../../src/errors.js';
import type { DType, Shape, Tensor } from '../../src/graph/index.js';
import {
  Graph,
  attention,
  avgPool2d,
  concat,
  conv2d,
  expand,
  gather,
  pad,
  reshape,
  serialize,
  slice,
  split,
  squeeze,
  transpose,
  unsqueeze,
  upsample2d,
} from '../../src/graph/index.js';

let inputCount = 0;
function input(g: Graph, shape: Shape, dtype: DType = 'float32'): Tensor {
  return g.input(`in${inputCount++}`, dtype, shape);
}

/** `build` throws a GraphBuildError with `code` whose message matches `message`, adding no node. */
function throwsBuild(g: Graph, build: () => unknown, code: string, message: RegExp): void {
  const nodes = g.nodes.length;
  assert.throws(build, (e: unknown) => {
    assert.ok(e instanceof GraphBuildError, `expected a GraphBuildError, got ${String(e)}`);
    assert.equal(e.code, code, `code of "${e.message}"`);
    assert.match(e.message, message);
    assert.doesNotMatch(e.message, /(^|[\s(])(\w+)\)?: \2:/, 'the op is named once');
    return true;
  });
  assert.equal(g.nodes.length, nodes, 'a failed op adds no node');
}

describe('build-time errors name the op and the shapes', () => {
  it('concat of [2, 3] and [4, 5] along 0', () => {
    const g = new Graph();
    const [a, b] = [input(g, [2, 3]), input(g, [4, 5])];
    throwsBuild(
      g,
      () => concat([a, b], 0),
      'SHAPE',
      /^concat: shapes \[2, 3\] and \[4, 5\] differ outside axis 0$/,
    );
  });

  it('concat of different ranks or dtypes', () => {
    const g = new Graph();
    const a = input(g, [2, 3]);
    throwsBuild(
      g,
      () => concat([a, input(g, [2, 3, 1])], 1),
      'SHAPE',
      /^concat: shapes \[2, 3\] and \[2, 3, 1\] differ outside axis 1$/,
    );
    throwsBuild(
      g,
      () => concat([a, input(g, [2, 3], 'int64')], 0),
      'DTYPE',
      /^concat: dtypes differ \(float32 vs int64\)$/,
    );
    throwsBuild(
      g,
      () => concat([a, a], 2),
      'GRAPH_BUILD',
      /^concat: input \[2, 3\]: axis 2 is out of range for rank 2$/,
    );
  });

  it('reshape of [2, 3] to [4, 2]', () => {
    const g = new Graph();
    const x = input(g, [2, 3]);
    throwsBuild(
      g,
      () => reshape(x, [4, 2]),
      'SHAPE',
      /^reshape: cannot reshape \[2, 3\] \(6 elements\) to \[4, 2\] \(8 elements\)$/,
    );
    throwsBuild(
      g,
      () => reshape(x, [4, -1]),
      'SHAPE',
      /^reshape: cannot infer -1: \[2, 3\] has 6 elements, not a multiple of 4$/,
    );
    throwsBuild(g, () => reshape(x, [-1, -1]), 'SHAPE', /^reshape: at most one -1 in \[-1, -1\]$/);
  });

  it('reshape with named dims that do not match', () => {
    const g = new Graph();
    const x = input(g, ['B', 6]);
    throwsBuild(
      g,
      () => reshape(x, ['B', 4]),
      'SHAPE',
      /^reshape: cannot reshape \[B, 6\] \(6\*B elements\) to \[B, 4\] \(4\*B elements\)$/,
    );
    throwsBuild(
      g,
      () => reshape(x, ['S', -1]),
      'SHAPE',
      /^reshape: cannot infer -1: \[B, 6\] has 6\*B elements, not a multiple of S$/,
    );
  });

  it('transpose with a bad perm', () => {
    const g = new Graph();
    const x = input(g, [2, 3, 4]);
    throwsBuild(
      g,
      () => transpose(x, [0, 0, 1]),
      'ATTR',
      /^transpose: perm \[0, 0, 1\] is not a permutation of the 3 axes of \[2, 3, 4\]$/,
    );
    throwsBuild(
      g,
      () => transpose(x, [1, 0]),
      'ATTR',
      /^transpose: perm \[1, 0\] is not a permutation of the 3 axes of \[2, 3, 4\]$/,
    );
  });

  it('split, slice, gather, expand, pad and squeeze', () => {
    const g = new Graph();
    const x = input(g, [2, 6]);
    throwsBuild(
      g,
      () => split(x, [2, 3], 1),
      'SHAPE',
      /^split: sizes \[2, 3\] sum to 5, but axis 1 of \[2, 6\] is 6$/,
    );
    throwsBuild(
      g,
      () => split(x, 4, 1),
      'SHAPE',
      /^split: axis 1 of \[2, 6\] does not split into 4 equal parts$/,
    );
    throwsBuild(
      g,
      () => slice(x, { axis: 1, step: 0 }),
      'ATTR',
      /^slice: step must be a non-zero integer, got 0$/,
    );
    throwsBuild(g, () => slice(x, [{ axis: 1 }, { axis: -1 }]), 'ATTR', /^slice: axis -1 is sliced twice$/);
    throwsBuild(
      g,
      () => gather(x, input(g, [3])),
      'DTYPE',
      /^gather: indices must be int64 or int32, got float32$/,
    );
    throwsBuild(
      g,
      () => gather(x, input(g, [3], 'int64'), 2),
      'GRAPH_BUILD',
      /^gather: input \[2, 6\]: axis 2 is out of range for rank 2$/,
    );
    throwsBuild(
      g,
      () => split(x, 2, -3),
      'GRAPH_BUILD',
      /^split: input \[2, 6\]: axis -3 is out of range for rank 2$/,
    );
    throwsBuild(
      g,
      () => slice(x, { axis: 2, start: 1 }),
      'GRAPH_BUILD',
      /^slice: input \[2, 6\]: axis 2 is out of range for rank 2$/,
    );
    throwsBuild(
      g,
      () => unsqueeze(x, 3),
      'GRAPH_BUILD',
      /^unsqueeze: unsqueezing \[2, 6\] to rank 3: axis 3 is out of range for rank 3$/,
    );
    throwsBuild(
      g,
      () => squeeze(x, 2),
      'GRAPH_BUILD',
      /^squeeze: input \[2, 6\]: axis 2 is out of range for rank 2$/,
    );
    throwsBuild(g, () => expand(x, [4, 5]), 'SHAPE', /^expand: cannot expand \[2, 6\] to \[4, 5\]$/);
    throwsBuild(
      g,
      () =>
        pad(
          x,
          [
            [0, 0],
            [6, 0],
          ],
          { mode: 'reflect' },
        ),
      'ATTR',
      /^pad: reflect padding 6,0 must be smaller than dim 6$/,
    );
    throwsBuild(
      g,
      () => pad(x, [[0, 0]]),
      'ATTR',
      /^pad: pads has 1 \[before, after\] pairs, expected one per axis of \[2, 6\]$/,
    );
    throwsBuild(g, () => squeeze(x, 1), 'SHAPE', /^squeeze: axis 1 of \[2, 6\] is not 1$/);
  });

  it('conv2d with a channel mismatch', () => {
    const g = new Graph();
    const x = input(g, [1, 3, 8, 8]);
    throwsBuild(
      g,
      () => conv2d(x, input(g, [4, 2, 3, 3])),
      'SHAPE',
      /^conv2d: input \[1, 3, 8, 8\] has 3 channels, weight \[4, 2, 3, 3\] with groups=1 expects 2$/,
    );
    throwsBuild(
      g,
      () => conv2d(x, input(g, [4, 2, 3, 3]), undefined, { groups: 2 }),
      'SHAPE',
      /^conv2d: input \[1, 3, 8, 8\] has 3 channels, weight \[4, 2, 3, 3\] with groups=2 expects 4$/,
    );
  });

  it('conv2d with other bad arguments', () => {
    const g = new Graph();
    const x = input(g, [1, 4, 8, 8]);
    throwsBuild(
      g,
      () => conv2d(x, input(g, [3, 2, 3, 3]), undefined, { groups: 2 }),
      'SHAPE',
      /^conv2d: 3 output channels do not split into 2 groups$/,
    );
    throwsBuild(
      g,
      () => conv2d(x, input(g, [4, 4, 3, 3]), input(g, [3])),
      'SHAPE',
      /^conv2d: bias must be \[4\], got \[3\]$/,
    );
    throwsBuild(
      g,
      () => conv2d(x, input(g, [4, 4, 9, 1])),
      'SHAPE',
      /^conv2d: the window \(9\) is larger than the padded input \(8\)$/,
    );
    throwsBuild(
      g,
      () => conv2d(x, input(g, [4, 4, 3, 3]), undefined, { stride: 0 }),
      'ATTR',
      /^conv2d: stride, dilation and groups must be positive integers, got \[0, 0, 1, 1, 1\]$/,
    );
    throwsBuild(
      g,
      () => conv2d(input(g, [4, 8, 8]), input(g, [4, 4, 3, 3])),
      'SHAPE',
      /^conv2d: input \[N, C, H, W\]: expected rank 4, got shape \[4, 8, 8\]$/,
    );
    throwsBuild(
      g,
      () => conv2d(input(g, [1, 4, 8, 8], 'int64'), input(g, [4, 4, 3, 3], 'int64')),
      'DTYPE',
      /^conv2d: input: expected a float tensor, got int64$/,
    );
  });

  it('avgPool2d and upsample2d with bad arguments', () => {
    const g = new Graph();
    const x = input(g, [1, 2, 6, 6]);
    throwsBuild(
      g,
      () => avgPool2d(x, 2, { padding: 2 }),
      'ATTR',
      /^avgPool2d: padding must be at most half the kernel$/,
    );
    throwsBuild(
      g,
      () => upsample2d(x, { scale: 2, size: [3, 3] }),
      'ATTR',
      /^upsample2d: give exactly one of scale and size$/,
    );
    throwsBuild(
      g,
      () => upsample2d(x, { scale: 2, alignCorners: true }),
      'ATTR',
      /^upsample2d: alignCorners applies to bilinear only$/,
    );
    const ints = input(g, [1, 2, 6, 6], 'int32');
    throwsBuild(
      g,
      () => avgPool2d(ints, 2),
      'DTYPE',
      /^avgPool2d: input: expected a float tensor, got int32$/,
    );
    throwsBuild(
      g,
      () => upsample2d(ints, { scale: 2 }),
      'DTYPE',
      /^upsample2d: input: expected a float tensor, got int32$/,
    );
  });

  it('attention with a head-dim mismatch', () => {
    const g = new Graph();
    const [q, k, v] = [input(g, [2, 5, 8]), input(g, [2, 5, 12]), input(g, [2, 5, 8])];
    throwsBuild(
      g,
      () => attention(q, k, v, { numHeads: 2 }),
      'SHAPE',
      /^attention: query \[2, 5, 8\] has head dim 4 but key \[2, 5, 12\] has 6 \(numHeads=2\)/,
    );
    const [q4, k4] = [input(g, [2, 2, 5, 4]), input(g, [2, 2, 5, 3])];
    throwsBuild(
      g,
      () => attention(q4, k4, k4, { numHeads: 2 }),
      'SHAPE',
      /^attention: query \[2, 2, 5, 4\] has head dim 4 but key \[2, 2, 5, 3\] has 3/,
    );
  });

  it('attention with other mismatches', () => {
    const g = new Graph();
    const q = input(g, [2, 5, 8]);
    throwsBuild(
      g,
      () => attention(q, input(g, [2, 6, 8]), input(g, [2, 7, 8]), { numHeads: 2 }),
      'SHAPE',
      /^attention: key \[2, 6, 8\] and value \[2, 7, 8\] differ in length$/,
    );
    throwsBuild(
      g,
      () => attention(q, q, q, { numHeads: 3 }),
      'SHAPE',
      /^attention: query \[2, 5, 8\]: last dim must be a multiple of numHeads=3$/,
    );
    throwsBuild(
      g,
      () => attention(q, q, q, { numHeads: 2, mask: input(g, [2, 1, 5, 4], 'bool') }),
      'SHAPE',
      /^attention: mask \[2, 1, 5, 4\] does not broadcast to \[B, H, Sq, Skv\] = \[2, 2, 5, 5\]$/,
    );
    throwsBuild(
      g,
      () => attention(q, q, q, { numHeads: 2, mask: input(g, [5, 5], 'int64') }),
      'DTYPE',
      /^attention: mask must be bool \(true = attend\) or float32 \(added to scores\), got int64$/,
    );
    throwsBuild(
      g,
      () => attention(q, input(g, [3, 5, 8]), input(g, [3, 5, 8]), { numHeads: 2 }),
      'SHAPE',
      /^attention: batch dims differ: query \[2, 5, 8\], key \[3, 5, 8\], value \[3, 5, 8\]$/,
    );
  });

  it('messages carry the module path', () => {
    const g = new Graph();
    const [a, b] = [input(g, [2, 3]), input(g, [4, 5])];
    throwsBuild(
      g,
      () => g.scope('down_blocks.1', () => g.scope('resnets.0', () => concat([a, b], 0))),
      'SHAPE',
      /^down_blocks\.1\.resnets\.0 \(concat\): shapes \[2, 3\] and \[4, 5\] differ outside axis 0$/,
    );
  });

  it('an output cannot take the name of a different input', () => {
    const g = new Graph('clash');
    const x = g.input('x', 'float32', [2, 3]);
    const bias = g.input('bias', 'float32', [2, 3]);
    const joined = concat([x, bias], 0);
    throwsBuild(
      g,
      () => g.output('bias', joined),
      'NAME',
      /^graph "clash": output "bias" \(float32\[4, 3\]\) has the name of an input \(float32\[2, 3\]\); rename one of them$/,
    );
    const passThrough = new Graph('pass-through');
    passThrough.output('x', passThrough.input('x', 'float32', [2]));
    assert.doesNotThrow(() => serialize(passThrough));
  });

  it('graph inputs need plain dim names', () => {
    const g = new Graph();
    throwsBuild(
      g,
      () => g.input('x', 'float32', ['B*S', 4]),
      'GRAPH_BUILD',
      /^input "x": dim "B\*S" must be a number or a plain name like "B"$/,
    );
  });
});
