// The package as a user gets it: `npm pack`, then the README's install command in a fresh folder
// (only the npm registry needed: no CUDA download), then the CLI from there. Also: the checkout's
// npm commands print no npm warning, and a broken ONNX Runtime install gets an actionable error.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { describeCheck, GoldenFixture } from '../golden-fixture.js';
import { readAllTensors } from '../helpers.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const CASE = fileURLToPath(new URL('../golden/models/pixart_alpha_tiny/', import.meta.url));

// What `npm test` exports to its children (npm_package_*, npm_lifecycle_*, npm_config_* of this
// project) would leak into the nested npm commands; keep only where npm's cache and registry are.
const KEEP =
  /^npm_config_(cache|registry|userconfig|globalconfig|proxy|https_proxy|noproxy|cafile|strict_ssl)$/;
const cleanEnv: NodeJS.ProcessEnv = Object.fromEntries(
  Object.entries(process.env).filter(([k]) => !/^npm_/i.test(k) || KEEP.test(k)),
);
delete cleanEnv.ONNXRUNTIME_NODE_INSTALL;

function run(cmd: string, args: string[], cwd: string, env: NodeJS.ProcessEnv = cleanEnv) {
  const r = spawnSync(cmd, args, { cwd, env, encoding: 'utf8', timeout: 300_000 });
  if (r.error) throw r.error;
  return { code: r.status, out: r.stdout, err: r.stderr };
}

function npmWarnings(stderr: string): string[] {
  return stderr.split('\n').filter((l) => /^npm (warn|WARN|error|ERR)/.test(l));
}

