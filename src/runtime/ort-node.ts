import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import type * as Ort from 'onnxruntime-node';
import { RuntimeError } from '../errors.js';
import type { Backend, Feed, ModelSource, RunResult, SessionSettings, TensorRef } from './backend.js';
import { isTensorRef } from './backend.js';
import type { HostData, HostTensor } from './host-tensor.js';

// onnxruntime-node is CommonJS; load it lazily so importing velodiff does not load the native binding.
let ortModule: typeof Ort | undefined;
export function ort(): typeof Ort {
  if (!ortModule) {
    try {
      ortModule = createRequire(import.meta.url)('onnxruntime-node') as typeof Ort;
    } catch (e) {
      throw ortLoadError(e);
    }
  }
  return ortModule;
}

/** The install command of the README's "Install" section: no CUDA download, npm registry only. */
export const INSTALL_COMMAND = 'ONNXRUNTIME_NODE_INSTALL=skip npm install velodiff';

/** onnxruntime-node is missing or its native library does not load: say why and what to run. */
export function ortLoadError(e: unknown): RuntimeError {
  const cause = (e instanceof Error ? e.message : String(e)).split('\n')[0];
  if (cause.includes("Cannot find module 'onnxruntime-node'")) {
    return new RuntimeError(
      `ONNX Runtime is not installed: the onnxruntime-node package was not found (${cause}). ` +
        `Install velodiff with its dependencies: \`${INSTALL_COMMAND}\` (README, "Install").`,
      'ORT_MISSING',
    );
  }
  let where = 'node_modules/onnxruntime-node';
  try {
    where = dirname(createRequire(import.meta.url).resolve('onnxruntime-node/package.json'));
  } catch {
    // keep the usual location
  }
  return new RuntimeError(
    `ONNX Runtime's native library could not be loaded on ${process.platform}/${process.arch} (${cause}). ` +
      'onnxruntime-node 1.30.0 ships CPU builds for Linux (glibc), macOS and Windows on x64 and arm64. ' +
      `If this is one of them, the install is incomplete: delete ${where} and run \`${INSTALL_COMMAND}\` ` +
      'again (README, "Install").',
    'ORT_LOAD',
  );
}

/**
 * The execution providers this onnxruntime-node install can load: the bundled ones (cpu, webgpu)
 * and those whose provider library was installed (cuda, tensorrt: see the README's GPU section).
 */
export function availableProviders(): string[] {
  const list = (ort() as unknown as { listSupportedBackends?: () => { name: string; bundled: boolean }[] })
    .listSupportedBackends;
  const all = list ? list() : [{ name: 'cpu', bundled: true }];
  const binDir = dirname(
    createRequire(import.meta.url).resolve(
      'onnxruntime-node/bin/napi-v6/' + `${process.platform}/${process.arch}/onnxruntime_binding.node`,
    ),
  );
  return all
    .filter((p) => p.bundled || existsSync(join(binDir, `libonnxruntime_providers_${p.name}.so`)))
    .map((p) => p.name);
}

export function sessionOptions(
  settings: SessionSettings,
  externalRoot?: string,
): Ort.InferenceSession.SessionOptions {
  const session: Record<string, string> = {};
  // For a model given as bytes, ORT resolves external data against this folder (notes §4).
  if (externalRoot) session.model_external_initializers_file_folder_path = externalRoot;
  if (settings.disablePrepacking) session.disable_prepacking = '1';
  if (settings.flushDenormals) session.set_denormal_as_zero = '1';
  // The binding prefixes `session.` and passes the key to AddConfigEntry as it is.
  session['intra_op.allow_spinning'] = settings.allowSpinning ? '1' : '0';
  return {
    executionProviders: settings.executionProviders,
    graphOptimizationLevel: settings.optimizationLevel,
    ...(settings.intraOpThreads > 0 ? { intraOpNumThreads: settings.intraOpThreads } : {}),
    logSeverityLevel: 3,
    extra: { session },
  };
}

function wrapError(e: unknown, what: string): RuntimeError {
  const message = e instanceof Error ? e.message : String(e);
  if (/cuda|CUDA/.test(message) && /provider|load|library/i.test(message)) {
    return new RuntimeError(
      `${what}: the CUDA provider could not be loaded (${message.split('\n')[0]}). ` +
        'Install it as the README section "GPU (CUDA)" says, or use the cpu provider.',
      'PROVIDER',
    );
  }
  if (/webgpu/i.test(message) && /adapter/i.test(message)) {
    return new RuntimeError(
      `${what}: no WebGPU adapter (GPU) is available on this machine; use the cpu provider`,
      'PROVIDER',
    );
  }
  return new RuntimeError(`${what}: ${message}`, 'ORT');
}

/** Sessions in this thread. `run` blocks the event loop while ORT computes (notes §5). */
export class InlineBackend implements Backend {
  private readonly sessions = new Map<number, Ort.InferenceSession>();
  private readonly kept = new Map<number, HostTensor>();
  private nextId = 1;
  private nextRef = 1;

  async create(model: ModelSource, settings: SessionSettings): Promise<number> {
    let session: Ort.InferenceSession;
    try {
      session = await ort().InferenceSession.create(
        model.bytes,
        sessionOptions(settings, model.externalRoot),
      );
    } catch (e) {
      throw wrapError(e, 'ONNX Runtime could not create the session');
    }
    const id = this.nextId++;
    this.sessions.set(id, session);
    return id;
  }

  async run(
    id: number,
    feeds: Record<string, Feed>,
    outputs: string[],
    _transfer = false,
    retain: readonly string[] = [],
  ): Promise<RunResult> {
    const session = this.sessions.get(id);
    if (!session) throw new RuntimeError(`session ${id} was released`, 'RELEASED');
    const ortFeeds: Record<string, Ort.Tensor> = {};
    const T = ort().Tensor;
    for (const [name, feed] of Object.entries(feeds)) {
      const t = isTensorRef(feed) ? this.keptTensor(feed) : feed;
      ortFeeds[name] = new T(t.dtype as 'float32', t.data as Float32Array, t.shape as number[]);
    }
    let result: Ort.InferenceSession.OnnxValueMapType;
    try {
      result = await session.run(ortFeeds, outputs);
    } catch (e) {
      throw wrapError(e, 'ONNX Runtime failed while running the graph');
    }
    const host: Record<string, HostTensor> = {};
    const retained: Record<string, TensorRef> = {};
    for (const name of outputs) {
      const t = result[name] as Ort.Tensor;
      const tensor: HostTensor = {
        dtype: t.type as HostTensor['dtype'],
        shape: [...t.dims],
        data: t.data as HostData,
      };
      if (retain.includes(name)) {
        const ref = this.nextRef++;
        this.kept.set(ref, tensor);
        retained[name] = { ref, dtype: tensor.dtype, shape: tensor.shape };
      } else host[name] = tensor;
    }
    return { host, retained };
  }

  private keptTensor(r: TensorRef): HostTensor {
    const t = this.kept.get(r.ref);
    if (!t) throw new RuntimeError(`retained tensor ${r.ref} was released`, 'RELEASED');
    return t;
  }

  async releaseTensors(refs: readonly number[]): Promise<void> {
    for (const r of refs) this.kept.delete(r);
  }

  async release(id: number): Promise<void> {
    const s = this.sessions.get(id);
    this.sessions.delete(id);
    await s?.release();
  }

  async dispose(): Promise<void> {
    this.kept.clear();
    for (const id of [...this.sessions.keys()]) await this.release(id);
  }
}
