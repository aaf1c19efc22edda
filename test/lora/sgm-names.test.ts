/**
 * kohya LoRA files in the original SGM/ldm UNet naming (`lora_unet_input_blocks_4_1_…`), on the tiny
 * SD 1.x and SDXL UNets. The SGM name of every LoRA-able module is written by this test's own
 * diffusers → SGM table — diffusers' scripts/convert_diffusers_to_original_sdxl.py generalised to the
 * config's layers_per_block and block types — and must come back as that module; the same LoRA in
 * SGM and in diffusers-style kohya names must give the same UNet output.
 */
import assert from 'node:assert/strict';
import { readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { FileFormatError } from '../../src/errors.js';
import { WeightStore } from '../../src/io/diffusers.js';
import { writeSafetensors, type TensorToWrite } from '../../src/io/safetensors.js';
import { readLoraFile } from '../../src/lora/format.js';
import { unetLayoutOfModules } from '../../src/lora/sgm-names.js';
import { UNet2DConditionModel } from '../../src/models/unet-2d-condition.js';
import type { HostTensor } from '../../src/runtime/host-tensor.js';
import { hostTensor } from '../../src/runtime/host-tensor.js';
import { assertExactlyEqual, maxAbs } from '../compare.js';
import { tinySdPipeline, tinySdxlPipeline } from '../fixtures/tiny-sd-pipelines.js';
import { randomArray, randomTensor, testRuntime } from '../helpers.js';
import { seededUniform, testSeed } from '../random.js';
import type { LoraWeights } from './fixture.js';
import { tempDir, writeKohya } from './fixture.js';

const seed = testSeed('test/lora/sgm-names.test.ts');
const random = seededUniform(seed);
const runtime = testRuntime();
const RANK = 2;

interface UNetRawConfig {
  layers_per_block: number;
  down_block_types: string[];
  up_block_types: string[];
}

/**
 * diffusers module path → SGM module path, as convert_diffusers_to_original_sdxl.py's
 * `unet_conversion_map*` tables, with its hard-coded 3 levels × 2 layers read from the config.
 */
function sgmTables(config: UNetRawConfig): { prefixes: [string, string][]; resnet: [string, string][] } {
  const perLevel = config.layers_per_block + 1;
  const levels = config.down_block_types.length;
  const prefixes: [string, string][] = [
    ['time_embedding.linear_1.', 'time_embed.0.'],
    ['time_embedding.linear_2.', 'time_embed.2.'],
    ['conv_in.', 'input_blocks.0.0.'],
    ['conv_norm_out.', 'out.0.'],
    ['conv_out.', 'out.2.'],
    ['add_embedding.linear_1.', 'label_emb.0.0.'],
    ['add_embedding.linear_2.', 'label_emb.0.2.'],
    ['mid_block.attentions.0.', 'middle_block.1.'],
    ['mid_block.resnets.0.', 'middle_block.0.'],
    ['mid_block.resnets.1.', 'middle_block.2.'],
  ];
  for (let i = 0; i < levels; i++) {
    const downAttention = config.down_block_types[i].startsWith('CrossAttn');
    const upAttention = config.up_block_types[i].startsWith('CrossAttn');
    for (let j = 0; j < config.layers_per_block; j++) {
      prefixes.push([`down_blocks.${i}.resnets.${j}.`, `input_blocks.${perLevel * i + j + 1}.0.`]);
      if (downAttention)
        prefixes.push([`down_blocks.${i}.attentions.${j}.`, `input_blocks.${perLevel * i + j + 1}.1.`]);
    }
    for (let j = 0; j < perLevel; j++) {
      prefixes.push([`up_blocks.${i}.resnets.${j}.`, `output_blocks.${perLevel * i + j}.0.`]);
      if (upAttention)
        prefixes.push([`up_blocks.${i}.attentions.${j}.`, `output_blocks.${perLevel * i + j}.1.`]);
    }
    if (i < levels - 1) {
      prefixes.push([`down_blocks.${i}.downsamplers.0.conv.`, `input_blocks.${perLevel * (i + 1)}.0.op.`]);
      // The upsampler follows the last resnet (and its transformer) of the level's last output block.
      prefixes.push([
        `up_blocks.${i}.upsamplers.0.`,
        `output_blocks.${perLevel * i + perLevel - 1}.${upAttention ? 2 : 1}.`,
      ]);
    }
  }
  const resnet: [string, string][] = [
    ['.norm1.', '.in_layers.0.'],
    ['.conv1.', '.in_layers.2.'],
    ['.norm2.', '.out_layers.0.'],
    ['.conv2.', '.out_layers.3.'],
    ['.time_emb_proj.', '.emb_layers.1.'],
    ['.conv_shortcut.', '.skip_connection.'],
  ];
  return { prefixes, resnet };
}

/** The kohya SGM name (`input_blocks_4_1_transformer_blocks_0_attn1_to_q`) of a diffusers module. */
function sgmKohyaName(module: string, tables: ReturnType<typeof sgmTables>): string {
  let path = `${module}.`;
  if (path.includes('.resnets.')) for (const [hf, sd] of tables.resnet) path = path.replace(hf, sd);
  const prefix = tables.prefixes.find(([hf]) => path.startsWith(hf));
  assert.ok(prefix, `no SGM name for ${module}`);
  path = prefix[1] + path.slice(prefix[0].length);
  return path.slice(0, -1).replace(/\./g, '_');
}

/** The UNet's modules a LoRA can target: Linear [out, in] and Conv2d [out, in, kh, kw] weights. */
function loraModules(store: WeightStore): string[] {
  return store
    .names()
    .filter((name) => name.endsWith('.weight') && [2, 4].includes(store.info(name).shape.length))
    .map((name) => name.slice(0, -'.weight'.length));
}

function randomLora(store: WeightStore, modules: readonly string[]): LoraWeights {
  const lora: LoraWeights = {};
  for (const module of modules) {
    const shape = store.info(`${module}.weight`).shape;
    const aShape = shape.length === 4 ? [RANK, shape[1], shape[2], shape[3]] : [RANK, shape[1]];
    const bShape = shape.length === 4 ? [shape[0], RANK, 1, 1] : [shape[0], RANK];
    const size = (s: number[]): number => s.reduce((a, b) => a * b, 1);
    lora[module] = {
      a: randomArray(size(aShape), random, -0.3, 0.3),
      aShape,
      b: randomArray(size(bShape), random, -0.3, 0.3),
      bShape,
    };
  }
  return lora;
}

/** The same LoRA as `writeKohya` writes it, with SGM module names. */
async function writeSgmKohya(
  path: string,
  lora: LoraWeights,
  alphas: Readonly<Record<string, number>>,
  sgmName: (module: string) => string,
): Promise<Map<string, string>> {
  const tensors: Record<string, TensorToWrite> = {};
  const modules = new Map<string, string>();
  for (const [module, t] of Object.entries(lora)) {
    const name = `lora_unet_${sgmName(module)}`;
    modules.set(`${name}.lora_down.weight`, module);
    tensors[`${name}.lora_down.weight`] = { dtype: 'F32', shape: t.aShape, data: t.a };
    tensors[`${name}.lora_up.weight`] = { dtype: 'F32', shape: t.bShape, data: t.b };
    tensors[`${name}.alpha`] = { dtype: 'F32', shape: [], data: Float32Array.of(alphas[module]) };
  }
  await writeSafetensors(path, tensors);
  return modules;
}

interface Subject {
  name: string;
  dir: string;
  config: UNetRawConfig;
  /** SGM names the mapping must have met (the cases diffusers' stride rule or a typo would get wrong). */
  mustSee: readonly string[];
}

const subjects: Subject[] = [];
const dirs: string[] = [];

before(async () => {
  const sd = await tinySdPipeline();
  const xl = await tinySdxlPipeline();
  dirs.push(sd.dir, xl.dir, await tempDir());
  for (const [name, dir, mustSee] of [
    // SD 1.x: up block 0 has no attention, so its upsampler is output_blocks_2_1_conv.
    ['SD 1.x', sd.dir, ['output_blocks_2_1_conv', 'input_blocks_3_0_op', 'middle_block_1_proj_in']],
    // SDXL: down block 0 has no attention; up block 0 does, so its upsampler is output_blocks_2_2_conv.
    [
      'SDXL',
      xl.dir,
      ['output_blocks_2_2_conv', 'label_emb_0_0', 'input_blocks_4_1_transformer_blocks_0_attn1_to_q'],
    ],
  ] as const) {
    const unet = join(dir, 'unet');
    const config = JSON.parse(await readFile(join(unet, 'config.json'), 'utf8')) as UNetRawConfig;
    subjects.push({
      name,
      dir: unet,
      config,
      mustSee: [...mustSee, 'input_blocks_1_0_in_layers_2', 'input_blocks_4_0_emb_layers_1', 'time_embed_0'],
    });
  }
});
after(async () => {
  await Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true })));
});

