/**
 * bench/random-flux.ts and `velodiff bench flux-memory`: the random folder holds exactly the tensors
 * FluxTransformer2DModel reads, in bf16, at the size computed from the config (checked against
 * FLUX.1-dev's published parameter count and a per-block count written out here); the bench runs a
 * tiny folder at two block counts in processes of their own, and its fit and held bytes follow
 * from its own rows. No timing or memory figure is asserted beyond being positive.
 */
import assert from 'node:assert/strict';
import { mkdtemp, readdir, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';

import { type FluxMemoryResult, fitPeak } from '../../bench/flux-memory.js';
import {
  FLUX_DEV_SHAPE,
  fluxDevShape,
  fluxFolderBytes,
  fluxParameterCounts,
  fluxTensors,
  writeRandomFlux,
} from '../../bench/random-flux.js';
import { SafetensorsFile } from '../../src/io/safetensors.js';
import { FluxTransformer2DModel } from '../../src/models/flux-transformer.js';
import { Runtime } from '../../src/runtime/runtime.js';
import type { VelodiffWarning } from '../../src/warnings.js';
import { useTempCacheDir } from '../helpers.js';
import { seededUniform, testSeed } from '../random.js';
import { captureCli } from './capture.js';

const cacheDir = useTempCacheDir('velodiff-bench-flux-');
const runtime = new Runtime({ worker: false, threads: 1 });
after(() => runtime.dispose());
const random = seededUniform(testSeed('test/cli/bench-flux-memory.test.ts'));

/** Parameters of one block at width D and head width h, written out from diffusers' modules. */
function blockParameters(dim: number, headDim: number): { double: number; single: number } {
  const linear = (inF: number, outF: number): number => inF * outF + outF;
  return {
    // norm1, norm1_context (6D each); 8 attention projections; 4 qk norms; ff and ff_context.
    double:
      2 * linear(dim, 6 * dim) +
      8 * linear(dim, dim) +
      4 * headDim +
      2 * (linear(dim, 4 * dim) + linear(4 * dim, dim)),
    // norm (3D); proj_mlp; q, k, v; 2 qk norms; proj_out from attention and MLP (5D) to D.
    single:
      linear(dim, 3 * dim) + linear(dim, 4 * dim) + 3 * linear(dim, dim) + 2 * headDim + linear(5 * dim, dim),
  };
}

describe('bench/random-flux.ts', () => {
  it('FLUX.1-dev: 11 901 408 320 parameters, 23.8 GB in bf16, from its config', () => {
    const counts = fluxParameterCounts(FLUX_DEV_SHAPE);
    // `sum(p.numel() for p in FluxTransformer2DModel.from_pretrained(FLUX.1-dev).parameters())`.
    assert.equal(counts.total, 11_901_408_320);
    const blocks = blockParameters(3072, 128);
    assert.equal(counts.perDouble, blocks.double);
    assert.equal(counts.perSingle, blocks.single);
    const bytes = fluxFolderBytes(FLUX_DEV_SHAPE);
    // The bf16 data and a header of a few tens of kB.
    assert.ok(bytes > 2 * counts.total && bytes < 2 * counts.total + 1e6, `${bytes}`);
  });

  it('a narrow folder holds exactly what FluxTransformer2DModel reads, in bf16, at the computed size', async () => {
    const double = 1 + Math.floor(random() * 2);
    const single = 1 + Math.floor(random() * 3);
    const shape = fluxDevShape({ double, single }, { heads: 2, headDim: 32 });
    const dir = await mkdtemp(join(tmpdir(), 'velodiff-random-flux-'));
    try {
      await writeRandomFlux(dir, shape);
      assert.deepEqual((await readdir(dir)).sort(), ['config.json', 'diffusion_pytorch_model.safetensors']);
      const path = join(dir, 'diffusion_pytorch_model.safetensors');
      assert.equal((await stat(path)).size, fluxFolderBytes(shape));
      const file = await SafetensorsFile.open(path);
      try {
        assert.deepEqual(
          file.names().sort(),
          fluxTensors(shape)
            .map((t) => t.name)
            .sort(),
        );
        let parameters = 0;
        for (const name of file.names()) {
          const { dtype, shape: s } = file.info(name);
          assert.equal(dtype, 'BF16', name);
          parameters += s.reduce((a, b) => a * b, 1);
        }
        const counts = fluxParameterCounts(shape);
        assert.equal(parameters, counts.total);
        const blocks = blockParameters(64, 32);
        assert.equal(counts.total - counts.outside, double * blocks.double + single * blocks.single);
        const norm = await file.readFloat32('transformer_blocks.0.attn.norm_q.weight');
        assert.ok(
          norm.every((v) => v === 1),
          'qk norms are ones',
        );
      } finally {
        await file.close();
      }
      // Every tensor read (no unused-tensor warning), none missing (that would throw).
      const warnings: VelodiffWarning[] = [];
      const model = await FluxTransformer2DModel.fromPretrained(dir, {
        runtime,
        onWarning: (w) => warnings.push(w),
      });
      try {
        assert.deepEqual(warnings, []);
        assert.equal(model.config.numLayers, double);
        assert.equal(model.config.numSingleLayers, single);
        assert.deepEqual(model.config.axesDimsRope, [4, 14, 14]);
        assert.equal(model.config.guidanceEmbeds, true);
      } finally {
        await model.close();
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('fitPeak: peak RSS as a line in held bytes', () => {
  const MB = 2 ** 20;
  it('goes through both peaks when they rise by at least the held bytes', () => {
    const f = fitPeak([10 * MB, 30 * MB], [100, 150], 1000 * MB);
    assert.equal(f.floored, false);
    assert.equal(f.slope * MB, 2.5);
    assert.equal(f.base, 75);
    assert.equal(f.at, 75 + 2500);
  });
  it('rises by exactly the held bytes, through the larger run, when the peaks fall or barely rise', () => {
    for (const peaks of [
      [140.4, 132.7],
      [100, 110],
    ] as [number, number][]) {
      const f = fitPeak([10 * MB, 30 * MB], peaks, 1000 * MB);
      assert.equal(f.floored, true);
      assert.equal(f.slope * MB, 1);
      assert.ok(Math.abs(f.base - (peaks[1] - 30)) < 1e-9);
      assert.ok(Math.abs(f.at - (peaks[1] + 970)) < 1e-9);
    }
  });
});

describe('velodiff bench flux-memory', () => {
  const tiny = [
    '--heads',
    '2',
    '--head-dim',
    '32',
    '--tokens',
    '16',
    '--text',
    '8',
    '--threads',
    '1',
    '--json',
  ];

  function parse(out: string): FluxMemoryResult {
    return JSON.parse(out.trim().split('\n').pop() as string) as FluxMemoryResult;
  }

  it('int8: two block counts in their own processes, held bytes from the int8 modules, the fit through them', async () => {
    const r = await captureCli([
      'bench',
      'flux-memory',
      '--double',
      '2',
      '--single',
      '2',
      '--quantize',
      'int8',
      ...tiny,
    ]);
    assert.equal(r.code, 0, r.err);
    assert.match(r.err, /19 \+ 38 blocks \(0\.01 G parameters, 0\.01 GB in bf16\): peak RSS ≈ [\d.]+ GiB/);
    const result = parse(r.out);
    assert.equal(result.dtype, 'int8');
    assert.ok(result.dir.startsWith(cacheDir()), 'the random folder goes to the cache');
    assert.deepEqual(
      result.rows.map((row) => [row.double, row.single]),
      [
        [1, 1],
        [2, 2],
      ],
    );
    const [small, large] = result.rows;
    for (const row of result.rows) {
      assert.ok(row.finite, 'the step output is finite');
      assert.ok(row.load_peak_mb > 0 && row.step_peak_mb > 0 && row.peak_rss_mb >= row.step_peak_mb);
      assert.ok(row.step_ms > 0 && row.compile_ms > 0 && row.load_ms > 0);
    }
    // Every Linear is int8 but proj_out and time_text_embed's: a double block has 14, a single 6.
    assert.equal(large.int8_modules - small.int8_modules, 14 + 6);
    // Held: an int8 Linear's weight at a byte per value, its scale and bias float32; qk norms float32.
    const dim = 64;
    const int8Linear = (inF: number, outF: number): number => inF * outF + 4 * outF + 4 * outF;
    assert.equal(
      large.double_block_bytes,
      2 * int8Linear(dim, 6 * dim) +
        8 * int8Linear(dim, dim) +
        2 * (int8Linear(dim, 4 * dim) + int8Linear(4 * dim, dim)) +
        4 * 4 * 32,
    );
    assert.equal(
      large.single_block_bytes,
      int8Linear(dim, 3 * dim) +
        int8Linear(dim, 4 * dim) +
        3 * int8Linear(dim, dim) +
        2 * 4 * 32 +
        int8Linear(5 * dim, dim),
    );
    // The fit: a line in the held bytes through both runs' peaks of its phase, at 19 + 38 blocks.
    const { fit } = result;
    const key = fit.phase === 'load' ? 'load_peak_mb' : 'step_peak_mb';
    const at = (row: { double: number; single: number }): number =>
      fit.base_mb + row.double * fit.per_double_mb + row.single * fit.per_single_mb;
    // Through both peaks, unless they differ by less than the held bytes (noise at this size): then
    // through the larger run's peak, rising by exactly the held bytes.
    assert.ok(Math.abs(at(large) - large[key]) < 1e-6);
    if (fit.floored) {
      assert.ok(Math.abs(fit.per_double_mb - large.double_block_bytes / 2 ** 20) < 1e-9);
      assert.ok(large[key] - small[key] < at(large) - at(small));
    } else assert.ok(Math.abs(at(small) - small[key]) < 1e-6);
    assert.ok(Math.abs(at(result.full) - fit.at_full_mb) < 1e-6);
    assert.ok(
      Math.abs(fit.per_double_mb / fit.per_single_mb - large.double_block_bytes / large.single_block_bytes) <
        1e-9,
      'growth per block is in proportion to its held bytes',
    );
    assert.deepEqual([result.full.double, result.full.single], [19, 38]);
    assert.equal(
      result.full.parameters,
      fluxParameterCounts(fluxDevShape({ double: 19, single: 38 }, { heads: 2, headDim: 32 })).total,
    );
    assert.equal(
      result.file_bytes,
      fluxFolderBytes(fluxDevShape({ double: 2, single: 2 }, { heads: 2, headDim: 32 })),
    );

    // --dir reuses that folder, here in float32: every tensor held as float32.
    const again = await captureCli(['bench', 'flux-memory', '--dir', result.dir, ...tiny]);
    assert.equal(again.code, 0, again.err);
    const float = parse(again.out);
    assert.equal(float.dtype, 'float32');
    assert.equal(float.dir, result.dir);
    assert.match(float.command, /--dir /);
    assert.ok(float.rows.every((row) => row.int8_modules === 0 && row.finite));
    assert.equal(float.rows[1].double_block_bytes, 4 * blockParameters(64, 32).double);
    assert.equal(float.rows[1].single_block_bytes, 4 * blockParameters(64, 32).single);
  });

  it('refuses --dir with block counts, another --quantize, and a kind of block left out', async () => {
    const withDir = await captureCli(['bench', 'flux-memory', '--dir', tmpdir(), '--double', '3']);
    assert.equal(withDir.code, 2);
    assert.match(withDir.err, /--dir measures that folder's own blocks; leave out --double and --single/);
    const int4 = await captureCli(['bench', 'flux-memory', '--quantize', 'int4']);
    assert.equal(int4.code, 2);
    assert.match(int4.err, /--quantize must be int8 \(or absent, for float32\), got "int4"/);
    const none = await captureCli(['bench', 'flux-memory', '--double', '0', '--single', '4']);
    assert.equal(none.code, 2);
    assert.match(none.err, /--double and --single must be ≥ 1/);
  });
});
