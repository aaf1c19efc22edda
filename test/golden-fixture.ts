/**
 * One golden case of test/golden/{models,pipelines,text_encoders}/<case>/: its meta.json, the float32
 * outputs diffusers/transformers recorded (outputs.safetensors) and the same run in float64
 * (outputs_f64.safetensors). `check` holds velodiff to 10× torch's own fp32 rounding noise for that
 * output (meta.json `fp32_vs_fp64.<output>.max_abs`), measured against both.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';

import { SafetensorsFile } from '../src/io/safetensors.js';
import { assertMaxAbsError, goldenBound, type Fp32Noise } from './compare.js';

/** The part of meta.json the comparisons read. */
export interface GoldenMeta {
  readonly fp32_vs_fp64?: Readonly<Record<string, Fp32Noise>>;
  /** Pipelines: the fp32-vs-fp64 max |difference| of the latents after each step. */
  readonly fp32_vs_fp64_per_step_max_abs?: readonly number[];
}

/** What one output's check measured. */
export interface GoldenCheck {
  readonly what: string;
  /** Torch's fp32-vs-fp64 max |difference| for the output, from meta.json. */
  readonly noise: number;
  readonly errorVsFp32: number;
  readonly errorVsFp64: number;
  readonly bound: number;
}

export interface CheckOptions {
  /** Compare item `index` along the output's first axis (a pipeline's per-step latents). */
  readonly index?: number;
  /** Overrides 10× the recorded noise; the caller states the measured figure and why beside it. */
  readonly bound?: number;
  /** A different bound against the fp64 outputs (a float64 reference can meet a far tighter one). */
  readonly boundVsFp64?: number;
  readonly what?: string;
}

interface Float64Tensor {
  readonly shape: readonly number[];
  readonly values: Float64Array;
}

/** Every floating tensor of a safetensors file, as float64 (F32 widened exactly). */
async function readFloat64Tensors(path: string): Promise<Map<string, Float64Tensor>> {
  const file = await SafetensorsFile.open(path);
  try {
    const tensors = new Map<string, Float64Tensor>();
    for (const name of file.names()) {
      const { dtype, shape } = file.info(name);
      if (dtype === 'F64') {
        const bytes = await file.readBytes(name);
        const values = new Float64Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 8);
        tensors.set(name, { shape, values });
      } else if (dtype === 'F32') {
        tensors.set(name, { shape, values: Float64Array.from(await file.readFloat32(name)) });
      }
    }
    return tensors;
  } finally {
    await file.close();
  }
}

export class GoldenFixture<Meta extends GoldenMeta = GoldenMeta> {
  private constructor(
    readonly dir: string,
    readonly meta: Meta,
    private readonly fp32: Map<string, Float64Tensor>,
    private readonly fp64: Map<string, Float64Tensor>,
  ) {}

  static async load<Meta extends GoldenMeta = GoldenMeta>(dir: string): Promise<GoldenFixture<Meta>> {
    const [metaText, fp32, fp64] = await Promise.all([
      readFile(join(dir, 'meta.json'), 'utf8'),
      readFloat64Tensors(join(dir, 'outputs.safetensors')),
      readFloat64Tensors(join(dir, 'outputs_f64.safetensors')),
    ]);
    return new GoldenFixture(dir, JSON.parse(metaText) as Meta, fp32, fp64);
  }

  /** The recorded outputs' names (float ones). */
  outputs(): string[] {
    return [...this.fp32.keys()].sort();
  }

  /** The recorded shape of `output`. */
  shape(output: string): number[] {
    const tensor = this.fp32.get(output);
    assert.ok(tensor !== undefined, `${this.dir}/outputs.safetensors has no ${output}`);
    return [...tensor.shape];
  }

  /**
   * Asserts max |ours − golden fp32| ≤ bound and max |ours − golden fp64| ≤ bound, the bound being
   * 10× torch's fp32-vs-fp64 noise for `output` unless `options` says otherwise: velodiff is then as
   * close to diffusers' fp32 run as to the float64 truth, within 10× of torch's own rounding.
   */
  check(output: string, ours: ArrayLike<number>, options: CheckOptions = {}): GoldenCheck {
    const what = options.what ?? output;
    const bound = options.bound ?? goldenBound(this.meta, output);
    const noise = this.meta.fp32_vs_fp64?.[output]?.max_abs ?? Number.NaN;
    const fp32 = this.item(this.fp32, output, options.index, 'outputs.safetensors');
    const fp64 = this.item(this.fp64, output, options.index, 'outputs_f64.safetensors');
    const errorVsFp32 = assertMaxAbsError(ours, fp32, bound, `${what} vs fp32 golden`).maxAbsError;
    const boundVsFp64 = options.boundVsFp64 ?? bound;
    const errorVsFp64 = assertMaxAbsError(ours, fp64, boundVsFp64, `${what} vs fp64 golden`).maxAbsError;
    return { what, noise, errorVsFp32, errorVsFp64, bound };
  }

  private item(
    tensors: Map<string, Float64Tensor>,
    output: string,
    index: number | undefined,
    file: string,
  ): Float64Array {
    const tensor = tensors.get(output);
    assert.ok(tensor !== undefined, `${this.dir}/${file} has no ${output}`);
    if (index === undefined) return tensor.values;
    const count = tensor.shape[0];
    assert.ok(Number.isInteger(index) && index >= 0 && index < count, `${output}[${index}] of ${count}`);
    const size = tensor.values.length / count;
    return tensor.values.subarray(index * size, (index + 1) * size);
  }
}

/** One line for a test's diagnostics: the figures a README table quotes. */
export function describeCheck(check: GoldenCheck): string {
  const e = (x: number): string => x.toExponential(2);
  return (
    `${check.what}: max |ours − fp32 golden| ${e(check.errorVsFp32)}, |ours − fp64| ` +
    `${e(check.errorVsFp64)}, torch fp32 noise ${e(check.noise)}, bound ${e(check.bound)}`
  );
}
