/**
 * FLUX.1 LoRA files in BFL's module names (kohya `lora_unet_double_blocks_0_img_attn_qkv`, ComfyUI
 * `diffusion_model.….lora_down.weight`, BFL `….lora_A.weight`) and in XLabs' processor names, on the
 * golden tiny FluxTransformer2DModel (1 double-stream, 2 single-stream blocks, dim 32, MLP 128).
 *
 * The names are checked one by one; the loaded LoRAs are checked against the same model loaded from
 * a copy whose weights this test merged in float64 in BFL's fused layout: the diffusers weights
 * stacked into BFL's (q, k, v rows into `qkv`, q, k, v, MLP rows into `linear1`, norm_out's
 * [scale; shift] swapped into the final layer's [shift; scale]), W += alpha/r·B·A there, then cut
 * back. The converter's own row split is not used by the reference.
 */
import assert from 'node:assert/strict';
import { cp } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

import { FileFormatError } from '../../src/errors.js';
import type { TensorToWrite } from '../../src/io/safetensors.js';
import { SafetensorsFile, writeSafetensors } from '../../src/io/safetensors.js';
import type { LoraTensorInfo } from '../../src/lora/format.js';
import { detectFormat, pairLoraTensors, readLoraFile } from '../../src/lora/format.js';
import { bflToDiffusers, isBflFluxName, isXlabsKey, xlabsToDiffusers } from '../../src/lora/flux-names.js';
import { FluxTransformer2DModel } from '../../src/models/flux-transformer.js';
import { FluxPipeline } from '../../src/pipelines/flux.js';
import type { HostTensor } from '../../src/runtime/host-tensor.js';
import { hostTensor } from '../../src/runtime/host-tensor.js';
import { assertClose, maxAbs } from '../compare.js';
import { tinyFluxPipeline } from '../fixtures/tiny-flux-pipeline.js';
import { randomArray, readAllTensors, testRuntime } from '../helpers.js';
import { seededUniform, testSeed } from '../random.js';
import { randomLoraFor, safetensorsIn, tempDirsRemovedAfter, tinyFluxInputs } from './fixture.js';

const seed = testSeed('test/lora/flux-names.test.ts');
const random = seededUniform(seed);
const runtime = testRuntime();

const GOLDEN = fileURLToPath(new URL('../golden/', import.meta.url));
const FLUX_MODEL = `${GOLDEN}models/flux_transformer_tiny/model`;
const TOLERANCE = { atol: 1e-5, rtol: 1e-4 };

const freshDir = tempDirsRemovedAfter();
after(async () => {
  await runtime.dispose();
});

const f32 = (shape: number[], data: Float32Array): TensorToWrite => ({ dtype: 'F32', shape, data });

/**
 * The tiny model's weights in BFL's layout, as the single-file checkpoint conversion relates them:
 * BFL's weight is the diffusers weights' rows stacked in this order (`swapHalves`: the two halves of
 * the one weight exchanged). `single_blocks.0.linear1[:3·dim]` is where XLabs' single-block qkv LoRA adds.
 */
const BFL_WEIGHTS: Readonly<Record<string, { rows: readonly string[]; swapHalves?: boolean }>> = {
  'double_blocks.0.img_attn.qkv': {
    rows: [
      'transformer_blocks.0.attn.to_q',
      'transformer_blocks.0.attn.to_k',
      'transformer_blocks.0.attn.to_v',
    ],
  },
  'double_blocks.0.txt_attn.qkv': {
    rows: [
      'transformer_blocks.0.attn.add_q_proj',
      'transformer_blocks.0.attn.add_k_proj',
      'transformer_blocks.0.attn.add_v_proj',
    ],
  },
  'double_blocks.0.img_attn.proj': { rows: ['transformer_blocks.0.attn.to_out.0'] },
  'double_blocks.0.txt_attn.proj': { rows: ['transformer_blocks.0.attn.to_add_out'] },
  'double_blocks.0.img_mlp.2': { rows: ['transformer_blocks.0.ff.net.2'] },
  'double_blocks.0.txt_mlp.0': { rows: ['transformer_blocks.0.ff_context.net.0.proj'] },
  'double_blocks.0.img_mod.lin': { rows: ['transformer_blocks.0.norm1.linear'] },
  'single_blocks.0.linear1': {
    rows: [
      'single_transformer_blocks.0.attn.to_q',
      'single_transformer_blocks.0.attn.to_k',
      'single_transformer_blocks.0.attn.to_v',
      'single_transformer_blocks.0.proj_mlp',
    ],
  },
  'single_blocks.0.linear1[:3·dim]': {
    rows: [
      'single_transformer_blocks.0.attn.to_q',
      'single_transformer_blocks.0.attn.to_k',
      'single_transformer_blocks.0.attn.to_v',
    ],
  },
  'single_blocks.1.linear2': { rows: ['single_transformer_blocks.1.proj_out'] },
  'single_blocks.1.modulation.lin': { rows: ['single_transformer_blocks.1.norm.linear'] },
  img_in: { rows: ['x_embedder'] },
  'time_in.in_layer': { rows: ['time_text_embed.timestep_embedder.linear_1'] },
  'guidance_in.out_layer': { rows: ['time_text_embed.guidance_embedder.linear_2'] },
  'final_layer.adaLN_modulation.1': { rows: ['norm_out.linear'], swapHalves: true },
  'final_layer.linear': { rows: ['proj_out'] },
};

