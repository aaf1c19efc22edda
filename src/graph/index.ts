export * from './dtype.js';
export * from './shape.js';
export * from './graph.js';
export { defineOp, getOp, registeredOps, apply } from './op.js';
export type { OpDef, LowerContext, Vjp } from './op.js';
export * from './ops/index.js';
export * from './serialize.js';
export { grad, gradScope, vjp } from './grad.js';
