/** Fresh random scheduler inputs: standard normals shaped as a scheduler tensor (seeds: test/random.ts). */
import type { SchedulerTensor } from '../../src/schedulers/index.js';
import { normalArray } from '../random.js';

/** Standard normals shaped `shape`. */
export function randomNormal(shape: readonly number[], uniform: () => number): SchedulerTensor {
  const size = shape.reduce((a, b) => a * b, 1);
  return { data: normalArray(size, uniform), shape: [...shape] };
}
