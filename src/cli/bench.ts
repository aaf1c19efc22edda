import type { UNetBenchShape } from '../../bench/random-unet.js';
import type { UNetLoopVariant } from '../../bench/unet-loop.js';
import { OptionError } from '../errors.js';
import { quantizeFlag, quantizeOption } from './acceleration-flags.js';
import type { FlagSpec, ParsedArgs } from './args.js';
import { parseArgs, usage } from './args.js';
import { sessionFlagOptions, sessionFlags } from './runtime-flags.js';

const COMMON: Record<string, FlagSpec> = {
  threads: { type: 'integer', description: 'ORT intra-op threads, 0 = one per physical core', default: 0 },
  json: { type: 'boolean', description: 'print the result as one JSON object on the last line' },
  help: { type: 'boolean', description: 'show this help' },
};

const ENGINE_FLAGS: Record<string, FlagSpec> = {
  m: { type: 'integer', description: 'rows of the activation', default: 1024 },
  k: { type: 'integer', description: 'width of each square weight', default: 1024 },
  layers: { type: 'integer', description: 'MatMuls in the chain', default: 8 },
  reps: { type: 'integer', description: 'timed runs per variant', default: 15 },
  ...COMMON,
};

const DIT_FLAGS: Record<string, FlagSpec> = {
  tokens: {
    type: 'string',
    description: 'image tokens (square numbers), comma-separated',
    default: '256,1024,4096',
  },
  layers: { type: 'integer', description: 'transformer blocks', default: 2 },
  batch: { type: 'integer', description: 'batch size', default: 1 },
  reps: { type: 'integer', description: 'timed runs per size', default: 5 },
  ...COMMON,
};

const ATTENTION_FLAGS: Record<string, FlagSpec> = {
  tokens: {
    type: 'string',
    description: 'image tokens (square numbers), comma-separated',
    default: '16384',
  },
  scope: {
    type: 'string',
    description: 'what to time: layer (projections included), kernel (attention alone) or both',
    default: 'both',
  },
  reps: { type: 'integer', description: 'timed runs per case (at most 3 from 16K tokens on)', default: 3 },
  'max-full-tokens': {
    type: 'integer',
    description: 'skip full attention above this many tokens (its cost is N²)',
    default: 16384,
  },
  'max-down-tokens': {
    type: 'integer',
    description: 'skip CLEAR with d = 4 above this many tokens (its pooled part is N²/16)',
    default: 16384,
  },
  isolate: { type: 'boolean', description: 'run each case in its own process (its own peak RSS)' },
  warmups: { type: 'integer', description: 'untimed runs per case before the timed ones', default: 2 },
  'keep-denormals': {
    type: 'boolean',
    description: 'run with flushDenormals: false (to measure what flushing saves)',
  },
  ...COMMON,
};

const TGATE_FLAGS: Record<string, FlagSpec> = {
  tokens: {
    type: 'integer',
    description: 'image tokens (a square number): 1024 = 512×512 px',
    default: 1024,
  },
  layers: {
    type: 'integer',
    description: 'transformer blocks of the random PixArt-α-width model',
    default: 2,
  },
  reps: { type: 'integer', description: 'timed runs per variant, after one warm-up run', default: 1 },
  v2: { type: 'boolean', description: 'also run T-GATE V2 (gate 15, sp 3, warm-up 2)' },
  ...COMMON,
};

const TRAIN_FLAGS: Record<string, FlagSpec> = {
  batch: { type: 'integer', description: 'micro-batch of the text-to-image step', default: 32 },
  'vae-batch': { type: 'integer', description: 'micro-batch of the VAE step', default: 8 },
  reps: { type: 'integer', description: 'timed updates per model, after two untimed', default: 3 },
  vocab: {
    type: 'integer',
    description: "text encoder's vocabulary (the trainer's tokenizer size)",
    default: 4000,
  },
  'text-length': { type: 'integer', description: 'caption tokens', default: 32 },
  inline: {
    type: 'boolean',
    description: 'run ORT in the calling thread, not in a worker as `velodiff train` does',
  },
  ...COMMON,
};

/** The random SD 1.5-width UNet's shape (bench/random-unet.ts), shared by `bench unet` and `bench unet-loop`. */
const UNET_SHAPE_FLAGS: Record<string, FlagSpec> = {
  levels: { type: 'integer', description: "SD 1.5's levels kept, from the top (1–4)", default: 4 },
  'layers-per-block': { type: 'integer', description: 'resnets per down level (SD 1.5: 2)', default: 2 },
  channels: {
    type: 'string',
    description: 'block_out_channels before --levels truncates them',
    default: '320,640,1280,1280',
  },
  heads: { type: 'integer', description: 'attention_head_dim (SD 1.x: the number of heads)', default: 8 },
  'cross-attention-dim': {
    type: 'integer',
    description: 'text embedding width (CLIP ViT-L: 768)',
    default: 768,
  },
  'norm-groups': { type: 'integer', description: 'norm_num_groups', default: 32 },
};

const UNET_FLAGS: Record<string, FlagSpec> = {
  latent: {
    type: 'string',
    description: 'latent sizes HxW, comma-separated; 64x64 = 512×512 px (npm run bench adds 128x128)',
    default: '64x64',
  },
  ...UNET_SHAPE_FLAGS,
  reps: { type: 'integer', description: 'timed steps per size, after the warm-up', default: 3 },
  warmups: { type: 'integer', description: 'untimed steps per size before the timed ones', default: 1 },
  ...sessionFlags,
  ...COMMON,
};

