import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, statSync, symlinkSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { RuntimeError } from '../errors.js';
import type { SerializedGraph } from '../graph/serialize.js';

let root: string | undefined;

/** One folder per process for model files; removed when the process exits. */
function processRoot(): string {
  if (!root) {
    const dir = mkdtempSync(join(tmpdir(), 'velodiff-'));
    root = dir;
    process.once('exit', () => rmSync(dir, { recursive: true, force: true }));
  }
  return root;
}

/**
 * A signature of everything that decides what a session computes: the model bytes and the identity
 * (path, size, modification time) of each weights file it points into.
 */
export function graphSignature(graph: SerializedGraph, extra: string): string {
  const h = createHash('sha256');
  h.update(graph.model);
  for (const f of graph.externalFiles) {
    let st: { size: number; mtimeMs: number };
    try {
      st = statSync(f.path);
    } catch {
      throw new RuntimeError(`weights file ${f.path} is missing (it was there when the graph was built)`, 'FILE_MISSING');
    }
    h.update(`\n${f.location}\0${resolve(f.path)}\0${st.size}\0${st.mtimeMs}`);
  }
  h.update(`\n${extra}`);
  return h.digest('hex').slice(0, 32);
}

/**
 * Write the model into its own folder beside symbolic links to the weights files: ORT resolves
 * external data relative to the model and refuses absolute paths (notes §4), while the safetensors
 * files stay where they are, unread until ORT maps them.
 */
export function writeModelDir(graph: SerializedGraph, signature: string): string {
  const dir = join(processRoot(), signature);
  const modelPath = join(dir, 'model.onnx');
  if (existsSync(modelPath)) return modelPath;
  mkdirSync(dir, { recursive: true });
  for (const f of graph.externalFiles) symlinkSync(resolve(f.path), join(dir, f.location));
  // Written last, so a folder with model.onnx is complete.
  writeFileSync(modelPath, graph.model);
  return modelPath;
}
