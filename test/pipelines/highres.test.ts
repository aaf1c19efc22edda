/**
 * The staged high-resolution recipe (`highres`) on the tiny FLUX and PixArt folders: a staged run
 * equals the stages run by hand through the public API (base run, resizeBicubic, image-to-image run
 * on the same generator; for FLUX with the notebook's static-shift scheduler and CLEAR's RoPE and
 * softmax options), the output is the base size × scale, the FLUX defaults are the notebook's
 * (methods/clear_linfusion.md §1.7.2), and bad stages fail before any model runs.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { OptionError } from '../../src/errors.js';
import type { FluxHighResStage } from '../../src/pipelines/flux.js';
import { FluxPipeline } from '../../src/pipelines/flux.js';
import { PixArtPipeline } from '../../src/pipelines/pixart.js';
import { resizeBicubic } from '../../src/pipelines/pil-resize.js';
import { TorchGenerator } from '../../src/random/torch-generator.js';
import { hostTensor } from '../../src/runtime/host-tensor.js';
import { Runtime } from '../../src/runtime/runtime.js';
import { FlowMatchEulerDiscreteScheduler } from '../../src/schedulers/index.js';
import { assertExactlyEqual, assertMaxAbsError } from '../compare.js';
import { tinyFluxPipeline } from '../fixtures/tiny-flux-pipeline.js';
import { tinyPixArtPipeline } from '../fixtures/tiny-pixart-pipeline.js';

const runtime = new Runtime({ worker: false, threads: 1 });
after(() => runtime.dispose());

/** Flow matching's static shift σ' = sσ / (1 + (s − 1)σ) on linspace(1, 1/steps, steps), from index `start`, ×1000. */
function staticShiftTimesteps(steps: number, start: number, shift: number): number[] {
  const sigmas = Array.from({ length: steps }, (_, i) => 1 + ((1 / steps - 1) * i) / (steps - 1));
  return sigmas.slice(start).map((s) => (1000 * shift * s) / (1 + (shift - 1) * s));
}

