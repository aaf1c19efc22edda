/**
 * LoRA on UNets and CLIP text encoders, against the same models with W + s·B·A merged into their
 * weights by this test (float64, written as a new checkpoint): diffusers/PEFT and kohya layouts,
 * linears and convs (kohya conv LoRA: A a conv with the base kernel, B 1×1), switchable and fused,
 * the pipeline verbs routing `unet.` / `text_encoder.` keys, and the Flash recipe on SD/SDXL.
 */
import assert from 'node:assert/strict';
import { cp, readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { FileFormatError, OptionError } from '../../src/errors.js';
import { writeSafetensors, type TensorToWrite } from '../../src/io/safetensors.js';
import { CLIPTextModel } from '../../src/models/clip-text.js';
import { UNet2DConditionModel } from '../../src/models/unet-2d-condition.js';
import { StableDiffusionPipeline } from '../../src/pipelines/stable-diffusion.js';
import { StableDiffusionXLPipeline } from '../../src/pipelines/stable-diffusion-xl.js';
import type { HostTensor } from '../../src/runtime/host-tensor.js';
import { hostTensor } from '../../src/runtime/host-tensor.js';
import { LCMScheduler } from '../../src/schedulers/index.js';
import { assertClose, maxAbs } from '../compare.js';
import { tinySdPipeline, tinySdxlPipeline } from '../fixtures/tiny-sd-pipelines.js';
import { randomArray, randomTensor, readAllTensors, testRuntime } from '../helpers.js';
import { seededUniform, testSeed } from '../random.js';
import type { LoraWeights } from './fixture.js';
import { tempDir, writeDiffusers, writeKohya, writePeft } from './fixture.js';

const seed = testSeed('test/lora/unet-lora.test.ts');
const random = seededUniform(seed);
const runtime = testRuntime();

/** UNet modules given a LoRA: linears of attn1/attn2/GEGLU/time embedding, 3×3 convs, a 1×1 proj_in conv. */
const UNET_TARGETS = [
  'down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q',
  'up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k',
  'mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj',
  'time_embedding.linear_1',
  'conv_in',
  'down_blocks.0.resnets.0.conv1',
  'down_blocks.0.attentions.0.proj_in',
];
const TEXT_TARGETS = ['text_model.encoder.layers.0.self_attn.q_proj', 'text_model.encoder.layers.1.mlp.fc1'];
const RANK = 2;

let sd: { dir: string };
let unetBase: Record<string, HostTensor>;
let textBase: Record<string, HostTensor>;
const dirs: string[] = [];

const safetensorsIn = async (dir: string): Promise<string> => {
  const name = (await readdir(dir)).find((f) => f.endsWith('.safetensors'));
  assert.ok(name, `no safetensors in ${dir}`);
  return join(dir, name);
};

before(async () => {
  sd = await tinySdPipeline();
  dirs.push(sd.dir);
  unetBase = await readAllTensors(await safetensorsIn(join(sd.dir, 'unet')));
  textBase = await readAllTensors(await safetensorsIn(join(sd.dir, 'text_encoder')));
});
after(async () => {
  await Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true })));
});

/** A random LoRA for `modules` of a checkpoint: A [r, in(, kh, kw)], B [out, r(, 1, 1)]. */
function loraFor(base: Record<string, HostTensor>, modules: readonly string[]): LoraWeights {
  const lora: LoraWeights = {};
  for (const module of modules) {
    const shape = base[`${module}.weight`].shape;
    const aShape = shape.length === 4 ? [RANK, shape[1], shape[2], shape[3]] : [RANK, shape[1]];
    const bShape = shape.length === 4 ? [shape[0], RANK, 1, 1] : [shape[0], RANK];
    const size = (s: number[]): number => s.reduce((a, b) => a * b, 1);
    lora[module] = {
      a: randomArray(size(aShape), random, -0.5, 0.5),
      aShape,
      b: randomArray(size(bShape), random, -0.5, 0.5),
      bShape,
    };
  }
  return lora;
}