const UNET_LOOP_FLAGS: Record<string, FlagSpec> = {
  latent: {
    type: 'string',
    description: 'latent size HxW; 32x32 = 256×256 px (SD 1.5 generates at 64x64)',
    default: '32x32',
  },
  steps: { type: 'integer', description: 'DDIM steps of every loop', default: 25 },
  gate: { type: 'integer', description: "T-GATE's gate step (the authors' SD setting: 10)", default: 10 },
  'cache-interval': {
    type: 'integer',
    description: "DeepCache's full-step interval N (the authors' setting with T-GATE: 3)",
    default: 3,
  },
  variants: {
    type: 'string',
    description:
      'variants besides plain (always run, first): tgate, deepcache, tgate+deepcache, comma-separated',
    default: 'tgate,deepcache,tgate+deepcache',
  },
  'cache-branch': {
    type: 'integer',
    description: "DeepCache's cache_branch_id (0: only the outermost layers recompute)",
    default: 0,
  },
  ...UNET_SHAPE_FLAGS,
  reps: {
    type: 'integer',
    description: 'repetitions: per variant an untimed loop (compiling) and a timed one, on a fresh runtime',
    default: 1,
  },
  ...sessionFlags,
  ...COMMON,
};

const QUANT_FLAGS: Record<string, FlagSpec> = {
  tokens: {
    type: 'string',
    description:
      "the denoiser's image tokens (square numbers; patch 2: 1024 = a 64×64 latent = 512×512 px), comma-separated",
    default: '256,1024,4096',
  },
  layers: { type: 'integer', description: 'transformer blocks of the denoiser (PixArt-α: 28)', default: 28 },
  't5-layers': {
    type: 'integer',
    description:
      'the T5-XXL-shaped encoder is loaded at 1 and this many layers (≥ 2; 2 layers write 2.1 GB) and its RSS fitted per layer to 24; 0 skips it',
    default: 2,
  },
  only: { type: 'string', description: 'run one part: denoiser (a), t5 (b) or images (c)' },
  'image-seeds': {
    type: 'integer',
    description: "(c) seeds per prompt for the shipped model's int8-vs-fp32 images (PSNR, SSIM); 0 skips it",
    default: 2,
  },
  'image-model': { type: 'string', description: '(c) a PixArt pipeline folder instead of the shipped model' },
  reps: { type: 'integer', description: 'timed runs per variant and size', default: 3 },
  warmups: {
    type: 'integer',
    description: 'untimed runs per variant and size first (the first compiles the session)',
    default: 1,
  },
  tiny: {
    type: 'boolean',
    description: 'tiny widths (denoiser 48, encoder 64): the same code paths in seconds, for tests',
  },
  ...COMMON,
};

const SPINNING_FLAGS: Record<string, FlagSpec> = {
  model: { type: 'string', description: 'a PixArt pipeline folder (default: the shipped emoji model)' },
  prompt: { type: 'string', description: 'the prompt of every generation', default: 'red heart' },
  steps: { type: 'integer', description: 'denoising steps per generation', default: 20 },
  reps: { type: 'integer', description: 'timed generations per variant', default: 5 },
  warmups: { type: 'integer', description: 'untimed generations per variant first', default: 1 },
  ...COMMON,
};

function squareTokens(value: string, command: string): number[] {
  const tokens = value.split(',').map((t) => Number(t.trim()));
  for (const t of tokens) {
    const side = Math.round(Math.sqrt(t));
    if (!Number.isInteger(t) || t < 1 || side * side !== t) {
      throw new OptionError(
        `${command}: --tokens must be square numbers (a square token grid), got "${value}"`,
      );
    }
  }
  return tokens;
}

/**
 * A bench command's flags, or undefined after printing its help. With --json the tables go to
 * stderr (`log`), so the last line of stdout is the JSON object alone.
 */
function benchFlags(
  argv: string[],
  specs: Record<string, FlagSpec>,
  command: string,
  summary: string,
): { flags: Record<string, unknown>; json: boolean; log: (s: string) => void } | undefined {
  const { flags } = parseArgs(argv, specs, command);
  if (flags.help) {
    console.log(usage(`${command} [options]`, summary, specs));
    return undefined;
  }
  const json = flags.json === true;
  return { flags, json, log: json ? (s) => console.error(s) : (s) => console.log(s) };
}

function positive(flags: Record<string, unknown>, keys: string[], command: string): void {
  for (const key of keys) {
    if ((flags[key] as number) < 1) throw new OptionError(`${command}: --${key} must be ≥ 1`);
  }
  if ((flags.threads as number) < 0) throw new OptionError(`${command}: --threads must be ≥ 0`);
}

export async function benchCommand(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === 'engine') return benchEngineCommand(rest);
  if (name === 'dit') return benchDitCommand(rest);
  if (name === 'attention') return benchAttentionCommand(rest);
  if (name === 'tgate') return benchTgateCommand(rest);
  if (name === 'train') return benchTrainCommand(rest);
  if (name === 'unet') return benchUNetCommand(rest);
  if (name === 'unet-loop') return benchUNetLoopCommand(rest);
  if (name === 'quant') return benchQuantCommand(rest);
  if (name === 'quant-unet') return benchQuantUNetCommand(rest);
  if (name === 'quant-pipeline') return benchQuantPipelineCommand(rest);
  if (name === 'quant-layers') return benchQuantLayersCommand(rest);
  if (name === 'flux-memory') return benchFluxMemoryCommand(rest);
  if (name === 'flux-blocks') return benchFluxBlocksCommand(rest);
  if (name === 'spinning') return benchSpinningCommand(rest);
  if (name === 'students') return benchStudentsCommand(rest);
  throw new OptionError(
    `bench: unknown benchmark "${name ?? ''}"; available: engine, dit, attention, tgate, train, unet, unet-loop, quant, quant-unet, quant-pipeline, quant-layers, flux-memory, flux-blocks, spinning, students`,
  );
}

