/**
 * `velodiff bench spinning --json` on two-step generations of the shipped emoji model: both variants
 * ran, made the same image (spinning changes no arithmetic), through the pipeline's ORT sessions.
 * No timing is asserted.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { captureCli } from './capture.js';

describe('velodiff bench spinning --json', () => {
  it('times generations with spinning on and off and prints both', async () => {
    const { code, out, err } = await captureCli([
      'bench',
      'spinning',
      '--steps',
      '2',
      '--reps',
      '1',
      '--warmups',
      '0',
      '--json',
    ]);
    assert.equal(code, 0, err);
    const result = JSON.parse(out.trim().split('\n').pop() as string) as Record<string, unknown>;
    assert.deepEqual(Object.keys(result).slice(0, 3), ['spinning_ms', 'no_spinning_ms', 'speedup']);
    const n = result as Record<string, number>;
    for (const key of ['spinning_ms', 'no_spinning_ms', 'spinning_cpu_ms', 'no_spinning_cpu_ms'])
      assert.ok(Number.isFinite(n[key]) && n[key] > 0, `${key} = ${n[key]}`);
    assert.ok(Math.abs(n.speedup - n.spinning_ms / n.no_spinning_ms) <= 1e-9 * n.speedup);
    assert.equal(result.same_image, true);
    // The text encoder, the denoiser (one graph for both steps: CFG batch 2) and the VAE decoder at least.
    assert.ok(n.sessions >= 3, `sessions = ${n.sessions}`);
    assert.match(String(result.command), /^npx velodiff bench spinning --steps 2 --reps 1 --warmups 0$/);
    assert.match(err, /no spinning/);
  });
});
