import { FileFormatError, WeightError } from '../errors.js';
import { describeJson, isPlainObject } from './json.js';

// velodiff's int8 format, in a diffusers folder: each quantized Linear keeps its name and shape,
// `<module>.weight` stored as I8 [out, in] with `<module>.weight_scale` F32 [out] beside it
// (w ≈ scale[o]·q[o, i], symmetric, per output channel); every other tensor is unchanged. The
// component's config.json says so in `quantization_config`, which also lists the modules, so a
// loader can check the file against it. The config has no `quant_method` on purpose: diffusers
// (DiffusersAutoQuantizer.from_dict) and transformers 5 (AutoHfQuantizer.supports_quant_method)
// both raise "The model's quantization config from the arguments has no `quant_method` attribute"
// for it, where an unknown quant_method would only make transformers warn and load the int8
// numbers as floats. A velodiff without int8 support rejects the I8 weights.

/** `quantization_config.velodiff_format` of velodiff's int8 format. */
export const INT8_FORMAT = 'int8';

export interface Int8QuantizationConfig {
  velodiff_format: typeof INT8_FORMAT;
  weights: 'int8, symmetric, one scale per output channel (<module>.weight_scale)';
  activations: 'uint8, dynamic, one scale and zero point per tensor, computed at run time';
  /** The Linear modules stored as int8, sorted. */
  modules: string[];
}

export function int8QuantizationConfig(modules: Iterable<string>): Int8QuantizationConfig {
  return {
    velodiff_format: INT8_FORMAT,
    weights: 'int8, symmetric, one scale per output channel (<module>.weight_scale)',
    activations: 'uint8, dynamic, one scale and zero point per tensor, computed at run time',
    modules: [...modules].sort(),
  };
}

/**
 * The int8 modules a config's `quantization_config` lists, or undefined when it has none. Any other
 * quantization (a `quant_method`: bitsandbytes, GGUF, torchao …) is an error: its weights need
 * kernels velodiff does not have.
 */
export function parseQuantizationConfig(value: unknown, path: string): ReadonlySet<string> | undefined {
  if (value === undefined || value === null) return undefined;
  const fail = (what: string): never => {
    throw new FileFormatError(`${path}: "quantization_config" ${what}`, 'CONFIG_UNSUPPORTED', path);
  };
  if (!isPlainObject(value)) return fail(`is ${describeJson(value)}; expected an object`);
  if (value.velodiff_format !== INT8_FORMAT) {
    const method =
      value.quant_method === undefined ? '' : ` has quant_method ${describeJson(value.quant_method)};`;
    return fail(
      `is ${describeJson(value)};${method} velodiff loads float checkpoints and its own int8 format ` +
        `(velodiff_format "${INT8_FORMAT}", written by \`velodiff quantize\`); other quantized weights need kernels velodiff does not have`,
    );
  }
  const modules = value.modules;
  if (!Array.isArray(modules) || !modules.every((m) => typeof m === 'string'))
    return fail(`"modules" is ${describeJson(modules)}; expected the list of int8 module names`);
  return new Set(modules as string[]);
}

/**
 * Symmetric per-row int8 quantization of a [rows, cols] float matrix: scale[r] = max|w[r, ·]| / 127,
 * q = round(w / scale) in [-127, 127] (-128 unused, so that q and -q both exist). An all-zero row
 * gets scale 1 and zeros. A NaN or infinity is an error naming the tensor and its place.
 */
export function quantizeInt8Rows(
  w: Float32Array,
  rows: number,
  cols: number,
  name: string,
): { q: Int8Array; scale: Float32Array } {
  if (w.length !== rows * cols)
    throw new WeightError(`tensor '${name}': ${w.length} values for [${rows}, ${cols}]`, 'WEIGHT_SHAPE');
  const q = new Int8Array(rows * cols);
  const scale = new Float32Array(rows);
  for (let r = 0; r < rows; r++) {
    const base = r * cols;
    let max = 0;
    for (let c = 0; c < cols; c++) {
      const v = w[base + c];
      if (!Number.isFinite(v)) {
        throw new WeightError(
          `tensor '${name}' holds ${String(v)} at [${r}, ${c}]; a weight with NaN or infinity cannot be quantized`,
          'WEIGHT_VALUE',
        );
      }
      max = Math.max(max, Math.abs(v));
    }
    const s = max > 0 ? Math.fround(max / 127) : 1;
    scale[r] = s;
    for (let c = 0; c < cols; c++) q[base + c] = Math.max(-127, Math.min(127, Math.round(w[base + c] / s)));
  }
  return { q, scale };
}
