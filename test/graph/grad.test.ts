/**
 * grad() itself: which nodes get VJPs (pruning of frozen parts), sums over multiple uses, errors for
 * ops without a VJP (naming op and module path), non-differentiable values, unbroadcasting with
 * named dims, and forward + backward compiled into one session with parameters as graph inputs,
 * against a float64 JavaScript reference.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

import { GraphBuildError } from '../../src/errors.js';
import type { Node, Tensor } from '../../src/graph/index.js';
import {
  add,
  cast,
  defineOp,
  Graph,
  grad,
  greater,
  matmul,
  mean,
  mul,
  relu,
  sin,
  stopGradient,
  sub,
  sum,
  sumToShape,
  tanh,
  vjp,
  where,
} from '../../src/graph/index.js';
import { apply } from '../../src/graph/op.js';
import { WeightStore } from '../../src/io/diffusers.js';
import { buildT5EncoderGraph, parseT5EncoderConfig } from '../../src/models/t5-encoder.js';
import { Linear } from '../../src/nn/layers.js';
import { Params } from '../../src/nn/params.js';
import { ParameterInputs } from '../../src/nn/weights.js';
import type { HostTensor } from '../../src/runtime/host-tensor.js';
import { hostTensor } from '../../src/runtime/host-tensor.js';
import { assertClose, assertExactlyEqual } from '../compare.js';
import { testRuntime } from '../helpers.js';
import { seededUniform, testSeed } from '../random.js';
import { gradCheck } from './gradcheck.js';

/** Two-layer MLP on matmuls, each layer in its own scope; returns the graph and its parts. */
function mlp(): { g: Graph; x: Tensor; w1: Tensor; b1: Tensor; w2: Tensor; b2: Tensor; loss: Tensor } {
  const g = new Graph('mlp');
  const x = g.input('x', 'float64', [5, 3]);
  const w1 = g.input('w1', 'float64', [3, 4]);
  const b1 = g.input('b1', 'float64', [4]);
  const w2 = g.input('w2', 'float64', [4, 2]);
  const b2 = g.input('b2', 'float64', [2]);
  const h = g.scope('layer1', () => relu(add(matmul(x, w1), b1)));
  const y = g.scope('layer2', () => add(matmul(h, w2), b2));
  const loss = g.scope('loss', () => sum(mul(y, y), [0, 1]));
  return { g, x, w1, b1, w2, b2, loss };
}

const backwardNodes = (g: Graph, from: number): Node[] => g.nodes.slice(from);
const countOps = (nodes: Node[], op: string, scope?: string): number =>
  nodes.filter((n) => n.op === op && (scope === undefined || n.scope === scope)).length;

