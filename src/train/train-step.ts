/**
 * One training step's forward and backward pass as one ORT session: the spec builds the loss from
 * the model's parameters as graph inputs (`ParameterInputs`), `grad()` appends the backward pass for
 * the trainable ones, and the session returns the loss, the gradients and any metrics. The optimizer
 * update stays on the host (see optimizer.ts for why).
 */
import { GraphBuildError, RuntimeError } from '../errors.js';
import { Graph, UNKNOWN_DIM, type Node, type Tensor } from '../graph/graph.js';
import { grad } from '../graph/grad.js';
import { dimTerms, isSymbolName, type Dim, type Shape } from '../graph/shape.js';
import { ParameterInputs } from '../nn/weights.js';
import type { TensorSource } from '../nn/weights.js';
import type { HostTensor } from '../runtime/host-tensor.js';
import { hostTensor } from '../runtime/host-tensor.js';
import type { CompiledGraph, Runtime } from '../runtime/runtime.js';
import { listNames } from '../warnings.js';

export interface TrainStepSpec {
  /**
   * Build the loss (a one-element float tensor); parameters come from `params` (graph inputs named as
   * in the checkpoint: pass `params` as the model builder's TensorSource); batch tensors are graph
   * inputs the builder declares. `g` is a fresh graph for losses built from ops; a model builder that
   * makes its own graph (buildPixArtGraph) may be used instead: the loss's graph is compiled, and the
   * builder's own outputs (`sample`) are dropped, so that the step returns only what it needs.
   */
  build(g: Graph, params: ParameterInputs): { loss: Tensor; metrics?: Record<string, Tensor> };
  /** Every parameter's shape (discoverParameterShapes); the ones the builder reads are fed. */
  shapes: ReadonlyMap<string, readonly number[]>;
  /** Parameters to differentiate; the others are fed but get no gradient work. */
  trainable: readonly string[];
  /**
   * Values of the batch inputs' named dims ({ B: 16 }) for the FLOP count; without them the count
   * waits for the first run's feed shapes.
   */
  dims?: Readonly<Record<string, number>>;
}

export interface TrainStepResult {
  loss: number;
  /** By parameter name, for exactly `trainable`. */
  grads: Map<string, Float32Array>;
  metrics: Record<string, number>;
}

const LOSS_OUTPUT = 'loss';
const GRAD_PREFIX = 'grad:';
const METRIC_PREFIX = 'metric:';

export class TrainStep {
  #dims: Readonly<Record<string, number>> | undefined;

  private constructor(
    private readonly compiled: CompiledGraph,
    /** Parameters the graph reads (fed every run), in the order the model read them. */
    readonly fed: readonly string[],
    readonly trainable: readonly string[],
    readonly metricNames: readonly string[],
    /** The batch inputs the builder declared, with their shapes (named dims as strings). */
    readonly batchInputs: ReadonlyMap<string, Shape>,
    private readonly nodes: readonly Node[],
    private readonly shapes: ReadonlyMap<string, readonly number[]>,
    dims: Readonly<Record<string, number>> | undefined,
  ) {
    const named = [...batchInputs.values()].some((shape) => shape.some((d) => typeof d === 'string'));
    this.#dims = dims ?? (named ? undefined : {});
  }

  static async compile(runtime: Runtime, spec: TrainStepSpec): Promise<TrainStep> {
    const built = buildTrainStepGraph(spec);
    const compiled = await runtime.compile(built.graph);
    return new TrainStep(
      compiled,
      built.fed,
      built.trainable,
      built.metricNames,
      built.batchInputs,
      built.graph.nodes.slice(),
      spec.shapes,
      spec.dims,
    );
  }

  /**
   * FLOPs of one run (forward + backward), counted from the graph's matmuls, convolutions and
   * attention products; NaN until the named dims are known (spec.dims, or the first run).
   */
  get flops(): number {
    return this.#dims === undefined ? Number.NaN : countFlops(this.nodes, this.#dims);
  }

  /** One forward+backward in one ORT session. `params` must hold every parameter the graph reads. */
  async run(
    params: ReadonlyMap<string, Float32Array>,
    batch: Record<string, HostTensor>,
  ): Promise<TrainStepResult> {
    const feeds: Record<string, HostTensor> = { ...batch };
    for (const name of this.fed) {
      const values = params.get(name);
      if (values === undefined) {
        throw new RuntimeError(
          `TrainStep.run: no values for parameter '${name}', which the graph reads`,
          'INPUT',
        );
      }
      feeds[name] = hostTensor('float32', this.shapes.get(name) as readonly number[], values);
    }
    const out = await this.compiled.run(feeds);
    this.#dims ??= namedDims(this.batchInputs, batch);
    const grads = new Map<string, Float32Array>();
    for (const name of this.trainable) grads.set(name, out[`${GRAD_PREFIX}${name}`].data as Float32Array);
    const metrics: Record<string, number> = {};
    for (const name of this.metricNames) metrics[name] = Number(out[`${METRIC_PREFIX}${name}`].data[0]);
    return { loss: Number(out[LOSS_OUTPUT].data[0]), grads, metrics };
  }
}

/** A step's graph before compiling: outputs `loss`, `grad:<name>` per trainable parameter, `metric:<name>`. */
export interface TrainStepGraph {
  graph: Graph;
  /** Parameters the graph reads, in the order the model read them. */
  fed: string[];
  trainable: string[];
  metricNames: string[];
  batchInputs: Map<string, Shape>;
}

