import type { ModelSource, SessionSettings } from './backend.js';
import type { HostTensor } from './host-tensor.js';

export type WorkerRequest =
  | { id: number; kind: 'create'; model: ModelSource; settings: SessionSettings }
  | { id: number; kind: 'run'; session: number; feeds: Record<string, HostTensor>; outputs: string[] }
  | { id: number; kind: 'release'; session: number }
  | { id: number; kind: 'dispose' };

export type WorkerReply =
  | { id: number; ok: true; session?: number; outputs?: Record<string, HostTensor> }
  | { id: number; ok: false; error: { message: string; code: string; name: string } };
