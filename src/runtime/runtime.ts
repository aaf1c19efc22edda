import { OptionError, RuntimeError } from '../errors.js';
import type { Graph } from '../graph/graph.js';
import { Graph as GraphClass } from '../graph/graph.js';
import type { SerializedGraph, SerializedValue } from '../graph/serialize.js';
import { serialize } from '../graph/serialize.js';
import { formatShape } from '../graph/shape.js';
import type { Backend, ExecutionProvider, Feed, RunResult, SessionSettings, TensorRef } from './backend.js';
import { isTensorRef } from './backend.js';
import type { HostTensor } from './host-tensor.js';
import { hostArrayName, shapeSize } from './host-tensor.js';
import { graphSignature, planExternalData, weightFiles } from './external-data.js';
import { InlineBackend, availableProviders } from './ort-node.js';
import { WorkerBackend } from './worker-backend.js';
import { physicalCores } from './cpu-cores.js';

export interface RuntimeOptions {
  /** In order of preference; default ['cpu']. */
  executionProviders?: ExecutionProvider[];
  /**
   * Threads per op; default 0 = one per physical core this process may use, as velodiff counts
   * them (cpu-cores.ts: ORT's own count gave one thread on a 2-core VM, half the speed).
   */
  threads?: number;
  optimizationLevel?: SessionSettings['optimizationLevel'];
  disablePrepacking?: boolean;
  /**
   * Flush denormal floats (|x| < 1.2e-38) to zero in ORT's kernels; default true. Denormals change
   * no result a diffusion model cares about, but this CPU computes with them slowly: CLEAR r = 16 at
   * 16K tokens, whose masked scores underflow to denormals, took 1202 ms with flushing off against
   * 877 ms with it (BENCHMARKS.md).
   */
  flushDenormals?: boolean;
  /**
   * Let ORT's idle intra-op threads spin for work (default true, ORT's default); false makes them
   * sleep, which frees the cores between the parallel sections of a run. `velodiff bench spinning`
   * times a whole generation both ways.
   */
  allowSpinning?: boolean;
  /** Run ORT in a worker thread (default true) so runs never block the event loop. */
  worker?: boolean;
  /**
   * Let a model compile its extra graphs (T-GATE's and DeepCache's step graphs beside the plain
   * forward, UNet and PixArt alike) under `sharedWeightSettings`, reading a float32 checkpoint in place rather than
   * holding a copy each; default true. At SD 1.5 width a copy is 3.6 GB, and those settings cost
   * about 9 % per step at 64×64 latents, 19 % at 32×32 (BENCHMARKS.md, "unet step graphs").
   */
  shareWeightsAcrossGraphs?: boolean;
}

/**
 * The session settings one graph may choose for itself (Runtime.compile); providers, threads and
 * denormal flushing stay the runtime's, as ORT applies them per thread.
 */
export type GraphSessionSettings = Partial<Pick<SessionSettings, 'optimizationLevel' | 'disablePrepacking'>>;

export interface RunOptions {
  /** Hand the feeds' buffers to the worker instead of copying them; they are unusable afterwards. */
  transfer?: boolean;
  /** Outputs to compute; default all. */
  outputs?: string[];
  /** Prefixed to feed and output errors (`PixArtTransformer2DModel.forward (dir)`): who ran the graph. */
  label?: string;
}

const PROVIDERS: readonly ExecutionProvider[] = ['cpu', 'cuda', 'webgpu', 'coreml', 'dml'];

// A Runtime dropped without dispose() would otherwise keep its worker thread, the thread's
// descriptors and every session until the process exits. The backend is what stays reachable.
const droppedRuntimes = new FinalizationRegistry<Backend>((backend) => {
  backend.dispose().catch(() => undefined);
});

/**
 * Compiles graphs into ONNX Runtime sessions and runs them. Sessions are cached by graph signature,
 * so building the same graph twice compiles it once.
 */
export class Runtime {
  readonly settings: SessionSettings;
  /** The overrides under which a model's extra graphs share its checkpoint's weights; {} when that is off. */
  readonly sharedWeightSettings: GraphSessionSettings;
  private readonly backend: Backend;
  private readonly cache = new Map<string, Promise<CompiledGraph>>();

