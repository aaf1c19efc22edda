export { TorchGenerator, TORCH_CPU_STATE_BYTES } from './torch-generator.js';
export type { NoiseGenerator, TorchGeneratorOptions } from './torch-generator.js';
export { Mt19937, MT19937_STATE_WORDS, seedToUint64 } from './mt19937.js';
export type { Mt19937State } from './mt19937.js';
