// The raw kernel interface that every compute backend implements: plain typed arrays and sizes,
// no validation (src/backend/backend.ts validates every call before it reaches a kernel).
// Layouts are row-major. Shapes in comments use these names:
//   m rows of activations, k input features, n output features,
//   t tokens, hq query heads, hkv key/value heads, d head size, cap cache capacity (positions).

import type { FloatDType } from '../tensor/dtype.js';
import type { TrainKernels } from './kernels-train.js';

/** fp32: activations in float32, weights widened exactly. bf16: activations rounded to bf16. */
export type ComputeMode = 'fp32' | 'bf16';
/** Element format of a packed weight. In bf16 mode every float weight is packed as bf16.
 *  'q4' / 'q8': group-wise quantized (FlexGen style), QUANT_GROUP = 64 elements of a row per
 *  group, each with an f16 step and min (0.5625 / 1.0625 bytes per weight). Matmul over them in
 *  fp32 mode dequantizes exactly (q·step + min in f32) and is accurate to ~1e-6 against a
 *  float64 GEMM over the dequantized weights; bf16 mode is the fast path (int8 activations per
 *  group with AVX512-VNNI, and for q4 on AVX2 without it: ~5e-3 normalised error). */
export type WeightFormat = 'f32' | 'f16' | 'bf16' | 'q4' | 'q8';
export type QuantFormat = 'q4' | 'q8';
export type QuantBits = 4 | 8;
/** Group size of the packed 'q4' / 'q8' weight formats. */
export const QUANT_GROUP = 64;

export function isQuantFormat(f: string): f is QuantFormat {
  return f === 'q4' || f === 'q8';
}

/** Bytes of codes of the standalone quantized layout: rows × (k, or ceil(k/2) for 4 bits). */
export function quantCodeBytes(bits: QuantBits, n: number, k: number): number {
  return n * (bits === 8 ? k : Math.ceil(k / 2));
}

/** Uint16 entries of the standalone params array: (step, min) as f16 bits per row per group. */
export function quantParamsLength(n: number, k: number, groupSize: number): number {
  return n * Math.ceil(k / groupSize) * 2;
}
/** KV cache element format. 'q4': group-wise 4-bit (FlexGen's KV cache compression), one record
 *  of q4RecordBytes(d) bytes per (row, kv head, position) in a Uint8Array: ceil(d/2) bytes of codes
 *  (feature c in byte c/2, low nibble for even c), then for each group of Q4_CACHE_GROUP features
 *  along d (the last one shorter) an f16 (step, min) pair, little-endian: x' = code·step + min,
 *  quantized with the scheme of `quantize` (|x − x'| ≤ step/2; a constant group is exact). */
export type CacheDType = 'f32' | 'f16' | 'q4';
/** Group size along the head dimension of the 'q4' cache. */
export const Q4_CACHE_GROUP = 64;
/** Bytes of one 'q4' cache record (one position of one kv head) for head size d. */
export function q4RecordBytes(d: number): number {
  return Math.ceil(d / 2) + 4 * Math.ceil(d / Q4_CACHE_GROUP);
}
/** The Tensor dtype holding a cache of `dtype` ('q4' → 'u8' records). */
export function cacheTensorDType(dtype: CacheDType): 'f32' | 'f16' | 'u8' {
  return dtype === 'q4' ? 'u8' : dtype;
}
/** The last dimension of a cache tensor [b, hkv, cap, ·] of `dtype` for head size d. */
export function cacheRowLength(dtype: CacheDType, d: number): number {
  return dtype === 'q4' ? q4RecordBytes(d) : d;
}
/** A cache's storage: f32 → Float32Array, f16 → Uint16Array (bits), q4 → Uint8Array (records). */
export type CacheArray = Float32Array | Uint16Array | Uint8Array;

/** What a matmul does to its output y as it finishes each part of it, fused (while the part is in
 *  cache): `activation` on y, then y added onto `addTo` ([m, n] like y, overlapping none of x, bias, y).
 *  The values are those of the separate ops — relu / gelu(·, false) / gelu(·, true) on y, then
 *  add(addTo, y, addTo) — bit for bit. */
export interface MatmulEpilogue {
  activation?: (typeof MATMUL_ACTIVATIONS)[number];
  addTo?: Float32Array;
}
export const MATMUL_ACTIVATIONS = ['relu', 'gelu', 'gelu_tanh'] as const;

/** The epilogue as `k`'s separate ops over y (what a fused one must equal): the reference
 *  backend's, and a weight in pieces', whose y is whole only once every part is multiplied. */
