/**
 * LinFusion on a UNet (methods/clear_linfusion.md §2.1, §2.5): a folder in the released layout built
 * here for every attn1 of a tiny SD UNet; the model's `attention: { kind: 'linfusion' }` equals the
 * graph built with the LinFusion hook, whose attn1 output at one layer equals the float64 row-form
 * reference of the module on that layer's input.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

import { LinFusionWeights } from '../../src/attention/linfusion.js';
import { OptionError, WeightError } from '../../src/errors.js';
import { writeSafetensors } from '../../src/io/safetensors.js';
import type { UNetTransformerSite } from '../../src/models/unet-2d-condition.js';
import {
  SAMPLE_INPUT,
  UNet2DConditionModel,
  buildUNetGraph,
  linfusionHooks,
} from '../../src/models/unet-2d-condition.js';
import type { HostTensor } from '../../src/runtime/host-tensor.js';
import { hostTensor } from '../../src/runtime/host-tensor.js';
import { assertClose, maxAbs } from '../compare.js';
import { randomArray, randomTensor, testRuntime } from '../helpers.js';
import { seededUniform, testSeed } from '../random.js';
import { linfusionRef } from '../reference/linfusion.js';

const UNET = fileURLToPath(new URL('../golden/pipelines/pipeline_sd15_ddim/pipeline/unet', import.meta.url));
const seed = testSeed('test/attention/linfusion-unet.test.ts');
const random = seededUniform(seed);
const runtime = testRuntime();
const MID_DIM = 4;

let unet: UNet2DConditionModel;
let sites: UNetTransformerSite[];
const dirs: string[] = [];
type Stored = Record<string, { shape: number[]; data: Float32Array }>;

/** A LinFusion folder for `modules` (module_name, dim_n, heads) with random weights, as released. */
async function writeFolder(
  modules: { module_name: string; dim_n: number; heads: number }[],
): Promise<{ dir: string; stored: Stored }> {
  const dir = await mkdtemp(join(tmpdir(), 'velodiff-linfusion-unet-'));
  dirs.push(dir);
  const stored: Stored = {};
  modules.forEach(({ dim_n: c }, i) => {
    const put = (name: string, shape: number[], lo = -1 / Math.sqrt(c), hi = 1 / Math.sqrt(c)): void => {
      stored[`${i}.${name}`] = {
        shape,
        data: randomArray(
          shape.reduce((a, b) => a * b, 1),
          random,
          lo,
          hi,
        ),
      };
    };
    for (const p of ['to_q', 'to_k', 'to_v', 'to_out.0']) put(`${p}.weight`, [c, c]);
    put('to_out.0.bias', [c]);
    for (const mlp of ['to_q_', 'to_k_']) {
      put(`${mlp}.0.weight`, [MID_DIM, c]);
      put(`${mlp}.0.bias`, [MID_DIM]);
      put(`${mlp}.1.weight`, [MID_DIM], 0.8, 1.2);
      put(`${mlp}.1.bias`, [MID_DIM]);
      put(`${mlp}.3.weight`, [c, MID_DIM], -0.5, 0.5);
      put(`${mlp}.3.bias`, [c]);
    }
  });
  const config = {
    _class_name: 'LinFusion',
    _diffusers_version: '0.30.0',
    modules_list: modules.map((m) => ({ ...m, projection_mid_dim: MID_DIM })),
  };
  await writeFile(join(dir, 'config.json'), JSON.stringify(config));
  await writeSafetensors(
    join(dir, 'diffusion_pytorch_model.safetensors'),
    Object.fromEntries(Object.entries(stored).map(([k, t]) => [k, { dtype: 'F32' as const, ...t }])),
  );
  return { dir, stored };
}

before(async () => {
  unet = await UNet2DConditionModel.fromPretrained(UNET, { runtime });
  sites = [];
  buildUNetGraph(
    unet.config,
    unet.weights,
    { height: 8, width: 8, textLength: 3 },
    {
      hooks: {
        selfAttention: (site, p, x) => {
          sites.push(site);
          return x;
        },
      },
    },
  );
});
after(async () => {
  await unet.close();
  await Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true })));
});

