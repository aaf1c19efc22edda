// Worker-thread entry: owns ONNX Runtime sessions so that runs never block the caller's event loop.
import { parentPort } from 'node:worker_threads';
import { VelodiffError } from '../errors.js';
import type { HostTensor } from './host-tensor.js';
import { InlineBackend } from './ort-node.js';
import type { WorkerReply, WorkerRequest } from './worker-protocol.js';

const backend = new InlineBackend();
const port = parentPort;
if (!port) throw new Error('velodiff runtime worker started outside a worker thread');

port.on('message', (msg: WorkerRequest) => {
  void handle(msg).then(
    ({ reply, transfer }) => port.postMessage(reply, transfer),
    (e: unknown) => {
      const err = e instanceof Error ? e : new Error(String(e));
      const reply: WorkerReply = {
        id: msg.id,
        ok: false,
        error: {
          message: err.message,
          code: err instanceof VelodiffError ? err.code : 'ORT',
          name: err.name,
        },
      };
      port.postMessage(reply);
    },
  );
});

async function handle(msg: WorkerRequest): Promise<{ reply: WorkerReply; transfer: ArrayBuffer[] }> {
  switch (msg.kind) {
    case 'create': {
      const session = await backend.create(msg.model, msg.settings);
      return { reply: { id: msg.id, ok: true, session }, transfer: [] };
    }
    case 'run': {
      const result = await backend.run(msg.session, msg.feeds, msg.outputs, false, msg.retain);
      // Output buffers are fresh allocations of ORT's: hand them over without a copy.
      const transfer = Object.values(result.host).map((t: HostTensor) => t.data.buffer as ArrayBuffer);
      return { reply: { id: msg.id, ok: true, result }, transfer: [...new Set(transfer)] };
    }
    case 'releaseTensors': {
      await backend.releaseTensors(msg.refs);
      return { reply: { id: msg.id, ok: true }, transfer: [] };
    }
    case 'release':
      await backend.release(msg.session);
      return { reply: { id: msg.id, ok: true }, transfer: [] };
    case 'dispose':
      await backend.dispose();
      return { reply: { id: msg.id, ok: true }, transfer: [] };
  }
}
