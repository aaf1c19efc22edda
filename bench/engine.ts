import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import type { Tensor } from '../src/graph/index.js';
import { Graph, add, linear, matmul } from '../src/graph/index.js';
import { encodeModel } from '../src/graph/onnx/model.js';
import type { SerializedGraph } from '../src/graph/serialize.js';
import { OPSET } from '../src/graph/serialize.js';
import { SafetensorsFile, writeSafetensors } from '../src/io/safetensors.js';
import { weightFromFile } from '../src/nn/weights.js';
import { hostTensor } from '../src/runtime/host-tensor.js';
import { ort, sessionOptions } from '../src/runtime/ort-node.js';
import type { CompiledGraph } from '../src/runtime/runtime.js';
import { Runtime } from '../src/runtime/runtime.js';
import { physicalCores } from '../src/runtime/cpu-cores.js';
import { median, nowMs, table } from './stats.js';

export interface EngineBenchOptions {
  /** Rows of the activation. */
  m: number;
  /** Width of every square weight. */
  k: number;
  layers: number;
  reps: number;
  threads: number;
}

export interface EngineBenchResult {
  ir_ms: number;
  raw_ms: number;
  ir_linear_ms: number;
  ir_gflops: number;
  raw_gflops: number;
  ir_linear_gflops: number;
  ratio: number;
  flops: number;
  overhead_us: { inline: number; worker: number; ort_direct: number };
  m: number;
  k: number;
  layers: number;
  threads: number;
}

/**
 * (a) A chain of MatMuls built through the IR vs the same chain as a hand-written ONNX graph, both
 * with weights pointing into one safetensors file; (b) per-run overhead of a trivial graph; (c) the
 * GFLOP/s reached. Variants alternate run by run so machine noise hits both alike.
 */
