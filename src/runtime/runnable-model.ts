import { OptionError, RuntimeError } from '../errors.js';
import type { DType } from '../graph/dtype.js';
import type { Graph } from '../graph/graph.js';
import { formatShape } from '../graph/shape.js';
import type { Feed, RunResult } from './backend.js';
import type { HostTensor } from './host-tensor.js';
import { hostTensor, shapeSize } from './host-tensor.js';
import type { CompiledGraph, GraphSessionSettings, Runtime } from './runtime.js';

/** One dim of an input's expected shape: a number is fixed; a name is the same in every input of a call. */
export type InputDim = number | string;

/** What a model's method accepts as one named input. */
export interface InputSpec {
  /** The dtypes accepted (the model converts them to what its graph takes). */
  dtypes: readonly DType[];
  /** The shape, or the list of shapes accepted (a timestep: `{ oneOf: [[], [1], ['B']] }`). */
  shape: readonly InputDim[] | { oneOf: readonly (readonly InputDim[])[] };
  /** Whether the input may be left out; default false. */
  optional?: boolean;
}

export type InputSpecs = Readonly<Record<string, InputSpec>>;

/** The value each named dim of the specs took in one call (`dims.B`, `dims.H`). */
export type BoundDims = Readonly<Record<string, number>>;

export interface RunnableModelOptions<Layout> {
  /** diffusers/transformers class name, first word of every error. */
  className: string;
  /** Where the model came from (its folder, or '(in memory)'), named in every error. */
  dir: string;
  runtime: Runtime;
  /** The graph of one input layout. */
  build: (layout: Layout) => Graph;
  /** Identifies a layout in the compile cache; JSON of the layout by default. */
  key?: (layout: Layout) => string;
  /** Session settings of a layout's graph where they differ from the runtime's (Runtime.compile). */
  settings?: (layout: Layout) => GraphSessionSettings;
}

export interface RunnableRunOptions {
  /** The name of the method run, for errors; default 'forward'. */
  method?: string;
  /** Outputs kept where the session runs, returned as TensorRefs in `retained` (T-GATE caches). */
  retain?: (output: string) => boolean;
  /** Feeds that depend on the compiled graph's inputs (cached tensors, LoRA scales), added to `feeds`. */
  graphFeeds?: (graph: CompiledGraph) => Record<string, Feed>;
  /** Outputs to compute; default all. */
  outputs?: string[];
}

/**
 * What every model class runs its graphs through: checks a call's inputs against the method's
 * specs (names, dtypes, shapes, named dims agreeing across inputs) with errors that name the model,
 * the input, what was expected and what was found; builds the graph once per input layout (the
 * runtime then compiles one session per graph signature); runs it, keeping the outputs asked for.
 */
export class RunnableModel<Layout> {
  readonly className: string;
  readonly dir: string;
  readonly runtime: Runtime;
  private readonly build: (layout: Layout) => Graph;
  private readonly key: (layout: Layout) => string;
  private readonly settings: (layout: Layout) => GraphSessionSettings;
  /** Building and hashing a graph per call would cost every step; one entry per layout. */
  private readonly compiled = new Map<string, Promise<CompiledGraph>>();

  constructor(options: RunnableModelOptions<Layout>) {
    this.className = options.className;
    this.dir = options.dir;
    this.runtime = options.runtime;
    this.build = options.build;
    this.key = options.key ?? ((layout) => JSON.stringify(layout));
    this.settings = options.settings ?? (() => ({}));
  }

  /** `Class.method (dir)`: the prefix of every error about a call. */
  where(method = 'forward'): string {
    return `${this.className}.${method} (${this.dir})`;
  }

  /** A method name given by a caller (the CLI's --method) must be one the model has. */
  checkMethod(method: string | undefined, methods: readonly string[]): string {
    const name = method ?? 'forward';
    if (!methods.includes(name)) {
      const list = methods.length === 1 ? `only ${methods[0]}` : methods.join(', ');
      throw new OptionError(`${this.className} has no method "${name}"; it has ${list}`, 'METHOD');
    }
    return name;
  }