describe('FluxPipeline highres (CLEAR inference_t2i_highres.ipynb)', () => {
  let pipe: FluxPipeline;
  /** What each transformer step was given. */
  let steps: { tokens: number; guidance: number; ntk?: number; proportional?: boolean; attention?: string }[];
  before(async () => {
    pipe = await FluxPipeline.fromPretrained(await tinyFluxPipeline(), { runtime, onWarning: () => {} });
    const step = pipe.transformer.step.bind(pipe.transformer);
    pipe.transformer.step = async (feeds, options) => {
      steps.push({
        tokens: feeds.hidden_states.shape[1],
        guidance: (feeds.guidance.data as Float32Array)[0],
        ntk: options?.ropeNtkFactor,
        proportional: options?.proportionalAttention,
        attention: options?.attention?.kind,
      });
      return step(feeds, options);
    };
  });
  after(() => pipe.close());

  const text = { prompt: 'a red heart', maxSequenceLength: 16 };

  it('equals the stages run by hand: base run, PIL bicubic ×2, image-to-image with the static shift, ntk 10, proportional attention and CLEAR', async () => {
    const clear = { kind: 'clear', radius: 2 } as const;
    steps = [];
    const staged = await pipe.run({
      ...text,
      height: 16,
      width: 24,
      numInferenceSteps: 3,
      seed: 7,
      highres: { scale: 2, numInferenceSteps: 5, attention: clear },
    });
    const generator = new TorchGenerator(7);
    const base = await pipe.run({ ...text, height: 16, width: 24, numInferenceSteps: 3, generator });
    const image = resizeBicubic(base.images!, { height: 32, width: 48 });
    const folderScheduler = pipe.scheduler;
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.fromConfig(
      (folderScheduler as FlowMatchEulerDiscreteScheduler).config,
      { use_dynamic_shifting: false },
    );
    let byHand;
    try {
      byHand = await pipe.run({
        ...text,
        image,
        strength: 0.7,
        numInferenceSteps: 5,
        guidanceScale: 7.5,
        ropeNtkFactor: 10,
        proportionalAttention: true,
        attention: clear,
        generator,
      });
    } finally {
      pipe.scheduler = folderScheduler;
    }
    assert.deepEqual(staged.images!.shape, [1, 3, 32, 48]);
    assertExactlyEqual(staged.images!.data as Float32Array, byHand.images!.data as Float32Array, 'images');
    assertExactlyEqual(staged.latents.data as Float32Array, byHand.latents.data as Float32Array, 'latents');
    // strength 0.7 of 5 steps starts at int(5 − 3.5) = 1: four steps of the static shift 3.
    assertMaxAbsError(staged.timesteps, staticShiftTimesteps(5, 1, 3), 1e-3, 'refine timesteps');
    // The base at 8×12 packed tokens with full attention, the refine at 16×24 with CLEAR.
    assert.deepEqual(
      steps.slice(0, 7).map((s) => [s.tokens, s.attention ?? 'full', s.ntk, s.proportional]),
      [...new Array(3).fill([24, 'full', 1, false]), ...new Array(4).fill([96, 'clear', 10, true])],
    );
  });

  it("the notebook's defaults: base 20 steps at guidance 3.5; refine ×4, 14 of 20 steps at guidance 7.5, ntk 10, proportional, σ' from shift 3", async () => {
    steps = [];
    const out = await pipe.run({ ...text, height: 8, width: 12, seed: 3, highres: { scale: 4 } });
    assert.deepEqual(out.images!.shape, [1, 3, 32, 48]);
    const base = steps.slice(0, 20);
    const refine = steps.slice(20);
    assert.equal(refine.length, 14);
    assert.ok(base.every((s) => s.tokens === 6 && s.guidance === 3.5 && s.ntk === 1 && !s.proportional));
    assert.ok(
      refine.every(
        (s) =>
          s.tokens === 96 &&
          s.guidance === 7.5 &&
          s.ntk === 10 &&
          s.proportional &&
          s.attention === undefined,
      ),
    );
    // §1.7.2: 0.875, 0.848, …, 0.136 (× 1000), the static shift 3 of the folder's config.
    assertMaxAbsError(out.timesteps, staticShiftTimesteps(20, 6, 3), 1e-3, 'refine timesteps');
    assert.equal(out.timesteps[0].toFixed(1), '875.0');
  });

  it('stages in order (×2 then ×2), a stage shift, outputType on the last stage, the batch of numImagesPerPrompt', async () => {
    steps = [];
    const stages: FluxHighResStage[] = [
      { scale: 2, strength: 0.5, numInferenceSteps: 2, shift: 1 },
      { scale: 2, strength: 0.4, numInferenceSteps: 5, ropeNtkFactor: 1, proportionalAttention: false },
    ];
    const out = await pipe.run({
      ...text,
      height: 8,
      width: 8,
      numInferenceSteps: 1,
      numImagesPerPrompt: 2,
      seed: 1,
      highres: stages,
      outputType: 'latent',
    });
    assert.equal(out.images, undefined);
    // 32×32 px → 16×16 latent → 64 packed tokens of 4·4 channels, two images.
    assert.deepEqual(out.latents.shape, [2, 64, 16]);
    assert.deepEqual(
      steps.map((s) => [s.tokens, s.ntk, s.proportional]),
      [[4, 1, false], ...new Array(1).fill([16, 10, true]), ...new Array(2).fill([64, 1, false])],
    );
    // Second stage: int(5 − 2) = 3 → the last two of the static shift 3.
    assertMaxAbsError(out.timesteps, staticShiftTimesteps(5, 3, 3), 1e-3, 'second stage');
  });

  it('errors before any model runs: stage values, image-to-image options, attention', async () => {
    steps = [];
    const bad: [unknown, RegExp][] = [
      [{ scale: 1 }, /highres\.scale must be an integer ≥ 2 .*got 1/],
      [{ scale: 2.5 }, /highres\.scale must be an integer ≥ 2/],
      [
        [{ scale: 2 }, { scale: 2, strength: 0 }],
        /highres\[1\]\.strength must be a number in \(0, 1\], got 0/,
      ],
      [{ scale: 2, strength: 1.5 }, /highres\.strength must be a number in \(0, 1\]/],
      [{ scale: 2, numInferenceSteps: 0 }, /highres\.numInferenceSteps must be an integer ≥ 1/],
      [{ scale: 2, guidanceScale: Number.NaN }, /highres\.guidanceScale must be a number/],
      [{ scale: 2, ropeNtkFactor: 0 }, /ropeNtkFactor must be a finite number > 0/],
      [{ scale: 2, shift: -1 }, /shift/],
      [{ scale: 2, attention: { kind: 'clear', radius: 0.5 } }, /radius must be a finite number ≥ 1/],
      [{ scale: 2, attention: { kind: 'linfusion', weights: '/nowhere' } }, /'linfusion' is not implemented/],
      [[], /highres needs at least one stage/],
    ];
    for (const [highres, message] of bad) {
      await assert.rejects(
        pipe.run({ ...text, height: 8, width: 8, highres: highres as FluxHighResStage }),
        (e: unknown) => {
          assert.ok(e instanceof OptionError, `${JSON.stringify(highres)}: ${String(e)}`);
          assert.match(e.message, message);
          return true;
        },
      );
    }
    const image = hostTensor('float32', [1, 3, 8, 8], new Float32Array(192).fill(0.5));
    await assert.rejects(
      pipe.run({ ...text, image, highres: { scale: 2 } }),
      (e: unknown) =>
        e instanceof OptionError &&
        /image does not go with highres, which generates its base image/.test(e.message),
    );
    assert.equal(steps.length, 0);
  });
});

