/**
 * The denoising loop every text-to-image pipeline runs (diffusers' `for i, t in enumerate(timesteps)`
 * in each `__call__`): the model input scaled by the scheduler, the denoiser (batch doubled under
 * classifier-free guidance), guidance and its rescale, the scheduler step, callbacks, progress and
 * abort; then the VAE decode and the [0, 1] mapping. What differs between pipelines — which model,
 * which conditioning, T-GATE's per-step plan — comes in as `predict` and `cfgAt`.
 */
import { OptionError } from '../errors.js';
import type { AutoencoderKL } from '../models/autoencoder-kl.js';
import type { NoiseGenerator } from '../random/torch-generator.js';
import { TorchGenerator } from '../random/torch-generator.js';
import type { HostTensor } from '../runtime/host-tensor.js';
import { hostTensor } from '../runtime/host-tensor.js';
import type { Scheduler } from '../schedulers/scheduler.js';
import { firstChannels, fromScheduler, mapFloat32, schedulerTensor, splitBatch } from './batch.js';

export interface StepEndInfo {
  step: number;
  timestep: number;
  latents: HostTensor;
}

export interface ProgressEvent {
  step: number;
  totalSteps: number;
  timestep: number;
  elapsedMs: number;
}

/** What every pipeline's `run` returns. */
export interface PipelineOutput {
  /** Images in [0, 1], [B, 3, H, W] (diffusers' output_type 'pt'); absent for outputType 'latent'. */
  images?: HostTensor;
  /** The final latents (before VAE scaling is undone). */
  latents: HostTensor;
  /** The timesteps run (for image-to-image, the last int(steps · strength) of the schedule). */
  timesteps: number[];
}

/** The loop's per-step hooks, shared by every pipeline's run options. */
export interface LoopCallbacks {
  /** Called after each step; may return new latents (diffusers' callback_on_step_end). */
  callbackOnStepEnd?: (
    info: StepEndInfo,
  ) => void | { latents?: HostTensor } | Promise<void | { latents?: HostTensor }>;
  onProgress?: (event: ProgressEvent) => void;
  /** Aborts between steps with the signal's AbortError. */
  signal?: AbortSignal;
}

/** The generator a run draws from: the given one, a torch-compatible one seeded by `seed`, or a random seed. */
export function resolveGenerator(o: { generator?: NoiseGenerator; seed?: number }): NoiseGenerator {
  if (o.generator) return o.generator;
  return new TorchGenerator(o.seed ?? Math.floor(Math.random() * 2 ** 31));
}

/**
 * diffusers' `prepare_latents` for text-to-image: the given latents (checked against `shape`) or
 * noise drawn from the generator, times the scheduler's init_noise_sigma in float32.
 */
export function initialLatents(
  shape: readonly number[],
  given: HostTensor | undefined,
  generator: NoiseGenerator,
  initNoiseSigma: number,
): HostTensor {
  let latents: HostTensor;
  if (given) {
    if (given.shape.join() !== shape.join()) {
      throw new OptionError(`latents: expected shape [${shape.join(', ')}], got [${given.shape.join(', ')}]`);
    }
    if (given.dtype !== 'float32') throw new OptionError(`latents must be float32, got ${given.dtype}`);
    latents = given;
  } else {
    latents = hostTensor('float32', shape, generator.randn(shape));
  }
  return initNoiseSigma === 1 ? latents : mapFloat32(latents, (v) => v * initNoiseSigma);
}

/** uncond + g·(text − uncond) on the two batch halves, in float32 as torch. */
export function classifierFreeGuidance(out: HostTensor, g: number): HostTensor {
  const half = out.data.length / 2;
  const d = out.data as Float32Array;
  const r = new Float32Array(half);
  const f = Math.fround;
  const gf = f(g);
  for (let i = 0; i < half; i++) r[i] = f(d[i] + f(gf * f(d[half + i] - d[i])));
  return hostTensor('float32', [out.shape[0] / 2, ...out.shape.slice(1)], r);
}

/**
 * diffusers' `rescale_noise_cfg` (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps
 * are Flawed", §3.4): the guided prediction rescaled to the text prediction's standard deviation per
 * batch item, mixed with the guided one by `phi`. Standard deviations are torch's unbiased ones.
 */