/** The checkpoint with W + Σ scale·B·A (float64 sums) in place of W, written as a copy of `dir`. */
async function mergedCopy(
  dir: string,
  base: Record<string, HostTensor>,
  terms: readonly { lora: LoraWeights; scale: number }[],
): Promise<string> {
  const out = await tempDir('velodiff-merged-');
  dirs.push(out);
  await cp(dir, out, { recursive: true });
  const tensors: Record<string, TensorToWrite> = {};
  for (const [name, t] of Object.entries(base)) {
    if (t.dtype !== 'float32') continue;
    tensors[name] = { dtype: 'F32', shape: [...t.shape], data: t.data as Float32Array };
  }
  for (const { lora, scale } of terms) {
    for (const [module, { a, b, aShape }] of Object.entries(lora)) {
      const w = base[`${module}.weight`];
      const out = w.shape[0];
      const cols = (w.data as Float32Array).length / out;
      const rank = aShape[0];
      const merged = Float64Array.from((tensors[`${module}.weight`].data as Float32Array) ?? w.data);
      for (let o = 0; o < out; o++) {
        for (let c = 0; c < cols; c++) {
          let sum = 0;
          for (let k = 0; k < rank; k++) sum += b[o * rank + k] * a[k * cols + c];
          merged[o * cols + c] += scale * sum;
        }
      }
      tensors[`${module}.weight`] = { dtype: 'F32', shape: [...w.shape], data: Float32Array.from(merged) };
    }
  }
  await writeSafetensors(await safetensorsIn(out), tensors);
  return out;
}

function unetInputs(): Record<string, HostTensor> {
  return {
    sample: randomTensor([2, 4, 8, 8], random),
    timestep: hostTensor('float32', [2], Float32Array.of(999 * random(), 999 * random())),
    encoder_hidden_states: randomTensor([2, 5, 16], random),
  };
}

const idsOf = (rows: number[][]): HostTensor =>
  hostTensor('int64', [rows.length, rows[0].length], BigInt64Array.from(rows.flat().map(BigInt)));
const textInputs = (): Record<string, HostTensor> => ({
  input_ids: idsOf([
    [512, 40, 41, 42, 513, 513],
    [512, 300, 513, 513, 513, 513],
  ]),
});

const TOLERANCE = { atol: 1e-5, rtol: 1e-4 };

function assertLoraMatches(actual: HostTensor, expected: HostTensor, base: HostTensor, what: string): void {
  const a = actual.data as Float32Array;
  const e = expected.data as Float32Array;
  const { maxAbsError } = assertClose(a, e, { ...TOLERANCE, what: `seed ${seed}: ${what}` });
  // The LoRA must change the output far beyond the tolerance, or the comparison proves nothing.
  const effect = maxAbs((base.data as Float32Array).map((v, i) => v - e[i]));
  assert.ok(effect > 100 * TOLERANCE.atol, `${what}: the LoRA changes the output by only ${effect}`);
  process.stderr.write(
    `# ${what}: max |diff| ${maxAbsError.toExponential(2)} (LoRA effect ${effect.toFixed(3)})\n`,
  );
}

