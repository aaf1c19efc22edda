/**
 * `bench quant-pipeline` (issue 11): a whole PixArt-α-sized generation in float32 and with
 * `quantize: 'int8'`, each in a process of its own so that peak memory does not mix. The pipeline
 * folder is random-weight: the 28-layer PixArt-α-width transformer and a T5-XXL-shaped encoder of
 * `t5Layers` layers (the folders of `bench quant`, shared through the cache), an SD-sized
 * AutoencoderKL (block_out_channels 128/256/512/512), the shipped model's tokenizer (its ids are
 * below T5's vocabulary) and scheduler. Per variant: load time and peak RSS, the generation's time
 * split into text encoding + first step, the steady step and the VAE decode, its peak RSS, and the
 * int8 image's PSNR against the float32 one. Peak RSS is extrapolated to T5-XXL's 24 encoder layers
 * by adding each missing layer's stored weights (the per-layer fit of `bench quant` part (b) found
 * 741 MB per float32 layer against 736 MB of weights, and 126 MB per int8 layer against 184 MB).
 */
import {
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  renameSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

import { parseAutoencoderKLConfig } from '../src/models/vae/config.js';
import { buildAutoencoderKLGraph } from '../src/models/autoencoder-kl.js';
import { PixArtPipeline } from '../src/pipelines/index.js';
import { shippedModelDir } from '../src/pipelines/shipped-model.js';
import type { HostTensor } from '../src/runtime/host-tensor.js';
import { Runtime } from '../src/runtime/runtime.js';
import { defaultCacheDir } from '../src/train/data/cache.js';
import { discoverParameterShapes, initParameters } from '../src/train/parameters.js';
import { saveModelFolder } from '../src/train/save-model.js';
import { imagesToRgb } from '../src/io/png.js';
import { psnr } from '../src/train/eval/image-similarity.js';
import {
  cachedFolder,
  checkFreeSpace,
  detectCpuInt8,
  folderKey,
  runCaseInChild,
  t5WeightsPerLayerMb,
} from './quant.js';
import type { PixArtShape } from './random-pixart.js';
import { PIXART_ALPHA_WIDTH, writeRandomPixArt } from './random-pixart.js';
import type { T5Shape } from './random-t5.js';
import { T5_XXL_WIDTH, t5FolderBytes, writeRandomT5 } from './random-t5.js';
import { machineLine, nowMs, peakRssMb, privateMb, resetPeakRss, table } from './stats.js';

/** T5-XXL's encoder depth, which peak memory is extrapolated to. */
const T5_XXL_LAYERS = 24;

/** Stable Diffusion's VAE (the one PixArt-α uses): 83.7 M parameters. */
const SD_VAE_CONFIG = {
  in_channels: 3,
  out_channels: 3,
  down_block_types: Array(4).fill('DownEncoderBlock2D'),
  up_block_types: Array(4).fill('UpDecoderBlock2D'),
  block_out_channels: [128, 256, 512, 512],
  layers_per_block: 2,
  act_fn: 'silu',
  latent_channels: 4,
  norm_num_groups: 32,
  sample_size: 512,
  scaling_factor: 0.18215,
};

/** `--tiny`: the same code paths at widths that run in seconds (tests). */
const TINY = {
  transformer: { heads: 2, headDim: 24, captionChannels: 64, inChannels: 4, patchSize: 2, sampleSize: 16 },
  t5: { dModel: 64, dFf: 128, numHeads: 4, dKv: 16, vocabSize: 32128 },
  vae: {
    ...SD_VAE_CONFIG,
    block_out_channels: [32, 32],
    down_block_types: Array(2).fill('DownEncoderBlock2D'),
    up_block_types: Array(2).fill('UpDecoderBlock2D'),
    layers_per_block: 1,
    norm_num_groups: 8,
  },
};

export interface QuantPipelineBenchOptions {
  /** Image side in pixels (PixArt-α at 512: 64×64 latents, 1024 tokens). */
  size: number;
  steps: number;
  /** Transformer blocks (PixArt-α: 28). */
  layers: number;
  /** T5 encoder layers in the folder (T5-XXL: 24; fewer where disk or memory demands it). */
  t5Layers: number;
  threads: number;
  tiny: boolean;
  cacheDir?: string;
}

/** One variant's load and generation, in a child process. */
interface PipelineCase {
  dir: string;
  quantize: boolean;
  threads: number;
  size: number;
  steps: number;
  /** Where the child writes the image (raw uint8 RGB). */
  output: string;
}

export interface PipelineCaseResult {
  load_ms: number;
  /** VmHWM over the load. */
  load_peak_mb: number;
  /** The whole generation. */
  generate_ms: number;
  /** From the call to the end of the first step: the prompt's encoding, sessions created, one step. */
  encode_and_first_step_ms: number;
  /** The mean step after the first. */
  step_ms: number;
  /** From the last step's end to the image: the VAE decode and the conversion. */
  decode_ms: number;
  /** VmHWM over the generation, after a reset at the end of the load (NaN where it cannot be reset). */
  generate_peak_mb: number;
  /** The larger of the two. */
  peak_rss_mb: number;
  private_mb: number;
  /** The transformer's int8 Linear modules (the encoder's are int8 too, behind the prompt encoder). */
  transformer_int8_modules: number;
}

export interface QuantPipelineRow extends PipelineCaseResult {
  dtype: 'fp32' | 'int8';
  /** peak_rss_mb + (24 − t5Layers) · the stored weights of one T5-XXL layer in this dtype. */
  peak_rss_at_24_mb: number;
}

export interface QuantPipelineResult {
  rows: QuantPipelineRow[];
  speedup: number;
  step_speedup: number;
  psnr_db: number;
  t5_layers: number;
  size: number;
  steps: number;
  cpu_int8: string;
  dir: string;
}

async function runPipelineCase(c: PipelineCase): Promise<PipelineCaseResult> {
  const runtime = new Runtime({ worker: false, threads: c.threads });
  try {
    let start = nowMs();
    const pipe = await PixArtPipeline.fromPretrained(c.dir, {
      runtime,
      quantize: c.quantize ? 'int8' : undefined,
      onWarning: () => {},
    });
    const loadMs = nowMs() - start;
    const loadPeak = peakRssMb();
    const reset = resetPeakRss();
    try {
      const stepEnds: number[] = [];
      start = nowMs();
      const { images } = await pipe.run({
        prompt: 'a red heart, noto style',
        seed: 0,
        numInferenceSteps: c.steps,
        guidanceScale: 4.5,
        height: c.size,
        width: c.size,
        useResolutionBinning: false,
        callbackOnStepEnd: () => {
          stepEnds.push(nowMs());
        },
      });
      const end = nowMs();
      const t = images as HostTensor;
      const [rgb] = imagesToRgb(t.data as Float32Array, t.shape);
      writeFileSync(c.output, rgb);
      const generatePeak = reset ? peakRssMb() : Number.NaN;
      const first = stepEnds[0];
      const last = stepEnds[stepEnds.length - 1];
      return {
        load_ms: loadMs,
        load_peak_mb: loadPeak,
        generate_ms: end - start,
        encode_and_first_step_ms: first - start,
        step_ms: stepEnds.length > 1 ? (last - first) / (stepEnds.length - 1) : Number.NaN,
        decode_ms: end - last,
        generate_peak_mb: generatePeak,
        peak_rss_mb: Math.max(loadPeak, reset ? generatePeak : 0),
        private_mb: privateMb(),
        transformer_int8_modules: pipe.transformer.int8Modules?.size ?? 0,
      };
    } finally {
      await pipe.close();
    }
  } finally {
    await runtime.dispose();
  }
}

function pipelineCaseInChild(c: PipelineCase): Promise<PipelineCaseResult> {
  return runCaseInChild<PipelineCaseResult>(
    fileURLToPath(import.meta.url),
    '--pipeline-case',
    c,
    `bench quant-pipeline: the ${c.quantize ? 'int8' : 'fp32'} generation with ${c.dir} (out of memory? lower --t5-layers)`,
  );
}

/** A random SD-sized AutoencoderKL folder (torch's default init). */
async function writeRandomVae(dir: string, raw: Record<string, unknown>): Promise<void> {
  const config = parseAutoencoderKLConfig({ _class_name: 'AutoencoderKL', ...raw }, 'random VAE config');
  const factor = 2 ** (config.blockOutChannels.length - 1);
  const shapes = discoverParameterShapes((source) => {
    buildAutoencoderKLGraph(config, source, 'encode', [1, config.inChannels, factor, factor]);
    buildAutoencoderKLGraph(config, source, 'decode', [1, config.latentChannels, 1, 1]);
  });
  await saveModelFolder(dir, {
    className: 'AutoencoderKL',
    config: raw,
    params: initParameters(shapes, { seed: 3 }),
    shapes,
  });
}

/**
 * The pipeline folder: model_index.json, symlinks to the cached transformer and encoder folders,
 * a random VAE, and the shipped model's tokenizer and scheduler.
 */
async function pipelineFolder(
  cacheDir: string,
  transformer: PixArtShape,
  t5: T5Shape,
  vae: Record<string, unknown>,
  log: (s: string) => void,
): Promise<string> {
  const dim = transformer.heads * transformer.headDim;
  const parameters = transformer.layers * 16 * dim * dim + (transformer.captionChannels + 8 * dim) * dim;
  const transformerDir = await cachedFolder(
    cacheDir,
    `pixart-alpha-l${transformer.layers}-w${dim}-${folderKey({ shape: transformer, seed: 1, writer: 'random-pixart' })}`,
    4 * parameters,
    (tmp) => writeRandomPixArt(tmp, transformer),
    log,
  );
  const t5Dir = await cachedFolder(
    cacheDir,
    `t5-l${t5.layers}-d${t5.dModel}-${folderKey({ shape: t5, seed: 1, writer: 'random-t5' })}`,
    t5FolderBytes(t5),
    (tmp) => writeRandomT5(tmp, t5),
    log,
  );
  const vaeDir = await cachedFolder(
    cacheDir,
    `vae-${folderKey({ vae, seed: 3, writer: 'random-vae' })}`,
    // About 4 bytes per parameter (SD's VAE: 83.7 M), for the free-space check.
    vae === SD_VAE_CONFIG ? 4 * 84e6 : 4 * 1e6,
    (tmp) => writeRandomVae(tmp, vae),
    log,
  );
  const dir = join(
    cacheDir,
    'bench',
    `pixart-pipeline-${folderKey({ transformerDir, t5Dir, vaeDir, shipped: 'tokenizer+scheduler' })}`,
  );
  if (!existsSync(join(dir, 'model_index.json'))) {
    const temporary = `${dir}.tmp-${process.pid}`;
    rmSync(temporary, { recursive: true, force: true });
    mkdirSync(temporary, { recursive: true });
    for (const [name, target] of [
      ['transformer', transformerDir],
      ['text_encoder', t5Dir],
      ['vae', vaeDir],
    ] as const) {
      symlinkSync(relative(temporary, target), join(temporary, name), 'dir');
    }
    const shipped = shippedModelDir();
    cpSync(join(shipped, 'tokenizer'), join(temporary, 'tokenizer'), { recursive: true });
    cpSync(join(shipped, 'scheduler'), join(temporary, 'scheduler'), { recursive: true });
    cpSync(join(shipped, 'model_index.json'), join(temporary, 'model_index.json'));
    rmSync(dir, { recursive: true, force: true });
    // Renamed into place whole (the symlinks are relative, from the same parent folder).
    renameSync(temporary, dir);
  }
  return dir;
}

export async function benchQuantPipeline(
  o: QuantPipelineBenchOptions,
  log: (s: string) => void,
): Promise<QuantPipelineResult> {
  const cacheDir = o.cacheDir ?? defaultCacheDir();
  const cpu = detectCpuInt8();
  const transformer = { ...(o.tiny ? TINY.transformer : PIXART_ALPHA_WIDTH), layers: o.layers };
  const t5Width = o.tiny ? TINY.t5 : T5_XXL_WIDTH;
  const dir = await pipelineFolder(
    cacheDir,
    transformer,
    { ...t5Width, layers: o.t5Layers },
    o.tiny ? TINY.vae : SD_VAE_CONFIG,
    log,
  );
  checkFreeSpace(
    tmpdir(),
    4 * 1e9 * (o.tiny ? 0 : 1),
    'quantizing the pipeline at load (its int8 weights go to a temporary file)',
  );
  log(
    `PixArt-α-sized pipeline, ${o.layers} transformer layers, T5 encoder of ${o.t5Layers} layers (d_model ${t5Width.dModel}), ` +
      `${o.size}×${o.size} px, ${o.steps} steps, CFG 4.5; each variant in a process of its own; ${machineLine()}; ` +
      `CPU int8 units: ${cpu.kind}; load average ${loadavg()
        .map((l) => l.toFixed(2))
        .join(' ')}`,
  );
  const outputs = mkdtempSync(join(tmpdir(), 'velodiff-quant-pipeline-'));
  const rows: QuantPipelineRow[] = [];
  const images = new Map<string, Uint8Array>();
  const perLayer = t5WeightsPerLayerMb(t5Width);
  try {
    for (const quantize of [false, true]) {
      const dtype = quantize ? 'int8' : 'fp32';
      const output = join(outputs, `${dtype}.rgb`);
      const result = await pipelineCaseInChild({
        dir,
        quantize,
        threads: o.threads,
        size: o.size,
        steps: o.steps,
        output,
      });
      images.set(dtype, new Uint8Array(readFileSync(output)));
      rows.push({
        dtype,
        ...result,
        peak_rss_at_24_mb: result.peak_rss_mb + (T5_XXL_LAYERS - o.t5Layers) * perLayer[dtype],
      });
      log(
        `  ${dtype}: generation ${(result.generate_ms / 1e3).toFixed(1)} s, peak RSS ${result.peak_rss_mb.toFixed(0)} MB`,
      );
    }
  } finally {
    rmSync(outputs, { recursive: true, force: true });
  }
  const [fp32, int8] = rows;
  const rgb = (data: Uint8Array) => ({ width: o.size, height: o.size, data });
  const psnrDb = psnr(rgb(images.get('int8') as Uint8Array), rgb(images.get('fp32') as Uint8Array));
  log(
    table(
      [
        'dtype',
        'load s',
        'load peak MB',
        'encode+1st step s',
        'step ms',
        'decode s',
        'generation s',
        'peak MB',
        `peak at ${T5_XXL_LAYERS} T5 layers MB`,
        'transformer int8',
      ],
      rows.map((r) => [
        r.dtype,
        r.load_ms / 1e3,
        r.load_peak_mb,
        r.encode_and_first_step_ms / 1e3,
        r.step_ms,
        r.decode_ms / 1e3,
        r.generate_ms / 1e3,
        r.peak_rss_mb,
        r.peak_rss_at_24_mb,
        String(r.transformer_int8_modules),
      ]),
    ),
  );
  log(
    `speed-up ${(fp32.generate_ms / int8.generate_ms).toFixed(2)}× per generation, ${(fp32.step_ms / int8.step_ms).toFixed(2)}× per step; ` +
      `int8 image vs fp32: PSNR ${psnrDb.toFixed(1)} dB`,
  );
  return {
    rows,
    speedup: fp32.generate_ms / int8.generate_ms,
    step_speedup: fp32.step_ms / int8.step_ms,
    psnr_db: psnrDb,
    t5_layers: o.t5Layers,
    size: o.size,
    steps: o.steps,
    cpu_int8: cpu.kind,
    dir,
  };
}

// Child-process entry: one variant's load and generation, printed as JSON.
if (process.argv[2] === '--pipeline-case' && process.argv[1] === fileURLToPath(import.meta.url)) {
  console.log(JSON.stringify(await runPipelineCase(JSON.parse(process.argv[3]) as PipelineCase)));
}
