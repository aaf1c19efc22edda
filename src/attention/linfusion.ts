/**
 * LinFusion (arXiv 2409.02097): a generalized, normalization-aware, non-causal linear attention that
 * replaces every image self-attention of a denoiser, with its own weights
 * (methods/clear_linfusion.md §2). The graph holds no image size: the token count N is read at run
 * time, so one compiled graph serves every resolution (§2.6).
 */
import { join, resolve } from 'node:path';

import { FileFormatError, GraphBuildError, OptionError, WeightError } from '../errors.js';
import type { DType } from '../graph/dtype.js';
import type { Tensor } from '../graph/graph.js';
import { Graph } from '../graph/graph.js';
import {
  add,
  asTensor,
  div,
  eluPlusOne,
  expand,
  leakyRelu,
  matmul,
  mean,
  mul,
  reshape,
  rsqrt,
  sum,
  transpose,
} from '../graph/ops/index.js';
import { formatShape } from '../graph/shape.js';
import { WeightStore, readConfig } from '../io/diffusers.js';
import { describeJson, isPlainObject } from '../io/json.js';
import { didYouMean } from '../io/suggest.js';
import { LayerNorm, Linear, LinearToHeads } from '../nn/layers.js';
import { Params } from '../nn/params.js';
import type { SelfAttentionLayer } from './types.js';

/** Added to the mean-normalised denominator Q·K̄ᵀ (§2.2); 1e-4·N in the row form. */
const DENOMINATOR_EPS = 1e-4;
/** The MLPs' LayerNorm eps and LeakyReLU slope: torch defaults, as LinFusion builds them (§2.2). */
const MLP_NORM_EPS = 1e-5;
const MLP_LEAKY_SLOPE = 0.01;

export interface LinFusionShape {
  /** Channels C of the tokens (`dim_n`). */
  dim: number;
  heads: number;
  /** Hidden width m of the two input MLPs (`projection_mid_dim`); null or absent means C. */
  midDim?: number | null;
}

/**
 * LinFusion's GeneralizedLinearAttention on x [B, N, C], reading its weights under `p`
 * (`to_q`, `to_k`, `to_v` without bias, `to_out.0`, and the input MLPs `to_q_.{0,1,3}`,
 * `to_k_.{0,1,3}`). N may be any dim, named or not.
 */
export function linfusionAttention(p: Params, x: Tensor, shape: LinFusionShape): Tensor {
  const { dim, heads } = shape;
  const midDim = shape.midDim ?? dim;
  if (!Number.isInteger(heads) || heads < 1 || !Number.isInteger(dim) || dim % heads !== 0) {
    throw new GraphBuildError(
      `${p.path || 'linfusion'}: dim ${dim} must be a positive multiple of heads ${heads}`,
      'SHAPE',
    );
  }
  if (x.rank !== 3 || x.shape[2] !== dim) {
    throw new GraphBuildError(
      `${p.path || 'linfusion'}: expected tokens [B, N, ${dim}], got ${formatShape(x.shape)}`,
      'SHAPE',
    );
  }
  const headDim = dim / heads;
  // to_q and to_k see the tokens plus a residual MLP of them; to_v the tokens (§2.2). Each is
  // projected straight into heads [B, H, N, D], so no transposes precede the kernel.
  const queryInput = add(x, inputMlp(p.child('to_q_'), x, dim, midDim));
  const queries = LinearToHeads(p.child('to_q'), queryInput, dim, heads, false);
  const keyInput = add(x, inputMlp(p.child('to_k_'), x, dim, midDim));
  const keys = LinearToHeads(p.child('to_k'), keyInput, dim, heads, false);
  const values = LinearToHeads(p.child('to_v'), x, dim, heads, false);
  const out = p.scope(() => {
    const perHead = linearAttentionHeads(queries, keys, values); // [B, H, N, D]
    return reshape(transpose(perHead, [0, 2, 1, 3]), [x.shape[0], x.shape[1], heads * headDim]);
  });
  return Linear(p.child('to_out.0'), out, dim, dim);
}

