import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { FileFormatError, OptionError } from '../../src/errors.js';
import type { Graph } from '../../src/graph/graph.js';
import type { WeightStore } from '../../src/io/diffusers.js';
import { writeSafetensors } from '../../src/io/safetensors.js';
import { AdapterSet, loraScaleInputName } from '../../src/lora/adapters.js';
import type { HostTensor } from '../../src/runtime/host-tensor.js';
import type { CompiledGraph } from '../../src/runtime/runtime.js';
import { assertClose, assertExactlyEqual } from '../compare.js';
import { testRuntime } from '../helpers.js';
import { seededUniform, testSeed } from '../random.js';
import type { LoraWeights, ReferenceTerm, Weights } from './fixture.js';
import {
  EMBEDDER,
  FF,
  PATCH,
  TO_OUT,
  buildTinyGraph,
  randomLora,
  reference,
  tempDir,
  tinyInputs,
  writeBase,
  writeDiffusers,
  writeKohya,
  writePeft,
} from './fixture.js';

const seed = testSeed('test/lora/adapters.test.ts');
const random = seededUniform(seed);
const runtime = testRuntime();
let dir: string;
let store: WeightStore;
let base: Weights;
let inputs: Record<string, HostTensor>;

before(async () => {
  dir = await tempDir();
  ({ store, weights: base } = await writeBase(dir, random));
  inputs = tinyInputs(random);
});
after(async () => store.close());

interface Run {
  outputs: Record<string, HostTensor>;
  compiled: CompiledGraph;
  graph: Graph;
}

/** Builds the tiny graph with `adapters` (none: the plain model), compiles it, runs it with the scale feeds. */
async function run(adapters?: AdapterSet, options: { loraScale?: number } = {}): Promise<Run> {
  const graph = buildTinyGraph(store, adapters);
  const compiled = await runtime.compile(graph);
  const feeds = adapters ? adapters.scaleFeeds(compiled.inputs, options) : {};
  return { outputs: await compiled.run({ ...inputs, ...feeds }), compiled, graph };
}

function assertMatches(
  outputs: Record<string, HostTensor>,
  terms: readonly ReferenceTerm[],
  what: string,
): void {
  const expected = reference(inputs, base, terms);
  for (const name of ['ff', 'out', 'patches'] as const) {
    assertClose(outputs[name].data as Float32Array, expected[name], {
      atol: 2e-5,
      rtol: 1e-4,
      what: `seed ${seed}, ${what}: ${name}`,
    });
  }
}

function assertSame(a: Record<string, HostTensor>, b: Record<string, HostTensor>, what: string): void {
  for (const name of ['ff', 'out', 'patches']) {
    assertExactlyEqual(a[name].data as Float32Array, b[name].data as Float32Array, `${what}: ${name}`);
  }
}

/** A reference term with one scale per module (alpha/r may differ between modules). */
function perModule(lora: LoraWeights, scales: Readonly<Record<string, number>>): ReferenceTerm[] {
  return Object.entries(scales).map(([module, scale]) => ({ lora: { [module]: lora[module] }, scale }));
}

describe('LoRA in Linear and Conv2d, each format', () => {
  const ranks = { [FF]: 2, [TO_OUT]: 3, [PATCH]: 2 };
  const cases: {
    format: string;
    write: (lora: LoraWeights) => Promise<string>;
    scales: Record<string, number>;
  }[] = [
    {
      format: 'PEFT',
      write: (lora) =>
        writePeft(join(dir, 'peft'), lora, {
          r: 2,
          lora_alpha: 1,
          rank_pattern: { to_out_0: 9, 'to_out.0': 3 },
        }),
      scales: { [FF]: 1 / 2, [TO_OUT]: 1 / 3, [PATCH]: 1 / 2 },
    },
    {
      format: 'diffusers',
      write: (lora) => writeDiffusers(join(dir, 'diffusers.safetensors'), lora, { alphas: { [TO_OUT]: 6 } }),
      scales: { [FF]: 1, [TO_OUT]: 2, [PATCH]: 1 },
    },
    {
      format: 'kohya',
      write: (lora) =>
        writeKohya(join(dir, 'kohya.safetensors'), lora, { [FF]: 1, [TO_OUT]: 0.75, [PATCH]: 3 }),
      scales: { [FF]: 1 / 2, [TO_OUT]: 0.25, [PATCH]: 3 / 2 },
    },
  ];
  for (const { format, write, scales } of cases) {
    it(`${format}: unfused and fused both give x·(W + s·B·A)ᵀ + b (float64 reference)`, async () => {
      const lora = randomLora(random, ranks);
      const adapters = new AdapterSet();
      const loaded = await adapters.load(await write(lora), { adapterName: 'style', modelParameters: store });
      assert.deepEqual([...loaded.modules].sort(), [FF, PATCH, TO_OUT].sort());
      const unfused = await run(adapters);
      assert.deepEqual(adapters.unappliedModules(unfused.graph), []);
      assert.ok(unfused.compiled.inputs.some((i) => i.name === loraScaleInputName('style')));
      assertMatches(unfused.outputs, perModule(lora, scales), `${format} unfused`);

      adapters.fuse();
      const fused = await run(adapters);
      assert.ok(
        !fused.compiled.inputs.some((i) => i.name === loraScaleInputName('style')),
        'a fused graph takes no scale',
      );
      assertMatches(fused.outputs, perModule(lora, scales), `${format} fused`);
    });
  }
});

