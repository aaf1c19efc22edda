/**
 * LoRA on SD3Transformer2DModel and FluxTransformer2DModel (the golden tiny models), against the
 * same models loaded from a copy of their folder whose weights this test merged in float64
 * (W + alpha/r·B·A): a PEFT folder with alpha ≠ r on attention, feed-forward, adaLN and embedding
 * Linears of double and single blocks (and SD3's patch-embedding conv), switchable at weight 1 and
 * 0.5, fused, unfused, unloaded; a diffusers `transformer.` file with alpha tensors; keys naming no
 * module; LoRA on an int8 model; the pipeline verbs on SD3 and FLUX pipelines, whose runs equal runs
 * with the merged transformer.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

import { FileFormatError, OptionError } from '../../src/errors.js';
import type { TensorToWrite } from '../../src/io/safetensors.js';
import { FluxTransformer2DModel } from '../../src/models/flux-transformer.js';
import { SD3Transformer2DModel } from '../../src/models/sd3-transformer.js';
import { FluxPipeline } from '../../src/pipelines/flux.js';
import { StableDiffusion3Pipeline } from '../../src/pipelines/stable-diffusion-3.js';
import type { HostTensor } from '../../src/runtime/host-tensor.js';
import { hostTensor } from '../../src/runtime/host-tensor.js';
import type { Scheduler } from '../../src/schedulers/index.js';
import { schedulerFromConfig } from '../../src/schedulers/index.js';
import { assertClose, maxAbs } from '../compare.js';
import { tinySd3Pipeline } from '../fixtures/tiny-sd3-pipeline.js';
import { randomTensor, readAllTensors, testRuntime } from '../helpers.js';
import type { LoraWeights } from '../lora/fixture.js';
import {
  randomLoraFor,
  safetensorsIn,
  tempDirsRemovedAfter,
  tinyFluxInputs,
  writeDiffusers,
  writeMergedCopy,
  writePeft,
} from '../lora/fixture.js';
import { seededUniform, testSeed } from '../random.js';

const seed = testSeed('test/models/sd3-flux-lora.test.ts');
const random = seededUniform(seed);
const runtime = testRuntime();

const GOLDEN = fileURLToPath(new URL('../golden/', import.meta.url));
const SD3_MODEL = `${GOLDEN}models/sd3_transformer_tiny/model`;
const FLUX_MODEL = `${GOLDEN}models/flux_transformer_tiny/model`;
const SD3_PIPELINE = `${GOLDEN}pipelines/pipeline_sd3_flowmatch/`;
const FLUX_PIPELINE = `${GOLDEN}pipelines/pipeline_flux_flowmatch/`;

/** SD3 (2 blocks, the last context_pre_only): joint attention of both streams, FFNs, adaLN, patch conv, caption projection. */
const SD3_TARGETS = [
  'transformer_blocks.0.attn.to_q',
  'transformer_blocks.0.attn.add_k_proj',
  'transformer_blocks.1.attn.to_out.0',
  'transformer_blocks.0.ff.net.0.proj',
  'transformer_blocks.1.ff.net.2',
  'transformer_blocks.0.ff_context.net.2',
  'transformer_blocks.0.norm1.linear',
  'pos_embed.proj',
  'context_embedder',
];
/** FLUX (1 double-stream, 2 single-stream blocks): attention, FFNs and adaLN of both kinds, the input embedding. */
const FLUX_TARGETS = [
  'transformer_blocks.0.attn.to_k',
  'transformer_blocks.0.attn.add_v_proj',
  'transformer_blocks.0.attn.to_add_out',
  'transformer_blocks.0.ff.net.0.proj',
  'transformer_blocks.0.ff_context.net.2',
  'transformer_blocks.0.norm1.linear',
  'single_transformer_blocks.0.attn.to_q',
  'single_transformer_blocks.1.proj_mlp',
  'single_transformer_blocks.0.proj_out',
  'x_embedder',
];
const RANK = 2;
/** alpha ≠ r, so a loader that took alpha/r as 1 (or r/alpha) fails. */
const ALPHA = 3;
const TOLERANCE = { atol: 1e-5, rtol: 1e-4 };

const freshDir = tempDirsRemovedAfter();
after(async () => {
  await runtime.dispose();
});

