/**
 * A model's parameters without a checkpoint, for training from scratch: their names and shapes
 * discovered from the model builder itself (the builder is the one place that knows them, for every
 * model class), and PyTorch's default initialisation of each.
 */
import { OptionError, WeightError } from '../errors.js';
import { formatShape } from '../graph/shape.js';
import type { TensorInfo } from '../io/safetensors.js';
import { TorchGenerator } from '../random/torch-generator.js';
import type { TensorSource } from '../nn/weights.js';
import { ParameterInputs } from '../nn/weights.js';

/**
 * Names and shapes of every parameter a model builder reads, from its config alone (no checkpoint),
 * in the order first read: `build` is called once with a source that holds no file and answers each
 * read with the shape the model expects. Its `has()` is false for every name, so a builder that
 * accepts a legacy spelling (a VAE's `query`/`key`, T5's `encoder.embed_tokens`) takes the current
 * diffusers/transformers name, and tensors a builder reads only when a checkpoint has them (an
 * overlay's extras) are left out. A builder may build several graphs (encode and decode); a name read
 * with two shapes is an error.
 *
 *   const shapes = discoverParameterShapes((source) => buildPixArtGraph(config, source, options));
 */
export function discoverParameterShapes(build: (source: TensorSource) => unknown): Map<string, number[]> {
  const shapes = new Map<string, number[]>();
  const recorder: TensorSource = {
    has: () => false,
    info(name: string, expectedShape?: readonly number[]): TensorInfo {
      if (expectedShape === undefined) {
        throw new WeightError(
          `discoverParameterShapes: the model reads '${name}' without saying its shape, so its shape ` +
            'cannot be known without a checkpoint; pass expectedShape where the model reads it',
          'WEIGHT_SHAPE_UNKNOWN',
        );
      }
      const shape = [...expectedShape];
      const seen = shapes.get(name);
      if (seen !== undefined && formatShape(seen) !== formatShape(shape)) {
        throw new WeightError(
          `discoverParameterShapes: the model reads '${name}' as ${formatShape(seen)} and as ${formatShape(shape)}`,
          'WEIGHT_SHAPE',
        );
      }
      shapes.set(name, shape);
      const count = shape.reduce((a, b) => a * b, 1);
      return { name, dtype: 'F32', shape, byteLength: 4 * count, fileOffset: 0 };
    },
  };
  build(new ParameterInputs(recorder));
  return shapes;
}

export type InitRule = {
  match: RegExp;
  init: 'zeros' | 'ones' | { normal: number } | { uniform: number } | 'default';
};

export interface InitOptions {
  seed: number;
  /** Per-name overrides, first match wins; names no rule matches get their layer kind's default. */
  rules?: readonly InitRule[];
}

/** How PyTorch's modules initialise a parameter by default. */
type DefaultInit =
  { kind: 'uniform'; bound: number } | { kind: 'ones' } | { kind: 'zeros' } | { kind: 'normal'; std: number };

/** Module names of nn.Embedding tables in diffusers and transformers checkpoints. */
const EMBEDDING_MODULE =
  /^(shared|embed_tokens|embed_positions|relative_attention_bias|wte|wpe|.*embedding)$/;

/**
 * The default init of one parameter from its name and shape (and its module's weight shape, for a
 * bias), as PyTorch's layer constructors do it:
 * - nn.Linear / nn.Conv{1,2,3}d weight and bias: U(−1/√fan_in, 1/√fan_in), fan_in = in·k… (the weight's
 *   kaiming_uniform_(a=√5) has bound gain·√(3/fan_in) with gain = √(2/(1+5)), i.e. 1/√fan_in; the bias
 *   uses the same bound, `reset_parameters` of _ConvNd and Linear);
 * - nn.LayerNorm / GroupNorm / RMSNorm (1-D weight): weight 1, bias 0;
 * - nn.Embedding: N(0, 1);
 * - PixArt's raw `scale_shift_table` [k, dim]: torch.randn(k, dim) / dim**0.5 (diffusers' PixArt block
 *   and PixArtTransformer2DModel).
 */
