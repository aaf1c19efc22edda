/**
 * diffusers' `AutoencoderKL` (autoencoders/autoencoder_kl.py): the KL VAE of Stable Diffusion 1.x/2.x/XL
 * (4 latent channels, quant convs) and of SD3/FLUX (16 latent channels, no quant convs).
 *
 * `encode` returns the posterior's parameters (DiagonalGaussianDistribution: mean, logvar clamped to
 * [-30, 20], std); `decode` maps latents to images as they are. Scaling and shift factors belong to
 * pipelines, as in diffusers: `config.scalingFactor`, `config.shiftFactor`.
 */
import { join } from 'node:path';

import { OptionError, RuntimeError } from '../errors.js';
import { Graph } from '../graph/graph.js';
import type { Tensor } from '../graph/graph.js';
import { exp, maximum, minimum, mul, split } from '../graph/ops/index.js';
import { readConfig } from '../io/diffusers.js';
import type { WeightStore } from '../io/diffusers.js';
import { Conv2d } from '../nn/layers.js';
import { Params } from '../nn/params.js';
import type { TensorSource } from '../nn/weights.js';
import type { HostTensor } from '../runtime/host-tensor.js';
import type { Runtime } from '../runtime/runtime.js';
import { hostTensor } from '../runtime/host-tensor.js';
import { RunnableModel } from '../runtime/runnable-model.js';
import type { DiffusersModel, LoadOptions } from './model.js';
import { openCheckedWeights } from './model.js';
import { checkQuantizeOption } from './int8.js';
import { VelodiffWarning, emitWarning } from '../warnings.js';
import type { AutoencoderKLConfig } from './vae/config.js';
import { parseAutoencoderKLConfig } from './vae/config.js';
import { Decoder, Encoder } from './vae/coders.js';

export type { AutoencoderKLConfig } from './vae/config.js';

/** The graphs an AutoencoderKL builds: encode, decode, or diffusers' forward (decode of the posterior mode). */
export type AutoencoderKLMethod = 'encode' | 'decode' | 'forward';

export interface AutoencoderKLEncoding {
  latentMean: HostTensor;
  /** Clamped to [-30, 20]. */
  latentLogvar: HostTensor;
  /** exp(0.5·logvar). */
  latentStd: HostTensor;
}

/** `forward` input names per method: the diffusers argument name first, then accepted aliases. */
const INPUT_NAMES: Readonly<Record<AutoencoderKLMethod, readonly string[]>> = {
  // AutoencoderKL.forward(sample) / encode(x); golden fixtures call the image `image`.
  encode: ['sample', 'x', 'image'],
  // decode(z); golden fixtures and pipelines call it `latents`.
  decode: ['z', 'latents'],
  forward: ['sample', 'x', 'image'],
};

/** Graph input names (one per method); ONNX forbids an input named like an output, so forward's is `x`. */
const GRAPH_INPUT: Readonly<Record<AutoencoderKLMethod, string>> = {
  encode: 'sample',
  decode: 'z',
  forward: 'x',
};

const LOGVAR_MIN = -30;
const LOGVAR_MAX = 20;

export class AutoencoderKL implements DiffusersModel {
  readonly className = 'AutoencoderKL';
  readonly methods: readonly string[] = ['encode', 'decode'];
  /** Compiles one graph per method and input shape. */
  private readonly runnable: RunnableModel<AutoencoderKLLayout>;

  private constructor(
    readonly dir: string,
    readonly config: AutoencoderKLConfig,
    /** The checkpoint, read in place by the compiled graphs. */
    readonly weights: WeightStore,
    runtime: Runtime,
  ) {
    this.runnable = new RunnableModel<AutoencoderKLLayout>({
      className: this.className,
      dir,
      runtime,
      build: ({ method, shape }) => buildAutoencoderKLGraph(config, weights, method, shape),
    });
  }

