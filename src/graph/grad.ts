/**
 * Reverse-mode autodiff as one transformation over the graph (JAX's `grad`, one rule per primitive):
 * `grad(loss, params)` appends the backward graph to the loss's graph and returns the gradient
 * tensors, so the forward and backward passes compile into one session whose outputs are the loss
 * and the gradients, with the parameters fed as graph inputs (see `ParameterInputs` in
 * src/nn/weights.ts for a model's parameters).
 *
 * Only nodes on a path from a requested parameter to the loss get a VJP, and a VJP skips the
 * inputs that lead to no parameter, so frozen parts of a model cost no gradient work. Non-float
 * values (comparisons, masks, indices) stop gradients. An op on such a path without a VJP is a
 * GraphBuildError here, naming the op and its module path.
 *
 * float64 on ONNX Runtime's CPU EP (onnxruntime-node 1.30, measured by building one-op graphs):
 * double kernels exist for Add Sub Mul Div Pow Max Min Neg Abs Exp Log Sqrt Reciprocal Sin Cos Tanh
 * Sigmoid Relu, Gelu(tanh) (its function body), Equal Less Greater (OrEqual) Where Cast, MatMul,
 * ReduceSum ReduceMean ReduceMax CumSum, Softmax LayerNormalization, the attention op's
 * MatMul-Softmax-MatMul, and every data-movement op (Reshape Transpose Concat Split Slice Gather
 * Expand Pad Unsqueeze Squeeze). None for Erf (so Gelu(none)), Elu, LeakyRelu, Conv, AveragePool,
 * Resize and InstanceNormalization (groupNorm): their ops reject float64 when the graph is built.
 */
import { GraphBuildError } from '../errors.js';
import { isFloatDType } from './dtype.js';
import type { Node, Tensor } from './graph.js';
import { getOp } from './op.js';
import { StopGradientOp, add, asTensor } from './ops/elementwise.js';
import { expand, reshape } from './ops/movement.js';
import { dimEquals } from './shape.js';

export { sumToShape } from './ops/reduce.js';

/** The scope of backward nodes made for a forward node of scope `scope`: `grad/<scope>`. */
export function gradScope(scope: string): string {
  return scope ? `grad/${scope}` : 'grad';
}

/**
 * Gradients of `loss` with respect to `params`, in the loss's graph: an array for an array, a
 * record for a record (e.g. `ParameterInputs.inputsOf(graph)`). `loss` must be a float tensor of
 * one element (shape [] or [1], [1, 1], …). A parameter the loss does not depend on gets zeros, as
 * in JAX. Parameters may be any float tensors of the graph: inputs, weights, or intermediate values
 * (then the gradient is with respect to that value, counting every path through it).
 */
export function grad(loss: Tensor, params: readonly Tensor[]): Tensor[];
export function grad<K extends string>(loss: Tensor, params: Readonly<Record<K, Tensor>>): Record<K, Tensor>;
export function grad(
  loss: Tensor,
  params: readonly Tensor[] | Readonly<Record<string, Tensor>>,
): Tensor[] | Record<string, Tensor> {
  if (!isFloatDType(loss.dtype)) {
    throw new GraphBuildError(`grad: the loss must be a float tensor, got ${loss.toString()}`, 'GRAD');
  }
  if (!loss.shape.every((d) => d === 1)) {
    throw new GraphBuildError(
      `grad: the loss must have one element (shape [] or [1]), got ${loss.toString()}; reduce it with sum() or mean(), or use vjp() with a cotangent`,
      'GRAD',
    );
  }
  const seed = loss.graph.atScope('grad', () =>
    loss.rank === 0 ? asTensor(1, loss) : reshape(asTensor(1, loss), loss.shape),
  );
  return vjp(loss, seed, params as Readonly<Record<string, Tensor>>);
}

/**
 * The vector-Jacobian product: gradients of Σ output·cotangent with respect to `params`, for an
 * output of any shape (`cotangent` has the output's shape and dtype). `grad` is vjp with a seed of 1.
 */
export function vjp(output: Tensor, cotangent: Tensor, params: readonly Tensor[]): Tensor[];
export function vjp<K extends string>(
  output: Tensor,
  cotangent: Tensor,
  params: Readonly<Record<K, Tensor>>,
): Record<K, Tensor>;
export function vjp(
  output: Tensor,
  cotangent: Tensor,
  params: readonly Tensor[] | Readonly<Record<string, Tensor>>,
): Tensor[] | Record<string, Tensor> {
  if (cotangent.graph !== output.graph || cotangent.dtype !== output.dtype || !sameShape(cotangent, output)) {
    throw new GraphBuildError(
      `vjp: the cotangent ${cotangent.toString()} must have the output's dtype and shape, ${output.toString()}, in the same graph`,
      'GRAD',
    );
  }
  if (Array.isArray(params)) return backward(output, cotangent, params as readonly Tensor[]);
  const record = params as Readonly<Record<string, Tensor>>;
  const names = Object.keys(record);
  const grads = backward(
    output,
    cotangent,
    names.map((n) => record[n]),
    names,
  );
  return Object.fromEntries(names.map((n, i) => [n, grads[i]]));
}