/** One module of a LoRA in BFL's layout: A [r, in], B [rows of BFL's weight, r], and its alpha if any. */
interface BflTerm {
  a: Float32Array;
  b: Float32Array;
  rank: number;
  rows: number;
  cols: number;
  alpha?: number;
}

/** A random LoRA of rank `rank` on BFL module `name` (B block-diagonal over its row parts if `blockDiagonal`). */
function bflTerm(
  base: Readonly<Record<string, HostTensor>>,
  name: string,
  rank: number,
  options: { alpha?: number; blockDiagonal?: boolean } = {},
): BflTerm {
  const parts = BFL_WEIGHTS[name].rows.map((m) => base[`${m}.weight`].shape);
  const rows = parts.reduce((sum, shape) => sum + shape[0], 0);
  const cols = parts[0][1];
  const a = randomArray(rank * cols, random, -0.25, 0.25);
  const b = randomArray(rows * rank, random, -0.25, 0.25);
  if (options.blockDiagonal) {
    // kohya's split LoRA (rank = parts × r'): part j's rows use only A's rows j·r' … (j+1)·r'.
    const partRank = rank / parts.length;
    let row = 0;
    parts.forEach((shape, j) => {
      for (let o = row; o < row + shape[0]; o++)
        for (let k = 0; k < rank; k++) if (Math.floor(k / partRank) !== j) b[o * rank + k] = 0;
      row += shape[0];
    });
  }
  return { a, b, rank, rows, cols, ...(options.alpha === undefined ? {} : { alpha: options.alpha }) };
}

/**
 * A copy of the tiny model folder with every module in `lora` merged in float64 in BFL's layout:
 * W_bfl (diffusers rows stacked, halves swapped) += scale(term)·B·A, then cut back into diffusers' weights.
 */
async function mergedBflCopy(
  base: Readonly<Record<string, HostTensor>>,
  lora: Readonly<Record<string, BflTerm>>,
  scaleOf: (term: BflTerm) => number,
): Promise<string> {
  const merged = new Map<string, Float64Array>();
  for (const [name, term] of Object.entries(lora)) {
    const layout = BFL_WEIGHTS[name];
    const { rows, cols, rank, a, b } = term;
    const fused = new Float64Array(rows * cols);
    let offset = 0;
    for (const module of layout.rows) {
      const w = merged.get(module) ?? Float64Array.from(base[`${module}.weight`].data as Float32Array);
      fused.set(w, offset);
      offset += w.length;
    }
    const swap = (w: Float64Array): Float64Array => {
      const half = w.length / 2;
      const out = new Float64Array(w.length);
      out.set(w.subarray(half), 0);
      out.set(w.subarray(0, half), half);
      return out;
    };
    const bfl = layout.swapHalves ? swap(fused) : fused;
    const scale = scaleOf(term);
    for (let o = 0; o < rows; o++) {
      for (let c = 0; c < cols; c++) {
        let sum = 0;
        for (let k = 0; k < rank; k++) sum += b[o * rank + k] * a[k * cols + c];
        bfl[o * cols + c] += scale * sum;
      }
    }
    const back = layout.swapHalves ? swap(bfl) : bfl;
    offset = 0;
    for (const module of layout.rows) {
      const size = base[`${module}.weight`].data.length;
      merged.set(module, back.slice(offset, offset + size));
      offset += size;
    }
  }
  const out = await freshDir('velodiff-flux-merged-');
  await cp(FLUX_MODEL, out, { recursive: true });
  const tensors: Record<string, TensorToWrite> = {};
  for (const [name, t] of Object.entries(base)) {
    const module = name.endsWith('.weight') ? name.slice(0, -'.weight'.length) : undefined;
    const w = module === undefined ? undefined : merged.get(module);
    tensors[name] = f32([...t.shape], w ? Float32Array.from(w) : (t.data as Float32Array));
  }
  await writeSafetensors(await safetensorsIn(out), tensors);
  return out;
}

/** kohya keys of `lora`: `lora_unet_<name with underscores>` (or ComfyUI's `diffusion_model.<name>`). */
function kohyaTensors(
  lora: Readonly<Record<string, BflTerm>>,
  spelling: 'kohya' | 'comfyui' = 'kohya',
): Record<string, TensorToWrite> {
  const tensors: Record<string, TensorToWrite> = {};
  for (const [name, t] of Object.entries(lora)) {
    const module = spelling === 'kohya' ? `lora_unet_${name.replace(/\./g, '_')}` : `diffusion_model.${name}`;
    tensors[`${module}.lora_down.weight`] = f32([t.rank, t.cols], t.a);
    tensors[`${module}.lora_up.weight`] = f32([t.rows, t.rank], t.b);
    if (t.alpha !== undefined) tensors[`${module}.alpha`] = f32([], Float32Array.of(t.alpha));
  }
  return tensors;
}

/** `actual` equals `expected` within fp32 noise, and the LoRA moved the output far beyond it. */
function assertLoraMatches(actual: HostTensor, expected: HostTensor, plain: HostTensor, what: string): void {
  const e = expected.data as Float32Array;
  const { maxAbsError } = assertClose(actual.data as Float32Array, e, {
    ...TOLERANCE,
    what: `seed ${seed}: ${what}`,
  });
  const effect = maxAbs((plain.data as Float32Array).map((v, i) => v - e[i]));
  assert.ok(
    effect > 100 * TOLERANCE.atol,
    `seed ${seed}: ${what}: the LoRA changes the output by only ${effect}`,
  );
  process.stderr.write(
    `# ${what}: max |diff| ${maxAbsError.toExponential(2)} (LoRA effect ${effect.toFixed(3)})\n`,
  );
}

