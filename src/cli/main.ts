import { VelodiffError } from '../errors.js';
import { benchCommand } from './bench.js';
import { distillCommand } from './distill.js';
import { evalCommand } from './eval.js';
import { forwardCommand } from './forward.js';
import { generateCommand } from './generate.js';
import { inspectCommand } from './inspect.js';
import { quantizeCommand } from './quantize.js';
import { trainCommand } from './train.js';

const HELP = `velodiff — fast text-to-image diffusion on ONNX Runtime

usage: velodiff <command> [options]

commands:
  generate         text to image: velodiff generate "red heart" (the shipped emoji model, or --model DIR)
  train            train a VAE, the text-to-image model or the emoji classifier: --config FILE
  distill clear    a CLEAR student of the shipped model (or --teacher DIR): --radius R [--down-factor D]
  eval             FED, prompt alignment and ms/image of a text-to-image model on held-out emoji
  forward          one forward call of a model folder on safetensors inputs (parity checks with Python)
  inspect          class, parameter count, dtypes and size of a model or pipeline folder
  quantize         copy a model or pipeline folder with int8 Linear weights: velodiff quantize DIR --out DIR2
  bench engine     engine benchmark: IR vs hand-written ONNX MatMul chain, per-run overhead, GFLOP/s
  bench dit        PixArt-α-width denoiser forward: ms, GFLOP/s, fraction of MatMul throughput
  bench attention  one attention layer and kernel: full vs CLEAR vs LinFusion, ms, FLOPs, GFLOP/s
  bench tgate      T-GATE at the authors' PixArt setting (25 steps, gate 8) vs the plain loop
  bench train      training throughput of the text-to-image and VAE steps: samples/s, GFLOP/s vs MatMul
  bench unet       one SD 1.5-width UNet step (batch 2, 77 tokens): ms, FLOPs, GFLOP/s vs MatMul and Conv
  bench unet-loop  SD 1.5-width UNet sampling loops: plain vs T-GATE, DeepCache and both, with FLOP ceilings
  bench quant      int8 vs float32: PixArt-α-width denoiser ms and error, T5-XXL-shaped encoder peak RSS
  bench spinning   ORT intra-op spinning on vs off over whole generations of the shipped model
  help             this text

Run "velodiff <command> --help" for a command's options.`;

/** Entry point of the `velodiff` command; returns the exit code. */
export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  try {
    switch (command) {
      case undefined:
      case 'help':
      case '--help':
      case '-h':
        console.log(HELP);
        return 0;
      case '--version':
        console.log('0.1.0');
        return 0;
      case 'bench':
        return await benchCommand(rest);
      case 'forward':
        return await forwardCommand(rest);
      case 'inspect':
        return await inspectCommand(rest);
      case 'quantize':
        return await quantizeCommand(rest);
      case 'generate':
        return await generateCommand(rest);
      case 'eval':
        return await evalCommand(rest);
      case 'train':
        return await trainCommand(rest);
      case 'distill':
        return await distillCommand(rest);
      default:
        console.error(`velodiff: unknown command "${command}"\n\n${HELP}`);
        return 2;
    }
  } catch (e) {
    if (e instanceof VelodiffError) {
      console.error(`velodiff: ${e.message}`);
      return e.name === 'OptionError' ? 2 : 1;
    }
    throw e;
  }
}
