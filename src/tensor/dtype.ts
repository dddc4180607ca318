// Element types and conversions between the 16-bit float formats and float32.

export type FloatDType = 'f32' | 'f16' | 'bf16';
export type DType = FloatDType | 'i32' | 'u8';

export const DTYPE_BYTES: Record<DType, number> = { f32: 4, f16: 2, bf16: 2, i32: 4, u8: 1 };

export type ArrayFor<D extends DType> = D extends 'f32'
  ? Float32Array
  : D extends 'i32'
    ? Int32Array
    : D extends 'u8'
      ? Uint8Array
      : Uint16Array;

export type AnyArray = Float32Array | Uint16Array | Int32Array | Uint8Array;

export function isFloatDType(d: string): d is FloatDType {
  return d === 'f32' || d === 'f16' || d === 'bf16';
}

/** A typed array of the dtype's element type viewing `bytes` (which must be aligned for it). */
export function viewAs<D extends DType>(dtype: D, buffer: ArrayBufferLike, byteOffset: number, length: number): ArrayFor<D> {
  switch (dtype) {
    case 'f32':
      return new Float32Array(buffer, byteOffset, length) as ArrayFor<D>;
    case 'i32':
      return new Int32Array(buffer, byteOffset, length) as ArrayFor<D>;
    case 'u8':
      return new Uint8Array(buffer, byteOffset, length) as ArrayFor<D>;
    default:
      return new Uint16Array(buffer, byteOffset, length) as ArrayFor<D>;
  }
}

export function allocArray<D extends DType>(dtype: D, length: number): ArrayFor<D> {
  return viewAs(dtype, new ArrayBuffer(length * DTYPE_BYTES[dtype]), 0, length);
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

export function bf16ToF32(h: number): number {
  u32[0] = h << 16;
  return f32[0]!;
}

/** Round to nearest even, as the CPU's conversion instructions do; NaN stays NaN. */
export function f32ToBf16(x: number): number {
  f32[0] = x;
  const bits = u32[0]!;
  if ((bits & 0x7fffffff) > 0x7f800000) return ((bits >>> 16) | 0x40) & 0xffff;
  return ((bits + 0x7fff + ((bits >>> 16) & 1)) >>> 16) & 0xffff;
}

export function f16ToF32(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >>> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24;
  if (exp === 31) return frac ? NaN : sign * Infinity;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

/** Round to nearest even; overflow gives infinity. */
export function f32ToF16(x: number): number {
  f32[0] = x;
  const bits = u32[0]!;
  const sign = (bits >>> 16) & 0x8000;
  const exp = (bits >>> 23) & 0xff;
  let mant = bits & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  const e = exp - 127 + 15;
  if (e >= 31) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    let h = mant >>> shift;
    const rem = mant & ((1 << shift) - 1);
    const half = 1 << (shift - 1);
    if (rem > half || (rem === half && h & 1)) h++;
    return sign | h;
  }
  let h = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && h & 1)) h++;
  return sign | h;
}

/** Widens any float array to float32 (a copy, except for float32 input when `copy` is false). */
export function toFloat32(dtype: FloatDType, data: Float32Array | Uint16Array, copy = true): Float32Array {
  if (dtype === 'f32') return copy ? Float32Array.from(data as Float32Array) : (data as Float32Array);
  const src = data as Uint16Array;
  const out = new Float32Array(src.length);
  if (dtype === 'bf16') {
    const o32 = new Uint32Array(out.buffer);
    for (let i = 0; i < src.length; i++) o32[i] = src[i]! << 16;
  } else {
    const table = f16Widened();
    for (let i = 0; i < src.length; i++) out[i] = table[src[i]!]!;
  }
  return out;
}

let f16Table: Float32Array | null = null;

/** Every f16 bit pattern widened, built on first use: widening a model's f16 weights is then a
 *  lookup per element instead of a Math.pow (a quarter of the time of opening OPT-125m for
 *  training was that pow). */
function f16Widened(): Float32Array {
  f16Table ??= Float32Array.from({ length: 65536 }, (_, h) => f16ToF32(h));
  return f16Table;
}

/** Narrows float32 to a 16-bit format with round-to-nearest-even. */
export function fromFloat32(dtype: 'f16' | 'bf16', data: Float32Array): Uint16Array {
  const out = new Uint16Array(data.length);
  narrowInto(dtype, data, out);
  return out;
}

/** Narrows src into dst (as many elements as dst holds), rounding to nearest even as f32ToBf16
 *  and f32ToF16 do; bf16 works on the bits directly (a call per element costs as much again). */
export function narrowInto(dtype: 'f16' | 'bf16', src: Float32Array, dst: Uint16Array): void {
  if (dtype === 'f16') {
    for (let i = 0; i < dst.length; i++) dst[i] = f32ToF16(src[i]!);
    return;
  }
  const bits = new Uint32Array(src.buffer, src.byteOffset, dst.length);
  for (let i = 0; i < dst.length; i++) {
    const b = bits[i]!;
    dst[i] = (b & 0x7fffffff) > 0x7f800000 ? (b >>> 16) | 0x40 : (b + 0x7fff + ((b >>> 16) & 1)) >>> 16;
  }
}
