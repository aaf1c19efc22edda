/**
 * Batch-axis helpers the pipelines share: host tensors concatenated, repeated and split along the
 * first axis, as diffusers does with torch.cat, repeat + view and chunk. Latents, embeddings and
 * masks are small next to a denoiser call; these copy them once per step at most.
 */
import { OptionError } from '../errors.js';
import type { HostTensor } from '../runtime/host-tensor.js';
import { hostTensor } from '../runtime/host-tensor.js';
import type { SchedulerTensor } from '../schedulers/scheduler.js';

/** A float32 host tensor as a scheduler takes it. */
export function schedulerTensor(t: HostTensor): SchedulerTensor {
  if (t.dtype !== 'float32') throw new OptionError(`expected float32 latents, got ${t.dtype}`);
  return { data: t.data as Float32Array, shape: t.shape };
}

/** A scheduler's result as a host tensor. */
export function fromScheduler(t: SchedulerTensor): HostTensor {
  return hostTensor('float32', t.shape, t.data);
}

export function checkInteger(v: number, name: string, min: number): void {
  if (!Number.isInteger(v) || v < min) throw new OptionError(`${name} must be an integer ≥ ${min}, got ${v}`);
}

/** int64 / int32 / float32 tensors as float32 (token masks, embeddings given by a caller). */
export function asFloat(t: HostTensor): HostTensor {
  if (t.dtype === 'float32') return t;
  if (t.dtype === 'int64')
    return hostTensor('float32', t.shape, Float32Array.from(t.data as BigInt64Array, Number));
  return hostTensor('float32', t.shape, Float32Array.from(t.data as Int32Array));
}

/** Concatenate along the batch axis (torch.cat(…, dim=0)). */
export function concatBatch(...parts: HostTensor[]): HostTensor {
  const floats = parts.map(asFloat);
  const tail = floats[0].shape.slice(1);
  for (const p of floats) {
    if (p.shape.slice(1).join() !== tail.join()) {
      throw new OptionError(
        `cannot stack [${p.shape.join(', ')}] under [${floats[0].shape.join(', ')}]: the shapes differ after the batch axis`,
      );
    }
  }
  const data = new Float32Array(floats.reduce((n, p) => n + p.data.length, 0));
  let offset = 0;
  for (const p of floats) {
    data.set(p.data as Float32Array, offset);
    offset += p.data.length;
  }
  const batch = floats.reduce((n, p) => n + p.shape[0], 0);
  return hostTensor('float32', [batch, ...tail], data);
}

/** Each batch item repeated n times in place (torch's repeat + view as diffusers does per prompt). */
export function repeatBatch(t: HostTensor, n: number): HostTensor {
  const f = asFloat(t);
  if (n === 1) return f;
  const item = f.data.length / f.shape[0];
  const data = new Float32Array(f.data.length * n);
  for (let b = 0; b < f.shape[0]; b++) {
    for (let r = 0; r < n; r++)
      data.set((f.data as Float32Array).subarray(b * item, (b + 1) * item), (b * n + r) * item);
  }
  return hostTensor('float32', [f.shape[0] * n, ...f.shape.slice(1)], data);
}

/** The two halves of the batch axis (torch's chunk(2)): unconditional first under CFG. */
export function splitBatch(t: HostTensor): [HostTensor, HostTensor] {
  const half = t.data.length / 2;
  const shape = [t.shape[0] / 2, ...t.shape.slice(1)];
  const d = t.data as Float32Array;
  return [hostTensor('float32', shape, d.subarray(0, half)), hostTensor('float32', shape, d.subarray(half))];
}

/** The first `c` channels of [B, C', H, W]. */
export function firstChannels(t: HostTensor, c: number): HostTensor {
  const [b, all, h, w] = t.shape;
  const plane = h * w;
  const r = new Float32Array(b * c * plane);
  for (let i = 0; i < b; i++)
    r.set((t.data as Float32Array).subarray(i * all * plane, (i * all + c) * plane), i * c * plane);
  return hostTensor('float32', [b, c, h, w], r);
}

/** A [B, …] tensor of `row` repeated B times. */
export function rows(batch: number, row: ArrayLike<number>): HostTensor {
  const data = new Float32Array(batch * row.length);
  for (let b = 0; b < batch; b++) data.set(row, b * row.length);
  return hostTensor('float32', [batch, row.length], data);
}

/** Map every value, rounding to float32. */
export function mapFloat32(t: HostTensor, f: (v: number, i: number) => number): HostTensor {
  return hostTensor(
    'float32',
    t.shape,
    (t.data as Float32Array).map((v, i) => Math.fround(f(v, i))),
  );
}

/** Concatenate [B, L, C_i] tensors along the last axis (torch.concat(…, dim=-1)). */
export function concatLastAxis(parts: HostTensor[]): HostTensor {
  const lead = parts[0].shape.slice(0, -1);
  for (const p of parts) {
    if (p.shape.slice(0, -1).join() !== lead.join()) {
      throw new OptionError(
        `cannot join [${p.shape.join(', ')}] beside [${parts[0].shape.join(', ')}] along the last axis`,
      );
    }
  }
  const floats = parts.map(asFloat);
  const widths = parts.map((p) => p.shape[p.shape.length - 1]);
  const total = widths.reduce((a, b) => a + b, 0);
  const rowsCount = parts[0].data.length / widths[0];
  const out = new Float32Array(rowsCount * total);
  for (let r = 0; r < rowsCount; r++) {
    let offset = r * total;
    floats.forEach((p, k) => {
      const w = widths[k];
      out.set((p.data as Float32Array).subarray(r * w, (r + 1) * w), offset);
      offset += w;
    });
  }
  return hostTensor('float32', [...lead, total], out);
}