function backward(root: Tensor, seed: Tensor, params: readonly Tensor[], names?: string[]): Tensor[] {
  const graph = root.graph;
  params.forEach((p, i) => {
    const what = names ? `parameter "${names[i]}"` : `parameter ${i}`;
    if (p.graph !== graph) throw new GraphBuildError(`grad: ${what} belongs to another graph`, 'GRAD');
    if (!isFloatDType(p.dtype)) {
      throw new GraphBuildError(
        `grad: ${what} is ${p.toString()}; only float tensors have gradients`,
        'GRAD',
      );
    }
  });
  // The forward nodes as they are now: the backward pass appends to graph.nodes.
  const nodes = graph.nodes.slice();

  // Float values that depend on a parameter (nodes are in topological order).
  const fromParams = new Set<number>(params.map((p) => p.id));
  for (const node of nodes) {
    if (!node.inputs.some((t) => fromParams.has(t.id))) continue;
    // stopGradient's output depends on no parameter, as far as gradients go.
    if (node.op === StopGradientOp.name) continue;
    for (const out of node.outputs) if (isFloatDType(out.dtype)) fromParams.add(out.id);
  }
  // Of those, the ones the root depends on; their producers are the nodes that need a VJP.
  const onPath = new Set<number>();
  if (fromParams.has(root.id)) onPath.add(root.id);
  const active: Node[] = [];
  for (let i = nodes.length - 1; i >= 0; i--) {
    const node = nodes[i];
    if (!node.outputs.some((t) => onPath.has(t.id))) continue;
    // A parameter that is itself computed: what it is computed from is not differentiated.
    if (!node.inputs.some((t) => fromParams.has(t.id))) continue;
    active.push(node);
    for (const t of node.inputs) if (fromParams.has(t.id)) onPath.add(t.id);
  }
  const missing = active.filter((node) => getOp(node.op).vjp === undefined);
  if (missing.length > 0) {
    const sites = [
      ...new Set(missing.map((n) => `"${n.op}" at ${n.scope ? `'${n.scope}'` : 'the top level'}`)),
    ];
    throw new GraphBuildError(
      `grad: no gradient rule (VJP) for op ${sites.join(', op ')}, which ${missing.length > 1 ? 'lie' : 'lies'} between the parameters and the loss; ` +
        'define its vjp in src/graph/ops, or leave the parameters that reach it out of grad()',
      'NO_VJP',
    );
  }

  const cotangents = new Map<number, Tensor[]>([[root.id, [seed]]]);
  // A value used several times gets the sum of its uses' cotangents, added where it is produced.
  const total = (t: Tensor): Tensor | undefined => {
    const parts = cotangents.get(t.id);
    if (!parts) return undefined;
    if (parts.length > 1) cotangents.set(t.id, [parts.reduce((a, b) => add(a, b))]);
    return (cotangents.get(t.id) as Tensor[])[0];
  };

  for (const node of active) {
    graph.atScope(gradScope(node.scope), () => {
      const outputGrads = node.outputs.map((t) => (onPath.has(t.id) ? total(t) : undefined));
      if (outputGrads.every((g) => g === undefined)) return;
      const needsGrad = node.inputs.map((t) => onPath.has(t.id));
      const rule = getOp(node.op).vjp as NonNullable<ReturnType<typeof getOp>['vjp']>;
      const inputGrads = rule(
        { inputs: node.inputs, outputs: node.outputs, attrs: node.attrs, needsGrad },
        outputGrads,
      );
      node.inputs.forEach((input, i) => {
        const g = inputGrads[i];
        if (!needsGrad[i] || g === undefined) return;
        if (g.dtype !== input.dtype || !sameShape(g, input)) {
          throw new GraphBuildError(
            `grad: the VJP of "${node.op}" at '${node.scope}' gave ${g.toString()} for input ${i}, which is ${input.toString()}`,
            'VJP',
          );
        }
        const parts = cotangents.get(input.id);
        if (parts) parts.push(g);
        else cotangents.set(input.id, [g]);
      });
    });
  }

  return graph.atScope('grad', () => params.map((p) => total(p) ?? expand(asTensor(0, p), p.shape)));
}

function sameShape(a: Tensor, b: Tensor): boolean {
  return a.rank === b.rank && a.shape.every((d, i) => dimEquals(d, b.shape[i]));
}
