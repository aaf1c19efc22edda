import assert from 'node:assert/strict';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { fileURLToPath } from 'node:url';

import { FileFormatError } from '../../src/errors.js';
import { WeightStore } from '../../src/io/diffusers.js';
import { writeSafetensors } from '../../src/io/safetensors.js';
import type { LoraFileContents, ModelParameters } from '../../src/lora/format.js';
import { readLoraFile } from '../../src/lora/format.js';
import { seededUniform, testSeed } from '../random.js';
import {
  EMBEDDER,
  FF,
  PATCH,
  TO_OUT,
  randomLora,
  tempDir,
  writeBase,
  writeDiffusers,
  writeKohya,
  writePeft,
} from './fixture.js';

const seed = testSeed('test/lora/format.test.ts');
const random = seededUniform(seed);
let dir: string;
let store: WeightStore;

before(async () => {
  dir = await tempDir();
  ({ store } = await writeBase(dir, random));
});
after(async () => store.close());

function pairOf(contents: LoraFileContents, module: string) {
  const pair = contents.pairs.find((p) => p.modulePath === module);
  assert.ok(
    pair,
    `seed ${seed}: no pair for ${module}; pairs ${contents.pairs.map((p) => p.modulePath).join(', ')}`,
  );
  return pair;
}

/** Rejects with a FileFormatError of `code` whose message contains every one of `parts`. */
async function rejectsWith(promise: Promise<unknown>, code: string, parts: readonly string[]): Promise<void> {
  await assert.rejects(promise, (error: unknown) => {
    assert.ok(error instanceof FileFormatError, `expected a FileFormatError, got ${String(error)}`);
    assert.equal(error.code, code, error.message);
    for (const part of parts) assert.ok(error.message.includes(part), `'${part}' not in: ${error.message}`);
    return true;
  });
}

describe('PEFT adapters', () => {
  it('pairs lora_A/lora_B, takes alpha/r from adapter_config.json with rank_pattern and alpha_pattern', async () => {
    const lora = randomLora(random, { [FF]: 2, [TO_OUT]: 3, [PATCH]: 2 });
    const embedderLora = randomLora(random, { [EMBEDDER]: 2 })[EMBEDDER];
    const folder = await writePeft(
      join(dir, 'peft'),
      lora,
      { r: 2, lora_alpha: 4, rank_pattern: { 'to_out.0': 3 }, alpha_pattern: { 'pos_embed.proj': 1 } },
      {
        // Flash PixArt's training names (methods/tgate_flash.md §2.6 f): no diffusers module has them.
        'base_model.model.adaln_single.timestep_embedder.linear_1.lora_A.weight': {
          dtype: 'F32',
          shape: embedderLora.aShape,
          data: embedderLora.a,
        },
        'base_model.model.adaln_single.timestep_embedder.linear_1.lora_B.weight': {
          dtype: 'F32',
          shape: embedderLora.bShape,
          data: embedderLora.b,
        },
      },
    );
    for (const path of [folder, join(folder, 'adapter_model.safetensors')]) {
      const contents = await readLoraFile(path, store);
      assert.equal(contents.format, 'peft');
      assert.equal(contents.pairs.length, 3);
      const ff = pairOf(contents, FF);
      assert.equal(ff.kind, 'linear');
      assert.equal(ff.rank, 2);
      assert.equal(ff.scale, 4 / 2);
      assert.deepEqual(ff.down.shape, [2, 5]);
      assert.deepEqual(ff.up.shape, [6, 2]);
      assert.equal(ff.down.name, `base_model.model.${FF}.lora_A.weight`);
      const toOut = pairOf(contents, TO_OUT);
      assert.equal(toOut.rank, 3);
      assert.equal(toOut.scale, 4 / 3);
      const patch = pairOf(contents, PATCH);
      assert.equal(patch.kind, 'conv');
      assert.equal(patch.alpha, 1);
      assert.equal(patch.scale, 1 / 2);
      assert.equal(contents.ignored.length, 2);
      for (const ignored of contents.ignored) {
        assert.match(ignored.key, /adaln_single\.timestep_embedder/);
        assert.match(ignored.reason, /no module 'adaln_single\.timestep_embedder\.linear_1'/);
        assert.match(ignored.reason, /adaln_single\.emb\.timestep_embedder\.linear_1/);
      }
    }
  });

  it('uses PEFT defaults (r 8, alpha 8) and alpha/√r with use_rslora', async () => {
    const lora = randomLora(random, { [FF]: 8 });
    const plain = await readLoraFile(await writePeft(join(dir, 'peft-defaults'), lora, {}), store);
    assert.equal(pairOf(plain, FF).scale, 1);
    const rs = await readLoraFile(
      await writePeft(join(dir, 'peft-rs'), lora, { r: 8, lora_alpha: 8, use_rslora: true }),
      store,
    );
    assert.equal(pairOf(rs, FF).scale, 8 / Math.sqrt(8));
  });

  it('refuses PEFT keys without a config, a config whose r differs from the tensors, and DoRA', async () => {
    const lora = randomLora(random, { [FF]: 2 });
    const folder = await writePeft(join(dir, 'peft-noconfig'), lora, {});
    const loose = join(dir, 'loose_peft.safetensors');
    await writeSafetensors(loose, {
      [`base_model.model.${FF}.lora_A.weight`]: { dtype: 'F32', shape: lora[FF].aShape, data: lora[FF].a },
      [`base_model.model.${FF}.lora_B.weight`]: { dtype: 'F32', shape: lora[FF].bShape, data: lora[FF].b },
    });
    await rejectsWith(readLoraFile(loose, store), 'LORA_CONFIG_MISSING', [loose, 'adapter_config.json']);
    await writeFile(join(folder, 'adapter_config.json'), JSON.stringify({ r: 4, lora_alpha: 8 }));
    await rejectsWith(readLoraFile(folder, store), 'LORA_RANK', [FF, 'rank 2', 'r = 4']);
    await writeFile(join(folder, 'adapter_config.json'), JSON.stringify({ r: 2, use_dora: true }));
    await rejectsWith(readLoraFile(folder, store), 'LORA_UNSUPPORTED', ['use_dora']);
    await writeFile(join(folder, 'adapter_config.json'), '{ not json');
    await rejectsWith(readLoraFile(folder, store), 'JSON_INVALID', ['adapter_config.json']);
  });
});

