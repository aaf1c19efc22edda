/**
 * Image-to-image (SDEdit: Meng et al. 2022, "SDEdit: Guided Image Synthesis and Editing with
 * Stochastic Differential Equations", §3): the image is encoded by the VAE, noised to the level of the
 * timestep `strength` of the way down the schedule, and denoised from there. The steps follow
 * diffusers' StableDiffusionImg2ImgPipeline: `preprocess`, `get_timesteps`, `prepare_latents` with
 * `retrieve_latents(sample_mode='sample')` and `scheduler.add_noise`. Every velodiff pipeline runs it
 * through its `image` and `strength` options; CLEAR's staged high-resolution recipe builds on it.
 */
import { OptionError } from '../errors.js';
import type { AutoencoderKL } from '../models/autoencoder-kl.js';
import type { NoiseGenerator } from '../random/torch-generator.js';
import type { HostTensor } from '../runtime/host-tensor.js';
import { hostTensor } from '../runtime/host-tensor.js';
import type { Scheduler } from '../schedulers/scheduler.js';
import { asFloat, concatBatch, fromScheduler, mapFloat32, repeatBatch, schedulerTensor } from './batch.js';
import { scaleLatents } from './denoise.js';

/** The options image-to-image adds to a pipeline's run. */
export interface ImageToImageOptions {
  /**
   * The image to start from, [B, 3, H, W] float32 (or [3, H, W]) as diffusers' VaeImageProcessor
   * takes a tensor: values in [0, 1], mapped to [-1, 1] for the VAE; a tensor with any value below 0
   * is taken as already in [-1, 1]. H and W must be multiples of the VAE factor; they set the output
   * size. A tensor with the VAE's latent channel count is taken as (scaled) latents and not encoded.
   * B is 1, the number of prompts (each image repeated numImagesPerPrompt times), or prompts × images.
   * `readImageFile` (io/image.ts) reads a PNG or JPEG file into this form.
   */
  image?: HostTensor;
  /**
   * How much of the schedule to run from the noised image, in (0, 1]: int(steps · strength) steps are
   * run (diffusers' default 0.8 for StableDiffusionImg2ImgPipeline, 0.3 for the SDXL one). 1 starts
   * from the top of the schedule (pure noise only where the schedule reaches zero SNR).
   */
  strength?: number;
  /** The noise `add_noise` mixes in, shaped as the latents; drawn from the generator when absent. */
  noise?: HostTensor;
}

/**
 * diffusers' `get_timesteps`: the tail of the schedule that `strength` runs, and the index it starts
 * at. `initTimestep` says where diffusers truncates: 'int' (SD 1.x/2.x, SDXL, the default) runs
 * int(steps · strength) steps; 'float' (SD3, FLUX) starts at int(steps − steps · strength), which
 * runs one step more when steps · strength is not a whole number.
 */
export function strengthTimesteps(
  scheduler: Scheduler,
  numInferenceSteps: number,
  strength: number,
  options: { initTimestep?: 'int' | 'float' } = {},
): { timesteps: number[]; tStart: number } {
  checkStrength(strength);
  const scaled = numInferenceSteps * strength;
  const initTimestep = Math.min(
    options.initTimestep === 'float' ? scaled : Math.trunc(scaled),
    numInferenceSteps,
  );
  const tStart = Math.trunc(Math.max(numInferenceSteps - initTimestep, 0));
  const begin = tStart * scheduler.order;
  const timesteps = scheduler.timesteps.slice(begin);
  if (timesteps.length === 0) {
    throw new OptionError(
      `strength ${strength} × ${numInferenceSteps} steps leaves no step to run (int(steps · strength) = 0); ` +
        `raise strength or numInferenceSteps to at least ${Math.ceil(1 / strength)}`,
    );
  }
  // Schedulers with a step index (Euler, DPM-Solver, LCM, flow matching) start it here, as diffusers does.
  const indexed = scheduler as Scheduler & { setBeginIndex?: (index: number) => void };
  if (typeof indexed.setBeginIndex === 'function') indexed.setBeginIndex(begin);
  return { timesteps, tStart };
}

/** SDEdit's strength is a fraction of the schedule in (0, 1]; `name` says which option held it. */
export function checkStrength(strength: number, name = 'strength'): void {
  if (!(strength > 0 && strength <= 1)) {
    throw new OptionError(`${name} must be a number in (0, 1], got ${strength}`);
  }
}

/**
 * The image as the VAE takes it ([B, C, H, W] in [-1, 1]) following diffusers' VaeImageProcessor for
 * tensors: [0, 1] values mapped by 2x − 1, values already below 0 kept; latent-channel tensors kept as
 * latents (`isLatent`). Checks the size against the VAE factor.
 */
