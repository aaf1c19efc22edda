#!/usr/bin/env node
let main;
try {
  ({ main } = await import('../dist/src/cli/main.js'));
} catch (e) {
  if (e?.code !== 'ERR_MODULE_NOT_FOUND') throw e;
  const what = String(e.message).split('\n')[0];
  console.error(
    /dist[\\/]src[\\/]cli[\\/]main\.js/.test(String(e.message))
      ? 'velodiff: dist/ is not built: run `npm run build` (`npm ci` also builds it) in the velodiff folder.'
      : `velodiff: a dependency is missing (${what}). Install velodiff with its dependencies: ` +
          '`ONNXRUNTIME_NODE_INSTALL=skip npm install velodiff` (README, "Install").',
  );
  process.exit(1);
}

process.exitCode = await main(process.argv.slice(2));