describe('grad: which nodes get VJPs', () => {
  it('builds nothing for a frozen first layer when only the second is differentiated', () => {
    const { g, loss, w2 } = mlp();
    const before = g.nodes.length;
    grad(loss, [w2]);
    const nodes = backwardNodes(g, before);
    assert.ok(nodes.length > 0);
    assert.ok(
      nodes.every((n) => n.scope.startsWith('grad')),
      'backward nodes live under grad/',
    );
    assert.deepEqual(
      nodes.filter((n) => n.scope === 'grad/layer1'),
      [],
      'no VJP of the frozen layer',
    );
    // dW2 = hᵀ·dy only: no dh = dy·W2ᵀ.
    assert.equal(countOps(nodes, 'matmul'), 1);
  });

  it('builds dh but not dW2 when only the first layer is differentiated', () => {
    const frozen = mlp();
    let before = frozen.g.nodes.length;
    grad(frozen.loss, [frozen.w1]);
    const onlyFirst = backwardNodes(frozen.g, before);
    const all = mlp();
    before = all.g.nodes.length;
    grad(all.loss, [all.w1, all.w2]);
    const both = backwardNodes(all.g, before);
    assert.equal(countOps(onlyFirst, 'matmul', 'grad/layer2'), 1, 'dh only');
    assert.equal(countOps(both, 'matmul', 'grad/layer2'), 2, 'dh and dW2');
    // dx is never asked for: layer 1 computes dW1 alone.
    assert.equal(countOps(onlyFirst, 'matmul', 'grad/layer1'), 1);
  });

  it('adds the cotangents of a value used several times, and matches d/dx (x² + sin x + x)', async () => {
    const seed = testSeed('grad multiple uses');
    const random = seededUniform(seed);
    const g = new Graph('uses');
    const x = g.input('x', 'float64', [7]);
    const y = g.scope('f', () => add(add(mul(x, x), sin(x)), x));
    const loss = sum(y, 0);
    const before = g.nodes.length;
    const [dx] = grad(loss, [x]);
    g.output('dx', dx);
    // Four uses of x (mul twice, sin, add): three adds sum their cotangents.
    assert.equal(countOps(backwardNodes(g, before), 'add', 'grad'), 3);
    const values = Float64Array.from({ length: 7 }, () => 4 * random() - 2);
    const out = await (await testRuntime().compile(g)).run({ x: hostTensor('float64', [7], values) });
    const expected = Array.from(values, (v) => 2 * v + Math.cos(v) + 1);
    assertClose(out.dx.data as Float64Array, expected, {
      atol: 1e-14,
      rtol: 1e-14,
      what: `dx (seed ${seed})`,
    });
  });

  it('stopGradient: its value passes, its gradient does not (d/dx of x·sg(x) + sg(x)³ is x), and nothing behind it is differentiated', async () => {
    const seed = testSeed('grad stop gradient');
    const random = seededUniform(seed);
    const g = new Graph('stop');
    const x = g.input('x', 'float64', [5]);
    const held = stopGradient(sin(x));
    const loss = sum(add(mul(x, held), mul(mul(held, held), held)), 0);
    const before = g.nodes.length;
    const [dx] = grad(loss, [x]);
    g.output('dx', dx);
    g.output('loss', loss);
    // No VJP of sin: it lies behind the stop.
    assert.equal(countOps(backwardNodes(g, before), 'cos', 'grad'), 0);
    const values = Float64Array.from({ length: 5 }, () => 4 * random() - 2);
    const out = await (await testRuntime().compile(g)).run({ x: hostTensor('float64', [5], values) });
    assertClose(out.dx.data as Float64Array, Array.from(values, Math.sin), {
      atol: 1e-15,
      rtol: 1e-15,
      what: `dx (seed ${seed})`,
    });
    const expectedLoss = Array.from(values).reduce((a, v) => a + v * Math.sin(v) + Math.sin(v) ** 3, 0);
    assertClose(out.loss.data as Float64Array, [expectedLoss], { atol: 1e-14, rtol: 1e-14, what: 'loss' });
  });

  it('gives zeros for a parameter the loss does not depend on, and 1 for the loss itself', async () => {
    const g = new Graph('unused');
    const x = g.input('x', 'float64', [2, 3]);
    const unused = g.input('unused', 'float64', ['B', 2]);
    const loss = mean(mul(x, x), [0, 1]);
    const [dUnused, dLoss] = grad(loss, [unused, loss]);
    g.output('dUnused', dUnused);
    g.output('dLoss', dLoss);
    const out = await (
      await testRuntime().compile(g)
    ).run({
      x: hostTensor('float64', [2, 3], new Float64Array(6).fill(1)),
      unused: hostTensor('float64', [3, 2], new Float64Array(6).fill(5)),
    });
    assert.deepEqual(out.dUnused.shape, [3, 2]);
    assertExactlyEqual(out.dUnused.data as Float64Array, new Array(6).fill(0), 'zeros');
    assertExactlyEqual(out.dLoss.data as Float64Array, [1], 'd loss / d loss');
  });

  it('differentiates with respect to an intermediate value', async () => {
    const g = new Graph('mid');
    const x = g.input('x', 'float64', [3]);
    const t = tanh(x);
    const loss = sum(mul(t, t), 0);
    const before = g.nodes.length;
    const [dt] = grad(loss, [t]);
    assert.equal(countOps(backwardNodes(g, before), 'tanh'), 0, 'nothing before t is differentiated');
    g.output('dt', dt);
    const values = Float64Array.of(-0.5, 0.25, 1.5);
    const out = await (await testRuntime().compile(g)).run({ x: hostTensor('float64', [3], values) });
    assertClose(
      out.dt.data as Float64Array,
      Array.from(values, (v) => 2 * Math.tanh(v)),
      {
        atol: 1e-15,
        rtol: 1e-15,
        what: 'd(t²)/dt',
      },
    );
  });
});

