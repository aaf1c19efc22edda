/**
 * The whole small DiT differentiated: the golden tiny PixArt-α (test/golden/models/pixart_alpha_tiny,
 * 2 blocks, 57 parameter tensors) built by buildPixArtGraph with `ParameterInputs`, so every
 * parameter is a graph input holding the checkpoint's values; loss = mean squared error of its
 * `sample` against a random target, with a padded caption mask. Its gradient with respect to every
 * parameter is checked against central finite differences on 4 sampled coordinates per parameter
 * (test/graph/gradcheck.ts `gradCheckGraph`).
 *
 * float32, as the patch embedding is a Conv, which ORT has no double kernel for. The loss is about
 * 1.5 and float32 rounds it by about 1e-7, so with h = 1e-2 a difference is noisy by about 1e-5; the
 * parameter gradients are 5e-4 to 0.2. Tolerance: 1e-4 relative to max(1, max|numeric|) per
 * parameter, i.e. 1e-4 absolute (measured: at most 2.5e-5), not the harness's float32 default of
 * 2e-3, which would not see an error in the smaller gradients.
 */
import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

import type { Tensor } from '../../src/graph/index.js';
import { grad, mean, mul, sub } from '../../src/graph/index.js';
import { readConfig } from '../../src/io/diffusers.js';
import { SafetensorsFile } from '../../src/io/safetensors.js';
import { sincosPositionEmbedding2d } from '../../src/models/embeddings.js';
import { buildPixArtGraph, parsePixArtConfig } from '../../src/models/pixart-transformer.js';
import { ParameterInputs } from '../../src/nn/weights.js';
import { readAllTensors } from '../helpers.js';
import type { GradInputSpec } from '../graph/gradcheck.js';
import { gradCheckGraph } from '../graph/gradcheck.js';

const DIR = fileURLToPath(new URL('../golden/models/pixart_alpha_tiny/model', import.meta.url));
const WEIGHTS = `${DIR}/diffusion_pytorch_model.safetensors`;
const BATCH = 2;
const CAPTION = 10;
const LATENT = 8;

describe('PixArt-α tiny: gradients of an MSE loss w.r.t. every parameter (float32)', () => {
  let file: SafetensorsFile | undefined;
  after(() => file?.close());

  it('against central differences, 4 coordinates per parameter', async () => {
    const config = parsePixArtConfig(await readConfig(DIR), DIR);
    file = await SafetensorsFile.open(WEIGHTS);
    const checkpoint = await readAllTensors(WEIGHTS);
    const params = new ParameterInputs(file);
    const options = { height: LATENT, width: LATENT, captionLength: CAPTION, withMask: true };
    const grid = LATENT / config.patchSize;

    const inputs: Record<string, GradInputSpec> = {
      hidden_states: { shape: [BATCH, config.inChannels, LATENT, LATENT], range: [-2, 2], grad: false },
      encoder_hidden_states: { shape: [BATCH, CAPTION, config.captionChannels], range: [-2, 2], grad: false },
      timestep: {
        shape: [BATCH],
        values: (random) => Float32Array.from({ length: BATCH }, () => Math.floor(1000 * random())),
        grad: false,
      },
      // Captions of 6 and 8 tokens, padded to 10.
      encoder_attention_mask: {
        shape: [BATCH, CAPTION],
        values: Float32Array.from({ length: BATCH * CAPTION }, (_, i) =>
          Number(i % CAPTION < 6 + 2 * Math.floor(i / CAPTION)),
        ),
        grad: false,
      },
      pos_embed: {
        shape: [1, grid * grid, config.innerDim],
        values: sincosPositionEmbedding2d(
          config.innerDim,
          grid,
          grid,
          config.sampleSize / config.patchSize,
          config.interpolationScale,
        ),
        grad: false,
      },
      target: { shape: [BATCH, config.outChannels, LATENT, LATENT], range: [-2, 2], grad: false },
    };
    for (const name of file.names()) {
      inputs[name] = { shape: checkpoint[name].shape, values: checkpoint[name].data };
    }

    const report = await gradCheckGraph({
      what: 'PixArt-α tiny, MSE loss',
      dtype: 'float32',
      tolerance: 1e-4,
      coordinates: 4,
      inputs,
      build: () => {
        const g = buildPixArtGraph(config, params, options);
        const sample = g.outputs.get('sample') as Tensor;
        const error = sub(sample, g.input('target', 'float32', sample.shape));
        return mean(mul(error, error), [0, 1, 2, 3]);
      },
    });
    assert.deepEqual(Object.keys(report.inputs).sort(), file.names().sort(), 'every parameter is checked');
  });

  it('parameters not asked for: no backward node in the modules before the trained block', async () => {
    const config = parsePixArtConfig(await readConfig(DIR), DIR);
    const source = await SafetensorsFile.open(WEIGHTS);
    try {
      const params = new ParameterInputs(source);
      const g = buildPixArtGraph(config, params, {
        height: LATENT,
        width: LATENT,
        captionLength: CAPTION,
        withMask: true,
      });
      const forwardNodes = g.nodes.length;
      const trained = Object.entries(params.inputsOf(g)).filter(([name]) =>
        name.startsWith('transformer_blocks.1.'),
      );
      const sample = g.outputs.get('sample') as Tensor;
      grad(
        mean(mul(sample, sample), [0, 1, 2, 3]),
        trained.map(([, t]) => t),
      );
      const scopes = g.nodes.slice(forwardNodes).map((n) => n.scope);
      const under = (module: string): number => scopes.filter((s) => s.startsWith(`grad/${module}`)).length;
      assert.ok(under('transformer_blocks.1') > 0, 'the trained block has backward nodes');
      assert.ok(under('proj_out') > 0, 'the gradient passes back through the output projection');
      for (const frozen of ['pos_embed', 'adaln_single', 'caption_projection', 'transformer_blocks.0']) {
        assert.equal(under(frozen), 0, `backward nodes in the frozen ${frozen}`);
      }
    } finally {
      await source.close();
    }
  });
});
