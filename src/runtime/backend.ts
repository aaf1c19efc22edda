import type { HostTensor } from './host-tensor.js';

/** Execution providers velodiff knows how to ask ONNX Runtime for. */
export type ExecutionProvider = 'cpu' | 'cuda' | 'webgpu' | 'coreml' | 'dml';

export interface SessionSettings {
  executionProviders: ExecutionProvider[];
  /** Threads for one op; 0 lets ORT choose (one per physical core). */
  intraOpThreads: number;
  optimizationLevel: 'disabled' | 'basic' | 'extended' | 'all';
  /** Skip MLAS weight prepacking: faster start and less memory, sometimes slower MatMuls (notes §4). */
  disablePrepacking: boolean;
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
    feeds: Record<string, HostTensor>,
    outputs: string[],
    transfer: boolean,
  ): Promise<Record<string, HostTensor>>;
  release(session: number): Promise<void>;
  dispose(): Promise<void>;
}