// The benchmark code lives in bench/ and ships in the package build.

async function benchEngineCommand(argv: string[]): Promise<number> {
  const parsed = benchFlags(
    argv,
    ENGINE_FLAGS,
    'bench engine',
    'IR vs hand-written ONNX MatMul chain, per-run overhead, GFLOP/s.',
  );
  if (!parsed) return 0;
  const { flags, json, log } = parsed;
  positive(flags, ['m', 'k', 'layers', 'reps'], 'bench engine');
  const { benchEngine } = await import('../../bench/engine.js');
  const result = await benchEngine(
    {
      m: flags.m as number,
      k: flags.k as number,
      layers: flags.layers as number,
      reps: flags.reps as number,
      threads: flags.threads as number,
    },
    log,
  );
  if (json) console.log(JSON.stringify(result));
  return 0;
}

async function benchDitCommand(argv: string[]): Promise<number> {
  const parsed = benchFlags(
    argv,
    DIT_FLAGS,
    'bench dit',
    'PixArt-α-width denoiser forward vs MatMul throughput.',
  );
  if (!parsed) return 0;
  const { flags, json, log } = parsed;
  positive(flags, ['layers', 'batch', 'reps'], 'bench dit');
  const tokens = squareTokens(String(flags.tokens), 'bench dit');
  const { benchDit } = await import('../../bench/dit.js');
  const rows = await benchDit(
    {
      tokens,
      layers: flags.layers as number,
      batch: flags.batch as number,
      reps: flags.reps as number,
      threads: flags.threads as number,
    },
    log,
  );
  if (json) {
    // One size: the object itself, as the contract says; several: the last line lists them all.
    console.log(JSON.stringify(rows.length === 1 ? rows[0] : rows));
  }
  return 0;
}

async function benchAttentionCommand(argv: string[]): Promise<number> {
  const parsed = benchFlags(
    argv,
    ATTENTION_FLAGS,
    'bench attention',
    'One PixArt-α-width self-attention layer and its kernel: full vs CLEAR r = 8/16/32 (d = 1, 4) vs LinFusion.',
  );
  if (!parsed) return 0;
  const { flags, json, log } = parsed;
  positive(flags, ['reps', 'max-full-tokens', 'max-down-tokens'], 'bench attention');
  if ((flags.warmups as number) < 0) throw new OptionError('bench attention: --warmups must be ≥ 0');
  const tokens = squareTokens(String(flags.tokens), 'bench attention');
  const scope = String(flags.scope);
  if (!['layer', 'kernel', 'both'].includes(scope)) {
    throw new OptionError(`bench attention: --scope must be layer, kernel or both, got "${scope}"`);
  }
  const { attentionJson, benchAttention } = await import('../../bench/attention.js');
  const rows = await benchAttention(
    {
      tokens,
      maxFullTokens: flags['max-full-tokens'] as number,
      maxDownTokens: flags['max-down-tokens'] as number,
      reps: flags.reps as number,
      threads: flags.threads as number,
      scopes: scope === 'both' ? ['layer', 'kernel'] : [scope as 'layer' | 'kernel'],
      isolate: flags.isolate === true,
      warmups: flags.warmups as number,
      flushDenormals: flags['keep-denormals'] !== true,
    },
    log,
  );
  if (json) {
    const out = tokens.map((t) => attentionJson(rows, t));
    console.log(JSON.stringify(out.length === 1 ? out[0] : out));
  }
  return 0;
}

async function benchTgateCommand(argv: string[]): Promise<number> {
  const parsed = benchFlags(
    argv,
    TGATE_FLAGS,
    'bench tgate',
    "T-GATE at the authors' PixArt setting (25 steps, gate 8, DPM-Solver++, CFG 4.5) vs the plain loop.",
  );
  if (!parsed) return 0;
  const { flags, json, log } = parsed;
  positive(flags, ['layers', 'reps'], 'bench tgate');
  squareTokens(String(flags.tokens), 'bench tgate');
  const { benchPipeline, tgateJson } = await import('../../bench/pipeline.js');
  const options = {
    tokens: flags.tokens as number,
    layers: flags.layers as number,
    reps: flags.reps as number,
    threads: flags.threads as number,
    variants: flags.v2 === true ? ['tgate-v1' as const, 'tgate-v2' as const] : ['tgate-v1' as const],
  };
  const rows = await benchPipeline(options, log);
  if (json) console.log(JSON.stringify(tgateJson(rows, options)));
  return 0;
}

async function benchTrainCommand(argv: string[]): Promise<number> {
  const parsed = benchFlags(
    argv,
    TRAIN_FLAGS,
    'bench train',
    'Training throughput of the text-to-image and VAE steps (samples/s, GFLOP/s) vs fp32 MatMul GFLOP/s.',
  );
  if (!parsed) return 0;
  const { flags, json, log } = parsed;
  positive(flags, ['batch', 'vae-batch', 'reps', 'vocab', 'text-length'], 'bench train');
  const { benchTrain } = await import('../../bench/train.js');
  const result = await benchTrain(
    {
      batch: flags.batch as number,
      vaeBatch: flags['vae-batch'] as number,
      reps: flags.reps as number,
      threads: flags.threads as number,
      vocab: flags.vocab as number,
      textLength: flags['text-length'] as number,
      inline: flags.inline === true,
    },
    log,
  );
  if (json) {
    const { samples_per_s, gflops, matmul_gflops, fraction, ...rest } = result;
    // The contract's four keys first; the VAE's and each row's figures after them.
    console.log(JSON.stringify({ samples_per_s, gflops, matmul_gflops, fraction, ...rest }));
  }
  return 0;
}

