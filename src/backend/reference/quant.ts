// Reference group-wise quantization (the scheme of native/kernels/quant.h, step for step in f32
// arithmetic so codes and params match the native ones bit for bit) and the reference layout of
// 'q4' / 'q8' packed weights: the standalone layout with QUANT_GROUP-element groups,
//   codes  quantCodeBytes(bits, n, k) bytes, row-major (4-bit: two elements per byte, low first)
//   pad    to an even byte offset
//   params quantParamsLength(n, k, QUANT_GROUP) uint16 f16 bits, (step, min) per row per group.
import { f16ToF32, f32ToF16 } from '../../tensor/dtype.js';
import { QUANT_GROUP, type QuantBits, type QuantFormat, quantCodeBytes, quantParamsLength } from '../kernels.js';

const fround = Math.fround;

/** Round half to even, as C's nearbyint in the default rounding mode. */
function rne(t: number): number {
  const r = Math.round(t);
  return r - t === 0.5 && (r & 1) !== 0 ? r - 1 : r;
}

/** The largest f16 value <= f (finite, |f| <= 65504), as f16 bits. */
function f16RoundDown(f: number): number {
  let h = f32ToF16(f);
  if (f16ToF32(h) > f) {
    if (h === 0) h = 0x8001;
    else if (h & 0x8000) h += 1;
    else h -= 1;
  }
  return h;
}

export function representable(v: number): boolean {
  return Math.abs(v) <= 65504;
}

/** Quantizes v[off..off+len) into q[0..len); returns [stepBits, minBits]. */
export function quantizeGroup(v: ArrayLike<number>, off: number, len: number, bits: QuantBits, q: Uint8Array): [number, number] {
  let mn = v[off]!;
  let mx = mn;
  for (let i = 1; i < len; i++) {
    const x = v[off + i]!;
    if (x < mn) mn = x;
    if (x > mx) mx = x;
  }
  const levels = (1 << bits) - 1;
  const minh = f16RoundDown(mn);
  const minf = f16ToF32(minh);
  if (minf === mx) {
    q.fill(0, 0, len);
    return [0, minh];
  }
  let sh = f32ToF16(fround((mx - minf) / levels));
  if (sh === 0) sh = 1;
  while (minf + levels * f16ToF32(sh) < mx) sh++;
  const inv = fround(1 / f16ToF32(sh));
  for (let i = 0; i < len; i++) {
    const t = rne(fround(fround(v[off + i]! - minf) * inv));
    q[i] = t <= 0 ? 0 : t >= levels ? levels : t;
  }
  return [sh, minh];
}

function checkRepresentable(src: ArrayLike<number>, len: number): void {
  for (let i = 0; i < len; i++) {
    if (!representable(src[i]!)) {
      throw new RangeError(`element ${i} (${src[i]}) cannot be quantized: values must be finite with |x| <= 65504`);
    }
  }
}

export function quantize(src: Float32Array, n: number, k: number, bits: QuantBits, groupSize: number, codes: Uint8Array, params: Uint16Array): void {
  checkRepresentable(src, n * k);
  const ng = Math.ceil(k / groupSize);
  const rb = quantCodeBytes(bits, 1, k);
  const q = new Uint8Array(groupSize);
  codes.fill(0, 0, n * rb);
  for (let r = 0; r < n; r++) {
    for (let g = 0; g < ng; g++) {
      const k0 = g * groupSize;
      const len = Math.min(groupSize, k - k0);
      const [s, m] = quantizeGroup(src, r * k + k0, len, bits, q);
      params[(r * ng + g) * 2] = s;
      params[(r * ng + g) * 2 + 1] = m;
      for (let j = 0; j < len; j++) {
        const kk = k0 + j;
        if (bits === 8) codes[r * rb + kk] = q[j]!;
        else codes[r * rb + (kk >> 1)]! |= q[j]! << ((kk & 1) * 4);
      }
    }
  }
}

/** x' = q·step + min rounded once to f32 (q·step and the sum are exact in float64). */
export function dequantize(codes: Uint8Array, params: Uint16Array, n: number, k: number, bits: QuantBits, groupSize: number, out: Float32Array): void {
  const ng = Math.ceil(k / groupSize);
  const rb = quantCodeBytes(bits, 1, k);
  for (let r = 0; r < n; r++) {
    for (let g = 0; g < ng; g++) {
      const step = f16ToF32(params[(r * ng + g) * 2]!);
      const mn = f16ToF32(params[(r * ng + g) * 2 + 1]!);
      const k1 = Math.min(k, (g + 1) * groupSize);
      for (let kk = g * groupSize; kk < k1; kk++) {
        const q = bits === 8 ? codes[r * rb + kk]! : (codes[r * rb + (kk >> 1)]! >> ((kk & 1) * 4)) & 15;
        out[r * k + kk] = q * step + mn;
      }
    }
  }
}

export const quantBits = (f: QuantFormat): QuantBits => (f === 'q4' ? 4 : 8);

/** Byte offset of the params in a reference packed q weight, and its total length. */
export function referenceQuantLayout(format: QuantFormat, n: number, k: number): { paramsOffset: number; bytes: number } {
  const cb = quantCodeBytes(quantBits(format), n, k);
  const paramsOffset = cb + (cb & 1);
  return { paramsOffset, bytes: paramsOffset + quantParamsLength(n, k, QUANT_GROUP) * 2 };
}

export function packQuant(src: Float32Array, n: number, k: number, format: QuantFormat, dst: Uint8Array): void {
  const { paramsOffset } = referenceQuantLayout(format, n, k);
  const params = new Uint16Array(quantParamsLength(n, k, QUANT_GROUP));
  quantize(src, n, k, quantBits(format), QUANT_GROUP, dst.subarray(0, paramsOffset), params);
  dst.set(new Uint8Array(params.buffer), paramsOffset);  // byte copy: dst may sit at an odd offset
}

/** A reference packed q weight, dequantized (row-major f32). */
export function unpackQuant(w: Uint8Array, format: QuantFormat, n: number, k: number): Float32Array {
  const { paramsOffset } = referenceQuantLayout(format, n, k);
  const len = quantParamsLength(n, k, QUANT_GROUP);
  const params = new Uint16Array(len);
  new Uint8Array(params.buffer).set(w.subarray(paramsOffset, paramsOffset + len * 2));
  const out = new Float32Array(n * k);
  dequantize(w.subarray(0, paramsOffset), params, n, k, quantBits(format), QUANT_GROUP, out);
  return out;
}
