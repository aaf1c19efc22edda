import type { DType } from '../dtype.js';
import { ONNX_DTYPE_CODE, isFloatDType, isIntDType } from '../dtype.js';
import type { Tensor, TensorType } from '../graph.js';
import { GraphBuildError } from '../../errors.js';
import { attr } from '../onnx/model.js';
import type { OpDef, Vjp } from '../op.js';
import { apply, defineOp, expectFloat, expectSameDType, fail } from '../op.js';
import { broadcastShapes, formatShape } from '../shape.js';
import { sumToShape } from './reduce.js';

// Gradients: every float op here has a VJP. Comparisons (equal, less, …) and logic (and, or, not)
// have none and need none: their bool outputs stop gradients, as do int values.

/** A tensor, or a number taken as a scalar of the other operand's dtype. */
export type TensorLike = Tensor | number;

function broadcastType(a: TensorType, b: TensorType, dtype: DType): TensorType {
  const shape = broadcastShapes(a.shape, b.shape);
  if (!shape) fail(`shapes ${formatShape(a.shape)} and ${formatShape(b.shape)} do not broadcast`, 'SHAPE');
  return { dtype, shape };
}

type BinaryKind = 'arith' | 'compare' | 'logical';

type NoAttrs = Record<string, never>;

/** The VJP of a broadcasting binary op from the cotangents of a and b at the broadcast shape. */
function binaryVjp(
  rule: (a: Tensor, b: Tensor, y: Tensor, g: Tensor, needs: readonly boolean[]) => (Tensor | undefined)[],
): Vjp<NoAttrs> {
  return ({ inputs: [a, b], outputs: [y], needsGrad }, [g]) => {
    const [ga, gb] = rule(a, b, y, g as Tensor, needsGrad);
    return [
      needsGrad[0] && ga ? sumToShape(ga, a.shape) : undefined,
      needsGrad[1] && gb ? sumToShape(gb, b.shape) : undefined,
    ];
  };
}

/** `f()` when `needed`, else undefined: a VJP builds only the cotangents asked for. */
const when = (needed: boolean, f: () => Tensor): Tensor | undefined => (needed ? f() : undefined);

function binaryOp(name: string, onnxOp: string, kind: BinaryKind, vjp?: Vjp<NoAttrs>): OpDef<NoAttrs> {
  return defineOp<NoAttrs>({
    name,
    vjp,
    infer([a, b]) {
      expectSameDType(a, b, 'operands');
      if (kind === 'logical' && a.dtype !== 'bool') fail(`expected bool tensors, got ${a.dtype}`, 'DTYPE');
      if (kind === 'arith' && a.dtype === 'bool') fail(`expected numeric tensors, got bool`, 'DTYPE');
      return [broadcastType(a, b, kind === 'arith' ? a.dtype : 'bool')];
    },
    lower(ctx, node, [out]) {
      ctx.emit(onnxOp, [ctx.name(node.inputs[0]), ctx.name(node.inputs[1])], [out]);
    },
  });
}