describe('diffusers LoRA files', () => {
  it('reads transformer.<path>.lora_A/lora_B with alpha tensors, ignoring text-encoder keys', async () => {
    const lora = randomLora(random, { [FF]: 2, [PATCH]: 3 });
    const te = randomLora(random, { [FF]: 1 })[FF];
    const path = await writeDiffusers(
      join(dir, 'diffusers.safetensors'),
      lora,
      { alphas: { [FF]: 1 } },
      {
        'text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight': {
          dtype: 'F32',
          shape: te.aShape,
          data: te.a,
        },
      },
    );
    const contents = await readLoraFile(path, store);
    assert.equal(contents.format, 'diffusers');
    assert.equal(pairOf(contents, FF).scale, 1 / 2);
    assert.equal(pairOf(contents, FF).alpha, 1);
    // No alpha: diffusers scales by 1 (alpha = rank).
    assert.equal(pairOf(contents, PATCH).scale, 1);
    assert.equal(pairOf(contents, PATCH).alpha, undefined);
    assert.deepEqual(
      contents.ignored.map((i) => i.key),
      ['text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight'],
    );
    assert.match(contents.ignored[0].reason, /text-encoder/);
  });

  it('reads unet.<path>.lora.down/lora.up and the attention-processor spelling', async () => {
    const lora = randomLora(random, { [FF]: 2 });
    const contents = await readLoraFile(
      await writeDiffusers(join(dir, 'unet.safetensors'), lora, { prefix: 'unet', spelling: 'lora.down' }),
      store,
    );
    assert.deepEqual(
      contents.pairs.map((p) => [p.modulePath, p.down.name]),
      [[FF, `unet.${FF}.lora.down.weight`]],
    );

    const procs = randomLora(random, { [TO_OUT]: 2 })[TO_OUT];
    const path = join(dir, 'attn_procs.safetensors');
    await writeSafetensors(path, {
      'transformer_blocks.0.attn1.processor.to_out_lora.down.weight': {
        dtype: 'F32',
        shape: procs.aShape,
        data: procs.a,
      },
      'transformer_blocks.0.attn1.processor.to_out_lora.up.weight': {
        dtype: 'F32',
        shape: procs.bShape,
        data: procs.b,
      },
    });
    assert.deepEqual(
      (await readLoraFile(path, store)).pairs.map((p) => p.modulePath),
      [TO_OUT],
    );
  });

  it("takes alpha and r from diffusers' lora_adapter_metadata when there are no alpha tensors", async () => {
    const lora = randomLora(random, { [FF]: 4 });
    const path = join(dir, 'with_metadata.safetensors');
    await writeSafetensors(
      path,
      {
        [`transformer.${FF}.lora_A.weight`]: { dtype: 'F32', shape: lora[FF].aShape, data: lora[FF].a },
        [`transformer.${FF}.lora_B.weight`]: { dtype: 'F32', shape: lora[FF].bShape, data: lora[FF].b },
      },
      { lora_adapter_metadata: JSON.stringify({ 'transformer.r': 4, 'transformer.lora_alpha': 2 }) },
    );
    assert.equal(pairOf(await readLoraFile(path, store), FF).scale, 0.5);
  });
});