describe('BFL and XLabs FLUX names', () => {
  it("maps every BFL module to diffusers' modules, fused projections stacked, the final adaLN swapped", () => {
    const expected: [string, string[], string][] = [
      [
        'double_blocks_0_img_attn_qkv',
        [
          'transformer_blocks.0.attn.to_q',
          'transformer_blocks.0.attn.to_k',
          'transformer_blocks.0.attn.to_v',
        ],
        'stacked',
      ],
      [
        'double_blocks.12.txt_attn.qkv',
        [
          'transformer_blocks.12.attn.add_q_proj',
          'transformer_blocks.12.attn.add_k_proj',
          'transformer_blocks.12.attn.add_v_proj',
        ],
        'stacked',
      ],
      ['double_blocks_3_img_attn_proj', ['transformer_blocks.3.attn.to_out.0'], 'whole'],
      ['double_blocks_3_txt_attn_proj', ['transformer_blocks.3.attn.to_add_out'], 'whole'],
      ['double_blocks_0_img_mlp_0', ['transformer_blocks.0.ff.net.0.proj'], 'whole'],
      ['double_blocks_0_img_mlp_2', ['transformer_blocks.0.ff.net.2'], 'whole'],
      ['double_blocks_0_txt_mlp_0', ['transformer_blocks.0.ff_context.net.0.proj'], 'whole'],
      ['double_blocks_0_txt_mlp_2', ['transformer_blocks.0.ff_context.net.2'], 'whole'],
      ['double_blocks_18_img_mod_lin', ['transformer_blocks.18.norm1.linear'], 'whole'],
      ['double_blocks.18.txt_mod.lin', ['transformer_blocks.18.norm1_context.linear'], 'whole'],
      [
        'single_blocks_37_linear1',
        [
          'single_transformer_blocks.37.attn.to_q',
          'single_transformer_blocks.37.attn.to_k',
          'single_transformer_blocks.37.attn.to_v',
          'single_transformer_blocks.37.proj_mlp',
        ],
        'stacked',
      ],
      ['single_blocks_1_linear2', ['single_transformer_blocks.1.proj_out'], 'whole'],
      ['single_blocks.1.modulation.lin', ['single_transformer_blocks.1.norm.linear'], 'whole'],
      ['img_in', ['x_embedder'], 'whole'],
      ['txt_in', ['context_embedder'], 'whole'],
      ['time_in_in_layer', ['time_text_embed.timestep_embedder.linear_1'], 'whole'],
      ['time_in.out_layer', ['time_text_embed.timestep_embedder.linear_2'], 'whole'],
      ['vector_in_in_layer', ['time_text_embed.text_embedder.linear_1'], 'whole'],
      ['vector_in_out_layer', ['time_text_embed.text_embedder.linear_2'], 'whole'],
      ['guidance_in_in_layer', ['time_text_embed.guidance_embedder.linear_1'], 'whole'],
      ['guidance_in_out_layer', ['time_text_embed.guidance_embedder.linear_2'], 'whole'],
      ['final_layer_linear', ['proj_out'], 'whole'],
      ['final_layer.adaLN_modulation.1', ['norm_out.linear'], 'halves-swapped'],
    ];
    for (const [name, modules, rows] of expected) {
      assert.ok(isBflFluxName(name), name);
      assert.deepEqual(bflToDiffusers(name), { modules, rows }, name);
    }
    for (const name of [
      'double_blocks_0_img_attn_norm_query_norm',
      'single_blocks_0_linear3',
      'final_layer_norm',
    ]) {
      const mapped = bflToDiffusers(name);
      assert.ok('reason' in mapped, name);
      assert.match(mapped.reason, /is no LoRA module of/);
    }
    // No diffusers module of the other denoisers reads as a BFL name.
    for (const name of [
      'transformer_blocks_0_attn_to_q',
      'down_blocks_0_attentions_0_proj_in',
      'input_blocks_4_1_proj_in',
      'time_text_embed_timestep_embedder_linear_1',
      'proj_out',
      'text_model_final_layer_norm',
    ])
      assert.ok(!isBflFluxName(name), name);
  });

  it("maps XLabs' processors: qkv_lora1/2 onto the image/text q, k, v, proj_lora1/2 onto the output projections", () => {
    const expected: [string, string[], string][] = [
      [
        'double_blocks.4.processor.qkv_lora1',
        [
          'transformer_blocks.4.attn.to_q',
          'transformer_blocks.4.attn.to_k',
          'transformer_blocks.4.attn.to_v',
        ],
        'stacked',
      ],
      [
        'double_blocks.4.processor.qkv_lora2',
        [
          'transformer_blocks.4.attn.add_q_proj',
          'transformer_blocks.4.attn.add_k_proj',
          'transformer_blocks.4.attn.add_v_proj',
        ],
        'stacked',
      ],
      ['double_blocks.4.processor.proj_lora1', ['transformer_blocks.4.attn.to_out.0'], 'whole'],
      ['double_blocks.4.processor.proj_lora2', ['transformer_blocks.4.attn.to_add_out'], 'whole'],
      [
        'single_blocks.9.processor.qkv_lora',
        [
          'single_transformer_blocks.9.attn.to_q',
          'single_transformer_blocks.9.attn.to_k',
          'single_transformer_blocks.9.attn.to_v',
        ],
        'stacked',
      ],
      ['single_blocks.9.processor.proj_lora', ['single_transformer_blocks.9.proj_out'], 'whole'],
    ];
    for (const [name, modules, rows] of expected)
      assert.deepEqual(xlabsToDiffusers(name), { modules, rows }, name);
    const unknown = xlabsToDiffusers('double_blocks.0.processor.ip_adapter_double_stream_k_proj');
    assert.ok('reason' in unknown);
    assert.match(
      unknown.reason,
      /'ip_adapter_double_stream_k_proj' is no XLabs LoRA of a double-stream block/,
    );
    assert.ok(isXlabsKey('diffusion_model.double_blocks.0.processor.qkv_lora1.down.weight'));
    assert.ok(!isXlabsKey('transformer_blocks.0.attn1.processor.to_q_lora.down.weight'));
  });

  it('detects the formats: kohya (lora_unet_, ComfyUI lora_down), XLabs, BFL lora_A/B, PEFT and diffusers', () => {
    const cases: [string[], boolean, string][] = [
      [
        [
          'lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight',
          'lora_te1_text_model_encoder_layers_0_mlp_fc1.alpha',
        ],
        false,
        'kohya',
      ],
      [
        [
          'diffusion_model.double_blocks.0.img_attn.qkv.lora_down.weight',
          'diffusion_model.double_blocks.0.img_attn.qkv.alpha',
        ],
        false,
        'kohya',
      ],
      [
        ['double_blocks.0.processor.qkv_lora1.down.weight', 'double_blocks.0.processor.qkv_lora1.up.weight'],
        false,
        'xlabs',
      ],
      [['diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight'], false, 'bfl'],
      [
        ['double_blocks.0.img_attn.qkv.lora_B.weight', 'double_blocks.0.img_attn.norm.query_norm.scale'],
        false,
        'bfl',
      ],
      [['base_model.model.single_blocks.0.linear1.lora_A.weight'], false, 'bfl'],
      [['base_model.model.single_blocks.0.linear1.lora_A.weight'], true, 'peft'],
      [['base_model.model.transformer_blocks.0.attn.to_q.lora_A.weight'], false, 'peft'],
      [['transformer.transformer_blocks.0.attn.to_q.lora_A.weight'], false, 'diffusers'],
      [
        ['unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora.down.weight'],
        false,
        'diffusers',
      ],
    ];
    for (const [keys, peftConfig, format] of cases)
      assert.equal(detectFormat(keys, peftConfig), format, keys[0]);
  });

  describe('on the tiny FLUX model (pairs, without running it)', () => {
    let model: SafetensorsFile;
    before(async () => {
      model = await SafetensorsFile.open(await safetensorsIn(FLUX_MODEL));
    });
    after(async () => model.close());

    /** Header entries of F32 tensors laid out one after another, as a file would hold them. */
    function fakeFile(shapes: Record<string, number[]>): Map<string, LoraTensorInfo> {
      const infos = new Map<string, LoraTensorInfo>();
      let offset = 1000;
      for (const [name, shape] of Object.entries(shapes)) {
        const byteLength = 4 * shape.reduce((p, d) => p * d, 1);
        infos.set(name, {
          name,
          dtype: 'F32',
          shape,
          byteLength,
          fileOffset: offset,
          path: '/lora.safetensors',
        });
        offset += byteLength;
      }
      return infos;
    }

    it("splits qkv's and linear1's B by the model's rows (A shared), block-diagonal B included, at the file's alpha/r", () => {
      const r = 2;
      const infos = fakeFile({
        'lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight': [r, 32],
        'lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight': [96, r],
        'lora_unet_double_blocks_0_img_attn_qkv.alpha': [],
        // kohya's split LoRA: rank 3·2 with B block-diagonal; diffusers gives each part rank 2 of it.
        'lora_unet_double_blocks_0_txt_attn_qkv.lora_down.weight': [3 * r, 32],
        'lora_unet_double_blocks_0_txt_attn_qkv.lora_up.weight': [96, 3 * r],
        'lora_unet_single_blocks_1_linear1.lora_down.weight': [r, 32],
        'lora_unet_single_blocks_1_linear1.lora_up.weight': [224, r],
        'lora_unet_single_blocks_1_linear1.alpha': [],
        'lora_unet_final_layer_adaLN_modulation_1.lora_down.weight': [r, 32],
        'lora_unet_final_layer_adaLN_modulation_1.lora_up.weight': [64, r],
      });
      const alphas = new Map([
        ['lora_unet_double_blocks_0_img_attn_qkv.alpha', 3],
        ['lora_unet_single_blocks_1_linear1.alpha', 8],
      ]);
      const { pairs, ignored } = pairLoraTensors(
        infos,
        alphas,
        'kohya',
        undefined,
        model,
        '/lora.safetensors',
      );
      assert.deepEqual(ignored, []);
      const rowsOf = (key: string, pairModule: string): [number, number, number, number] => {
        const pair = pairs.find((p) => p.modulePath === pairModule);
        assert.ok(pair, pairModule);
        const file = infos.get(key) as LoraTensorInfo;
        const rowBytes = file.byteLength / file.shape[0];
        const begin = (pair.up.fileOffset - file.fileOffset) / rowBytes;
        assert.equal(pair.up.name, key);
        assert.equal(pair.up.byteLength, pair.up.shape[0] * rowBytes);
        return [begin, begin + pair.up.shape[0], pair.rank, pair.scale];
      };
      const up = (m: string): string => `lora_unet_${m}.lora_up.weight`;
      const double = 'transformer_blocks.0.attn';
      assert.deepEqual(rowsOf(up('double_blocks_0_img_attn_qkv'), `${double}.to_q`), [0, 32, r, 3 / r]);
      assert.deepEqual(rowsOf(up('double_blocks_0_img_attn_qkv'), `${double}.to_k`), [32, 64, r, 3 / r]);
      assert.deepEqual(rowsOf(up('double_blocks_0_img_attn_qkv'), `${double}.to_v`), [64, 96, r, 3 / r]);
      // A block-diagonal B is used whole-rank: its zero blocks add nothing, so each part equals diffusers' rank-2 piece.
      assert.deepEqual(rowsOf(up('double_blocks_0_txt_attn_qkv'), `${double}.add_k_proj`), [
        32,
        64,
        3 * r,
        1,
      ]);
      const single = 'single_transformer_blocks.1';
      assert.deepEqual(rowsOf(up('single_blocks_1_linear1'), `${single}.attn.to_q`), [0, 32, r, 8 / r]);
      assert.deepEqual(rowsOf(up('single_blocks_1_linear1'), `${single}.attn.to_k`), [32, 64, r, 8 / r]);
      assert.deepEqual(rowsOf(up('single_blocks_1_linear1'), `${single}.attn.to_v`), [64, 96, r, 8 / r]);
      assert.deepEqual(rowsOf(up('single_blocks_1_linear1'), `${single}.proj_mlp`), [96, 224, r, 8 / r]);
      for (const pair of pairs.filter((p) => p.modulePath.startsWith(single)))
        assert.equal(pair.down, infos.get('lora_unet_single_blocks_1_linear1.lora_down.weight'));
      // norm_out.linear: B is [shift; scale] in the file, stacked as [scale; shift].
      const norm = pairs.find((p) => p.modulePath === 'norm_out.linear');
      assert.ok(norm?.upBlocks);
      const file = infos.get(up('final_layer_adaLN_modulation_1')) as LoraTensorInfo;
      assert.deepEqual(
        norm.upBlocks.map((b) => [(b.fileOffset - file.fileOffset) / (4 * r), b.shape[0]]),
        [
          [32, 32],
          [0, 32],
        ],
      );
      assert.equal(pairs.length, 3 + 3 + 4 + 1);
    });

    it("names the key and both sizes when a fused B's rows do not stack the model's outputs", () => {
      const infos = fakeFile({
        'double_blocks.0.img_attn.qkv.lora_A.weight': [4, 32],
        'double_blocks.0.img_attn.qkv.lora_B.weight': [9216, 4],
      });
      assert.throws(
        () => pairLoraTensors(infos, new Map(), 'bfl', undefined, model, '/lora.safetensors'),
        (e: unknown) => {
          assert.ok(e instanceof FileFormatError, String(e));
          assert.equal(e.code, 'LORA_SHAPE');
          assert.match(e.message, /'double_blocks\.0\.img_attn\.qkv\.lora_B\.weight' is \[9216, 4\]/);
          assert.match(e.message, /'transformer_blocks\.0\.attn\.to_q' \(32\).*: 96 rows/);
          return true;
        },
      );
    });
  });
});

