import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';

import type { WeightStore } from '../../src/io/diffusers.js';
import { AdapterSet } from '../../src/lora/adapters.js';
import { FLASH_PRESET, flashScheduler, flashTrainedTimesteps, loadFlashLora } from '../../src/lora/flash.js';
import { LCMScheduler } from '../../src/schedulers/index.js';
import { assertClose } from '../compare.js';
import { testRuntime } from '../helpers.js';
import { seededUniform, testSeed } from '../random.js';
import type { Weights } from './fixture.js';
import {
  FF,
  PATCH,
  TO_OUT,
  buildTinyGraph,
  randomLora,
  reference,
  tempDir,
  tinyInputs,
  writeBase,
  writePeft,
} from './fixture.js';

const PIXART_SCHEDULER = fileURLToPath(
  new URL(
    '../golden/pipelines/pipeline_pixart_alpha_ddim/pipeline/scheduler/scheduler_config.json',
    import.meta.url,
  ),
);

const seed = testSeed('test/lora/flash.test.ts');
const random = seededUniform(seed);
let dir: string;
let store: WeightStore;
let base: Weights;

before(async () => {
  dir = await tempDir();
  ({ store, weights: base } = await writeBase(dir, random));
});
after(async () => store.close());

describe('Flash Diffusion preset (methods/tgate_flash.md §2.5)', () => {
  it('is LCM, 4 steps, guidance 0', () => {
    assert.deepEqual(
      {
        scheduler: FLASH_PRESET.scheduler,
        steps: FLASH_PRESET.numInferenceSteps,
        guidance: FLASH_PRESET.guidanceScale,
      },
      { scheduler: 'LCMScheduler', steps: 4, guidance: 0 },
    );
  });

  it('builds LCM from the PixArt scheduler config: its betas, trailing spacing, timesteps [999, 759, 499, 259]', async () => {
    const text = await readFile(PIXART_SCHEDULER, 'utf8');
    const scheduler = flashScheduler(text);
    assert.ok(scheduler instanceof LCMScheduler);
    assert.equal(scheduler.config.beta_schedule, 'linear');
    assert.equal(scheduler.config.beta_start, 0.0001);
    assert.equal(scheduler.config.beta_end, 0.02);
    assert.equal(scheduler.config.timestep_spacing, 'trailing');
    scheduler.setTimesteps(FLASH_PRESET.numInferenceSteps);
    assert.deepEqual([...scheduler.timesteps], [999, 759, 499, 259]);
    // The student's training grid, an option (§2.5).
    assert.deepEqual(flashTrainedTimesteps(), [999, 749, 499, 249]);
    scheduler.setTimesteps(undefined, { timesteps: flashTrainedTimesteps() });
    assert.deepEqual([...scheduler.timesteps], [999, 749, 499, 249]);
  });

  it("applies the adapter's own alpha/r (8/64-style 0.125), fused by default", async () => {
    const lora = randomLora(random, { [FF]: 4, [TO_OUT]: 4, [PATCH]: 4 });
    // As flash-pixart: lora_alpha / r = 0.125 (PEFT default alpha 8 at r 64; here 0.5 at r 4).
    const folder = await writePeft(join(dir, 'flash'), lora, {
      r: 4,
      lora_alpha: 0.5,
      target_modules: ['proj', 'ff.net.0.proj', 'to_out.0'],
    });
    const adapters = new AdapterSet();
    const setup = await loadFlashLora(adapters, folder, {
      modelParameters: store,
      schedulerConfig: JSON.parse(await readFile(PIXART_SCHEDULER, 'utf8')) as Record<string, unknown>,
    });
    assert.deepEqual(setup.loraScale, [0.125]);
    assert.equal(setup.fused, true);
    assert.deepEqual(adapters.fused, ['flash']);
    assert.equal(setup.numInferenceSteps, 4);
    assert.equal(setup.guidanceScale, 0);
    assert.ok(setup.scheduler instanceof LCMScheduler);

    const inputs = tinyInputs(random);
    const graph = buildTinyGraph(store, adapters);
    const compiled = await testRuntime().compile(graph);
    assert.deepEqual(adapters.scaleFeeds(compiled.inputs), {});
    const outputs = await compiled.run(inputs);
    const expected = reference(inputs, base, [{ lora, scale: 0.125 }]);
    for (const name of ['ff', 'out', 'patches'] as const) {
      assertClose(outputs[name].data as Float32Array, expected[name], {
        atol: 2e-5,
        rtol: 1e-4,
        what: `seed ${seed}: ${name}`,
      });
    }
  });
});