describe('kohya LoRA files', () => {
  it('resolves underscored names (ff_net_0_proj, to_out_0) against the model and reads alpha', async () => {
    const lora = randomLora(random, { [FF]: 2, [TO_OUT]: 4, [PATCH]: 2 });
    const te = randomLora(random, { [FF]: 1 })[FF];
    const path = await writeKohya(
      join(dir, 'kohya.safetensors'),
      lora,
      { [FF]: 1, [PATCH]: 3 },
      {
        'lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight': {
          dtype: 'F32',
          shape: te.aShape,
          data: te.a,
        },
        'lora_unet_missing_block_proj.lora_down.weight': { dtype: 'F32', shape: te.aShape, data: te.a },
        'lora_unet_missing_block_proj.lora_up.weight': { dtype: 'F32', shape: te.bShape, data: te.b },
      },
    );
    const contents = await readLoraFile(path, store);
    assert.equal(contents.format, 'kohya');
    assert.deepEqual(contents.pairs.map((p) => p.modulePath).sort(), [PATCH, TO_OUT, FF].sort());
    assert.equal(pairOf(contents, FF).scale, 1 / 2);
    assert.equal(pairOf(contents, TO_OUT).scale, 1);
    assert.equal(pairOf(contents, PATCH).scale, 3 / 2);
    assert.equal(pairOf(contents, PATCH).kind, 'conv');
    const reasons = new Map(contents.ignored.map((i) => [i.key, i.reason]));
    assert.match(
      reasons.get('lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight') ?? '',
      /text-encoder/,
    );
    assert.match(
      reasons.get('lora_unet_missing_block_proj.lora_down.weight') ?? '',
      /no module .*missing_block_proj/,
    );
  });

  it('reports underscore-ambiguous names and LyCORIS modules as ignored', async () => {
    // Two modules that read the same with dots as underscores.
    const shapes = new Map<string, number[]>([
      ['mid_a.b.weight', [2, 2]],
      ['mid.a_b.weight', [2, 2]],
      ['mid.c.weight', [2, 2]],
    ]);
    const model: ModelParameters = {
      names: () => shapes.keys(),
      info: (name) => ({ shape: shapes.get(name) as number[] }),
    };
    const t = (shape: number[]) => ({
      dtype: 'F32' as const,
      shape,
      data: new Float32Array(shape[0] * shape[1]),
    });
    const path = join(dir, 'ambiguous.safetensors');
    await writeSafetensors(path, {
      'lora_unet_mid_a_b.lora_down.weight': t([1, 2]),
      'lora_unet_mid_a_b.lora_up.weight': t([2, 1]),
      'lora_unet_mid_c.lora_down.weight': t([1, 2]),
      'lora_unet_mid_c.lora_up.weight': t([2, 1]),
      'lora_unet_mid_c.lora_mid.weight': t([1, 1]),
    });
    const contents = await readLoraFile(path, model);
    assert.equal(contents.pairs.length, 0);
    const reasons = new Map(contents.ignored.map((i) => [i.key, i.reason]));
    assert.match(
      reasons.get('lora_unet_mid_a_b.lora_down.weight') ?? '',
      /ambiguous.*'mid_a\.b'.*'mid\.a_b'|ambiguous.*'mid\.a_b'.*'mid_a\.b'/,
    );
    assert.match(reasons.get('lora_unet_mid_c.lora_up.weight') ?? '', /lora_mid.*LyCORIS/);
  });
});

