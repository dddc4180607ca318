// Seeded random tensors for benchmarks (the same generator as test/helpers/harness.ts, without vitest).
import { Tensor } from '../../src/tensor/tensor.js';
import { type FloatDType, fromFloat32 } from '../../src/tensor/dtype.js';

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

export function normalisedError(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let maxDiff = 0;
  let maxRef = 1e-30;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i]! - b[i]!);
    if (!(d <= maxDiff)) maxDiff = Number.isNaN(d) ? Infinity : d;
    maxRef = Math.max(maxRef, Math.abs(b[i]!));
  }
  return maxDiff / maxRef;
}