export const AddOp = binaryOp(
  'add',
  'Add',
  'arith',
  binaryVjp((_a, _b, _y, g) => [g, g]),
);
export const SubOp = binaryOp(
  'sub',
  'Sub',
  'arith',
  binaryVjp((_a, _b, _y, g, needs) => [g, when(needs[1], () => neg(g))]),
);
export const MulOp = binaryOp(
  'mul',
  'Mul',
  'arith',
  binaryVjp((a, b, _y, g, needs) => [when(needs[0], () => mul(g, b)), when(needs[1], () => mul(g, a))]),
);
// d(a/b)/db = −a/b² = −y/b.
export const DivOp = binaryOp(
  'div',
  'Div',
  'arith',
  binaryVjp((_a, b, y, g, needs) => [
    when(needs[0], () => div(g, b)),
    when(needs[1], () => neg(div(mul(g, y), b))),
  ]),
);
// d(aᵇ)/da = b·aᵇ⁻¹; d(aᵇ)/db = aᵇ·ln a, taken as 0 where a = 0 (torch's rule; NaN for a < 0).
export const PowOp = binaryOp(
  'pow',
  'Pow',
  'arith',
  binaryVjp((a, b, y, g, needs) => [
    when(needs[0], () => mul(g, mul(b, pow(a, sub(b, 1))))),
    when(needs[1], () => mul(g, where(equal(a, 0), 0, mul(y, log(a))))),
  ]),
);
// Ties share the cotangent equally (torch's rule for maximum/minimum).
function selectVjp(picksA: (a: Tensor, b: Tensor) => Tensor): Vjp<NoAttrs> {
  return binaryVjp((a, b, _y, g, needs) => {
    const share = add(cast(picksA(a, b), g.dtype), mul(cast(equal(a, b), g.dtype), 0.5));
    return [when(needs[0], () => mul(g, share)), when(needs[1], () => mul(g, sub(1, share)))];
  });
}
export const MaximumOp = binaryOp(
  'maximum',
  'Max',
  'arith',
  selectVjp((a, b) => greater(a, b)),
);
export const MinimumOp = binaryOp(
  'minimum',
  'Min',
  'arith',
  selectVjp((a, b) => less(a, b)),
);
export const EqualOp = binaryOp('equal', 'Equal', 'compare');
export const LessOp = binaryOp('less', 'Less', 'compare');
export const LessEqualOp = binaryOp('lessEqual', 'LessOrEqual', 'compare');
export const GreaterOp = binaryOp('greater', 'Greater', 'compare');
export const GreaterEqualOp = binaryOp('greaterEqual', 'GreaterOrEqual', 'compare');
export const AndOp = binaryOp('and', 'And', 'logical');
export const OrOp = binaryOp('or', 'Or', 'logical');

/** Turn a number operand into a scalar constant of the other operand's dtype. */
export function asTensor(x: TensorLike, like: Tensor, op = 'scalar operand'): Tensor {
  if (typeof x !== 'number') return x;
  const g = like.graph;
  if (isIntDType(like.dtype) && !fitsInteger(x, like.dtype)) {
    // Truncating would silently change the result: for int32 x, x < 0.5 is not x < 0.
    const site = g.currentScope ? `${g.currentScope} (${op})` : op;
    fail(
      `${site}: ${x} is not an ${like.dtype} value, so it cannot be a scalar for the ${like.dtype} tensor ${formatShape(like.shape)}; pass an integer in range, or cast the tensor to float32 first`,
      'DTYPE',
    );
  }
  switch (like.dtype) {
    case 'float32':
      return g.constant(Float32Array.of(x), 'float32', []);
    case 'float64':
      return g.constant(Float64Array.of(x), 'float64', []);
    case 'int32':
      return g.constant(Int32Array.of(x), 'int32', []);
    case 'int64':
      return g.constant(BigInt64Array.of(BigInt(x)), 'int64', []);
    case 'bool':
      return g.constant(Uint8Array.of(x ? 1 : 0), 'bool', []);
    default:
      return cast(g.constant(Float32Array.of(x), 'float32', []), like.dtype);
  }
}

function fitsInteger(x: number, dtype: DType): boolean {
  if (dtype === 'int32') return Number.isInteger(x) && x >= -(2 ** 31) && x < 2 ** 31;
  return Number.isSafeInteger(x);
}

function binary(def: OpDef<Record<string, never>>, a: TensorLike, b: TensorLike): Tensor {
  if (typeof a === 'number' && typeof b === 'number')
    fail(`${def.name}: at least one operand must be a tensor`);
  const ta = typeof a === 'number' ? asTensor(a, b as Tensor, def.name) : a;
  const tb = typeof b === 'number' ? asTensor(b, ta, def.name) : b;
  return apply(def, [ta, tb], {})[0];
}

