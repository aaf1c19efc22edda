/**
 * `bench quant-unet` (issue 11): int8 on an SD 1.5-width UNet. (a) Per level, a resnet's 3×3
 * convolution C → C at that level's resolution in float32 (ORT Conv) and as int8Conv2d (kernel taps
 * as MatMulInteger), with ORT's own ConvInteger (uint8 weights, the one weight type its CPU kernel
 * takes with a per-output-channel scale applied after) for comparison; (b) one UNet step (batch 2 as
 * CFG runs it, 77 text tokens) loaded in float32, with `quantize: 'int8'` on the Linears only
 * (`keepFloat` on every convolution), and with `quantize: 'int8'` as it is (Linears and 3×3
 * convolutions), timed run by run in rotating order in one process, with each int8 output's relative
 * L2 error against float32 on the same inputs.
 */
import { loadavg } from 'node:os';

import { Graph } from '../src/graph/graph.js';
import { conv2d, int8Conv2d } from '../src/graph/ops/index.js';
import { attr, encodeModel } from '../src/graph/onnx/model.js';
import { quantizeInt8Rows } from '../src/io/quantize.js';
import { UNet2DConditionModel } from '../src/models/unet-2d-condition.js';
import type { HostTensor } from '../src/runtime/host-tensor.js';
import { hostTensor } from '../src/runtime/host-tensor.js';
import type { CompiledGraph } from '../src/runtime/runtime.js';
import { Runtime } from '../src/runtime/runtime.js';
import { TorchGenerator } from '../src/random/torch-generator.js';
import { ort } from '../src/runtime/ort-node.js';
import { relativeL2 } from './quant.js';
import type { UNetBenchShape } from './random-unet.js';
import { benchUNetFolder } from './random-unet.js';
import { machineLine, median, nowMs, privateMb, table } from './stats.js';
import { CFG_BATCH, TEXT_LENGTH } from './unet.js';

export interface QuantUNetBenchOptions {
  shape: UNetBenchShape;
  latent: readonly [number, number];
  reps: number;
  warmups: number;
  threads: number;
  cacheDir?: string;
}

export interface QuantConvRow {
  level: number;
  channels: number;
  size: string;
  fp32_ms: number;
  int8_ms: number;
  speedup: number;
  /** ORT ConvInteger (uint8 weights) in the same run, as a ratio to fp32 (NaN where it failed). */
  conv_integer_speedup: number;
  rel_l2: number;
  gflops_fp32: number;
  gflops_int8: number;
}

export interface QuantUNetRow {
  variant: 'fp32' | 'int8 linears' | 'int8';
  ms: number;
  speedup: number;
  rel_l2: number;
  int8_modules: number;
  int8_convolutions: number;
  load_s: number;
}

export interface QuantUNetResult {
  convs: QuantConvRow[];
  steps: QuantUNetRow[];
  latent: string;
  parameters: number;
  private_mb: number;
}

const fill = (n: number, phase = 0): Float32Array =>
  Float32Array.from({ length: n }, (_, i) => Math.sin(i * 0.37 + phase));

/** Gaussian weights of a 3×3 convolution, scaled by 1/√fan_in (a trained layer's order of magnitude). */
function convWeight(cout: number, cin: number, seed: number): Float32Array {
  const k = cin * 9;
  return new TorchGenerator(seed).randn([cout * k]).map((v) => v / Math.sqrt(k));
}

/** ORT's ConvInteger with uint8 weights (zero point 128, per tensor) and a per-channel scale after it. */
async function convIntegerSession(
  runtime: Runtime,
  q: Int8Array,
  scale: Float32Array,
  shape: readonly [number, number, number, number],
): Promise<{ run: (x: Float32Array) => Promise<number> } | undefined> {
  const [b, c, h, w] = shape;
  const u8 = Uint8Array.from(q, (v) => v + 128);
  const bytes = (a: ArrayBufferView): Uint8Array => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
  const model = encodeModel({
    irVersion: 10,
    opsets: [{ domain: '', version: 21 }],
    producerName: 'velodiff-bench',
    producerVersion: '0',
    graph: {
      name: 'conv_integer',
      nodes: [
        { opType: 'DynamicQuantizeLinear', inputs: ['x'], outputs: ['xq', 'xs', 'xz'] },
        {
          opType: 'ConvInteger',
          inputs: ['xq', 'w', 'xz', 'wz'],
          outputs: ['acc'],
          attrs: { pads: attr.ints([1, 1, 1, 1]) },
        },
        { opType: 'Cast', inputs: ['acc'], outputs: ['accf'], attrs: { to: attr.int(1) } },
        { opType: 'Mul', inputs: ['xs', 's'], outputs: ['sc'] },
        { opType: 'Mul', inputs: ['accf', 'sc'], outputs: ['y'] },
      ],
      initializers: [
        { name: 'w', dataType: 2, dims: [c, c, 3, 3], raw: u8 },
        { name: 'wz', dataType: 2, dims: [], raw: Uint8Array.of(128) },
        { name: 's', dataType: 1, dims: [1, c, 1, 1], raw: bytes(scale) },
      ],
      inputs: [{ name: 'x', dataType: 1, dims: [b, c, h, w] }],
      outputs: [{ name: 'y', dataType: 1, dims: [b, c, h, w] }],
    },
  });
  try {
    const session = await ort().InferenceSession.create(model, {
      intraOpNumThreads: runtime.settings.intraOpThreads,
      graphOptimizationLevel: 'all',
    });
    return {
      run: async (x) => {
        const t0 = nowMs();
        await session.run({ x: new (ort().Tensor)('float32', x, [b, c, h, w]) });
        return nowMs() - t0;
      },
    };
  } catch {
    return undefined;
  }
}

