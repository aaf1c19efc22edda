/**
 * The load checks of README "Models", for every model class: each is loaded from a copy of its golden
 * tiny checkpoint with one config key or one tensor changed. Errors must come from the load (before
 * any forward) and name what the README says; ignored keys and tensors must come as warnings.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { FileFormatError, WeightError } from '../../src/errors.js';
import type { SafetensorsDtype } from '../../src/io/dtypes.js';
import { SafetensorsFile } from '../../src/io/safetensors.js';
import { loadModel } from '../../src/models/index.js';
import { Runtime } from '../../src/runtime/runtime.js';
import { VelodiffWarning } from '../../src/warnings.js';
import { copyModel, editWeights, patchConfig, zeros } from '../fixtures/edit-checkpoint.js';

const GOLDEN = fileURLToPath(new URL('../golden/', import.meta.url));
const runtime = new Runtime({ worker: false, threads: 1 });
after(() => runtime.dispose());

interface Subject {
  className: string;
  /** Golden model folders of this class; the first is the one modified. */
  golden: string[];
  weightsFile: string;
  /** A tensor every config of the class needs. */
  probe: string;
  /** Config keys the class ignores silently besides `_…` ones. */
  harmlessKeys: Record<string, unknown>;
  /** Tensors the class ignores silently. */
  harmlessTensors: string[];
  /** Math-changing values velodiff does not implement: [patch, key, value fragment, supported fragment]. */
  unsupported: [Record<string, unknown>, string, string, string][];
}

const QUANTIZED = { quant_method: 'bitsandbytes', load_in_8bit: true };

const SUBJECTS: Subject[] = [
  {
    className: 'PixArtTransformer2DModel',
    golden: ['pixart_alpha_tiny', 'pixart_alpha_tiny_microcond', 'pixart_sigma_tiny'].map((n) =>
      join(GOLDEN, 'models', n, 'model'),
    ),
    weightsFile: 'diffusion_pytorch_model.safetensors',
    probe: 'transformer_blocks.1.attn2.to_k.weight',
    harmlessKeys: { use_linear_projection: false, double_self_attention: false, only_cross_attention: false },
    harmlessTensors: [],
    unsupported: [
      [{ activation_fn: 'geglu' }, 'activation_fn', '"geglu"', '"gelu-approximate"'],
      [{ norm_type: 'ada_norm_zero' }, 'norm_type', '"ada_norm_zero"', '"ada_norm_single"'],
      [{ attention_type: 'gated' }, 'attention_type', '"gated"', '"default"'],
      [{ norm_elementwise_affine: true }, 'norm_elementwise_affine', 'true', 'false'],
      [{ only_cross_attention: true }, 'only_cross_attention', 'true', 'false'],
      [{ double_self_attention: true }, 'double_self_attention', 'true', 'false'],
      [{ num_vector_embeds: 8192 }, 'num_vector_embeds', '8192', 'false'],
      [{ cross_attention_dim: null }, 'cross_attention_dim', 'null', 'integer'],
      [{ caption_channels: null }, 'caption_channels', 'null', 'integer'],
      [{ caption_channels: undefined }, 'caption_channels', 'absent', 'integer'],
      [{ quantization_config: QUANTIZED }, 'quantization_config', 'bitsandbytes', 'float checkpoints'],
    ],
  },
  {
    className: 'AutoencoderKL',
    golden: ['vae_kl_tiny', 'vae_kl_sd3_16ch_tiny'].map((n) => join(GOLDEN, 'models', n, 'model')),
    weightsFile: 'diffusion_pytorch_model.safetensors',
    probe: 'decoder.up_blocks.1.resnets.0.conv1.weight',
    harmlessKeys: {},
    harmlessTensors: [],
    unsupported: [
      [{ act_fn: 'tanh' }, 'act_fn', '"tanh"', '"silu"'],
      [
        { down_block_types: ['DownEncoderBlock2D', 'AttnDownEncoderBlock2D', 'DownEncoderBlock2D'] },
        'down_block_types[1]',
        'AttnDownEncoderBlock2D',
        '"DownEncoderBlock2D"',
      ],
      [{ quantization_config: QUANTIZED }, 'quantization_config', 'bitsandbytes', 'float checkpoints'],
    ],
  },
  {
    className: 'T5EncoderModel',
    golden: [join(GOLDEN, 'text_encoders', 't5_encoder_tiny', 'model')],
    weightsFile: 'model.safetensors',
    probe: 'encoder.block.1.layer.1.DenseReluDense.wo.weight',
    harmlessKeys: {
      task_specific_params: { summarization: { num_beams: 4 } },
      n_positions: 512,
      output_past: true,
    },
    harmlessTensors: ['encoder.embed_tokens.weight', 'decoder.block.0.layer.0.SelfAttention.q.weight'],
    unsupported: [
      [{ dense_act_fn: 'mish' }, 'dense_act_fn', '"mish"', 'gelu_new'],
      [
        { feed_forward_proj: 'gated-mish', dense_act_fn: undefined },
        'feed_forward_proj',
        '"mish"',
        'gelu_new',
      ],
      [{ pruned_heads: { '0': [1] } }, 'pruned_heads', '{"0":[1]}', '{}'],
      [{ model_type: 'umt5' }, 'model_type', '"umt5"', '"t5"'],
      [{ quantization_config: QUANTIZED }, 'quantization_config', 'bitsandbytes', 'float checkpoints'],
    ],
  },
  {
    className: 'CLIPTextModel',
    golden: ['clip_text_tiny', 'clip_text_with_projection_tiny'].map((n) =>
      join(GOLDEN, 'text_encoders', n, 'model'),
    ),
    weightsFile: 'model.safetensors',
    probe: 'text_model.encoder.layers.1.mlp.fc1.weight',
    harmlessKeys: {
      dropout: 0.1,
      gradient_checkpointing: false,
      task_specific_params: { summarization: { num_beams: 4 } },
    },
    harmlessTensors: ['text_model.embeddings.position_ids'],
    unsupported: [
      [{ hidden_act: 'relu' }, 'hidden_act', '"relu"', '"quick_gelu"'],
      [{ model_type: 't5' }, 'model_type', '"t5"', '"clip_text_model"'],
      [{ model_type: 'clip' }, 'model_type', '"clip"', '"clip_text_model"'],
      [{ quantization_config: QUANTIZED }, 'quantization_config', 'bitsandbytes', 'float checkpoints'],
    ],
  },
  {
    className: 'UNet2DConditionModel',
    // unet2d_sd15_tiny_scalar_t has unet2d_sd15_tiny's weights and no folder of its own.
    golden: [
      'unet2d_sd15_tiny',
      'unet2d_sd2_linearproj_tiny',
      'unet2d_sdxl_tiny',
      'unet2d_lcm_timecond_tiny',
    ].map((n) => join(GOLDEN, 'models', n, 'model')),
    weightsFile: 'diffusion_pytorch_model.safetensors',
    probe: 'down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight',
    harmlessKeys: { upcast_attention: true, dropout: 0.1, resnet_skip_time_act: true },
    harmlessTensors: [],
    unsupported: [
      [{ class_embed_type: 'timestep' }, 'class_embed_type', '"timestep"', 'null'],
      [{ dual_cross_attention: true }, 'dual_cross_attention', 'true', 'false'],
      [{ resnet_time_scale_shift: 'scale_shift' }, 'resnet_time_scale_shift', '"scale_shift"', '"default"'],
      [{ time_embedding_type: 'fourier' }, 'time_embedding_type', '"fourier"', '"positional"'],
      [
        { mid_block_type: 'UNetMidBlock2DSimpleCrossAttn' },
        'mid_block_type',
        'UNetMidBlock2DSimpleCrossAttn',
        'UNetMidBlock2DCrossAttn',
      ],
      [
        { down_block_types: ['CrossAttnDownBlock2D', 'AttnDownBlock2D', 'DownBlock2D'] },
        'down_block_types',
        'AttnDownBlock2D',
        'CrossAttnDownBlock2D, DownBlock2D',
      ],
      [{ quantization_config: QUANTIZED }, 'quantization_config', 'bitsandbytes', 'float checkpoints'],
    ],
  },
];