describe('grad: errors and non-differentiable values', () => {
  // An op with no VJP, as an op of another file would be before its gradient is written.
  const NoVjpOp = defineOp<Record<string, never>>({
    name: 'gradTestNoVjp',
    infer: ([x]) => [{ dtype: x.dtype, shape: x.shape }],
    lower: (ctx, node, [out]) => ctx.emit('Identity', [ctx.name(node.inputs[0])], [out]),
  });
  const noVjp = (x: Tensor): Tensor => apply(NoVjpOp, [x], {})[0];

  it('names the op without a VJP and its module path', () => {
    const g = new Graph('missing');
    const x = g.input('x', 'float32', [2]);
    const y = g.scope('transformer_blocks.3', () => g.scope('attn1', () => noVjp(mul(x, x))));
    assert.throws(
      () => grad(sum(y, 0), [x]),
      (e: unknown) =>
        e instanceof GraphBuildError &&
        e.code === 'NO_VJP' &&
        e.message.includes('"gradTestNoVjp"') &&
        e.message.includes("'transformer_blocks.3.attn1'"),
    );
  });

  it('accepts an op without a VJP off the path from the parameters to the loss', () => {
    const g = new Graph('frozen');
    const x = g.input('x', 'float32', [2]);
    const w = g.input('w', 'float32', [2]);
    const frozen = noVjp(x);
    const [dw] = grad(sum(mul(frozen, w), 0), [w]);
    assert.deepEqual(dw.shape, [2]);
  });

  it('stops gradients at comparisons and casts to int, and needs no VJP for them', async () => {
    const g = new Graph('masks');
    const x = g.input('x', 'float64', [4]);
    // where's condition and the int round trip carry no gradient.
    const masked = where(greater(x, 0), x, mul(x, 0.5));
    const rounded = cast(cast(x, 'int32'), 'float64');
    const [dx] = grad(sum(add(masked, rounded), 0), [x]);
    g.output('dx', dx);
    const values = Float64Array.of(-1.5, -0.25, 0.75, 2.5);
    const out = await (await testRuntime().compile(g)).run({ x: hostTensor('float64', [4], values) });
    assertExactlyEqual(out.dx.data as Float64Array, [0.5, 0.5, 1, 1], 'dx');
  });

  it('rejects a loss of more than one element, int parameters, and mismatched cotangents', () => {
    const g = new Graph('bad');
    const x = g.input('x', 'float32', [3]);
    const ids = g.input('ids', 'int64', [3]);
    const expectError = (f: () => unknown, fragment: string): void =>
      assert.throws(f, (e: unknown) => e instanceof GraphBuildError && e.message.includes(fragment));
    expectError(() => grad(mul(x, x), [x]), 'one element');
    expectError(() => grad(sum(x, 0), [ids]), 'only float tensors');
    expectError(() => vjp(mul(x, x), sum(x, 0), [x]), 'cotangent');
    assert.deepEqual(grad(sum(mul(x, x), 0, true), [x])[0].shape, [3], 'a [1] loss is accepted');
  });
});