/**
 * Part (a): one level's 3×3 convolution C → C, float32 vs int8Conv2d (and ConvInteger). Each returns
 * its whole output (the same bytes for all three), so the copy to the host is in every time alike.
 */
async function benchConv(
  runtime: Runtime,
  level: number,
  channels: number,
  [height, width]: readonly [number, number],
  o: QuantUNetBenchOptions,
): Promise<QuantConvRow> {
  const shape = [CFG_BATCH, channels, height, width] as const;
  const weight = convWeight(channels, channels, 1000 + level);
  const { q, scale } = quantizeInt8Rows(weight, channels, channels * 9, 'conv');
  const g = new Graph(`conv_l${level}`);
  const x = g.input('x', 'float32', [...shape]);
  const wf = g.weight('wf', 'float32', [channels, channels, 3, 3], {
    kind: 'data',
    data: weight,
    storedDType: 'float32',
  });
  g.output('y', conv2d(x, wf, undefined, { padding: 1 }));
  const gi = new Graph(`int8conv_l${level}`);
  const xi = gi.input('x', 'float32', [...shape]);
  const wq = gi.weight('wq', 'int8', [channels, channels, 3, 3], {
    kind: 'data',
    data: q,
    storedDType: 'int8',
  });
  const s = gi.weight('s', 'float32', [channels], { kind: 'data', data: scale, storedDType: 'float32' });
  gi.output('y', int8Conv2d(xi, wq, s, undefined, { padding: 1 }));
  const fp32: CompiledGraph = await runtime.compile(g);
  const int8: CompiledGraph = await runtime.compile(gi);
  const convInteger = await convIntegerSession(runtime, q, scale, shape);
  const input = new TorchGenerator(2000 + level).randn([...shape]);
  const feeds = { x: hostTensor('float32', [...shape], input) };
  const times: [number[], number[], number[]] = [[], [], []];
  let outputs: [Float32Array, Float32Array] | undefined;
  for (let r = -o.warmups - 1; r < o.reps; r++) {
    let t0 = nowMs();
    const a = await fp32.run(feeds);
    const fp32Ms = nowMs() - t0;
    t0 = nowMs();
    const b = await int8.run(feeds);
    const int8Ms = nowMs() - t0;
    const ciMs = convInteger ? await convInteger.run(input) : NaN;
    if (outputs === undefined) outputs = [a.y.data as Float32Array, b.y.data as Float32Array];
    if (r < 0) continue;
    times[0].push(fp32Ms);
    times[1].push(int8Ms);
    times[2].push(ciMs);
  }
  const [fp32Ms, int8Ms, ciMs] = times.map(median);
  const flops = 2 * CFG_BATCH * height * width * channels * channels * 9;
  return {
    level,
    channels,
    size: `${height}x${width}`,
    fp32_ms: fp32Ms,
    int8_ms: int8Ms,
    speedup: fp32Ms / int8Ms,
    conv_integer_speedup: fp32Ms / ciMs,
    rel_l2: relativeL2(
      (outputs as [Float32Array, Float32Array])[1],
      (outputs as [Float32Array, Float32Array])[0],
    ),
    gflops_fp32: flops / fp32Ms / 1e6,
    gflops_int8: flops / int8Ms / 1e6,
  };
}

