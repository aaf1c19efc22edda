// `npm run bench [-- NAME …]`: runs the named benchmarks (default: all) and prints their tables.
import { benchDit } from './dit.js';
import { benchAttention } from './attention.js';
import { benchDenoiser } from './denoiser.js';
import { benchEngine } from './engine.js';
import { benchFluxBlocks, FLUX_BLOCK_VARIANTS } from './flux-blocks.js';
import { benchPipeline } from './pipeline.js';
import { benchQuant } from './quant.js';
import { benchSpinning } from './spinning.js';
import { benchTrain } from './train.js';
import { SD15_UNET } from './random-unet.js';
import { benchUNet } from './unet.js';
import { benchUNetLoop } from './unet-loop.js';
import { machineLine } from './stats.js';

const BENCHES: Record<string, () => Promise<unknown>> = {
  engine: () => benchEngine({ m: 1024, k: 1024, layers: 8, reps: 30, threads: 0 }, console.log),
  dit: () => benchDit({ tokens: [256, 1024, 4096], layers: 2, batch: 1, reps: 5, threads: 0 }, console.log),
  attention: () =>
    benchAttention(
      { tokens: [1024, 4096, 16384, 65536], maxFullTokens: 16384, maxDownTokens: 16384, reps: 3, threads: 0 },
      console.log,
    ),
  denoiser: () => benchDenoiser({ tokens: [4096, 16384], layers: 2, reps: 2, threads: 0 }, console.log),
  pipeline: () => benchPipeline({ tokens: 1024, layers: 2, reps: 2, threads: 0 }, console.log),
  train: () =>
    benchTrain(
      { batch: 32, vaeBatch: 8, reps: 3, threads: 0, vocab: 4000, textLength: 32, inline: false },
      console.log,
    ),
  unet: () =>
    benchUNet(
      {
        shape: SD15_UNET,
        latents: [
          [64, 64],
          [128, 128],
        ],
        reps: 3,
        warmups: 1,
        threads: 0,
      },
      console.log,
    ),
  'unet-loop': () =>
    benchUNetLoop(
      {
        // The top two SD 1.5 levels, for time: 25 full-width steps per loop take minutes each.
        shape: { ...SD15_UNET, levels: 2 },
        latent: [32, 32],
        steps: 25,
        gateStep: 10,
        cacheInterval: 3,
        cacheBranchId: 0,
        reps: 1,
        threads: 0,
      },
      console.log,
    ),
  // The full PixArt-α depth: about 12 minutes on the 2-vCPU VM, most of it the 4096-token forwards.
  quant: () =>
    benchQuant(
      {
        tokens: [256, 1024, 4096],
        layers: 28,
        t5Layers: 2,
        reps: 3,
        warmups: 1,
        threads: 0,
        tiny: false,
        imageSeeds: 2,
      },
      console.log,
    ),
  // One FLUX.1-width block pair at 4K and 16K tokens, 7 attention variants, 2 scopes: about 25 minutes.
  'flux-blocks': () =>
    benchFluxBlocks(
      {
        tokens: [4096, 16384],
        text: 512,
        variants: [...FLUX_BLOCK_VARIANTS],
        scopes: ['pair', 'kernel'],
        reps: 2,
        warmups: 1,
        threads: 0,
        heads: 24,
        headDim: 128,
      },
      console.log,
      'npm run bench -- flux-blocks',
    ),
  spinning: () =>
    benchSpinning({ prompt: 'red heart', steps: 20, reps: 5, warmups: 1, threads: 0 }, console.log),
};

const names = process.argv.slice(2).filter((a) => !a.startsWith('-'));
console.log(`# velodiff benchmarks — ${machineLine()}`);
for (const name of names.length ? names : Object.keys(BENCHES)) {
  const run = BENCHES[name];
  if (!run) {
    console.error(`unknown benchmark "${name}"; available: ${Object.keys(BENCHES).join(', ')}`);
    process.exitCode = 2;
    continue;
  }
  console.log(`\n## ${name}\n`);
  await run();
}