describe('the gradient-check harness', () => {
  // Identity with a VJP that is 1% off: what the harness exists to catch.
  const SlightlyWrongOp = defineOp<Record<string, never>>({
    name: 'gradTestSlightlyWrong',
    infer: ([x]) => [{ dtype: x.dtype, shape: x.shape }],
    lower: (ctx, node, [out]) => ctx.emit('Identity', [ctx.name(node.inputs[0])], [out]),
    vjp: (_node, [g]) => [mul(g as Tensor, 1.01)],
  });

  for (const dtype of ['float64', 'float32'] as const) {
    it(`fails a VJP that is 1% off (${dtype})`, async () => {
      await assert.rejects(
        gradCheck({
          what: `wrong VJP ${dtype}`,
          dtype,
          inputs: { x: { shape: [3, 4], range: [1, 2] } },
          build: (_g, { x }) => apply(SlightlyWrongOp, [x], {})[0],
        }),
        (e: unknown) => e instanceof Error && e.message.includes('d/dx'),
      );
    });
  }

  it('samples coordinates of a large input and reports how many it checked', async () => {
    const report = await gradCheck({
      what: 'sampled coordinates',
      inputs: { x: { shape: [10, 10] }, w: { shape: [10], grad: false } },
      coordinates: 7,
      build: (_g, { x, w }) => mul(tanh(x), w),
    });
    assert.deepEqual(Object.keys(report.inputs), ['x']);
    assert.equal(report.inputs.x.checked, 7);
    assert.equal(report.inputs.x.of, 100);
  });
});

describe('sumToShape (unbroadcasting) with named dims', () => {
  it('sums leading dims away, keeps 1s, and leaves equal named dims alone', () => {
    const g = new Graph('unbroadcast');
    const t = g.input('t', 'float32', ['B', 'S', 4]);
    assert.deepEqual(sumToShape(t, [4]).shape, [4]);
    assert.deepEqual(sumToShape(t, ['S', 1]).shape, ['S', 1]);
    assert.deepEqual(sumToShape(t, [1, 'S', 4]).shape, [1, 'S', 4]);
    const before = g.nodes.length;
    assert.equal(sumToShape(t, ['B', 'S', 4]), t, 'nothing to sum');
    assert.equal(g.nodes.length, before);
  });

  it('sums a named dim broadcast against a number when it is 1 at run time', async () => {
    const g = new Graph('runtime-ones');
    const t = g.input('t', 'float64', [2, 5]);
    const s = sumToShape(t, [2, 'N']);
    assert.deepEqual(s.shape, [2, 'N']);
    g.input('like', 'float64', [2, 'N']);
    g.output('s', s);
    const compiled = await testRuntime().compile(g);
    const data = Float64Array.from({ length: 10 }, (_, i) => i);
    const run = async (n: number): Promise<Float64Array> =>
      (
        await compiled.run({
          t: hostTensor('float64', [2, 5], data),
          like: hostTensor('float64', [2, n], new Float64Array(2 * n)),
        })
      ).s.data as Float64Array;
    assertExactlyEqual(await run(1), [10, 35], 'N = 1: summed');
    assertExactlyEqual(await run(5), data, 'N = 5: unchanged');
    // Its own VJP (expand back), for both run-time values of N.
    for (const n of [1, 5]) {
      await gradCheck({
        what: `sumToShape at run time, N = ${n}`,
        inputs: { t: { shape: [2, 5] }, like: { shape: [2, n], dims: [2, 'N'], grad: false } },
        build: (_g, { t }) => sumToShape(t, [2, 'N']),
      });
    }
    const bad = new Graph('bad');
    assert.throws(
      () => sumToShape(bad.input('t', 'float32', [2, 5]), [2, 3]),
      (e: unknown) => e instanceof GraphBuildError && e.message.includes('does not broadcast'),
    );
  });

  it('gives correct gradients for broadcasting with named dims', async () => {
    await gradCheck({
      what: 'named-dim broadcasting',
      inputs: {
        x: { shape: [2, 3, 4], dims: ['B', 'S', 4] },
        scale: { shape: [2, 1, 1], dims: ['B', 1, 1] },
        bias: { shape: [4] },
        row: { shape: [3, 1], dims: ['S', 1] },
      },
      build: (_g, { x, scale, bias, row }) => sub(add(mul(x, scale), bias), row),
    });
    // G is 1 when the graph runs, so the cotangent of `gate` is summed over x's first axis then.
    await gradCheck({
      what: 'named dim that is 1 at run time',
      inputs: { x: { shape: [2, 3, 4] }, gate: { shape: [1, 3, 4], dims: ['G', 3, 4] } },
      build: (_g, { x, gate }) => mul(x, gate),
    });
  });
});