  /**
   * Loads `<dir>/config.json` and the weights in `dir`, and checks every tensor the config implies
   * (presence and shape) before returning, so a mismatched checkpoint fails here and not at first use.
   */
  static async fromPretrained(dir: string, options: LoadOptions): Promise<AutoencoderKL> {
    // The VAE stays float32 (README "int8"): asked for int8, it says so rather than ignore it silently.
    if (checkQuantizeOption(options.quantize, `AutoencoderKL.fromPretrained (${dir})`) === 'int8') {
      (options.onWarning ?? emitWarning)(
        new VelodiffWarning(
          `AutoencoderKL.fromPretrained (${dir}): quantize 'int8' is ignored; the VAE stays float32 (its work is convolutions, which run in float32)`,
          'QUANTIZE_IGNORED',
          dir,
          [],
        ),
      );
    }
    const raw = await readConfig(dir);
    const config = parseAutoencoderKLConfig(raw, join(dir, 'config.json'), options.onWarning);
    // Building encode and decode reads every parameter with its expected shape; nothing is compiled.
    const f = scaleFactor(config);
    const weights = await openCheckedWeights(dir, {
      className: 'AutoencoderKL',
      build: (source) => {
        buildAutoencoderKLGraph(config, source, 'encode', [1, config.inChannels, f, f]);
        buildAutoencoderKLGraph(config, source, 'decode', [1, config.latentChannels, 1, 1]);
      },
      onWarning: options.onWarning,
    });
    return new AutoencoderKL(dir, config, weights, options.runtime);
  }

  /** Image size / latent size: 2^(number of blocks − 1), diffusers pipelines' `vae_scale_factor`. */
  get vaeScaleFactor(): number {
    return scaleFactor(this.config);
  }

  /** Image [N, in_channels, H, W] (H and W multiples of `vaeScaleFactor`) → the latent posterior. */
  async encode(sample: HostTensor): Promise<AutoencoderKLEncoding> {
    const out = await this.run('encode', 'sample', sample);
    return {
      latentMean: out['latent_mean'],
      latentLogvar: out['latent_logvar'],
      latentStd: out['latent_std'],
    };
  }

  /** Latents [N, latent_channels, h, w], unscaled → image [N, out_channels, h·f, w·f]. */
  async decode(latents: HostTensor): Promise<{ sample: HostTensor }> {
    const out = await this.run('decode', 'z', latents);
    return { sample: out['sample'] };
  }

  /**
   * DiffusersModel: `method` 'encode' takes `sample` (or `x`, `image`) and returns `latent_mean`,
   * `latent_logvar`, `latent_std`; 'decode' takes `z` (or `latents`) and returns `sample`; no method is
   * diffusers' `forward(sample, sample_posterior=False)`: the decode of the posterior mean, as `sample`.
   */
  async forward(
    inputs: Record<string, HostTensor>,
    options: { method?: string; kwargs?: Record<string, unknown> } = {},
  ): Promise<Record<string, HostTensor>> {
    const method = options.method ?? 'forward';
    if (method !== 'encode' && method !== 'decode' && method !== 'forward') {
      throw new OptionError(
        `AutoencoderKL has no method "${method}"; use 'encode', 'decode', or no method for forward.`,
        'METHOD',
      );
    }
    checkKwargs(method, options.kwargs ?? {});
    const accepted = INPUT_NAMES[method];
    const names = Object.keys(inputs);
    const unknown = names.filter((n) => !accepted.includes(n));
    if (unknown.length > 0 || names.length !== 1) {
      throw new RuntimeError(
        `AutoencoderKL ${method} takes one tensor named ${accepted.map((n) => `"${n}"`).join(' or ')}, ` +
          `got ${names.length === 0 ? 'none' : names.map((n) => `"${n}"`).join(', ')}.`,
        'INPUT',
      );
    }
    return this.run(method, names[0], inputs[names[0]]);
  }

  /** The graph of `method` for an input of `shape` (static), with its checkpoint weights. */
  buildGraph(method: AutoencoderKLMethod, shape: readonly number[]): Graph {
    this.checkInput(method, GRAPH_INPUT[method], hostTensor('float32', shape));
    return buildAutoencoderKLGraph(this.config, this.weights, method, shape);
  }

  async close(): Promise<void> {
    this.runnable.clear();
    await this.weights.close();
  }

  /** Runs `method` on `input`, given under the name `name` (named in errors). */
  private async run(
    method: AutoencoderKLMethod,
    name: string,
    input: HostTensor,
  ): Promise<Record<string, HostTensor>> {
    this.checkInput(method, name, input);
    const layout = { method, shape: [...input.shape] };
    return (await this.runnable.run(layout, { [GRAPH_INPUT[method]]: input }, { method })).host;
  }