describe('FLUX LoRA files in BFL and XLabs naming on FluxTransformer2DModel', () => {
  let base: Record<string, HostTensor>;
  before(async () => {
    base = await readAllTensors(await safetensorsIn(FLUX_MODEL));
  });

  /** A kohya-style LoRA on every kind of BFL module of the tiny model, alpha ≠ r on most. */
  function kohyaLora(): Record<string, BflTerm> {
    return {
      'double_blocks.0.img_attn.qkv': bflTerm(base, 'double_blocks.0.img_attn.qkv', 2, { alpha: 3 }),
      'double_blocks.0.txt_attn.qkv': bflTerm(base, 'double_blocks.0.txt_attn.qkv', 6, {
        alpha: 3,
        blockDiagonal: true,
      }),
      'double_blocks.0.img_attn.proj': bflTerm(base, 'double_blocks.0.img_attn.proj', 2, { alpha: 1 }),
      'double_blocks.0.txt_mlp.0': bflTerm(base, 'double_blocks.0.txt_mlp.0', 2, { alpha: 4 }),
      'double_blocks.0.img_mod.lin': bflTerm(base, 'double_blocks.0.img_mod.lin', 2, { alpha: 3 }),
      'single_blocks.0.linear1': bflTerm(base, 'single_blocks.0.linear1', 4, { alpha: 2 }),
      'single_blocks.1.linear2': bflTerm(base, 'single_blocks.1.linear2', 2, { alpha: 3 }),
      'single_blocks.1.modulation.lin': bflTerm(base, 'single_blocks.1.modulation.lin', 2, { alpha: 3 }),
      img_in: bflTerm(base, 'img_in', 2),
      'time_in.in_layer': bflTerm(base, 'time_in.in_layer', 2, { alpha: 3 }),
      'guidance_in.out_layer': bflTerm(base, 'guidance_in.out_layer', 2, { alpha: 3 }),
      'final_layer.adaLN_modulation.1': bflTerm(base, 'final_layer.adaLN_modulation.1', 2, { alpha: 3 }),
      'final_layer.linear': bflTerm(base, 'final_layer.linear', 2, { alpha: 3 }),
    };
  }
  const kohyaScale = (t: BflTerm): number => (t.alpha ?? t.rank) / t.rank;
  const diffusersModules = (lora: Record<string, BflTerm>): string[] =>
    [...new Set(Object.keys(lora).flatMap((name) => BFL_WEIGHTS[name].rows))].sort();

  it('kohya lora_unet_ names: switchable and fused, equal to the weights merged in BFL layout', async () => {
    const lora = kohyaLora();
    const file = join(await freshDir(), 'kohya.safetensors');
    await writeSafetensors(file, kohyaTensors(lora));
    const model = await FluxTransformer2DModel.fromPretrained(FLUX_MODEL, { runtime });
    const merged = await FluxTransformer2DModel.fromPretrained(await mergedBflCopy(base, lora, kohyaScale), {
      runtime,
    });
    try {
      const inputs = await tinyFluxInputs(random);
      const plain = (await model.forward(inputs)).sample;
      const loaded = await model.loadLoraWeights(file, { adapterName: 'kohya' });
      assert.equal(loaded.format, 'kohya');
      assert.deepEqual(loaded.ignored, []);
      assert.deepEqual([...loaded.modules].sort(), diffusersModules(lora));
      const expected = (await merged.forward(inputs)).sample;
      assertLoraMatches((await model.forward(inputs)).sample, expected, plain, 'kohya FLUX LoRA, switchable');
      model.adapters.fuse();
      assertLoraMatches((await model.forward(inputs)).sample, expected, plain, 'kohya FLUX LoRA, fused');
    } finally {
      await model.close();
      await merged.close();
    }
  });

  it("ComfyUI's diffusion_model.…lora_down and BFL's lora_A/lora_B spellings equal the kohya file", async () => {
    const lora = kohyaLora();
    const dir = await freshDir();
    const kohya = join(dir, 'kohya.safetensors');
    const comfy = join(dir, 'comfy.safetensors');
    const bfl = join(dir, 'bfl.safetensors');
    await writeSafetensors(kohya, kohyaTensors(lora));
    await writeSafetensors(comfy, kohyaTensors(lora, 'comfyui'));
    // lora_A/lora_B files carry no alpha: alpha/r is folded into B, as diffusers folds kohya's.
    const bflTensors: Record<string, TensorToWrite> = {};
    for (const [name, t] of Object.entries(lora)) {
      bflTensors[`diffusion_model.${name}.lora_A.weight`] = f32([t.rank, t.cols], t.a);
      bflTensors[`diffusion_model.${name}.lora_B.weight`] = f32(
        [t.rows, t.rank],
        t.b.map((v) => v * kohyaScale(t)),
      );
    }
    await writeSafetensors(bfl, bflTensors);
    const model = await FluxTransformer2DModel.fromPretrained(FLUX_MODEL, { runtime });
    try {
      const inputs = await tinyFluxInputs(random);
      const formats: string[] = [];
      for (const [name, path] of [
        ['kohya', kohya],
        ['comfy', comfy],
        ['bfl', bfl],
      ] as const) {
        const loaded = await model.loadLoraWeights(path, { adapterName: name });
        assert.deepEqual(loaded.ignored, [], name);
        assert.deepEqual([...loaded.modules].sort(), diffusersModules(lora), name);
        formats.push(loaded.format);
      }
      assert.deepEqual(formats, ['kohya', 'kohya', 'bfl']);
      const outputs: Record<string, Float32Array> = {};
      for (const name of ['kohya', 'comfy', 'bfl']) {
        model.adapters.setAdapters(name);
        outputs[name] = (await model.forward(inputs)).sample.data as Float32Array;
      }
      for (const name of ['comfy', 'bfl']) {
        assertClose(outputs[name], outputs.kohya, {
          atol: 1e-6,
          rtol: 1e-5,
          what: `seed ${seed}: ${name} spelling vs kohya`,
        });
      }
    } finally {
      await model.close();
    }
  });

  it('XLabs processors: equal to the weights merged in BFL layout (no alpha: scale 1)', async () => {
    const lora: Record<string, BflTerm> = {
      'double_blocks.0.img_attn.qkv': bflTerm(base, 'double_blocks.0.img_attn.qkv', 2),
      'double_blocks.0.img_attn.proj': bflTerm(base, 'double_blocks.0.img_attn.proj', 2),
      'double_blocks.0.txt_attn.qkv': bflTerm(base, 'double_blocks.0.txt_attn.qkv', 3),
      'double_blocks.0.txt_attn.proj': bflTerm(base, 'double_blocks.0.txt_attn.proj', 2),
      'single_blocks.0.linear1[:3·dim]': bflTerm(base, 'single_blocks.0.linear1[:3·dim]', 2),
      'single_blocks.1.linear2': bflTerm(base, 'single_blocks.1.linear2', 2),
    };
    const xlabsNames: Record<string, string> = {
      'double_blocks.0.img_attn.qkv': 'double_blocks.0.processor.qkv_lora1',
      'double_blocks.0.img_attn.proj': 'double_blocks.0.processor.proj_lora1',
      'double_blocks.0.txt_attn.qkv': 'double_blocks.0.processor.qkv_lora2',
      'double_blocks.0.txt_attn.proj': 'double_blocks.0.processor.proj_lora2',
      'single_blocks.0.linear1[:3·dim]': 'single_blocks.0.processor.qkv_lora',
      'single_blocks.1.linear2': 'single_blocks.1.processor.proj_lora',
    };
    const tensors: Record<string, TensorToWrite> = {};
    for (const [name, t] of Object.entries(lora)) {
      tensors[`${xlabsNames[name]}.down.weight`] = f32([t.rank, t.cols], t.a);
      tensors[`${xlabsNames[name]}.up.weight`] = f32([t.rows, t.rank], t.b);
    }
    const file = join(await freshDir(), 'xlabs.safetensors');
    await writeSafetensors(file, tensors);
    const model = await FluxTransformer2DModel.fromPretrained(FLUX_MODEL, { runtime });
    const merged = await FluxTransformer2DModel.fromPretrained(await mergedBflCopy(base, lora, () => 1), {
      runtime,
    });
    try {
      const inputs = await tinyFluxInputs(random);
      const plain = (await model.forward(inputs)).sample;
      const loaded = await model.loadLoraWeights(file);
      assert.equal(loaded.format, 'xlabs');
      assert.deepEqual(loaded.ignored, []);
      assert.deepEqual(loaded.alphaOverRank, [1]);
      assert.deepEqual([...loaded.modules].sort(), diffusersModules(lora));
      const expected = (await merged.forward(inputs)).sample;
      assertLoraMatches((await model.forward(inputs)).sample, expected, plain, 'XLabs FLUX LoRA');
    } finally {
      await model.close();
      await merged.close();
    }
  });

  it('reports by name and reason the keys that map to no module, loading the rest', async () => {
    const lora = {
      'double_blocks.0.img_attn.qkv': bflTerm(base, 'double_blocks.0.img_attn.qkv', 2, { alpha: 2 }),
    };
    const t = lora['double_blocks.0.img_attn.qkv'];
    const dir = await freshDir();
    const kohya = join(dir, 'partial.safetensors');
    await writeSafetensors(kohya, {
      ...kohyaTensors(lora),
      // A block the tiny model lacks, a part of a block that is no LoRA module, a T5 LoRA.
      'lora_unet_double_blocks_5_img_attn_qkv.lora_down.weight': f32([2, 32], t.a),
      'lora_unet_double_blocks_5_img_attn_qkv.lora_up.weight': f32([96, 2], t.b),
      'lora_unet_double_blocks_0_img_attn_norm_query_norm.lora_down.weight': f32([2, 16], t.a.slice(0, 32)),
      'lora_unet_double_blocks_0_img_attn_norm_query_norm.lora_up.weight': f32([16, 2], t.b.slice(0, 32)),
      'lora_te3_encoder_block_0_layer_0_SelfAttention_q.lora_down.weight': f32([2, 32], t.a),
      // A bias difference beside the qkv LoRA: dropped, the LoRA still applies.
      'lora_unet_double_blocks_0_img_attn_qkv.diff_b': f32([96], t.b.slice(0, 96)),
    });
    const xlabs = join(dir, 'xlabs.safetensors');
    await writeSafetensors(xlabs, {
      'double_blocks.0.processor.qkv_lora1.down.weight': f32([2, 32], t.a),
      'double_blocks.0.processor.qkv_lora1.up.weight': f32([96, 2], t.b),
      'double_blocks.0.processor.ip_adapter_k.down.weight': f32([2, 32], t.a),
      'double_blocks.0.processor.ip_adapter_k.up.weight': f32([32, 2], t.b.slice(0, 64)),
    });
    const model = await FluxTransformer2DModel.fromPretrained(FLUX_MODEL, { runtime });
    try {
      const loaded = await model.loadLoraWeights(kohya);
      assert.deepEqual([...loaded.modules].sort(), [
        'transformer_blocks.0.attn.to_k',
        'transformer_blocks.0.attn.to_q',
        'transformer_blocks.0.attn.to_v',
      ]);
      const reasons = new Map(loaded.ignored.map((i) => [i.key, i.reason]));
      assert.deepEqual([...reasons.keys()].sort(), [
        'lora_te3_encoder_block_0_layer_0_SelfAttention_q.lora_down.weight',
        'lora_unet_double_blocks_0_img_attn_norm_query_norm.lora_down.weight',
        'lora_unet_double_blocks_0_img_attn_norm_query_norm.lora_up.weight',
        'lora_unet_double_blocks_0_img_attn_qkv.diff_b',
        'lora_unet_double_blocks_5_img_attn_qkv.lora_down.weight',
        'lora_unet_double_blocks_5_img_attn_qkv.lora_up.weight',
      ]);
      assert.match(
        reasons.get('lora_unet_double_blocks_5_img_attn_qkv.lora_up.weight') ?? '',
        /BFL FLUX module 'double_blocks_5_img_attn_qkv' is diffusers' 'transformer_blocks\.5\.attn\.to_q'.*no module 'transformer_blocks\.5\.attn\.to_q'/,
      );
      assert.match(
        reasons.get('lora_unet_double_blocks_0_img_attn_norm_query_norm.lora_down.weight') ?? '',
        /'double_blocks_0_img_attn_norm_query_norm' is no LoRA module of a FLUX double-stream block/,
      );
      assert.match(reasons.get('lora_unet_double_blocks_0_img_attn_qkv.diff_b') ?? '', /a bias difference/);
      assert.match(
        reasons.get('lora_te3_encoder_block_0_layer_0_SelfAttention_q.lora_down.weight') ?? '',
        /a T5 text-encoder LoRA/,
      );
      const x = await model.loadLoraWeights(xlabs);
      assert.equal(x.format, 'xlabs');
      assert.equal(x.modules.length, 3);
      assert.deepEqual(x.ignored.map((i) => i.key).sort(), [
        'double_blocks.0.processor.ip_adapter_k.down.weight',
        'double_blocks.0.processor.ip_adapter_k.up.weight',
      ]);
      assert.match(x.ignored[0].reason, /'ip_adapter_k' is no XLabs LoRA of a double-stream block/);
      // A Control LoRA's norm scales are reported as such (its LoRA tensors load).
      const control = join(dir, 'control.safetensors');
      await writeSafetensors(control, {
        'double_blocks.0.img_attn.qkv.lora_A.weight': f32([2, 32], t.a),
        'double_blocks.0.img_attn.qkv.lora_B.weight': f32([96, 2], t.b),
        'double_blocks.0.img_attn.norm.query_norm.scale': f32([16], t.a.slice(0, 16)),
      });
      const contents = await readLoraFile(control, model.weights);
      assert.equal(contents.format, 'bfl');
      assert.equal(contents.pairs.length, 3);
      assert.deepEqual(
        contents.ignored.map((i) => i.key),
        ['double_blocks.0.img_attn.norm.query_norm.scale'],
      );
      assert.match(contents.ignored[0].reason, /FLUX Control LoRA's RMSNorm scale/);
    } finally {
      await model.close();
    }
  });
});

describe('FluxPipeline.loadLoraWeights with a kohya or ComfyUI FLUX file', () => {
  it('routes lora_unet_/diffusion_model. keys to the transformer and lora_te1_/text_encoders.clip_l. keys to CLIP; T5 keys are reported', async () => {
    const dir = await tinyFluxPipeline();
    const transformerBase = await readAllTensors(await safetensorsIn(join(dir, 'transformer')));
    const clip = await readAllTensors(await safetensorsIn(join(dir, 'text_encoder')));
    const fc1 = 'text_model.encoder.layers.0.mlp.fc1';
    const te = randomLoraFor(clip, [fc1], 2, random)[fc1];
    const qkv = bflTerm(transformerBase, 'double_blocks.0.img_attn.qkv', 2, { alpha: 3 });
    const loraDir = await freshDir();
    const kohya = join(loraDir, 'kohya.safetensors');
    await writeSafetensors(kohya, {
      ...kohyaTensors({ 'double_blocks.0.img_attn.qkv': qkv }),
      'lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight': f32(te.aShape, te.a),
      'lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_up.weight': f32(te.bShape, te.b),
      'lora_te1_text_model_encoder_layers_0_mlp_fc1.alpha': f32([], Float32Array.of(3)),
    });
    const comfy = join(loraDir, 'comfy.safetensors');
    const clipL = `text_encoders.clip_l.transformer.${fc1}`;
    await writeSafetensors(comfy, {
      ...kohyaTensors({ 'double_blocks.0.img_attn.qkv': qkv }, 'comfyui'),
      [`${clipL}.lora_down.weight`]: f32(te.aShape, te.a),
      [`${clipL}.lora_up.weight`]: f32(te.bShape, te.b),
      [`${clipL}.alpha`]: f32([], Float32Array.of(3)),
      'text_encoders.t5xxl.transformer.encoder.block.0.layer.0.SelfAttention.q.lora_down.weight': f32(
        [2, 24],
        randomArray(48, random),
      ),
    });
    const pipe = await FluxPipeline.fromPretrained(dir, { runtime });
    try {
      const encoder = pipe.clipEncoder?.textEncoder;
      assert.ok(encoder);
      const ids = hostTensor('int64', [1, 4], BigInt64Array.of(512n, 40n, 41n, 513n));
      const plain = (await encoder.forward({ input_ids: ids })).last_hidden_state.data as Float32Array;
      const modules = [
        'text_encoder.text_model.encoder.layers.0.mlp.fc1',
        'transformer_blocks.0.attn.to_k',
        'transformer_blocks.0.attn.to_q',
        'transformer_blocks.0.attn.to_v',
      ];
      const fromKohya = await pipe.loadLoraWeights(kohya, { adapterName: 'kohya' });
      assert.equal(fromKohya.format, 'kohya');
      assert.deepEqual(fromKohya.components, ['denoiser', 'text_encoder']);
      assert.deepEqual([...fromKohya.modules].sort(), modules);
      assert.deepEqual(fromKohya.ignored, []);
      assert.deepEqual(fromKohya.alphaOverRank, [1.5]);
      const fromComfy = await pipe.loadLoraWeights(comfy, { adapterName: 'comfy' });
      assert.deepEqual(fromComfy.components, ['denoiser', 'text_encoder']);
      assert.deepEqual([...fromComfy.modules].sort(), modules);
      assert.deepEqual(
        fromComfy.ignored.map((i) => i.key),
        ['text_encoders.t5xxl.transformer.encoder.block.0.layer.0.SelfAttention.q.lora_down.weight'],
      );
      assert.match(fromComfy.ignored[0].reason, /a T5 text-encoder LoRA/);
      const run = async (name: string): Promise<Float32Array> => {
        pipe.setAdapters(name);
        return (await encoder.forward({ input_ids: ids })).last_hidden_state.data as Float32Array;
      };
      const viaKohya = await run('kohya');
      assert.ok(
        maxAbs(viaKohya.map((v, i) => v - plain[i])) > 1e-3,
        `seed ${seed}: the CLIP LoRA has no effect`,
      );
      assertClose(await run('comfy'), viaKohya, {
        atol: 1e-6,
        rtol: 1e-6,
        what: `seed ${seed}: ComfyUI vs kohya CLIP LoRA`,
      });
    } finally {
      await pipe.close();
    }
  });
});
