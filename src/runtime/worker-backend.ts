import { Worker } from 'node:worker_threads';
import { RuntimeError } from '../errors.js';
import type { Backend, Feed, ModelSource, RunResult, SessionSettings } from './backend.js';
import { isTensorRef } from './backend.js';
import type { HostTensor } from './host-tensor.js';
import type { WorkerReply, WorkerRequest } from './worker-protocol.js';

type Pending = { resolve: (r: WorkerReply & { ok: true }) => void; reject: (e: Error) => void };

// Under tsx (tests, benchmarks) this module is a .ts file and so is the worker beside it; the worker
// then registers tsx itself, since Node 20 does not carry loader hooks into workers.
const FROM_SOURCE = import.meta.url.endsWith('.ts');
const WORKER_URL = new URL(FROM_SOURCE ? './worker.ts' : './worker.js', import.meta.url);

function spawnWorker(): Worker {
  if (!FROM_SOURCE) return new Worker(WORKER_URL);
  const boot = `import('tsx/esm/api').then((api) => { api.register(); return import(${JSON.stringify(WORKER_URL.href)}); });`;
  return new Worker(boot, { eval: true });
}

type RequestBody =
  | { kind: 'create'; model: ModelSource; settings: SessionSettings }
  | { kind: 'run'; session: number; feeds: Record<string, Feed>; outputs: string[]; retain: string[] }
  | { kind: 'releaseTensors'; refs: number[] }
  | { kind: 'release'; session: number }
  | { kind: 'dispose' };

/**
 * Sessions in a worker thread: `run` costs a message hop (tens of µs) but never blocks the event
 * loop. Feeds are copied into the worker unless `transfer` is set; outputs come back without a copy.
 */
export class WorkerBackend implements Backend {
  private worker: Worker | undefined;
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private failure: Error | undefined;

  private start(): Worker {
    if (this.worker) return this.worker;
    const w = spawnWorker();
    w.on('message', (reply: WorkerReply) => {
      const p = this.pending.get(reply.id);
      if (!p) return;
      this.pending.delete(reply.id);
      if (reply.ok) p.resolve(reply);
      else p.reject(new RuntimeError(reply.error.message, reply.error.code));
    });
    const fail = (e: Error): void => {
      this.failure = new RuntimeError(`the ONNX Runtime worker stopped: ${e.message}`, 'WORKER');
      for (const p of this.pending.values()) p.reject(this.failure);
      this.pending.clear();
      this.worker = undefined;
    };
    w.on('error', fail);
    w.on('exit', (code) => {
      if (this.pending.size > 0) fail(new Error(`exit code ${code}`));
      this.worker = undefined;
    });
    // An idle worker must not keep the process alive.
    w.unref();
    this.worker = w;
    return w;
  }

  private request(body: RequestBody, transfer: ArrayBuffer[] = []): Promise<WorkerReply & { ok: true }> {
    const w = this.start();
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      w.ref();
      try {
        w.postMessage({ id, ...body } as WorkerRequest, transfer);
      } catch (e) {
        this.pending.delete(id);
        reject(e instanceof Error ? e : new Error(String(e)));
      }
    }).finally(() => {
      if (this.pending.size === 0) this.worker?.unref();
    }) as Promise<WorkerReply & { ok: true }>;
  }

  async create(model: ModelSource, settings: SessionSettings): Promise<number> {
    const reply = await this.request({ kind: 'create', model, settings });
    return reply.session as number;
  }

  async run(
    session: number,
    feeds: Record<string, Feed>,
    outputs: string[],
    transfer: boolean,
    retain: readonly string[],
  ): Promise<RunResult> {
    const host = Object.values(feeds).filter((t): t is HostTensor => !isTensorRef(t));
    const buffers = transfer ? [...new Set(host.map((t) => t.data.buffer as ArrayBuffer))] : [];
    const reply = await this.request({ kind: 'run', session, feeds, outputs, retain: [...retain] }, buffers);
    return reply.result as RunResult;
  }

  async releaseTensors(refs: readonly number[]): Promise<void> {
    if (!this.worker || refs.length === 0) return;
    await this.request({ kind: 'releaseTensors', refs: [...refs] });
  }

  async release(session: number): Promise<void> {
    if (!this.worker) return;
    await this.request({ kind: 'release', session });
  }

  async dispose(): Promise<void> {
    if (!this.worker) return;
    await this.request({ kind: 'dispose' });
    await this.worker?.terminate();
    this.worker = undefined;
  }
}
