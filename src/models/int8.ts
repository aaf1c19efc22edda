import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { OptionError } from '../errors.js';
import { WeightStore } from '../io/diffusers.js';
import { quantizeInt8Rows } from '../io/quantize.js';
import { SafetensorsFile, writeSafetensorsStreaming } from '../io/safetensors.js';
import type { TensorToStream } from '../io/safetensors.js';
import { int8SiteWeightShape, type Int8Options, type Int8Site } from '../nn/params.js';
import type { TensorSource } from '../nn/weights.js';
import { OverlayTensorSource, checkWeights } from '../nn/weights.js';
import type { WarningHandler } from '../warnings.js';

/** The `quantize` load option: 'int8' quantizes Linear weights at load (README "int8"). */
export type QuantizeOption = 'int8';

export function checkQuantizeOption(value: unknown, where: string): QuantizeOption | undefined {
  if (value === undefined || value === 'int8') return value;
  throw new OptionError(`${where}: quantize must be 'int8' or absent, got ${JSON.stringify(value)}`);
}

/** Channels a convolution needs on both sides before int8 pays for its layout changes (README "int8"). */
export const INT8_CONV_MIN_CHANNELS = 64;

/**
 * Which layers quantization at load makes int8, except the modules a model class keeps in float (its
 * last layer, layers whose error dominates: README "int8" gives the measurements):
 *
 * - Linears applied to tokens or pixels (an input of rank ≥ 3), where the int8 GEMM pays. Linears on
 *   [B, C] vectors (time embeddings, pooled text) do one row of work per image and stay float.
 * - Convolutions with a kernel larger than 1×1, stride 1, dilation 1, no groups and at least
 *   INT8_CONV_MIN_CHANNELS channels in and out (a UNet's resnet and upsampler convolutions): measured
 *   1.4–3.1× faster than fp32 Conv at SD widths. 1×1 convolutions (measured 0.9–3.2×, inconsistent),
 *   strided ones (downsamplers) and the first and last layers (4 latent channels) stay float.
 *
 * `vectorInt8` names Linears on [B, C] vectors that a class makes int8 all the same, for memory:
 * SD3's and FLUX's adaLN modulations hold a quarter to a third of their weights.
 */
export function selectInt8Layers(
  sites: readonly Int8Site[],
  keepFloat: (modulePath: string) => boolean,
  vectorInt8: (modulePath: string) => boolean = () => false,
): Int8Site[] {
  const seen = new Set<string>();
  return sites.filter((s) => {
    if (seen.has(s.modulePath)) return false;
    seen.add(s.modulePath);
    if (keepFloat(s.modulePath)) return false;
    if (s.kernel === undefined) return s.inputRank >= 3 || vectorInt8(s.modulePath);
    return (
      s.int8Capable === true &&
      s.kernel[0] * s.kernel[1] > 1 &&
      Math.min(s.inFeatures, s.outFeatures) >= INT8_CONV_MIN_CHANNELS
    );
  });
}

/** A model's weights as its graphs read them: the checkpoint, with int8 Linears where asked. */
export interface ModelWeights {
  /** The folder's checkpoint. */
  store: WeightStore;
  /** What graphs are built from: `store`, or `store` with the int8 file of a quantization at load over it. */
  source: TensorSource;
  /** Params' int8 options for builds: the int8 modules; undefined for a float model. */
  int8: Int8Options | undefined;
  close(): Promise<void>;
}

/**
 * Opens and checks a model folder's weights as `openCheckedWeights` does, and makes its Linear layers
 * int8 where the folder is velodiff's int8 format (`folderInt8`, from its config) or `quantize` asks.
 * Quantizing at load reads one float weight at a time and writes the int8 weights and scales to a
 * file in the temporary folder, which the graphs read in place (as they read the checkpoint) and
 * which is deleted when the model closes.
 */