export function rescaleNoiseCfg(guided: HostTensor, text: HostTensor, phi: number): HostTensor {
  const f = Math.fround;
  const batch = guided.shape[0];
  const item = guided.data.length / batch;
  const g = guided.data as Float32Array;
  const t = text.data as Float32Array;
  const out = new Float32Array(g.length);
  const std = (d: Float32Array, start: number): number => {
    let mean = 0;
    for (let i = start; i < start + item; i++) mean += d[i];
    mean /= item;
    let ss = 0;
    for (let i = start; i < start + item; i++) ss += (d[i] - mean) ** 2;
    return f(Math.sqrt(ss / (item - 1)));
  };
  const phiF = f(phi);
  const rest = f(1 - phi);
  for (let b = 0; b < batch; b++) {
    const ratio = f(std(t, b * item) / std(g, b * item));
    for (let i = b * item; i < (b + 1) * item; i++) out[i] = f(f(phiF * f(g[i] * ratio)) + f(rest * g[i]));
  }
  return hostTensor('float32', guided.shape, out);
}

export interface DenoiseLoopOptions extends LoopCallbacks {
  scheduler: Scheduler;
  /** The timesteps to run, in order (all of the scheduler's, or image-to-image's tail of them). */
  timesteps: readonly number[];
  /** The starting latents, already scaled by init_noise_sigma (or noised from an image). */
  latents: HostTensor;
  generator: NoiseGenerator;
  eta: number;
  guidanceScale: number;
  /** diffusers' guidance_rescale φ; 0 (default) leaves the guided prediction as it is. */
  guidanceRescale?: number;
  /** Whether step `i` runs classifier-free guidance with a doubled batch (T-GATE drops it after its gate). */
  cfgAt: (step: number) => boolean;
  /**
   * The denoiser on the scheduler-scaled model input: [2B, …] (unconditional half first) when `cfg`,
   * else [B, …]. Returns the model output of the same batch.
   */
  predict: (modelInput: HostTensor, timestep: number, step: number, cfg: boolean) => Promise<HostTensor>;
  /**
   * Latent channels: an output with twice as many on axis 1 carries a learned variance, which the
   * sampler drops. Absent where the model predicts none (FLUX, whose packed latents have tokens on axis 1).
   */
  latentChannels?: number;
}

/** Runs the loop and returns the final latents. */
export async function denoise(o: DenoiseLoopOptions): Promise<HostTensor> {
  const { scheduler, timesteps } = o;
  const rescale = o.guidanceRescale ?? 0;
  let latents = o.latents;
  const started = Date.now();
  for (let i = 0; i < timesteps.length; i++) {
    o.signal?.throwIfAborted();
    const t = timesteps[i];
    const cfg = o.cfgAt(i);
    const doubled = cfg
      ? hostTensor('float32', [2 * latents.shape[0], ...latents.shape.slice(1)], doubledData(latents))
      : latents;
    const modelInput = fromScheduler(scheduler.scaleModelInput(schedulerTensor(doubled), t));
    let prediction = await o.predict(modelInput, t, i, cfg);
    if (cfg) {
      const guided = classifierFreeGuidance(prediction, o.guidanceScale);
      prediction = rescale > 0 ? rescaleNoiseCfg(guided, splitBatch(prediction)[1], rescale) : guided;
    }
    if (o.latentChannels !== undefined && prediction.shape[1] === 2 * o.latentChannels)
      prediction = firstChannels(prediction, o.latentChannels);
    const out = scheduler.step(schedulerTensor(prediction), t, schedulerTensor(latents), {
      generator: o.generator,
      eta: o.eta,
    });
    latents = fromScheduler(out.prevSample);
    if (o.callbackOnStepEnd) {
      const r = await o.callbackOnStepEnd({ step: i, timestep: t, latents });
      if (r && r.latents) latents = r.latents;
    }
    o.onProgress?.({
      step: i + 1,
      totalSteps: timesteps.length,
      timestep: t,
      elapsedMs: Date.now() - started,
    });
  }
  o.signal?.throwIfAborted();
  return latents;
}

function doubledData(latents: HostTensor): Float32Array {
  const d = latents.data as Float32Array;
  const out = new Float32Array(2 * d.length);
  out.set(d);
  out.set(d, d.length);
  return out;
}

/**
 * How a pipeline maps the VAE's latents to the denoiser's and back. diffusers spells this out in each
 * pipeline: SD 1.x/2.x only scale, SDXL uses the VAE's latents_mean/latents_std where it has them,
 * SD3 and FLUX subtract its shift_factor before scaling.
 */