async function benchUNetCommand(argv: string[]): Promise<number> {
  const parsed = benchFlags(
    argv,
    UNET_FLAGS,
    'bench unet',
    'One SD 1.5-width UNet2DConditionModel step (batch 2 as CFG runs it, 77 text tokens, random weights) vs MatMul and Conv throughput.',
  );
  if (!parsed) return 0;
  const { flags, json, log } = parsed;
  positive(flags, ['reps'], 'bench unet');
  if ((flags.warmups as number) < 0) throw new OptionError('bench unet: --warmups must be ≥ 0');
  const shape = unetShape(flags, 'bench unet');
  const session = sessionFlagOptions(flags, 'bench unet');
  const { parseLatents, benchUNet } = await import('../../bench/unet.js');
  const latents = parseLatents(String(flags.latent));
  if (!latents)
    throw new OptionError(
      `bench unet: --latent must be sizes HxW (e.g. 64x64,128x128), got "${String(flags.latent)}"`,
    );
  const result = await benchUNet(
    {
      shape,
      latents,
      reps: flags.reps as number,
      warmups: flags.warmups as number,
      threads: flags.threads as number,
      ...session,
    },
    log,
  );
  if (json) {
    const [first] = result.rows;
    const { latent, ms, gflops, matmul_gflops, fraction, ...rest } = first;
    // The contract's five keys first, for the first latent size; every size's row after them.
    console.log(
      JSON.stringify({
        latent,
        ms,
        gflops,
        matmul_gflops,
        fraction,
        ...rest,
        levels: flags.levels,
        layers_per_block: flags['layers-per-block'],
        parameters: result.parameters,
        optimization_level: result.optimization_level,
        disable_prepacking: result.disable_prepacking,
        rows: result.rows,
      }),
    );
  }
  return 0;
}

/** The random UNet's shape from UNET_SHAPE_FLAGS (bench/random-unet.ts checks levels and groups). */
function unetShape(flags: Record<string, unknown>, command: string): UNetBenchShape {
  positive(flags, ['levels', 'layers-per-block', 'heads', 'cross-attention-dim', 'norm-groups'], command);
  const channels = String(flags.channels)
    .split(',')
    .map((c) => Number(c.trim()));
  if (!channels.every((c) => Number.isInteger(c) && c >= 1))
    throw new OptionError(
      `${command}: --channels must be positive integers, got "${String(flags.channels)}"`,
    );
  return {
    levels: flags.levels as number,
    layersPerBlock: flags['layers-per-block'] as number,
    blockOutChannels: channels,
    attentionHeadDim: flags.heads as number,
    crossAttentionDim: flags['cross-attention-dim'] as number,
    normNumGroups: flags['norm-groups'] as number,
  };
}

async function benchUNetLoopCommand(argv: string[]): Promise<number> {
  const command = 'bench unet-loop';
  const parsed = benchFlags(
    argv,
    UNET_LOOP_FLAGS,
    command,
    'The SD 1.5 sampling loop (DDIM, 25 steps, CFG 7.5, random prompt embeddings, latent output) on an SD 1.5-width UNet: plain vs T-GATE, DeepCache and both, ms and the speed-up their FLOPs predict. ' +
      "Memory: each step graph is an ORT session; the plain graph and DeepCache's own steps hold their own copy of the UNet's weights as ORT lays them out (3.6 GB at the full SD 1.5 width), T-GATE's graphs read a float32 checkpoint in place (private: anonymous memory; RSS counts the mapped checkpoint once per session).",
  );
  if (!parsed) return 0;
  const { flags, json, log } = parsed;
  positive(flags, ['steps', 'gate', 'cache-interval', 'reps'], command);
  if ((flags['cache-branch'] as number) < 0) throw new OptionError(`${command}: --cache-branch must be ≥ 0`);
  const { UNET_LOOP_VARIANTS } = await import('../../bench/unet-loop.js');
  const variants = String(flags.variants)
    .split(',')
    .map((v) => v.trim())
    .filter((v) => v !== '' && v !== 'plain');
  const unknown = variants.filter((v) => !(UNET_LOOP_VARIANTS as readonly string[]).includes(v));
  if (unknown.length > 0)
    throw new OptionError(
      `${command}: --variants: unknown ${unknown.map((v) => `"${v}"`).join(', ')}; expected some of tgate, deepcache, tgate+deepcache`,
    );
  if ((flags.gate as number) > (flags.steps as number)) {
    throw new OptionError(
      `${command}: --gate ${String(flags.gate)} is past the last of --steps ${String(flags.steps)}: T-GATE would never reuse its cache`,
    );
  }
  const shape = unetShape(flags, command);
  const session = sessionFlagOptions(flags, command);
  const { parseLatents } = await import('../../bench/unet.js');
  const latents = parseLatents(String(flags.latent));
  if (!latents || latents.length !== 1)
    throw new OptionError(
      `${command}: --latent must be one size HxW (e.g. 32x32), got "${String(flags.latent)}"`,
    );
  const { benchUNetLoop } = await import('../../bench/unet-loop.js');
  const result = await benchUNetLoop(
    {
      shape,
      latent: latents[0],
      steps: flags.steps as number,
      gateStep: flags.gate as number,
      cacheInterval: flags['cache-interval'] as number,
      cacheBranchId: flags['cache-branch'] as number,
      variants: variants as UNetLoopVariant[],
      reps: flags.reps as number,
      threads: flags.threads as number,
      ...session,
    },
    log,
  );
  if (json) console.log(JSON.stringify(result));
  return 0;
}

