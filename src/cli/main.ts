import { VelodiffError } from '../errors.js';
import { benchCommand } from './bench.js';

const HELP = `velodiff — fast text-to-image diffusion on ONNX Runtime

usage: velodiff <command> [options]

commands:
  bench engine     engine benchmark: IR vs hand-written ONNX MatMul chain, per-run overhead, GFLOP/s
  bench dit        PixArt-α-width denoiser forward: ms, GFLOP/s, fraction of MatMul throughput
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