export function preprocessImage(
  image: HostTensor,
  vae: { vaeScaleFactor: number; latentChannels: number; imageChannels: number },
): { tensor: HostTensor; isLatent: boolean } {
  let t = asFloat(image);
  if (t.shape.length === 3) t = hostTensor('float32', [1, ...t.shape], t.data);
  if (t.shape.length !== 4) {
    throw new OptionError(`image: expected [B, 3, H, W] or [3, H, W], got [${image.shape.join(', ')}]`);
  }
  const [, channels, h, w] = t.shape;
  if (channels === vae.latentChannels && channels !== vae.imageChannels) return { tensor: t, isLatent: true };
  if (channels !== vae.imageChannels) {
    throw new OptionError(
      `image: expected ${vae.imageChannels} channels (or ${vae.latentChannels} for latents), got [${image.shape.join(', ')}]`,
    );
  }
  const f = vae.vaeScaleFactor;
  if (h % f !== 0 || w % f !== 0) {
    throw new OptionError(
      `image: height and width must be multiples of the VAE factor ${f}, got ${h}×${w}; crop or resize it to ${h - (h % f)}×${w - (w % f)}`,
    );
  }
  const data = t.data as Float32Array;
  let min = Infinity;
  for (let i = 0; i < data.length; i++) if (data[i] < min) min = data[i];
  if (min < 0) return { tensor: t, isLatent: false };
  return { tensor: mapFloat32(t, (v) => Math.fround(2 * v) - 1), isLatent: false };
}

/**
 * diffusers' img2img `prepare_latents`: the image encoded (a sample of the posterior drawn with the
 * generator, `retrieve_latents` with sample_mode 'sample'), scaled, repeated to the batch, and noised
 * by `scheduler.addNoise` to `timestep` with noise from the generator (or `noise`).
 */
export async function imageLatents(o: {
  vae: AutoencoderKL;
  image: HostTensor;
  /** Prompts × images per prompt. */
  batch: number;
  numImagesPerPrompt: number;
  generator: NoiseGenerator;
  scheduler: Scheduler;
  timestep: number;
  noise?: HostTensor;
  /** SDXL: scale with the VAE's latents_mean / latents_std where it has them. */
  latentsStatistics?: boolean;
  /** SD3 / FLUX: subtract the VAE's shift_factor before scaling. */
  shiftFactor?: boolean;
}): Promise<HostTensor> {
  const { vae } = o;
  const { tensor, isLatent } = preprocessImage(o.image, {
    vaeScaleFactor: vae.vaeScaleFactor,
    latentChannels: vae.config.latentChannels,
    imageChannels: vae.config.inChannels,
  });
  let init: HostTensor;
  if (isLatent) {
    init = tensor;
  } else {
    const posterior = await vae.encode(tensor);
    const shape = posterior.latentMean.shape;
    // DiagonalGaussianDistribution.sample: mean + std · ε, ε drawn from the generator.
    const eps = o.generator.randn(shape);
    const mean = posterior.latentMean.data as Float32Array;
    const std = posterior.latentStd.data as Float32Array;
    const sample = hostTensor(
      'float32',
      shape,
      mean.map((m, i) => Math.fround(m + Math.fround(std[i] * eps[i]))),
    );
    init = scaleLatents(vae, sample, { latentsStatistics: o.latentsStatistics, shiftFactor: o.shiftFactor });
  }
  init = toBatch(init, o.batch, o.numImagesPerPrompt);
  let noise: Float32Array;
  if (o.noise) {
    if (o.noise.shape.join() !== init.shape.join()) {
      throw new OptionError(
        `noise: expected shape [${init.shape.join(', ')}], got [${o.noise.shape.join(', ')}]`,
      );
    }
    noise = asFloat(o.noise).data as Float32Array;
  } else {
    noise = o.generator.randn(init.shape);
  }
  return fromScheduler(
    o.scheduler.addNoise(schedulerTensor(init), { data: noise, shape: init.shape }, o.timestep),
  );
}

/**
 * Image latents for `batch` = prompts × n: one image for all, one per prompt (repeated n times, so
 * that image i goes with prompt i), or one per output.
 */
function toBatch(init: HostTensor, batch: number, perPrompt: number): HostTensor {
  const images = init.shape[0];
  if (images === batch) return init;
  if (images === 1) return concatBatch(...new Array<HostTensor>(batch).fill(init));
  if (images * perPrompt === batch) return repeatBatch(init, perPrompt);
  throw new OptionError(
    `image: ${images} images for ${batch / perPrompt} prompts × ${perPrompt} images per prompt; give 1, ${batch / perPrompt} or ${batch}`,
  );
}

/** The output size an image sets ([height, width] in pixels), checked against height/width given beside it. */
export function imageHeightWidth(
  image: HostTensor,
  vaeScaleFactor: number,
  o: { height?: number; width?: number },
): [number, number] {
  const [h, w] = image.shape.slice(-2);
  // A latent image is [B, C, h, w] at the latent size.
  const latent = image.shape.length === 4 && image.shape[1] !== 3;
  const size: [number, number] = latent ? [h * vaeScaleFactor, w * vaeScaleFactor] : [h, w];
  for (const [name, given, own] of [
    ['height', o.height, size[0]],
    ['width', o.width, size[1]],
  ] as const) {
    if (given !== undefined && given !== own) {
      throw new OptionError(
        `${name} ${given} differs from the image's ${own}: image-to-image keeps the image's size; resize the image instead`,
      );
    }
  }
  return size;
}