describe('installable as a dependency', { timeout: 300_000 }, () => {
  let work: string;
  let app: string;
  let files: { path: string; size: number }[] = [];
  let unpackedSize = 0;

  before(() => {
    work = mkdtempSync(join(tmpdir(), 'velodiff-install-'));
    // `npm pack` runs `prepare`, so dist/ is built from the sources under test.
    const pack = run('npm', ['pack', '--json', '--pack-destination', work], ROOT);
    assert.equal(pack.code, 0, `npm pack failed:\n${pack.err}`);
    const [info] = JSON.parse(pack.out) as {
      filename: string;
      unpackedSize: number;
      files: { path: string; size: number }[];
    }[];
    files = info.files;
    unpackedSize = info.unpackedSize;

    app = join(work, 'app');
    mkdirSync(app);
    writeFileSync(join(app, 'package.json'), '{ "name": "app", "version": "1.0.0", "private": true }\n');
    // The README's install command, with the tarball for the package name. --prefer-offline and
    // --no-audit only save registry round trips after `npm ci` filled the cache.
    const install = run(
      'npm',
      ['install', join(work, info.filename), '--prefer-offline', '--no-audit', '--no-fund'],
      app,
      { ...cleanEnv, ONNXRUNTIME_NODE_INSTALL: 'skip' },
    );
    assert.equal(install.code, 0, `npm install of the tarball failed:\n${install.out}\n${install.err}`);
  });

  after(() => {
    if (work) rmSync(work, { recursive: true, force: true });
  });

  it('the tarball holds only bin/, dist/ code, the shipped model, README and package.json: no tests, data, maps or stale outputs', () => {
    const stray = files
      .map((f) => f.path)
      .filter(
        (p) =>
          !/^(bin\/velodiff\.js|dist\/(src|bench)\/.+\.(js|d\.ts)|models\/(emoji|emoji-classifier|emoji-students)\/.+|README\.md|package\.json|LICENSE)$/.test(
            p,
          ),
      );
    assert.deepEqual(
      stray,
      [],
      'files in the tarball outside bin/, dist/{src,bench}/*.js|d.ts, models/emoji{,-classifier,-students}/',
    );
    // The shipped models have their own budget (the model, its classifier and its students ≤ 30 MB in
    // all); the code keeps its 4 MiB.
    const folderSize = (folder: string): number =>
      files.filter((f) => f.path.startsWith(folder)).reduce((n, f) => n + f.size, 0);
    assert.ok(folderSize('models/') <= 30e6, `models/ is ${folderSize('models/')} B > 30 MB`);
    const codeSize = unpackedSize - folderSize('models/');
    assert.ok(codeSize < 4 * 1024 * 1024, `unpacked size without the model ${codeSize} B ≥ 4 MiB`);
    // tsc never deletes outputs: a .js left from a deleted or renamed source would ship too.
    const stale = files
      .map((f) => f.path)
      .filter((p) => p.startsWith('dist/') && p.endsWith('.js'))
      .filter((p) => !existsSync(join(ROOT, p.slice('dist/'.length).replace(/\.js$/, '.ts'))));
    assert.deepEqual(stale, [], 'dist/ files without a source: delete dist/ and rebuild');
  });

  it('npx velodiff --help works from the installed package, with no npm warning', () => {
    const r = run('npx', ['velodiff', '--help'], app);
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /usage: velodiff <command>/);
    assert.deepEqual(npmWarnings(r.err), []);
  });

  it('npx velodiff generate "red heart" uses the installed package’s models/emoji/ (or says it is not there yet)', () => {
    const out = join(work, 'heart.png');
    const r = run('npx', ['velodiff', 'generate', 'red heart', '--seed', '1', '--out', out], app);
    const shipped = join(app, 'node_modules', 'velodiff', 'models', 'emoji');
    if (existsSync(join(shipped, 'model_index.json'))) {
      assert.equal(r.code, 0, r.err);
      assert.ok(existsSync(out));
    } else {
      assert.equal(r.code, 1, r.err);
      assert.ok(r.err.includes(`the shipped emoji model is not in this velodiff: ${shipped}`), r.err);
    }
  });

  it('npx velodiff forward on the golden PixArt-α case equals diffusers within 10× fp32 noise', async (t) => {
    const out = join(work, 'out.safetensors');
    const r = run(
      'npx',
      [
        'velodiff',
        'forward',
        join(CASE, 'model'),
        '--inputs',
        join(CASE, 'inputs.safetensors'),
        '--out',
        out,
        '--threads',
        '1',
      ],
      app,
    );
    assert.equal(r.code, 0, r.err);
    const ours = await readAllTensors(out);
    const golden = await GoldenFixture.load(CASE);
    assert.deepEqual(ours.sample.shape, golden.shape('sample'));
    // The bound of test/models/pixart.test.ts: 10× torch's fp32 noise (4.8e-7); measured 4.8e-7 (5.2e-7 vs fp64).
    t.diagnostic(describeCheck(golden.check('sample', ours.sample.data as Float32Array)));
  });

  it('a missing ONNX Runtime native library gets an error that says what to run', () => {
    const bin = join(
      app,
      'node_modules/onnxruntime-node/bin/napi-v6',
      process.platform,
      process.arch,
      'onnxruntime_binding.node',
    );
    renameSync(bin, `${bin}.gone`);
    try {
      const r = run(
        'npx',
        [
          'velodiff',
          'forward',
          join(CASE, 'model'),
          '--inputs',
          join(CASE, 'inputs.safetensors'),
          '--out',
          join(work, 'never.safetensors'),
        ],
        app,
      );
      assert.equal(r.code, 1, r.err);
      assert.match(r.err, /^velodiff: ONNX Runtime's native library could not be loaded/m);
      assert.ok(r.err.includes('ONNXRUNTIME_NODE_INSTALL=skip npm install velodiff'), r.err);
      assert.doesNotMatch(r.err, /\n\s+at /, 'a stack trace instead of a message');
    } finally {
      renameSync(`${bin}.gone`, bin);
    }
  });

  it('npm in the checkout prints no warning (no unknown .npmrc key, install scripts reviewed)', () => {
    const r = run('npx', ['velodiff', '--help'], ROOT);
    assert.equal(r.code, 0, r.err);
    assert.deepEqual(npmWarnings(r.err), []);
    const pending = run('npm', ['approve-scripts', '--allow-scripts-pending'], ROOT);
    if (pending.code === 0) assert.match(pending.out, /No packages with unreviewed install scripts/);
  });
});
