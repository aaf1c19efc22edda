/**
 * The SD 1.5 sampling loop (CLIP and the VAE excluded: fixed random prompt embeddings, latent
 * output) on a random SD 1.5-width UNet: the plain CFG loop against T-GATE, DeepCache and both, at
 * the authors' SD settings, timed in the same run and set against the speed-up their FLOPs predict.
 * The FLOPs are counted on the step graphs the pipeline ran, recorded from its UNet calls.
 */
import { loadavg } from 'node:os';

import { checkDeepCacheOptions, deepCacheFeaturePath } from '../src/attention/deepcache.js';
import type { DeepCacheOptions } from '../src/attention/deepcache.js';
import { resolveTGateOptions } from '../src/attention/tgate.js';
import type { TGateOptions } from '../src/attention/tgate.js';
import type { Graph, Node, Tensor } from '../src/graph/graph.js';
import type { UNet2DConditionModel, UNetGraphOptions } from '../src/models/unet-2d-condition.js';
import { buildUNetGraph } from '../src/models/unet-2d-condition.js';
import { StableDiffusionPipeline } from '../src/pipelines/stable-diffusion.js';
import type { StableDiffusionRunOptions } from '../src/pipelines/unet-pipeline.js';
import type { HostTensor } from '../src/runtime/host-tensor.js';
import { hostTensor } from '../src/runtime/host-tensor.js';
import { DDIMScheduler } from '../src/schedulers/index.js';
import { countFlops } from '../src/train/train-step.js';
import type { UNetBenchSession, UNetBenchShape } from './random-unet.js';
import { SD15_UNET, benchUNetFolder, openUNet } from './random-unet.js';
import { machineLine, median, nowMs, privateMb, sessionLine, table } from './stats.js';
import { TEXT_LENGTH } from './unet.js';

/** StableDiffusionPipeline's default guidance, which T-GATE's SD runs keep (methods/tgate_flash.md §1.6). */
export const SD_GUIDANCE = 7.5;

/** runwayml/stable-diffusion-v1-5's scheduler_config.json betas and offsets, as DDIM reads them. */
const SD15_DDIM = {
  num_train_timesteps: 1000,
  beta_start: 0.00085,
  beta_end: 0.012,
  beta_schedule: 'scaled_linear',
  clip_sample: false,
  set_alpha_to_one: false,
  steps_offset: 1,
} as const;

export interface UNetLoopBenchOptions extends UNetBenchSession {
  shape: UNetBenchShape;
  /** Latent [height, width]: 32×32 is a 256×256 image. */
  latent: readonly [number, number];
  steps: number;
  /** T-GATE's gate step G: cross-attention is kept at step G − 1 and CFG dropped from G on. */
  gateStep: number;
  cacheInterval: number;
  cacheBranchId: number;
  /** Repetitions: in each, every variant runs an untimed loop (which compiles its step graphs) and a timed one. */
  reps: number;
  threads: number;
  /** Where the random model folder is cached (default: velodiff's cache dir). */
  cacheDir?: string;
  /** The variants to run besides plain (the baseline, always run first); default all three. */
  variants?: readonly UNetLoopVariant[];
}

export const UNET_LOOP_VARIANTS = ['plain', 'tgate', 'deepcache', 'tgate+deepcache'] as const;

export type UNetLoopVariant = (typeof UNET_LOOP_VARIANTS)[number];

/** One step graph of a loop: the layout the pipeline ran it with, at which steps, and its FLOPs. */
export interface UNetLoopGraph {
  graph: string;
  batch: number;
  steps: number;
  /** The step indices (from 0) that ran it. */
  at: number[];
  /** FLOPs of one run of it (countFlops on the nodes its outputs depend on). */
  flops: number;
  tgate: UNetGraphOptions['tgate'] | null;
  deep_cache: UNetGraphOptions['deepCache'] | null;
  /** Median wall time of one of its calls in the timed loops (UNet2DConditionModel.step, feeds included). */
  ms: number;
  /** flops / ms: how fast this graph runs, to compare with the plain step's. */
  gflops_per_s: number;
}