export async function benchEngine(
  opts: EngineBenchOptions,
  log: (s: string) => void,
): Promise<EngineBenchResult> {
  const { m, k, layers, reps, threads } = opts;
  const dir = mkdtempSync(join(tmpdir(), 'velodiff-bench-'));
  try {
    const weightsPath = join(dir, 'weights.safetensors');
    const tensors: Record<string, { dtype: 'F32'; shape: number[]; data: Float32Array }> = {};
    let seed = 1;
    const random = (): number =>
      ((seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648 - 0.5) / Math.sqrt(k);
    for (let i = 0; i < layers; i++) {
      tensors[`w${i}`] = { dtype: 'F32', shape: [k, k], data: Float32Array.from({ length: k * k }, random) };
    }
    await writeSafetensors(weightsPath, tensors);
    const file = await SafetensorsFile.open(weightsPath);

    const irGraph = (useLinear: boolean): Graph => {
      const g = new Graph(useLinear ? 'linear_chain' : 'matmul_chain');
      let y: Tensor = g.input('x', 'float32', [m, k]);
      for (let i = 0; i < layers; i++) {
        const w = weightFromFile(g, file, `w${i}`, { path: weightsPath });
        y = useLinear ? linear(y, w) : matmul(y, w);
      }
      g.output('y', y);
      return g;
    };
    const raw = rawMatMulChain(file, weightsPath, m, k, layers);

    const runtime = new Runtime({ worker: false, threads });
    const variants: [string, CompiledGraph][] = [
      ['IR matmul chain', await runtime.compile(irGraph(false))],
      ['hand-written ONNX', await runtime.compile(raw)],
      ['IR linear chain (x·Wᵀ)', await runtime.compile(irGraph(true))],
    ];
    const x = hostTensor('float32', [m, k], Float32Array.from({ length: m * k }, random));
    const times = variants.map(() => [] as number[]);
    for (let r = -2; r < reps; r++) {
      for (let v = 0; v < variants.length; v++) {
        const t0 = nowMs();
        await variants[v][1].run({ x });
        if (r >= 0) times[v].push(nowMs() - t0);
      }
    }
    const flops = 2 * m * k * k * layers;
    const med = times.map(median);
    const gflops = med.map((t) => flops / t / 1e6);
    log(
      `(a) ${layers} MatMuls [${m}×${k}]·[${k}×${k}], ${(flops / 1e9).toFixed(2)} GFLOP per run, ${reps} runs, threads=${threads || `${physicalCores()} (one per core)`}`,
    );
    log(
      table(
        ['variant', 'median ms', 'min ms', 'GFLOP/s', 'vs hand-written'],
        variants.map(([name], i) => [
          name,
          med[i],
          Math.min(...times[i]),
          gflops[i],
          (med[1] / med[i]).toFixed(3),
        ]),
      ),
    );
    await runtime.dispose();
    await file.close();

    const overhead = await benchOverhead(threads, Math.max(200, reps * 50));
    log('\n(b) per-run overhead of a trivial graph (Add of two float32[16])');
    log(
      table(
        ['path', 'median µs/run'],
        [
          ['ORT session.run, direct', overhead.ort_direct],
          ['velodiff runtime, in-thread', overhead.inline],
          ['velodiff runtime, worker thread', overhead.worker],
        ],
      ),
    );
    log(
      `\n(c) GFLOP/s: IR ${gflops[0].toFixed(1)}, hand-written ${gflops[1].toFixed(1)}; IR/raw throughput ratio ${(gflops[0] / gflops[1]).toFixed(3)}`,
    );
    return {
      ir_ms: med[0],
      raw_ms: med[1],
      ir_linear_ms: med[2],
      ir_gflops: gflops[0],
      raw_gflops: gflops[1],
      ir_linear_gflops: gflops[2],
      ratio: gflops[0] / gflops[1],
      flops,
      overhead_us: overhead,
      m,
      k,
      layers,
      threads: threads || physicalCores(),
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** The same MatMul chain written directly as ONNX nodes, with no IR involved. */
function rawMatMulChain(
  file: SafetensorsFile,
  path: string,
  m: number,
  k: number,
  layers: number,
): SerializedGraph {
  const location = 'weights.safetensors';
  const nodes = [];
  const initializers = [];
  for (let i = 0; i < layers; i++) {
    const info = file.info(`w${i}`);
    initializers.push({
      name: `w${i}`,
      dataType: 1,
      dims: [k, k],
      external: { location, offset: info.fileOffset, length: info.byteLength },
    });
    nodes.push({
      opType: 'MatMul',
      inputs: [i === 0 ? 'x' : `h${i}`, `w${i}`],
      outputs: [i === layers - 1 ? 'y' : `h${i + 1}`],
    });
  }
  const model = encodeModel({
    irVersion: 10,
    opsets: [{ domain: '', version: OPSET }],
    producerName: 'hand',
    producerVersion: '0',
    graph: {
      name: 'raw',
      nodes,
      initializers,
      inputs: [{ name: 'x', dataType: 1, dims: [m, k] }],
      outputs: [{ name: 'y', dataType: 1, dims: [m, k] }],
    },
  });
  return {
    model,
    externalFiles: [{ location, path }],
    externalRoot: dirname(path),
    inputs: [{ name: 'x', dtype: 'float32', shape: [m, k] }],
    outputs: [{ name: 'y', dtype: 'float32', shape: [m, k] }],
    symbols: {},
  };
}

async function benchOverhead(threads: number, reps: number): Promise<EngineBenchResult['overhead_us']> {
  const g = new Graph('trivial');
  g.output('y', add(g.input('a', 'float32', [16]), g.input('b', 'float32', [16])));
  const feeds = { a: hostTensor('float32', [16]), b: hostTensor('float32', [16]) };
  const measure = async (run: () => Promise<unknown>): Promise<number> => {
    const t: number[] = [];
    for (let i = -20; i < reps; i++) {
      const t0 = nowMs();
      await run();
      if (i >= 0) t.push((nowMs() - t0) * 1000);
    }
    return median(t);
  };
  const inlineRt = new Runtime({ worker: false, threads });
  const workerRt = new Runtime({ worker: true, threads });
  const inline = await inlineRt.compile(g);
  const worker = await workerRt.compile(g);
  const modelBytes = (await import('../src/graph/serialize.js')).serialize(g).model;
  const O = ort();
  const session = await O.InferenceSession.create(modelBytes, sessionOptions(inlineRt.settings));
  const ortFeeds = {
    a: new O.Tensor('float32', feeds.a.data as Float32Array, [16]),
    b: new O.Tensor('float32', feeds.b.data as Float32Array, [16]),
  };
  const result = {
    ort_direct: await measure(() => session.run(ortFeeds)),
    inline: await measure(() => inline.run(feeds)),
    worker: await measure(() => worker.run(feeds)),
  };
  await session.release();
  await inlineRt.dispose();
  await workerRt.dispose();
  return result;
}
