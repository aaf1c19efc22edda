/**
 * `bench quant-layers` (issue 11): which layers' int8 error dominates, measured one layer at a time
 * on a trained model (default: the shipped emoji model). For the transformer, on the noise
 * predictions of fixed inputs (prompt embeddings of the README grid's prompts from the float32
 * encoder, Gaussian latents at timesteps 999, 500 and 100): the relative L2 error with every selected
 * Linear int8, with each one alone int8 (`keepFloat` on all the others), and with all int8 but the
 * worst few. The same for the T5 encoder, on its last hidden state.
 */
import { join } from 'node:path';

import { WeightStore, readConfig } from '../src/io/diffusers.js';
import { PixArtTransformer2DModel } from '../src/models/pixart-transformer.js';
import { T5EncoderModel } from '../src/models/t5-encoder.js';
import { T5Tokenizer } from '../src/tokenizers/t5-tokenizer.js';
import { shippedModelDir } from '../src/pipelines/shipped-model.js';
import { toModelInputs } from '../src/tokenizers/batch-encoding.js';
import { TorchGenerator } from '../src/random/torch-generator.js';
import { hostTensor } from '../src/runtime/host-tensor.js';
import { Runtime } from '../src/runtime/runtime.js';
import { README_GRID_PROMPTS } from '../src/train/sample-grid.js';
import { relativeL2 } from './quant.js';
import { machineLine, table } from './stats.js';

export interface QuantLayersOptions {
  /** A PixArt pipeline folder (default: the shipped model). */
  model?: string;
  /** Tokens per prompt. */
  maxLength: number;
  /** Modules left float in the "all but the worst" rows. */
  worst: number;
  threads: number;
}

export interface LayerError {
  module: string;
  /** Relative L2 error of the output with this module alone int8. */
  alone: number;
}

export interface KindRow {
  kind: string;
  modules: number;
  sum: number;
  max: number;
  all_but_kind: number;
  weight_share: number;
}

export interface ComponentLayers {
  component: 'transformer' | 'text_encoder';
  modules: number;
  /** Every selected module int8. */
  all: number;
  /** Per module, worst first. */
  layers: LayerError[];
  /** The error with all but the `worst` worst modules int8. */
  all_but_worst: number;
  /**
   * Per module kind (the path without its layer index: attn1.to_q, ff.net.2, …): the sum and largest
   * of `alone`, the error with every module int8 but this kind's, and this kind's share of the int8
   * modules' weights (the memory keeping it float costs).
   */
  kinds: KindRow[];
  /** The largest single module's share of the sum of all `alone` errors squared (errors add roughly in quadrature). */
  worst_share: number;
}

export interface QuantLayersResult {
  model: string;
  components: ComponentLayers[];
}

/** `transformer_blocks.3.attn1.to_q` → `attn1.to_q`; `encoder.block.2.layer.0.SelfAttention.q` → `SelfAttention.q`. */
export function moduleKind(path: string): string {
  return path.replace(/^transformer_blocks\.\d+\./, '').replace(/^encoder\.block\.\d+\.layer\.\d+\./, '');
}

/** Error rows from `alone` errors and the error figures, worst first, with per-kind sums. */
export function summarize(
  component: ComponentLayers['component'],
  all: number,
  alone: readonly LayerError[],
  allButWorst: number,
  /** Per kind: the error with every module int8 but this kind's, and its share of the int8 weights. */
  kindFigures: ReadonlyMap<string, { allButKind: number; weightShare: number }>,
): ComponentLayers {
  const layers = [...alone].sort((a, b) => b.alone - a.alone);
  const kinds = new Map<string, KindRow>();
  for (const { module, alone: e } of layers) {
    const kind = moduleKind(module);
    let k = kinds.get(kind);
    if (!k) {
      const figures = kindFigures.get(kind);
      if (!figures) throw new Error(`bench quant-layers: no figures for the module kind ${kind}`);
      k = {
        kind,
        modules: 0,
        sum: 0,
        max: 0,
        all_but_kind: figures.allButKind,
        weight_share: figures.weightShare,
      };
      kinds.set(kind, k);
    }
    k.modules += 1;
    k.sum += e;
    k.max = Math.max(k.max, e);
  }
  const squares = layers.reduce((s, l) => s + l.alone ** 2, 0);
  return {
    component,
    modules: layers.length,
    all,
    layers,
    all_but_worst: allButWorst,
    kinds: [...kinds.values()].sort((a, b) => b.sum - a.sum),
    worst_share: layers.length > 0 && squares > 0 ? layers[0].alone ** 2 / squares : 0,
  };
}

/** A model that quantizes at load, as far as this measurement needs it. */
interface Quantizable {
  int8Modules?: ReadonlySet<string>;
  close(): Promise<void>;
}

/**
 * The measurements of one component: `load(quantize, keepFloat)` opens it, `run` gives its output on
 * the fixed inputs, `parameters(module)` the module's weight count (for the memory a kind kept float
 * costs).
 */