export const add = (a: TensorLike, b: TensorLike): Tensor => binary(AddOp, a, b);
export const sub = (a: TensorLike, b: TensorLike): Tensor => binary(SubOp, a, b);
export const mul = (a: TensorLike, b: TensorLike): Tensor => binary(MulOp, a, b);
export const div = (a: TensorLike, b: TensorLike): Tensor => binary(DivOp, a, b);
export const pow = (a: TensorLike, b: TensorLike): Tensor => binary(PowOp, a, b);
export const maximum = (a: TensorLike, b: TensorLike): Tensor => binary(MaximumOp, a, b);
export const minimum = (a: TensorLike, b: TensorLike): Tensor => binary(MinimumOp, a, b);
export const equal = (a: TensorLike, b: TensorLike): Tensor => binary(EqualOp, a, b);
export const less = (a: TensorLike, b: TensorLike): Tensor => binary(LessOp, a, b);
export const lessEqual = (a: TensorLike, b: TensorLike): Tensor => binary(LessEqualOp, a, b);
export const greater = (a: TensorLike, b: TensorLike): Tensor => binary(GreaterOp, a, b);
export const greaterEqual = (a: TensorLike, b: TensorLike): Tensor => binary(GreaterEqualOp, a, b);
export const and = (a: Tensor, b: Tensor): Tensor => binary(AndOp, a, b);
export const or = (a: Tensor, b: Tensor): Tensor => binary(OrOp, a, b);

export const WhereOp = defineOp<Record<string, never>>({
  name: 'where',
  vjp: ({ inputs: [cond, a, b], needsGrad }, [g]) => {
    const cot = g as Tensor;
    return [
      undefined,
      when(needsGrad[1], () => sumToShape(where(cond, cot, 0), a.shape)),
      when(needsGrad[2], () => sumToShape(where(cond, 0, cot), b.shape)),
    ];
  },
  infer([cond, a, b]) {
    if (cond.dtype !== 'bool') fail(`condition must be bool, got ${cond.dtype}`, 'DTYPE');
    expectSameDType(a, b, 'values');
    const ab = broadcastType(a, b, a.dtype);
    return [broadcastType(cond, ab, a.dtype)];
  },
  lower(ctx, node, [out]) {
    ctx.emit(
      'Where',
      node.inputs.map((t) => ctx.name(t)),
      [out],
    );
  },
});

/** Elementwise choice: `a` where `condition` is true, else `b` (broadcasting). */
export function where(condition: Tensor, a: TensorLike, b: TensorLike): Tensor {
  if (typeof a === 'number' && typeof b === 'number') {
    fail('where: at least one of the two values must be a tensor');
  }
  const ta = typeof a === 'number' ? asTensor(a, b as Tensor, 'where') : a;
  const tb = typeof b === 'number' ? asTensor(b, ta, 'where') : b;
  return apply(WhereOp, [condition, ta, tb], {})[0];
}

type UnaryDomain = 'float' | 'numeric' | 'bool';

/** The input's cotangent from x, y = f(x) and the output's cotangent g. */
type UnaryVjp = (x: Tensor, y: Tensor, g: Tensor) => Tensor;

function unaryOp(
  name: string,
  onnxOp: string,
  domain: UnaryDomain,
  vjp?: UnaryVjp,
  options: { float64?: boolean } = {},
): OpDef<NoAttrs> {
  return defineOp<NoAttrs>({
    name,
    vjp: vjp && (({ inputs: [x], outputs: [y] }, [g]) => [vjp(x, y, g as Tensor)]),
    infer([x]) {
      if (domain === 'float') expectFloat(x, 'input', options);
      if (domain === 'numeric' && x.dtype === 'bool') fail(`expected a numeric tensor, got bool`, 'DTYPE');
      if (domain === 'bool' && x.dtype !== 'bool') fail(`expected a bool tensor, got ${x.dtype}`, 'DTYPE');
      return [{ dtype: x.dtype, shape: x.shape }];
    },
    lower(ctx, node, [out]) {
      ctx.emit(onnxOp, [ctx.name(node.inputs[0])], [out]);
    },
  });
}

