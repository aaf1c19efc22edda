/**
 * The weights a run starts from (`init.pipeline`, `init.student`): a model file the trainers wrote,
 * read back as float32 and held to exactly the tensors the run trains.
 */
import { WeightError } from '../errors.js';
import { formatShape } from '../graph/shape.js';
import type { SafetensorsDtype } from '../io/dtypes.js';
import { WeightStore } from '../io/diffusers.js';
import { listNames } from '../warnings.js';

/** Float dtypes the trainers' writers store (float32, float16, bfloat16). */
const WRITTEN_DTYPES: ReadonlySet<SafetensorsDtype> = new Set<SafetensorsDtype>(['F32', 'F16', 'BF16']);

/**
 * The weights file of `dir` (`baseName`.safetensors, or the diffusers default names) holding exactly
 * `shapes`: every name, no other, each shape as given and a float dtype, every value finite. Errors
 * carry `${code}_WEIGHTS` (names, shapes, dtypes) or `${code}_NONFINITE`.
 */
export async function readExactWeights(
  dir: string,
  shapes: ReadonlyMap<string, readonly number[]>,
  code: string,
  baseName?: string,
): Promise<Map<string, Float32Array>> {
  const store = await WeightStore.open(dir, baseName);
  try {
    const missing = [...shapes.keys()].filter((name) => !store.has(name));
    const extra = store.names().filter((name) => !shapes.has(name));
    const wrong: string[] = [];
    for (const [name, shape] of shapes) {
      if (!store.has(name)) continue;
      const info = store.info(name);
      if (formatShape(info.shape) !== formatShape(shape))
        wrong.push(`'${name}' ${formatShape(info.shape)} (this run: ${formatShape(shape)})`);
      else if (!WRITTEN_DTYPES.has(info.dtype)) wrong.push(`'${name}' stored as ${info.dtype}`);
    }
    if (missing.length > 0 || extra.length > 0 || wrong.length > 0) {
      throw new WeightError(
        `${store.sourcePath}: not this run's parameters` +
          (missing.length > 0 ? `; missing: ${listNames(missing)}` : '') +
          (extra.length > 0 ? `; not in this run's model: ${listNames(extra)}` : '') +
          (wrong.length > 0 ? `; ${wrong.slice(0, 10).join(', ')}` : ''),
        `${code}_WEIGHTS`,
      );
    }
    const weights = new Map<string, Float32Array>();
    for (const name of shapes.keys()) {
      const values = await store.readFloat32(name);
      const bad = values.findIndex((v) => !Number.isFinite(v));
      if (bad >= 0) {
        const count = values.reduce((n, v) => n + (Number.isFinite(v) ? 0 : 1), 0);
        throw new WeightError(
          `${store.sourcePath}: tensor '${name}' holds ${count} non-finite values (index ${bad}: ` +
            `${values[bad]}); a run cannot start from them`,
          `${code}_NONFINITE`,
        );
      }
      weights.set(name, values);
    }
    return weights;
  } finally {
    await store.close();
  }
}