/** The residual input transform: Linear(C→m) → LayerNorm(m) → LeakyReLU(0.01) → Linear(m→C). */
function inputMlp(p: Params, x: Tensor, dim: number, midDim: number): Tensor {
  const hidden = LayerNorm(p.child(1), Linear(p.child(0), x, dim, midDim), midDim, { eps: MLP_NORM_EPS });
  const activated = p.scope(() => leakyRelu(hidden, MLP_LEAKY_SLOPE));
  return Linear(p.child(3), activated, midDim, dim);
}

/**
 * O = (φ(Q)·S) / (φ(Q)·K̄ᵀ + 1e-4) per head, with S = (K/√N)ᵀ(V/√N) and K̄ the token mean of φ(K)
 * (§2.2; no 1/√d scale). q, k, v: [B, N, H·D] → [B, N, H·D].
 */
export function normalizedLinearAttention(q: Tensor, k: Tensor, v: Tensor, heads: number): Tensor {
  const [batch, tokens, width] = q.shape;
  const headDim = (width as number) / heads;
  const toHeads = (t: Tensor): Tensor => transpose(reshape(t, [batch, tokens, heads, headDim]), [0, 2, 1, 3]);
  const perHead = linearAttentionHeads(toHeads(q), toHeads(k), toHeads(v));
  return reshape(transpose(perHead, [0, 2, 1, 3]), [batch, tokens, width]);
}

/** `normalizedLinearAttention` on heads: q, k, v [B, H, N, D] → [B, H, N, D]. */
function linearAttentionHeads(q: Tensor, k: Tensor, v: Tensor): Tensor {
  const [batch, heads, tokens, headDim] = q.shape;
  const queries = eluPlusOne(q);
  const keys = eluPlusOne(k);
  // The √N split keeps KᵀV in half-precision range (§2.2); N is counted at run time. Where N is
  // static, ORT folds both scales into the product (MatMulScaleFusion): no pass over K or V.
  const invSqrtN = rsqrt(tokenCount(q));
  const state = matmul(transpose(mul(keys, invSqrtN), [0, 1, 3, 2]), mul(v, invSqrtN)); // [B, H, D, D]
  const keyMean = reshape(mean(keys, 2, true), [batch, heads, headDim, 1]); // K̄ᵀ, the same order
  // + eps on [B, H, N]: ORT broadcasts onto a trailing dim of 1 one element at a time (0.35 ms
  // against ~0 at [2, 6, 4096], measured).
  const denominator = reshape(matmul(queries, keyMean), [batch, heads, tokens]);
  const normalizer = reshape(add(denominator, DENOMINATOR_EPS), [batch, heads, tokens, 1]);
  return div(matmul(queries, state), normalizer);
}

/** The number of tokens of x [B, H, N, D] as a float scalar computed at run time (N may be symbolic). */
function tokenCount(x: Tensor): Tensor {
  return sum(expand(asTensor(1, x), [x.shape[2]]), 0);
}

// ---------------------------------------------------------------------------------------------
// The released file layout (§2.5).

/** One entry of `modules_list`: the denoiser module it replaces and its sizes. */
export interface LinFusionModule {
  /** The denoiser's module path, e.g. 'down_blocks.0.attentions.0.transformer_blocks.0.attn1'. */
  moduleName: string;
  dimN: number;
  heads: number;
  /** Resolved: `projection_mid_dim: null` means dimN. */
  projectionMidDim: number;
}

/** Class names a LinFusion config.json may carry: the current one and the Aug-2024 upload's. */
const CLASS_NAMES = ['LinFusion', 'StableMamba'];

/**
 * A LinFusion weights folder (`Yuanshi/LinFusion-1-5`, `-2-1`, `-XL`): `config.json` with
 * `modules_list`, and `diffusion_pytorch_model.safetensors` with module i's tensors under `{i}.`.
 * Every module's tensors are checked (presence and shape) when the folder is opened.
 */
export class LinFusionWeights {
  /** Per graph, the Params root its LinFusion weights are read through (one graph weight per tensor). */
  private readonly roots = new WeakMap<Graph, { params: Params; dtype: DType }>();
  private readonly indexByName: ReadonlyMap<string, number>;

