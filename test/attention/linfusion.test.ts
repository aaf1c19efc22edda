/**
 * LinFusion modules loaded from a folder in the released layout (config.json + safetensors, §2.5),
 * compared with a float64 row-form reference; one compiled graph serves several token counts.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';

import {
  LinFusionWeights,
  linfusionSelfAttention,
  normalizedLinearAttention,
} from '../../src/attention/linfusion.js';
import type { SelfAttentionLayer } from '../../src/attention/types.js';
import { FileFormatError, OptionError, WeightError } from '../../src/errors.js';
import { Graph } from '../../src/graph/index.js';
import { writeSafetensors } from '../../src/io/safetensors.js';
import { Params } from '../../src/nn/params.js';
import type { TensorSource } from '../../src/nn/weights.js';
import { hostTensor } from '../../src/runtime/host-tensor.js';
import { assertClose, maxAbs } from '../compare.js';
import { randomArray, testRuntime } from '../helpers.js';
import { seededUniform } from '../random.js';
import type { RefArray } from '../reference/layout.js';
import { linfusionRef } from '../reference/linfusion.js';

interface ModuleSpec {
  module_name: string;
  dim_n: number;
  heads: number;
  projection_mid_dim: number | null;
}

const MODULES: ModuleSpec[] = [
  { module_name: 'transformer_blocks.0.attn1', dim_n: 16, heads: 2, projection_mid_dim: null },
  {
    module_name: 'down_blocks.0.attentions.0.transformer_blocks.0.attn1',
    dim_n: 24,
    heads: 3,
    projection_mid_dim: 8,
  },
];

/** Tensor names and shapes of module i as the released files spell them. */
function moduleTensors(i: number, { dim_n: c, projection_mid_dim }: ModuleSpec): Record<string, number[]> {
  const m = projection_mid_dim ?? c;
  const shapes: Record<string, number[]> = {
    [`${i}.to_q.weight`]: [c, c],
    [`${i}.to_k.weight`]: [c, c],
    [`${i}.to_v.weight`]: [c, c],
    [`${i}.to_out.0.weight`]: [c, c],
    [`${i}.to_out.0.bias`]: [c],
  };
  for (const mlp of ['to_q_', 'to_k_']) {
    shapes[`${i}.${mlp}.0.weight`] = [m, c];
    shapes[`${i}.${mlp}.0.bias`] = [m];
    shapes[`${i}.${mlp}.1.weight`] = [m];
    shapes[`${i}.${mlp}.1.bias`] = [m];
    shapes[`${i}.${mlp}.3.weight`] = [c, m];
    shapes[`${i}.${mlp}.3.bias`] = [c];
  }
  return shapes;
}

interface Folder {
  dir: string;
  weights: Record<string, { shape: number[]; data: Float32Array }>;
}

const folders: string[] = [];
after(async () => {
  await Promise.all(folders.map((dir) => rm(dir, { recursive: true, force: true })));
});

/** A LinFusion folder with fresh random weights (torch-like fan-in scaling; LayerNorm gains near 1). */
async function writeFolder(
  seed: number,
  config: Record<string, unknown> = {
    _class_name: 'LinFusion',
    _diffusers_version: '0.30.0',
    modules_list: MODULES,
  },
  edit: (weights: Folder['weights']) => void = () => {},
): Promise<Folder> {
  const dir = await mkdtemp(join(tmpdir(), 'velodiff-linfusion-'));
  folders.push(dir);
  const random = seededUniform(seed);
  const weights: Folder['weights'] = {};
  MODULES.forEach((spec, i) => {
    for (const [name, shape] of Object.entries(moduleTensors(i, spec))) {
      const size = shape.reduce((a, b) => a * b, 1);
      const bound = 1 / Math.sqrt(shape.length === 2 ? shape[1] : spec.dim_n);
      const data = name.includes('_.1.weight')
        ? randomArray(size, random, 0.8, 1.2)
        : randomArray(size, random, -bound, bound);
      weights[name] = { shape, data };
    }
  });
  edit(weights);
  await writeFile(join(dir, 'config.json'), JSON.stringify(config, null, 2));
  await writeSafetensors(
    join(dir, 'diffusion_pytorch_model.safetensors'),
    Object.fromEntries(Object.entries(weights).map(([k, t]) => [k, { dtype: 'F32' as const, ...t }])),
  );
  return { dir, weights };
}