export interface UNetLoopRow {
  variant: string;
  /** Median of the timed loops. */
  ms: number;
  /** The plain loop's ms over this one's, both of this run. */
  speedup: number;
  /** The loop's FLOPs: every step graph's FLOPs times the steps that ran it. */
  gflop: number;
  /** The speed-up the FLOPs predict: plain GFLOP / this GFLOP. */
  ceiling: number;
  /** speedup / ceiling. */
  of_ceiling: number;
  id: UNetLoopVariant;
  /** Median of the untimed loops, which compile the variant's step graphs. */
  first_loop_ms: number;
  /** The process's RSS after the variant's loops, with its sessions alive (the largest over repetitions). */
  rss_mb: number;
  /** Its anonymous part (RssAnon; NaN off Linux): the weights ORT copied, without the mapped checkpoint. */
  private_mb: number;
  graphs: UNetLoopGraph[];
}

/** What `bench unet-loop --json` prints: the settings, then a row per variant (plain first). */
export interface UNetLoopJson {
  steps: number;
  gate_step: number;
  cache_interval: number;
  cache_branch: number;
  latent: string;
  rows: UNetLoopRow[];
  guidance_scale: number;
  scheduler: string;
  reps: number;
  parameters: number;
  /** Distinct step graphs the loops compiled (one ORT session each). */
  step_graphs: number;
  optimization_level: string;
  disable_prepacking: boolean;
  command: string;
  peak_rss_mb: number;
}

/** One UNet call of a sampling loop: the batch and the graph layout `UNet2DConditionModel.step` builds from it. */
interface UNetCall {
  batch: number;
  layout: UNetGraphOptions;
}

/** The inputs whose graph the recorded layout describes; any other would add inputs the count misses. */
const COUNTED_INPUTS = new Set(['sample', 'timestep', 'encoder_hidden_states']);

/**
 * `model` with its `step` calls appended to `calls`, each as the layout `step` compiles for it (the
 * graph is built from the layout, the batch is the graph's one dynamic dim). Nothing about the
 * calls changes: the pipeline chooses each step's graph inside `run`, and this records its choices.
 */
function recordingUNet(
  model: UNet2DConditionModel,
  calls: UNetCall[],
  callMs: number[],
): UNet2DConditionModel {
  const step: UNet2DConditionModel['step'] = async (inputs, options = {}) => {
    const extra = Object.keys(inputs).filter((name) => !COUNTED_INPUTS.has(name));
    if (extra.length > 0 || options.attention !== undefined) {
      throw new Error(
        `bench unet-loop counts SD 1.5 step graphs (sample, timestep, encoder_hidden_states, full attention); ` +
          `the pipeline also passed ${[...extra, ...(options.attention ? ['attention'] : [])].join(', ')}`,
      );
    }
    const [batch, , height, width] = inputs.sample.shape;
    calls.push({
      batch,
      layout: {
        height,
        width,
        textLength: inputs.encoder_hidden_states.shape[1],
        ...(options.tgate ? { tgate: { ...options.tgate } } : {}),
        ...(options.deepCache ? { deepCache: { ...options.deepCache } } : {}),
      },
    });
    const t0 = nowMs();
    const out = await model.step(inputs, options);
    callMs.push(nowMs() - t0);
    return out;
  };
  return new Proxy(model, {
    get: (target, key, receiver) => (key === 'step' ? step : Reflect.get(target, key, receiver)),
  });
}

/** The nodes some output of `graph` depends on: what serialize() lowers (a DeepCache skip step builds more). */
export function liveNodes(graph: Graph): Node[] {
  const live = new Set<number>();
  const seen = new Set<number>();
  const stack: Tensor[] = [...graph.outputs.values()];
  while (stack.length > 0) {
    const t = stack.pop() as Tensor;
    if (seen.has(t.id)) continue;
    seen.add(t.id);
    if (t.producer && !live.has(t.producer.id)) {
      live.add(t.producer.id);
      stack.push(...t.producer.inputs);
    }
  }
  return graph.nodes.filter((n) => live.has(n.id));
}

/** FLOPs of one run of a UNet step graph at `batch` (MatMul, Conv and attention products of its live nodes). */
export function unetGraphFlops(graph: Graph, batch: number): number {
  return countFlops(liveNodes(graph), { B: batch });
}

/** A step graph in words: `full`, `skip, cross-attn reused`, `full, self-attn stored` …. */
function graphLabel(layout: UNetGraphOptions): string {
  const parts: string[] = [layout.deepCache?.step ?? 'full'];
  const tgate = layout.tgate;
  if (tgate) {
    const roles = [
      ['self-attn', tgate.selfAttention],
      ['cross-attn', tgate.crossAttention],
    ] as const;
    for (const [role, action] of roles) {
      if (action === 'store') parts.push(`${role} stored${tgate.average ? ' (CFG mean)' : ''}`);
      if (action === 'reuse') parts.push(`${role} reused`);
    }
  }
  return parts.join(', ');
}