  constructor(options: RuntimeOptions = {}) {
    const eps = options.executionProviders ?? ['cpu'];
    for (const ep of eps) {
      if (!PROVIDERS.includes(ep)) {
        throw new OptionError(
          `unknown execution provider "${String(ep)}"; expected one of ${PROVIDERS.join(', ')}`,
        );
      }
    }
    if (options.allowSpinning !== undefined && typeof options.allowSpinning !== 'boolean') {
      throw new OptionError(
        `allowSpinning must be true or false, got ${JSON.stringify(options.allowSpinning)}`,
      );
    }
    const threads = options.threads ?? 0;
    if (!Number.isInteger(threads) || threads < 0)
      throw new OptionError(`threads must be an integer ≥ 0, got ${threads}`);
    this.settings = {
      executionProviders: Runtime.usableProviders(eps),
      intraOpThreads: threads === 0 ? physicalCores() : threads,
      optimizationLevel: options.optimizationLevel ?? 'all',
      disablePrepacking: options.disablePrepacking ?? false,
      flushDenormals: options.flushDenormals ?? true,
      allowSpinning: options.allowSpinning ?? true,
    };
    this.sharedWeightSettings =
      options.shareWeightsAcrossGraphs === false ? {} : weightSharingSettings(this.settings);
    this.backend = options.worker === false ? new InlineBackend() : new WorkerBackend();
    droppedRuntimes.register(this, this.backend);
  }

  /**
   * The usable part of a preference list: providers this install cannot load are dropped while
   * another remains (['cuda', 'cpu'] runs on the CPU where CUDA is not installed); a list with none
   * usable is an error that says how to install them.
   */
  static usableProviders(eps: readonly ExecutionProvider[]): ExecutionProvider[] {
    const have = availableProviders();
    const usable = eps.filter((ep) => have.includes(ep));
    if (usable.length === 0) {
      const hint = eps.includes('cuda')
        ? ' For CUDA, install the provider as the README section "GPU (CUDA)" says.'
        : '';
      throw new OptionError(
        `execution provider${eps.length > 1 ? 's' : ''} ${eps.join(', ')} not available in this ONNX Runtime install (available: ${have.join(', ')}).${hint}`,
        'PROVIDER',
      );
    }
    return usable;
  }

  /**
   * Serialize (if needed) and compile a graph; the same graph with the same settings compiles once.
   * `overrides` replace the runtime's optimization level or prepacking for this graph's session.
   */
  async compile(
    graph: Graph | SerializedGraph,
    overrides: GraphSessionSettings = {},
  ): Promise<CompiledGraph> {
    let serialized: SerializedGraph;
    if ('model' in graph && graph.model instanceof Uint8Array) serialized = graph;
    else {
      const plan = planExternalData(weightFiles(graph as Graph));
      serialized = serialize(graph as Graph, { locate: plan.locate, externalRoot: plan.root });
    }
    const chosen: SessionSettings = {
      ...this.settings,
      optimizationLevel: overrides.optimizationLevel ?? this.settings.optimizationLevel,
      disablePrepacking: overrides.disablePrepacking ?? this.settings.disablePrepacking,
    };
    const settings = computesInFloat64(graph, serialized) ? float64Settings(chosen) : chosen;
    const signature = graphSignature(serialized, JSON.stringify(settings));
    let entry = this.cache.get(signature);
    if (!entry) {
      entry = (async () => {
        const session = await this.backend.create(
          { bytes: serialized.model, externalRoot: serialized.externalRoot },
          settings,
        );
        return new CompiledGraph(this, this.backend, session, serialized, signature, settings);
      })();
      this.cache.set(signature, entry);
      entry.catch(() => this.cache.delete(signature));
    }
    return entry;
  }

  /** Number of distinct compiled sessions. */
  get cachedSessions(): number {
    return this.cache.size;
  }

  /** Free tensors kept by `runRetaining`. */
  async releaseTensors(refs: readonly TensorRef[]): Promise<void> {
    await this.backend.releaseTensors(refs.map((r) => r.ref));
  }

  async dispose(): Promise<void> {
    this.cache.clear();
    await this.backend.dispose();
  }
}

/**
 * Settings under which a session reads float32 weights in place from the mmapped checkpoint, so
 * that the sessions of one model share its pages: a level of at most 'extended' (at 'all' the CPU
 * EP re-lays every Conv weight out, NCHWc, per session) and no prepacking (a packed copy of every
 * MatMul weight per session). Lower levels are kept.
 */
export function weightSharingSettings(settings: SessionSettings): Required<GraphSessionSettings> {
  const level = settings.optimizationLevel;
  return { optimizationLevel: level === 'all' ? 'extended' : level, disablePrepacking: true };
}

/**
 * Whether a graph computes in float64 (gradient checks, references): any float64 value in a Graph,
 * or a float64 input or output of a serialized one.
 */
function computesInFloat64(graph: Graph | SerializedGraph, serialized: SerializedGraph): boolean {
  if (graph instanceof GraphClass) {
    for (const leaf of graph.leaves.values()) if (leaf.tensor.dtype === 'float64') return true;
    return graph.nodes.some((n) => n.outputs.some((t) => t.dtype === 'float64'));
  }
  return [...serialized.inputs, ...serialized.outputs].some((v) => v.dtype === 'float64');
}

/**
 * ORT's extended fusions do not check that the fused kernel has a double version: x·sigmoid(x) in
 * float64 becomes com.microsoft QuickGelu, which is float-only, and the session fails to create
 * (measured, onnxruntime-node 1.30). Float64 graphs are optimized at the basic level.
 */
