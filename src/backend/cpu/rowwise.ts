// Native row-wise kernels (native/kernels/rowwise*, native/napi/rowwise.cpp).
import type { FloatDType } from '../../tensor/dtype.js';
import type { Kernels } from '../kernels.js';
import { cachedFn } from './addon.js';

const fn = cachedFn;

export const rowwiseKernels: Partial<Kernels> = {
  embedding(table: Float32Array | Uint16Array, dtype: FloatDType, vocab: number, dim: number, ids: Int32Array, out: Float32Array) {
    fn('embedding')(table, dtype, vocab, dim, ids, out);
  },
  layerNorm(x, rows, cols, gamma, beta, eps, out) {
    fn('layerNorm')(x, rows, cols, gamma, beta, eps, out);
  },
  rmsNorm(x, rows, cols, gamma, eps, out) {
    fn('rmsNorm')(x, rows, cols, gamma, eps, out);
  },
  relu(x, out) {
    fn('relu')(x, out);
  },
  gelu(x, out, approximate) {
    fn('gelu')(x, out, approximate);
  },
  siluMul(gate, up, out) {
    fn('siluMul')(gate, up, out);
  },
  add(a, b, out) {
    fn('add')(a, b, out);
  },
  softmax(x, rows, cols, out) {
    fn('softmax')(x, rows, cols, out);
  },
  logSoftmax(x, rows, cols, out) {
    fn('logSoftmax')(x, rows, cols, out);
  },
  rope(x, t, heads, d, positions, invFreq, rotaryDim) {
    fn('rope')(x, t, heads, d, positions, invFreq, rotaryDim);
  },
};