describe('a PixArt checkpoint', () => {
  it('resolves every Flash PixArt target module (§2.3) in PEFT and kohya spelling', async () => {
    const pixart = await WeightStore.open(
      fileURLToPath(new URL('../golden/models/pixart_alpha_tiny/model', import.meta.url)),
    );
    try {
      // PEFT matches target_modules against the tail of each module path.
      const targets = ['to_q', 'to_k', 'to_v', 'to_out.0', 'proj_out', 'ff.net.0.proj', 'ff.net.2'];
      targets.push('proj', 'linear', 'linear_1', 'linear_2');
      const modules = pixart
        .names()
        .filter((name) => name.endsWith('.weight'))
        .map((name) => name.slice(0, -'.weight'.length))
        .filter((path) => targets.some((t) => path === t || path.endsWith(`.${t}`)));
      assert.ok(modules.includes('pos_embed.proj') && modules.includes('transformer_blocks.0.ff.net.0.proj'));
      assert.ok(modules.includes('adaln_single.emb.timestep_embedder.linear_1'));
      const peft: Record<string, { dtype: 'F32'; shape: number[]; data: Float32Array }> = {};
      const kohya: typeof peft = {};
      for (const path of modules) {
        const shape = pixart.info(`${path}.weight`).shape;
        const a = shape.length === 4 ? [2, shape[1], shape[2], shape[3]] : [2, shape[1]];
        const b = shape.length === 4 ? [shape[0], 2, 1, 1] : [shape[0], 2];
        const t = (s: number[]) => ({
          dtype: 'F32' as const,
          shape: s,
          data: new Float32Array(s.reduce((x, y) => x * y, 1)),
        });
        peft[`base_model.model.${path}.lora_A.weight`] = t(a);
        peft[`base_model.model.${path}.lora_B.weight`] = t(b);
        kohya[`lora_unet_${path.replace(/\./g, '_')}.lora_down.weight`] = t(a);
        kohya[`lora_unet_${path.replace(/\./g, '_')}.lora_up.weight`] = t(b);
      }
      const folder = join(dir, 'pixart-peft');
      await mkdir(folder);
      await writeSafetensors(join(folder, 'adapter_model.safetensors'), peft);
      await writeFile(
        join(folder, 'adapter_config.json'),
        JSON.stringify({ r: 2, lora_alpha: 8, target_modules: targets }),
      );
      await writeSafetensors(join(dir, 'pixart_kohya.safetensors'), kohya);
      const fromPeft = await readLoraFile(folder, pixart);
      const fromKohya = await readLoraFile(join(dir, 'pixart_kohya.safetensors'), pixart);
      assert.equal(fromPeft.format, 'peft');
      assert.equal(fromKohya.format, 'kohya');
      for (const contents of [fromPeft, fromKohya]) {
        assert.deepEqual(contents.ignored, []);
        assert.deepEqual(contents.pairs.map((p) => p.modulePath).sort(), [...modules].sort());
      }
      assert.ok(fromPeft.pairs.every((p) => p.scale === 4));
    } finally {
      await pixart.close();
    }
  });
});

describe('malformed LoRA files', () => {
  it('names the key and the file of an unpaired A or B', async () => {
    const lora = randomLora(random, { [FF]: 2 });
    const path = join(dir, 'unpaired.safetensors');
    await writeSafetensors(path, {
      [`transformer.${FF}.lora_A.weight`]: { dtype: 'F32', shape: lora[FF].aShape, data: lora[FF].a },
    });
    await rejectsWith(readLoraFile(path, store), 'LORA_UNPAIRED', [
      path,
      `transformer.${FF}.lora_A.weight`,
      'up (B)',
    ]);
  });

  it('names both shapes when the ranks of A and B differ', async () => {
    const path = join(dir, 'rank.safetensors');
    await writeSafetensors(path, {
      [`transformer.${FF}.lora_A.weight`]: { dtype: 'F32', shape: [2, 5], data: new Float32Array(10) },
      [`transformer.${FF}.lora_B.weight`]: { dtype: 'F32', shape: [6, 3], data: new Float32Array(18) },
    });
    await rejectsWith(readLoraFile(path, store), 'LORA_RANK', [path, '[2, 5]', '[6, 3]']);
  });

  it('names the key, the file, its shape and the base shape when A does not fit the base weight', async () => {
    const path = join(dir, 'shape.safetensors');
    await writeSafetensors(path, {
      [`transformer.${FF}.lora_A.weight`]: { dtype: 'F32', shape: [2, 4], data: new Float32Array(8) },
      [`transformer.${FF}.lora_B.weight`]: { dtype: 'F32', shape: [6, 2], data: new Float32Array(12) },
    });
    await rejectsWith(readLoraFile(path, store), 'LORA_SHAPE', [
      path,
      `transformer.${FF}.lora_A.weight`,
      '[2, 4]',
      '[2, 5]',
      '[6, 5]',
    ]);
    const conv = join(dir, 'conv_shape.safetensors');
    await writeSafetensors(conv, {
      [`transformer.${PATCH}.lora_A.weight`]: {
        dtype: 'F32',
        shape: [2, 3, 2, 2],
        data: new Float32Array(24),
      },
      [`transformer.${PATCH}.lora_B.weight`]: {
        dtype: 'F32',
        shape: [4, 2, 1, 1],
        data: new Float32Array(8),
      },
    });
    await rejectsWith(readLoraFile(conv, store), 'LORA_SHAPE', [conv, '[2, 3, 2, 2]', '[4, 3, 3, 3]']);
  });

  it('refuses an alpha that is not a scalar, and a path that does not exist', async () => {
    const lora = randomLora(random, { [FF]: 2 });
    const path = await writeKohya(
      join(dir, 'bad_alpha.safetensors'),
      lora,
      {},
      {
        [`lora_unet_${FF.replace(/\./g, '_')}.alpha`]: {
          dtype: 'F32',
          shape: [2],
          data: Float32Array.of(1, 2),
        },
      },
    );
    await rejectsWith(readLoraFile(path, store), 'LORA_ALPHA', [path, '[2]']);
    await rejectsWith(readLoraFile(join(dir, 'nope.safetensors'), store), 'FILE_MISSING', [
      'nope.safetensors',
    ]);
  });
});