function inputs(): Record<string, HostTensor> {
  return {
    sample: randomTensor([2, 4, 8, 8], random),
    timestep: hostTensor('float32', [2], Float32Array.of(999 * random(), 999 * random())),
    encoder_hidden_states: randomTensor([2, 3, 16], random),
  };
}

describe('LinFusion on UNet2DConditionModel', () => {
  it('replaces every attn1 (released layout); one layer equals the float64 module reference', async () => {
    // Every attn1 of the tiny SD UNet: down 0/1 (2 each), mid, up 1/2 (3 each).
    assert.equal(sites.length, 11);
    const modules = sites.map((s) => ({ module_name: `${s.path}.attn1`, dim_n: s.dim, heads: s.heads }));
    const { dir, stored } = await writeFolder(modules);
    const feeds = inputs();
    const full = (await unet.forward(feeds)).sample;
    const linear = (await unet.forward(feeds, { attention: { kind: 'linfusion', weights: dir } })).sample;

    // The same graph built here with the hook, exposing one layer's attn1 input and output.
    const probe = Math.floor(random() * sites.length);
    const weights = await LinFusionWeights.open(dir);
    try {
      const hook = linfusionHooks(weights).selfAttention;
      assert.ok(hook);
      const graph = buildUNetGraph(
        unet.config,
        unet.weights,
        { height: 8, width: 8, textLength: 3 },
        {
          hooks: {
            selfAttention: (site, p, x) => {
              const y = hook(site, p, x);
              if (site.index === probe) {
                x.graph.output('probe_x', x);
                x.graph.output('probe_y', y);
              }
              return y;
            },
          },
        },
      );
      const compiled = await runtime.compile(graph);
      const out = await compiled.run({
        [SAMPLE_INPUT]: feeds.sample,
        timestep: feeds.timestep,
        encoder_hidden_states: feeds.encoder_hidden_states,
      });
      assert.deepEqual(
        linear.data,
        out.sample.data,
        'forward with attention linfusion builds the hooked graph',
      );
      const x = out.probe_x;
      const expected = linfusionRef(
        { shape: [...x.shape], data: Float64Array.from(x.data as Float32Array) },
        (name) => {
          const t = stored[`${probe}.${name}`];
          assert.ok(t, `no tensor ${probe}.${name}`);
          return { shape: t.shape, data: Float64Array.from(t.data) };
        },
        sites[probe].heads,
      );
      const { maxAbsError } = assertClose(out.probe_y.data as Float32Array, expected.data, {
        atol: 1e-5,
        rtol: 1e-5,
        what: `seed ${seed}: attn1 of ${sites[probe].path}`,
      });
      process.stderr.write(
        `# LinFusion at ${sites[probe].path}.attn1: max |diff| ${maxAbsError.toExponential(2)}\n`,
      );
    } finally {
      await weights.close();
    }
    const change = maxAbs((full.data as Float32Array).map((v, i) => v - (linear.data as Float32Array)[i]));
    assert.ok(change > 1e-3, `LinFusion changed the UNet output by only ${change}`);
  });

  it('names the attn1 a folder lacks, and refuses CLEAR on a UNet', async () => {
    const modules = sites
      .slice(1)
      .map((s) => ({ module_name: `${s.path}.attn1`, dim_n: s.dim, heads: s.heads }));
    const { dir } = await writeFolder(modules);
    await assert.rejects(
      unet.forward(inputs(), { attention: { kind: 'linfusion', weights: dir } }),
      (e: unknown) =>
        e instanceof WeightError &&
        e.code === 'LINFUSION_MODULE_MISSING' &&
        e.message.includes(`${sites[0].path}.attn1`),
    );
    await assert.rejects(
      unet.forward(inputs(), { attention: { kind: 'clear', radius: 2 } }),
      (e: unknown) => e instanceof OptionError && /not available for UNets/.test(e.message),
    );
  });
});
