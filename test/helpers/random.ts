// Seeded random inputs shared by the tests and the benchmarks (no test-runner imports here).
import { Tensor } from '../../src/tensor/tensor.js';
import { type FloatDType, fromFloat32 } from '../../src/tensor/dtype.js';

/** Deterministic generator (mulberry32) so failures reproduce. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Uniform values in [-scale, scale). */
export function randomF32(shape: number[], seed: number, scale = 1): Tensor<'f32'> {
  const r = rng(seed);
  const t = Tensor.zeros('f32', shape);
  for (let i = 0; i < t.size; i++) t.data[i] = (r() * 2 - 1) * scale;
  return t;
}

export function randomFloat(dtype: FloatDType, shape: number[], seed: number, scale = 1): Tensor {
  const f = randomF32(shape, seed, scale);
  if (dtype === 'f32') return f;
  return new Tensor(dtype, shape, fromFloat32(dtype, f.data));
}

/** max |a - b| / max(max |b|, tiny): the error relative to the result's own scale. */
export function normalisedError(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) return Infinity;
  let maxDiff = 0;
  let maxRef = 1e-30;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i]! - b[i]!);
    if (!(d <= maxDiff)) maxDiff = Number.isNaN(d) ? Infinity : d;
    maxRef = Math.max(maxRef, Math.abs(b[i]!));
  }
  return maxDiff / maxRef;
}