/** The distinct step graphs of one loop's calls, in order of first use, with their FLOPs (times: timeGraphs). */
function countGraphs(model: UNet2DConditionModel, calls: readonly UNetCall[]): UNetLoopGraph[] {
  const graphs = new Map<string, UNetLoopGraph>();
  calls.forEach(({ batch, layout }, i) => {
    const key = JSON.stringify([batch, layout]);
    let entry = graphs.get(key);
    if (!entry) {
      // The graph UNet2DConditionModel.step compiles for this layout (no LoRA or LinFusion here).
      const graph = buildUNetGraph(model.config, model.weights, layout);
      entry = {
        graph: graphLabel(layout),
        batch,
        steps: 0,
        at: [],
        flops: unetGraphFlops(graph, batch),
        tgate: layout.tgate ?? null,
        deep_cache: layout.deepCache ?? null,
        ms: Number.NaN,
        gflops_per_s: Number.NaN,
      };
      graphs.set(key, entry);
    }
    entry.steps++;
    entry.at.push(i);
  });
  return [...graphs.values()];
}

/** Sets each graph's median call time from the timed loops (`callMs[r][i]`: call i of repetition r). */
function timeGraphs(graphs: readonly UNetLoopGraph[], callMs: readonly (readonly number[])[]): void {
  for (const g of graphs) {
    g.ms = median(callMs.flatMap((rep) => g.at.map((i) => rep[i])));
    g.gflops_per_s = g.flops / 1e6 / g.ms;
  }
}

/** The command line that reruns `o` (shape flags only where they differ from SD 1.5's). */
export function unetLoopCommand(o: UNetLoopBenchOptions): string {
  const flags = [
    `--latent ${o.latent[0]}x${o.latent[1]}`,
    `--steps ${o.steps}`,
    `--gate ${o.gateStep}`,
    `--cache-interval ${o.cacheInterval}`,
    `--cache-branch ${o.cacheBranchId}`,
    `--reps ${o.reps}`,
  ];
  const s = o.shape;
  const channels = s.blockOutChannels.join(',');
  if (s.levels !== SD15_UNET.levels) flags.push(`--levels ${s.levels}`);
  if (s.layersPerBlock !== SD15_UNET.layersPerBlock) flags.push(`--layers-per-block ${s.layersPerBlock}`);
  if (channels !== SD15_UNET.blockOutChannels.join(',')) flags.push(`--channels ${channels}`);
  if (s.attentionHeadDim !== SD15_UNET.attentionHeadDim) flags.push(`--heads ${s.attentionHeadDim}`);
  if (s.crossAttentionDim !== SD15_UNET.crossAttentionDim)
    flags.push(`--cross-attention-dim ${s.crossAttentionDim}`);
  if (s.normNumGroups !== SD15_UNET.normNumGroups) flags.push(`--norm-groups ${s.normNumGroups}`);
  if (o.threads !== 0) flags.push(`--threads ${o.threads}`);
  if (o.optimizationLevel !== undefined && o.optimizationLevel !== 'all')
    flags.push(`--optimization-level ${o.optimizationLevel}`);
  if (o.disablePrepacking) flags.push('--disable-prepacking');
  if (o.variants !== undefined && UNET_LOOP_VARIANTS.some((v) => v !== 'plain' && !o.variants?.includes(v)))
    flags.push(`--variants ${o.variants.join(',')}`);
  return `npx velodiff bench unet-loop ${flags.join(' ')}`;
}

/** Deterministic stand-ins for CLIP's hidden states [1, 77, width], one pattern per seed. */
function promptEmbeds(width: number, seed: number): HostTensor {
  const n = TEXT_LENGTH * width;
  return hostTensor(
    'float32',
    [1, TEXT_LENGTH, width],
    Float32Array.from({ length: n }, (_, i) => Math.sin(i * 0.37 + seed)),
  );
}

