/**
 * CLEAR on FluxTransformer2DModel (methods/clear_linfusion.md §1): the tiny golden FLUX.1-dev-style
 * model run with `attention: { kind: 'clear', … }` against the float64 FLUX forward of
 * flux-reference.ts, whose every attention is the dense masked form of §1.3–§1.4 (test/reference's
 * clearAttentionRef: text queries see every text and image key; image queries every text key, the
 * image keys with (Δy)² + (Δx)² < r² on the packed grid and every pooled key, in one softmax).
 * Fresh inputs on odd grids and batch 2, with and without pooled keys/values; a CLEAR weights file
 * overlaid on the checkpoint; the grid read from img_ids or given; `velodiff forward --attention`.
 */
import assert from 'node:assert/strict';
import { copyFile, mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { clearPlan } from '../../src/attention/clear-window.js';
import type { TokenGrid } from '../../src/attention/types.js';
import { GraphBuildError, OptionError, RuntimeError, VelodiffError } from '../../src/errors.js';
import { writeHostTensors } from '../../src/io/host-tensors.js';
import {
  FluxTransformer2DModel,
  fluxImageGrid,
  fluxProportionalAttentionScale,
} from '../../src/models/flux-transformer.js';
import type { HostTensor } from '../../src/runtime/host-tensor.js';
import { hostTensor } from '../../src/runtime/host-tensor.js';
import { Runtime } from '../../src/runtime/runtime.js';
import { captureCli } from '../cli/capture.js';
import { assertExactlyEqual, assertMaxAbsError, maxAbs } from '../compare.js';
import { randomArray, readAllTensors } from '../helpers.js';
import { seededUniform, testSeed } from '../random.js';
import type { FluxRefAttention, FluxRefScaling } from './flux-reference.js';
import { FluxReference } from './flux-reference.js';

const GOLDEN = fileURLToPath(new URL('../golden/models/flux_transformer_tiny/', import.meta.url));
const MODEL = `${GOLDEN}model`;

/**
 * Float32 model against the float64 reference, relative to max(1, max |sample|): torch's own fp32
 * noise on this model is 2.4e-7 of the output scale (meta.json); measured up to 4e-7 here.
 */
const TOLERANCE = 5e-6;

const runtime = new Runtime({ worker: false, threads: 1 });
after(() => runtime.dispose());
const random = seededUniform(testSeed('test/models/flux-clear.test.ts'));

/** FluxPipeline's ids: img_ids (0, y, x) in raster order over the packed grid, txt_ids zeros. */
function rasterIds(grid: TokenGrid): Float32Array {
  const ids = new Float32Array(grid.height * grid.width * 3);
  for (let n = 0; n < grid.height * grid.width; n++) {
    ids[3 * n + 1] = Math.floor(n / grid.width);
    ids[3 * n + 2] = n % grid.width;
  }
  return ids;
}

/** Fresh inputs of the tiny dev model (in_channels 16, joint_attention_dim 24, pooled 20) on `grid`. */
function freshInputs(batch: number, grid: TokenGrid, textTokens = 5): Record<string, HostTensor> {
  const n = grid.height * grid.width;
  return {
    hidden_states: hostTensor('float32', [batch, n, 16], randomArray(batch * n * 16, random, -2, 2)),
    encoder_hidden_states: hostTensor(
      'float32',
      [batch, textTokens, 24],
      randomArray(batch * textTokens * 24, random, -2, 2),
    ),
    pooled_projections: hostTensor('float32', [batch, 20], randomArray(batch * 20, random, -1, 1)),
    timestep: hostTensor('float32', [batch], randomArray(batch, random, 0.05, 1)),
    guidance: hostTensor('float32', [batch], randomArray(batch, random, 1, 5)),
    img_ids: hostTensor('float32', [n, 3], rasterIds(grid)),
    txt_ids: hostTensor('float32', [textTokens, 3], new Float32Array(textTokens * 3)),
  };
}

/** max |model − reference|, asserted within TOLERANCE of the reference's scale. */
function checkAgainst(
  sample: HostTensor,
  expected: { shape: readonly number[]; data: Float64Array },
  what: string,
): number {
  assert.deepEqual(sample.shape, expected.shape, what);
  const bound = TOLERANCE * Math.max(1, maxAbs(expected.data));
  return assertMaxAbsError(sample.data as Float32Array, expected.data, bound, what).maxAbsError;
}

describe('FluxTransformer2DModel with CLEAR vs the float64 dense masked reference', () => {
  let model: FluxTransformer2DModel;
  let reference: FluxReference;
  before(async () => {
    model = await FluxTransformer2DModel.fromPretrained(MODEL, { runtime });
    reference = await FluxReference.load(MODEL);
  });
  after(() => model.close());

  it("the reference is diffusers' FLUX: full attention on the golden inputs gives the float64 golden output", async (t) => {
    const inputs = await readAllTensors(`${GOLDEN}inputs.safetensors`);
    const golden = (await readAllTensors(`${GOLDEN}outputs_f64.safetensors`)).sample;
    const expected = reference.forward(inputs);
    // diffusers rounds the RoPE tables and the rotated q, k to float32 even in float64 (apply_rotary_emb's x.float()).
    const err = assertMaxAbsError(
      expected.data,
      golden.data as ArrayLike<number>,
      2e-6,
      'reference vs golden f64',
    );
    const ours = await model.forward(inputs);
    t.diagnostic(
      `reference vs golden f64 ${err.maxAbsError.toExponential(2)}; ` +
        `model vs reference ${checkAgainst(ours.sample, expected, 'full attention').toExponential(2)}`,
    );
  });

  const cases: {
    name: string;
    batch: number;
    grid: TokenGrid;
    radius: number;
    downFactor?: number;
    /** The lowering clearAttention's cost model picks for this grid (2 heads of 16, 5 text tokens). */
    plan: 'dense' | 'tiled';
  }[] = [
    {
      name: 'r=2 on an odd 3×5 grid, batch 2',
      batch: 2,
      grid: { height: 3, width: 5 },
      radius: 2,
      plan: 'dense',
    },
    {
      name: 'r=1 (each image query sees only itself and the text) on 3×5',
      batch: 1,
      grid: { height: 3, width: 5 },
      radius: 1,
      plan: 'dense',
    },
    {
      name: 'r=2.5 on a 5×3 grid, batch 2',
      batch: 2,
      grid: { height: 5, width: 3 },
      radius: 2.5,
      plan: 'dense',
    },
    {
      name: 'r=2 on an odd 7×9 grid, batch 2: tiled',
      batch: 2,
      grid: { height: 7, width: 9 },
      radius: 2,
      plan: 'tiled',
    },
    {
      name: 'df=2 pooled keys/values (1/df², no spatial_weight in the checkpoint), r=2 on 4×6, batch 2',
      batch: 2,
      grid: { height: 4, width: 6 },
      radius: 2,
      downFactor: 2,
      plan: 'dense',
    },
    {
      name: 'df=2 pooled keys/values, r=3 on 8×10, batch 2: tiled',
      batch: 2,
      grid: { height: 8, width: 10 },
      radius: 3,
      downFactor: 2,
      plan: 'tiled',
    },
    {
      name: 'df=3 on 3×6, r=1.5',
      batch: 1,
      grid: { height: 3, width: 6 },
      radius: 1.5,
      downFactor: 3,
      plan: 'dense',
    },
  ];
  for (const c of cases) {
    it(c.name, async (t) => {
      const inputs = freshInputs(c.batch, c.grid);
      const downFactor = c.downFactor ?? 1;
      const pooledTokens = downFactor > 1 ? (c.grid.height * c.grid.width) / downFactor ** 2 : 0;
      const options = { textTokens: 5, pooledTokens, numHeads: 2, channels: 32 };
      assert.equal(clearPlan(c.grid, c.radius, options).kind, c.plan);
      const attention: FluxRefAttention = { kind: 'clear', radius: c.radius, downFactor, grid: c.grid };
      const ours = await model.forward(inputs, {
        attention: { kind: 'clear', radius: c.radius, downFactor },
      });
      const expected = reference.forward(inputs, attention);
      const err = checkAgainst(ours.sample, expected, c.name);
      // The window changes the output: a test of CLEAR that full attention would pass cannot fail.
      const full = reference.forward(inputs);
      const change = Math.max(...expected.data.map((v, i) => Math.abs(v - full.data[i])));
      assert.ok(change > 1e3 * TOLERANCE, `CLEAR changes the sample by ${change}`);
      t.diagnostic(
        `max |diff| ${err.toExponential(2)} (CLEAR vs full attention: ${change.toExponential(2)})`,
      );
    });
  }

  it('a circle holding the whole 4×6 grid (r=6, from the golden img_ids) is full attention: the golden output', async () => {
    const inputs = await readAllTensors(`${GOLDEN}inputs.safetensors`);
    const golden = (await readAllTensors(`${GOLDEN}outputs_f64.safetensors`)).sample;
    const ours = await model.forward(inputs, { attention: { kind: 'clear', radius: 6 } });
    checkAgainst(
      ours.sample,
      { shape: golden.shape, data: Float64Array.from(golden.data as Float64Array) },
      'r=6',
    );
    // r=5.8 leaves out the far corners (3² + 5² = 34 ≥ 5.8²): no longer the golden output.
    const narrower = await model.forward(inputs, { attention: { kind: 'clear', radius: 5.8 } });
    const expected = reference.forward(inputs, {
      kind: 'clear',
      radius: 5.8,
      downFactor: 1,
      grid: { height: 4, width: 6 },
    });
    checkAgainst(narrower.sample, expected, 'r=5.8');
  });

  it('the grid option, for img_ids that are not FluxPipeline raster (the window follows token order, not ids)', async () => {
    const grid = { height: 3, width: 4 };
    const inputs = freshInputs(1, grid);
    // Ids shifted and the columns reversed: RoPE sees them; CLEAR's mask sees token positions only (§1.2).
    const ids = rasterIds(grid);
    for (let n = 0; n < 12; n++) {
      ids[3 * n + 1] += 7;
      ids[3 * n + 2] = 3 - ids[3 * n + 2];
    }
    inputs.img_ids = hostTensor('float32', [12, 3], ids);
    await assert.rejects(model.forward(inputs, { attention: { kind: 'clear', radius: 2 } }), (e: unknown) => {
      assert.ok(e instanceof RuntimeError, String(e));
      assert.equal(e.code, 'VALUE');
      assert.match(
        e.message,
        /^FluxTransformer2DModel\.forward \(.*\): input "img_ids": attention kind 'clear' .* token 1 has \(row, column\) ids \(7, 2\), but a raster .* at \(7, 4\); pass the grid/,
      );
      return true;
    });
    const ours = await model.forward(inputs, { attention: { kind: 'clear', radius: 2 }, grid });
    checkAgainst(
      ours.sample,
      reference.forward(inputs, { kind: 'clear', radius: 2, downFactor: 1, grid }),
      'grid option',
    );
    await assert.rejects(
      model.forward(inputs, { attention: { kind: 'clear', radius: 2 }, grid: { height: 4, width: 4 } }),
      (e: unknown) =>
        e instanceof OptionError &&
        /grid 4×4 does not hold the 12 image tokens of hidden_states/.test(e.message),
    );
  });

  it('errors: a grid the down factor does not divide, a radius below 1, LinFusion', async () => {
    const inputs = freshInputs(1, { height: 3, width: 5 });
    await assert.rejects(
      model.forward(inputs, { attention: { kind: 'clear', radius: 2, downFactor: 2 } }),
      (e: unknown) => {
        assert.ok(e instanceof GraphBuildError, String(e));
        assert.match(e.message, /transformer_blocks\.0\.attn .*grid 3×5 is not divisible by downFactor=2/);
        return true;
      },
    );
    await assert.rejects(
      model.forward(inputs, { attention: { kind: 'clear', radius: 0.5 } }),
      (e: unknown) => e instanceof OptionError && /radius must be a finite number ≥ 1/.test(e.message),
    );
    await assert.rejects(
      model.forward(inputs, { attention: { kind: 'linfusion', weights: '/nowhere' } }),
      (e: unknown) => {
        assert.ok(e instanceof VelodiffError, String(e));
        assert.equal(e.code, 'INVALID_OPTION');
        assert.match(e.message, /'linfusion' is not implemented for FluxTransformer2DModel: .* joint/);
        return true;
      },
    );
  });
});

describe("CLEAR's high-resolution RoPE and softmax scale (ropeNtkFactor, proportionalAttention) vs the float64 reference", () => {
  let model: FluxTransformer2DModel;
  let reference: FluxReference;
  before(async () => {
    model = await FluxTransformer2DModel.fromPretrained(MODEL, { runtime });
    reference = await FluxReference.load(MODEL);
  });
  after(() => model.close());

  it("the scale at the notebook's 2048×4096 (512 text + 128·256 image keys) and at 1024² with pooled keys", () => {
    // §1.5: 0.0982 (1.111× 1/√128) without pooled keys, 0.1085 (1.228×) with them; 1.128× at 1024².
    const keys = 512 + 128 * 256;
    const base = 1 / Math.sqrt(128);
    assert.equal(fluxProportionalAttentionScale(keys, 128).toFixed(4), '0.0982');
    assert.equal((fluxProportionalAttentionScale(keys, 128) / base).toFixed(3), '1.111');
    assert.equal((fluxProportionalAttentionScale(keys, 128, 4) / base).toFixed(3), '1.228');
    assert.equal((fluxProportionalAttentionScale(512 + 64 * 64, 128, 4) / base).toFixed(3), '1.128');
    // At the training length the scale is diffusers' 1/√head_dim.
    assert.ok(Math.abs(fluxProportionalAttentionScale(64 * 64 + 512, 128) - base) < 1e-15);
  });

  const cases: {
    name: string;
    grid: TokenGrid;
    attention: 'full' | { radius: number; downFactor: number };
    scaling: FluxRefScaling;
  }[] = [
    {
      name: 'full attention, ntk 10',
      grid: { height: 4, width: 6 },
      attention: 'full',
      scaling: { ntkFactor: 10 },
    },
    {
      name: 'full attention, proportional',
      grid: { height: 4, width: 6 },
      attention: 'full',
      scaling: { proportionalAttention: true },
    },
    {
      name: 'full attention, ntk 10 and proportional (the notebook without CLEAR), odd 3×5 grid',
      grid: { height: 3, width: 5 },
      attention: 'full',
      scaling: { ntkFactor: 10, proportionalAttention: true },
    },
    {
      name: 'CLEAR r=2, ntk 10 and proportional',
      grid: { height: 3, width: 5 },
      attention: { radius: 2, downFactor: 1 },
      scaling: { ntkFactor: 10, proportionalAttention: true },
    },
    {
      name: "CLEAR r=2 df=2 (log of 10·N, the authors' quirk), ntk 2.5 and proportional",
      grid: { height: 4, width: 6 },
      attention: { radius: 2, downFactor: 2 },
      scaling: { ntkFactor: 2.5, proportionalAttention: true },
    },
  ];
  for (const c of cases) {
    it(c.name, async (t) => {
      const inputs = freshInputs(2, c.grid);
      // Ids far from the origin, as at high resolution: the NTK factor changes their angles most.
      const ids = rasterIds(c.grid).map((v, i) => (i % 3 === 0 ? v : v + 40));
      inputs.img_ids = hostTensor('float32', inputs.img_ids.shape, ids);
      const refAttention: FluxRefAttention =
        c.attention === 'full' ? { kind: 'full' } : { kind: 'clear', ...c.attention, grid: c.grid };
      const options = {
        ...(c.attention === 'full' ? {} : { attention: { kind: 'clear' as const, ...c.attention } }),
        ...(c.scaling.ntkFactor === undefined ? {} : { ropeNtkFactor: c.scaling.ntkFactor }),
        ...(c.scaling.proportionalAttention ? { proportionalAttention: true } : {}),
      };
      const ours = await model.forward(inputs, options);
      const expected = reference.forward(inputs, refAttention, c.scaling);
      const err = checkAgainst(ours.sample, expected, c.name);
      // The options change the output: a test that the defaults would pass cannot fail.
      const plain = reference.forward(inputs, refAttention);
      const change = Math.max(...expected.data.map((v, i) => Math.abs(v - plain.data[i])));
      assert.ok(change > 1e3 * TOLERANCE, `the options change the sample by ${change}`);
      t.diagnostic(
        `max |diff| ${err.toExponential(2)} (change from the defaults: ${change.toExponential(2)})`,
      );
    });
  }

  it('the defaults (ntk 1, proportional off) are bit-identical to no options and to the reference', async () => {
    const grid = { height: 3, width: 5 };
    const inputs = freshInputs(1, grid);
    for (const attention of [undefined, { kind: 'clear' as const, radius: 2 }]) {
      const plain = (await model.forward(inputs, attention ? { attention } : {})).sample;
      const explicit = (
        await model.forward(inputs, {
          ...(attention ? { attention } : {}),
          ropeNtkFactor: 1,
          proportionalAttention: false,
        })
      ).sample;
      assertExactlyEqual(explicit.data as Float32Array, plain.data as Float32Array, 'explicit defaults');
      const refAttention: FluxRefAttention = attention
        ? { kind: 'clear', radius: 2, downFactor: 1, grid }
        : { kind: 'full' };
      checkAgainst(plain, reference.forward(inputs, refAttention), 'defaults vs reference');
    }
  });

  it('errors: an NTK factor that is not a finite number > 0', async () => {
    const inputs = freshInputs(1, { height: 2, width: 2 });
    for (const ropeNtkFactor of [0, -1, Number.NaN, Infinity]) {
      await assert.rejects(model.forward(inputs, { ropeNtkFactor }), (e: unknown) => {
        assert.ok(e instanceof OptionError, String(e));
        assert.match(
          e.message,
          /^FluxTransformer2DModel\.forward \(.*\): ropeNtkFactor must be a finite number > 0 .*got/,
        );
        return true;
      });
    }
  });
});

describe('fluxImageGrid', () => {
  it('reads rows and columns from raster ids at any offset, and says what breaks the raster', () => {
    assert.deepEqual(fluxImageGrid(rasterIds({ height: 3, width: 5 }), 3), { height: 3, width: 5 });
    assert.deepEqual(fluxImageGrid(rasterIds({ height: 1, width: 4 }), 3), { height: 1, width: 4 });
    assert.deepEqual(fluxImageGrid(rasterIds({ height: 6, width: 1 }), 3), { height: 6, width: 1 });
    const shifted = rasterIds({ height: 2, width: 3 }).map((v, i) => (i % 3 === 0 ? 1 : v + 10));
    assert.deepEqual(fluxImageGrid(shifted, 3), { height: 2, width: 3 });
    // 7 tokens in rows of 3: the last row is short.
    const short = rasterIds({ height: 3, width: 3 }).subarray(0, 21);
    assert.match(String(fluxImageGrid(short, 3)), /first row has 3 tokens, which does not divide the 7/);
    const swapped = rasterIds({ height: 2, width: 3 });
    swapped.set([0, 1, 1, 0, 1, 0], 9);
    assert.match(String(fluxImageGrid(swapped, 3)), /token 3 has \(row, column\) ids \(1, 1\)/);
  });
});

describe('a CLEAR weights file overlaid on the FLUX checkpoint (non-strict, §1.9)', () => {
  let dir: string;
  let overlay: Record<string, HostTensor>;
  let weightsFile: string;
  let merged: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'velodiff-flux-clear-'));
    const base = await readAllTensors(join(MODEL, 'diffusion_pytorch_model.safetensors'));
    const perturbed = (name: string, scale: number): HostTensor => {
      const t = base[name];
      const data = Float32Array.from(t.data as Float32Array, (v) => v + scale * (2 * random() - 1));
      return hostTensor('float32', t.shape, data);
    };
    // As the released files: trained to_q/k/v (+ to_out.0 in dual blocks) and each module's pooling weights.
    overlay = {
      'transformer_blocks.0.attn.to_q.weight': perturbed('transformer_blocks.0.attn.to_q.weight', 0.3),
      'transformer_blocks.0.attn.to_out.0.bias': perturbed('transformer_blocks.0.attn.to_out.0.bias', 0.3),
      'single_transformer_blocks.1.attn.to_q.weight': perturbed(
        'single_transformer_blocks.1.attn.to_q.weight',
        0.3,
      ),
      'single_transformer_blocks.0.attn.to_v.bias': perturbed(
        'single_transformer_blocks.0.attn.to_v.bias',
        0.3,
      ),
    };
    for (const module of [
      'transformer_blocks.0',
      'single_transformer_blocks.0',
      'single_transformer_blocks.1',
    ]) {
      overlay[`${module}.attn.processor.spatial_weight`] = hostTensor(
        'float32',
        [1, 1, 1, 2, 1, 2, 1],
        randomArray(4, random, -0.5, 1),
      );
    }
    weightsFile = join(dir, 'clear_local_2_down_2.safetensors');
    await writeHostTensors(weightsFile, overlay);
    // The same tensors written into the checkpoint itself.
    merged = join(dir, 'merged');
    await mkdir(merged);
    await copyFile(join(MODEL, 'config.json'), join(merged, 'config.json'));
    await writeHostTensors(join(merged, 'diffusion_pytorch_model.safetensors'), { ...base, ...overlay });
  });
  after(() => rm(dir, { recursive: true, force: true }));

  it('changes the output exactly as changing the base weights would, and as the reference with those weights', async (t) => {
    const grid = { height: 4, width: 6 };
    const inputs = freshInputs(2, grid);
    const clear = { kind: 'clear', radius: 2, downFactor: 2 } as const;
    const model = await FluxTransformer2DModel.fromPretrained(MODEL, { runtime });
    let overlaid: HostTensor;
    let plain: HostTensor;
    try {
      overlaid = (await model.forward(inputs, { attention: { ...clear, weights: weightsFile } })).sample;
      plain = (await model.forward(inputs, { attention: clear })).sample;
      // The file is opened once and kept: a second run reads it again from the same handle.
      const again = (await model.forward(inputs, { attention: { ...clear, weights: weightsFile } })).sample;
      assertExactlyEqual(again.data as Float32Array, overlaid.data as Float32Array, 'second overlaid run');
    } finally {
      await model.close();
    }
    // Baked in: the spatial weights are parameters a stock FluxTransformer2DModel does not have.
    const warnings: string[] = [];
    const bakedModel = await FluxTransformer2DModel.fromPretrained(merged, {
      runtime,
      onWarning: (w) => warnings.push(...(w.names ?? [])),
    });
    try {
      const baked = (await bakedModel.forward(inputs, { attention: clear })).sample;
      assertExactlyEqual(
        overlaid.data as Float32Array,
        baked.data as Float32Array,
        'overlay vs baked-in weights',
      );
    } finally {
      await bakedModel.close();
    }
    assert.deepEqual(
      warnings.sort(),
      Object.keys(overlay)
        .filter((n) => n.endsWith('spatial_weight'))
        .sort(),
    );

    const reference = (await FluxReference.load(MODEL)).with(overlay);
    const err = checkAgainst(overlaid, reference.forward(inputs, { ...clear, grid }), 'overlaid');
    const change = Math.max(
      ...Array.from(overlaid.data as Float32Array, (v, i) => Math.abs(v - (plain.data as Float32Array)[i])),
    );
    assert.ok(change > 1e3 * TOLERANCE, `the overlay changes the sample by ${change}`);
    // Only the pooling weights overlaid: still the reference, and not the 1/df² output.
    const onlyPooling = Object.fromEntries(
      Object.entries(overlay).filter(([n]) => n.endsWith('spatial_weight')),
    );
    const poolingFile = join(dir, 'pooling.safetensors');
    await writeHostTensors(poolingFile, onlyPooling);
    const pooling = await FluxTransformer2DModel.fromPretrained(MODEL, { runtime });
    try {
      const pooled = (await pooling.forward(inputs, { attention: { ...clear, weights: poolingFile } }))
        .sample;
      const expected = (await FluxReference.load(MODEL))
        .with(onlyPooling)
        .forward(inputs, { ...clear, grid });
      checkAgainst(pooled, expected, 'spatial_weight only');
      const poolingChange = Math.max(
        ...Array.from(pooled.data as Float32Array, (v, i) => Math.abs(v - (plain.data as Float32Array)[i])),
      );
      assert.ok(poolingChange > 1e3 * TOLERANCE, `spatial_weight changes the sample by ${poolingChange}`);
    } finally {
      await pooling.close();
    }
    t.diagnostic(
      `overlaid vs reference ${err.toExponential(2)}; the overlay changes the sample by ${change.toExponential(2)}`,
    );
  });

  it('velodiff forward DIR --attention clear:R:D --attention-weights FILE on the FLUX folder', async () => {
    const grid = { height: 4, width: 6 };
    const inputs = freshInputs(2, grid);
    const inputsFile = join(dir, 'inputs.safetensors');
    const outFile = join(dir, 'out.safetensors');
    await writeHostTensors(inputsFile, inputs);
    const argv = ['forward', MODEL, '--inputs', inputsFile, '--out', outFile, '--threads', '1'];
    const r = await captureCli([...argv, '--attention', 'clear:2:2', '--attention-weights', weightsFile]);
    assert.equal(r.code, 0, r.err);
    const written = (await readAllTensors(outFile)).sample;
    const expected = (await FluxReference.load(MODEL))
      .with(overlay)
      .forward(inputs, { kind: 'clear', radius: 2, downFactor: 2, grid });
    checkAgainst(written, expected, 'velodiff forward --attention clear:2:2');
    // FLUX takes a LoRA too, and a CLEAR weights file is none; and no LinFusion.
    const lora = await captureCli([...argv, '--lora', weightsFile]);
    assert.equal(lora.code, 1);
    assert.match(lora.err, /none of its \d+ keys applies to a module of the model/);
    const linfusion = await captureCli([...argv, '--attention', 'linfusion', '--attention-weights', dir]);
    assert.equal(linfusion.code, 2);
    assert.match(linfusion.err, /'linfusion' is not implemented for FluxTransformer2DModel/);
  });
});
