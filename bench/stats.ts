/** Helpers shared by the benchmarks: medians of repeated runs, tables, ORT kernel profiles. */
import { readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export function median(values: readonly number[]): number {
  const s = [...values].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

export function nowMs(): number {
  return Number(process.hrtime.bigint()) / 1e6;
}

export async function timeMs(fn: () => Promise<unknown>): Promise<number> {
  const t0 = nowMs();
  await fn();
  return nowMs() - t0;
}

/** Print rows as an aligned text table. */
export function table(header: string[], rows: (string | number)[][]): string {
  const cells = [header, ...rows.map((r) => r.map((c) => (typeof c === 'number' ? formatNumber(c) : c)))];
  const widths = header.map((_, i) => Math.max(...cells.map((r) => String(r[i]).length)));
  const line = (r: (string | number)[]): string => r.map((c, i) => String(c).padStart(widths[i])).join('  ');
  return [line(cells[0]), widths.map((w) => '-'.repeat(w)).join('  '), ...cells.slice(1).map(line)].join(
    '\n',
  );
}

export function formatNumber(x: number): string {
  if (!Number.isFinite(x)) return String(x);
  const a = Math.abs(x);
  if (a >= 100) return x.toFixed(1);
  if (a >= 1) return x.toFixed(2);
  return x.toPrecision(3);
}

/**
 * The process's anonymous resident memory in MB (Linux's RssAnon), or NaN elsewhere: what the
 * weights ORT copied cost. RSS also counts every mapping of an mmapped checkpoint, once per session.
 */
export function privateMb(): number {
  try {
    const line = /^RssAnon:\s+(\d+) kB$/m.exec(readFileSync('/proc/self/status', 'utf8'));
    return line ? Number(line[1]) / 1024 : NaN;
  } catch {
    return NaN;
  }
}

/** ORT's session settings in words: `ORT level all, prepacking`. */
/**
 * The process's peak resident memory in MB: Linux's VmHWM, the high-water mark of this process's own
 * address space. `process.resourceUsage().maxRSS` is not that in a child process: Linux keeps the
 * maximum across fork and exec, so a child of a large parent reports the parent's peak (measured: a
 * 1.3 GB encoder load reported 6.9 GB after the parent's denoiser runs). Elsewhere, maxRSS.
 */
export function peakRssMb(): number {
  try {
    const line = /^VmHWM:\s+(\d+) kB$/m.exec(readFileSync('/proc/self/status', 'utf8'));
    if (line) return Number(line[1]) / 1024;
  } catch {
    // not Linux
  }
  return process.resourceUsage().maxRSS / 1024;
}

/**
 * Resets the peak `peakRssMb` reports to the current RSS (Linux ≥ 4.0: "5" to /proc/self/clear_refs),
 * so that one phase's peak can be told from the next; false where that is not possible.
 */
export function resetPeakRss(): boolean {
  try {
    writeFileSync('/proc/self/clear_refs', '5');
    return true;
  } catch {
    return false;
  }
}

export function sessionLine(settings: { optimizationLevel: string; disablePrepacking: boolean }): string {
  return `ORT level ${settings.optimizationLevel}, ${settings.disablePrepacking ? 'no prepacking' : 'prepacking'}`;
}

export function machineLine(): string {
  return `node ${process.version}, ${process.platform}/${process.arch}`;
}

/** One kernel event of ORT's JSON profile. */
export interface KernelEvent {
  readonly name: string;
  /** Microseconds. */
  readonly dur: number;
  readonly args: { readonly op_name?: string };
}

/**
 * The kernel events of the ORT profile written into `dir` over `runs` runs of one session, without
 * the first `skipped` runs (ORT's arena still grows through them).
 */
export function readKernelProfile(
  dir: string,
  runs: number,
  skipped: number,
): { perRun: number; steady: KernelEvent[] } {
  const file = join(dir, readdirSync(dir).find((f) => f.startsWith('profile')) as string);
  const events = (JSON.parse(readFileSync(file, 'utf8')) as (KernelEvent & { cat: string })[]).filter(
    (e) => e.cat === 'Node' && e.name.endsWith('_kernel_time'),
  );
  const perRun = events.length / runs;
  return { perRun, steady: events.slice(skipped * perRun) };
}
