import assert from 'node:assert/strict';
import { test } from 'node:test';

import { StopRequest } from '../../src/train/stop-signal.js';

test('StopRequest: the first SIGINT/SIGTERM sets the flag instead of ending the process; dispose removes it', () => {
  const before = process.listenerCount('SIGTERM');
  const stop = new StopRequest();
  assert.equal(process.listenerCount('SIGTERM'), before + 1);
  assert.equal(stop.requested, false);
  // emit() runs the listeners as a delivered signal would, without signalling the test runner.
  process.emit('SIGTERM', 'SIGTERM');
  assert.equal(stop.requested, true);
  assert.equal(stop.signal, 'SIGTERM');
  stop.dispose();
  assert.equal(process.listenerCount('SIGTERM'), before);

  const fromCode = new StopRequest(['SIGINT']);
  fromCode.request();
  assert.equal(fromCode.signal, 'SIGTERM');
  fromCode.dispose();
});
