import { resolve } from 'node:path';
import type { AttentionOption } from '../attention/types.js';
import type { DeepCacheOptions } from '../attention/deepcache.js';
import type { TGateOptions } from '../attention/tgate.js';
import { OptionError } from '../errors.js';
import type { QuantizeOption } from '../models/int8.js';
import type { FlagSpec, ParsedArgs } from './args.js';

/** Flags of the accelerations, shared by `generate` and `forward`. */
export const attentionFlags: Record<string, FlagSpec> = {
  attention: {
    type: 'string',
    description: 'self-attention: full | clear:R[:D] (radius, down factor) | linfusion',
  },
  'attention-weights': { type: 'string', description: 'CLEAR weights file, or the LinFusion folder' },
  lora: {
    type: 'string',
    multiple: true,
    description: 'LoRA file or PEFT folder, optionally :scale (repeatable)',
  },
};

/** `--quantize int8`, for the commands that load a denoiser or text encoder. */
export const quantizeFlag: Record<string, FlagSpec> = {
  quantize: {
    type: 'string',
    description:
      'int8: run the Linear layers of the denoiser and text encoders in int8, quantized at load (the VAE stays float32; a folder from velodiff quantize is int8 without it)',
  },
};

/** `--quantize int8`: the load option `quantize`. */
export function quantizeOption(flags: ParsedArgs['flags'], command: string): QuantizeOption | undefined {
  const value = flags.quantize as string | undefined;
  if (value === undefined || value === 'int8') return value;
  throw new OptionError(`${command}: --quantize must be int8 (the one method velodiff has), got "${value}"`);
}

export const tgateFlag: Record<string, FlagSpec> = {
  tgate: { type: 'string', description: 'T-GATE: G[,sp,fi,warmup][,lcm] (gate step, intervals, warm-up)' },
};

export const deepCacheFlags: Record<string, FlagSpec> = {
  'deep-cache-interval': {
    type: 'integer',
    description: 'DeepCache (UNet models): a full step every N steps, the others reuse the deep features',
  },
  'deep-cache-branch': {
    type: 'integer',
    description: 'DeepCache: the cache branch id (0 = shallowest, default 0)',
  },
};

/** `--deep-cache-interval N [--deep-cache-branch B]`. */
export function deepCacheOption(flags: ParsedArgs['flags']): DeepCacheOptions | undefined {
  const interval = flags['deep-cache-interval'] as number | undefined;
  const branch = flags['deep-cache-branch'] as number | undefined;
  if (interval === undefined) {
    if (branch !== undefined) throw new OptionError('--deep-cache-branch needs --deep-cache-interval N');
    return undefined;
  }
  integer(String(interval), '--deep-cache-interval', 1);
  if (branch !== undefined) integer(String(branch), '--deep-cache-branch', 0);
  return { cacheInterval: interval, cacheBranchId: branch ?? 0 };
}

function integer(text: string, what: string, min: number): number {
  const n = Number(text);
  if (text.trim() === '' || !Number.isInteger(n) || n < min) {
    throw new OptionError(`${what} must be an integer ≥ ${min}, got "${text}"`);
  }
  return n;
}

/** `--attention full|clear:R[:D]|linfusion` with `--attention-weights`. */
export function attentionOption(flags: ParsedArgs['flags']): AttentionOption | undefined {
  const spec = flags.attention as string | undefined;
  const weights = flags['attention-weights'] as string | undefined;
  if (spec === undefined) {
    if (weights !== undefined)
      throw new OptionError('--attention-weights needs --attention clear:R or linfusion');
    return undefined;
  }
  const [kind, ...rest] = spec.split(':');
  if (kind === 'full' && rest.length === 0) return { kind: 'full' };
  if (kind === 'linfusion' && rest.length === 0) {
    if (!weights)
      throw new OptionError('--attention linfusion needs --attention-weights DIR (the LinFusion folder)');
    return { kind: 'linfusion', weights: resolve(weights) };
  }
  if (kind === 'clear' && (rest.length === 1 || rest.length === 2)) {
    const radius = integer(rest[0], '--attention clear:R radius', 1);
    const downFactor = rest.length === 2 ? integer(rest[1], '--attention clear:R:D down factor', 1) : 1;
    return { kind: 'clear', radius, downFactor, ...(weights ? { weights: resolve(weights) } : {}) };
  }
  throw new OptionError(`--attention "${spec}": expected full, clear:R, clear:R:D or linfusion`);
}

/** `--tgate G[,sp,fi,warmup][,lcm]`. */
export function tgateOption(flags: ParsedArgs['flags']): TGateOptions | undefined {
  const spec = flags.tgate as string | undefined;
  if (spec === undefined) return undefined;
  const parts = spec.split(',').map((p) => p.trim());
  const lcm = parts[parts.length - 1] === 'lcm';
  if (lcm) parts.pop();
  if (parts.length < 1 || parts.length > 4) {
    throw new OptionError(`--tgate "${spec}": expected G[,sp,fi,warmup][,lcm], e.g. 15,3,1,2`);
  }
  const [g, sp, fi, warm] = parts;
  return {
    gateStep: integer(g, '--tgate gate step', 1),
    ...(sp !== undefined ? { spInterval: integer(sp, '--tgate sp interval', 1) } : {}),
    ...(fi !== undefined ? { fiInterval: integer(fi, '--tgate fi interval', 1) } : {}),
    ...(warm !== undefined ? { warmUp: integer(warm, '--tgate warm-up', 0) } : {}),
    ...(lcm ? { lcm: true } : {}),
  };
}

/** `--lora FILE[:scale]` entries. A trailing `:number` is the scale; other colons belong to the path. */
export function loraOptions(flags: ParsedArgs['flags']): { path: string; scale: number }[] {
  const specs = (flags.lora as string[] | undefined) ?? [];
  return specs.map((spec) => {
    const m = /^(.*):(-?\d+(?:\.\d+)?(?:e-?\d+)?)$/i.exec(spec);
    const path = m ? m[1] : spec;
    const scale = m ? Number(m[2]) : 1;
    if (!path) throw new OptionError(`--lora "${spec}": expected FILE or FILE:scale`);
    return { path: resolve(path), scale };
  });
}
