// Reference GEMM in plain TypeScript with float64 accumulation. Its "packed" layout is simply the
// row-major weight converted to the packed format (f32, or 16-bit words for f16/bf16; q4 / q8:
// the standalone quantized layout of ./quant.ts).
import { type FloatDType, bf16ToF32, f16ToF32, f32ToBf16, f32ToF16, toFloat32 } from '../../tensor/dtype.js';
import { type ComputeMode, type Kernels, type MatmulEpilogue, type WeightFormat, epilogueByOps, isQuantFormat } from '../kernels.js';
import type { FloatArray, TrainKernels } from '../kernels-train.js';
import { dequantize, packQuant, quantize, referenceQuantLayout, unpackQuant } from './quant.js';
import { rowwiseReference } from './rowwise.js';

/** Bytes of the reference backend's packed weight: n*k elements of the format, row-major. */
export function referencePackedByteLength(format: WeightFormat, n: number, k: number): number {
  if (isQuantFormat(format)) return referenceQuantLayout(format, n, k).bytes;
  return n * k * (format === 'f32' ? 4 : 2);
}

/** Row-major W widened to float32 from the reference packed bytes. */
function unpack(w: Uint8Array, format: WeightFormat, n: number, k: number): Float32Array {
  const len = n * k;
  if (isQuantFormat(format)) return unpackQuant(w, format, n, k);
  if (format === 'f32') return new Float32Array(w.buffer, w.byteOffset, len);
  return toFloat32(format, new Uint16Array(w.buffer, w.byteOffset, len));
}

const roundBf16 = (v: number) => bf16ToF32(f32ToBf16(v));

function matmul(x: Float32Array, m: number, k: number, w: Uint8Array, format: WeightFormat, n: number,
  bias: Float32Array | null, y: Float32Array, mode: ComputeMode, epilogue?: MatmulEpilogue): void {
  let wf = unpack(w, format, n, k);
  let xf = x;
  if (mode === 'bf16' && !isQuantFormat(format)) {
    // (q4 / q8 in bf16 mode: the reference stays exact; the native fast path is approximate.)
    xf = Float32Array.from(x.subarray(0, m * k), roundBf16);
    if (format !== 'bf16') wf = Float32Array.from(wf, roundBf16);
  }
  for (let i = 0; i < m; i++) {
    const xo = i * k;
    for (let j = 0; j < n; j++) {
      const wo = j * k;
      let s = 0;
      for (let t = 0; t < k; t++) s += xf[xo + t]! * wf[wo + t]!;
      if (bias) s += bias[j]!;
      y[i * n + j] = s;
    }
  }
  if (epilogue) epilogueByOps(rowwiseReference as Kernels, y.subarray(0, m * n), epilogue);
}

/** dw[n,k] += dy[m,n]ᵀ · x[m,k]: each element a float64 sum over the m rows (bf16 mode: dy and x
 *  rounded to bf16 first, as the forward rounds its operands). */
function matmulGradWeight(dy: FloatArray, x: FloatArray, m: number, n: number, k: number, dw: FloatArray, mode: ComputeMode): void {
  const r = mode === 'bf16' ? roundBf16 : (v: number) => v;
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < k; j++) {
      let s = 0;
      for (let t = 0; t < m; t++) s += r(dy[t * n + i]!) * r(x[t * k + j]!);
      dw[i * k + j] += s;
    }
  }
}

/** The gradients of the linear layer, beside its forward (matmul above). */
export const gemmGradReference: Partial<TrainKernels> = {
  // The reference layout is row-major, so Wᵀ packed is Wᵀ[k,n] converted to the format.
  packWeightT(src, srcDtype, n, k, format, dst) {
    const t = srcDtype === 'f32' ? new Float32Array(n * k) : new Uint16Array(n * k);
    for (let i = 0; i < n; i++) for (let j = 0; j < k; j++) t[j * n + i] = src[i * k + j]!;
    gemmReference.packWeight!(t, srcDtype, k, n, format, dst);
  },
  matmulGradWeight,
  async matmulGradWeightAsync(dy, x, m, n, k, dw, mode) {
    matmulGradWeight(dy, x, m, n, k, dw, mode);
  },
  biasGrad(dy, rows, cols, dbias) {
    for (let c = 0; c < cols; c++) {
      let s = 0;
      for (let r = 0; r < rows; r++) s += dy[r * cols + c]!;
      dbias[c] += s;
    }
  },
};

export const gemmReference: Partial<Kernels> = {
  packedByteLength: referencePackedByteLength,
  // Row-major elements; quantized weights keep all their scales after all their codes.
  packedRowBlock: (format: WeightFormat) => (isQuantFormat(format) ? null : 1),
  packedBuffer: (bytes: number) => new Uint8Array(bytes),

  packWeight(src: Float32Array | Uint16Array, srcDtype: FloatDType, n: number, k: number, format: WeightFormat, dst: Uint8Array): void {
    const len = n * k;
    if (isQuantFormat(format)) {
      packQuant(toFloat32(srcDtype, src.subarray(0, len), false), n, k, format, dst);
      return;
    }
    if (format === 'f32') {
      new Float32Array(dst.buffer, dst.byteOffset, len).set(toFloat32(srcDtype, src.subarray(0, len), false));
      return;
    }
    const out = new Uint16Array(dst.buffer, dst.byteOffset, len);
    if (srcDtype === format) {
      out.set((src as Uint16Array).subarray(0, len));
      return;
    }
    const f = toFloat32(srcDtype, src.subarray(0, len), false);
    const conv = format === 'bf16' ? f32ToBf16 : f32ToF16;
    for (let i = 0; i < len; i++) out[i] = conv(f[i]!);
  },

  matmul,

  async matmulAsync(x, m, k, w, format, n, bias, y, mode) {
    matmul(x, m, k, w, format, n, bias, y, mode);
  },

  quantize,
  dequantize,

  gatherRows(w, format, n, k, ids, out) {
    if (isQuantFormat(format)) {
      const all = unpackQuant(w, format, n, k);
      for (let i = 0; i < ids.length; i++) out.set(all.subarray(ids[i]! * k, (ids[i]! + 1) * k), i * k);
      return;
    }
    for (let i = 0; i < ids.length; i++) {
      const r = ids[i]!;
      if (format === 'f32') {
        out.set(new Float32Array(w.buffer, w.byteOffset + r * k * 4, k), i * k);
      } else {
        const s = new Uint16Array(w.buffer, w.byteOffset + r * k * 2, k);
        const conv = format === 'bf16' ? bf16ToF32 : f16ToF32;
        for (let t = 0; t < k; t++) out[i * k + t] = conv(s[t]!);
      }
    }
  },
};
