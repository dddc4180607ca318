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

/** Inputs at the edges of float32: NaN, ±inf, ±0, ±3e38, values whose cube or square overflows
 *  (±1e19), past where e^x overflows or underflows (±88.9, ±100), and ordinary ones, cycled to n. */
export function specialValues(n: number): Float32Array {
  const v = [NaN, Infinity, -Infinity, -0, 0, 3e38, -3e38, 1e19, -1e19, 100, -100, 88.9, -88.9, 13.5, -13.5, 1.5, -2.5, 1e-30, -1e-30];
  return Float32Array.from({ length: n }, (_, i) => v[i % v.length]!);
}

/** NaN where the reference has NaN, the same infinities, and finite values within tol·(1 + |expected|):
 *  for inputs where a normalised error would hide a NaN or an infinity. */
export function expectSameValues(actual: ArrayLike<number>, expected: ArrayLike<number>, tol: number, what = 'result', input?: ArrayLike<number>): void {
  expect(actual.length).toBe(expected.length);
  for (let i = 0; i < expected.length; i++) {
    const a = actual[i]!, e = expected[i]!;
    const ok = Number.isNaN(e) ? Number.isNaN(a) : Number.isFinite(e) ? Number.isFinite(a) && Math.abs(a - e) <= tol * (1 + Math.abs(e)) : a === e;
    if (!ok) throw new Error(`${what}: element ${i}${input ? ` (input ${input[i]})` : ''} is ${a}, the reference's ${e}`);
  }
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
