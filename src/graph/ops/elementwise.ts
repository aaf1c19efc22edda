import type { DType } from '../dtype.js';
import { ONNX_DTYPE_CODE, isFloatDType, isIntDType } from '../dtype.js';
import type { Tensor, TensorType } from '../graph.js';
import { attr } from '../onnx/model.js';
import type { OpDef } from '../op.js';
import { apply, defineOp, expectFloat, expectSameDType, fail } from '../op.js';
import { broadcastShapes, formatShape } from '../shape.js';

/** A tensor, or a number taken as a scalar of the other operand's dtype. */
export type TensorLike = Tensor | number;

function broadcastType(a: TensorType, b: TensorType, dtype: DType): TensorType {
  const shape = broadcastShapes(a.shape, b.shape);
  if (!shape) fail(`shapes ${formatShape(a.shape)} and ${formatShape(b.shape)} do not broadcast`, 'SHAPE');
  return { dtype, shape };
}

type BinaryKind = 'arith' | 'compare' | 'logical';

function binaryOp(name: string, onnxOp: string, kind: BinaryKind): OpDef<Record<string, never>> {
  return defineOp<Record<string, never>>({
    name,
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

export const AddOp = binaryOp('add', 'Add', 'arith');
export const SubOp = binaryOp('sub', 'Sub', 'arith');
export const MulOp = binaryOp('mul', 'Mul', 'arith');
export const DivOp = binaryOp('div', 'Div', 'arith');
export const PowOp = binaryOp('pow', 'Pow', 'arith');
export const MaximumOp = binaryOp('maximum', 'Max', 'arith');
export const MinimumOp = binaryOp('minimum', 'Min', 'arith');
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

function unaryOp(name: string, onnxOp: string, domain: UnaryDomain): OpDef<Record<string, never>> {
  return defineOp<Record<string, never>>({
    name,
    infer([x]) {
      if (domain === 'float') expectFloat(x, 'input');
      if (domain === 'numeric' && x.dtype === 'bool') fail(`expected a numeric tensor, got bool`, 'DTYPE');
      if (domain === 'bool' && x.dtype !== 'bool') fail(`expected a bool tensor, got ${x.dtype}`, 'DTYPE');
      return [{ dtype: x.dtype, shape: x.shape }];
    },
    lower(ctx, node, [out]) {
      ctx.emit(onnxOp, [ctx.name(node.inputs[0])], [out]);
    },
  });
}

export const NegOp = unaryOp('neg', 'Neg', 'numeric');
export const AbsOp = unaryOp('abs', 'Abs', 'numeric');
export const ExpOp = unaryOp('exp', 'Exp', 'float');
export const LogOp = unaryOp('log', 'Log', 'float');
export const SqrtOp = unaryOp('sqrt', 'Sqrt', 'float');
export const ReciprocalOp = unaryOp('reciprocal', 'Reciprocal', 'float');
export const SinOp = unaryOp('sin', 'Sin', 'float');
export const CosOp = unaryOp('cos', 'Cos', 'float');
export const TanhOp = unaryOp('tanh', 'Tanh', 'float');
export const ErfOp = unaryOp('erf', 'Erf', 'float');
export const SigmoidOp = unaryOp('sigmoid', 'Sigmoid', 'float');
export const ReluOp = unaryOp('relu', 'Relu', 'numeric');
export const NotOp = unaryOp('not', 'Not', 'bool');

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
    ctx.emit('Elu', [ctx.name(node.inputs[0])], [out], { alpha: attr.float(node.attrs.alpha) });
  },
});

/** ELU: x for x > 0, α·(eˣ − 1) otherwise (torch.nn.functional.elu). */
export function elu(x: Tensor, alpha = 1): Tensor {
  return apply(EluOp, [x], { alpha })[0];
}

export const LeakyReluOp = defineOp<{ slope: number }>({
  name: 'leakyRelu',
  infer([x], { slope }) {
    expectFloat(x, 'input');
    if (!Number.isFinite(slope)) fail(`slope must be finite, got ${slope}`, 'ATTR');
    return [{ dtype: x.dtype, shape: x.shape }];
  },
  lower(ctx, node, [out]) {
    ctx.emit('LeakyRelu', [ctx.name(node.inputs[0])], [out], { alpha: attr.float(node.attrs.slope) });
  },
});

/** Leaky ReLU: x for x ≥ 0, slope·x otherwise (torch default slope 0.01). */
export function leakyRelu(x: Tensor, slope = 0.01): Tensor {
  return apply(LeakyReluOp, [x], { slope })[0];
}

export const GeluOp = defineOp<{ approximate: 'none' | 'tanh' }>({
  name: 'gelu',
  infer([x], { approximate }) {
    expectFloat(x, 'input');
    if (approximate !== 'none' && approximate !== 'tanh') {
      fail(`approximate must be 'none' or 'tanh', got ${String(approximate)}`, 'ATTR');
    }
    return [{ dtype: x.dtype, shape: x.shape }];
  },
  lower(ctx, node, [out]) {
    // Gelu-20 is within opset 21; ORT fuses the tanh form to FastGelu.
    ctx.emit('Gelu', [ctx.name(node.inputs[0])], [out], { approximate: attr.string(node.attrs.approximate) });
  },
});

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
});

export function cast(x: Tensor, to: DType): Tensor {
  if (x.dtype === to) return x;
  return apply(CastOp, [x], { to })[0];
}

export { isFloatDType };
