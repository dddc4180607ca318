// The validated face of a compute backend. Every op checks dtypes, shapes and lengths here and
// throws a TypeError or RangeError naming the argument at fault, so nothing malformed reaches a
// kernel. Ops take an optional `out`; when it is omitted a new tensor is returned.

import { TiledWeight } from './tiled.js';
import { type FloatDType, isFloatDType } from '../tensor/dtype.js';
import { copyStrided } from '../tensor/copy.js';
import { Tensor, shapeString } from '../tensor/tensor.js';
import { TrainOps } from './train.js';
import { checkPair, checkQkv, checkRope, checkSeqStarts, expectF32, expectFinite, expectI32, expectInt, expectRank, expectShape, fail, outOr, rowsCols, sharesMemory } from './check.js';
import { type CacheArray, type CacheDType, type ComputeMode, type Kernels, MATMUL_ACTIVATIONS, type MatmulEpilogue, type QuantFormat, type WeightFormat, epilogueByOps, q4RecordBytes } from './kernels.js';

/** What matmul does to its result as it finishes it (MatmulEpilogue in kernels.ts): an
 *  activation on y, then y added onto `addTo` (the residual stream: addTo += y, exactly as
 *  add(addTo, y, addTo)). addTo has y's shape and shares memory with none of x, bias and y. */
export interface LinearEpilogue {
  activation?: MatmulEpilogue['activation'];
  addTo?: Tensor<'f32'>;
}

/** A weight matrix W[n,k] packed once, at load time, into its backend's GEMM layout. */
export class PackedWeight {
  constructor(
    readonly backend: string,
    readonly format: WeightFormat,
    readonly mode: ComputeMode,
    /** Output features: rows of W. */
    readonly n: number,
    /** Input features: columns of W. */
    readonly k: number,
    readonly data: Uint8Array,
    readonly name = 'weight',
  ) {}
}

/**
 * A packed weight whose rows live in separate buffers, cut at the backend's packedRowBlock: the
 * offload engine keeps a weight's first rows resident and reads the rest from disk into a staging
 * slot, and multiplies by the two pieces where they lie instead of copying them together first.
 */
export class RowSplitWeight {
  readonly n: number;
  constructor(
    readonly backend: string,
    readonly format: WeightFormat,
    readonly mode: ComputeMode,
    readonly k: number,
    /** Rows of W in order; each part but the last has a multiple of packedRowBlock rows. */
    readonly parts: readonly PackedWeight[],
    readonly name = 'weight',
  ) {
    this.n = parts.reduce((n, p) => n + p.n, 0);
  }
}

export type AnyWeight = PackedWeight | RowSplitWeight;
export { TiledGrad, TiledWeight } from './tiled.js';

/** Output elements one piece of a RowSplitWeight product may hold at once (16 MiB): prefill
 *  multiplies thousands of rows, and a whole [rows, n] scratch for a wide MLP weight (470 MB at
 *  4096 rows × 28672) broke a 6 GiB limit. Rows are independent, so chunking keeps results exact. */
const PART_OUTPUT_ELEMENTS = 4 << 20;

/** Row ranges [r0, r1) of at most PART_OUTPUT_ELEMENTS / n rows (at least one). */
function rowChunks(m: number, n: number): [number, number][] {
  const step = Math.max(1, Math.floor(PART_OUTPUT_ELEMENTS / n));
  const out: [number, number][] = [];
  for (let r0 = 0; r0 < m; r0 += step) out.push([r0, Math.min(m, r0 + step)]);
  return out;
}

/** The format a weight of `dtype` is packed into for `mode`. */
export function weightFormatFor(dtype: FloatDType, mode: ComputeMode): WeightFormat {
  return mode === 'bf16' ? 'bf16' : dtype;
}

type F32 = Tensor<'f32'>;

