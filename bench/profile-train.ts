// `npx tsx bench/profile-train.ts [text-to-image|vae] [RUNS] [BATCH]`: ORT's per-op profile of one
// training step graph of bench/train.ts (forward + backward, parameters fed, gradients returned), in
// steady-state runs: kernel time by op type, forward vs backward (`grad/` scopes), and the time of
// session.run that no kernel accounts for (feeding parameters, returning gradients, scheduling).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { serialize } from '../src/graph/serialize.js';
import type { HostTensor } from '../src/runtime/host-tensor.js';
import { ort, sessionOptions } from '../src/runtime/ort-node.js';
import { buildTrainStepGraph } from '../src/train/train-step.js';
import { nowMs, readKernelProfile, table } from './stats.js';
import { textToImageCase, vaeCase } from './train.js';

/** The first runs of a session are slower while ORT's arena grows (measured: 124K minor page faults in
 * each of the first two runs of the text-to-image step, 3K from the third on); they are left out. */
const SKIPPED = 2;

const [model = 'text-to-image', runsArg = '4', batchArg] = process.argv.slice(2);
const runs = Number(runsArg);
if (!['text-to-image', 'vae'].includes(model) || !Number.isInteger(runs) || runs <= SKIPPED) {
  throw new Error(`usage: profile-train.ts [text-to-image|vae] [RUNS > ${SKIPPED}] [BATCH]`);
}
const c =
  model === 'vae'
    ? vaeCase({ vaeBatch: Number(batchArg ?? 8) })
    : textToImageCase({ batch: Number(batchArg ?? 32), vocab: 4000, textLength: 32 });
const built = buildTrainStepGraph(c.spec);
const dir = mkdtempSync(join(tmpdir(), 'velodiff-profile-train-'));
try {
  const options = sessionOptions({
    executionProviders: ['cpu'],
    intraOpThreads: Number(process.env.THREADS ?? 0),
    optimizationLevel: 'all',
    disablePrepacking: false,
    flushDenormals: true,
    allowSpinning: true,
  });
  const session = await ort().InferenceSession.create(serialize(built.graph).model, {
    ...options,
    enableProfiling: true,
    profileFilePrefix: join(dir, 'profile'),
  });
  const tensor = (t: HostTensor) =>
    new (ort().Tensor)(t.dtype as 'float32', t.data as Float32Array, [...t.shape]);
  const feeds: Record<string, ReturnType<typeof tensor>> = {};
  for (const [name, t] of Object.entries(c.feeds)) feeds[name] = tensor(t);
  for (const name of built.fed) {
    const values = c.params.get(name) as Float32Array;
    feeds[name] = new (ort().Tensor)('float32', values, [...(c.spec.shapes.get(name) as number[])]);
  }
  const wall: number[] = [];
  const faults: number[] = [];
  for (let r = 0; r < runs; r++) {
    const before = process.resourceUsage().minorPageFault;
    const t0 = nowMs();
    await session.run(feeds);
    wall.push(nowMs() - t0);
    faults.push(process.resourceUsage().minorPageFault - before);
  }
  session.endProfiling();
  await session.release();
  const { perRun, steady } = readKernelProfile(dir, runs, SKIPPED);
  const steadyRuns = runs - SKIPPED;
  const byOp = new Map<string, number>();
  const byNode = new Map<string, number>();
  let backward = 0;
  for (const e of steady) {
    const ms = e.dur / 1000 / steadyRuns;
    const node = `${e.args.op_name as string} ${e.name.replace(/_kernel_time$/, '')}`;
    byNode.set(node, (byNode.get(node) ?? 0) + ms);
    byOp.set(e.args.op_name as string, (byOp.get(e.args.op_name as string) ?? 0) + ms);
    if (e.name.startsWith('grad')) backward += ms;
  }
  const total = [...byOp.values()].reduce((a, b) => a + b, 0);
  const wallMs = wall.slice(SKIPPED).reduce((a, b) => a + b, 0) / steadyRuns;
  const parameterMb = ([...c.params.values()].reduce((n, p) => n + p.length, 0) * 4) / 2 ** 20;
  console.log(
    `${model}, batch ${c.batch}: ${perRun} nodes per run; session.run ${wallMs.toFixed(0)} ms, of which kernels ` +
      `${total.toFixed(0)} ms (backward-scoped nodes ${backward.toFixed(0)} ms); ${parameterMb.toFixed(1)} MB of ` +
      `parameters fed and as many of gradients returned per run; minor page faults per run ${faults.join(', ')}`,
  );
  console.log(
    table(
      ['op', 'ms/run', 'share'],
      [...byOp]
        .sort((a, b) => b[1] - a[1])
        .slice(0, 20)
        .map(([op, ms]) => [op, ms, `${((100 * ms) / total).toFixed(1)} %`]),
    ),
  );
  // Nodes grouped by op and module kind: block indices and node ids dropped from the ONNX name.
  const byModule = new Map<string, number>();
  for (const [node, ms] of byNode) {
    const [op, name] = node.split(' ');
    const module = name
      .split('/')
      .slice(0, -2)
      .join('/')
      .replace(/\.\d+(?=\.|$)/g, '.N');
    const key = `${op} ${module || '(top)'}`;
    byModule.set(key, (byModule.get(key) ?? 0) + ms);
  }
  console.log('\nkernel time by op and module (block indices merged; grad/… = backward)');
  console.log(
    table(
      ['op and module', 'ms/run', 'share'],
      [...byModule]
        .sort((a, b) => b[1] - a[1])
        .slice(0, Number(process.env.ROWS ?? 20))
        .map(([key, ms]) => [key, ms, `${((100 * ms) / total).toFixed(1)} %`]),
    ),
  );
} finally {
  rmSync(dir, { recursive: true, force: true });
}
