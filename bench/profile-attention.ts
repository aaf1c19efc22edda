// `npx tsx bench/profile-attention.ts KIND SIDE [RUNS]`: ORT's per-op profile of one attention kernel
// (q, k, v [1, SIDE², 1152] given; KIND = full | clear:R[:D] | linfusion), steady-state runs only.
// Where a kernel's time goes, op type by op type, e.g. `clear:16 128` for CLEAR r = 16 at 16K tokens.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { clearAttention } from '../src/attention/clear.js';
import { normalizedLinearAttention } from '../src/attention/linfusion.js';
import { Graph, attention } from '../src/graph/index.js';
import { serialize } from '../src/graph/serialize.js';
import { ort } from '../src/runtime/ort-node.js';
import { readKernelProfile, table } from './stats.js';

const DIM = 1152;
const HEADS = 16;
/** The first runs of a session are slower while ORT's arena grows; they are left out. */
const SKIPPED = 2;

const [kind = 'clear:16', sideArg = '128', runsArg = '5'] = process.argv.slice(2);
const side = Number(sideArg);
const runs = Number(runsArg);
if (!Number.isInteger(side) || side < 1 || !Number.isInteger(runs) || runs <= SKIPPED) {
  throw new Error(`usage: profile-attention.ts KIND SIDE [RUNS > ${SKIPPED}]`);
}
const N = side * side;
const g = new Graph('profile');
const [q, k, v] = ['q', 'k', 'v'].map((n) => g.input(n, 'float32', [1, N, DIM]));
let y;
if (kind === 'full') y = attention(q, k, v, { numHeads: HEADS });
else if (kind === 'linfusion') y = normalizedLinearAttention(q, k, v, HEADS);
else {
  const [radius, downFactor] = kind.split(':').slice(1).map(Number);
  y = clearAttention(q, k, v, { numHeads: HEADS, grid: { height: side, width: side }, radius, downFactor });
}
g.output('y', y);
const dir = mkdtempSync(join(tmpdir(), 'velodiff-profile-'));
try {
  const session = await ort().InferenceSession.create(serialize(g).model, {
    enableProfiling: true,
    profileFilePrefix: join(dir, 'profile'),
    // As the runtime's default (flushDenormals).
    extra: { session: { set_denormal_as_zero: '1' } },
  });
  const input = (o: number) =>
    new (ort().Tensor)(
      'float32',
      Float32Array.from({ length: N * DIM }, (_, i) => Math.sin(i * 0.1 + o)),
      [1, N, DIM],
    );
  const feeds = { q: input(0), k: input(1), v: input(2) };
  for (let r = 0; r < runs; r++) await session.run(feeds);
  session.endProfiling();
  await session.release();
  const { perRun, steady } = readKernelProfile(dir, runs, SKIPPED);
  const byOp = new Map<string, number>();
  for (const e of steady)
    byOp.set(
      e.args.op_name as string,
      (byOp.get(e.args.op_name as string) ?? 0) + e.dur / 1000 / (runs - SKIPPED),
    );
  const total = [...byOp.values()].reduce((a, b) => a + b, 0);
  console.log(
    `${kind} at ${N} tokens: ${perRun} nodes per run, ${total.toFixed(1)} ms of kernels per steady run`,
  );
  console.log(
    table(
      ['op', 'ms/run', 'share'],
      [...byOp]
        .sort((a, b) => b[1] - a[1])
        .map(([op, ms]) => [op, ms, `${((100 * ms) / total).toFixed(1)} %`]),
    ),
  );
} finally {
  rmSync(dir, { recursive: true, force: true });
}
