/**
 * DeepCache's options checked against a UNet before any step runs: `checkDeepCacheForUNet` on the
 * golden tiny UNets' configs (no graph is built), against the branch count read from config.json
 * (three per down block) and against what the step graph builder (`deepCacheFeaturePath`) accepts.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

import type { DeepCacheOptions } from '../../src/attention/deepcache.js';
import { checkDeepCacheForUNet, deepCacheFeaturePath } from '../../src/attention/deepcache.js';
import { OptionError } from '../../src/errors.js';
import { parseUNetConfig } from '../../src/models/unet/config.js';
import { seededUniform, testSeed } from '../random.js';

const seed = testSeed('test/attention/deepcache.test.ts');
const random = seededUniform(seed);

const FIXTURES = ['unet2d_sd15_tiny', 'unet2d_sdxl_tiny', 'unet2d_lcm_timecond_tiny'];

async function unetConfig(name: string) {
  const path = fileURLToPath(new URL(`../golden/models/${name}/model/config.json`, import.meta.url));
  const raw = JSON.parse(await readFile(path, 'utf8')) as Record<string, unknown>;
  return { raw, config: parseUNetConfig(raw, path) };
}

/** Throws an OptionError whose message contains every one of `parts`. */
function throwsWith(run: () => unknown, parts: readonly string[], what: string): void {
  assert.throws(run, (error: unknown) => {
    assert.ok(error instanceof OptionError, `${what}: expected an OptionError, got ${String(error)}`);
    for (const part of parts)
      assert.ok(error.message.includes(part), `${what}: '${part}' not in: ${error.message}`);
    return true;
  });
}

describe('checkDeepCacheForUNet', () => {
  it('refuses a branch id the UNet lacks, saying what was expected and what was found', async () => {
    for (const name of FIXTURES) {
      const { raw, config } = await unetConfig(name);
      const branches = 3 * (raw.down_block_types as string[]).length;
      // A random id past the last branch, and the first one past it.
      for (const id of [branches, branches + 1 + Math.floor(random() * 20)]) {
        const options: DeepCacheOptions = { cacheInterval: 2, cacheBranchId: id };
        throwsWith(
          () => checkDeepCacheForUNet(options, config),
          [
            `cacheBranchId ${id}`,
            `${branches / 3} down blocks`,
            `expected a branch id < ${branches}`,
            `0 … ${branches - 1}`,
            `found ${id}`,
          ],
          `seed ${seed}: ${name}, branch ${id}`,
        );
      }
      throwsWith(
        () => checkDeepCacheForUNet({ cacheInterval: 2, cacheBranchId: -1 }, config),
        ['cacheBranchId must be an integer ≥ 0', '-1'],
        name,
      );
      throwsWith(
        () => checkDeepCacheForUNet({ cacheInterval: 0, cacheBranchId: 0 }, config),
        ['cacheInterval must be an integer ≥ 1'],
        name,
      );
    }
  });

  it('accepts exactly the ids the step graph builder accepts', async () => {
    for (const name of FIXTURES) {
      const { raw, config } = await unetConfig(name);
      const branches = 3 * (raw.down_block_types as string[]).length;
      for (let id = 0; id < branches + 3; id++) {
        let builds = true;
        try {
          deepCacheFeaturePath(config, id);
        } catch (error) {
          assert.ok(error instanceof OptionError, String(error));
          builds = false;
        }
        assert.equal(builds, id < branches, `${name}: branch ${id} builds ${builds}`);
        const options = { cacheInterval: 3, cacheBranchId: id };
        if (builds) assert.equal(checkDeepCacheForUNet(options, config), options);
        else assert.throws(() => checkDeepCacheForUNet(options, config), OptionError);
      }
    }
  });

  it('refuses a UNet without a mid block, naming it', async () => {
    const { config } = await unetConfig(FIXTURES[0]);
    throwsWith(
      () => checkDeepCacheForUNet({ cacheInterval: 2, cacheBranchId: 0 }, { ...config, mid: null }),
      ['mid block', 'mid_block_type is null'],
      'no mid block',
    );
  });
});