const QUANT_UNET_FLAGS: Record<string, FlagSpec> = {
  latent: { type: 'string', description: 'latent size HxW; 64x64 = 512×512 px', default: '64x64' },
  ...UNET_SHAPE_FLAGS,
  reps: { type: 'integer', description: 'timed runs of each variant, after the warm-up', default: 3 },
  warmups: { type: 'integer', description: 'untimed runs of each variant before the timed ones', default: 1 },
  ...COMMON,
};

async function benchQuantUNetCommand(argv: string[]): Promise<number> {
  const command = 'bench quant-unet';
  const parsed = benchFlags(
    argv,
    QUANT_UNET_FLAGS,
    command,
    "int8 on an SD 1.5-width UNet (random weights). (a) Per level, a resnet's 3×3 convolution in float32 (ORT Conv), " +
      "as int8Conv2d (kernel taps as MatMulInteger) and as ORT's ConvInteger (uint8 weights): ms, speed-up, relative L2. " +
      "(b) One step (batch 2, 77 text tokens) loaded in float32, with quantize: 'int8' on the Linears only, and with " +
      "quantize: 'int8' as it is (Linears and 3×3 convolutions), in one process, runs rotating: median ms, speed-up, relative L2.",
  );
  if (!parsed) return 0;
  const { flags, json, log } = parsed;
  positive(flags, ['reps'], command);
  if ((flags.warmups as number) < 0) throw new OptionError(`${command}: --warmups must be ≥ 0`);
  const shape = unetShape(flags, command);
  const { parseLatents } = await import('../../bench/unet.js');
  const latents = parseLatents(String(flags.latent));
  if (!latents || latents.length !== 1)
    throw new OptionError(
      `${command}: --latent must be one size HxW (e.g. 64x64), got "${String(flags.latent)}"`,
    );
  const { benchQuantUNet } = await import('../../bench/quant-unet.js');
  const result = await benchQuantUNet(
    {
      shape,
      latent: latents[0],
      reps: flags.reps as number,
      warmups: flags.warmups as number,
      threads: flags.threads as number,
    },
    log,
  );
  if (json) {
    const int8 = result.steps.find((r) => r.variant === 'int8');
    const linears = result.steps.find((r) => r.variant === 'int8 linears');
    console.log(
      JSON.stringify({
        latent: result.latent,
        fp32_ms: result.steps[0].ms,
        int8_ms: int8?.ms,
        speedup: int8?.speedup,
        linears_only_speedup: linears?.speedup,
        rel_l2: int8?.rel_l2,
        convs: result.convs,
        steps: result.steps,
        parameters: result.parameters,
        private_mb: result.private_mb,
      }),
    );
  }
  return 0;
}

const QUANT_PIPELINE_FLAGS: Record<string, FlagSpec> = {
  size: {
    type: 'integer',
    description: 'image side in pixels (512: 64×64 latents, 1024 tokens)',
    default: 512,
  },
  steps: { type: 'integer', description: 'denoising steps', default: 20 },
  layers: { type: 'integer', description: 'transformer blocks (PixArt-α: 28)', default: 28 },
  't5-layers': {
    type: 'integer',
    description: 'T5-XXL-shaped encoder layers in the folder (24 is the real one: 19 GB in fp32)',
    default: 3,
  },
  tiny: { type: 'boolean', description: 'tiny widths (tests)' },
  ...COMMON,
};

async function benchQuantPipelineCommand(argv: string[]): Promise<number> {
  const command = 'bench quant-pipeline';
  const parsed = benchFlags(
    argv,
    QUANT_PIPELINE_FLAGS,
    command,
    "A whole PixArt-α-sized generation (random weights: 28-layer 1152-wide transformer, T5-XXL-shaped encoder of --t5-layers layers, SD-sized VAE) in float32 and with quantize: 'int8', each in a process of its own: " +
      'load and generation times, the steady step, peak RSS (VmHWM) measured and extrapolated to 24 encoder layers, and the PSNR of the int8 image against the float32 one.',
  );
  if (!parsed) return 0;
  const { flags, json, log } = parsed;
  positive(flags, ['size', 'steps', 'layers', 't5-layers'], command);
  if ((flags.size as number) % 8 !== 0)
    throw new OptionError(
      `${command}: --size must be a multiple of 8 (the VAE's factor), got ${String(flags.size)}`,
    );
  const { benchQuantPipeline } = await import('../../bench/quant-pipeline.js');
  const result = await benchQuantPipeline(
    {
      size: flags.size as number,
      steps: flags.steps as number,
      layers: flags.layers as number,
      t5Layers: flags['t5-layers'] as number,
      threads: flags.threads as number,
      tiny: flags.tiny === true,
    },
    log,
  );
  if (json) console.log(JSON.stringify(result));
  return 0;
}

const FLUX_MEMORY_FLAGS: Record<string, FlagSpec> = {
  double: {
    type: 'integer',
    description: 'double-stream blocks of the random folder, default 2 (FLUX.1-dev: 19); also run at half',
  },
  single: {
    type: 'integer',
    description: 'single-stream blocks of the random folder, default 4 (FLUX.1-dev: 38); also run at half',
  },
  tokens: {
    type: 'integer',
    description: 'packed image tokens of the step (4096: 1024×1024 px)',
    default: 4096,
  },
  text: { type: 'integer', description: 'text tokens of the step (FLUX.1-dev: 512)', default: 512 },
  quantize: { type: 'string', description: 'int8: quantize the Linear layers at load (default: float32)' },
  dir: {
    type: 'string',
    description:
      'measure this FluxTransformer2DModel folder (a download, or one written before) instead of a random one',
  },
  heads: { type: 'integer', description: 'attention heads of the random folder', default: 24 },
  'head-dim': {
    type: 'integer',
    description: 'head width of the random folder (a multiple of 32)',
    default: 128,
  },
  ...COMMON,
};