export async function openModelWeights(
  dir: string,
  options: {
    className: string;
    /** The int8 modules the folder's config lists (velodiff's int8 format), if any. */
    folderInt8: ReadonlySet<string> | undefined;
    quantize: QuantizeOption | undefined;
    /** Linear and Conv2d modules quantization at load leaves float (the class's choice). */
    keepFloat?: (modulePath: string) => boolean;
    /** And those the user asks to leave float (LoadOptions.keepFloat). */
    userKeepFloat?: (modulePath: string) => boolean;
    /** Linears on [B, C] vectors quantization at load makes int8 all the same (`selectInt8Layers`). */
    vectorInt8?: (modulePath: string) => boolean;
    /** Builds a graph that reads every weight, from `source` with `int8`. */
    build: (source: TensorSource, int8: Int8Options | undefined, store: WeightStore) => void;
    ignoreUnused?: (name: string) => boolean;
    onWarning?: WarningHandler;
  },
): Promise<ModelWeights> {
  const quantize = checkQuantizeOption(options.quantize, `${options.className}.fromPretrained (${dir})`);
  const store = await WeightStore.open(dir);
  const check = (int8: Int8Options | undefined): void =>
    checkWeights(store, {
      className: options.className,
      build: (recorder) => options.build(recorder, int8, store),
      ignoreUnused: options.ignoreUnused,
      onWarning: options.onWarning,
    });
  try {
    if (options.folderInt8 !== undefined) {
      const int8 = { modules: options.folderInt8 };
      check(int8);
      return { store, source: store, int8, close: () => store.close() };
    }
    const sites: Int8Site[] = [];
    check(quantize === 'int8' ? { onLayer: (s) => sites.push(s) } : undefined);
    if (quantize !== 'int8') return { store, source: store, int8: undefined, close: () => store.close() };
    const keepFloat = (m: string): boolean =>
      (options.keepFloat?.(m) ?? false) || (options.userKeepFloat?.(m) ?? false);
    return await quantizeAtLoad(store, selectInt8Layers(sites, keepFloat, options.vectorInt8));
  } catch (error) {
    await store.close();
    throw error;
  }
}

async function quantizeAtLoad(store: WeightStore, linears: readonly Int8Site[]): Promise<ModelWeights> {
  const folder = mkdtempSync(join(tmpdir(), 'velodiff-int8-'));
  const remove = (): void => rmSync(folder, { recursive: true, force: true });
  process.once('exit', remove);
  try {
    const path = join(folder, 'int8.safetensors');
    await writeSafetensorsStreaming(path, int8Tensors(store, linears));
    const file = await SafetensorsFile.open(path);
    const int8 = { modules: new Set(linears.map((l) => l.modulePath)) };
    return {
      store,
      source: new OverlayTensorSource(store, file, path),
      int8,
      close: async () => {
        await file.close();
        await store.close();
        remove();
        process.removeListener('exit', remove);
      },
    };
  } catch (error) {
    remove();
    process.removeListener('exit', remove);
    throw error;
  }
}

/**
 * The int8 weight and scale of each Linear and Conv2d, made one module at a time (a convolution's
 * rows are its output channels, each over in·kH·kW). The weight and its scale are
 * written in sorted order (`…weight` before `…weight_scale`), so one quantization serves both.
 */
export function int8Tensors(
  source: TensorSource & { readFloat32(name: string): Promise<Float32Array> },
  linears: readonly Int8Site[],
): TensorToStream[] {
  const tensors: TensorToStream[] = [];
  for (const site of linears) {
    const { modulePath, outFeatures } = site;
    const name = `${modulePath}.weight`;
    const shape = int8SiteWeightShape(site);
    const perRow = shape.slice(1).reduce((a, b) => a * b, 1);
    let pending: Promise<{ q: Int8Array; scale: Float32Array }> | undefined;
    const quantized = (): Promise<{ q: Int8Array; scale: Float32Array }> => {
      pending ??= source.readFloat32(name).then((w) => quantizeInt8Rows(w, outFeatures, perRow, name));
      return pending;
    };
    tensors.push(
      { name, dtype: 'I8', shape, data: async () => (await quantized()).q },
      {
        name: `${name}_scale`,
        dtype: 'F32',
        shape: [outFeatures],
        data: async () => {
          const { scale } = await quantized();
          pending = undefined;
          return scale;
        },
      },
    );
  }
  return tensors;
}