/** A float weight [n, k] to pack, and its compute mode; returns [n, k, dtype]. */
function checkWeight(op: string, w: Tensor, mode: ComputeMode): [number, number, FloatDType] {
  if (!(w instanceof Tensor) || !isFloatDType(w.dtype)) throw new TypeError(`${op}: weight must be an f32, f16 or bf16 Tensor`);
  expectRank(op, 'weight', w, 2);
  if (mode !== 'fp32' && mode !== 'bf16') throw new TypeError(`${op}: mode must be 'fp32' or 'bf16', got ${String(mode)}`);
  const [n, k] = w.shape as [number, number];
  if (n === 0 || k === 0) fail(op, `weight has an empty shape ${shapeString(w.shape)}`);
  return [n, k, w.dtype];
}

export class Backend {
  /** The training ops: backward, loss and optimizer (train.ts). */
  readonly train: TrainOps;

  constructor(readonly kernels: Kernels) {
    this.train = new TrainOps(this);
  }

  get name(): string {
    return this.kernels.name;
  }

  // ---- GEMM ---------------------------------------------------------------------------------

  /** opts.quantize: pack as group-wise 4- or 8-bit ('q4' / 'q8', see WeightFormat); throws a
   *  RangeError for weights with values beyond ±65504 or not finite. */
  /** `into` receives the packed bytes instead of a new buffer (it must hold at least
   *  packedByteLength bytes): converting a model packs tensor after tensor into one reused buffer
   *  rather than leaving a large garbage buffer per tensor for the collector. */
  packWeight(w: Tensor, mode: ComputeMode, name = 'weight', opts?: { quantize?: QuantFormat; into?: Uint8Array }): PackedWeight {
    const op = `packWeight(${name})`;
    const [n, k, dtype] = checkWeight(op, w, mode);
    const q = opts?.quantize;
    if (q !== undefined && q !== 'q4' && q !== 'q8') throw new TypeError(`${op}: quantize must be 'q4' or 'q8', got ${String(q)}`);
    const format = q ?? weightFormatFor(dtype, mode);
    const bytes = this.kernels.packedByteLength(format, n, k);
    if (opts?.into && opts.into.byteLength < bytes) fail(op, `the buffer to pack into holds ${opts.into.byteLength} bytes, needs ${bytes}`);
    const dst = opts?.into ? opts.into.subarray(0, bytes) : this.kernels.packedBuffer(bytes);
    this.kernels.packWeight(w.data as Float32Array | Uint16Array, dtype, n, k, format, dst);
    return new PackedWeight(this.name, format, mode, n, k, dst, name);
  }

  /** Wᵀ of a row-major w [n, k], packed as a weight of k rows over n inputs, for the linear
   *  layer's input gradient: matmul(dy [.., n], packWeightT(w)) = dy · W. Float formats only. */
  packWeightT(w: Tensor, mode: ComputeMode, name = 'weight', opts?: { into?: Uint8Array }): PackedWeight {
    const op = `packWeightT(${name})`;
    const [n, k, dtype] = checkWeight(op, w, mode);
    const format = weightFormatFor(dtype, mode);
    const bytes = this.kernels.packedByteLength(format, k, n);
    if (opts?.into && opts.into.byteLength < bytes) fail(op, `the buffer to pack into holds ${opts.into.byteLength} bytes, needs ${bytes}`);
    const dst = opts?.into ? opts.into.subarray(0, bytes) : this.kernels.packedBuffer(bytes);
    this.kernels.packWeightT(w.data as Float32Array | Uint16Array, dtype, n, k, format, dst);
    return new PackedWeight(this.name, format, mode, k, n, dst, `${name}ᵀ`);
  }

  /** Wraps bytes packed earlier (for example read back from disk) as a PackedWeight. */
  packedWeight(format: WeightFormat, mode: ComputeMode, n: number, k: number, data: Uint8Array, name = 'weight'): PackedWeight {
    const want = this.kernels.packedByteLength(format, n, k);
    if (data.byteLength !== want) fail(`packedWeight(${name})`, `holds ${data.byteLength} bytes, expected ${want}`);
    return new PackedWeight(this.name, format, mode, n, k, data, name);
  }

