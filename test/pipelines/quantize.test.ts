/**
 * The pipelines' `quantize` load option: it reaches the denoiser and the text encoders (their int8
 * modules are the model classes' own at `quantize: 'int8'`), not the VAE; a bad value is an OptionError
 * naming the entry point; and a pipeline folder written by `quantizeFolder` loads with no option to the
 * same run, bit for bit, as the float folder loaded with `quantize: 'int8'`.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';

import { randomUNetFolder } from '../../bench/random-unet.js';
import { OptionError } from '../../src/errors.js';
import { SafetensorsFile } from '../../src/io/safetensors.js';
import { AutoencoderKL } from '../../src/models/autoencoder-kl.js';
import type { QuantizeOption } from '../../src/models/int8.js';
import { PixArtTransformer2DModel } from '../../src/models/pixart-transformer.js';
import { quantizeFolder } from '../../src/models/quantize-folder.js';
import { UNet2DConditionModel } from '../../src/models/unet-2d-condition.js';
import { ClipPromptEncoder } from '../../src/pipelines/clip-prompt.js';
import {
  DiffusionPipeline,
  PixArtPipeline,
  StableDiffusionPipeline,
  StableDiffusionXLPipeline,
} from '../../src/pipelines/index.js';
import type { AnyPipeline } from '../../src/pipelines/index.js';
import { loadT5PromptEncoder } from '../../src/pipelines/prompt.js';
import type { HostTensor } from '../../src/runtime/host-tensor.js';
import { Runtime } from '../../src/runtime/runtime.js';
import { tinyPixArtPipeline } from '../fixtures/tiny-pixart-pipeline.js';
import { tinySdPipeline, tinySdxlPipeline } from '../fixtures/tiny-sd-pipelines.js';
import { randomTensor } from '../helpers.js';
import { tempDir } from '../io/craft.js';
import { seededUniform, testSeed } from '../random.js';

const runtime = new Runtime({ worker: false, threads: 1 });
after(() => runtime.dispose());
const random = seededUniform(testSeed('test/pipelines/quantize.test.ts'));
const quiet = { runtime, onWarning: () => {} };

function sorted(modules: ReadonlySet<string> | undefined): string[] | undefined {
  return modules && [...modules].sort();
}

function sameBytes(a: HostTensor, b: HostTensor): boolean {
  assert.deepEqual(a.shape, b.shape);
  const bytes = (t: HostTensor) => Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength);
  return bytes(a).equals(bytes(b));
}

/** The pipeline's VAE decodes as the float VAE of `dir` does, bit for bit. */
async function assertFloatVae(pipe: AnyPipeline, dir: string): Promise<void> {
  const vae = await AutoencoderKL.fromPretrained(join(dir, 'vae'), quiet);
  try {
    const z = randomTensor([1, vae.config.latentChannels, 2, 2], random);
    assert.ok(pipe.vae);
    assert.ok(
      sameBytes((await pipe.vae.decode(z)).sample, (await vae.decode(z)).sample),
      'the VAE stays float32',
    );
  } finally {
    await vae.close();
  }
}

describe("pipelines' quantize option", () => {
  it('PixArt: the transformer and T5 are int8, the VAE float', async () => {
    const dir = await tinyPixArtPipeline();
    const pipe = await DiffusionPipeline.fromPretrained(dir, { ...quiet, quantize: 'int8' });
    const float = await PixArtPipeline.fromPretrained(dir, quiet);
    const transformer = await PixArtTransformer2DModel.fromPretrained(join(dir, 'transformer'), {
      ...quiet,
      quantize: 'int8',
    });
    const t5 = await loadT5PromptEncoder(dir, runtime, { quantize: 'int8', onWarning: () => {} });
    try {
      assert.ok(pipe instanceof PixArtPipeline);
      assert.ok((transformer.int8Modules?.size ?? 0) > 0);
      assert.deepEqual(sorted(pipe.transformer.int8Modules), sorted(transformer.int8Modules));
      assert.equal(float.transformer.int8Modules, undefined);
      // The T5 encoder sits behind the PromptEncoder interface: its embeddings tell int8 from float.
      const prompts = ['a red heart'];
      const embeds = (await pipe.promptEncoder!.encode(prompts, 8)).embeds;
      assert.ok(sameBytes(embeds, (await t5.encode(prompts, 8)).embeds), 'the int8 T5 encoder');
      assert.ok(
        !sameBytes(embeds, (await float.promptEncoder!.encode(prompts, 8)).embeds),
        'not the float one',
      );
      await assertFloatVae(pipe, dir);
    } finally {
      await Promise.all([pipe.close(), float.close(), transformer.close(), t5.close()]);
    }
  });

  it('SD and SDXL: the UNet and every CLIP encoder are int8, the VAE float', async () => {
    const sd = await tinySdPipeline();
    const sdxl = await tinySdxlPipeline();
    const pipe = await DiffusionPipeline.fromPretrained(sd.dir, { ...quiet, quantize: 'int8' });
    const xl = await StableDiffusionXLPipeline.fromPretrained(sdxl.dir, { ...quiet, quantize: 'int8' });
    const unet = await UNet2DConditionModel.fromPretrained(join(sd.dir, 'unet'), {
      ...quiet,
      quantize: 'int8',
    });
    try {
      assert.ok(pipe instanceof StableDiffusionPipeline);
      assert.ok((unet.int8Modules?.size ?? 0) > 0);
      assert.deepEqual(sorted(pipe.unet.int8Modules), sorted(unet.int8Modules));
      assert.ok((pipe.promptEncoder?.textEncoder.int8Modules?.size ?? 0) > 0);
      assert.ok((xl.unet.int8Modules?.size ?? 0) > 0);
      assert.equal(xl.promptEncoders.length, 2);
      for (const encoder of xl.promptEncoders) assert.ok((encoder.textEncoder.int8Modules?.size ?? 0) > 0);
      await assertFloatVae(pipe, sd.dir);
    } finally {
      await Promise.all([pipe.close(), xl.close(), unet.close()]);
    }
  });

  it('a value other than int8 is an OptionError naming where it was given', async () => {
    const pixart = await tinyPixArtPipeline();
    const { dir: sd } = await tinySdPipeline();
    const bad = 'int4' as QuantizeOption;
    const fails = (where: string) => (e: unknown) => {
      assert.ok(e instanceof OptionError, String(e));
      assert.match(
        e.message,
        new RegExp(`^${where.replace('.', '\\.')}: quantize must be 'int8' or absent, got "int4"`),
      );
      return true;
    };
    await assert.rejects(
      DiffusionPipeline.fromPretrained(pixart, { ...quiet, quantize: bad }),
      fails('DiffusionPipeline.fromPretrained'),
    );
    await assert.rejects(
      PixArtPipeline.fromPretrained(pixart, { ...quiet, quantize: bad }),
      fails('PixArtPipeline.fromPretrained'),
    );
    await assert.rejects(
      StableDiffusionPipeline.fromPretrained(sd, { ...quiet, quantize: bad }),
      fails('StableDiffusionPipeline.fromPretrained'),
    );
    await assert.rejects(
      loadT5PromptEncoder(pixart, runtime, { quantize: bad }),
      fails('loadT5PromptEncoder'),
    );
    await assert.rejects(
      ClipPromptEncoder.fromPretrained(
        sd,
        { tokenizer: 'tokenizer', textEncoder: 'text_encoder' },
        'CLIPTextModel',
        {
          runtime,
          quantize: bad,
        },
      ),
      fails('ClipPromptEncoder.fromPretrained'),
    );
  });
});