export interface LatentsScaling {
  /** SDXL: per-channel latents_mean / latents_std where the VAE has them. */
  latentsStatistics?: boolean;
  /** SD3 / FLUX: `(z − shift_factor) · scaling_factor` (a VAE without shift_factor shifts by 0). */
  shiftFactor?: boolean;
}

/**
 * Latents of the denoiser back to the VAE's: divided by scaling_factor; with `latentsStatistics`
 * and a VAE that has latents_mean/latents_std, `latents · std / scaling_factor + mean` per channel
 * (SDXL pipelines); with `shiftFactor`, `latents / scaling_factor + shift_factor` (SD3, FLUX).
 */
export function unscaleLatents(
  vae: AutoencoderKL,
  latents: HostTensor,
  scaling: LatentsScaling = {},
): HostTensor {
  const { scalingFactor: scale, latentsMean: mean, latentsStd: std, shiftFactor } = vae.config;
  if (scaling.latentsStatistics && mean && std) {
    const plane = latents.shape[2] * latents.shape[3];
    const channels = latents.shape[1];
    return mapFloat32(latents, (v, i) => {
      const c = Math.floor(i / plane) % channels;
      return Math.fround(Math.fround(v * std[c]) / scale) + mean[c];
    });
  }
  if (scaling.shiftFactor) {
    const shift = shiftFactor ?? 0;
    return mapFloat32(latents, (v) => Math.fround(v / scale) + shift);
  }
  return mapFloat32(latents, (v) => v / scale);
}

/** The VAE's latents scaled for the denoiser: the inverse of `unscaleLatents`. */
export function scaleLatents(
  vae: AutoencoderKL,
  latents: HostTensor,
  scaling: LatentsScaling = {},
): HostTensor {
  const { scalingFactor: scale, latentsMean: mean, latentsStd: std, shiftFactor } = vae.config;
  if (scaling.latentsStatistics && mean && std) {
    const plane = latents.shape[2] * latents.shape[3];
    const channels = latents.shape[1];
    return mapFloat32(latents, (v, i) => {
      const c = Math.floor(i / plane) % channels;
      return Math.fround(Math.fround(v - mean[c]) * scale) / std[c];
    });
  }
  if (scaling.shiftFactor) {
    const shift = shiftFactor ?? 0;
    return mapFloat32(latents, (v) => Math.fround(v - shift) * scale);
  }
  return mapFloat32(latents, (v) => scale * v);
}

/**
 * VAE decode and diffusers' postprocess to [0, 1]: `(x / 2 + 0.5).clamp(0, 1)` in float32.
 * `beforeMapping` sees the decoded image first (PixArt's resolution binning resizes there, since the
 * clamp does not commute with the resize).
 */
export async function decodeImages(
  vae: AutoencoderKL,
  latents: HostTensor,
  options: LatentsScaling & { beforeMapping?: (decoded: HostTensor) => Promise<HostTensor> } = {},
): Promise<HostTensor> {
  const { beforeMapping, ...scaling } = options;
  let decoded = (await vae.decode(unscaleLatents(vae, latents, scaling))).sample;
  if (beforeMapping) decoded = await beforeMapping(decoded);
  return mapFloat32(decoded, (v) => Math.min(1, Math.max(0, Math.fround(Math.fround(v / 2) + 0.5))));
}

/** diffusers' guidance-scale embedding (get_guidance_scale_embedding, VDM's sinusoidal features of w·1000) for LCM UNets. */
export function guidanceScaleEmbedding(w: number, batch: number, dim: number): HostTensor {
  const f = Math.fround;
  const half = Math.floor(dim / 2);
  const scaled = f(f(w) * 1000);
  // torch: log(10000) / (half − 1) in float32, exp(arange · −emb) in float32.
  const step = f(f(Math.log(10000)) / (half - 1));
  const row = new Float32Array(dim);
  for (let k = 0; k < half; k++) {
    const freq = f(Math.exp(f(k * -step)));
    const angle = f(scaled * freq);
    row[k] = f(Math.sin(angle));
    row[half + k] = f(Math.cos(angle));
  }
  const data = new Float32Array(batch * dim);
  for (let b = 0; b < batch; b++) data.set(row, b * dim);
  return hostTensor('float32', [batch, dim], data);
}