/** A random LoRA of rank RANK for `modules` of a checkpoint. */
function loraFor(base: Record<string, HostTensor>, modules: readonly string[]): LoraWeights {
  return randomLoraFor(base, modules, RANK, random);
}

/** A copy of the model folder `dir` with W + scale·B·A (float64) in place of each targeted W. */
async function mergedCopy(dir: string, lora: LoraWeights, scale: number): Promise<string> {
  return writeMergedCopy(dir, await freshDir('velodiff-merged-'), lora, scale);
}

/** A scheduler of its own for a second pipeline, from the first one's (a diffusers folder's) config. */
function freshScheduler(pipe: { scheduler: { config: Readonly<object> } }): Scheduler {
  return schedulerFromConfig(pipe.scheduler.config as Record<string, unknown>, {
    _class_name: 'FlowMatchEulerDiscreteScheduler',
  });
}

/** `actual` equals `expected` within fp32 noise, and the LoRA moved the output far beyond it. */
function assertLoraMatches(actual: HostTensor, expected: HostTensor, base: HostTensor, what: string): void {
  const e = expected.data as Float32Array;
  const { maxAbsError } = assertClose(actual.data as Float32Array, e, {
    ...TOLERANCE,
    what: `seed ${seed}: ${what}`,
  });
  // The LoRA must change the output far beyond the tolerance, or the comparison proves nothing.
  const effect = maxAbs((base.data as Float32Array).map((v, i) => v - e[i]));
  assert.ok(effect > 100 * TOLERANCE.atol, `${what}: the LoRA changes the output by only ${effect}`);
  process.stderr.write(
    `# ${what}: max |diff| ${maxAbsError.toExponential(2)} (LoRA effect ${effect.toFixed(3)})\n`,
  );
}

/** What the suite needs of either model class. */
interface LoraModel {
  readonly adapters: SD3Transformer2DModel['adapters'];
  loadLoraWeights: SD3Transformer2DModel['loadLoraWeights'];
  forward(inputs: Record<string, HostTensor>): Promise<Record<string, HostTensor>>;
  close(): Promise<void>;
}

interface ModelCase {
  name: string;
  dir: string;
  targets: readonly string[];
  load: (dir: string, quantize?: 'int8') => Promise<LoraModel>;
  inputs: () => Promise<Record<string, HostTensor>>;
}

const CASES: ModelCase[] = [
  {
    name: 'SD3Transformer2DModel',
    dir: SD3_MODEL,
    targets: SD3_TARGETS,
    load: (dir, quantize) => SD3Transformer2DModel.fromPretrained(dir, { runtime, quantize }),
    inputs: async () => ({
      hidden_states: randomTensor([2, 4, 8, 6], random),
      encoder_hidden_states: randomTensor([2, 5, 24], random),
      pooled_projections: randomTensor([2, 20], random),
      timestep: hostTensor('float32', [2], Float32Array.of(1000 * random(), 1000 * random())),
    }),
  },
  {
    name: 'FluxTransformer2DModel',
    dir: FLUX_MODEL,
    targets: FLUX_TARGETS,
    load: (dir, quantize) => FluxTransformer2DModel.fromPretrained(dir, { runtime, quantize }),
    inputs: () => tinyFluxInputs(random),
  },
];