/** A base model's attention params: LinFusion must not read any of them. */
const noBaseWeights: TensorSource = {
  has: () => false,
  info: (name) => {
    throw new WeightError(`test: base tensor '${name}' should not be read`, 'WEIGHT_MISSING');
  },
};

function selfAttentionLayer(
  g: Graph,
  modulePath: string,
  x: SelfAttentionLayer['x'],
  heads: number,
  textTokens = 0,
): SelfAttentionLayer {
  return {
    params: Params.of(g, noBaseWeights, { prefix: modulePath }),
    x,
    dim: x.shape[2] as number,
    heads,
    qkvBias: false,
    grid: { height: 1, width: 1 },
    textTokens,
  };
}

function refWeights(weights: Folder['weights'], index: number): (name: string) => RefArray {
  return (name) => {
    const t = weights[`${index}.${name}`];
    assert.ok(t, `reference: no tensor ${index}.${name}`);
    return { shape: t.shape, data: Float64Array.from(t.data) };
  };
}

describe('LinFusion generalized linear attention', () => {
  it('matches the float64 row-form reference at several token counts from one compiled graph', async () => {
    const { dir, weights: stored } = await writeFolder(7101);
    const weights = await LinFusionWeights.open(dir);
    try {
      assert.deepEqual(weights.module(0), {
        moduleName: 'transformer_blocks.0.attn1',
        dimN: 16,
        heads: 2,
        projectionMidDim: 16,
      });
      assert.equal(weights.module(1).projectionMidDim, 8);
      assert.equal(weights.indexOf('down_blocks.0.attentions.0.transformer_blocks.0.attn1'), 1);
      assert.equal(weights.indexOf('transformer_blocks.1.attn1'), undefined);

      // One graph, both modules, the token counts N and M symbolic: nothing about the image size is baked in.
      const g = new Graph('linfusion-test');
      const x0 = g.input('x0', 'float32', ['B', 'N', 16]);
      const x1 = g.input('x1', 'float32', ['B', 'M', 24]);
      g.output(
        'y0',
        linfusionSelfAttention(selfAttentionLayer(g, 'transformer_blocks.0.attn1', x0, 2), weights),
      );
      g.output(
        'y1',
        linfusionSelfAttention(
          selfAttentionLayer(g, 'unet_block', x1, 8),
          weights,
          'down_blocks.0.attentions.0.transformer_blocks.0.attn1',
        ),
      );
      const runtime = testRuntime();
      const compiled = await runtime.compile(g);
      const sessions = runtime.cachedSessions;
      const random = seededUniform(7102);
      let maxError = 0;
      let maxMagnitude = 0;
      for (const tokens of [1, 6, 17, 64, 9]) {
        const batch = 2;
        const feeds = {
          x0: hostTensor('float32', [batch, tokens, 16], randomArray(batch * tokens * 16, random, -2, 2)),
          x1: hostTensor(
            'float32',
            [batch, tokens + 3, 24],
            randomArray(batch * (tokens + 3) * 24, random, -2, 2),
          ),
        };
        const out = await compiled.run(feeds);
        for (const [index, input, output, heads] of [
          [0, feeds.x0, out.y0, 2],
          [1, feeds.x1, out.y1, 3],
        ] as const) {
          const expected = linfusionRef(
            { shape: input.shape, data: Float64Array.from(input.data as Float32Array) },
            refWeights(stored, index),
            heads,
          );
          assert.deepEqual(output.shape, input.shape);
          const actual = output.data as Float32Array;
          const { maxAbsError } = assertClose(actual, expected.data, {
            atol: 1e-5,
            rtol: 1e-5,
            what: `module ${index} at N=${input.shape[1]}`,
          });
          maxError = Math.max(maxError, maxAbsError);
          maxMagnitude = Math.max(maxMagnitude, maxAbs(expected.data));
        }
      }
      assert.equal(runtime.cachedSessions, sessions, 'one session serves every token count');
      // Relative to the outputs' scale: float32 rounding, not a formula difference (those are ≥ 1e-3).
      assert.ok(maxError / maxMagnitude < 1e-5, `max |error| ${maxError} for outputs up to ${maxMagnitude}`);
    } finally {
      await weights.close();
    }
  });

  it('normalizedLinearAttention on packed q, k, v [B, N, H·D] matches the row form', async () => {
    // The kernel alone, as bench/attention.ts builds it: the heads are split from packed projections.
    const [heads, headDim, batch] = [3, 4, 2];
    const width = heads * headDim;
    const g = new Graph('linfusion-kernel');
    const [q, k, v] = ['q', 'k', 'v'].map((n) => g.input(n, 'float32', ['B', 'N', width]));
    g.output('o', normalizedLinearAttention(q, k, v, heads));
    const compiled = await testRuntime().compile(g);
    const phi = (u: number): number => (u > 0 ? u + 1 : Math.exp(u));
    const random = seededUniform(7103);
    for (const tokens of [1, 7, 40]) {
      const size = batch * tokens * width;
      const [qd, kd, vd] = [0, 1, 2].map(() => randomArray(size, random, -2, 2));
      const out = await compiled.run({
        q: hostTensor('float32', [batch, tokens, width], qd),
        k: hostTensor('float32', [batch, tokens, width], kd),
        v: hostTensor('float32', [batch, tokens, width], vd),
      });
      const expected = new Float64Array(size);
      const at = (b: number, n: number, h: number, d: number): number =>
        (b * tokens + n) * width + h * headDim + d;
      for (let b = 0; b < batch; b++) {
        for (let i = 0; i < tokens; i++) {
          for (let h = 0; h < heads; h++) {
            let denominator = 1e-4 * tokens;
            const numerator = new Float64Array(headDim);
            for (let j = 0; j < tokens; j++) {
              let score = 0;
              for (let d = 0; d < headDim; d++) score += phi(qd[at(b, i, h, d)]) * phi(kd[at(b, j, h, d)]);
              denominator += score;
              for (let d = 0; d < headDim; d++) numerator[d] += score * vd[at(b, j, h, d)];
            }
            for (let d = 0; d < headDim; d++) expected[at(b, i, h, d)] = numerator[d] / denominator;
          }
        }
      }
      assert.deepEqual(out.o.shape, [batch, tokens, width]);
      assertClose(out.o.data as Float32Array, expected, { atol: 1e-5, rtol: 1e-5, what: `N=${tokens}` });
    }
  });

  it('reads the StableMamba-era modules_list arrays', async () => {
    const legacy = {
      _class_name: 'StableMamba',
      modules_list: MODULES.map((m) => [m.module_name, m.dim_n, m.heads, m.projection_mid_dim]),
    };
    const { dir } = await writeFolder(7103, legacy);
    const weights = await LinFusionWeights.open(dir);
    try {
      assert.equal(weights.className, 'StableMamba');
      assert.deepEqual(
        weights.modules.map((m) => [m.moduleName, m.dimN, m.heads, m.projectionMidDim]),
        [
          ['transformer_blocks.0.attn1', 16, 2, 16],
          ['down_blocks.0.attentions.0.transformer_blocks.0.attn1', 24, 3, 8],
        ],
      );
    } finally {
      await weights.close();
    }
  });
});