describe('forward and backward in one session, parameters as graph inputs', () => {
  it('trains-step a tiny MLP of nn.Linear layers: loss and gradients match a float64 reference', async () => {
    const seed = testSeed('grad tiny MLP');
    const random = seededUniform(seed);
    const [n, inF, hidden, outF] = [6, 3, 5, 2];
    const shapes = {
      'net.0.weight': [hidden, inF],
      'net.0.bias': [hidden],
      'net.2.weight': [outF, hidden],
      'net.2.bias': [outF],
    };
    const parameters = ParameterInputs.fromShapes(shapes);
    const g = new Graph('mlp-train');
    const x = g.input('x', 'float64', ['N', inF]);
    const target = g.input('target', 'float64', ['N', outF]);
    const net = Params.of(g, parameters, { dtype: 'float64' }).child('net');
    const h = tanh(Linear(net.child(0), x, inF, hidden));
    const y = Linear(net.child(2), h, hidden, outF);
    const diff = sub(y, target);
    const loss = mean(mul(diff, diff), [0, 1]);
    const inputs = parameters.inputsOf(g);
    assert.deepEqual(Object.keys(inputs).sort(), Object.keys(shapes).sort());
    g.output('loss', loss);
    for (const [name, dParam] of Object.entries(grad(loss, inputs))) g.output(`grad.${name}`, dParam);

    const compiled = await testRuntime().compile(g);
    assert.deepEqual(
      compiled.inputs.map((i) => i.name).sort(),
      ['net.0.bias', 'net.0.weight', 'net.2.bias', 'net.2.weight', 'target', 'x'],
      'parameters are graph inputs named by checkpoint name',
    );
    const draw = (count: number): Float64Array =>
      Float64Array.from({ length: count }, () => 2 * random() - 1);
    const values: Record<string, Float64Array> = {};
    for (const [name, shape] of Object.entries(shapes)) values[name] = draw(shape.reduce((a, b) => a * b, 1));
    const xs = draw(n * inF);
    const ts = draw(n * outF);
    const feeds = Object.fromEntries(
      Object.entries(shapes).map(([name, shape]) => [name, hostTensor('float64', shape, values[name])]),
    );
    const out = await compiled.run({
      ...feeds,
      x: hostTensor('float64', [n, inF], xs),
      target: hostTensor('float64', [n, outF], ts),
    });

    const ref = mlpReference(xs, ts, values, { n, inF, hidden, outF });
    assertClose(out.loss.data as Float64Array, [ref.loss], {
      atol: 0,
      rtol: 1e-13,
      what: `loss (seed ${seed})`,
    });
    for (const name of Object.keys(shapes)) {
      assertClose(out[`grad.${name}`].data as Float64Array, ref.grads[name], {
        atol: 1e-14,
        rtol: 1e-12,
        what: `d loss / d ${name} (seed ${seed})`,
      });
    }
  });
});

