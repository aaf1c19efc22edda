import { GraphBuildError } from '../errors.js';

/**
 * One dimension of a symbolic shape: a number, or a product of named symbols with an optional
 * integer factor written canonically ("B", "B*S", "2*S", "S^2"). Named dims come from graph inputs;
 * products appear when reshapes merge dims, and are simplified so that merging then splitting
 * gives the original name back.
 */
export type Dim = number | string;
export type Shape = readonly Dim[];

interface Monomial {
  factor: number;
  /** symbol → exponent, exponents ≥ 1 */
  symbols: Map<string, number>;
}

const SYMBOL = /^[A-Za-z_][A-Za-z0-9_]*$/;

export function isSymbolName(name: string): boolean {
  return SYMBOL.test(name);
}

function parseDim(dim: Dim): Monomial {
  if (typeof dim === 'number') return { factor: dim, symbols: new Map() };
  const symbols = new Map<string, number>();
  let factor = 1;
  for (const part of dim.split('*')) {
    const p = part.trim();
    if (/^\d+$/.test(p)) {
      factor *= Number(p);
      continue;
    }
    const [name, exp] = p.split('^');
    if (!isSymbolName(name) || (exp !== undefined && !/^\d+$/.test(exp))) {
      throw new GraphBuildError(`invalid dimension "${dim}": expected a number or a product like "B*S"`);
    }
    symbols.set(name, (symbols.get(name) ?? 0) + (exp === undefined ? 1 : Number(exp)));
  }
  return { factor, symbols };
}

function formatMonomial(m: Monomial): Dim {
  if (m.symbols.size === 0 || m.factor === 0) return m.factor;
  const names = [...m.symbols.keys()].sort();
  const parts = names.map((n) => {
    const e = m.symbols.get(n) ?? 1;
    return e === 1 ? n : `${n}^${e}`;
  });
  return m.factor === 1 ? parts.join('*') : `${m.factor}*${parts.join('*')}`;
}

/** Canonical form of a dimension (so "S*B" and "B*S" compare equal). */
export function normalizeDim(dim: Dim): Dim {
  if (typeof dim === 'number') {
    if (!Number.isSafeInteger(dim) || dim < 0) {
      throw new GraphBuildError(`invalid dimension ${dim}: expected a non-negative integer or a name`);
    }
    return dim;
  }
  return formatMonomial(parseDim(dim));
}

export function dimMul(a: Dim, b: Dim): Dim {
  if (typeof a === 'number' && typeof b === 'number') return a * b;
  const ma = parseDim(a);
  const mb = parseDim(b);
  const symbols = new Map(ma.symbols);
  for (const [s, e] of mb.symbols) symbols.set(s, (symbols.get(s) ?? 0) + e);
  return formatMonomial({ factor: ma.factor * mb.factor, symbols });
}

/** a / b when it is exact (as polynomials), else undefined. */
export function dimDiv(a: Dim, b: Dim): Dim | undefined {
  if (typeof a === 'number' && typeof b === 'number') {
    return b !== 0 && a % b === 0 ? a / b : undefined;
  }
  const ma = parseDim(a);
  const mb = parseDim(b);
  if (mb.factor === 0 || ma.factor % mb.factor !== 0) return undefined;
  const symbols = new Map(ma.symbols);
  for (const [s, e] of mb.symbols) {
    const have = symbols.get(s) ?? 0;
    if (have < e) return undefined;
    if (have === e) symbols.delete(s);
    else symbols.set(s, have - e);
  }
  return formatMonomial({ factor: ma.factor / mb.factor, symbols });
}

export function dimEquals(a: Dim, b: Dim): boolean {
  return normalizeDim(a) === normalizeDim(b);
}

export function isStaticDim(d: Dim): d is number {
  return typeof d === 'number';
}

export function isStaticShape(shape: Shape): shape is readonly number[] {
  return shape.every((d) => typeof d === 'number');
}

export function numel(shape: Shape): Dim {
  return shape.reduce<Dim>((acc, d) => dimMul(acc, d), 1);
}

/** The symbols a dimension is made of. */
export function dimSymbols(d: Dim): string[] {
  return typeof d === 'number' ? [] : [...parseDim(d).symbols.keys()];
}

/** Factor and symbol exponents of a dim, for lowering a product of runtime dims. */
export function dimTerms(d: Dim): { factor: number; symbols: [string, number][] } {
  const m = parseDim(d);
  return { factor: m.factor, symbols: [...m.symbols.entries()].sort(([x], [y]) => (x < y ? -1 : 1)) };
}

export function formatShape(shape: Shape): string {
  return `[${shape.join(', ')}]`;
}

/** Numpy broadcasting of two shapes; undefined when they do not broadcast. */
export function broadcastShapes(a: Shape, b: Shape): Dim[] | undefined {
  const rank = Math.max(a.length, b.length);
  const out: Dim[] = [];
  for (let i = 0; i < rank; i++) {
    const da = i < rank - a.length ? 1 : a[i - (rank - a.length)];
    const db = i < rank - b.length ? 1 : b[i - (rank - b.length)];
    if (dimEquals(da, db)) out.push(da);
    else if (da === 1) out.push(db);
    else if (db === 1) out.push(da);
    // A named dim against a number: the name must take that value (or 1) at run time; the
    // runtime checks feeds, so assume the number.
    else if (typeof da !== 'number' && typeof db === 'number') out.push(db);
    else if (typeof db !== 'number' && typeof da === 'number') out.push(da);
    else return undefined;
  }
  return out;
}

/** Normalise a possibly negative axis against a rank, or throw naming the op. */
export function normalizeAxis(axis: number, rank: number, what: string): number {
  if (!Number.isInteger(axis) || axis < -rank || axis >= rank) {
    throw new GraphBuildError(`${what}: axis ${axis} is out of range for rank ${rank}`);
  }
  return axis < 0 ? axis + rank : axis;
}
