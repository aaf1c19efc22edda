import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { DiffusionPipeline } from '../../src/pipelines/index.js';
import type { PixArtRunOptions } from '../../src/pipelines/index.js';
import { Runtime } from '../../src/runtime/runtime.js';
import { readAllTensors } from '../helpers.js';

const CASE = fileURLToPath(new URL('../golden/pipelines/pipeline_pixart_alpha_ddim/', import.meta.url));
const runtime = new Runtime({ worker: false, threads: 1 });
after(() => runtime.dispose());

async function setup(): Promise<{
  run: (o: Partial<PixArtRunOptions>) => Promise<Float32Array>;
  close: () => Promise<void>;
}> {
  const pipe = await DiffusionPipeline.fromPretrained(`${CASE}pipeline`, { runtime });
  const inputs = await readAllTensors(`${CASE}inputs.safetensors`);
  const base: PixArtRunOptions = {
    promptEmbeds: inputs.prompt_embeds,
    promptAttentionMask: inputs.prompt_attention_mask,
    negativePromptEmbeds: inputs.negative_prompt_embeds,
    negativePromptAttentionMask: inputs.negative_prompt_attention_mask,
    latents: inputs.latents,
    guidanceScale: 4.5,
    height: 16,
    width: 16,
    outputType: 'latent',
  };
  return {
    run: async (o) => (await pipe.run({ ...base, ...o })).latents.data as Float32Array,
    close: () => pipe.close(),
  };
}

describe('T-GATE in the PixArt pipeline', () => {
  it('with gateStep ≥ numInferenceSteps and spInterval 1 equals the plain pipeline exactly', async () => {
    const { run, close } = await setup();
    for (const steps of [4, 6]) {
      const plain = await run({ numInferenceSteps: steps });
      for (const gateStep of [steps, steps + 3]) {
        const gated = await run({ numInferenceSteps: steps, tgate: { gateStep, spInterval: 1, warmUp: 0 } });
        assert.deepEqual([...gated], [...plain], `steps ${steps}, gate ${gateStep}`);
      }
    }
    await close();
  });

  it('gates: a gate inside the run changes the result, and compiled step graphs are reused across steps and calls', async () => {
    const { run, close } = await setup();
    const plain = await run({ numInferenceSteps: 8 });
    const before = runtime.cachedSessions;
    const tgate = { gateStep: 5, spInterval: 2, warmUp: 1 };
    const first = await run({ numInferenceSteps: 8, tgate });
    const kinds = runtime.cachedSessions - before;
    // Besides the plain step graph (already compiled): store self-attention (step 2), reuse it (3),
    // store the averaged cross-attention at the gate (4), reuse it without CFG (5–7).
    assert.equal(kinds, 4, `${kinds} new step graphs for 8 steps`);
    const second = await run({ numInferenceSteps: 8, tgate });
    assert.equal(runtime.cachedSessions - before, kinds, 'a second call compiles nothing');
    assert.deepEqual([...second], [...first], 'caches are cleared between calls');
    let differs = 0;
    for (let i = 0; i < plain.length; i++) if (plain[i] !== first[i]) differs++;
    assert.ok(differs > plain.length / 2, 'T-GATE changes the sampling');
    await close();
  });
});
