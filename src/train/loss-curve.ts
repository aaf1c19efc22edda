/**
 * The loss curve of a run as a PNG: a Vega-Lite chart of the metrics log (the raw loss and its
 * smoothed average against the step), rendered to SVG by Vega in Node (no canvas, no browser) and
 * rasterised by sharp. The spec is plain JSON built from the log, so it can be checked, saved beside
 * the PNG (`loss.vl.json`) and opened in the Vega editor.
 */
import { importOptional } from '../io/optional-package.js';
import type { JsonObject } from './json-value.js';
import type { MetricsRecord } from './metrics-log.js';

/** The plotting packages and the versions velodiff is tested with (package.json's peerDependencies). */
export const PLOT_PACKAGES = ['vega@^6.4.0', 'vega-lite@~6.4.3'] as const;

export interface LossCurveOptions {
  /** The PNG's size in pixels, axes and legend included (default 800×400). */
  readonly width?: number;
  readonly height?: number;
  /** Chart title (default 'training loss'). */
  readonly title?: string;
  /** At most this many points per series: longer logs are averaged over consecutive steps (default 2000). */
  readonly maxPoints?: number;
}

/** One plotted point. */
export interface LossPoint {
  readonly step: number;
  readonly value: number;
  readonly series: 'loss' | 'smoothed';
}

/**
 * The points of the chart: each record's loss and smoothed loss, or, past `maxPoints` records, the
 * mean loss of each run of consecutive records (at the run's last step) and the smoothed loss there.
 */
export function lossCurvePoints(records: readonly MetricsRecord[], maxPoints = 2000): LossPoint[] {
  const finite = records.filter((r) => Number.isFinite(r.loss));
  const bucket = Math.max(1, Math.ceil(finite.length / maxPoints));
  const points: LossPoint[] = [];
  for (let start = 0; start < finite.length; start += bucket) {
    const group = finite.slice(start, start + bucket);
    const last = group[group.length - 1];
    const mean = group.reduce((sum, r) => sum + r.loss, 0) / group.length;
    points.push({ step: last.step, value: mean, series: 'loss' });
    if (Number.isFinite(last.loss_smoothed)) {
      points.push({ step: last.step, value: last.loss_smoothed, series: 'smoothed' });
    }
  }
  return points;
}

/** The Vega-Lite spec of the loss curve (log-scale loss axis when every value is positive). */
export function lossCurveSpec(records: readonly MetricsRecord[], options: LossCurveOptions = {}): JsonObject {
  const points = lossCurvePoints(records, options.maxPoints);
  const positive = points.length > 0 && points.every((p) => p.value > 0);
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    width: options.width ?? 800,
    height: options.height ?? 400,
    // The size given is the whole image's, axes and legend included.
    autosize: { type: 'fit', contains: 'padding' },
    background: 'white',
    padding: 8,
    title: options.title ?? 'training loss',
    data: { values: points.map((p) => ({ ...p })) },
    encoding: {
      x: { field: 'step', type: 'quantitative', title: 'step' },
      y: {
        field: 'value',
        type: 'quantitative',
        title: 'loss',
        scale: positive ? { type: 'log', nice: false } : { zero: false },
      },
      color: {
        field: 'series',
        type: 'nominal',
        title: null,
        scale: { domain: ['loss', 'smoothed'], range: ['#9ecae1', '#08519c'] },
        legend: { orient: 'top-right' },
      },
    },
    // The raw loss thin and light under the smoothed one.
    layer: [
      {
        transform: [{ filter: "datum.series === 'loss'" }],
        mark: { type: 'line', strokeWidth: 1, clip: true },
      },
      {
        transform: [{ filter: "datum.series === 'smoothed'" }],
        mark: { type: 'line', strokeWidth: 2.5, clip: true },
      },
    ],
  };
}

/** Renders a Vega-Lite spec to SVG text with Vega's headless renderer. */
export async function renderVegaLiteSvg(spec: JsonObject): Promise<string> {
  const purpose = 'Plotting the loss curve';
  const [vega, vegaLite] = await Promise.all([
    importOptional(() => import('vega'), PLOT_PACKAGES, purpose),
    importOptional(() => import('vega-lite'), PLOT_PACKAGES, purpose),
  ]);
  const compiled = vegaLite.compile(spec as unknown as Parameters<typeof vegaLite.compile>[0]).spec;
  const view = new vega.View(vega.parse(compiled), { renderer: 'none' });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}

/** Rasterises SVG text to PNG bytes with sharp (librsvg). */
export async function svgToPng(svg: string): Promise<Uint8Array> {
  const sharp = (await importOptional(() => import('sharp'), ['sharp'], 'Writing the loss curve as PNG'))
    .default;
  return new Uint8Array(await sharp(Buffer.from(svg)).png().toBuffer());
}

/** The loss curve of `records` as PNG bytes, and the spec it was drawn from. */
export async function renderLossCurve(
  records: readonly MetricsRecord[],
  options: LossCurveOptions = {},
): Promise<{ png: Uint8Array; spec: JsonObject }> {
  const spec = lossCurveSpec(records, options);
  return { png: await svgToPng(await renderVegaLiteSvg(spec)), spec };
}