describe('LoRA on UNet2DConditionModel', () => {
  it('diffusers file (unet.…lora_A/B): switchable, re-weighted, fused, unfused and unloaded match merged weights', async () => {
    const lora = loraFor(unetBase, UNET_TARGETS);
    const dir = await tempDir();
    dirs.push(dir);
    const file = await writeDiffusers(join(dir, 'unet-lora.safetensors'), lora, { prefix: 'unet' });
    const unet = await UNet2DConditionModel.fromPretrained(join(sd.dir, 'unet'), { runtime });
    const merged1 = await UNet2DConditionModel.fromPretrained(
      await mergedCopy(join(sd.dir, 'unet'), unetBase, [{ lora, scale: 1 }]),
      { runtime },
    );
    const merged07 = await UNet2DConditionModel.fromPretrained(
      await mergedCopy(join(sd.dir, 'unet'), unetBase, [{ lora, scale: 0.7 }]),
      { runtime },
    );
    try {
      const inputs = unetInputs();
      const base = (await unet.forward(inputs)).sample;
      const loaded = await unet.loadLoraWeights(file, { adapterName: 'style' });
      assert.deepEqual([...loaded.modules].sort(), [...UNET_TARGETS].sort());
      assert.deepEqual(loaded.ignored, []);
      const expected1 = (await merged1.forward(inputs)).sample;
      const expected07 = (await merged07.forward(inputs)).sample;
      assertLoraMatches(
        (await unet.forward(inputs)).sample,
        expected1,
        base,
        'UNet LoRA, switchable, weight 1',
      );
      unet.adapters.setAdapters('style', 0.7);
      assertLoraMatches(
        (await unet.forward(inputs)).sample,
        expected07,
        base,
        'UNet LoRA, switchable, weight 0.7',
      );
      unet.adapters.fuse();
      assert.deepEqual(unet.adapters.fused, ['style']);
      assertLoraMatches((await unet.forward(inputs)).sample, expected07, base, 'UNet LoRA, fused at 0.7');
      unet.adapters.unfuse();
      unet.adapters.setAdapters('style', 1);
      assertLoraMatches((await unet.forward(inputs)).sample, expected1, base, 'UNet LoRA, unfused, weight 1');
      unet.adapters.unload();
      assert.deepEqual((await unet.forward(inputs)).sample.data, base.data);
    } finally {
      await unet.close();
      await merged1.close();
      await merged07.close();
    }
  });

  it('a kohya file with alpha equals the PEFT folder with lora_alpha / r and the merged weights at alpha/r', async () => {
    const lora = loraFor(unetBase, UNET_TARGETS);
    const dir = await tempDir();
    dirs.push(dir);
    const alpha = 3;
    const alphas = Object.fromEntries(UNET_TARGETS.map((m) => [m, alpha]));
    const kohya = await writeKohya(join(dir, 'kohya.safetensors'), lora, alphas);
    const peft = await writePeft(join(dir, 'peft'), lora, { r: RANK, lora_alpha: alpha });
    const unet = await UNet2DConditionModel.fromPretrained(join(sd.dir, 'unet'), { runtime });
    const merged = await UNet2DConditionModel.fromPretrained(
      await mergedCopy(join(sd.dir, 'unet'), unetBase, [{ lora, scale: alpha / RANK }]),
      { runtime },
    );
    try {
      const inputs = unetInputs();
      const base = (await unet.forward(inputs)).sample;
      const expected = (await merged.forward(inputs)).sample;
      const k = await unet.loadLoraWeights(kohya, { adapterName: 'kohya' });
      assert.equal(k.format, 'kohya');
      assert.deepEqual(k.alphaOverRank, [alpha / RANK]);
      // kohya flattens `down_blocks.0.attentions.0.proj_in` to `down_blocks_0_attentions_0_proj_in`.
      assert.deepEqual([...k.modules].sort(), [...UNET_TARGETS].sort());
      const p = await unet.loadLoraWeights(peft, { adapterName: 'peft' });
      assert.equal(p.format, 'peft');
      unet.adapters.setAdapters('kohya');
      const viaKohya = (await unet.forward(inputs)).sample;
      unet.adapters.setAdapters('peft');
      const viaPeft = (await unet.forward(inputs)).sample;
      assertClose(viaKohya.data as Float32Array, viaPeft.data as Float32Array, {
        atol: 1e-6,
        rtol: 1e-6,
        what: `seed ${seed}: kohya vs PEFT`,
      });
      assertLoraMatches(viaKohya, expected, base, `kohya LoRA (alpha ${alpha}, r ${RANK})`);
    } finally {
      await unet.close();
      await merged.close();
    }
  });

  it('reports keys that match no module, and rejects a file of which nothing applies', async () => {
    const lora = loraFor(unetBase, ['conv_in']);
    const stray = loraFor(unetBase, ['conv_in']).conv_in;
    const dir = await tempDir();
    dirs.push(dir);
    const f32 = (shape: number[], data: Float32Array): TensorToWrite => ({ dtype: 'F32', shape, data });
    const file = await writeDiffusers(
      join(dir, 'partial.safetensors'),
      lora,
      { prefix: 'unet' },
      {
        'unet.down_blocks.9.resnets.0.conv1.lora_A.weight': f32(stray.aShape, stray.a),
        'unet.down_blocks.9.resnets.0.conv1.lora_B.weight': f32(stray.bShape, stray.b),
        'text_encoder.text_model.encoder.layers.0.mlp.fc1.lora_A.weight': f32([1, 16], new Float32Array(16)),
        'text_encoder.text_model.encoder.layers.0.mlp.fc1.lora_B.weight': f32([32, 1], new Float32Array(32)),
      },
    );
    const unet = await UNet2DConditionModel.fromPretrained(join(sd.dir, 'unet'), { runtime });
    try {
      const loaded = await unet.loadLoraWeights(file);
      assert.deepEqual(loaded.modules, ['conv_in']);
      const reasons = new Map(loaded.ignored.map((i) => [i.key, i.reason]));
      assert.match(reasons.get('unet.down_blocks.9.resnets.0.conv1.lora_A.weight') ?? '', /no module/);
      assert.match(
        reasons.get('text_encoder.text_model.encoder.layers.0.mlp.fc1.lora_A.weight') ?? '',
        /text-encoder LoRA/,
      );
      const nothing = await writeKohya(join(dir, 'nothing.safetensors'), { 'no.such.module': stray });
      await assert.rejects(
        unet.loadLoraWeights(nothing),
        (e: unknown) => e instanceof FileFormatError && e.code === 'LORA_NO_MATCH',
      );
    } finally {
      await unet.close();
    }
  });
});