export function epilogueByOps(k: Pick<Kernels, 'relu' | 'gelu' | 'add'>, y: Float32Array, e: MatmulEpilogue): void {
  if (e.activation === 'relu') k.relu(y, y);
  else if (e.activation) k.gelu(y, y, e.activation === 'gelu_tanh');
  if (e.addTo) k.add(e.addTo, y, e.addTo);
}

/** Forward kernels here, training kernels (backward, loss, optimizer) in kernels-train.ts. */
export interface Kernels extends TrainKernels {
  readonly name: string;

  // ---- GEMM ---------------------------------------------------------------------------------
  /** Bytes a packed weight of n×k elements in `format` takes (including any padding). */
  packedByteLength(format: WeightFormat, n: number, k: number): number;
  /** Rows at which packed bytes can be cut: the first r·block rows of W packed are the first
   *  packedByteLength(format, r·block, k) bytes, and the rest is W's remaining rows packed on their
   *  own. null where a format's packed bytes cannot be cut by rows. */
  packedRowBlock(format: WeightFormat): number | null;
  /** A zeroed buffer of `bytes` bytes for packed weights, which GEMMs stream from RAM: the native
   *  backend marks a large one for transparent huge pages before anything touches it
   *  (native/core/aligned.h; TIERLM_HUGE_PAGES=0 turns that off). */
  packedBuffer(bytes: number): Uint8Array;
  /** Packs W[n,k] (row-major elements of srcDtype) into dst, converting to `format`. Done once
   *  when a weight is loaded; the packed bytes can be written to disk and read back as they are. */
  packWeight(src: Float32Array | Uint16Array, srcDtype: FloatDType, n: number, k: number, format: WeightFormat, dst: Uint8Array): void;
  /** y[m,n] = x[m,k] · W[n,k]ᵀ (+ bias[n]), then the epilogue (if any). */
  matmul(x: Float32Array, m: number, k: number, w: Uint8Array, format: WeightFormat, n: number,
    bias: Float32Array | null, y: Float32Array, mode: ComputeMode, epilogue?: MatmulEpilogue): void;
  matmulAsync(x: Float32Array, m: number, k: number, w: Uint8Array, format: WeightFormat, n: number,
    bias: Float32Array | null, y: Float32Array, mode: ComputeMode): Promise<void>;
  /** out[i,:] = W[ids[i],:] widened to float32, read from a packed weight (tied embeddings). */
  gatherRows(w: Uint8Array, format: WeightFormat, n: number, k: number, ids: Int32Array, out: Float32Array): void;

  // ---- group-wise quantization (the scheme of the 'q4' / 'q8' formats, standalone layout) -----
  /** Quantizes src[n,k] in groups of groupSize consecutive elements of a row (the last group of
   *  a row may be shorter). Per group min_h = min rounded down to f16, step_h = (max − min_h) /
   *  (2^bits − 1) rounded up to f16, q = round((x − min_h) / step_h); x' = q·step_h + min_h, so
   *  |x − x'| ≤ step_h / 2. A group constant at an f16 value has step 0 and is exact.
   *  codes: row-major, quantCodeBytes(bits, n, k) bytes (4-bit: element j of a row in byte j/2,
   *  low nibble for even j); params: quantParamsLength(n, k, groupSize) f16 bits, (step, min)
   *  per row per group. Throws a RangeError for values that are not finite or exceed ±65504. */
  quantize(src: Float32Array, n: number, k: number, bits: QuantBits, groupSize: number, codes: Uint8Array, params: Uint16Array): void;
  /** out[n,k] = q·step + min (f32) from quantize's codes and params. */
  dequantize(codes: Uint8Array, params: Uint16Array, n: number, k: number, bits: QuantBits, groupSize: number, out: Float32Array): void;