for (const c of CASES) {
  describe(`LoRA on ${c.name}`, () => {
    let base: Record<string, HostTensor>;
    before(async () => {
      base = await readAllTensors(await safetensorsIn(c.dir));
    });

    it('PEFT folder (alpha ≠ r): switchable at 1 and 0.5, fused, unfused and unloaded match merged weights', async () => {
      const lora = loraFor(base, c.targets);
      const dir = await freshDir();
      const peft = await writePeft(join(dir, 'peft'), lora, {
        r: RANK,
        lora_alpha: ALPHA,
        target_modules: [...new Set(c.targets.map((m) => m.split('.').slice(-2).join('.')))],
      });
      const model = await c.load(c.dir);
      const merged1 = await c.load(await mergedCopy(c.dir, lora, ALPHA / RANK));
      const merged05 = await c.load(await mergedCopy(c.dir, lora, (0.5 * ALPHA) / RANK));
      try {
        const inputs = await c.inputs();
        const plain = (await model.forward(inputs)).sample;
        const loaded = await model.loadLoraWeights(peft, { adapterName: 'style' });
        assert.equal(loaded.format, 'peft');
        assert.deepEqual([...loaded.modules].sort(), [...c.targets].sort());
        assert.deepEqual(loaded.alphaOverRank, [ALPHA / RANK]);
        assert.deepEqual(loaded.ignored, []);
        const expected1 = (await merged1.forward(inputs)).sample;
        const expected05 = (await merged05.forward(inputs)).sample;
        const switchable1 = (await model.forward(inputs)).sample;
        assertLoraMatches(switchable1, expected1, plain, `${c.name} LoRA, switchable, weight 1`);
        model.adapters.setAdapters('style', 0.5);
        const switchable05 = (await model.forward(inputs)).sample;
        assertLoraMatches(switchable05, expected05, plain, `${c.name} LoRA, switchable, weight 0.5`);
        model.adapters.fuse();
        assert.deepEqual(model.adapters.fused, ['style']);
        assertLoraMatches(
          (await model.forward(inputs)).sample,
          expected05,
          plain,
          `${c.name} LoRA, fused at 0.5`,
        );
        // Unfused, the adapter is a side branch again: the same graph and feeds as before fusing.
        model.adapters.unfuse();
        assert.deepEqual(model.adapters.fused, []);
        assert.deepEqual((await model.forward(inputs)).sample.data, switchable05.data);
        model.adapters.setAdapters('style', 0);
        assertClose((await model.forward(inputs)).sample.data as Float32Array, plain.data as Float32Array, {
          ...TOLERANCE,
          what: `seed ${seed}: ${c.name} LoRA at weight 0`,
        });
        model.adapters.unload();
        assert.deepEqual(model.adapters.loaded, []);
        assert.deepEqual((await model.forward(inputs)).sample.data, plain.data);
      } finally {
        await model.close();
        await merged1.close();
        await merged05.close();
      }
    });

    it('a diffusers transformer.-prefixed file with alpha tensors equals the PEFT folder', async () => {
      const lora = loraFor(base, c.targets.slice(0, 4));
      const dir = await freshDir();
      const peft = await writePeft(join(dir, 'peft'), lora, { r: RANK, lora_alpha: ALPHA });
      const alphas = Object.fromEntries(Object.keys(lora).map((m) => [m, ALPHA]));
      const file = await writeDiffusers(join(dir, 'lora.safetensors'), lora, {
        prefix: 'transformer',
        alphas,
      });
      const model = await c.load(c.dir);
      try {
        const inputs = await c.inputs();
        const d = await model.loadLoraWeights(file, { adapterName: 'diffusers' });
        assert.equal(d.format, 'diffusers');
        assert.deepEqual(d.alphaOverRank, [ALPHA / RANK]);
        await model.loadLoraWeights(peft, { adapterName: 'peft' });
        model.adapters.setAdapters('diffusers');
        const viaDiffusers = (await model.forward(inputs)).sample;
        model.adapters.setAdapters('peft');
        const viaPeft = (await model.forward(inputs)).sample;
        // Both adapters sit in the one graph; only the fed scales differ.
        assertClose(viaDiffusers.data as Float32Array, viaPeft.data as Float32Array, {
          atol: 1e-6,
          rtol: 1e-6,
          what: `seed ${seed}: ${c.name} diffusers file vs PEFT folder`,
        });
      } finally {
        await model.close();
      }
    });

    it('reports keys that name no module, and rejects a file of which nothing applies', async () => {
      const lora = loraFor(base, [c.targets[0]]);
      const t = lora[c.targets[0]];
      const f32 = (shape: number[], data: Float32Array): TensorToWrite => ({ dtype: 'F32', shape, data });
      const missing = c.targets[0].replace(/^(single_)?transformer_blocks\.\d+/, 'transformer_blocks.9');
      const dir = await freshDir();
      const file = await writeDiffusers(
        join(dir, 'partial.safetensors'),
        lora,
        { prefix: 'transformer' },
        {
          [`transformer.${missing}.lora_A.weight`]: f32(t.aShape, t.a),
          [`transformer.${missing}.lora_B.weight`]: f32(t.bShape, t.b),
        },
      );
      const model = await c.load(c.dir);
      try {
        const loaded = await model.loadLoraWeights(file);
        assert.deepEqual(loaded.modules, [c.targets[0]]);
        const reasons = new Map(loaded.ignored.map((i) => [i.key, i.reason]));
        assert.deepEqual([...reasons.keys()].sort(), [
          `transformer.${missing}.lora_A.weight`,
          `transformer.${missing}.lora_B.weight`,
        ]);
        assert.match(
          reasons.get(`transformer.${missing}.lora_A.weight`) ?? '',
          new RegExp(`no module '${missing.replace(/\./g, '\\.')}'`),
        );
        const nothing = await writeDiffusers(
          join(dir, 'nothing.safetensors'),
          { [missing]: t },
          { prefix: 'transformer' },
        );
        await assert.rejects(model.loadLoraWeights(nothing, { adapterName: 'nothing' }), (e: unknown) => {
          assert.ok(e instanceof FileFormatError, String(e));
          assert.equal(e.code, 'LORA_NO_MATCH');
          assert.match(
            e.message,
            /nothing\.safetensors: none of its 2 keys applies to a module of the model/,
          );
          assert.match(e.message, new RegExp(`no module '${missing.replace(/\./g, '\\.')}'`));
          return true;
        });
        assert.deepEqual(model.adapters.loaded, ['default_0']);
      } finally {
        await model.close();
      }
    });
  });
}