describe('LoRA on CLIP text encoders and the pipeline verbs', () => {
  it('CLIPTextModel.loadLoraWeights (kohya lora_te_) matches merged weights', async () => {
    const lora = loraFor(textBase, TEXT_TARGETS);
    const dir = await tempDir();
    dirs.push(dir);
    const tensors: Record<string, TensorToWrite> = {};
    for (const [module, t] of Object.entries(lora)) {
      const name = `lora_te_${module.replace(/\./g, '_')}`;
      tensors[`${name}.lora_down.weight`] = { dtype: 'F32', shape: t.aShape, data: t.a };
      tensors[`${name}.lora_up.weight`] = { dtype: 'F32', shape: t.bShape, data: t.b };
      tensors[`${name}.alpha`] = { dtype: 'F32', shape: [], data: Float32Array.of(1) };
    }
    const file = join(dir, 'te.safetensors');
    await writeSafetensors(file, tensors);
    const encoder = await CLIPTextModel.fromPretrained(join(sd.dir, 'text_encoder'), { runtime });
    const merged = await CLIPTextModel.fromPretrained(
      await mergedCopy(join(sd.dir, 'text_encoder'), textBase, [{ lora, scale: 1 / RANK }]),
      { runtime },
    );
    try {
      const inputs = textInputs();
      const base = (await encoder.forward(inputs)).last_hidden_state;
      const loaded = await encoder.loadLoraWeights(file);
      assert.deepEqual([...loaded.modules].sort(), [...TEXT_TARGETS].sort());
      const expected = (await merged.forward(inputs)).last_hidden_state;
      assertLoraMatches(
        (await encoder.forward(inputs)).last_hidden_state,
        expected,
        base,
        'text encoder LoRA (kohya)',
      );
    } finally {
      await encoder.close();
      await merged.close();
    }
  });

  it('StableDiffusionPipeline routes unet./text_encoder. keys, reports the rest, and fuses/unloads both', async () => {
    const unetLora = loraFor(unetBase, UNET_TARGETS.slice(0, 3));
    const textLora = loraFor(textBase, TEXT_TARGETS);
    const dir = await tempDir();
    dirs.push(dir);
    const te2 = textLora[TEXT_TARGETS[0]];
    const extra: Record<string, TensorToWrite> = {
      // SD has no second text encoder: reported, not routed.
      [`text_encoder_2.${TEXT_TARGETS[0]}.lora_A.weight`]: { dtype: 'F32', shape: te2.aShape, data: te2.a },
      [`text_encoder_2.${TEXT_TARGETS[0]}.lora_B.weight`]: { dtype: 'F32', shape: te2.bShape, data: te2.b },
      'unet.not_a_lora.weight': { dtype: 'F32', shape: [2], data: new Float32Array(2) },
    };
    for (const [module, t] of Object.entries(textLora)) {
      extra[`text_encoder.${module}.lora_A.weight`] = { dtype: 'F32', shape: t.aShape, data: t.a };
      extra[`text_encoder.${module}.lora_B.weight`] = { dtype: 'F32', shape: t.bShape, data: t.b };
    }
    const file = await writeDiffusers(join(dir, 'both.safetensors'), unetLora, { prefix: 'unet' }, extra);
    const pipe = await StableDiffusionPipeline.fromPretrained(sd.dir, { runtime });
    const mergedUnet = await UNet2DConditionModel.fromPretrained(
      await mergedCopy(join(sd.dir, 'unet'), unetBase, [{ lora: unetLora, scale: 0.5 }]),
      { runtime },
    );
    const mergedText = await CLIPTextModel.fromPretrained(
      await mergedCopy(join(sd.dir, 'text_encoder'), textBase, [{ lora: textLora, scale: 0.5 }]),
      { runtime },
    );
    try {
      const encoder = pipe.promptEncoder?.textEncoder;
      assert.ok(encoder);
      const uIn = unetInputs();
      const tIn = textInputs();
      const uBase = (await pipe.unet.forward(uIn)).sample;
      const tBase = (await encoder.forward(tIn)).last_hidden_state;
      const loaded = await pipe.loadLoraWeights(file, { adapterName: 'both' });
      assert.deepEqual(loaded.components, ['denoiser', 'text_encoder']);
      assert.deepEqual(
        loaded.ignored.map((i) => i.key).sort(),
        [
          `text_encoder_2.${TEXT_TARGETS[0]}.lora_A.weight`,
          `text_encoder_2.${TEXT_TARGETS[0]}.lora_B.weight`,
          'unet.not_a_lora.weight',
        ].sort(),
      );
      assert.equal(loaded.modules.length, 5);
      pipe.setAdapters('both', 0.5);
      const uExpected = (await mergedUnet.forward(uIn)).sample;
      const tExpected = (await mergedText.forward(tIn)).last_hidden_state;
      assertLoraMatches((await pipe.unet.forward(uIn)).sample, uExpected, uBase, 'pipeline LoRA: UNet');
      assertLoraMatches(
        (await encoder.forward(tIn)).last_hidden_state,
        tExpected,
        tBase,
        'pipeline LoRA: text encoder',
      );
      pipe.fuseLora();
      assert.deepEqual(pipe.unet.adapters.fused, ['both']);
      assert.deepEqual(encoder.adapters.fused, ['both']);
      assertLoraMatches(
        (await encoder.forward(tIn)).last_hidden_state,
        tExpected,
        tBase,
        'pipeline LoRA: text encoder fused',
      );
      pipe.unfuseLora();
      assert.deepEqual(encoder.adapters.fused, []);
      assert.throws(
        () => pipe.setAdapters('nope'),
        (e: unknown) => e instanceof OptionError && e.code === 'ADAPTER_UNKNOWN',
      );
      pipe.unloadLoraWeights();
      assert.deepEqual(pipe.unet.adapters.loaded, []);
      assert.deepEqual(encoder.adapters.loaded, []);
      assert.deepEqual((await encoder.forward(tIn)).last_hidden_state.data, tBase.data);
    } finally {
      await pipe.close();
      await mergedUnet.close();
      await mergedText.close();
    }
  });
});