/** Builds the loss of `spec` and its backward pass (TrainStep.compile's graph; profiling tools use it too). */
export function buildTrainStepGraph(spec: TrainStepSpec): TrainStepGraph {
  const params = new ParameterInputs(shapeSource(spec.shapes));
  const { loss, metrics = {} } = spec.build(new Graph('TrainStep'), params);
  const g = loss.graph;
  const read = params.inputsOf(g);
  const unread = spec.trainable.filter((name) => !(name in read));
  if (unread.length > 0) {
    const unknown = unread.filter((name) => !spec.shapes.has(name));
    throw new GraphBuildError(
      unknown.length > 0
        ? `TrainStep: trainable parameters ${listNames(unknown)} are not among the model's parameter shapes`
        : `TrainStep: the loss does not read the trainable parameters ${listNames(unread)}; leave them out of trainable`,
      'TRAIN_STEP',
    );
  }
  const trainable = spec.trainable.filter((name, i) => spec.trainable.indexOf(name) === i);
  const grads = grad(loss, Object.fromEntries(trainable.map((name) => [name, read[name]])));
  g.outputs.clear();
  g.output(LOSS_OUTPUT, loss);
  for (const name of trainable) g.output(`${GRAD_PREFIX}${name}`, grads[name]);
  for (const [name, metric] of Object.entries(metrics)) {
    if (metric.graph !== g || !metric.shape.every((d) => d === 1)) {
      throw new GraphBuildError(
        `TrainStep: metric '${name}' must be a one-element tensor of the loss's graph, found ${metric.toString()}`,
        'TRAIN_STEP',
      );
    }
    g.output(`${METRIC_PREFIX}${name}`, metric);
  }
  const batchInputs = new Map<string, Shape>();
  for (const input of g.inputs) if (!(input.name in read)) batchInputs.set(input.name, input.tensor.shape);
  return { graph: g, fed: Object.keys(read), trainable, metricNames: Object.keys(metrics), batchInputs };
}

/** The values of the named dims of `inputs`, read from the shapes fed for them. */
function namedDims(
  inputs: ReadonlyMap<string, Shape>,
  feeds: Record<string, HostTensor>,
): Record<string, number> {
  const dims: Record<string, number> = {};
  for (const [name, shape] of inputs) {
    const fed = feeds[name];
    if (fed === undefined) continue;
    shape.forEach((d, axis) => {
      if (typeof d === 'string' && isSymbolName(d)) dims[d] = fed.shape[axis];
    });
  }
  return dims;
}

/** A TensorSource of shapes alone: what ParameterInputs needs to declare each parameter. */
function shapeSource(shapes: ReadonlyMap<string, readonly number[]>): TensorSource {
  return {
    has: (name) => shapes.has(name),
    info(name) {
      const shape = shapes.get(name);
      if (shape === undefined) {
        throw new GraphBuildError(
          `TrainStep: the model reads '${name}', which is not among the ${shapes.size} parameter shapes given ` +
            '(discover them from the same model builder with discoverParameterShapes)',
          'WEIGHT_MISSING',
        );
      }
      const count = shape.reduce((a, b) => a * b, 1);
      return { name, dtype: 'F32', shape: [...shape], byteLength: 4 * count, fileOffset: 0 };
    },
  };
}

/** The value of a dim given its symbols' values; NaN when one is unknown. */
function dimValue(d: Dim, dims: Readonly<Record<string, number>>): number {
  if (typeof d === 'number') return d;
  if (d.startsWith(UNKNOWN_DIM)) return Number.NaN;
  const { factor, symbols } = dimTerms(d);
  return symbols.reduce(
    (value, [symbol, exponent]) => value * (dims[symbol] ?? Number.NaN) ** exponent,
    factor,
  );
}

function size(t: Tensor, dims: Readonly<Record<string, number>>): number {
  return t.shape.reduce((product: number, d) => product * dimValue(d, dims), 1);
}

/**
 * Multiply-adds ×2 of the matmuls, convolutions and attention products in `nodes`, forward and
 * backward alike (the attention VJP's recomputed scores included, as they are executed), with the
 * named dims' values `dims`.
 */
export function countFlops(nodes: readonly Node[], dims: Readonly<Record<string, number>> = {}): number {
  let flops = 0;
  for (const node of nodes) {
    const [a, b] = node.inputs;
    const out = node.outputs[0];
    switch (node.op) {
      case 'matmul':
        flops += 2 * size(out, dims) * dimValue(a.shape[a.rank - 1], dims);
        break;
      case 'conv2d':
        // out [N, Cout, H', W'] · (Cin/groups · kH · kW)
        flops += (2 * size(out, dims) * size(b, dims)) / dimValue(b.shape[0], dims);
        break;
      case 'convTranspose2d':
        // in [N, Cin, H, W] · (Cout/groups · kH · kW)
        flops += (2 * size(a, dims) * size(b, dims)) / dimValue(b.shape[0], dims);
        break;
      case 'attention': {
        const [q, k, v] = node.inputs;
        // q·kᵀ and p·v: 2·Sq·Skv·B·H·(D + Dv), with B·H·D = |q|/Sq and B·H·Dv = |v|/Skv.
        const sq = dimValue(q.rank === 3 ? q.shape[1] : q.shape[2], dims);
        const skv = dimValue(k.rank === 3 ? k.shape[1] : k.shape[2], dims);
        flops += 2 * sq * skv * (size(q, dims) / sq + size(v, dims) / skv);
        break;
      }
    }
  }
  return flops;
}