describe('PixArtPipeline highres (the same staged recipe, PixArt image-to-image)', () => {
  let pipe: PixArtPipeline;
  before(async () => {
    pipe = await PixArtPipeline.fromPretrained(await tinyPixArtPipeline(), { runtime, onWarning: () => {} });
  });
  after(() => pipe.close());

  it('equals the stages run by hand: base run, PIL bicubic ×2, image-to-image with a CLEAR refine', async () => {
    const clear = { kind: 'clear', radius: 2 } as const;
    const common = { prompt: 'a red heart', numInferenceSteps: 4, guidanceScale: 3 };
    const staged = await pipe.run({
      ...common,
      height: 16,
      width: 24,
      seed: 5,
      highres: { scale: 2, attention: clear },
    });
    const generator = new TorchGenerator(5);
    const base = await pipe.run({ ...common, height: 16, width: 24, generator });
    const image = resizeBicubic(base.images!, { height: 32, width: 48 });
    const byHand = await pipe.run({ ...common, image, strength: 0.7, attention: clear, generator });
    assert.deepEqual(staged.images!.shape, [1, 3, 32, 48]);
    assertExactlyEqual(staged.images!.data as Float32Array, byHand.images!.data as Float32Array, 'images');
    // int(4 · 0.7) = 2 steps of the run's 4.
    assert.equal(staged.timesteps.length, 2);
    // The CLEAR window reaches the refine: a full-attention refine differs.
    const full = await pipe.run({ ...common, height: 16, width: 24, seed: 5, highres: { scale: 2 } });
    const change = Math.max(
      ...Array.from(full.images!.data as Float32Array, (v, i) =>
        Math.abs(v - (staged.images!.data as Float32Array)[i]),
      ),
    );
    assert.ok(change > 1e-4, `CLEAR changes the refined image by ${change}`);
  });

  it('×4 with its own steps, strength and guidance; errors', async () => {
    const out = await pipe.run({
      prompt: 'a red heart',
      height: 8,
      width: 8,
      numInferenceSteps: 2,
      seed: 2,
      highres: { scale: 4, strength: 0.5, numInferenceSteps: 6, guidanceScale: 1 },
    });
    assert.deepEqual(out.images!.shape, [1, 3, 32, 32]);
    assert.equal(out.timesteps.length, 3);
    await assert.rejects(
      pipe.run({ prompt: 'a red heart', height: 8, width: 8, highres: { scale: 3, strength: 2 } }),
      (e: unknown) =>
        e instanceof OptionError && /highres\.strength must be a number in \(0, 1\]/.test(e.message),
    );
    await assert.rejects(
      pipe.run({ prompt: 'a red heart', height: 8, width: 8, strength: 0.5, highres: { scale: 2 } }),
      (e: unknown) => e instanceof OptionError && /strength does not go with highres/.test(e.message),
    );
  });
});