describe('AdapterSet', () => {
  it('setAdapters switches weights (0, 0.5, 2, two adapters) without recompiling', async () => {
    const first = randomLora(random, { [FF]: 2, [TO_OUT]: 2, [PATCH]: 3 });
    const second = randomLora(random, { [FF]: 3, [PATCH]: 1 });
    const adapters = new AdapterSet();
    await adapters.load(await writeDiffusers(join(dir, 'first.safetensors'), first), {
      adapterName: 'first',
      modelParameters: store,
    });
    await adapters.load(await writeKohya(join(dir, 'second.safetensors'), second, { [FF]: 1.5 }), {
      adapterName: 'second',
      modelParameters: store,
    });
    const secondScales = { [FF]: 0.5, [PATCH]: 1 };
    const firstTerms = (weight: number): ReferenceTerm[] => [{ lora: first, scale: weight }];
    const secondTerms = (weight: number): ReferenceTerm[] =>
      Object.entries(secondScales).map(([m, s]) => ({ lora: { [m]: second[m] }, scale: s * weight }));

    // Both active with weight 1 after loading.
    assert.deepEqual(adapters.active, ['first', 'second']);
    const start = await run(adapters);
    assertMatches(start.outputs, [...firstTerms(1), ...secondTerms(1)], 'both at 1');
    const sessions = runtime.cachedSessions;

    for (const weight of [0, 0.5, 2]) {
      adapters.setAdapters('first', weight);
      assert.deepEqual(adapters.active, ['first']);
      const r = await run(adapters);
      assert.equal(r.compiled, start.compiled, 'the same compiled session');
      assertMatches(r.outputs, firstTerms(weight), `first at ${weight}`);
    }
    adapters.setAdapters(['first', 'second'], [0.5, 2]);
    const both = await run(adapters);
    assertMatches(both.outputs, [...firstTerms(0.5), ...secondTerms(2)], 'first 0.5 + second 2');
    // A call-time loraScale multiplies every unfused adapter (diffusers' cross_attention_kwargs scale).
    const halved = await run(adapters, { loraScale: 0.5 });
    assertMatches(halved.outputs, [...firstTerms(0.25), ...secondTerms(1)], 'loraScale 0.5');
    assert.equal(runtime.cachedSessions, sessions, 'switching weights compiled nothing');
    assert.equal(adapters.weightOf('second'), 2);

    // Fusing changes the graph: a new session, same values.
    const key = adapters.graphKey;
    adapters.fuse({ adapterNames: ['second'], loraScale: 0.5 });
    assert.notEqual(adapters.graphKey, key);
    const fused = await run(adapters);
    assert.equal(runtime.cachedSessions, sessions + 1, 'fusing built a new graph');
    assertMatches(
      fused.outputs,
      [...firstTerms(0.5), ...secondTerms(1)],
      'second fused at 2 × 0.5, first switchable',
    );
    assert.deepEqual(adapters.fused, ['second']);
    assert.deepEqual(
      adapters.termsOf(FF).map((t) => [t.adapterName, t.scale, t.fused]),
      [
        ['first', 0.5, false],
        ['second', 0.5, true],
      ],
    );
    // The unfused one still switches in the fused graph.
    adapters.setAdapters('first', 2);
    assertMatches(
      (await run(adapters)).outputs,
      [...firstTerms(2), ...secondTerms(1)],
      'first 2 beside fused second',
    );
    assert.throws(
      () => adapters.setAdapters(['first', 'second']),
      (e: unknown) => e instanceof OptionError && e.code === 'ADAPTER_FUSED',
    );
    assert.throws(() => adapters.fuse({ adapterNames: ['second'] }), /already fused/);

    // unfuse: back to side branches, and the session of the unfused graph is reused.
    adapters.unfuse();
    assert.equal(adapters.graphKey, key);
    adapters.setAdapters(['first', 'second'], [0.5, 2]);
    const unfused = await run(adapters);
    assert.equal(unfused.compiled, start.compiled);
    assertSame(unfused.outputs, both.outputs, 'unfused again');
  });

  it('fuse folds W + s·B·A (float64) into the graph only; unfuse gives the never-fused outputs back bit for bit, and unload the base model', async () => {
    const plain = await run();
    const lora = randomLora(random, { [FF]: 2, [TO_OUT]: 2, [PATCH]: 2 });
    const adapters = new AdapterSet();
    // alpha/r = 3/2.
    await adapters.load(await writePeft(join(dir, 'restore'), lora, { r: 2, lora_alpha: 3 }), {
      adapterName: 'a',
      modelParameters: store,
    });
    adapters.setAdapters('a', 0.75);
    const neverFused = await run(adapters);
    assertMatches(neverFused.outputs, [{ lora, scale: 0.75 * 1.5 }], 'switchable at 0.75');

    adapters.fuse({ loraScale: 2 });
    const fused = await run(adapters);
    assertMatches(fused.outputs, [{ lora, scale: 0.75 * 2 * 1.5 }], 'fused at 0.75 × loraScale 2');
    // The update lives in the fused graph's constants; the model's own tensors stay the base ones.
    for (const module of [FF, TO_OUT, PATCH]) {
      assertExactlyEqual(
        await store.readFloat32(`${module}.weight`),
        base[module].weight,
        `${module}.weight`,
      );
    }

    adapters.unfuse();
    assert.deepEqual(adapters.fused, []);
    assert.equal(adapters.weightOf('a'), 0.75, 'unfusing keeps the adapter weight');
    const unfused = await run(adapters);
    assert.equal(unfused.compiled, neverFused.compiled, 'the never-fused session again');
    assertSame(unfused.outputs, neverFused.outputs, 'unfused vs never fused');
    adapters.setAdapters('a', 0);
    assertSame((await run(adapters)).outputs, plain.outputs, 'unfused at weight 0');

    adapters.setAdapters('a', 1);
    adapters.fuse();
    adapters.unload('a');
    assert.deepEqual(adapters.loaded, []);
    const unloaded = await run(adapters);
    assert.equal(unloaded.compiled, plain.compiled, 'with no adapters the graph is the plain model');
    assertSame(unloaded.outputs, plain.outputs, 'unloaded');
  });

  it('reports modules that no layer of the graph applied', async () => {
    const lora = randomLora(random, { [FF]: 2, [EMBEDDER]: 2 });
    const adapters = new AdapterSet();
    await adapters.load(await writeDiffusers(join(dir, 'embedder.safetensors'), lora), {
      adapterName: 'e',
      modelParameters: store,
    });
    const graph = buildTinyGraph(store, adapters);
    assert.deepEqual(adapters.unappliedModules(graph), [`e: ${EMBEDDER}`]);
  });

  it('refuses unknown names, mismatched weights, duplicates and files that fit no module', async () => {
    const adapters = new AdapterSet();
    const lora = randomLora(random, { [FF]: 2 });
    const path = await writeDiffusers(join(dir, 'errors.safetensors'), lora);
    await adapters.load(path, { adapterName: 'flash', modelParameters: store });
    const loaded = await adapters.load(path, { modelParameters: store });
    assert.equal(loaded.adapterName, 'default_0');
    const code = (expected: string) => (e: unknown) => e instanceof OptionError && e.code === expected;
    assert.throws(
      () => adapters.setAdapters('flsh'),
      (e: unknown) => code('ADAPTER_UNKNOWN')(e) && /'flash'/.test((e as Error).message),
    );
    assert.throws(() => adapters.setAdapters(['flash', 'default_0'], [1]), code('ADAPTER_WEIGHTS'));
    assert.throws(() => adapters.setAdapters(['flash', 'flash']), code('ADAPTER_WEIGHTS'));
    assert.throws(() => adapters.setAdapters('flash', Number.NaN), code('ADAPTER_WEIGHTS'));
    assert.throws(() => adapters.unload('nope'), code('ADAPTER_UNKNOWN'));
    await assert.rejects(
      adapters.load(path, { adapterName: 'flash', modelParameters: store }),
      code('ADAPTER_EXISTS'),
    );
    await assert.rejects(
      adapters.load(path, { adapterName: 'a b', modelParameters: store }),
      code('ADAPTER_NAME'),
    );
    adapters.setAdapters([]);
    assert.throws(() => adapters.fuse(), code('LORA_NOTHING_TO_FUSE'));

    const other = join(dir, 'other_model.safetensors');
    await writeSafetensors(other, {
      'lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight': {
        dtype: 'F32',
        shape: [1, 4],
        data: new Float32Array(4),
      },
      'lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight': {
        dtype: 'F32',
        shape: [4, 1],
        data: new Float32Array(4),
      },
    });
    await assert.rejects(
      adapters.load(other, { modelParameters: store }),
      (e: unknown) => e instanceof FileFormatError && e.code === 'LORA_NO_MATCH' && e.message.includes(other),
    );
  });
});