export const NegOp = unaryOp('neg', 'Neg', 'numeric', (_x, _y, g) => neg(g));
/** +1, −1 or 0 (at 0, as torch) in x's dtype. */
const sign = (x: Tensor): Tensor => sub(cast(greater(x, 0), x.dtype), cast(less(x, 0), x.dtype));
export const AbsOp = unaryOp('abs', 'Abs', 'numeric', (x, _y, g) => mul(g, sign(x)));
export const ExpOp = unaryOp('exp', 'Exp', 'float', (_x, y, g) => mul(g, y));
export const LogOp = unaryOp('log', 'Log', 'float', (x, _y, g) => div(g, x));
export const SqrtOp = unaryOp('sqrt', 'Sqrt', 'float', (_x, y, g) => div(mul(g, 0.5), y));
export const ReciprocalOp = unaryOp('reciprocal', 'Reciprocal', 'float', (_x, y, g) =>
  neg(mul(g, mul(y, y))),
);
export const SinOp = unaryOp('sin', 'Sin', 'float', (x, _y, g) => mul(g, cos(x)));
export const CosOp = unaryOp('cos', 'Cos', 'float', (x, _y, g) => neg(mul(g, sin(x))));
export const TanhOp = unaryOp('tanh', 'Tanh', 'float', (_x, y, g) => mul(g, sub(1, mul(y, y))));
// d erf(x)/dx = 2/√π · e^(−x²).
export const ErfOp = unaryOp(
  'erf',
  'Erf',
  'float',
  (x, _y, g) => mul(g, mul(exp(neg(mul(x, x))), 2 / Math.sqrt(Math.PI))),
  { float64: false },
);
export const SigmoidOp = unaryOp('sigmoid', 'Sigmoid', 'float', (_x, y, g) => mul(g, mul(y, sub(1, y))));
export const ReluOp = unaryOp('relu', 'Relu', 'numeric', (x, _y, g) => where(greater(x, 0), g, 0));
export const NotOp = unaryOp('not', 'Not', 'bool');
/**
 * The identity whose gradient is zero (torch's `detach`, JAX's `stop_gradient`): grad() treats its
 * output as independent of every parameter, so nothing behind it gets gradient work.
 */
export const StopGradientOp = unaryOp('stopGradient', 'Identity', 'float', () => {
  throw new GraphBuildError('stopGradient has no gradient path: grad() never differentiates through it');
});

const unary =
  (def: OpDef<Record<string, never>>) =>
  (x: Tensor): Tensor =>
    apply(def, [x], {})[0];

export const neg = unary(NegOp);
export const abs = unary(AbsOp);
export const exp = unary(ExpOp);
export const log = unary(LogOp);
export const sqrt = unary(SqrtOp);
export const reciprocal = unary(ReciprocalOp);
export const sin = unary(SinOp);
export const cos = unary(CosOp);
export const tanh = unary(TanhOp);
export const erf = unary(ErfOp);
export const sigmoid = unary(SigmoidOp);
export const relu = unary(ReluOp);
export const stopGradient = unary(StopGradientOp);
export const not = unary(NotOp);

/** 1/√x. */
export const rsqrt = (x: Tensor): Tensor => reciprocal(sqrt(x));

/** x·σ(x) (SiLU / swish). */
export const silu = (x: Tensor): Tensor => mul(x, sigmoid(x));