/** Loads `dir` with `loadModel`, collecting warnings; closes the model again. */
async function loadCollecting(dir: string): Promise<VelodiffWarning[]> {
  const warnings: VelodiffWarning[] = [];
  const model = await loadModel(dir, { runtime, onWarning: (w) => warnings.push(w) });
  await model.close();
  return warnings;
}

async function probeShape(subject: Subject): Promise<number[]> {
  const file = await SafetensorsFile.open(join(subject.golden[0], subject.weightsFile));
  try {
    return [...file.info(subject.probe).shape];
  } finally {
    await file.close();
  }
}

function includesAll(message: string, fragments: string[]): void {
  for (const f of fragments) assert.ok(message.includes(f), `"${message}" lacks ${JSON.stringify(f)}`);
}

for (const subject of SUBJECTS) {
  describe(`${subject.className}: load checks`, () => {
    it('loads its golden checkpoints without a warning', async () => {
      for (const dir of subject.golden) assert.deepEqual(await loadCollecting(dir), [], dir);
    });

    it('accepts an unknown config key with one warning naming it and the file; `_` and harmless keys are silent', async () => {
      const dir = await copyModel(subject.golden[0]);
      await patchConfig(dir, {
        frobnicate: 3,
        _name_or_path: 'somewhere',
        _velodiff_note: 'private',
        ...subject.harmlessKeys,
      });
      const warnings = await loadCollecting(dir);
      assert.equal(warnings.length, 1, warnings.map((w) => w.message).join('\n'));
      const [warning] = warnings;
      assert.ok(warning instanceof VelodiffWarning);
      assert.equal(warning.code, 'CONFIG_UNUSED_KEYS');
      assert.equal(warning.path, join(dir, 'config.json'));
      assert.deepEqual(warning.names, ['frobnicate']);
      includesAll(warning.message, ['"frobnicate"', join(dir, 'config.json'), subject.className]);
    });

    it('rejects math-changing values it does not implement, naming key, value, file and what is supported', async () => {
      for (const [patch, key, value, supported] of subject.unsupported) {
        const dir = await copyModel(subject.golden[0]);
        await patchConfig(dir, patch);
        await assert.rejects(
          loadCollecting(dir),
          (e: unknown) => {
            assert.ok(e instanceof FileFormatError, `${JSON.stringify(patch)}: ${String(e)}`);
            includesAll(e.message, [key, value, supported, join(dir, 'config.json')]);
            return true;
          },
          JSON.stringify(patch),
        );
      }
    });

    it('a missing tensor fails the load, naming the tensor, the file and the expected shape', async () => {
      const dir = await copyModel(subject.golden[0]);
      const shape = await probeShape(subject);
      await editWeights(join(dir, subject.weightsFile), (tensors) => tensors.delete(subject.probe));
      await assert.rejects(loadCollecting(dir), (e: unknown) => {
        assert.ok(e instanceof WeightError, String(e));
        assert.equal(e.code, 'WEIGHT_MISSING');
        includesAll(e.message, [
          `'${subject.probe}'`,
          join(dir, subject.weightsFile),
          `[${shape.join(', ')}]`,
        ]);
        return true;
      });
    });

    it('a tensor of the wrong shape fails the load, naming the tensor, the file and both shapes', async () => {
      const dir = await copyModel(subject.golden[0]);
      const shape = await probeShape(subject);
      const wrong = [...shape.slice(0, -1), shape[shape.length - 1] + 1];
      await editWeights(join(dir, subject.weightsFile), (tensors) =>
        tensors.set(subject.probe, zeros('F32', wrong)),
      );
      await assert.rejects(loadCollecting(dir), (e: unknown) => {
        assert.ok(e instanceof WeightError, String(e));
        assert.equal(e.code, 'WEIGHT_SHAPE');
        includesAll(e.message, [
          `'${subject.probe}'`,
          join(dir, subject.weightsFile),
          `[${shape.join(', ')}]`,
          `[${wrong.join(', ')}]`,
        ]);
        return true;
      });
    });

    it('a weight stored as BOOL or integers fails the load, naming the tensor, the file and both dtypes', async () => {
      const shape = await probeShape(subject);
      for (const dtype of ['BOOL', 'I32', 'I64', 'U8'] as SafetensorsDtype[]) {
        const dir = await copyModel(subject.golden[0]);
        await editWeights(join(dir, subject.weightsFile), (tensors) =>
          tensors.set(subject.probe, zeros(dtype, shape)),
        );
        await assert.rejects(
          loadCollecting(dir),
          (e: unknown) => {
            assert.ok(e instanceof WeightError, `${dtype}: ${String(e)}`);
            assert.equal(e.code, 'WEIGHT_DTYPE');
            includesAll(e.message, [`'${subject.probe}'`, join(dir, subject.weightsFile), dtype, 'F32']);
            return true;
          },
          dtype,
        );
      }
    });

    it('a half-precision weight is still a float weight', async () => {
      const dir = await copyModel(subject.golden[0]);
      const shape = await probeShape(subject);
      await editWeights(join(dir, subject.weightsFile), (tensors) =>
        tensors.set(subject.probe, zeros('F16', shape)),
      );
      assert.deepEqual(await loadCollecting(dir), []);
    });

    it('accepts tensors it does not use with one warning naming them and the file', async () => {
      const dir = await copyModel(subject.golden[0]);
      const extra = ['velodiff_test.extra.weight', 'velodiff_test.extra.bias'];
      await editWeights(join(dir, subject.weightsFile), (tensors) => {
        for (const name of extra) tensors.set(name, zeros('F32', [3]));
        for (const name of subject.harmlessTensors) tensors.set(name, zeros('F32', [2]));
      });
      const warnings = await loadCollecting(dir);
      assert.equal(warnings.length, 1, warnings.map((w) => w.message).join('\n'));
      const [warning] = warnings;
      assert.equal(warning.code, 'WEIGHTS_UNUSED');
      assert.equal(warning.path, join(dir, subject.weightsFile));
      assert.deepEqual([...warning.names].sort(), [...extra].sort());
      includesAll(warning.message, [...extra.map((n) => `'${n}'`), join(dir, subject.weightsFile)]);
    });
  });
}

describe('load warnings without an onWarning option', () => {
  it('are process warnings, which process.on("warning") sees', async () => {
    const dir = await copyModel(SUBJECTS[1].golden[0]);
    await patchConfig(dir, { frobnicate: 3 });
    const seen: Error[] = [];
    const listener = (w: Error): void => void seen.push(w);
    process.on('warning', listener);
    try {
      const model = await loadModel(dir, { runtime });
      await model.close();
      // process.emitWarning delivers on the next tick.
      await new Promise((resolve) => setImmediate(resolve));
    } finally {
      process.off('warning', listener);
    }
    const ours = seen.filter((w): w is VelodiffWarning => w instanceof VelodiffWarning);
    assert.equal(ours.length, 1);
    assert.deepEqual(ours[0].names, ['frobnicate']);
  });
});