  /** Keyword arguments: each one of `allowed`, each true, false or null. */
  checkKwargs(kwargs: Record<string, unknown>, allowed: readonly string[], method = 'forward'): void {
    for (const [name, value] of Object.entries(kwargs)) {
      if (!allowed.includes(name)) {
        throw new OptionError(
          `${this.where(method)}: unknown kwarg "${name}"; expected ${allowed.join(', ') || 'none'}`,
          'KWARG',
        );
      }
      if (value !== undefined && value !== null && typeof value !== 'boolean') {
        throw new OptionError(
          `${this.where(method)}: kwarg "${name}" must be true or false, got ${JSON.stringify(value)}`,
          'KWARG',
        );
      }
    }
  }

  /**
   * Check a call's inputs against `specs`, in the specs' order: unknown and missing names
   * (OptionError), dtypes (RuntimeError DTYPE), ranks, fixed dims and named dims (RuntimeError
   * SHAPE). Returns the value each named dim took.
   */
  checkInputs(
    inputs: Readonly<Record<string, HostTensor>>,
    specs: InputSpecs,
    method = 'forward',
  ): BoundDims {
    const where = this.where(method);
    const names = Object.keys(specs);
    for (const name of Object.keys(inputs)) {
      if (!Object.hasOwn(specs, name)) {
        throw new OptionError(
          `${where}: unknown input "${name}"; expected ${names.join(', ') || 'none'}`,
          'INPUT',
        );
      }
    }
    const dims = new Map<string, number>();
    const boundBy = new Map<string, string>();
    for (const [name, spec] of Object.entries(specs)) {
      const t = Object.hasOwn(inputs, name) ? inputs[name] : undefined;
      if (t === undefined) {
        if (spec.optional) continue;
        throw new OptionError(`${where}: missing input "${name}" (${describeSpec(spec)})`, 'INPUT');
      }
      const found = `${t.dtype} ${formatShape(t.shape)}`;
      if (!spec.dtypes.includes(t.dtype)) {
        throw new RuntimeError(
          `${where}: input "${name}": expected ${describeSpec(spec)}, got ${found}`,
          'DTYPE',
        );
      }
      if (t.data.length !== shapeSize(t.shape)) {
        throw new RuntimeError(
          `${where}: input "${name}": shape ${formatShape(t.shape)} needs ${shapeSize(t.shape)} values, got ${t.data.length}`,
          'SHAPE',
        );
      }
      const shapes = 'oneOf' in spec.shape ? spec.shape.oneOf : [spec.shape];
      const match = shapes.find((shape) => fits(t.shape, shape, dims));
      if (match === undefined) {
        // Name the dim that disagrees with an earlier input, when that is why no shape fits.
        const conflicts = shapes
          .filter((shape) => shape.length === t.shape.length)
          .flatMap((shape) =>
            shape.flatMap((d, axis) =>
              typeof d === 'string' && dims.has(d) && dims.get(d) !== t.shape[axis]
                ? [`${d} = ${dims.get(d)} (from input "${boundBy.get(d)}")`]
                : [],
            ),
          );
        const given = conflicts.length > 0 ? ` with ${[...new Set(conflicts)].join(', ')}` : '';
        throw new RuntimeError(
          `${where}: input "${name}": expected ${describeSpec(spec)}${given}, got ${found}`,
          'SHAPE',
        );
      }
      match.forEach((d, axis) => {
        if (typeof d === 'string' && !dims.has(d)) {
          dims.set(d, t.shape[axis]);
          boundBy.set(d, name);
        }
      });
    }
    return Object.fromEntries(dims);
  }

  /** An error about one input that the model checks itself (a range, a multiple), worded as checkInputs words them. */
  inputError(input: string, message: string, code = 'SHAPE', method = 'forward'): RuntimeError {
    return new RuntimeError(`${this.where(method)}: input "${input}": ${message}`, code);
  }

