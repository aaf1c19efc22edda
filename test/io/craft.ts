/** Shared helpers for the io tests: hand-built safetensors bytes, temp folders, f32 bit patterns. */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after } from 'node:test';

/**
 * Builds safetensors bytes by hand, independently of the writer under test: `header` is JSON-encoded
 * unless it is already a string; `headerLength` overrides the u64 prefix to lie about the length.
 */
export function craftSafetensors(
  header: unknown,
  data: Uint8Array | number = new Uint8Array(0),
  options: { headerLength?: bigint; padTo?: number } = {},
): Uint8Array {
  let json = typeof header === 'string' ? header : JSON.stringify(header);
  if (options.padTo !== undefined) json = json.padEnd(options.padTo, ' ');
  const headerBytes = new TextEncoder().encode(json);
  const dataBytes = typeof data === 'number' ? new Uint8Array(data) : data;
  const out = new Uint8Array(8 + headerBytes.length + dataBytes.length);
  new DataView(out.buffer).setBigUint64(0, options.headerLength ?? BigInt(headerBytes.length), true);
  out.set(headerBytes, 8);
  out.set(dataBytes, 8 + headerBytes.length);
  return out;
}

/** Only a length prefix: enough for the header-length checks, which must not need more. */
export function lengthPrefix(length: bigint): Uint8Array {
  const out = new Uint8Array(8);
  new DataView(out.buffer).setBigUint64(0, length, true);
  return out;
}

/** A fresh folder under the OS temp directory, removed when the test file finishes. */
export async function tempDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'velodiff-io-'));
  after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** The f32 with bit pattern `bits`. */
export function f32FromBits(bits: number): number {
  const view = new DataView(new ArrayBuffer(4));
  view.setUint32(0, bits >>> 0);
  return view.getFloat32(0);
}

/** The bit pattern of `value` rounded to f32. */
export function bitsOfF32(value: number): number {
  const view = new DataView(new ArrayBuffer(4));
  view.setFloat32(0, value);
  return view.getUint32(0);
}