  private constructor(
    /** Absolute path of the folder. */
    readonly dir: string,
    readonly configPath: string,
    /** `_class_name` as found: 'LinFusion', or 'StableMamba' for the first SD-1.5 upload. */
    readonly className: string,
    readonly modules: readonly LinFusionModule[],
    private readonly store: WeightStore,
  ) {
    this.indexByName = new Map(modules.map((m, i) => [m.moduleName, i]));
  }

  static async open(dir: string): Promise<LinFusionWeights> {
    const absoluteDir = resolve(dir);
    const configPath = join(absoluteDir, 'config.json');
    const raw = await readConfig(absoluteDir);
    const className = raw._class_name;
    if (className === undefined || !CLASS_NAMES.includes(className)) {
      throw new FileFormatError(
        `${configPath}: "_class_name" is ${describeJson(className)}; expected ${CLASS_NAMES.map((n) => `"${n}"`).join(' or ')}. ` +
          'Is this a LinFusion weights folder (e.g. Yuanshi/LinFusion-1-5)?',
        'CONFIG_CLASS',
        configPath,
      );
    }
    const modules = parseModulesList(raw['modules_list'], configPath);
    const store = await WeightStore.open(absoluteDir);
    const weights = new LinFusionWeights(absoluteDir, configPath, className, modules, store);
    try {
      weights.check();
    } catch (error) {
      await store.close();
      throw error;
    }
    return weights;
  }

  /** The LinFusion index for a denoiser module path like 'transformer_blocks.3.attn1'. */
  indexOf(modulePath: string): number | undefined {
    return this.indexByName.get(modulePath);
  }

  module(index: number): LinFusionModule {
    const m = this.modules[index];
    if (!Number.isInteger(index) || m === undefined) {
      throw new OptionError(
        `LinFusion module index ${index} is out of range: ${this.configPath} lists ${this.modules.length} modules`,
      );
    }
    return m;
  }

  /** The parameters of module `index` (tensors `{index}.*`) as weights of `graph`. */
  params(graph: Graph, index: number, dtype: DType = 'float32'): Params {
    this.module(index);
    let root = this.roots.get(graph);
    if (root === undefined) {
      root = { params: Params.of(graph, this.store, { dtype }), dtype };
      this.roots.set(graph, root);
    } else if (root.dtype !== dtype) {
      throw new OptionError(
        `graph "${graph.name}" already reads the LinFusion weights of ${this.dir} as ${root.dtype}; cannot also read them as ${dtype}`,
      );
    }
    return root.params.child(index);
  }

  /** Module `index` applied to x [B, N, dimN] in x's graph. */
  attention(index: number, x: Tensor): Tensor {
    const m = this.module(index);
    const p = this.params(x.graph, index, x.dtype);
    return linfusionAttention(p, x, { dim: m.dimN, heads: m.heads, midDim: m.projectionMidDim });
  }

  /** What the file covers, for messages: module names, abbreviated when long. */
  describeModules(limit = 20): string {
    const names = this.modules.map((m) => m.moduleName);
    const shown = names.slice(0, limit).join(', ');
    return names.length > limit ? `${shown}, … ${names.length - limit} more` : shown;
  }

  async close(): Promise<void> {
    await this.store.close();
  }

  /** Builds every module once on a scratch graph, so a missing or misshapen tensor fails at open. */
  private check(): void {
    const scratch = new Graph('linfusion-check');
    this.modules.forEach((m, i) => {
      this.attention(i, scratch.input(`x${i}`, 'float32', ['B', 'N', m.dimN]));
    });
  }
}

/**
 * The replacement for one self-attention of a denoiser: LinFusion's module for `modulePath`
 * (default: the layer's own module path) applied to the layer's normalised tokens.
 */
