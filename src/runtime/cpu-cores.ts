import { readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';

/**
 * Physical cores this process may use: on Linux, the distinct cores (`topology/core_cpus_list`) of
 * the online CPUs, at most the CPUs the process's affinity allows; elsewhere, or when the topology
 * cannot be read, the logical CPUs Node reports.
 *
 * ORT chooses its own default from the cpuinfo library and, where that cannot identify the CPU (as
 * on the 2-vCPU AMD EPYC VM of BENCHMARKS.md), falls back to half the logical CPUs: one thread on
 * two cores, and a UNet step at 64×64 took 12.8 s instead of 6.1 s with two (measured, ORT 1.30).
 */
export function physicalCores(): number {
  const logical = availableParallelism();
  try {
    const online = parseCpuList(readFileSync('/sys/devices/system/cpu/online', 'utf8'));
    const cores = new Set<string>();
    for (const cpu of online) {
      cores.add(readFileSync(`/sys/devices/system/cpu/cpu${cpu}/topology/core_cpus_list`, 'utf8').trim());
    }
    return Math.max(1, Math.min(cores.size, logical));
  } catch {
    return Math.max(1, logical);
  }
}

/** "0-3,8,10-11" → [0, 1, 2, 3, 8, 10, 11] (the kernel's CPU list format). */
export function parseCpuList(text: string): number[] {
  const cpus: number[] = [];
  for (const part of text.trim().split(',')) {
    if (part === '') continue;
    const [lo, hi] = part.split('-').map((s) => Number.parseInt(s, 10));
    if (!Number.isInteger(lo) || (hi !== undefined && !Number.isInteger(hi)))
      throw new Error(`not a CPU list: ${JSON.stringify(text)}`);
    for (let c = lo; c <= (hi ?? lo); c++) cpus.push(c);
  }
  return cpus;
}