async function benchFluxMemoryCommand(argv: string[]): Promise<number> {
  const command = 'bench flux-memory';
  const parsed = benchFlags(
    argv,
    FLUX_MEMORY_FLAGS,
    command,
    'Host memory of a FLUX.1-dev-shaped transformer (random bf16 weights, FLUX.1-dev widths, --double + --single blocks; or --dir) loaded in float32 or with --quantize int8, and one step at --tokens + --text tokens: ' +
      'load, compile and step times and peak RSS (VmHWM), at the folder’s blocks and at half of them, each in a process of its own, ' +
      'fitted per block (by the weights the sessions hold) and extrapolated to 19 + 38 blocks.',
  );
  if (!parsed) return 0;
  const { flags, json, log } = parsed;
  positive(flags, ['tokens', 'text', 'heads', 'head-dim'], command);
  if (flags.dir !== undefined && (flags.double !== undefined || flags.single !== undefined)) {
    throw new OptionError(
      `${command}: --dir measures that folder's own blocks; leave out --double and --single`,
    );
  }
  const double = (flags.double as number | undefined) ?? 2;
  const single = (flags.single as number | undefined) ?? 4;
  if (double < 1 || single < 1) {
    throw new OptionError(
      `${command}: --double and --single must be ≥ 1: the growth of each kind of block is measured on its first block`,
    );
  }
  if (flags.quantize !== undefined && flags.quantize !== 'int8') {
    throw new OptionError(
      `${command}: --quantize must be int8 (or absent, for float32), got ${JSON.stringify(flags.quantize)}`,
    );
  }
  const { benchFluxMemory } = await import('../../bench/flux-memory.js');
  const result = await benchFluxMemory(
    {
      double,
      single,
      tokens: flags.tokens as number,
      text: flags.text as number,
      quantize: flags.quantize === 'int8',
      threads: flags.threads as number,
      heads: flags.heads as number,
      headDim: flags['head-dim'] as number,
      ...(flags.dir === undefined ? {} : { dir: String(flags.dir) }),
    },
    log,
  );
  if (json) console.log(JSON.stringify(result));
  return 0;
}

const FLUX_BLOCKS_FLAGS: Record<string, FlagSpec> = {
  tokens: {
    type: 'string',
    description:
      'packed image tokens, square numbers, comma-separated (4096 = 1024×1024 px, 16384 = 2048×2048)',
    default: '4096,16384',
  },
  text: { type: 'integer', description: 'text tokens (FLUX.1-dev: 512)', default: 512 },
  variants: {
    type: 'string',
    description: 'full, clear:R or clear:R:D, comma-separated (full is the baseline and required)',
    default: 'full,clear:8,clear:8:4,clear:16,clear:16:4,clear:32,clear:32:4',
  },
  scope: {
    type: 'string',
    description: 'pair (the double + single block forward), kernel (the attention product alone) or both',
    default: 'both',
  },
  reps: { type: 'integer', description: 'timed runs per case', default: 2 },
  warmups: { type: 'integer', description: 'untimed runs per case first', default: 1 },
  heads: { type: 'integer', description: 'attention heads (FLUX.1: 24)', default: 24 },
  'head-dim': { type: 'integer', description: 'head width, a multiple of 32 (FLUX.1: 128)', default: 128 },
  results: {
    type: 'string',
    description:
      'a JSON-lines file: each finished case is appended to it, and a later run with the same file reuses them (a failed case, e.g. killed for memory, is recorded as such)',
  },
  ...COMMON,
};

async function benchFluxBlocksCommand(argv: string[]): Promise<number> {
  const command = 'bench flux-blocks';
  const parsed = benchFlags(
    argv,
    FLUX_BLOCKS_FLAGS,
    command,
    'One FLUX.1-width double + single block pair (random weights) and its attention kernel alone at --tokens image + --text text tokens: ' +
      'full attention vs CLEAR per radius, with and without pooled keys/values; ms, GFLOP as lowered, the rate as a fraction of the ' +
      'fp32 MatMul rate measured in the same process, and for the kernel the useful (kept-score) rate. Each case runs in a process of its own.',
  );
  if (!parsed) return 0;
  const { flags, json, log } = parsed;
  positive(flags, ['text', 'reps', 'heads', 'head-dim'], command);
  if ((flags.warmups as number) < 0) throw new OptionError(`${command}: --warmups must be ≥ 0`);
  const scope = String(flags.scope);
  if (!['pair', 'kernel', 'both'].includes(scope)) {
    throw new OptionError(`${command}: --scope must be pair, kernel or both, got "${scope}"`);
  }
  const { benchFluxBlocks, gridSide, parseFluxVariant } = await import('../../bench/flux-blocks.js');
  const tokens = String(flags.tokens)
    .split(',')
    .map((t) => Number(t.trim()));
  for (const t of tokens) gridSide(t, command);
  const variants = String(flags.variants)
    .split(',')
    .map((v) => parseFluxVariant(v.trim(), command));
  const headDim = flags['head-dim'] as number;
  if (headDim % 32 !== 0) {
    throw new OptionError(
      `${command}: --head-dim must be a multiple of 32 (FLUX.1 splits a head 16 + 56 + 56 of 128 for RoPE), got ${headDim}`,
    );
  }
  const result = await benchFluxBlocks(
    {
      tokens,
      text: flags.text as number,
      variants,
      scopes: scope === 'both' ? ['pair', 'kernel'] : [scope as 'pair' | 'kernel'],
      reps: flags.reps as number,
      warmups: flags.warmups as number,
      threads: flags.threads as number,
      heads: flags.heads as number,
      headDim,
      ...(flags.results === undefined ? {} : { results: String(flags.results) }),
    },
    log,
    `npx velodiff ${command} ${argv.join(' ')}`.trim(),
  );
  if (json) console.log(JSON.stringify(result));
  return 0;
}

