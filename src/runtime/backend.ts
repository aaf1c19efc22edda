import type { DType } from '../graph/dtype.js';
import type { HostTensor } from './host-tensor.js';

/**
 * A tensor kept where the backend runs (the worker's memory), referred to by id: outputs a later run
 * feeds back (T-GATE caches) never cross the thread boundary.
 */
export interface TensorRef {
  readonly ref: number;
  readonly dtype: DType;
  readonly shape: readonly number[];
}

export type Feed = HostTensor | TensorRef;

export function isTensorRef(t: Feed): t is TensorRef {
  return (t as TensorRef).ref !== undefined;
}

/** What a run returns: host tensors, and references to the outputs asked to be retained. */
export interface RunResult {
  host: Record<string, HostTensor>;
  retained: Record<string, TensorRef>;
}

/** Execution providers velodiff knows how to ask ONNX Runtime for. */
export type ExecutionProvider = 'cpu' | 'cuda' | 'webgpu' | 'coreml' | 'dml';

export interface SessionSettings {
  executionProviders: ExecutionProvider[];
  /** Threads for one op; 0 lets ORT choose (one per physical core). */
  intraOpThreads: number;
  optimizationLevel: 'disabled' | 'basic' | 'extended' | 'all';
  /** Skip MLAS weight prepacking: faster start and less memory, sometimes slower MatMuls (notes §4). */
  disablePrepacking: boolean;
  /**
   * Flush denormal floats to zero (ORT's `session.set_denormal_as_zero`). The first session created
   * in a thread decides for that thread, so every session of a runtime uses the same setting.
   */
  flushDenormals: boolean;
  /**
   * Let idle intra-op pool threads spin for work instead of sleeping (ORT's
   * `session.intra_op.allow_spinning`, on by default): spinning saves a wake-up per parallel section
   * but burns a core while one session waits on another.
   */
  allowSpinning: boolean;
}

/** What a backend needs to create a session: the model, and the folder its external data is relative to. */
export interface ModelSource {
  bytes: Uint8Array;
  externalRoot?: string;
}

/** A place where ORT sessions live: this thread, or a worker thread. */
export interface Backend {
  create(model: ModelSource, settings: SessionSettings): Promise<number>;
  run(
    session: number,
    feeds: Record<string, Feed>,
    outputs: string[],
    transfer: boolean,
    retain: readonly string[],
  ): Promise<RunResult>;
  /** Free retained tensors. */
  releaseTensors(refs: readonly number[]): Promise<void>;
  release(session: number): Promise<void>;
  dispose(): Promise<void>;
}