  /** One weight from row pieces packed on their own (see RowSplitWeight). */
  rowSplitWeight(parts: PackedWeight[], name = 'weight'): RowSplitWeight {
    const op = `rowSplitWeight(${name})`;
    if (parts.length === 0) fail(op, 'needs at least one part');
    const [first] = parts as [PackedWeight];
    const block = this.kernels.packedRowBlock(first.format);
    if (block === null) fail(op, `weights in ${first.format} cannot be cut by rows on backend '${this.name}'`);
    parts.forEach((p, i) => {
      if (!(p instanceof PackedWeight) || p.backend !== this.name) throw new TypeError(`${op}: part ${i} must be a PackedWeight of backend '${this.name}'`);
      if (p.format !== first.format || p.mode !== first.mode || p.k !== first.k) fail(op, `part ${i} differs from part 0 in format, mode or k`);
      if (i + 1 < parts.length && p.n % block !== 0) fail(op, `part ${i} has ${p.n} rows, not a multiple of ${block}`);
    });
    return new RowSplitWeight(this.name, first.format, first.mode, first.k, parts, name);
  }

  /** Bytes a packed n×k weight in `format` takes. */
  packedByteLength(format: WeightFormat, n: number, k: number): number {
    return this.kernels.packedByteLength(format, n, k);
  }

  /** Rows at which packed weights of `format` can be cut (null: they cannot). */
  packedRowBlock(format: WeightFormat): number | null {
    return this.kernels.packedRowBlock(format);
  }

  private checkMatmul(x: F32, w: AnyWeight | TiledWeight, bias: F32 | null, out: F32 | undefined, ep?: LinearEpilogue): [number, F32] {
    const op = `matmul(${w?.name ?? 'weight'})`;
    expectF32(op, 'x', x);
    if (!(w instanceof PackedWeight) && !(w instanceof RowSplitWeight) && !(w instanceof TiledWeight)) throw new TypeError(`${op}: w must be a PackedWeight`);
    if (w.backend !== this.name) fail(op, `weight was packed by backend '${w.backend}', not '${this.name}'`);
    const [m, k] = rowsCols(x);
    if (k !== w.k) fail(op, `x has ${k} features per row, weight expects ${w.k}`);
    if (bias) {
      expectF32(op, 'bias', bias);
      if (bias.size !== w.n) fail(op, `bias has ${bias.size} elements, expected ${w.n}`);
    }
    const y = outOr(op, out, [...x.shape.slice(0, -1), w.n]);
    if (ep?.activation !== undefined && !MATMUL_ACTIVATIONS.includes(ep.activation)) {
      fail(op, `activation must be 'relu', 'gelu' or 'gelu_tanh', got ${JSON.stringify(ep.activation)}`);
    }
    if (ep?.addTo) {
      expectF32(op, 'addTo', ep.addTo);
      expectShape(op, 'addTo', ep.addTo, y.shape);
      if ([y, x, bias].some((t) => t && sharesMemory(ep.addTo!.data, t.data))) fail(op, 'addTo shares memory with x, bias or out');
    }
    return [m, y];
  }