const QUANT_LAYERS_FLAGS: Record<string, FlagSpec> = {
  model: { type: 'string', description: 'a PixArt pipeline folder (default: the shipped model)' },
  'max-length': { type: 'integer', description: 'tokens per prompt', default: 32 },
  worst: { type: 'integer', description: 'modules left float in the "all but the worst" figure', default: 3 },
  ...COMMON,
};

async function benchQuantLayersCommand(argv: string[]): Promise<number> {
  const command = 'bench quant-layers';
  const parsed = benchFlags(
    argv,
    QUANT_LAYERS_FLAGS,
    command,
    "int8 error one layer at a time on a trained PixArt pipeline (default: the shipped model): the transformer's noise predictions and the T5 encoder's last hidden state with every selected Linear int8, with each alone int8, and with all but the worst few; per module kind.",
  );
  if (!parsed) return 0;
  const { flags, json, log } = parsed;
  positive(flags, ['max-length', 'worst'], command);
  const { benchQuantLayers } = await import('../../bench/quant-layers.js');
  const result = await benchQuantLayers(
    {
      ...(flags.model === undefined ? {} : { model: String(flags.model) }),
      maxLength: flags['max-length'] as number,
      worst: flags.worst as number,
      threads: flags.threads as number,
    },
    log,
  );
  if (json) console.log(JSON.stringify(result));
  return 0;
}

async function benchQuantCommand(argv: string[]): Promise<number> {
  const command = 'bench quant';
  const parsed = benchFlags(
    argv,
    QUANT_FLAGS,
    command,
    "int8 at load (quantize: 'int8', ORT's DynamicQuantizeMatMul) vs float32. (a) The PixArt-α-width denoiser " +
      '(random weights, batch 2 as CFG runs it, 120 caption tokens), both loaded in one process, runs alternating: ' +
      'median ms, speed-up, GFLOP/s, and the relative L2 error of the int8 output. (b) Peak RSS of loading a ' +
      'T5-XXL-shaped encoder (d_model 4096, d_ff 10240, 64 × 64 heads) and encoding 120 tokens, fp32 and int8, each ' +
      'in a process of its own, at 1 and --t5-layers layers, fitted per layer and extrapolated to 24. ' +
      'cpu_int8 says which int8 units the CPU has (amx, vnni or none, from /proc/cpuinfo).',
  );
  if (!parsed) return 0;
  const { flags, json, log } = parsed;
  positive(flags, ['layers', 'reps'], command);
  if ((flags.warmups as number) < 0) throw new OptionError(`${command}: --warmups must be ≥ 0`);
  const t5Layers = flags['t5-layers'] as number;
  if (t5Layers < 0 || t5Layers === 1) {
    throw new OptionError(
      `${command}: --t5-layers must be 0 (skip the encoder) or ≥ 2 (1 and N layers give the per-layer fit), got ${t5Layers}`,
    );
  }
  const only = flags.only as string | undefined;
  if (only !== undefined && only !== 'denoiser' && only !== 't5' && only !== 'images')
    throw new OptionError(`${command}: --only must be denoiser, t5 or images, got "${only}"`);
  const imageSeeds = flags['image-seeds'] as number;
  if (imageSeeds < 0) throw new OptionError(`${command}: --image-seeds must be ≥ 0`);
  if (only === 'images' && imageSeeds === 0)
    throw new OptionError(`${command}: --only images with --image-seeds 0 runs nothing`);
  if (only === 't5' && t5Layers === 0)
    throw new OptionError(`${command}: --only t5 with --t5-layers 0 runs nothing`);
  const tokens = only === 't5' || only === 'images' ? [] : squareTokens(String(flags.tokens), command);
  const { benchQuant, quantJson } = await import('../../bench/quant.js');
  const result = await benchQuant(
    {
      tokens,
      layers: flags.layers as number,
      t5Layers: only === 'denoiser' || only === 'images' ? 0 : t5Layers,
      imageSeeds: only === undefined || only === 'images' ? imageSeeds : 0,
      ...(flags['image-model'] === undefined ? {} : { imageModel: String(flags['image-model']) }),
      reps: flags.reps as number,
      warmups: flags.warmups as number,
      threads: flags.threads as number,
      tiny: flags.tiny === true,
    },
    log,
  );
  if (json) console.log(JSON.stringify(quantJson(result)));
  return 0;
}

async function benchSpinningCommand(argv: string[]): Promise<number> {
  const command = 'bench spinning';
  const parsed = benchFlags(
    argv,
    SPINNING_FLAGS,
    command,
    "ORT intra-op spinning (RuntimeOptions.allowSpinning) on vs off over whole generations (text encoder, denoiser steps, VAE: one ORT session after another in the runtime's worker thread), both pipelines loaded, runs alternating: median ms and CPU ms per image.",
  );
  if (!parsed) return 0;
  const { flags, json, log } = parsed;
  positive(flags, ['steps', 'reps'], command);
  if ((flags.warmups as number) < 0) throw new OptionError(`${command}: --warmups must be ≥ 0`);
  const { benchSpinning } = await import('../../bench/spinning.js');
  const result = await benchSpinning(
    {
      ...(flags.model === undefined ? {} : { model: String(flags.model) }),
      prompt: String(flags.prompt),
      steps: flags.steps as number,
      reps: flags.reps as number,
      warmups: flags.warmups as number,
      threads: flags.threads as number,
    },
    log,
  );
  if (json) {
    const [on, off] = result.rows;
    console.log(
      JSON.stringify({
        spinning_ms: on.ms,
        no_spinning_ms: off.ms,
        speedup: result.speedup,
        spinning_cpu_ms: on.cpu_ms,
        no_spinning_cpu_ms: off.cpu_ms,
        same_image: result.same_image,
        sessions: result.sessions,
        steps: flags.steps,
        model: result.model,
        command: result.command,
      }),
    );
  }
  return 0;
}

