// Shared test harness: seeded random inputs and one way of comparing a backend's result with the
// reference's (a normalised error, as llama.cpp's test-backend-ops does).
import { expect } from 'vitest';
import { cpuBackend, referenceBackend } from '../../src/backend/index.js';
import { normalisedError } from './random.js';

export { normalisedError };

export const cpu = () => cpuBackend();
export const ref = () => referenceBackend();

export { rng, randomF32, randomFloat } from './random.js';

export function expectClose(actual: ArrayLike<number>, expected: ArrayLike<number>, tol: number, what = 'result'): void {
  expect(actual.length).toBe(expected.length);
  const err = normalisedError(actual, expected);
  if (!(err <= tol)) throw new Error(`${what}: normalised error ${err.toExponential(3)} exceeds ${tol}`);
}