describe('kohya LoRA files in SGM (ldm) UNet names', () => {
  it("reads the same levels from the UNet's module names as its config.json gives", async () => {
    for (const subject of subjects) {
      const store = await WeightStore.open(subject.dir);
      const unet = await UNet2DConditionModel.fromPretrained(subject.dir, { runtime });
      try {
        const modules = store.names().map((n) => n.slice(0, n.lastIndexOf('.')));
        const fromConfig = {
          down: unet.config.down.map((l) => [l.layers, l.attention !== undefined, l.addDownsample]),
          mid: unet.config.mid && unet.config.mid.attention !== undefined,
          up: unet.config.up.map((l) => [l.layers, l.attention !== undefined, l.addUpsample]),
        };
        const layout = unetLayoutOfModules(modules);
        assert.ok(layout, subject.name);
        assert.deepEqual(
          {
            down: layout.down.map((l) => [l.layers, Boolean(l.attention), l.addDownsample]),
            mid: layout.mid && Boolean(layout.mid.attention),
            up: layout.up.map((l) => [l.layers, Boolean(l.attention), l.addUpsample]),
          },
          fromConfig,
          subject.name,
        );
      } finally {
        await unet.close();
        await store.close();
      }
    }
  });

  it('maps the SGM name of every Linear and Conv2d module to that module', async () => {
    for (const subject of subjects) {
      const store = await WeightStore.open(subject.dir);
      try {
        const modules = loraModules(store);
        const tables = sgmTables(subject.config);
        const lora = randomLora(store, modules);
        const alphas = Object.fromEntries(modules.map((m) => [m, 1]));
        const path = join(dirs[2], `${subject.name.replace(/\W/g, '')}-sgm-all.safetensors`);
        const expected = await writeSgmKohya(path, lora, alphas, (m) => sgmKohyaName(m, tables));
        const sgmNames = [...expected.keys()].map((k) =>
          k.slice('lora_unet_'.length, -'.lora_down.weight'.length),
        );
        for (const name of subject.mustSee) assert.ok(sgmNames.includes(name), `${subject.name}: no ${name}`);
        assert.ok(
          sgmNames.every((n) => !/^(down_blocks|mid_block|up_blocks)_/.test(n)),
          `${subject.name}: a module kept its diffusers name`,
        );

        const contents = await readLoraFile(path, store);
        assert.equal(contents.format, 'kohya');
        assert.deepEqual(contents.ignored, [], subject.name);
        assert.equal(contents.pairs.length, modules.length, subject.name);
        for (const pair of contents.pairs) {
          assert.equal(pair.modulePath, expected.get(pair.down.name), `${subject.name}: ${pair.down.name}`);
        }
      } finally {
        await store.close();
      }
    }
  });

  it('names the SGM key and the blocks the UNet has when a block is not in it', async () => {
    const xl = subjects[1];
    const t = (shape: number[]): TensorToWrite => ({
      dtype: 'F32',
      shape,
      data: new Float32Array(shape.reduce((a, b) => a * b, 1)),
    });
    const path = join(dirs[2], 'sgm-unknown.safetensors');
    const store = await WeightStore.open(xl.dir);
    try {
      const toQ = store.info('down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight').shape;
      await writeSafetensors(path, {
        // SDXL's down block 0 (DownBlock2D) has no transformer: there is no input_blocks_1_1.
        'lora_unet_input_blocks_1_1_proj_in.lora_down.weight': t([RANK, 8]),
        'lora_unet_input_blocks_1_1_proj_in.lora_up.weight': t([8, RANK]),
        // Three levels of layers_per_block 2 end at input block 8.
        'lora_unet_input_blocks_12_0_in_layers_2.lora_down.weight': t([RANK, 16, 3, 3]),
        'lora_unet_input_blocks_12_0_in_layers_2.lora_up.weight': t([16, RANK, 1, 1]),
        'lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_z.lora_down.weight': t([RANK, toQ[1]]),
        'lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_z.lora_up.weight': t([toQ[0], RANK]),
      });
      const contents = await readLoraFile(path, store);
      assert.deepEqual(contents.pairs, []);
      const reasons = new Map(contents.ignored.map((i) => [i.key, i.reason]));
      assert.match(
        reasons.get('lora_unet_input_blocks_1_1_proj_in.lora_down.weight') ?? '',
        /'input_blocks_1_1_proj_in' is in SGM block 'input_blocks_1_1'.*input_blocks_1_0, input_blocks_2_0, input_blocks_3_0, input_blocks_4_0, input_blocks_4_1/,
      );
      assert.match(
        reasons.get('lora_unet_input_blocks_12_0_in_layers_2.lora_up.weight') ?? '',
        /'input_blocks_12_0'.*input_blocks_8_1\)/,
      );
      assert.match(
        reasons.get('lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_z.lora_down.weight') ?? '',
        /SGM name 'input_blocks_4_1_transformer_blocks_0_attn1_to_z' is diffusers' 'down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_z'.*no module/,
      );
    } finally {
      await store.close();
    }
    // A file of which nothing applies is an error that names its keys.
    const unet = await UNet2DConditionModel.fromPretrained(xl.dir, { runtime });
    try {
      await assert.rejects(unet.loadLoraWeights(path), (error: unknown) => {
        assert.ok(error instanceof FileFormatError && error.code === 'LORA_NO_MATCH', String(error));
        assert.match(error.message, /lora_unet_input_blocks_/);
        return true;
      });
    } finally {
      await unet.close();
    }
  });

  it('applies as the same LoRA in diffusers-style kohya names does', async () => {
    for (const subject of subjects) {
      const unet = await UNet2DConditionModel.fromPretrained(subject.dir, { runtime });
      const store = await WeightStore.open(subject.dir);
      try {
        const modules = loraModules(store);
        const lora = randomLora(store, modules);
        const alphas = Object.fromEntries(modules.map((m) => [m, 1 + Math.floor(3 * random())]));
        const tag = subject.name.replace(/\W/g, '');
        const sgm = join(dirs[2], `${tag}-sgm.safetensors`);
        const tables = sgmTables(subject.config);
        await writeSgmKohya(sgm, lora, alphas, (m) => sgmKohyaName(m, tables));
        const flat = await writeKohya(join(dirs[2], `${tag}-flat.safetensors`), lora, alphas);

        const batch = 2;
        const inputs: Record<string, HostTensor> = {
          sample: randomTensor([batch, unet.config.inChannels, 8, 8], random),
          timestep: hostTensor('float32', [batch], Float32Array.of(999 * random(), 999 * random())),
          encoder_hidden_states: randomTensor([batch, 5, unet.config.encoderHiddenSize], random),
        };
        const textTime = unet.config.textTime;
        if (textTime) {
          inputs.text_embeds = randomTensor(
            [batch, textTime.projectionInputDim - 6 * textTime.timeEmbedDim],
            random,
          );
          inputs.time_ids = hostTensor(
            'float32',
            [batch, 6],
            Float32Array.from({ length: batch * 6 }, (_, i) => [16, 16, 0, 0, 16, 16][i % 6]),
          );
        }
        const base = (await unet.forward(inputs)).sample.data as Float32Array;
        // One adapter at a time: the same graph then, so the outputs must agree bit for bit (two
        // adapters side by side differ by float rounding even when loaded from one file).
        const viaSgm = await unet.loadLoraWeights(sgm, { adapterName: 'sgm' });
        assert.deepEqual(viaSgm.ignored, []);
        const sgmOut = (await unet.forward(inputs)).sample.data as Float32Array;
        unet.adapters.unload('sgm');
        const viaFlat = await unet.loadLoraWeights(flat, { adapterName: 'flat' });
        assert.deepEqual([...viaSgm.modules].sort(), [...viaFlat.modules].sort());
        assert.deepEqual([...viaSgm.alphaOverRank].sort(), [...viaFlat.alphaOverRank].sort());
        const flatOut = (await unet.forward(inputs)).sample.data as Float32Array;
        assertExactlyEqual(
          sgmOut,
          flatOut,
          `seed ${seed}: ${subject.name} SGM-named vs diffusers-named kohya LoRA`,
        );
        // The LoRA must move the output, or equal outputs prove nothing.
        const effect = maxAbs(flatOut.map((v, i) => v - base[i]));
        assert.ok(
          effect > 1e-2,
          `seed ${seed}: ${subject.name}: the LoRA changes the output by only ${effect}`,
        );
        process.stderr.write(
          `# ${subject.name}: SGM vs flat kohya equal bit for bit (LoRA effect ${effect.toFixed(3)})\n`,
        );
      } finally {
        await unet.close();
        await store.close();
      }
    }
  });

  it('reads SDXL kohya text-encoder keys (lora_te1_, lora_te2_) onto both CLIP encoders', async () => {
    const xlPipeline = join(subjects[1].dir, '..');
    for (const [prefix, component] of [
      ['lora_te1_', 'text_encoder'],
      ['lora_te2_', 'text_encoder_2'],
    ] as const) {
      const store = await WeightStore.open(join(xlPipeline, component));
      try {
        const modules = loraModules(store).filter((m) => m.includes('.encoder.layers.'));
        assert.ok(
          modules.some((m) => m.endsWith('self_attn.q_proj')) && modules.some((m) => m.endsWith('mlp.fc2')),
        );
        const tensors: Record<string, TensorToWrite> = {};
        for (const [module, t] of Object.entries(randomLora(store, modules))) {
          const name = `${prefix}${module.replace(/\./g, '_')}`;
          tensors[`${name}.lora_down.weight`] = { dtype: 'F32', shape: t.aShape, data: t.a };
          tensors[`${name}.lora_up.weight`] = { dtype: 'F32', shape: t.bShape, data: t.b };
        }
        const path = join(dirs[2], `${component}.safetensors`);
        await writeSafetensors(path, tensors);
        const contents = await readLoraFile(path, store, component);
        assert.deepEqual(contents.ignored, [], component);
        assert.deepEqual(contents.pairs.map((p) => p.modulePath).sort(), [...modules].sort(), component);
      } finally {
        await store.close();
      }
    }
  });
});
