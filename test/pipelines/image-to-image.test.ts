/**
 * Image-to-image on PixArt (velodiff's extension: diffusers has no PixArt img2img pipeline) with the
 * golden tiny PixArt folder: timesteps from strength and the noised start latents against diffusers'
 * formulas in float64; the image tensor conventions; and reading PNG files into that tensor.
 */
import assert from 'node:assert/strict';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

import { PNG } from 'pngjs';

import { decodePng, readImageFile } from '../../src/io/image.js';
import { encodePng } from '../../src/io/png.js';
import { PixArtPipeline, preprocessImage } from '../../src/pipelines/index.js';
import { TorchGenerator } from '../../src/random/torch-generator.js';
import type { HostTensor } from '../../src/runtime/host-tensor.js';
import { hostTensor } from '../../src/runtime/host-tensor.js';
import { Runtime } from '../../src/runtime/runtime.js';
import { assertMaxAbsError, maxAbs } from '../compare.js';
import { randomTensor, readAllTensors } from '../helpers.js';
import { seededUniform, testSeed } from '../random.js';

const CASE = fileURLToPath(new URL('../golden/pipelines/pipeline_pixart_alpha_ddim/', import.meta.url));
const runtime = new Runtime({ worker: false, threads: 1 });
after(() => runtime.dispose());

describe('PixArt image-to-image', () => {
  it('runs the last int(steps · strength) timesteps from add_noise(scaling · VAE sample, ε)', async (t) => {
    const pipe = await PixArtPipeline.fromPretrained(`${CASE}pipeline`, { runtime });
    const inputs = await readAllTensors(`${CASE}inputs.safetensors`);
    const fed: HostTensor[] = [];
    const step = pipe.transformer.step.bind(pipe.transformer);
    pipe.transformer.step = async (feeds, options) => {
      fed.push(feeds.hidden_states);
      return step(feeds, options);
    };
    const image = randomTensor([1, 3, 16, 16], seededUniform(testSeed('pixart img2img image')), 0, 1);
    const out = await pipe.run({
      promptEmbeds: inputs.prompt_embeds,
      promptAttentionMask: inputs.prompt_attention_mask,
      negativePromptEmbeds: inputs.negative_prompt_embeds,
      negativePromptAttentionMask: inputs.negative_prompt_attention_mask,
      image,
      strength: 0.5,
      numInferenceSteps: 4,
      seed: 5,
    });
    // DDIM leading, 4 steps of 1000: 750 500 250 0; int(4 · 0.5) = 2 run.
    assert.deepEqual(out.timesteps, [250, 0]);
    assert.equal(fed.length, 2);
    assert.deepEqual(out.images?.shape, [1, 3, 16, 16]);
    const generator = new TorchGenerator(5);
    const posterior = await pipe.vae!.encode(
      hostTensor(
        'float32',
        image.shape,
        (image.data as Float32Array).map((v) => 2 * v - 1),
      ),
    );
    const shape = posterior.latentMean.shape;
    const eps = generator.randn(shape);
    const noise = generator.randn(shape);
    let alphaBar = 1;
    for (let s = 0; s <= 250; s++) alphaBar *= 1 - (0.0001 + (s / 999) * (0.02 - 0.0001));
    const mean = posterior.latentMean.data as Float32Array;
    const std = posterior.latentStd.data as Float32Array;
    const start = Array.from(mean, (m, i) => {
      const x0 = 0.18215 * (m + std[i] * eps[i]);
      return Math.sqrt(alphaBar) * x0 + Math.sqrt(1 - alphaBar) * noise[i];
    });
    const first = (fed[0].data as Float32Array).subarray(0, start.length);
    const measured = assertMaxAbsError(first, start, 1e-5 * Math.max(1, maxAbs(start)), 'start latents');
    t.diagnostic(`PixArt start latents vs float64 formula: ${measured.maxAbsError.toExponential(2)}`);
    await assert.rejects(
      pipe.run({
        promptEmbeds: inputs.prompt_embeds,
        negativePromptEmbeds: inputs.negative_prompt_embeds,
        image,
        useResolutionBinning: true,
      }),
      /image sets the size/,
    );
    await pipe.close();
  });

  it('takes [0, 1] images to 2x − 1, keeps [-1, 1] ones and latent-channel tensors, and checks sizes', () => {
    const vae = { vaeScaleFactor: 8, latentChannels: 4, imageChannels: 3 };
    const unit = hostTensor('float32', [3, 8, 8], new Float32Array(192).fill(0.25));
    const a = preprocessImage(unit, vae);
    assert.deepEqual(a.tensor.shape, [1, 3, 8, 8]);
    assert.equal((a.tensor.data as Float32Array)[0], -0.5);
    const signed = hostTensor('float32', [1, 3, 8, 8], new Float32Array(192).fill(-0.25));
    assert.equal((preprocessImage(signed, vae).tensor.data as Float32Array)[0], -0.25);
    assert.equal(
      preprocessImage(hostTensor('float32', [1, 4, 2, 2], new Float32Array(16)), vae).isLatent,
      true,
    );
    assert.throws(
      () => preprocessImage(hostTensor('float32', [1, 3, 12, 8], new Float32Array(288)), vae),
      /multiples of the VAE factor 8, got 12×8; crop or resize it to 8×8/,
    );
  });
});

describe('readImageFile', () => {
  it('decodes RGB and RGBA PNGs, all filter types (pngjs writes them), to [1, 3, H, W] in [0, 1]', async () => {
    const random = seededUniform(testSeed('png decode'));
    const dir = await mkdtemp(join(tmpdir(), 'velodiff-png-'));
    for (const [colorType, channels] of [
      [2, 3],
      [6, 4],
    ] as const) {
      const width = 7;
      const height = 5;
      const png = new PNG({ width, height, colorType, inputColorType: 6, inputHasAlpha: true });
      for (let i = 0; i < width * height * 4; i++) png.data[i] = Math.floor(random() * 256);
      // Filter type −1: pngjs picks the best filter per row, so several of the five appear.
      const bytes = PNG.sync.write(png, { colorType, filterType: -1 });
      const path = join(dir, `x${channels}.png`);
      await writeFile(path, bytes);
      const tensor = await readImageFile(path);
      assert.deepEqual(tensor.shape, [1, 3, height, width]);
      // pngjs's decoder is the reference (its encoder blends alpha away for RGB output).
      const reference = PNG.sync.read(bytes).data;
      const data = tensor.data as Float32Array;
      for (let i = 0; i < width * height; i++) {
        for (let c = 0; c < 3; c++)
          assert.equal(
            data[c * width * height + i],
            Math.fround(reference[4 * i + c] / 255),
            `pixel ${i} channel ${c}`,
          );
      }
    }
    // velodiff's own encoder round-trips.
    const rgb = Uint8Array.from({ length: 4 * 3 * 3 }, () => Math.floor(random() * 256));
    assert.deepEqual(decodePng(encodePng(rgb, 4, 3))?.rgb, rgb);
  });
});
