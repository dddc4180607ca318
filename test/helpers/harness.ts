// Shared test harness: seeded random inputs and one way of comparing a backend's result with the
// reference's (a normalised error, as llama.cpp's test-backend-ops does).
import { expect } from 'vitest';
import { cpuBackend, referenceBackend } from '../../src/backend/index.js';
import { normalisedError } from './random.js';
import { Tensor } from '../../src/tensor/tensor.js';

export { normalisedError };

export const cpu = () => cpuBackend();
export const ref = () => referenceBackend();

export { rng, randomF32, randomFloat } from './random.js';

export function expectClose(actual: ArrayLike<number>, expected: ArrayLike<number>, tol: number, what = 'result'): void {
  expect(actual.length).toBe(expected.length);
  const err = normalisedError(actual, expected);
  if (!(err <= tol)) throw new Error(`${what}: normalised error ${err.toExponential(3)} exceeds ${tol}`);
}

/** Rows from..to-1 of a tensor (along its first axis), copied. */
export function rowsOf(t: Tensor<'f32'>, from: number, to: number): Tensor<'f32'> {
  const per = t.size / t.shape[0]!;
  return Tensor.f32([to - from, ...t.shape.slice(1)], t.data.slice(from * per, to * per));
}

/** Row `row` of a KV cache [b, hkv, cap, ..] as a cache of one row, copied. */
export function cacheRow(c: Tensor, row: number): Tensor {
  const per = c.size / c.shape[0]!;
  return new Tensor(c.dtype, [1, ...c.shape.slice(1)], (c.data as Uint8Array).slice(row * per, (row + 1) * per));
}