  /** y = x · Wᵀ + bias over the last dimension of x, then `epilogue` fused (LinearEpilogue: an
   *  activation on y, then y added onto the residual stream), with the separate ops' values. */
  matmul(x: F32, w: AnyWeight | TiledWeight, bias: F32 | null = null, out?: F32, epilogue?: LinearEpilogue): F32 {
    const [m, y] = this.checkMatmul(x, w, bias, out, epilogue);
    const ep: MatmulEpilogue | undefined = epilogue && { activation: epilogue.activation, addTo: epilogue.addTo?.data };
    if (w instanceof PackedWeight) {
      this.kernels.matmul(x.data, m, w.k, w.data, w.format, w.n, bias?.data ?? null, y.data, w.mode, ep);
      return y;
    }
    let col = 0;
    for (const p of w instanceof TiledWeight ? w.parts() : w.parts) {
      const pb = bias?.data.subarray(col, col + p.n) ?? null;
      for (const [r0, r1] of rowChunks(m, p.n)) {
        const part = this.partOutput(r1 - r0, p.n);
        this.kernels.matmul(x.data.subarray(r0 * p.k, r1 * p.k), r1 - r0, p.k, p.data, p.format, p.n, pb, part, p.mode);
        this.placeColumns(y.data.subarray(r0 * w.n, r1 * w.n), w.n, part, p.n, col, r1 - r0);
      }
      col += p.n;
    }
    if (ep) epilogueByOps(this.kernels, y.data, ep);  // (a weight in parts: y is whole only now)
    return y;
  }

  async matmulAsync(x: F32, w: AnyWeight, bias: F32 | null = null, out?: F32): Promise<F32> {
    const [m, y] = this.checkMatmul(x, w, bias, out);
    if (w instanceof PackedWeight) {
      await this.kernels.matmulAsync(x.data, m, w.k, w.data, w.format, w.n, bias?.data ?? null, y.data, w.mode);
      return y;
    }
    let col = 0;
    for (const p of w.parts) {
      const pb = bias?.data.subarray(col, col + p.n) ?? null;
      for (const [r0, r1] of rowChunks(m, p.n)) {
        const part = new Float32Array((r1 - r0) * p.n);  // not the shared scratch: async calls may interleave
        await this.kernels.matmulAsync(x.data.subarray(r0 * p.k, r1 * p.k), r1 - r0, p.k, p.data, p.format, p.n, pb, part, p.mode);
        this.placeColumns(y.data.subarray(r0 * w.n, r1 * w.n), w.n, part, p.n, col, r1 - r0);
      }
      col += p.n;
    }
    return y;
  }

  /** A reused buffer for one part's output (grown as needed). */
  private partOutput(m: number, n: number): Float32Array {
    if (this.scratch.length < m * n) this.scratch = new Float32Array(m * n);
    return this.scratch.subarray(0, m * n);
  }

  private scratch = new Float32Array(0);

  /** y[:, col:col+n] = part[m, n], y having `width` columns. */
  private placeColumns(y: Float32Array, width: number, part: Float32Array, n: number, col: number, m: number): void {
    copyStrided(new Uint8Array(y.buffer, y.byteOffset, y.byteLength), new Uint8Array(part.buffer, part.byteOffset, m * n * 4), {
      run: n * 4, counts: [m, 1], dstOffset: col * 4, dstStrides: [width * 4, 0], srcOffset: 0, srcStrides: [n * 4, 0],
    });
  }

  private checkIds(op: string, ids: Tensor, limit: number): void {
    expectI32(op, 'ids', ids);
    for (let i = 0; i < ids.size; i++) {
      const id = ids.data[i]!;
      if (id < 0 || id >= limit) fail(op, `ids[${i}] = ${id} is outside [0, ${limit})`);
    }
  }

  /** Rows of a packed weight, widened to f32: the lookup of a tied embedding. */
  gatherRows(w: PackedWeight, ids: Tensor<'i32'>, out?: F32): F32 {
    const op = `gatherRows(${w?.name ?? 'weight'})`;
    if (!(w instanceof PackedWeight) || w.backend !== this.name) throw new TypeError(`${op}: w must be a PackedWeight of backend ${this.name}`);
    this.checkIds(op, ids, w.n);
    const y = outOr(op, out, [ids.size, w.k]);
    this.kernels.gatherRows(w.data, w.format, w.n, w.k, ids.data, y.data);
    return y;
  }

  // ---- row-wise -----------------------------------------------------------------------------

