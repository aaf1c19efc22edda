export * from './elementwise.js';
export * from './matmul.js';
export * from './reduce.js';
export * from './movement.js';
export * from './norm.js';
export * from './conv.js';
export * from './attention.js';
export * from './composite.js';