describe('Flash Diffusion on SD and SDXL pipelines', () => {
  it('useFlashDiffusion: LoRA fused at its own alpha/r, LCM from the folder config, 4 steps, guidance 0', async () => {
    const dir = await tempDir();
    dirs.push(dir);
    const lora = loraFor(unetBase, UNET_TARGETS.slice(0, 2));
    // flash-sd's file: unet.<path>.lora.down/up.weight, no alpha tensors (alpha = r, scale 1).
    const file = await writeDiffusers(join(dir, 'pytorch_lora_weights.safetensors'), lora, {
      prefix: 'unet',
      spelling: 'lora.down',
    });
    const pipe = await StableDiffusionPipeline.fromPretrained(sd.dir, { runtime });
    try {
      const { adapter, runOptions } = await pipe.useFlashDiffusion(file);
      assert.deepEqual(runOptions, { numInferenceSteps: 4, guidanceScale: 0 });
      assert.equal(adapter.adapterName, 'flash');
      assert.deepEqual(adapter.alphaOverRank, [1]);
      assert.deepEqual(pipe.unet.adapters.fused, ['flash']);
      assert.ok(pipe.scheduler instanceof LCMScheduler);
      // The folder's training schedule carried over (DDIM config of the tiny pipeline).
      assert.equal(pipe.scheduler.config.num_train_timesteps, 1000);
      const out = await pipe.run({
        prompt: 'a cat',
        ...runOptions,
        height: 16,
        width: 16,
        seed: 1,
        outputType: 'latent',
      });
      assert.deepEqual(out.timesteps, [999, 759, 499, 259]);
    } finally {
      await pipe.close();
    }
  });

  it('SDXL: the Flash LoRA goes to the UNet, text encoders are untouched', async () => {
    const xl = await tinySdxlPipeline();
    dirs.push(xl.dir);
    const xlBase = await readAllTensors(await safetensorsIn(join(xl.dir, 'unet')));
    const lora = loraFor(xlBase, ['down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q']);
    const dir = await tempDir();
    dirs.push(dir);
    const file = await writeDiffusers(join(dir, 'flash-sdxl.safetensors'), lora, { prefix: 'unet' });
    const pipe = await StableDiffusionXLPipeline.fromPretrained(xl.dir, { runtime });
    try {
      const { runOptions } = await pipe.useFlashDiffusion(file);
      assert.deepEqual(runOptions, { numInferenceSteps: 4, guidanceScale: 0 });
      assert.ok(pipe.scheduler instanceof LCMScheduler);
      assert.deepEqual(pipe.unet.adapters.fused, ['flash']);
      for (const encoder of pipe.promptEncoders) assert.deepEqual(encoder.textEncoder.adapters.loaded, []);
      pipe.scheduler.setTimesteps(4);
      assert.deepEqual([...pipe.scheduler.timesteps], [999, 759, 499, 259]);
    } finally {
      await pipe.close();
    }
  });
});