  embedding(table: Tensor, ids: Tensor<'i32'>, out?: F32): F32 {
    const op = 'embedding';
    if (!(table instanceof Tensor) || !isFloatDType(table.dtype)) throw new TypeError(`${op}: table must be a float Tensor`);
    expectRank(op, 'table', table, 2);
    const [vocab, dim] = table.shape as [number, number];
    this.checkIds(op, ids, vocab);
    const y = outOr(op, out, [ids.size, dim]);
    this.kernels.embedding(table.data as Float32Array | Uint16Array, table.dtype, vocab, dim, ids.data, y.data);
    return y;
  }

  private checkVector(op: string, name: string, v: Tensor, cols: number): void {
    expectF32(op, name, v);
    if (v.size !== cols) fail(op, `${name} has ${v.size} elements, expected ${cols}`);
  }

  layerNorm(x: F32, gamma: F32, beta: F32 | null, eps: number, out?: F32): F32 {
    const op = 'layerNorm';
    expectF32(op, 'x', x);
    const [rows, cols] = rowsCols(x);
    this.checkVector(op, 'gamma', gamma, cols);
    if (beta) this.checkVector(op, 'beta', beta, cols);
    expectFinite(op, 'eps', eps);
    const y = outOr(op, out, x.shape);
    this.kernels.layerNorm(x.data, rows, cols, gamma.data, beta?.data ?? null, eps, y.data);
    return y;
  }

  rmsNorm(x: F32, gamma: F32, eps: number, out?: F32): F32 {
    const op = 'rmsNorm';
    expectF32(op, 'x', x);
    const [rows, cols] = rowsCols(x);
    this.checkVector(op, 'gamma', gamma, cols);
    expectFinite(op, 'eps', eps);
    const y = outOr(op, out, x.shape);
    this.kernels.rmsNorm(x.data, rows, cols, gamma.data, eps, y.data);
    return y;
  }

  private unary(op: string, x: F32, out: F32 | undefined): F32 {
    expectF32(op, 'x', x);
    return outOr(op, out, x.shape);
  }

  relu(x: F32, out?: F32): F32 {
    const y = this.unary('relu', x, out);
    this.kernels.relu(x.data, y.data);
    return y;
  }

  gelu(x: F32, approximate = false, out?: F32): F32 {
    const y = this.unary('gelu', x, out);
    this.kernels.gelu(x.data, y.data, approximate);
    return y;
  }

  private binary(op: string, a: F32, b: F32, out: F32 | undefined): F32 {
    return checkPair(op, ['a', 'b'], a, b, out);
  }

  siluMul(gate: F32, up: F32, out?: F32): F32 {
    const y = this.binary('siluMul', gate, up, out);
    this.kernels.siluMul(gate.data, up.data, y.data);
    return y;
  }

  add(a: F32, b: F32, out?: F32): F32 {
    const y = this.binary('add', a, b, out);
    this.kernels.add(a.data, b.data, y.data);
    return y;
  }

  softmax(x: F32, out?: F32): F32 {
    const y = this.unary('softmax', x, out);
    const [rows, cols] = rowsCols(x);
    this.kernels.softmax(x.data, rows, cols, y.data);
    return y;
  }

  logSoftmax(x: F32, out?: F32): F32 {
    const y = this.unary('logSoftmax', x, out);
    const [rows, cols] = rowsCols(x);
    this.kernels.logSoftmax(x.data, rows, cols, y.data);
    return y;
  }

  /** In place on x[t, heads, d]: rotates the first 2 · invFreq.length features of each head
   *  (invFreq from ropeInvFreq in src/models/rope.ts). */
  rope(x: F32, positions: Tensor<'i32'>, invFreq: Float64Array): F32 {
    const [t, heads, d, rot] = checkRope('rope', x, positions, invFreq);
    for (let i = 0; i < t; i++) if (positions.data[i]! < 0) fail('rope', `positions[${i}] is negative`);
    this.kernels.rope(x.data, t, heads, d, positions.data, invFreq, rot);
    return x;
  }

