// `velodiff generate "red heart"`: the prompt as an argument, and the shipped model (models/emoji/ at
// the package root) when no --model is given. Until that model is trained the command must say so;
// once models/emoji/ exists, the success test below runs instead of the missing-model one.
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { PNG } from 'pngjs';

import { FileFormatError } from '../../src/errors.js';
import { packageRoot, SHIPPED_MODEL_PATH, shippedModelDir } from '../../src/pipelines/shipped-model.js';
import { tinyPixArtPipeline } from '../fixtures/tiny-pixart-pipeline.js';
import { captureCli } from './capture.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const SHIPPED = join(ROOT, SHIPPED_MODEL_PATH);
const shipped = existsSync(join(SHIPPED, 'model_index.json'));

describe('the shipped model', () => {
  it("is looked for at the package root, found from the module's own location (src/ or dist/src/)", async () => {
    assert.equal(join(packageRoot(), '/'), join(ROOT, '/'));
    // An installed package: node_modules/velodiff/dist/src/pipelines/shipped-model.js.
    const app = await mkdtemp(join(tmpdir(), 'velodiff-root-'));
    const installed = join(app, 'node_modules', 'velodiff');
    await mkdir(join(installed, 'dist', 'src', 'pipelines'), { recursive: true });
    await writeFile(join(app, 'package.json'), '{ "name": "app" }');
    await writeFile(join(installed, 'package.json'), '{ "name": "velodiff" }');
    const module = join(installed, 'dist', 'src', 'pipelines', 'shipped-model.js');
    assert.equal(packageRoot(module), installed);
    assert.throws(
      () => shippedModelDir(installed),
      (e: unknown) => {
        assert.ok(e instanceof FileFormatError);
        assert.equal(e.code, 'SHIPPED_MODEL_MISSING');
        assert.equal(e.path, join(installed, 'models', 'emoji'));
        assert.match(e.message, /models[\\/]emoji does not exist \(the model is still being trained/);
        assert.match(e.message, /give --model DIR/);
        return true;
      },
    );
    await mkdir(join(installed, 'models', 'emoji'), { recursive: true });
    assert.throws(() => shippedModelDir(installed), /has no model_index\.json/);
    await writeFile(join(installed, 'models', 'emoji', 'model_index.json'), '{}');
    assert.equal(shippedModelDir(installed), join(installed, 'models', 'emoji'));
  });

  it(
    'generate "red heart" without --model says the shipped model is not there yet',
    { skip: shipped ? `${SHIPPED_MODEL_PATH}/ exists: the success test runs instead` : false },
    async () => {
      const out = join(await mkdtemp(join(tmpdir(), 'velodiff-gen-')), 'heart.png');
      const r = await captureCli(['generate', 'red heart', '--seed', '1', '--out', out]);
      assert.equal(r.code, 1, r.err);
      assert.ok(
        r.err.includes(`velodiff: the shipped emoji model is not in this velodiff: ${SHIPPED}`),
        r.err,
      );
      assert.match(r.err, /still being trained/);
      assert.ok(!existsSync(out));
    },
  );

  it(
    'generate "red heart" --seed 1 writes a 64×64 PNG with the shipped model, the same for the same seed',
    { skip: shipped ? false : `${SHIPPED_MODEL_PATH}/ is not trained yet` },
    async () => {
      const dir = await mkdtemp(join(tmpdir(), 'velodiff-gen-'));
      const run = async (name: string): Promise<Buffer> => {
        const out = join(dir, name);
        const r = await captureCli(['generate', 'red heart', '--seed', '1', '--out', out]);
        assert.equal(r.code, 0, r.err);
        return readFileSync(out);
      };
      const a = await run('a.png');
      const image = PNG.sync.read(a);
      assert.deepEqual([image.width, image.height], [64, 64]);
      assert.ok(a.equals(await run('b.png')));
    },
  );
});

describe('velodiff generate PROMPT', () => {
  it('takes the prompt as its argument, the same image as --prompt; both at once is an error', async () => {
    const model = await tinyPixArtPipeline();
    const dir = await mkdtemp(join(tmpdir(), 'velodiff-gen-'));
    const common = ['--model', model, '--steps', '2', '--seed', '3', '--width', '16', '--height', '16'];
    const positional = await captureCli([
      'generate',
      'a red cat',
      ...common,
      '--out',
      join(dir, 'p.png'),
      '--threads',
      '1',
    ]);
    assert.equal(positional.code, 0, positional.err);
    const flag = await captureCli([
      'generate',
      '--prompt',
      'a red cat',
      ...common,
      '--out',
      join(dir, 'f.png'),
      '--threads',
      '1',
    ]);
    assert.equal(flag.code, 0, flag.err);
    assert.ok(readFileSync(join(dir, 'p.png')).equals(readFileSync(join(dir, 'f.png'))));
    const other = await captureCli([
      'generate',
      'a blue dog',
      ...common,
      '--out',
      join(dir, 'o.png'),
      '--threads',
      '1',
    ]);
    assert.equal(other.code, 0, other.err);
    assert.ok(
      !readFileSync(join(dir, 'o.png')).equals(readFileSync(join(dir, 'p.png'))),
      'the prompt matters',
    );
    const both = await captureCli(['generate', 'x', '--prompt', 'y', '--model', model]);
    assert.equal(both.code, 2);
    assert.match(both.err, /the prompt is given twice/);
  });
});