describe("LoRA on an int8 model (quantize: 'int8')", () => {
  it('FLUX: every term is a side branch of the int8 Linears, fused or not, near the float merged model', async () => {
    const base = await readAllTensors(await safetensorsIn(FLUX_MODEL));
    const lora = loraFor(base, FLUX_TARGETS);
    const dir = await freshDir();
    const peft = await writePeft(join(dir, 'peft'), lora, { r: RANK, lora_alpha: ALPHA });
    const flux = CASES[1];
    const model = await flux.load(FLUX_MODEL, 'int8');
    const merged = await flux.load(await mergedCopy(FLUX_MODEL, lora, ALPHA / RANK));
    try {
      const inputs = await flux.inputs();
      const plain = (await model.forward(inputs)).sample;
      await model.loadLoraWeights(peft, { adapterName: 'style' });
      const switchable = (await model.forward(inputs)).sample;
      model.adapters.fuse();
      // int8 weights cannot absorb B·A: the fused graph computes the same side branches.
      assertLoraMatches(
        (await model.forward(inputs)).sample,
        switchable,
        plain,
        'int8 FLUX LoRA, fused vs switchable',
      );
      const expected = (await merged.forward(inputs)).sample.data as Float32Array;
      const scale = maxAbs(expected);
      const { maxAbsError } = assertClose(switchable.data as Float32Array, expected, {
        // The int8 model's own error (≈1.4e-2 of the scale without LoRA, test/models/flux-transformer.test.ts).
        atol: 5e-2 * scale,
        rtol: 0,
        what: `seed ${seed}: int8 FLUX + LoRA vs the float merged model`,
      });
      process.stderr.write(
        `# int8 + LoRA vs float merged: ${(maxAbsError / scale).toExponential(2)} of the scale\n`,
      );
    } finally {
      await model.close();
      await merged.close();
    }
  });
});