  // ---- attention ------------------------------------------------------------------------------

  private checkPrefill(q: F32, k: F32, v: F32, seqStarts: Tensor<'i32'>, out: F32 | undefined): [number, number, number, number, F32] {
    const op = 'attentionPrefill';
    const [t, hq, hkv, d] = checkQkv(op, q, k, v);
    checkSeqStarts(op, seqStarts, t);
    return [t, hq, hkv, d, outOr(op, out, [t, hq, d])];
  }

  /** Causal attention within each sequence of a ragged batch; see Kernels.attentionPrefill. */
  attentionPrefill(q: F32, k: F32, v: F32, seqStarts: Tensor<'i32'>, scale: number, out?: F32): F32 {
    const [t, hq, hkv, d, y] = this.checkPrefill(q, k, v, seqStarts, out);
    expectFinite('attentionPrefill', 'scale', scale);
    this.kernels.attentionPrefill(q.data, k.data, v.data, t, hq, hkv, d, seqStarts.data, scale, y.data);
    return y;
  }

  async attentionPrefillAsync(q: F32, k: F32, v: F32, seqStarts: Tensor<'i32'>, scale: number, out?: F32): Promise<F32> {
    const [t, hq, hkv, d, y] = this.checkPrefill(q, k, v, seqStarts, out);
    expectFinite('attentionPrefill', 'scale', scale);
    await this.kernels.attentionPrefillAsync(q.data, k.data, v.data, t, hq, hkv, d, seqStarts.data, scale, y.data);
    return y;
  }

  /** f32 / f16 caches: [b, hkv, cap, d]; a 'u8' tensor is a q4 cache, [b, hkv, cap, q4RecordBytes(d)]. */
  private checkCache(op: string, name: string, c: Tensor): CacheDType {
    if (!(c instanceof Tensor) || (c.dtype !== 'f32' && c.dtype !== 'f16' && c.dtype !== 'u8')) {
      throw new TypeError(`${op}: ${name} must be an f32 or f16 Tensor (or u8 for a q4 cache)`);
    }
    expectRank(op, name, c, 4);
    return c.dtype === 'u8' ? 'q4' : c.dtype;
  }

  private checkSparsity(op: string, sparsity: number): void {
    if (typeof sparsity !== 'number' || !(sparsity > 0 && sparsity <= 1)) fail(op, `sparsity must be in (0, 1], got ${sparsity}`);
  }

  private checkDecode(q: F32, kCache: Tensor, vCache: Tensor, lens: Tensor<'i32'>, out: F32 | undefined) {
    const op = 'attentionDecode';
    expectF32(op, 'q', q);
    expectRank(op, 'q', q, 3);
    const dtype = this.checkCache(op, 'kCache', kCache);
    if (this.checkCache(op, 'vCache', vCache) !== dtype) fail(op, 'kCache and vCache must share a dtype');
    const [b, hq, d] = q.shape as [number, number, number];
    const [cb, hkv, cap, cd] = kCache.shape as [number, number, number, number];
    const want = dtype === 'q4' ? q4RecordBytes(d) : d;
    if (cb !== b || cd !== want) {
      fail(op, `kCache has shape ${shapeString(kCache.shape)}, expected [${b}, hkv, cap, ${want}]${dtype === 'q4' ? ` (q4 records of head size ${d})` : ''}`);
    }
    expectShape(op, 'vCache', vCache, kCache.shape);
    if (hkv < 1 || hq % hkv !== 0) fail(op, `${hq} query heads cannot be grouped over ${hkv} key/value heads`);
    expectI32(op, 'lens', lens, b);
    for (let i = 0; i < b; i++) {
      const n = lens.data[i]!;
      if (n < 1 || n > cap) fail(op, `lens[${i}] = ${n} is outside [1, ${cap}]`);
    }
    return { dtype, b, hq, hkv, d, cap, y: outOr(op, out, [b, hq, d]) };
  }

