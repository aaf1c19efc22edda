import type { Feed, ModelSource, RunResult, SessionSettings } from './backend.js';

export type WorkerRequest =
  | { id: number; kind: 'create'; model: ModelSource; settings: SessionSettings }
  | {
      id: number;
      kind: 'run';
      session: number;
      feeds: Record<string, Feed>;
      outputs: string[];
      retain: string[];
    }
  | { id: number; kind: 'releaseTensors'; refs: number[] }
  | { id: number; kind: 'release'; session: number }
  | { id: number; kind: 'dispose' };

export type WorkerReply =
  | { id: number; ok: true; session?: number; result?: RunResult }
  | { id: number; ok: false; error: { message: string; code: string; name: string } };