describe('LinFusion folders: clear errors', () => {
  const configError = async (
    config: Record<string, unknown>,
    ...fragments: (string | RegExp)[]
  ): Promise<void> => {
    const { dir } = await writeFolder(7104, config);
    await assert.rejects(LinFusionWeights.open(dir), (e: unknown) => {
      assert.ok(e instanceof FileFormatError, String(e));
      assert.ok(e.message.includes(join(dir, 'config.json')), e.message);
      for (const f of fragments) assert.match(e.message, typeof f === 'string' ? new RegExp(escape(f)) : f);
      return true;
    });
  };

  it('rejects a config of another class, naming the key and file', async () => {
    await configError(
      { _class_name: 'UNet2DConditionModel', modules_list: MODULES },
      '"_class_name"',
      'UNet2DConditionModel',
      'LinFusion',
    );
  });

  it('rejects bad modules_list entries, naming the entry and key', async () => {
    await configError({ _class_name: 'LinFusion' }, '"modules_list"');
    await configError(
      { _class_name: 'LinFusion', modules_list: [MODULES[0], { ...MODULES[1], dim_n: '24' }] },
      '"modules_list[1].dim_n"',
      'positive integer',
    );
    await configError(
      { _class_name: 'LinFusion', modules_list: [{ ...MODULES[0], heads: 3 }, MODULES[1]] },
      '"modules_list[0].heads"',
      'divisor of dim_n 16',
    );
    await configError(
      {
        _class_name: 'LinFusion',
        modules_list: [MODULES[0], { ...MODULES[1], module_name: MODULES[0].module_name }],
      },
      '"modules_list[1].module_name"',
      'modules_list[0]',
    );
    await configError(
      { _class_name: 'LinFusion', modules_list: [MODULES[0], { ...MODULES[1], projection_mid_dim: 0 }] },
      '"modules_list[1].projection_mid_dim"',
    );
  });

  it('names a missing tensor and its file when the folder opens', async () => {
    const { dir } = await writeFolder(7105, undefined, (w) => {
      delete w['1.to_k_.3.bias'];
    });
    await assert.rejects(
      LinFusionWeights.open(dir),
      (e: unknown) =>
        e instanceof WeightError &&
        e.message.includes("'1.to_k_.3.bias'") &&
        e.message.includes(join(dir, 'diffusion_pytorch_model.safetensors')),
    );
  });

  it('names a tensor whose shape does not match dim_n / projection_mid_dim, with both shapes', async () => {
    const { dir } = await writeFolder(7106, undefined, (w) => {
      w['0.to_q_.0.weight'] = { shape: [8, 16], data: new Float32Array(128) };
    });
    await assert.rejects(
      LinFusionWeights.open(dir),
      (e: unknown) =>
        e instanceof WeightError &&
        /'0\.to_q_\.0\.weight'.*expected shape \[16, 16\], found \[8, 16\]/.test(e.message) &&
        e.message.includes(join(dir, 'diffusion_pytorch_model.safetensors')),
    );
  });

  it('names a module the file does not cover and lists what it covers; refuses joint attention', async () => {
    const { dir } = await writeFolder(7107);
    const weights = await LinFusionWeights.open(dir);
    try {
      const g = new Graph('uncovered');
      const x = g.input('x', 'float32', ['B', 'N', 16]);
      assert.throws(
        () => linfusionSelfAttention(selfAttentionLayer(g, 'transformer_blocks.1.attn1', x, 2), weights),
        (e: unknown) =>
          e instanceof WeightError &&
          e.message.includes("'transformer_blocks.1.attn1'") &&
          e.message.includes(join(dir, 'config.json')) &&
          e.message.includes(
            'transformer_blocks.0.attn1, down_blocks.0.attentions.0.transformer_blocks.0.attn1',
          ),
      );
      assert.throws(
        () => linfusionSelfAttention(selfAttentionLayer(g, 'transformer_blocks.0.attn1', x, 2, 77), weights),
        (e: unknown) =>
          e instanceof OptionError &&
          /joint/.test(e.message) &&
          e.message.includes('transformer_blocks.0.attn1'),
      );
      const wide = g.input('wide', 'float32', ['B', 'N', 24]);
      assert.throws(
        () => linfusionSelfAttention(selfAttentionLayer(g, 'transformer_blocks.0.attn1', wide, 2), weights),
        (e: unknown) => e instanceof WeightError && /dim_n 16.*24 channels/.test(e.message),
      );
    } finally {
      await weights.close();
    }
  });
});

function escape(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