  /** One new token per sequence against its KV cache; see Kernels.attentionDecode. sparsity in
   *  (0, 1]: 1 is dense attention, below 1 each query head attends to its top-scoring positions. */
  attentionDecode(q: F32, kCache: Tensor, vCache: Tensor, lens: Tensor<'i32'>, scale: number, out?: F32, sparsity = 1): F32 {
    const c = this.checkDecode(q, kCache, vCache, lens, out);
    expectFinite('attentionDecode', 'scale', scale);
    this.checkSparsity('attentionDecode', sparsity);
    this.kernels.attentionDecode(q.data, kCache.data as CacheArray, vCache.data as CacheArray,
      c.dtype, c.b, c.hq, c.hkv, c.d, c.cap, lens.data, scale, c.y.data, sparsity);
    return c.y;
  }

  async attentionDecodeAsync(q: F32, kCache: Tensor, vCache: Tensor, lens: Tensor<'i32'>, scale: number, out?: F32, sparsity = 1): Promise<F32> {
    const c = this.checkDecode(q, kCache, vCache, lens, out);
    expectFinite('attentionDecode', 'scale', scale);
    this.checkSparsity('attentionDecode', sparsity);
    await this.kernels.attentionDecodeAsync(q.data, kCache.data as CacheArray, vCache.data as CacheArray,
      c.dtype, c.b, c.hq, c.hkv, c.d, c.cap, lens.data, scale, c.y.data, sparsity);
    return c.y;
  }

  /** Each token of q[t,hq,d] against its own cache row: token i attends to positions
   *  0..lens[i]-1 of row rows[i] of kCache/vCache [b,hkv,cap,..] (any b), as attentionDecode does
   *  for that row and length. A prompt's later chunk (its keys written first) is one call.
   *  `append` {k, v} ([t,hkv,d] each; one token a row): a decode step's own keys and values, written
   *  at position lens[i]-1 of row rows[i] first, as cacheWriteTokens writes them (the same cache
   *  bytes and errors; nothing is written when one is refused) — fused, so each write's miss
   *  overlaps attention's read of the cache. */
  attentionCached(q: F32, kCache: Tensor, vCache: Tensor, rows: Tensor<'i32'>, lens: Tensor<'i32'>, scale: number, out?: F32, sparsity = 1,
    append?: { k: F32; v: F32 }): F32 {
    const op = 'attentionCached';
    expectF32(op, 'q', q);
    expectRank(op, 'q', q, 3);
    const dtype = this.checkCache(op, 'kCache', kCache);
    if (this.checkCache(op, 'vCache', vCache) !== dtype) fail(op, 'kCache and vCache must share a dtype');
    const [t, hq, d] = q.shape as [number, number, number];
    const [b, hkv, cap, cd] = kCache.shape as [number, number, number, number];
    const want = dtype === 'q4' ? q4RecordBytes(d) : d;
    if (cd !== want) fail(op, `kCache has shape ${shapeString(kCache.shape)}, expected [b, hkv, cap, ${want}]`);
    expectShape(op, 'vCache', vCache, kCache.shape);
    if (hkv < 1 || hq % hkv !== 0) fail(op, `${hq} query heads cannot be grouped over ${hkv} key/value heads`);
    for (const [name, x] of [['rows', rows], ['lens', lens]] as const) {
      expectI32(op, name, x, t);
    }
    for (let i = 0; i < t; i++) {
      const r = rows.data[i]!, n = lens.data[i]!;
      if (r < 0 || r >= b) fail(op, `rows[${i}] = ${r} is outside [0, ${b})`);
      if (n < 1 || n > cap) fail(op, `lens[${i}] = ${n} is outside [1, ${cap}]`);
    }
    expectFinite(op, 'scale', scale);
    this.checkSparsity(op, sparsity);
    const y = outOr(op, out, [t, hq, d]);
    if (append) {
      for (const [name, x] of [['append.k', append.k], ['append.v', append.v]] as const) {
        expectF32(op, name, x);
        expectShape(op, name, x, [t, hkv, d]);
        if ([kCache, vCache].some((c) => sharesMemory(x.data, c.data))) fail(op, `${name} shares memory with the cache`);
      }
      const seen = new Set<number>();
      for (let i = 0; i < t; i++) {
        const r = rows.data[i]!;
        if (seen.has(r)) fail(op, `rows[${i}] = ${r} repeats an earlier token's row: keys and values appended in the call need one token a row`);
        seen.add(r);
      }
    }
    this.kernels.attentionCached(q.data, kCache.data as CacheArray, vCache.data as CacheArray, dtype, t, hq, hkv, d, b, cap,
      rows.data, lens.data, scale, y.data, sparsity, append?.k.data, append?.v.data);
    return y;
  }