  // ---- row-wise ops (out may be the same array as an input) -----------------------------------
  /** out[i,:] = table[ids[i],:] widened to float32; table[vocab,dim] unpacked. */
  embedding(table: Float32Array | Uint16Array, dtype: FloatDType, vocab: number, dim: number, ids: Int32Array, out: Float32Array): void;
  layerNorm(x: Float32Array, rows: number, cols: number, gamma: Float32Array, beta: Float32Array | null, eps: number, out: Float32Array): void;
  rmsNorm(x: Float32Array, rows: number, cols: number, gamma: Float32Array, eps: number, out: Float32Array): void;
  relu(x: Float32Array, out: Float32Array): void;
  /** approximate: the tanh form ("gelu_new"); otherwise the exact erf form. */
  gelu(x: Float32Array, out: Float32Array, approximate: boolean): void;
  /** out = silu(gate) · up (SwiGLU). */
  siluMul(gate: Float32Array, up: Float32Array, out: Float32Array): void;
  add(a: Float32Array, b: Float32Array, out: Float32Array): void;
  softmax(x: Float32Array, rows: number, cols: number, out: Float32Array): void;
  logSoftmax(x: Float32Array, rows: number, cols: number, out: Float32Array): void;
  /** In place on x[t, heads, d]: rotate-half rotary embedding of the first rotaryDim features of
   *  each head, token i at position positions[i]: features j and j + rotaryDim/2 turn by the angle
   *  positions[i] · invFreq[j] (invFreq holds rotaryDim/2 frequencies, src/models/rope.ts). */
  rope(x: Float32Array, t: number, heads: number, d: number, positions: Int32Array, invFreq: Float64Array, rotaryDim: number): void;

  // ---- attention ------------------------------------------------------------------------------
  /** Causal self-attention over a ragged batch of prompts: q[t,hq,d], k/v[t,hkv,d], sequence s
   *  holds tokens seqStarts[s]..seqStarts[s+1]-1 and attends only within itself.
   *  Query head h reads key/value head floor(h / (hq/hkv)). out[t,hq,d]. */
  attentionPrefill(q: Float32Array, k: Float32Array, v: Float32Array, t: number, hq: number, hkv: number, d: number,
    seqStarts: Int32Array, scale: number, out: Float32Array): void;
  attentionPrefillAsync(q: Float32Array, k: Float32Array, v: Float32Array, t: number, hq: number, hkv: number, d: number,
    seqStarts: Int32Array, scale: number, out: Float32Array): Promise<void>;
  /** One new token per sequence against its cache: q[b,hq,d]; caches [b,hkv,cap,d] in cacheDtype
   *  ('q4': [b,hkv,cap,q4RecordBytes(d)] bytes) hold lens[i] valid positions for sequence i (the new
   *  token's key/value included). out[b,hq,d].
   *  sparsity F in (0, 1] (default 1, dense): per row and query head, all len scores are computed,
   *  the max(1, ceil(F·(len−1))) highest among positions 0..len−2 (ties: the lower position) and
   *  position len−1 are kept, and the softmax and value sum run over those only. */
  attentionDecode(q: Float32Array, kCache: CacheArray, vCache: CacheArray, cacheDtype: CacheDType,
    b: number, hq: number, hkv: number, d: number, cap: number, lens: Int32Array, scale: number, out: Float32Array,
    sparsity?: number): void;
  attentionDecodeAsync(q: Float32Array, kCache: CacheArray, vCache: CacheArray, cacheDtype: CacheDType,
    b: number, hq: number, hkv: number, d: number, cap: number, lens: Int32Array, scale: number, out: Float32Array,
    sparsity?: number): Promise<void>;
  /** Each query token against its own cache row: token i of q[t,hq,d] attends to positions
   *  0..lens[i]-1 of row rows[i] of caches [b,hkv,cap,..] (as attentionDecode does for that row and
   *  length, sparsity included). A prompt's later chunk, its keys written first, is one call.
   *  out[t,hq,d]. kNew and vNew (both or neither, [t,hkv,d]; no row twice in `rows`): a decode
   *  step's keys and values, written at position lens[i]-1 of row rows[i] as cacheWrite writes them
   *  (same errors, before anything is written) and then read: the cache write fused into the call. */
  attentionCached(q: Float32Array, kCache: CacheArray, vCache: CacheArray, cacheDtype: CacheDType,
    t: number, hq: number, hkv: number, d: number, b: number, cap: number, rows: Int32Array, lens: Int32Array,
    scale: number, out: Float32Array, sparsity?: number, kNew?: Float32Array, vNew?: Float32Array): void;
  /** Writes token i of src[t,hkv,d] into cache[b,hkv,cap,d] at batch row rows[i], position
   *  positions[i] (every sequence of a step in one call; a RangeError names a token out of range).
   *  'q4': quantizes each row of d into a record; throws a RangeError for values that are not
   *  finite or exceed ±65504. 'f16': throws a RangeError for finite values it would round to
   *  infinity, |x| >= 65520. */
  cacheWrite(cache: CacheArray, cacheDtype: CacheDType, b: number, hkv: number, cap: number, d: number,
    src: Float32Array, t: number, rows: Int32Array, positions: Int32Array): void;
}