export const EluOp = defineOp<{ alpha: number }>({
  name: 'elu',
  infer([x], { alpha }) {
    expectFloat(x, 'input');
    if (!Number.isFinite(alpha)) fail(`alpha must be finite, got ${alpha}`, 'ATTR');
    return [{ dtype: x.dtype, shape: x.shape }];
  },
  lower(ctx, node, [out]) {
    const x = node.inputs[0];
    const { alpha } = node.attrs;
    if (x.dtype !== 'float64') {
      ctx.emit('Elu', [ctx.name(x)], [out], { alpha: attr.float(alpha) });
      return;
    }
    // ORT has no double Elu kernel: where(x > 0, x, α·(eˣ − 1)).
    const [positive, e, em1, scaled] = ['elu_pos', 'elu_exp', 'elu_em1', 'elu_neg'].map((h) => ctx.fresh(h));
    ctx.emit('Greater', [ctx.name(x), ctx.scalar(0, 'float64')], [positive]);
    ctx.emit('Exp', [ctx.name(x)], [e]);
    ctx.emit('Sub', [e, ctx.scalar(1, 'float64')], [em1]);
    ctx.emit('Mul', [em1, ctx.scalar(alpha, 'float64')], [scaled]);
    ctx.emit('Where', [positive, ctx.name(x), scaled], [out]);
  },
  // For x ≤ 0, d/dx α(eˣ − 1) = αeˣ = y + α.
  vjp: ({ inputs: [x], outputs: [y], attrs }, [g]) => {
    const cot = g as Tensor;
    return [where(greater(x, 0), cot, mul(cot, add(y, attrs.alpha)))];
  },
});

/** ELU: x for x > 0, α·(eˣ − 1) otherwise (torch.nn.functional.elu). */
export function elu(x: Tensor, alpha = 1): Tensor {
  return apply(EluOp, [x], { alpha })[0];
}

export const EluPlusOneOp = defineOp<NoAttrs>({
  name: 'eluPlusOne',
  infer([x]) {
    expectFloat(x, 'input');
    return [{ dtype: x.dtype, shape: x.shape }];
  },
  // relu(x) + exp(min(x, 0)): four vectorized passes. ORT's Elu kernel is far slower than its Exp:
  // on [2, 4096, 192] float32, Elu then Add took 3.1 ms against 1.4 ms for these four
  // (onnxruntime-node 1.30, one thread, medians of ORT's per-node profile). All four have double
  // kernels too.
  lower(ctx, node, [out]) {
    const x = node.inputs[0];
    const [positive, negative, e] = ['elu1_pos', 'elu1_neg', 'elu1_exp'].map((h) => ctx.fresh(h));
    ctx.emit('Relu', [ctx.name(x)], [positive]);
    ctx.emit('Min', [ctx.name(x), ctx.scalar(0, x.dtype)], [negative]);
    ctx.emit('Exp', [negative], [e]);
    ctx.emit('Add', [positive, e], [out]);
  },
  // 1 for x > 0; eˣ = y otherwise (ELU's rule at 0).
  vjp: ({ inputs: [x], outputs: [y] }, [g]) => {
    const cot = g as Tensor;
    return [where(greater(x, 0), cot, mul(cot, y))];
  },
});

/**
 * ELU(x) + 1: x + 1 for x > 0, eˣ otherwise; a strictly positive feature map (LinFusion's φ), as
 * one op that ORT runs faster than elu followed by add.
 */
export function eluPlusOne(x: Tensor): Tensor {
  return apply(EluPlusOneOp, [x], {})[0];
}

export const LeakyReluOp = defineOp<{ slope: number }>({
  name: 'leakyRelu',
  infer([x], { slope }) {
    expectFloat(x, 'input');
    if (!Number.isFinite(slope)) fail(`slope must be finite, got ${slope}`, 'ATTR');
    return [{ dtype: x.dtype, shape: x.shape }];
  },
  lower(ctx, node, [out]) {
    const x = node.inputs[0];
    const { slope } = node.attrs;
    if (x.dtype !== 'float64') {
      ctx.emit('LeakyRelu', [ctx.name(x)], [out], { alpha: attr.float(slope) });
      return;
    }
    // ORT has no double LeakyRelu kernel: where(x < 0, slope·x, x).
    const [negative, scaled] = ['leaky_neg', 'leaky_scaled'].map((h) => ctx.fresh(h));
    ctx.emit('Less', [ctx.name(x), ctx.scalar(0, 'float64')], [negative]);
    ctx.emit('Mul', [ctx.name(x), ctx.scalar(slope, 'float64')], [scaled]);
    ctx.emit('Where', [negative, scaled, ctx.name(x)], [out]);
  },
  vjp: ({ inputs: [x], attrs }, [g]) => {
    const cot = g as Tensor;
    return [where(less(x, 0), mul(cot, attrs.slope), cot)];
  },
});