  /** Writes src[t,hkv,d] into cache[b,hkv,cap,d] at batch row `row`, positions pos..pos+t-1.
   *  A q4 cache (u8, [b,hkv,cap,q4RecordBytes(d)]) takes d from src and quantizes each row. */
  cacheWrite(cache: Tensor, src: F32, row: number, pos: number): void {
    const op = 'cacheWrite';
    expectInt(op, 'row', row, 0);
    expectInt(op, 'pos', pos, 0);
    const t = src.shape[0] ?? 0;
    const [b, , cap] = cache.shape as [number, number, number, number];
    if (t > 0 && row >= b) fail(op, `row ${row} is outside the cache's ${b} rows`);
    if (pos + t > cap) fail(op, `positions ${pos}..${pos + t - 1} overrun the cache capacity ${cap}`);
    const positions = new Int32Array(t);
    for (let i = 0; i < t; i++) positions[i] = pos + i;
    this.cacheWriteTokens(cache, src, new Tensor('i32', [t], new Int32Array(t).fill(row)), new Tensor('i32', [t], positions));
  }

  /** Writes token i of src[t,hkv,d] into cache[b,hkv,cap,d] at batch row rows[i], position
   *  positions[i]: a step's tokens of every sequence in one call. */
  cacheWriteTokens(cache: Tensor, src: F32, rows: Tensor<'i32'>, positions: Tensor<'i32'>): void {
    const op = 'cacheWrite';
    const dtype = this.checkCache(op, 'cache', cache);
    const [b, hkv, cap, cd] = cache.shape as [number, number, number, number];
    expectF32(op, 'src', src);
    expectRank(op, 'src', src, 3);
    const t = src.shape[0]!;
    let d = cd;
    if (dtype === 'q4') {
      d = src.shape[2]!;
      expectShape(op, 'src', src, [t, hkv, d]);
      if (cd !== q4RecordBytes(d)) fail(op, `cache has shape ${shapeString(cache.shape)}, expected [${b}, ${hkv}, ${cap}, ${q4RecordBytes(d)}] (q4 records of head size ${d})`);
    } else {
      expectShape(op, 'src', src, [t, hkv, d]);
    }
    for (const [name, x] of [['rows', rows], ['positions', positions]] as const) {
      expectI32(op, name, x, t);
    }
    for (let i = 0; i < t; i++) {
      const r = rows.data[i]!, p = positions.data[i]!;
      if (r < 0 || r >= b) fail(op, `rows[${i}] = ${r} is outside the cache's ${b} rows`);
      if (p < 0 || p >= cap) fail(op, `positions[${i}] = ${p} overruns the cache capacity ${cap}`);
    }
    this.kernels.cacheWrite(cache.data as CacheArray, dtype, b, hkv, cap, d, src.data, t, rows.data, positions.data);
  }
}
