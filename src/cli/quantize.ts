import { OptionError } from '../errors.js';
import type { QuantizeFolderResult } from '../models/quantize-folder.js';
import { INT8_MODEL_CLASSES, quantizeFolder } from '../models/quantize-folder.js';
import { Runtime } from '../runtime/runtime.js';
import type { FlagSpec } from './args.js';
import { parseArgs, usage } from './args.js';
import { ProgressLine, progressBar } from './progress.js';

const FLAGS: Record<string, FlagSpec> = {
  out: { type: 'string', description: 'the folder to write; must not exist or be empty' },
  help: { type: 'boolean', description: 'show this help' },
};

const SUMMARY = `Writes a copy of a diffusers pipeline folder (model_index.json) or model folder (config.json) in
velodiff's int8 format: in every ${[...INT8_MODEL_CLASSES].join(', ')}, the Linear layers that
--quantize int8 makes int8 at load are stored as int8 weights with one float32 scale per output
channel (<module>.weight I8 + <module>.weight_scale F32), and config.json gets a
"quantization_config" listing them. Every other tensor and file is copied as it is; the VAE stays
float32. velodiff loads the result as int8 with no option; diffusers and transformers refuse its quantization_config.`;

export async function quantizeCommand(argv: string[]): Promise<number> {
  const { positional, flags } = parseArgs(argv, FLAGS, 'quantize');
  if (flags.help) {
    console.log(usage('quantize DIR --out DIR2', SUMMARY, FLAGS));
    return 0;
  }
  if (positional.length !== 1) {
    throw new OptionError(
      `quantize: give exactly one folder to quantize, got ${positional.length}: velodiff quantize DIR --out DIR2`,
    );
  }
  if (flags.out === undefined) throw new OptionError('quantize: --out DIR2 is required (a new folder)');
  const progress = new ProgressLine();
  const runtime = new Runtime({ worker: false });
  let result: QuantizeFolderResult;
  let shown = '';
  try {
    result = await quantizeFolder(positional[0], String(flags.out), {
      runtime,
      onWarning: (warning) => progress.note(`warning: ${warning.message}`),
      onProgress: ({ component, stage, done, total }) => {
        // A line per twentieth of the tensors: a log of a large model stays short.
        const line = `quantize: ${component || 'model'}: ${stage === 'load' ? 'loading' : `writing ${progressBar(Math.floor((20 * done) / total) / 20)}`}`;
        if (line !== shown) progress.update(line);
        shown = line;
      },
    });
  } finally {
    progress.done();
    await runtime.dispose();
  }
  console.log(report(result));
  return 0;
}

function megabytes(bytes: number): string {
  return `${(bytes / 1e6).toFixed(1)} MB`;
}

/** What was done to each component, and the folder's size before and after. */
function report(result: QuantizeFolderResult): string {
  const rows = result.components.map((c) => {
    const what =
      c.status === 'quantized'
        ? `int8: ${c.int8Modules} Linear modules`
        : c.status === 'int8'
          ? `already int8 (${c.int8Modules} Linear modules), copied`
          : 'float32, copied';
    return [c.name || '.', c.className, what, `${megabytes(c.bytesBefore)} → ${megabytes(c.bytesAfter)}`];
  });
  const widths = [0, 1, 2].map((i) => Math.max(...rows.map((r) => r[i].length)));
  return [
    `wrote ${result.out}${result.pipeline ? ` (${result.pipeline})` : ''} from ${result.dir}`,
    ...rows.map((r) => `  ${r.map((cell, i) => (i < 3 ? cell.padEnd(widths[i]) : cell)).join('  ')}`),
    `  folder: ${megabytes(result.bytesBefore)} → ${megabytes(result.bytesAfter)}`,
  ].join('\n');
}