/**
 * Whole sampling loops of StableDiffusionPipeline with DDIM at guidance 7.5: plain, T-GATE (the
 * authors' SD defaults: sp_interval 5, fi_interval 1, warm-up 2), DeepCache (uniform, every
 * `cacheInterval` steps full) and both (as T-GATE's DeepCache pipelines: sp_interval 1, warm-up 0,
 * DeepCache restarted at steps G − 1 and G).
 *
 * Each variant runs on a runtime of its own, released before the next: every distinct step graph is
 * an ORT session; at the runtime's settings one holds 3.6 GB of its own at SD 1.5 width (the weights
 * as the CPU EP re-lays them out), the accelerations' added graphs read the checkpoint in place
 * (Runtime's sharedWeightSettings; ≈ 0.3 GB each). The process's heap keeps some of what a released
 * variant freed, so a later row's memory can include an earlier one's. Per repetition, each variant runs one untimed loop (which compiles its
 * graphs) and then the timed one; repetitions go round the variants, so a shared machine's load
 * falls on them alike.
 */
export async function benchUNetLoop(
  o: UNetLoopBenchOptions,
  log: (s: string) => void,
): Promise<UNetLoopJson> {
  const tgate: TGateOptions = { gateStep: o.gateStep };
  resolveTGateOptions(tgate);
  const deepCache: DeepCacheOptions = checkDeepCacheOptions({
    cacheInterval: o.cacheInterval,
    cacheBranchId: o.cacheBranchId,
  });
  const command = unetLoopCommand(o);
  const session = {
    optimizationLevel: o.optimizationLevel ?? 'all',
    disablePrepacking: o.disablePrepacking === true,
  };
  const folder = await benchUNetFolder(
    o.shape,
    o.cacheDir === undefined ? {} : { cacheDir: o.cacheDir },
    log,
  );
  // Before any loop runs: a branch deeper than this UNet fails here, not after the plain loops.
  deepCacheFeaturePath(folder.config, o.cacheBranchId);
  const [height, width] = o.latent;
  const vaeScaleFactor = 8; // SD's VAE, which the pipeline assumes without one
  const base: StableDiffusionRunOptions = {
    promptEmbeds: promptEmbeds(folder.config.encoderHiddenSize, 1),
    negativePromptEmbeds: promptEmbeds(folder.config.encoderHiddenSize, 2),
    height: height * vaeScaleFactor,
    width: width * vaeScaleFactor,
    numInferenceSteps: o.steps,
    guidanceScale: SD_GUIDANCE,
    seed: 0,
    outputType: 'latent',
  };
  type Variant = { id: UNetLoopVariant; name: string; options: Partial<StableDiffusionRunOptions> };
  const all: Variant[] = [
    { id: 'plain', name: 'plain', options: {} },
    { id: 'tgate', name: `T-GATE gate ${o.gateStep}`, options: { tgate } },
    {
      id: 'deepcache',
      name: `DeepCache N=${o.cacheInterval} branch ${o.cacheBranchId}`,
      options: { deepCache },
    },
    { id: 'tgate+deepcache', name: 'T-GATE+DeepCache', options: { tgate, deepCache } },
  ];
  const variants = all.filter(
    (v) => v.id === 'plain' || o.variants === undefined || o.variants.includes(v.id),
  );
  const s = o.shape;
  log(
    `SD 1.5 width (channels ${s.blockOutChannels.slice(0, s.levels).join('/')}, ${s.layersPerBlock} layers ` +
      `per block, ${s.attentionHeadDim} heads, cross-attention ${s.crossAttentionDim}), ` +
      `${(folder.parameters / 1e6).toFixed(1)} M parameters; latent ${height}x${width} ` +
      `(${base.height}×${base.width} px), ${TEXT_LENGTH} text tokens, DDIM (SD 1.5 betas), ${o.steps} steps, ` +
      `guidance ${SD_GUIDANCE}, latent output; per variant and repetition 1 untimed + 1 timed loop on a ` +
      `runtime of its own, ${o.reps} repetition${o.reps === 1 ? '' : 's'}; ${sessionLine(session)}; ${machineLine()}; load average ${loadavg()
        .map((l) => l.toFixed(2))
        .join(' ')}`,
  );
  const times = variants.map(() => [] as number[]);
  const firstLoops = variants.map(() => [] as number[]);
  const rssMb = variants.map(() => 0);
  const privMb = variants.map(() => 0);
  const recorded: UNetCall[][] = [];
  /** Per variant, per repetition: each UNet call's ms in the timed loop. */
  const timedCallMs: number[][][] = variants.map(() => []);
  const graphs: UNetLoopGraph[][] = [];
  for (let r = 0; r < o.reps; r++) {
    for (const [v, variant] of variants.entries()) {
      const { model, runtime } = await openUNet(folder.dir, o);
      const calls: UNetCall[] = [];
      const callMs: number[] = [];
      const pipe = StableDiffusionPipeline.fromComponents({
        unet: recordingUNet(model, calls, callMs),
        scheduler: new DDIMScheduler(SD15_DDIM),
        runtime,
      });
      try {
        for (const timed of [false, true]) {
          calls.length = 0;
          callMs.length = 0;
          const t0 = nowMs();
          await pipe.run({ ...base, ...variant.options });
          (timed ? times : firstLoops)[v].push(nowMs() - t0);
          if (timed) timedCallMs[v].push([...callMs]);
          recorded[v] ??= [...calls];
          // The count is of the first loop's graphs: every loop must have run the same ones.
          if (JSON.stringify(calls) !== JSON.stringify(recorded[v]))
            throw new Error(`bench unet-loop: ${variant.name} ran other step graphs in repetition ${r + 1}`);
        }
        graphs[v] ??= countGraphs(model, recorded[v]);
        rssMb[v] = Math.max(rssMb[v], process.memoryUsage().rss / 2 ** 20);
        privMb[v] = Math.max(privMb[v], privateMb());
      } finally {
        await pipe.close();
        await runtime.dispose();
      }
    }
  }
  const plainMs = median(times[0]);
  graphs.forEach((list, v) => timeGraphs(list, timedCallMs[v]));
  const gflops = graphs.map((list) => list.reduce((sum, g) => sum + g.steps * g.flops, 0) / 1e9);
  const rows: UNetLoopRow[] = variants.map((variant, v) => {
    const ms = median(times[v]);
    const speedup = plainMs / ms;
    const ceiling = gflops[0] / gflops[v];
    return {
      variant: variant.name,
      ms,
      speedup,
      gflop: gflops[v],
      ceiling,
      of_ceiling: speedup / ceiling,
      id: variant.id,
      first_loop_ms: median(firstLoops[v]),
      rss_mb: rssMb[v],
      private_mb: privMb[v],
      graphs: graphs[v],
    };
  });
  const peakRssMb = process.resourceUsage().maxRSS / 1024;
  const stepGraphs = new Set(recorded.flatMap((list) => list.map((call) => JSON.stringify(call.layout))))
    .size;
  log(`command: ${command}`);
  log(
    table(
      [
        'variant',
        'ms/loop',
        'speed-up',
        'GFLOP',
        'FLOP ceiling',
        'of ceiling',
        'first loop ms',
        'RSS MB',
        'private MB',
      ],
      rows.map((r) => [
        r.variant,
        r.ms,
        r.speedup.toFixed(2),
        r.gflop,
        r.ceiling.toFixed(2),
        r.of_ceiling.toFixed(3),
        r.first_loop_ms,
        r.rss_mb,
        r.private_mb,
      ]),
    ),
  );
  log('');
  log(
    table(
      ['variant', 'step graph', 'batch', 'steps', 'GFLOP/step', 'ms/step', 'GFLOP/s', 'at steps'],
      rows.flatMap((r) =>
        r.graphs.map((g) => [
          r.variant,
          g.graph,
          String(g.batch),
          String(g.steps),
          g.flops / 1e9,
          g.ms,
          g.gflops_per_s,
          g.at.join(','),
        ]),
      ),
    ),
  );
  log(
    `GFLOP: countFlops (MatMul, Conv and attention products) of the nodes each step graph's outputs ` +
      `depend on, times the steps that ran it, as recorded from the pipeline's UNet calls; FLOP ceiling: ` +
      `plain GFLOP / the variant's; of ceiling: speed-up / ceiling; ms/step: median wall time of the graph's UNet calls in the timed loops (feeds included), GFLOP/s its FLOPs over that; first loop: the untimed one, which ` +
      `compiles the variant's step graphs (${stepGraphs} layouts in all); RSS: the process's after the ` +
      `variant's loops, its sessions alive (private: its anonymous part, without the mapped checkpoint); peak RSS ${peakRssMb.toFixed(0)} MB; load average now ${loadavg()
        .map((l) => l.toFixed(2))
        .join(' ')}`,
  );
  return {
    steps: o.steps,
    gate_step: o.gateStep,
    cache_interval: o.cacheInterval,
    cache_branch: o.cacheBranchId,
    latent: `${height}x${width}`,
    rows,
    guidance_scale: SD_GUIDANCE,
    scheduler: 'DDIMScheduler',
    reps: o.reps,
    parameters: folder.parameters,
    step_graphs: stepGraphs,
    optimization_level: session.optimizationLevel,
    disable_prepacking: session.disablePrepacking,
    command,
    peak_rss_mb: peakRssMb,
  };
}