describe('a real model with its parameters as graph inputs', () => {
  it('the tiny T5 encoder: one session gives the loss of the file-backed model and every gradient', async () => {
    const seed = testSeed('grad T5 parameters as inputs');
    const random = seededUniform(seed);
    const dir = fileURLToPath(new URL('../golden/text_encoders/t5_encoder_tiny/model/', import.meta.url));
    const configPath = join(dir, 'config.json');
    const config = parseT5EncoderConfig(JSON.parse(await readFile(configPath, 'utf8')), configPath);
    const file = await WeightStore.open(dir);
    try {
      const options = { seqLength: 5, idsDType: 'int64', outputHiddenStates: false } as const;
      const ids = hostTensor(
        'int64',
        [2, 5],
        BigInt64Array.from({ length: 10 }, () => BigInt(Math.floor(random() * config.vocabSize))),
      );
      const sumOfSquares = (g: Graph): Tensor => {
        const y = g.outputs.get('last_hidden_state') as Tensor;
        return sum(mul(y, y), [0, 1, 2]);
      };

      const parameters = new ParameterInputs(file);
      const g = buildT5EncoderGraph(config, parameters, options);
      const inputs = parameters.inputsOf(g);
      assert.ok(Object.keys(inputs).includes('encoder.block.1.layer.0.SelfAttention.q.weight'));
      g.output('loss', sumOfSquares(g));
      const grads = grad(sumOfSquares(g), inputs);
      for (const [name, t] of Object.entries(grads)) g.output(`grad.${name}`, t);
      const feeds: Record<string, HostTensor> = { input_ids: ids };
      for (const name of Object.keys(inputs)) {
        feeds[name] = hostTensor('float32', file.info(name).shape, await file.readFloat32(name));
      }
      const out = await (await testRuntime().compile(g)).run(feeds);

      const fileBacked = buildT5EncoderGraph(config, file, options);
      fileBacked.output('loss', sumOfSquares(fileBacked));
      const reference = await (await testRuntime().compile(fileBacked)).run({ input_ids: ids });
      assertClose(out.loss.data as Float32Array, reference.loss.data as Float32Array, {
        atol: 0,
        rtol: 1e-5,
        what: `loss (seed ${seed})`,
      });
      for (const name of Object.keys(inputs)) {
        const dParam = out[`grad.${name}`];
        assert.deepEqual(dParam.shape, file.info(name).shape, name);
        assert.ok((dParam.data as Float32Array).every(Number.isFinite), `${name}: finite`);
      }
      const dQ = out['grad.encoder.block.0.layer.0.SelfAttention.q.weight'].data as Float32Array;
      assert.ok(
        dQ.some((v) => v !== 0),
        'attention weights get a gradient',
      );
    } finally {
      await file.close();
    }
  });
});

/** tanh MLP with an MSE loss, forward and backward written out in float64 loops. */
function mlpReference(
  x: Float64Array,
  t: Float64Array,
  p: Record<string, Float64Array>,
  { n, inF, hidden, outF }: { n: number; inF: number; hidden: number; outF: number },
): { loss: number; grads: Record<string, Float64Array> } {
  const [w1, b1, w2, b2] = ['net.0.weight', 'net.0.bias', 'net.2.weight', 'net.2.bias'].map((k) => p[k]);
  const h = new Float64Array(n * hidden);
  const dy = new Float64Array(n * outF);
  let loss = 0;
  for (let r = 0; r < n; r++) {
    for (let j = 0; j < hidden; j++) {
      let s = b1[j];
      for (let i = 0; i < inF; i++) s += x[r * inF + i] * w1[j * inF + i];
      h[r * hidden + j] = Math.tanh(s);
    }
    for (let o = 0; o < outF; o++) {
      let s = b2[o];
      for (let j = 0; j < hidden; j++) s += h[r * hidden + j] * w2[o * hidden + j];
      const d = s - t[r * outF + o];
      loss += (d * d) / (n * outF);
      dy[r * outF + o] = (2 * d) / (n * outF);
    }
  }
  const dw1 = new Float64Array(hidden * inF);
  const db1 = new Float64Array(hidden);
  const dw2 = new Float64Array(outF * hidden);
  const db2 = new Float64Array(outF);
  for (let r = 0; r < n; r++) {
    for (let o = 0; o < outF; o++) {
      db2[o] += dy[r * outF + o];
      for (let j = 0; j < hidden; j++) dw2[o * hidden + j] += dy[r * outF + o] * h[r * hidden + j];
    }
    for (let j = 0; j < hidden; j++) {
      let dh = 0;
      for (let o = 0; o < outF; o++) dh += dy[r * outF + o] * w2[o * hidden + j];
      const dPre = dh * (1 - h[r * hidden + j] ** 2);
      db1[j] += dPre;
      for (let i = 0; i < inF; i++) dw1[j * inF + i] += dPre * x[r * inF + i];
    }
  }
  return {
    loss,
    grads: { 'net.0.weight': dw1, 'net.0.bias': db1, 'net.2.weight': dw2, 'net.2.bias': db2 },
  };
}