async function componentLayers<M extends Quantizable>(
  component: ComponentLayers['component'],
  load: (quantize: boolean, keepFloat?: (m: string) => boolean) => Promise<M>,
  run: (model: M) => Promise<Float32Array>,
  parameters: (module: string) => number,
  worst: number,
): Promise<ComponentLayers> {
  const float = await load(false);
  let reference: Float32Array;
  try {
    reference = await run(float);
  } finally {
    await float.close();
  }
  const errorWith = async (
    keepFloat?: (m: string) => boolean,
  ): Promise<{ error: number; modules: string[] }> => {
    const model = await load(true, keepFloat);
    try {
      return { error: relativeL2(await run(model), reference), modules: [...(model.int8Modules ?? [])] };
    } finally {
      await model.close();
    }
  };
  const all = await errorWith();
  const alone: LayerError[] = [];
  for (const module of all.modules)
    alone.push({ module, alone: (await errorWith((m) => m !== module)).error });
  const worstModules = new Set(
    [...alone]
      .sort((a, b) => b.alone - a.alone)
      .slice(0, worst)
      .map((l) => l.module),
  );
  const allButWorst = (await errorWith((m) => worstModules.has(m))).error;
  const total = all.modules.reduce((n, m) => n + parameters(m), 0);
  const kindFigures = new Map<string, { allButKind: number; weightShare: number }>();
  for (const kind of new Set(all.modules.map(moduleKind))) {
    const members = all.modules.filter((m) => moduleKind(m) === kind);
    kindFigures.set(kind, {
      allButKind: (await errorWith((m) => moduleKind(m) === kind)).error,
      weightShare: members.reduce((n, m) => n + parameters(m), 0) / total,
    });
  }
  const summary = summarize(component, all.error, alone, allButWorst, kindFigures);
  return summary;
}

/** Weight counts of the Linear modules in a model folder's checkpoint. */
async function moduleParameters(dir: string): Promise<(module: string) => number> {
  const store = await WeightStore.open(dir);
  const counts = new Map<string, number>();
  for (const name of store.names()) {
    if (name.endsWith('.weight'))
      counts.set(
        name.slice(0, -'.weight'.length),
        store.info(name).shape.reduce((a, b) => a * b, 1),
      );
  }
  await store.close();
  return (module) => counts.get(module) ?? 0;
}

function concat(parts: readonly Float32Array[]): Float32Array {
  const out = new Float32Array(parts.reduce((a, p) => a + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

export async function benchQuantLayers(
  o: QuantLayersOptions,
  log: (s: string) => void,
): Promise<QuantLayersResult> {
  const model = o.model ?? shippedModelDir();
  const runtime = new Runtime({ worker: false, threads: o.threads });
  try {
    log(
      `int8 error one layer at a time: ${model}; ${README_GRID_PROMPTS.length} prompts × timesteps 999, 500, 100; ${machineLine()}`,
    );
    const tokenizer = await T5Tokenizer.fromPretrained(join(model, 'tokenizer'));
    const encoding = tokenizer.encode(
      README_GRID_PROMPTS.map((p) => p.toLowerCase().trim()),
      { maxLength: o.maxLength, padding: 'max_length', truncation: true },
    );
    const inputs = toModelInputs(encoding);
    const encoder = await T5EncoderModel.fromPretrained(join(model, 'text_encoder'), { runtime });
    const embeds = (await encoder.forward(inputs)).last_hidden_state;
    await encoder.close();
    const mask = inputs.attention_mask;
    const transformerDir = join(model, 'transformer');
    const encoderDir = join(model, 'text_encoder');
    const n = embeds.shape[0];
    const config = (await readConfig(transformerDir)) as { in_channels: number; sample_size: number };
    const latentShape = [n, config.in_channels, config.sample_size, config.sample_size];
    const generator = new TorchGenerator(0);
    const cases = [999, 500, 100].map((t) => ({
      hidden_states: hostTensor('float32', latentShape, generator.randn(latentShape)),
      encoder_hidden_states: embeds,
      encoder_attention_mask: mask,
      timestep: hostTensor('int64', [n], new BigInt64Array(n).fill(BigInt(t))),
    }));
    const components = [
      await componentLayers(
        'transformer',
        (quantize, keepFloat) =>
          PixArtTransformer2DModel.fromPretrained(transformerDir, {
            runtime,
            ...(quantize ? { quantize: 'int8' as const, keepFloat } : {}),
          }),
        async (m) => {
          const parts: Float32Array[] = [];
          for (const c of cases) parts.push((await m.forward(c)).sample.data as Float32Array);
          return concat(parts);
        },
        await moduleParameters(transformerDir),
        o.worst,
      ),
      await componentLayers(
        'text_encoder',
        (quantize, keepFloat) =>
          T5EncoderModel.fromPretrained(encoderDir, {
            runtime,
            ...(quantize ? { quantize: 'int8' as const, keepFloat } : {}),
          }),
        async (m) => (await m.forward(inputs)).last_hidden_state.data as Float32Array,
        await moduleParameters(encoderDir),
        o.worst,
      ),
    ];
    for (const c of components) {
      log(
        `\n${c.component}: ${c.modules} int8 Linears; all int8: rel L2 ${c.all.toExponential(2)}; ` +
          `all but the ${o.worst} worst: ${c.all_but_worst.toExponential(2)}; the worst one's share of the squared sum: ${(100 * c.worst_share).toFixed(1)} %`,
      );
      log(
        table(
          ['module (alone int8)', 'rel L2'],
          c.layers.slice(0, 8).map((l) => [l.module, l.alone.toExponential(2)]),
        ),
      );
      log(
        table(
          [
            'kind',
            'modules',
            'sum alone',
            'max alone',
            'all int8 but this kind',
            'its share of int8 weights',
          ],
          c.kinds.map((k) => [
            k.kind,
            String(k.modules),
            k.sum.toExponential(2),
            k.max.toExponential(2),
            k.all_but_kind.toExponential(2),
            k.weight_share,
          ]),
        ),
      );
    }
    return { model, components };
  } finally {
    await runtime.dispose();
  }
}