function float64Settings(settings: SessionSettings): SessionSettings {
  const level = settings.optimizationLevel;
  return level === 'disabled' || level === 'basic' ? settings : { ...settings, optimizationLevel: 'basic' };
}

/** A graph compiled into a session: run it many times, at any size its named dims allow. */
export class CompiledGraph {
  readonly inputs: readonly SerializedValue[];
  readonly outputs: readonly SerializedValue[];

  constructor(
    /** The runtime that compiled it: holding a compiled graph keeps its runtime's sessions alive. */
    readonly runtime: Runtime,
    private readonly backend: Backend,
    private readonly session: number,
    private readonly graph: SerializedGraph,
    readonly signature: string,
    /** What its session was created with. */
    readonly settings: SessionSettings,
  ) {
    this.inputs = graph.inputs;
    this.outputs = graph.outputs;
  }

  async run(feeds: Record<string, Feed>, options: RunOptions = {}): Promise<Record<string, HostTensor>> {
    return (await this.runRetaining(feeds, [], options)).host;
  }

  /**
   * Run, keeping the outputs named in `retain` where the session lives (the worker): they come back
   * as TensorRefs, can be fed to later runs of any graph of the same runtime without crossing the
   * thread boundary, and must be freed with `Runtime.releaseTensors`.
   */
  async runRetaining(
    feeds: Record<string, Feed>,
    retain: readonly string[],
    options: RunOptions = {},
  ): Promise<RunResult> {
    const prefix = options.label === undefined ? '' : `${options.label}: `;
    try {
      this.checkFeeds(feeds);
    } catch (error) {
      if (error instanceof RuntimeError && prefix) throw new RuntimeError(prefix + error.message, error.code);
      throw error;
    }
    const outputs = options.outputs ?? this.outputs.map((o) => o.name);
    for (const name of [...outputs, ...retain]) {
      if (!this.outputs.some((o) => o.name === name)) {
        throw new RuntimeError(
          `${prefix}unknown output "${name}"; the graph has ${this.outputs.map((o) => o.name).join(', ')}`,
          'OUTPUT',
        );
      }
    }
    const all = [...new Set([...outputs, ...retain])];
    return this.backend.run(this.session, feeds, all, options.transfer ?? false, retain);
  }

  /** Feeds must match the graph's inputs: names, dtypes, ranks, static dims, and one value per named dim. */
  private checkFeeds(feeds: Record<string, Feed>): void {
    const expected = new Set(this.inputs.map((i) => i.name));
    for (const name of Object.keys(feeds)) {
      if (!expected.has(name)) {
        throw new RuntimeError(
          `unknown input "${name}"; the graph takes ${[...expected].join(', ') || 'no inputs'}`,
          'INPUT',
        );
      }
    }
    const symbols = new Map<string, { value: number; from: string }>();
    for (const input of this.inputs) {
      const t = feeds[input.name];
      if (!t)
        throw new RuntimeError(
          `missing input "${input.name}" (${input.dtype}${formatShape(input.shape)})`,
          'INPUT',
        );
      const where = `input "${input.name}"`;
      if (t.dtype !== input.dtype)
        throw new RuntimeError(`${where}: expected ${input.dtype}, got ${t.dtype}`, 'DTYPE');
      if (!isTensorRef(t) && t.data.constructor.name !== hostArrayName(t.dtype)) {
        throw new RuntimeError(
          `${where}: ${t.dtype} data must be a ${hostArrayName(t.dtype)}, got ${t.data.constructor.name}`,
          'DTYPE',
        );
      }
      if (!isTensorRef(t) && t.data.length !== shapeSize(t.shape)) {
        throw new RuntimeError(
          `${where}: shape ${formatShape(t.shape)} needs ${shapeSize(t.shape)} values, got ${t.data.length}`,
          'SHAPE',
        );
      }
      if (t.shape.length !== input.shape.length) {
        throw new RuntimeError(
          `${where}: expected shape ${formatShape(input.shape)}, got ${formatShape(t.shape)}`,
          'SHAPE',
        );
      }
      input.shape.forEach((d, axis) => {
        const got = t.shape[axis];
        if (typeof d === 'number') {
          if (d !== got) {
            throw new RuntimeError(
              `${where}: expected shape ${formatShape(input.shape)}, got ${formatShape(t.shape)}`,
              'SHAPE',
            );
          }
          return;
        }
        const seen = symbols.get(d);
        if (seen && seen.value !== got) {
          throw new RuntimeError(
            `${where}: dim ${d} is ${got} here but ${seen.value} in ${seen.from} (shape ${formatShape(t.shape)})`,
            'SHAPE',
          );
        }
        symbols.set(d, { value: got, from: where });
      });
    }
  }
}
