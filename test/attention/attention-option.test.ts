/**
 * attention/attention-option.ts: a user's attention option resolved for any model class — CLEAR's
 * window checked by CLEAR's own rule, its weight file overlaid on the checkpoint and opened once per
 * path, LinFusion's folder required.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { AttentionWeightFiles, resolveAttentionOption } from '../../src/attention/attention-option.js';
import type { AttentionOption } from '../../src/attention/types.js';
import { OptionError } from '../../src/errors.js';
import { writeSafetensors } from '../../src/io/safetensors.js';
import type { TensorSource } from '../../src/nn/weights.js';

/** A checkpoint with one attention's to_q. */
const base: TensorSource = {
  has: (name) => name === 'transformer_blocks.0.attn1.to_q.weight',
  info: (name) => ({
    name,
    dtype: 'F32',
    shape: [4, 4],
    byteLength: 64,
    fileOffset: 0,
    path: '/base.safetensors',
  }),
};

describe('resolveAttentionOption', () => {
  let dir: string;
  let clearFile: string;
  const files = new AttentionWeightFiles();
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'velodiff-attention-option-'));
    clearFile = join(dir, 'clear.safetensors');
    await writeSafetensors(clearFile, {
      'transformer_blocks.0.attn1.processor.spatial_weight': {
        dtype: 'F32',
        shape: [1, 1, 1, 2, 1, 2, 1],
        data: new Float32Array(4).fill(0.25),
      },
    });
  });
  after(async () => {
    await files.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('full attention, or none given, needs nothing', async () => {
    assert.deepEqual(await resolveAttentionOption(undefined, base, files), {});
    assert.deepEqual(await resolveAttentionOption({ kind: 'full' }, base, files), {});
  });

  it('CLEAR without weights: the window, down factor 1 by default', async () => {
    assert.deepEqual(await resolveAttentionOption({ kind: 'clear', radius: 3 }, base, files), {
      choice: { kind: 'clear', radius: 3, downFactor: 1 },
    });
  });

  it("CLEAR's window is checked by CLEAR's rule, as an option error", async () => {
    for (const [option, message] of [
      [{ kind: 'clear', radius: 0 }, /^attention: radius must be a finite number ≥ 1/],
      [{ kind: 'clear', radius: Number.NaN }, /^attention: radius must be/],
      [
        { kind: 'clear', radius: 2, downFactor: 1.5 },
        /^attention: downFactor must be a positive integer, got 1\.5$/,
      ],
    ] as const) {
      await assert.rejects(
        resolveAttentionOption(option, base, files),
        (e: unknown) => e instanceof OptionError && message.test(e.message),
      );
    }
  });

  it('CLEAR weights are overlaid on the checkpoint, the file opened once per path', async () => {
    const option: AttentionOption = { kind: 'clear', radius: 2, downFactor: 2, weights: clearFile };
    const first = await resolveAttentionOption(option, base, files);
    assert.deepEqual(first.choice, { kind: 'clear', radius: 2, downFactor: 2 });
    assert.equal(first.key, `clear:${clearFile}`);
    const weights = first.weights as TensorSource;
    assert.ok(weights.has('transformer_blocks.0.attn1.to_q.weight'), 'base tensors stay reachable');
    const spatial = weights.info('transformer_blocks.0.attn1.processor.spatial_weight');
    assert.deepEqual(spatial.shape, [1, 1, 1, 2, 1, 2, 1]);
    assert.equal((spatial as { path?: string }).path, clearFile);
    const again = await resolveAttentionOption({ ...option, radius: 5 }, base, files);
    assert.equal(again.weights, first.weights, 'the same overlay for the same file');
  });

  it('LinFusion needs its folder; an unknown kind is named', async () => {
    await assert.rejects(
      resolveAttentionOption({ kind: 'linfusion' } as AttentionOption, base, files),
      /attention kind 'linfusion' needs weights: the LinFusion folder/,
    );
    await assert.rejects(
      resolveAttentionOption({ kind: 'window' } as unknown as AttentionOption, base, files),
      /unknown attention kind "window"; expected full, clear or linfusion/,
    );
  });
});