describe('the pipeline verbs', () => {
  it('StableDiffusion3Pipeline: load, setAdapters 0.5 (the run equals one with merged weights), fuse, unfuse, unload', async () => {
    const pipelineDir = `${SD3_PIPELINE}pipeline`;
    const transformerDir = join(pipelineDir, 'transformer');
    const base = await readAllTensors(await safetensorsIn(transformerDir));
    const lora = loraFor(base, SD3_TARGETS);
    const dir = await freshDir();
    const text = loraFor(base, ['context_embedder']).context_embedder;
    const file = await writeDiffusers(
      join(dir, 'lora.safetensors'),
      lora,
      { prefix: 'transformer', alphas: Object.fromEntries(Object.keys(lora).map((m) => [m, ALPHA])) },
      // This folder has no CLIP encoders: its text-encoder keys are reported, not routed.
      {
        'text_encoder.text_model.encoder.layers.0.mlp.fc1.lora_A.weight': {
          dtype: 'F32',
          shape: text.aShape,
          data: text.a,
        },
        'text_encoder.text_model.encoder.layers.0.mlp.fc1.lora_B.weight': {
          dtype: 'F32',
          shape: text.bShape,
          data: text.b,
        },
      },
    );
    const inputs = await readAllTensors(`${SD3_PIPELINE}inputs.safetensors`);
    const pipe = await StableDiffusion3Pipeline.fromPretrained(pipelineDir, { runtime });
    const mergedTransformer = await SD3Transformer2DModel.fromPretrained(
      await mergedCopy(transformerDir, lora, (0.5 * ALPHA) / RANK),
      { runtime },
    );
    const merged = StableDiffusion3Pipeline.fromComponents({
      transformer: mergedTransformer,
      vae: pipe.vae,
      scheduler: freshScheduler(pipe),
      runtime,
    });
    const run = (p: StableDiffusion3Pipeline): Promise<HostTensor> =>
      p
        .run({
          promptEmbeds: inputs.prompt_embeds,
          pooledPromptEmbeds: inputs.pooled_prompt_embeds,
          negativePromptEmbeds: inputs.negative_prompt_embeds,
          negativePooledPromptEmbeds: inputs.negative_pooled_prompt_embeds,
          latents: inputs.latents,
          numInferenceSteps: 2,
          guidanceScale: 5,
          height: 16,
          width: 16,
          outputType: 'latent',
        })
        .then((out) => out.latents);
    try {
      const plain = await run(pipe);
      const loaded = await pipe.loadLoraWeights(file, { adapterName: 'style' });
      assert.deepEqual(loaded.components, ['denoiser']);
      assert.deepEqual([...loaded.modules].sort(), Object.keys(lora).sort());
      assert.deepEqual(loaded.ignored.map((i) => i.key).sort(), [
        'text_encoder.text_model.encoder.layers.0.mlp.fc1.lora_A.weight',
        'text_encoder.text_model.encoder.layers.0.mlp.fc1.lora_B.weight',
      ]);
      pipe.setAdapters('style', 0.5);
      const expected = await run(merged);
      assertLoraMatches(await run(pipe), expected, plain, 'SD3 pipeline run, LoRA at 0.5');
      pipe.fuseLora();
      assert.deepEqual(pipe.transformer.adapters.fused, ['style']);
      assertLoraMatches(await run(pipe), expected, plain, 'SD3 pipeline run, LoRA fused at 0.5');
      pipe.unfuseLora();
      assert.deepEqual(pipe.transformer.adapters.fused, []);
      assert.throws(
        () => pipe.setAdapters('nope'),
        (e: unknown) => e instanceof OptionError && e.code === 'ADAPTER_UNKNOWN',
      );
      pipe.unloadLoraWeights();
      assert.deepEqual(pipe.transformer.adapters.loaded, []);
      assert.deepEqual((await run(pipe)).data, plain.data);
    } finally {
      await mergedTransformer.close();
      await pipe.close();
    }
  });

  it('StableDiffusion3Pipeline routes text_encoder. and text_encoder_2. keys to its CLIP encoders', async () => {
    const dir = await tinySd3Pipeline();
    const transformerBase = await readAllTensors(await safetensorsIn(join(dir, 'transformer')));
    const clipL = await readAllTensors(await safetensorsIn(join(dir, 'text_encoder')));
    const clipG = await readAllTensors(await safetensorsIn(join(dir, 'text_encoder_2')));
    const fc1 = 'text_model.encoder.layers.0.mlp.fc1';
    const extra: Record<string, TensorToWrite> = {};
    for (const [component, weights] of [
      ['text_encoder', clipL],
      ['text_encoder_2', clipG],
    ] as const) {
      const t = loraFor(weights, [fc1])[fc1];
      extra[`${component}.${fc1}.lora_A.weight`] = { dtype: 'F32', shape: t.aShape, data: t.a };
      extra[`${component}.${fc1}.lora_B.weight`] = { dtype: 'F32', shape: t.bShape, data: t.b };
    }
    const loraDir = await freshDir();
    const file = await writeDiffusers(
      join(loraDir, 'all.safetensors'),
      loraFor(transformerBase, ['transformer_blocks.0.attn.to_q']),
      { prefix: 'transformer' },
      extra,
    );
    const pipe = await StableDiffusion3Pipeline.fromPretrained(dir, { runtime });
    try {
      const [l, g] = pipe.clipEncoders.map((e) => e.textEncoder);
      const ids = hostTensor('int64', [1, 4], BigInt64Array.of(512n, 40n, 41n, 513n));
      const plainL = (await l.forward({ input_ids: ids })).last_hidden_state;
      const loaded = await pipe.loadLoraWeights(file);
      assert.deepEqual(loaded.components, ['denoiser', 'text_encoder', 'text_encoder_2']);
      assert.deepEqual(loaded.ignored, []);
      assert.deepEqual([...loaded.modules].sort(), [
        `text_encoder.${fc1}`,
        `text_encoder_2.${fc1}`,
        'transformer_blocks.0.attn.to_q',
      ]);
      assert.deepEqual(g.adapters.loaded, ['default_0']);
      const withLora = (await l.forward({ input_ids: ids })).last_hidden_state;
      assert.ok(
        maxAbs((withLora.data as Float32Array).map((v, i) => v - (plainL.data as Float32Array)[i])) > 1e-3,
      );
      pipe.fuseLora({ components: ['text_encoder'] });
      assert.deepEqual(l.adapters.fused, ['default_0']);
      assert.deepEqual(pipe.transformer.adapters.fused, []);
      pipe.unloadLoraWeights();
      for (const adapters of [pipe.transformer.adapters, l.adapters, g.adapters])
        assert.deepEqual(adapters.loaded, []);
      assert.deepEqual((await l.forward({ input_ids: ids })).last_hidden_state.data, plainL.data);
    } finally {
      await pipe.close();
    }
  });

  it('FluxPipeline: load, setAdapters 0.5 (the run equals one with merged weights), fuse, unfuse, unload', async () => {
    const pipelineDir = `${FLUX_PIPELINE}pipeline`;
    const transformerDir = join(pipelineDir, 'transformer');
    const base = await readAllTensors(await safetensorsIn(transformerDir));
    const lora = loraFor(base, FLUX_TARGETS);
    const dir = await freshDir();
    const peft = await writePeft(join(dir, 'peft'), lora, { r: RANK, lora_alpha: ALPHA });
    const inputs = await readAllTensors(`${FLUX_PIPELINE}inputs.safetensors`);
    const pipe = await FluxPipeline.fromPretrained(pipelineDir, { runtime });
    const mergedTransformer = await FluxTransformer2DModel.fromPretrained(
      await mergedCopy(transformerDir, lora, (0.5 * ALPHA) / RANK),
      { runtime },
    );
    const merged = FluxPipeline.fromComponents({
      transformer: mergedTransformer,
      vae: pipe.vae,
      scheduler: freshScheduler(pipe),
      runtime,
    });
    const run = (p: FluxPipeline): Promise<HostTensor> =>
      p
        .run({
          promptEmbeds: inputs.prompt_embeds,
          pooledPromptEmbeds: inputs.pooled_prompt_embeds,
          latents: inputs.latents,
          numInferenceSteps: 2,
          guidanceScale: 3.5,
          height: 32,
          width: 32,
          outputType: 'latent',
        })
        .then((out) => out.latents);
    try {
      const plain = await run(pipe);
      const loaded = await pipe.loadLoraWeights(peft, { adapterName: 'style' });
      assert.deepEqual(loaded.components, ['denoiser']);
      assert.deepEqual(loaded.alphaOverRank, [ALPHA / RANK]);
      pipe.setAdapters(['style'], [0.5]);
      const expected = await run(merged);
      assertLoraMatches(await run(pipe), expected, plain, 'FLUX pipeline run, LoRA at 0.5');
      pipe.fuseLora();
      assert.deepEqual(pipe.transformer.adapters.fused, ['style']);
      assertLoraMatches(await run(pipe), expected, plain, 'FLUX pipeline run, LoRA fused at 0.5');
      pipe.unfuseLora();
      pipe.unloadLoraWeights('style');
      assert.deepEqual(pipe.transformer.adapters.loaded, []);
      assert.deepEqual((await run(pipe)).data, plain.data);
      assert.throws(
        () => pipe.unloadLoraWeights('style'),
        (e: unknown) => e instanceof OptionError && e.code === 'ADAPTER_UNKNOWN',
      );
    } finally {
      await mergedTransformer.close();
      await pipe.close();
    }
  });
});