/** Leaky ReLU: x for x ≥ 0, slope·x otherwise (torch default slope 0.01). */
export function leakyRelu(x: Tensor, slope = 0.01): Tensor {
  return apply(LeakyReluOp, [x], { slope })[0];
}

export const GeluOp = defineOp<{ approximate: 'none' | 'tanh' }>({
  name: 'gelu',
  infer([x], { approximate }) {
    // The exact form needs Erf, which ORT has no double kernel for; the tanh form runs in double.
    expectFloat(x, 'input', { float64: approximate === 'tanh' });
    if (approximate !== 'none' && approximate !== 'tanh') {
      fail(`approximate must be 'none' or 'tanh', got ${String(approximate)}`, 'ATTR');
    }
    return [{ dtype: x.dtype, shape: x.shape }];
  },
  lower(ctx, node, [out]) {
    // Gelu-20 is within opset 21; ORT fuses the tanh form to FastGelu.
    ctx.emit('Gelu', [ctx.name(node.inputs[0])], [out], { approximate: attr.string(node.attrs.approximate) });
  },
  vjp: ({ inputs: [x], attrs }, [g]) => [mul(g as Tensor, geluDerivative(x, attrs.approximate))],
});

/** d gelu(x)/dx: Φ(x) + x·φ(x) exactly; for the tanh form y = ½x(1 + t), t = tanh(√(2/π)(x + 0.044715x³)). */
function geluDerivative(x: Tensor, approximate: 'none' | 'tanh'): Tensor {
  if (approximate === 'none') {
    const cdf = mul(add(erf(mul(x, Math.SQRT1_2)), 1), 0.5);
    const pdf = mul(exp(mul(mul(x, x), -0.5)), 1 / Math.sqrt(2 * Math.PI));
    return add(cdf, mul(x, pdf));
  }
  const k = Math.sqrt(2 / Math.PI);
  const x2 = mul(x, x);
  const t = tanh(mul(mul(x, add(mul(x2, 0.044715), 1)), k));
  const du = mul(add(mul(x2, 3 * 0.044715), 1), k);
  return add(mul(add(t, 1), 0.5), mul(mul(mul(x, 0.5), sub(1, mul(t, t))), du));
}

/** GELU: exact (erf) by default, or the tanh approximation (torch `approximate='tanh'`). */
export function gelu(x: Tensor, approximate: 'none' | 'tanh' = 'none'): Tensor {
  return apply(GeluOp, [x], { approximate })[0];
}

export const CastOp = defineOp<{ to: DType }>({
  name: 'cast',
  infer([x], { to }) {
    if (!(to in ONNX_DTYPE_CODE)) fail(`unknown target dtype "${String(to)}"`, 'DTYPE');
    return [{ dtype: to, shape: x.shape }];
  },
  lower(ctx, node, [out]) {
    ctx.emit('Cast', [ctx.name(node.inputs[0])], [out], { to: attr.int(ONNX_DTYPE_CODE[node.attrs.to]) });
  },
  // Between float types the cotangent is cast back; a cast to or from int or bool stops gradients.
  vjp: ({ inputs: [x], outputs: [y] }, [g]) => [
    isFloatDType(x.dtype) && isFloatDType(y.dtype) ? cast(g as Tensor, x.dtype) : undefined,
  ],
});

export function cast(x: Tensor, to: DType): Tensor {
  if (x.dtype === to) return x;
  return apply(CastOp, [x], { to })[0];
}

export { isFloatDType };