describe('a pipeline folder written by quantizeFolder', () => {
  for (const kind of ['PixArt', 'SD'] as const) {
    it(`${kind}: loads with no option and runs as the float folder loaded with quantize int8, bit for bit`, async () => {
      const source = kind === 'PixArt' ? await tinyPixArtPipeline() : (await tinySdPipeline()).dir;
      const out = join(await tempDir(), 'int8');
      await quantizeFolder(source, out, quiet);
      const folder = await DiffusionPipeline.fromPretrained(out, quiet);
      const atLoad = await DiffusionPipeline.fromPretrained(source, { ...quiet, quantize: 'int8' });
      const float = await DiffusionPipeline.fromPretrained(source, quiet);
      try {
        const run = (pipe: AnyPipeline) =>
          pipe.run({ prompt: 'a red heart', numInferenceSteps: 2, seed: 7, outputType: 'latent' });
        const latents = (await run(folder)).latents;
        assert.ok(sameBytes(latents, (await run(atLoad)).latents), 'the same int8 run');
        assert.ok(!sameBytes(latents, (await run(float)).latents), 'not the float run');
      } finally {
        await Promise.all([folder.close(), atLoad.close(), float.close()]);
      }
    });
  }
});

describe('a UNet folder with int8 convolutions, written by quantizeFolder', () => {
  it('lists its 3×3 convolutions, stores them I8 [out, in, 3, 3], and runs as quantize int8 at load, bit for bit', async () => {
    // 64 channels: wide enough for int8 convolutions (INT8_CONV_MIN_CHANNELS), small enough for a test.
    const { dir } = await randomUNetFolder(
      {
        levels: 1,
        layersPerBlock: 1,
        blockOutChannels: [64],
        attentionHeadDim: 2,
        crossAttentionDim: 32,
        normNumGroups: 8,
      },
      { cacheDir: await tempDir() },
    );
    const out = join(await tempDir(), 'unet-int8');
    await quantizeFolder(dir, out, quiet);
    const config = JSON.parse(await readFile(join(out, 'config.json'), 'utf8')) as {
      quantization_config: { modules: string[] };
    };
    const convs = config.quantization_config.modules.filter((m) => /\.conv[12]$/.test(m));
    assert.equal(convs.length, 10, convs.join(', '));
    const file = await SafetensorsFile.open(join(out, 'diffusion_pytorch_model.safetensors'));
    assert.deepEqual(file.info(`${convs[0]}.weight`), {
      ...file.info(`${convs[0]}.weight`),
      dtype: 'I8',
      shape: [64, 64, 3, 3],
    });
    assert.deepEqual(file.info(`${convs[0]}.weight_scale`).shape, [64]);
    await file.close();
    const folder = await UNet2DConditionModel.fromPretrained(out, quiet);
    const atLoad = await UNet2DConditionModel.fromPretrained(dir, { ...quiet, quantize: 'int8' });
    try {
      assert.deepEqual(sorted(folder.int8Modules), sorted(atLoad.int8Modules));
      const inputs = {
        sample: randomTensor([2, 4, 6, 8], random),
        timestep: randomTensor([2], random),
        encoder_hidden_states: randomTensor([2, 5, 32], random),
      };
      const a = (await folder.forward(inputs)).sample;
      assert.ok(sameBytes(a, (await atLoad.forward(inputs)).sample), 'the same int8 model');
    } finally {
      await Promise.all([folder.close(), atLoad.close()]);
    }
  });
});