const STUDENTS_FLAGS: Record<string, FlagSpec> = {
  model: { type: 'string', description: 'the teacher (default: the shipped models/emoji/)' },
  students: {
    type: 'string',
    description: "its students' folder (default: the shipped models/emoji-students/)",
  },
  classifier: { type: 'string', description: 'the emoji classifier (default: the shipped one)' },
  samples: { type: 'integer', description: 'held-out prompts per row (one image each)', default: 64 },
  seed: { type: 'integer', description: 'seed of image 0; image i uses seed + i', default: 0 },
  batch: { type: 'integer', description: 'images per generation call', default: 8 },
  rows: {
    type: 'string',
    description:
      'comma-separated row ids (teacher always runs): tgate, teacher-4, clear:R[:D], clear:R[:D]+tgate, linfusion, linfusion+tgate, flash, flash-2, flash+tgate; default all the students allow',
  },
  grid: { type: 'string', description: 'PNG of the rows side by side (first prompts)' },
  'grid-images': { type: 'integer', description: 'images per row in --grid (the first prompts)', default: 8 },
  size: {
    type: 'integer',
    description: "image side in pixels, a multiple of the model's (2×, 4×: zero-shot high resolution)",
  },
  highres: {
    type: 'number',
    description:
      "with --size: CLEAR's staged recipe at this SDEdit strength (0.7 in CLEAR's notebook) instead of zero-shot: a base image at the model's size with full attention, upscaled and refined with the row's attention",
  },
  ...quantizeFlag,
  results: {
    type: 'string',
    description:
      'a results file (JSON lines): rows already measured with the same size, recipe, prompts and models are reused, new ones added',
  },
  predict: {
    type: 'boolean',
    description:
      'only the speed-ups predicted from FLOPs (every run prints them first); nothing is generated',
  },
  ...COMMON,
};

async function benchStudentsCommand(argv: string[]): Promise<number> {
  const parsed = benchFlags(
    argv,
    STUDENTS_FLAGS,
    'bench students',
    "The speed-quality table: the teacher (25 steps, CFG) against T-GATE and its distilled students on eval's held-out prompts: FED, category alignment, PSNR and SSIM against the teacher's image of the same seed, ms/image, and the speed-up measured and predicted from FLOPs.",
  );
  if (!parsed) return 0;
  const { flags, json, log } = parsed;
  positive(flags, ['samples', 'batch', 'grid-images'], 'bench students');
  if (flags.highres !== undefined) {
    const strength = flags.highres as number;
    if (flags.size === undefined) {
      throw new OptionError(
        "bench students: --highres needs --size, the side of the refined image (a multiple ≥ 2 of the model's)",
      );
    }
    if (!(strength > 0 && strength <= 1)) {
      throw new OptionError(`bench students: --highres is an SDEdit strength in (0, 1], got ${strength}`);
    }
  }
  const quantize = quantizeOption(flags as ParsedArgs['flags'], 'bench students');
  const { shippedModelDir, shippedStudentsDir } = await import('../pipelines/shipped-model.js');
  const { shippedClassifierDir } = await import('../train/eval/shipped-classifier.js');
  const { Runtime } = await import('../runtime/runtime.js');
  const { benchStudents } = await import('../../bench/students.js');
  const { renderSampleGrid } = await import('../train/sample-grid.js');
  const { writeFileAtomic } = await import('../io/atomic.js');
  const { resolve } = await import('node:path');
  const runtime = new Runtime({ threads: flags.threads as number });
  try {
    const result = await benchStudents(
      {
        model: resolve(flags.model === undefined ? shippedModelDir() : String(flags.model)),
        students: resolve(flags.students === undefined ? shippedStudentsDir() : String(flags.students)),
        classifier: resolve(
          flags.classifier === undefined ? shippedClassifierDir() : String(flags.classifier),
        ),
        runtime,
        samples: flags.samples as number,
        seed: flags.seed as number,
        batch: flags.batch as number,
        gridImages: flags['grid-images'] as number,
        ...(flags.size !== undefined ? { size: flags.size as number } : {}),
        ...(flags.highres !== undefined ? { highres: { strength: flags.highres as number } } : {}),
        ...(flags.predict === true ? { predictOnly: true } : {}),
        ...(quantize ? { quantize } : {}),
        ...(flags.results !== undefined ? { results: resolve(String(flags.results)) } : {}),
        ...(flags.rows !== undefined
          ? {
              rows: String(flags.rows)
                .split(',')
                .map((r) => r.trim())
                .filter((r) => r !== ''),
            }
          : {}),
      },
      log,
    );
    if (flags.grid !== undefined) {
      await writeFileAtomic(String(flags.grid), await renderSampleGrid(result.grid));
      log(`wrote ${String(flags.grid)}`);
    }
    if (json) {
      console.log(
        JSON.stringify({
          rows: result.rows,
          predictions: result.predictions,
          skipped: result.skipped,
          size: result.size,
          recipe: flags.highres === undefined ? 'zero-shot' : { staged: { strength: flags.highres } },
          quantize: flags.quantize ?? null,
        }),
      );
    }
  } finally {
    await runtime.dispose();
  }
  return 0;
}
