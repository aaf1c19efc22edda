/** The default thread count: physical cores from the Linux topology, bounded by Node's logical count. */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { describe, it } from 'node:test';

import { parseCpuList, physicalCores } from '../../src/runtime/cpu-cores.js';
import { Runtime } from '../../src/runtime/runtime.js';

describe('physicalCores', () => {
  it('parses the kernel CPU list format', () => {
    assert.deepEqual(parseCpuList('0-3,8,10-11\n'), [0, 1, 2, 3, 8, 10, 11]);
    assert.deepEqual(parseCpuList('0'), [0]);
    assert.throws(() => parseCpuList('a-b'), /not a CPU list/);
  });

  it('counts distinct cores of the online CPUs (Linux), at most the logical CPUs', () => {
    const n = physicalCores();
    assert.ok(Number.isInteger(n) && n >= 1 && n <= availableParallelism(), String(n));
    let expected: number | undefined;
    try {
      const online = parseCpuList(readFileSync('/sys/devices/system/cpu/online', 'utf8'));
      const siblings = online.map((c) =>
        readFileSync(`/sys/devices/system/cpu/cpu${c}/topology/thread_siblings_list`, 'utf8').trim(),
      );
      expected = Math.min(new Set(siblings).size, availableParallelism());
    } catch {
      expected = undefined; // not Linux: the logical count
    }
    assert.equal(n, expected ?? availableParallelism());
  });

  it('is what a Runtime with threads 0 gives its sessions; an explicit count is kept', async () => {
    const auto = new Runtime({ worker: false });
    const one = new Runtime({ worker: false, threads: 1 });
    assert.equal(auto.settings.intraOpThreads, physicalCores());
    assert.equal(one.settings.intraOpThreads, 1);
    await auto.dispose();
    await one.dispose();
  });
});
