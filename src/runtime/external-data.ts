import { createHash } from 'node:crypto';
import { realpathSync, statSync } from 'node:fs';
import { dirname, relative, sep } from 'node:path';
import { RuntimeError } from '../errors.js';
import type { Graph } from '../graph/graph.js';
import type { SerializedGraph } from '../graph/serialize.js';

/** Files a graph's weights point into. */
export function weightFiles(graph: Graph): string[] {
  const paths = new Set<string>();
  for (const leaf of graph.leaves.values()) {
    if (leaf.kind === 'weight' && leaf.source.kind === 'file') paths.add(leaf.source.path);
  }
  return [...paths];
}

/**
 * Where ORT should look for external data. ORT resolves each location against one folder and
 * rejects absolute paths and any path (symlinks resolved) that leaves that folder, so the folder is
 * the deepest common ancestor of the files' real paths (a Hub cache links snapshots to blobs), and
 * each location is the real path relative to it. The files are used in place, never copied.
 */
export function planExternalData(paths: readonly string[]): {
  root: string | undefined;
  locate: (path: string) => string;
} {
  if (paths.length === 0) return { root: undefined, locate: (p) => p };
  const real = new Map<string, string>();
  for (const p of paths) {
    try {
      real.set(p, realpathSync(p));
    } catch {
      throw new RuntimeError(
        `weights file ${p} is missing (it was there when the graph was built)`,
        'FILE_MISSING',
      );
    }
  }
  let root = dirname(real.get(paths[0]) as string);
  for (const r of real.values()) {
    while (!(r === root || r.startsWith(root.endsWith(sep) ? root : root + sep))) root = dirname(root);
  }
  return {
    root,
    locate: (p) =>
      relative(root, real.get(p) ?? realpathSync(p))
        .split(sep)
        .join('/'),
  };
}

/**
 * A signature of everything that decides what a session computes: the model bytes (locations and
 * offsets included) and the identity (size, modification time) of each weights file.
 */
export function graphSignature(graph: SerializedGraph, extra: string): string {
  const h = createHash('sha256');
  h.update(graph.model);
  for (const f of graph.externalFiles) {
    let st: { size: number; mtimeMs: number };
    try {
      st = statSync(f.path);
    } catch {
      throw new RuntimeError(
        `weights file ${f.path} is missing (it was there when the graph was built)`,
        'FILE_MISSING',
      );
    }
    h.update(`\n${f.location}\0${f.path}\0${st.size}\0${st.mtimeMs}`);
  }
  h.update(`\n${graph.externalRoot ?? ''}\n${extra}`);
  return h.digest('hex').slice(0, 32);
}