export function linfusionSelfAttention(
  layer: SelfAttentionLayer,
  weights: LinFusionWeights,
  modulePath: string = layer.params.path,
): Tensor {
  if (layer.textTokens > 0) {
    throw new OptionError(
      `${modulePath}: LinFusion replaces image-only self-attention, but this layer attends jointly over ` +
        `${layer.textTokens} text tokens and the image tokens (SD3/FLUX-style); use 'full' or 'clear' attention here`,
      'LINFUSION_JOINT_ATTENTION',
    );
  }
  const index = weights.indexOf(modulePath);
  if (index === undefined) {
    throw new WeightError(
      `${weights.configPath} has no LinFusion module for '${modulePath}'.` +
        `${didYouMean(
          modulePath,
          weights.modules.map((m) => m.moduleName),
        )} ` +
        `The file covers ${weights.modules.length} modules: ${weights.describeModules()}. ` +
        'Use the LinFusion weights made for this denoiser.',
      'LINFUSION_MODULE_MISSING',
    );
  }
  const m = weights.module(index);
  if (m.dimN !== layer.dim) {
    throw new WeightError(
      `${weights.configPath}: modules_list[${index}] ('${modulePath}') has dim_n ${m.dimN}, but the ` +
        `denoiser's layer has ${layer.dim} channels; the LinFusion weights are for another model`,
      'LINFUSION_DIM_MISMATCH',
    );
  }
  return weights.attention(index, layer.x);
}

// ---------------------------------------------------------------------------------------------
// config.json

/**
 * `modules_list`: objects {module_name, dim_n, heads, projection_mid_dim}, or the arrays
 * [module_name, dim_n, heads] of the StableMamba-era configs.
 */
function parseModulesList(value: unknown, path: string): LinFusionModule[] {
  const bad = (key: string, found: unknown, expected: string): never => {
    throw new FileFormatError(
      `${path}: "${key}" is ${describeJson(found)}; expected ${expected}`,
      'CONFIG_VALUE',
      path,
    );
  };
  if (!Array.isArray(value) || value.length === 0) {
    return bad('modules_list', value, 'a non-empty list of {module_name, dim_n, heads, projection_mid_dim}');
  }
  const seen = new Map<string, number>();
  return value.map((entry: unknown, i): LinFusionModule => {
    const at = `modules_list[${i}]`;
    let fields: Record<string, unknown>;
    if (isPlainObject(entry)) fields = entry;
    else if (Array.isArray(entry) && entry.length >= 3 && entry.length <= 4) {
      const [moduleName, dimN, heads, mid] = entry as unknown[];
      fields = { module_name: moduleName, dim_n: dimN, heads, projection_mid_dim: mid };
    } else {
      return bad(at, entry, '{module_name, dim_n, heads, projection_mid_dim} or [module_name, dim_n, heads]');
    }
    const moduleName = fields['module_name'];
    if (typeof moduleName !== 'string' || moduleName === '') {
      return bad(
        `${at}.module_name`,
        moduleName,
        "a module path such as 'down_blocks.0.attentions.0.transformer_blocks.0.attn1'",
      );
    }
    const first = seen.get(moduleName);
    if (first !== undefined) {
      return bad(
        `${at}.module_name`,
        moduleName,
        `a module not listed before (it is also modules_list[${first}])`,
      );
    }
    seen.set(moduleName, i);
    const positive = (key: string): number => {
      const v = fields[key];
      return typeof v === 'number' && Number.isInteger(v) && v > 0
        ? v
        : bad(`${at}.${key}`, v, 'a positive integer');
    };
    const dimN = positive('dim_n');
    const heads = positive('heads');
    if (dimN % heads !== 0) return bad(`${at}.heads`, heads, `a divisor of dim_n ${dimN}`);
    const mid = fields['projection_mid_dim'];
    const projectionMidDim = mid === undefined || mid === null ? dimN : positive('projection_mid_dim');
    for (const key of Object.keys(fields)) {
      if (!['module_name', 'dim_n', 'heads', 'projection_mid_dim'].includes(key)) {
        bad(
          `${at}.${key}`,
          fields[key],
          'no such key (LinFusion modules have module_name, dim_n, heads, projection_mid_dim)',
        );
      }
    }
    return { moduleName, dimN, heads, projectionMidDim };
  });
}
