/**
 * What a pipeline fed its denoiser at each step and what came back, including the attention outputs a
 * T-GATE step kept for later steps (read back from where the session holds them), and the check of
 * every step against the float64 reference run on the same inputs.
 */
import assert from 'node:assert/strict';
import { tgateCacheName } from '../../src/attention/tgate.js';
import { Graph } from '../../src/graph/graph.js';
import { mul } from '../../src/graph/ops/index.js';
import type { PixArtPipeline } from '../../src/pipelines/index.js';
import type { TensorRef } from '../../src/runtime/backend.js';
import type { HostTensor } from '../../src/runtime/host-tensor.js';
import { hostTensor } from '../../src/runtime/host-tensor.js';
import type { Runtime } from '../../src/runtime/runtime.js';
import { assertMaxAbsError, maxAbs } from '../compare.js';
import type { RefTensor } from '../reference/math.js';
import type { PixArtReference, RefGateStep, RefSelfAttention } from './pixart-reference.js';
import { TGateSlots, refInputs } from './pixart-reference.js';

export interface RecordedStep {
  /** The denoiser inputs, copied. */
  readonly inputs: Readonly<Record<string, HostTensor>>;
  /** The denoiser output (ε, and σ for learned-sigma models), before guidance. */
  readonly sample: HostTensor;
  /** The attention outputs this step kept, by their retained output names. */
  readonly stored: Readonly<Record<string, HostTensor>>;
}

function copy(t: HostTensor): HostTensor {
  return hostTensor(t.dtype, [...t.shape], t.data.slice());
}

/** The values of a retained tensor, through an identity graph on the same runtime. */
async function readBack(runtime: Runtime, ref: TensorRef): Promise<HostTensor> {
  const g = new Graph('read-back');
  g.output('y', mul(g.input('x', 'float32', [...ref.shape]), 1));
  return (await (await runtime.compile(g)).run({ x: ref })).y;
}

/** Records every `pipe.transformer.step` call until `stop()`. */
export function recordSteps(
  pipe: PixArtPipeline,
  runtime: Runtime,
): { steps: RecordedStep[]; stop: () => void } {
  const steps: RecordedStep[] = [];
  const transformer = pipe.transformer;
  const original = transformer.step;
  transformer.step = async (inputs, options) => {
    const copied = Object.fromEntries(Object.entries(inputs).map(([name, t]) => [name, copy(t)]));
    const result = await original.call(transformer, inputs, options);
    const stored: Record<string, HostTensor> = {};
    for (const [name, ref] of Object.entries(result.retained)) stored[name] = await readBack(runtime, ref);
    steps.push({ inputs: copied, sample: copy(result.host.sample), stored });
    return result;
  };
  return {
    steps,
    stop: () => {
      transformer.step = original;
    },
  };
}

/**
 * Bound on max |pipeline − reference| of one denoiser call, relative to max(1, max |reference|). The
 * tiny transformer's float32 steps stay within 4e-6 of the float64 reference (which is itself within
 * 1.3e-6 of diffusers' float64 golden output, pixart-reference.test.ts); CLEAR with a window one
 * wider, full attention in its place or a wrong T-GATE cache miss by 1e-3 or more.
 */
export const STEP_TOLERANCE = 2e-5;

/** Asserts `actual` matches the float64 `expected` within STEP_TOLERANCE; returns the bound used. */
export function assertStepClose(actual: HostTensor, expected: RefTensor, what: string): number {
  assert.deepEqual([...actual.shape], [...expected.shape], `${what}: shape`);
  const bound = STEP_TOLERANCE * Math.max(1, maxAbs(expected.data));
  assertMaxAbsError(actual.data as Float32Array, expected.data, bound, what);
  return bound;
}

/**
 * Recomputes every recorded step with the reference on the step's own inputs and compares the
 * outputs. With a T-GATE `plan` (one entry per step) the reference keeps and reuses attention outputs
 * as the plan says, each step's batch must be the CFG batch or not as planned, and every attention
 * output the pipeline kept must equal the reference's slot. Returns `<step>:<layer>.<role>` of the
 * kept outputs compared.
 */
export function assertStepsMatch(
  steps: readonly RecordedStep[],
  reference: PixArtReference,
  options: { what: string; selfAttention?: RefSelfAttention; plan?: readonly RefGateStep[]; batch?: number },
): string[] {
  const { plan, what } = options;
  if (plan) assert.equal(steps.length, plan.length, `${what}: denoiser calls`);
  const slots = new TGateSlots();
  const compared: string[] = [];
  steps.forEach((step, i) => {
    const planned = plan?.[i];
    if (planned) {
      const batch = (options.batch ?? 1) * (planned.cfg ? 2 : 1);
      assert.equal(step.inputs.hidden_states.shape[0], batch, `${what}, step ${i}: batch`);
      assert.equal(
        'encoder_hidden_states' in step.inputs,
        planned.attn2 !== 'reuse',
        `${what}, step ${i}: the caption is fed only while cross-attention is computed`,
      );
    }
    const expected = reference.forward(refInputs(step.inputs), {
      selfAttention: options.selfAttention,
      hook: planned ? slots.hook(planned) : undefined,
    });
    assertStepClose(step.sample, expected, `${what}, step ${i}`);
    for (let layer = 0; layer < reference.config.num_layers; layer++) {
      for (const role of ['attn1', 'attn2'] as const) {
        const kept = step.stored[tgateCacheName(layer, role)];
        if (!kept) continue;
        assert.equal(planned?.[role], 'store', `${what}, step ${i}: ${layer}.${role} kept but not planned`);
        assertStepClose(
          kept,
          slots.slots.get(`${layer}.${role}`) as RefTensor,
          `${what}, step ${i}: kept ${layer}.${role}`,
        );
        compared.push(`${i}:${layer}.${role}`);
      }
    }
  });
  return compared;
}