export async function benchQuantUNet(
  o: QuantUNetBenchOptions,
  log: (s: string) => void,
): Promise<QuantUNetResult> {
  const runtime = new Runtime({ worker: false, threads: o.threads });
  const [height, width] = o.latent;
  try {
    log(
      `int8 on an SD 1.5-width UNet (channels ${o.shape.blockOutChannels.slice(0, o.shape.levels).join('/')}), ` +
        `latent ${height}x${width}, batch ${CFG_BATCH}, ${o.warmups} warm-up + ${o.reps} timed runs; ` +
        `${runtime.settings.intraOpThreads} threads; ${machineLine()}; load average ${loadavg()
          .map((l) => l.toFixed(2))
          .join(' ')}`,
    );
    const convs: QuantConvRow[] = [];
    for (let level = 0; level < o.shape.levels; level++) {
      const size = [Math.ceil(height / 2 ** level), Math.ceil(width / 2 ** level)] as const;
      convs.push(await benchConv(runtime, level, o.shape.blockOutChannels[level], size, o));
    }
    log('(a) one resnet 3×3 convolution C → C per level, batch 2');
    log(
      table(
        [
          'level',
          'C',
          'size',
          'fp32 ms',
          'int8 ms',
          'speed-up',
          'ConvInteger',
          'rel L2',
          'GFLOP/s fp32',
          'int8',
        ],
        convs.map((r) => [
          String(r.level),
          String(r.channels),
          r.size,
          r.fp32_ms,
          r.int8_ms,
          r.speedup,
          r.conv_integer_speedup,
          r.rel_l2.toExponential(2),
          r.gflops_fp32,
          r.gflops_int8,
        ]),
      ),
    );

    const folder = await benchUNetFolder(
      o.shape,
      o.cacheDir === undefined ? {} : { cacheDir: o.cacheDir },
      log,
    );
    const convolution = /(^|\.)(conv\d?|conv_in|conv_out|conv_shortcut)$/;
    const variants: { variant: QuantUNetRow['variant']; model: UNet2DConditionModel; loadS: number }[] = [];
    for (const variant of ['fp32', 'int8 linears', 'int8'] as const) {
      const t0 = nowMs();
      const model = await UNet2DConditionModel.fromPretrained(folder.dir, {
        runtime,
        ...(variant === 'fp32' ? {} : { quantize: 'int8' as const }),
        ...(variant === 'int8 linears' ? { keepFloat: (m: string) => convolution.test(m) } : {}),
      });
      variants.push({ variant, model, loadS: (nowMs() - t0) / 1e3 });
    }
    const config = variants[0].model.config;
    const inputs: Record<string, HostTensor> = {
      sample: hostTensor(
        'float32',
        [CFG_BATCH, config.inChannels, height, width],
        fill(CFG_BATCH * config.inChannels * height * width),
      ),
      timestep: hostTensor('float32', [CFG_BATCH], new Float32Array(CFG_BATCH).fill(500)),
      encoder_hidden_states: hostTensor(
        'float32',
        [CFG_BATCH, TEXT_LENGTH, config.encoderHiddenSize],
        fill(CFG_BATCH * TEXT_LENGTH * config.encoderHiddenSize, 1),
      ),
    };
    const times = variants.map(() => [] as number[]);
    const outputs: Float32Array[] = [];
    for (let r = -o.warmups - 1; r < o.reps; r++) {
      // Rotating order, so that no variant always runs first (or after the same one).
      for (let k = 0; k < variants.length; k++) {
        const v = (k + Math.max(0, r)) % variants.length;
        const t0 = nowMs();
        const out = await variants[v].model.forward(inputs);
        const ms = nowMs() - t0;
        if (outputs[v] === undefined) outputs[v] = out.sample.data as Float32Array;
        if (r >= 0) times[v].push(ms);
      }
    }
    const fp32Ms = median(times[0]);
    const steps: QuantUNetRow[] = variants.map(({ variant, model, loadS }, v) => {
      const modules = [...(model.int8Modules ?? [])];
      return {
        variant,
        ms: median(times[v]),
        speedup: fp32Ms / median(times[v]),
        rel_l2: relativeL2(outputs[v], outputs[0]),
        int8_modules: modules.length,
        int8_convolutions: modules.filter((m) => convolution.test(m)).length,
        load_s: loadS,
      };
    });
    const privateAfter = privateMb();
    for (const { model } of variants) await model.close();
    log(`(b) one UNet step at ${height}x${width} (${(folder.parameters / 1e6).toFixed(1)} M parameters)`);
    log(
      table(
        ['variant', 'ms', 'speed-up', 'rel L2', 'int8 modules', 'of them conv', 'load s'],
        steps.map((r) => [
          r.variant,
          r.ms,
          r.speedup,
          r.rel_l2.toExponential(2),
          String(r.int8_modules),
          String(r.int8_convolutions),
          r.load_s,
        ]),
      ),
    );
    return {
      convs,
      steps,
      latent: `${height}x${width}`,
      parameters: folder.parameters,
      private_mb: privateAfter,
    };
  } finally {
    await runtime.dispose();
  }
}