  private checkInput(method: AutoencoderKLMethod, name: string, input: HostTensor): void {
    const decoding = method === 'decode';
    const channels = decoding ? this.config.latentChannels : this.config.inChannels;
    // Latent sizes are any; image sizes must halve at every block but the last.
    const shape = decoding ? ['N', channels, 'h', 'w'] : ['N', channels, 'H', 'W'];
    const dims = this.runnable.checkInputs(
      { [name]: input },
      { [name]: { dtypes: ['float32'], shape } },
      method,
    );
    if (input.shape.some((d) => d < 1)) {
      throw this.runnable.inputError(
        name,
        `every dim must be at least 1, got [${input.shape.join(', ')}]`,
        'SHAPE',
        method,
      );
    }
    const f = this.vaeScaleFactor;
    if (!decoding && (dims.H % f !== 0 || dims.W % f !== 0)) {
      const round = (d: number): number => Math.max(f, Math.round(d / f) * f);
      throw this.runnable.inputError(
        name,
        `image height and width must be multiples of ${f} (the VAE downsamples by ${f}), got ` +
          `${dims.H}×${dims.W}; resize or crop it to e.g. ${round(dims.H)}×${round(dims.W)}.`,
        'SHAPE',
        method,
      );
    }
  }
}

/** What one compiled AutoencoderKL graph serves. */
interface AutoencoderKLLayout {
  method: AutoencoderKLMethod;
  shape: number[];
}

/** Every block but the last halves the image. */
function scaleFactor(config: AutoencoderKLConfig): number {
  return 2 ** (config.blockOutChannels.length - 1);
}

/** The graph of `method` for an input of `shape` (static), with the weights of `source`. */
export function buildAutoencoderKLGraph(
  config: AutoencoderKLConfig,
  source: TensorSource,
  method: AutoencoderKLMethod,
  shape: readonly number[],
): Graph {
  const graph = new Graph(`AutoencoderKL.${method}`);
  const params = Params.of(graph, source);
  const input = graph.input(GRAPH_INPUT[method], 'float32', shape);
  if (method === 'decode') {
    graph.output('sample', decodeLatents(params, input, config));
    return graph;
  }
  const posterior = encodeImage(params, input, config);
  if (method === 'encode') {
    graph.output('latent_mean', posterior.mean);
    graph.output('latent_logvar', posterior.logvar);
    graph.output('latent_std', posterior.std);
  } else {
    graph.output('sample', decodeLatents(params, posterior.mean, config));
  }
  return graph;
}

/** The encoder and DiagonalGaussianDistribution's parameters, in `params`' graph (training builds on it). */
export function encodeImage(
  params: Params,
  sample: Tensor,
  config: AutoencoderKLConfig,
): { mean: Tensor; logvar: Tensor; std: Tensor } {
  let moments = Encoder(params.child('encoder'), sample, config);
  if (config.useQuantConv) {
    const channels = 2 * config.latentChannels;
    moments = Conv2d(params.child('quant_conv'), moments, {
      inChannels: channels,
      outChannels: channels,
      kernel: 1,
    });
  }
  // DiagonalGaussianDistribution (autoencoders/vae.py).
  return params.scope(() => {
    const [mean, rawLogvar] = split(moments, 2, 1);
    const logvar = minimum(maximum(rawLogvar, LOGVAR_MIN), LOGVAR_MAX);
    return { mean, logvar, std: exp(mul(logvar, 0.5)) };
  });
}

/** post_quant_conv and the decoder, in `params`' graph (training builds on it). */
export function decodeLatents(params: Params, z: Tensor, config: AutoencoderKLConfig): Tensor {
  let h = z;
  if (config.usePostQuantConv) {
    const channels = config.latentChannels;
    h = Conv2d(params.child('post_quant_conv'), h, {
      inChannels: channels,
      outChannels: channels,
      kernel: 1,
    });
  }
  return Decoder(params.child('decoder'), h, config);
}

function checkKwargs(method: AutoencoderKLMethod, kwargs: Record<string, unknown>): void {
  for (const [key, value] of Object.entries(kwargs)) {
    if (key === 'return_dict') continue;
    if (method === 'forward' && key === 'sample_posterior') {
      if (value === false) continue;
      throw new OptionError(
        'AutoencoderKL forward with sample_posterior=True draws noise from a generator; call encode and ' +
          "form latent_mean + latent_std · noise with velodiff's seeded generator instead.",
        'KWARG',
      );
    }
    throw new OptionError(
      `AutoencoderKL ${method} does not take the argument "${key}"` +
        (method === 'forward'
          ? ' (it takes return_dict and sample_posterior=false).'
          : ' (only return_dict).'),
      'KWARG',
    );
  }
}