  /** The graph of `layout`, built and compiled once. */
  compile(layout: Layout): Promise<CompiledGraph> {
    const key = this.key(layout);
    let entry = this.compiled.get(key);
    if (!entry) {
      // async, so that an error while building rejects like one while compiling.
      entry = (async () => this.runtime.compile(this.build(layout), this.settings(layout)))();
      this.compiled.set(key, entry);
      entry.catch(() => this.compiled.delete(key));
    }
    return entry;
  }

  /**
   * Run the graph of `layout` on `feeds` (plus `graphFeeds` of the compiled graph). Feeds that do
   * not fit the graph are errors naming the model (the runtime's checks, prefixed).
   */
  async run(
    layout: Layout,
    feeds: Record<string, Feed>,
    options: RunnableRunOptions = {},
  ): Promise<RunResult> {
    const compiled = await this.compile(layout);
    const all = { ...feeds, ...(options.graphFeeds?.(compiled) ?? {}) };
    const retain = options.retain ? compiled.outputs.map((o) => o.name).filter(options.retain) : [];
    return compiled.runRetaining(all, retain, {
      label: this.where(options.method),
      ...(options.outputs ? { outputs: options.outputs } : {}),
    });
  }

  /** Number of layouts compiled (or compiling). */
  get compiledLayouts(): number {
    return this.compiled.size;
  }

  /** Forget the compiled graphs (the runtime keeps its sessions until it is disposed). */
  clear(): void {
    this.compiled.clear();
  }
}

/** Whether `shape` fits `expected` given the dims bound so far; a name repeated in it must repeat its value. */
function fits(
  shape: readonly number[],
  expected: readonly InputDim[],
  dims: ReadonlyMap<string, number>,
): boolean {
  if (shape.length !== expected.length) return false;
  const local = new Map(dims);
  return expected.every((d, axis) => {
    if (typeof d === 'number') return d === shape[axis];
    const bound = local.get(d);
    if (bound === undefined) local.set(d, shape[axis]);
    return bound === undefined || bound === shape[axis];
  });
}

/** `float32 [B, 4, H, W]`, `int64 or int32 [B, S]`, `float32 [], [1] or [B]`. */
function describeSpec(spec: InputSpec): string {
  const shapes = 'oneOf' in spec.shape ? spec.shape.oneOf : [spec.shape];
  return `${alternatives(spec.dtypes)} ${alternatives(shapes.map((s) => formatShape(s)))}`;
}

/** `a`, `a or b`, `a, b or c`. */
function alternatives(items: readonly string[]): string {
  return items.length <= 1
    ? items.join('')
    : `${items.slice(0, -1).join(', ')} or ${items[items.length - 1]}`;
}

/** Numeric dtypes a model converts to float32 (diffusers passes timesteps and masks as int64). */
export const NUMERIC_DTYPES: readonly DType[] = ['float32', 'float64', 'int64', 'int32', 'bool'];

/** Any numeric host tensor as float32 values; float32 is returned as it is. */
export function asFloat32(t: HostTensor): HostTensor {
  switch (t.dtype) {
    case 'float32':
      return t;
    case 'int64':
      return hostTensor(
        'float32',
        t.shape,
        Float32Array.from(t.data as BigInt64Array, (v) => Number(v)),
      );
    case 'float64':
    case 'int32':
    case 'bool':
      return hostTensor(
        'float32',
        t.shape,
        Float32Array.from(t.data as Float64Array | Int32Array | Uint8Array),
      );
    default:
      throw new RuntimeError(`${t.dtype} inputs must be converted to float32 first`, 'DTYPE');
  }
}

/** A scalar, [1] or [batch] tensor as [batch] (diffusers broadcasts one timestep to the batch). */
export function asBatch(t: HostTensor, batch: number): HostTensor {
  if (t.shape.length === 1 && t.shape[0] === batch) return t;
  if (t.data.length !== 1 || t.shape.length > 1) {
    throw new RuntimeError(`expected a scalar, [1] or [${batch}], got ${formatShape(t.shape)}`, 'SHAPE');
  }
  const out = hostTensor(t.dtype, [batch]);
  // Typed arrays of one dtype: the value fits the array it is copied into.
  (out.data as { fill(value: unknown): unknown }).fill(t.data[0]);
  return out;
}
