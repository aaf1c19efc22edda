import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { PNG } from 'pngjs';

import { importOptional, MissingPackageError } from '../../src/io/optional-package.js';
import {
  lossCurvePoints,
  lossCurveSpec,
  renderLossCurve,
  renderVegaLiteSvg,
} from '../../src/train/loss-curve.js';
import type { MetricsRecord } from '../../src/train/metrics-log.js';
import { seededUniform, testSeed } from '../random.js';

const random = seededUniform(testSeed('test/train/loss-curve.test.ts'));

/** A log of `count` steps with random positive losses and a running mean as the smoothed loss. */
function randomLog(count: number): MetricsRecord[] {
  let sum = 0;
  return Array.from({ length: count }, (_, i) => {
    const loss = 0.05 + random() * Math.exp(-i / count);
    sum += loss;
    return {
      step: i + 1,
      loss,
      loss_smoothed: sum / (i + 1),
      lr: 1e-3,
      samples_per_s: 10,
      elapsed_s: i,
      time: '2026-12-06T00:00:00.000Z',
    };
  });
}

interface SpecData {
  data: { values: { step: number; value: number; series: string }[] };
  encoding: { y: { scale: { type?: string; zero?: boolean } } };
  width: number;
  height: number;
}

describe('loss curve', () => {
  it("plots every record's loss and smoothed loss when the log is short", () => {
    const log = randomLog(50 + Math.floor(random() * 100));
    const spec = lossCurveSpec(log) as unknown as SpecData;
    const values = spec.data.values;
    assert.deepEqual(
      values.filter((v) => v.series === 'loss').map((v) => [v.step, v.value]),
      log.map((r) => [r.step, r.loss]),
    );
    assert.deepEqual(
      values.filter((v) => v.series === 'smoothed').map((v) => [v.step, v.value]),
      log.map((r) => [r.step, r.loss_smoothed]),
    );
    assert.equal(spec.encoding.y.scale.type, 'log', 'positive losses on a log axis');
    const negative = lossCurveSpec([{ ...log[0], loss: -1 }]) as unknown as SpecData;
    assert.equal(negative.encoding.y.scale.type, undefined);
    assert.equal(negative.encoding.y.scale.zero, false);
  });

  it('averages runs of consecutive steps past maxPoints (bucket means computed here independently)', () => {
    const log = randomLog(1000 + Math.floor(random() * 500));
    const maxPoints = 40 + Math.floor(random() * 60);
    const points = lossCurvePoints(log, maxPoints).filter((p) => p.series === 'loss');
    const bucket = Math.ceil(log.length / maxPoints);
    assert.ok(points.length <= maxPoints);
    for (const [k, point] of points.entries()) {
      const group = log.slice(k * bucket, (k + 1) * bucket);
      let sum = 0;
      for (const r of group) sum += r.loss;
      assert.equal(point.step, group[group.length - 1].step);
      assert.ok(Math.abs(point.value - sum / group.length) < 1e-12, `bucket ${k}`);
    }
  });

  it('renders a valid PNG of the requested size, with the line drawn in its colour', async () => {
    const width = 400 + Math.floor(random() * 300);
    const height = 250 + Math.floor(random() * 150);
    const { png, spec } = await renderLossCurve(randomLog(200), { width, height });
    const image = PNG.sync.read(Buffer.from(png));
    assert.equal(image.width, width);
    assert.equal(image.height, height);
    assert.equal((spec as unknown as SpecData).width, width);
    // The smoothed series' colour (#08519c) is on the image: the data was drawn, not only the axes.
    let lineColour = 0;
    for (let i = 0; i < image.data.length; i += 4) {
      if (
        Math.abs(image.data[i] - 0x08) < 24 &&
        Math.abs(image.data[i + 1] - 0x51) < 24 &&
        Math.abs(image.data[i + 2] - 0x9c) < 24
      )
        lineColour++;
    }
    assert.ok(lineColour > width / 4, `${lineColour} pixels of the smoothed line`);
  });

  it('the SVG has one line per series through the logged points', async () => {
    const log = randomLog(30);
    const svg = await renderVegaLiteSvg(lossCurveSpec(log));
    const paths = [...svg.matchAll(/<path[^>]*aria-roledescription="line mark"[^>]*d="([^"]+)"/g)].map(
      (m) => m[1],
    );
    assert.equal(paths.length, 2, svg.slice(0, 300));
    for (const d of paths) assert.equal(d.split('L').length, log.length, 'one vertex per record');
  });

  it('a missing plotting package is an error naming it and the install command', async () => {
    await assert.rejects(
      importOptional(
        () => import('velodiff-no-such-package' as string),
        ['vega@^6.4.0'],
        'Plotting the loss curve',
      ),
      (e: unknown) => {
        assert.ok(e instanceof MissingPackageError);
        assert.equal(e.code, 'PACKAGE_MISSING');
        assert.match(e.message, /^Plotting the loss curve needs 'vega'.*npm install vega@\^6\.4\.0$/);
        return true;
      },
    );
  });
});