function defaultInit(
  name: string,
  shape: readonly number[],
  shapes: ReadonlyMap<string, readonly number[]>,
): DefaultInit {
  const parts = name.split('.');
  const leaf = parts[parts.length - 1];
  const module = parts[parts.length - 2] ?? '';
  if (leaf === 'scale_shift_table' && shape.length === 2)
    return { kind: 'normal', std: 1 / Math.sqrt(shape[1]) };
  if (leaf === 'weight') {
    if (shape.length === 1) return { kind: 'ones' };
    if (shape.length === 2 && EMBEDDING_MODULE.test(module)) return { kind: 'normal', std: 1 };
    return { kind: 'uniform', bound: 1 / Math.sqrt(fanIn(shape)) };
  }
  if (leaf === 'bias') {
    const weight = shapes.get([...parts.slice(0, -1), 'weight'].join('.'));
    // A bias beside a matrix or kernel belongs to a Linear or Conv; beside a 1-D weight, to a norm.
    if (weight !== undefined && weight.length >= 2)
      return { kind: 'uniform', bound: 1 / Math.sqrt(fanIn(weight)) };
    if (weight !== undefined || shape.length === 1) return { kind: 'zeros' };
  }
  throw new OptionError(
    `initParameters: no default init is known for '${name}' ${formatShape(shape)} (not a Linear, Conv, ` +
      'norm or embedding parameter by its name and shape); give it a rule, e.g. ' +
      `{ match: /${name.replace(/\./g, '\\.')}$/, init: { normal: 0.02 } }`,
    'INIT_UNKNOWN',
  );
}

/** fan_in of a weight [out, in/groups, k…]: torch's _calculate_fan_in_and_fan_out. */
function fanIn(shape: readonly number[]): number {
  return shape.slice(1).reduce((a, b) => a * b, 1);
}

/**
 * A uint32 seed for one parameter from the run's seed and its name (FNV-1a, then murmur3's finaliser):
 * torch's CPU generator keeps only 32 bits of a seed.
 */
function parameterSeed(seed: number, name: string): number {
  let hash = 0x811c9dc5 ^ mix32(seed);
  for (let i = 0; i < name.length; i++) hash = Math.imul(hash ^ name.charCodeAt(i), 0x01000193) >>> 0;
  return mix32(hash);
}

function mix32(value: number): number {
  let h = value >>> 0;
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}

/**
 * PyTorch's default init per layer kind (see `defaultInit`), or the first matching rule. Deterministic
 * by seed, and each parameter's values depend only on the seed and its own name and shape (a
 * TorchGenerator seeded by both), so adding or freezing a module leaves the others' values unchanged.
 */
export function initParameters(
  shapes: ReadonlyMap<string, readonly number[]>,
  options: InitOptions,
): Map<string, Float32Array> {
  if (!Number.isSafeInteger(options.seed) || options.seed < 0 || options.seed >= 2 ** 32) {
    throw new OptionError(`initParameters: expected a seed in [0, 2^32), found ${options.seed}`, 'INIT_SEED');
  }
  const params = new Map<string, Float32Array>();
  for (const [name, shape] of shapes) {
    const rule = options.rules?.find((r) => r.match.test(name));
    const init =
      rule === undefined || rule.init === 'default' ? defaultInit(name, shape, shapes) : ruleInit(rule.init);
    const generator = new TorchGenerator(parameterSeed(options.seed, name));
    params.set(name, sample(init, shape, generator));
  }
  return params;
}

function ruleInit(init: Exclude<InitRule['init'], 'default'>): DefaultInit {
  if (init === 'zeros') return { kind: 'zeros' };
  if (init === 'ones') return { kind: 'ones' };
  if ('normal' in init) return { kind: 'normal', std: init.normal };
  return { kind: 'uniform', bound: init.uniform };
}

function sample(init: DefaultInit, shape: readonly number[], generator: TorchGenerator): Float32Array {
  const count = shape.reduce((a, b) => a * b, 1);
  switch (init.kind) {
    case 'zeros':
      return new Float32Array(count);
    case 'ones':
      return new Float32Array(count).fill(1);
    case 'normal': {
      const values = generator.randn(shape);
      for (let i = 0; i < count; i++) values[i] *= init.std;
      return values;
    }
    case 'uniform': {
      const values = generator.rand(shape);
      for (let i = 0; i < count; i++) values[i] = (2 * values[i] - 1) * init.bound;
      return values;
    }
  }
}
