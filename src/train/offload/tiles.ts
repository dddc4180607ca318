// Memory-centric tiling (ZeRO-Infinity): a linear weight too large for what the RAM limit leaves is
// never whole in RAM. Its forward multiplies row tiles of W, its input gradient column tiles (rows
// of Wᵀ), and its weight gradient accumulates into row tiles of dW, each read from where the state
// lives (a view of its RAM tensor, or the kind's file, synchronously: a tile is needed in the middle
// of the layer's compute) into one reused buffer, and dW's tiles written back as each is done.
// Every output element is the same sum as without tiles, so the results are equal bit for bit.
//
// A column tile of W on disk is spread over all of W's rows: gathered from W itself, every tile
// read the whole weight (24 times OPT-125m's head a backward). So the first pass over W that a
// backward makes after the parameters change (a layer's recompute, the head's first chunk) also
// writes W's columns, tile by tile, to a transposed copy (weightT.bin beside the state files);
// the input gradient's tiles are then one contiguous read each, W read once more in all. The
// copy is valid until the next step (zeroGrad: the optimizer changes W between steps, never
// within one).
//
// The bytes moved are counted with the store's transfers (States.io, as synchronous transfers
// the compute waited for): the step cost model predicts them (./cost.ts, tileTraffic).

import fs from 'node:fs';
import { type Backend, type PackedWeight, weightFormatFor } from '../../backend/backend.js';
import type { ComputeMode } from '../../backend/index.js';
import { TiledGrad, TiledWeight } from '../../backend/tiled.js';
import { Tensor } from '../../tensor/tensor.js';
import { toFloat32 } from '../../tensor/dtype.js';
import { copyStrided } from '../../tensor/copy.js';
import type { TableRows } from '../params.js';
import { type StateKind, kindBytes } from './layout.js';
import type { States } from './states.js';
import { writeFully } from '../../util/write-fully.js';
import { alignUp } from '../../tensor/disk/io.js';
import type { Phase } from './stats.js';

/** Elements native sumSquares sums per partial (kChunk in native/kernels/optim_generic.cpp). */
const SUM_CHUNK = 1 << 16;

/** Bytes of whole rows read at once for a tile of a weight's columns (TileIo.readColumns; at
 *  least one row), and of a piece written to a transposed copy: a small fixed buffer, beside the
 *  tile itself. */
const ROW_BLOCK_BYTES = 256 << 10;

/** The transposed copies' file in the state directory, and the name its bytes are counted under. */
export const WEIGHT_T_FILE = 'weightT.bin';
export const WEIGHT_T_KIND = 'weightT';

/** Rows per tile of a [rows, cols] matrix of `elemBytes`: a multiple of the GEMM's row block, so
 *  at least one block (a tile of Wᵀ is n × 32 of a weight [n, k] however small tileBytes is). */
export function tileRows(rows: number, cols: number, elemBytes: number, block: number, tileBytes: number): number {
  const fit = Math.max(1, Math.floor(tileBytes / (cols * elemBytes)));
  return Math.min(rows, Math.max(block, Math.floor(fit / block) * block));
}

/** The CPU GEMM's packed row block (src/backend/cpu/gemm.ts), which the planners assume. */
export const PLANNED_ROW_BLOCK = 32;

/** RAM a TileIo holds for weights of these shapes [n, k] (compute elements of `eb` bytes): the raw
 *  tile buffer (a row tile of W, a column tile, or a gradient tile, in turn), the two packings
 *  (W's row tile and Wᵀ's, f32 at most) and the row block buffer. */
export function tileBufferBytes(shapes: readonly (readonly number[])[], eb: number, tileBytes: number, block = PLANNED_ROW_BLOCK): number {
  let raw = 0, packW = 0, packT = 0, rowBlock = ROW_BLOCK_BYTES;
  for (const [n, k] of shapes as [number, number][]) {
    const rows = tileRows(n, k, eb, block, tileBytes), cols = tileRows(k, n, eb, block, tileBytes), gradRows = tileRows(n, k, 4, 1, tileBytes);
    raw = Math.max(raw, rows * k * eb, n * cols * eb, gradRows * k * 4);
    packW = Math.max(packW, rows * k * 4);
    packT = Math.max(packT, cols * n * 4);
    rowBlock = Math.max(rowBlock, k * eb);
  }
  // (Σ g² reads the gradient through the raw buffer in chunks of SUM_CHUNK)
  return Math.max(raw, SUM_CHUNK * 4) + packW + packT + rowBlock;
}

export class TileIo {
  private readonly fds = new Map<string, number>();
  private raw = new Uint8Array(0);
  private readonly packs = new Map<string, Uint8Array>();
  /** Per tiled parameter whose compute copy is on disk: the byte offset of its transposed copy. */
  private readonly tOffsets = new Map<number, number>();
  /** The step the transposed copy of a parameter was written in (see zeroGrad). */
  private readonly tWritten = new Map<number, number>();
  private step = 0;

  constructor(private readonly states: States, private readonly backend: Backend, private readonly mode: ComputeMode,
    /** Bytes of W (in the compute kind) per tile. */
    readonly tileBytes: number,
    /** The phase transfers are counted under (the store's). */
    private readonly phase: () => Phase) {
    const layout = states.layout;
    let at = 0;
    for (const p of layout.params) {
      if (!layout.hasTransposedCopy(p.index)) continue;
      this.tOffsets.set(p.index, at);
      at += alignUp(p.size * kindBytes(layout.computeKind));
    }
    if (at > 0) {
      const fd = fs.openSync(this.path(WEIGHT_T_KIND), 'w+');
      this.fds.set(WEIGHT_T_KIND, fd);
      fs.ftruncateSync(fd, at);
    }
  }

  private path(kind: string): string {
    return kind === WEIGHT_T_KIND ? `${this.states.dir}/${WEIGHT_T_FILE}` : this.states.path(kind as StateKind);
  }

  private fd(kind: string): number {
    let fd = this.fds.get(kind);
    if (fd === undefined) this.fds.set(kind, (fd = fs.openSync(this.path(kind), 'r+')));
    return fd;
  }

  /** Bytes [at, at + dst.byteLength) of parameter `index`'s `kind`, from RAM or its file. */
  read(kind: StateKind, index: number, at: number, dst: Uint8Array): void {
    const r = this.states.residentTensor(kind, index);
    if (r) {
      dst.set(new Uint8Array(r.data.buffer, r.data.byteOffset + at, dst.byteLength));
      return;
    }
    this.readFile(kind, this.states.layout.offsets[kind][index]! + at, dst, index);
  }

  private readFile(kind: string, at: number, dst: Uint8Array, index: number): void {
    const t0 = performance.now();
    for (let done = 0; done < dst.byteLength;) {
      const n = fs.readSync(this.fd(kind), dst, done, dst.byteLength - done, at + done);
      if (n === 0) throw new Error(`${this.path(kind)}: ends inside parameter ${this.states.layout.params[index]!.name}`);
      done += n;
    }
    this.states.io.counted(this.phase(), kind, 'read', dst.byteLength, t0, performance.now());
  }

  write(kind: StateKind, index: number, at: number, src: Uint8Array): void {
    const r = this.states.residentTensor(kind, index);
    if (r) {
      new Uint8Array(r.data.buffer, r.data.byteOffset + at, src.byteLength).set(src);
      return;
    }
    this.writeFile(kind, this.states.layout.offsets[kind][index]! + at, src);
  }

  private writeFile(kind: string, at: number, src: Uint8Array): void {
    const t0 = performance.now();
    writeFully(this.fd(kind), src, this.path(kind), at);
    this.states.io.counted(this.phase(), kind, 'write', src.byteLength, t0, performance.now());
  }

  private buffer(bytes: number): Uint8Array {
    if (this.raw.byteLength < bytes) this.raw = new Uint8Array(bytes);
    return this.raw.subarray(0, bytes);
  }

  private tileRows(rows: number, cols: number, elemBytes: number, block: number): number {
    return tileRows(rows, cols, elemBytes, block, this.tileBytes);
  }

  /** Packs into a buffer kept per key, grown when a tile needs more. */
  private pack(key: string, bytes: number, pack: (into: Uint8Array) => PackedWeight): PackedWeight {
    let into = this.packs.get(key);
    if (!into || into.byteLength < bytes) this.packs.set(key, (into = this.backend.kernels.packedBuffer(bytes)));
    return pack(into);
  }

  /** Columns of W [n, k] per tile of Wᵀ: a multiple of the GEMM's row block. */
  private colTile(n: number, k: number, eb: number, dtype: 'f32' | 'bf16'): number {
    return this.tileRows(k, n, eb, this.backend.packedRowBlock(this.format(dtype)) ?? 1);
  }

  /** W [n, k] of parameter `index` (compute kind `kind`) for y = x·Wᵀ, in row tiles. `backward`:
   *  the pass goes on to the input gradient, so (once a step) W's columns go to its transposed copy
   *  as each row tile passes. */
  weight(kind: StateKind, index: number, name: string, backward = false): TiledWeight {
    const [n, k] = this.states.layout.params[index]!.shape as [number, number];
    const eb = kindBytes(kind), dtype = kind === 'param' ? 'bf16' : 'f32';
    const rows = this.tileRows(n, k, eb, this.backend.packedRowBlock(this.format(dtype)) ?? 1);
    const self = this;
    return new TiledWeight(this.backend.name, n, k, function* () {
      const copy = backward && self.tOffsets.has(index) && self.tWritten.get(index) !== self.step;
      for (let r0 = 0; r0 < n; r0 += rows) {
        const r1 = Math.min(n, r0 + rows);
        const bytes = self.buffer((r1 - r0) * k * eb);
        self.read(kind, index, r0 * k * eb, bytes);
        if (copy) self.writeColumns(index, [n, k], r0, r1, eb, self.colTile(n, k, eb, dtype), bytes);
        const t = new Tensor(dtype, [r1 - r0, k], dtype === 'bf16' ? new Uint16Array(bytes.buffer, bytes.byteOffset, (r1 - r0) * k) : new Float32Array(bytes.buffer, bytes.byteOffset, (r1 - r0) * k));
        const f = self.format(dtype);
        yield self.pack('w', self.backend.packedByteLength(f, r1 - r0, k), (into) => self.backend.packWeight(t, self.mode, name, { into }));
      }
      // Only a whole pass makes the copy whole (a pass left midway by an error does not).
      if (copy) self.tWritten.set(index, self.step);
    }, name);
  }

  /** Rows [r0, r1) of W (`rows`, [r1 − r0, k]) into its transposed copy: the copy holds W's
   *  column tiles one after another, tile [c0, c1) as [n, c1 − c0] row-major, so these rows of
   *  each tile are contiguous, written in pieces of ROW_BLOCK_BYTES at most (through the buffer
   *  readColumns uses: the two never run at once). */
  private writeColumns(index: number, [n, k]: [number, number], r0: number, r1: number, eb: number, cols: number, rows: Uint8Array): void {
    const base = this.tOffsets.get(index)!;
    for (let c0 = 0; c0 < k; c0 += cols) {
      const w = Math.min(k, c0 + cols) - c0, run = w * eb;
      const per = Math.max(1, Math.floor(ROW_BLOCK_BYTES / run));
      for (let a = r0; a < r1; a += per) {
        const h = Math.min(r1, a + per) - a;
        const out = this.rowBuffer(h * run);
        copyStrided(out, rows, { run, counts: [h, 1], dstOffset: 0, dstStrides: [run, 0], srcOffset: (a - r0) * k * eb + c0 * eb, srcStrides: [k * eb, 0] });
        this.writeFile(WEIGHT_T_KIND, base + (c0 * n + a * w) * eb, out);
      }
    }
  }

  /** Wᵀ for dx = dy·W, in tiles of W's columns (rows of Wᵀ): from the transposed copy when this
   *  step's is whole, else gathered from W's rows. */
  weightT(kind: StateKind, index: number, name: string): TiledWeight {
    const [n, k] = this.states.layout.params[index]!.shape as [number, number];
    const eb = kindBytes(kind), dtype = kind === 'param' ? 'bf16' : 'f32';
    const cols = this.colTile(n, k, eb, dtype);
    const self = this;
    return new TiledWeight(this.backend.name, k, n, function* () {
      const copied = self.tWritten.get(index) === self.step;
      for (let c0 = 0; c0 < k; c0 += cols) {
        const c1 = Math.min(k, c0 + cols), w = c1 - c0;
        const bytes = self.buffer(n * w * eb);
        if (copied) self.readFile(WEIGHT_T_KIND, self.tOffsets.get(index)! + c0 * n * eb, bytes, index);
        else self.readColumns(kind, index, [n, k], c0, c1, eb, bytes);
        const t = new Tensor(dtype, [n, w], dtype === 'bf16' ? new Uint16Array(bytes.buffer, bytes.byteOffset, n * w) : new Float32Array(bytes.buffer, bytes.byteOffset, n * w));
        const f = self.format(dtype);
        yield self.pack('wT', self.backend.packedByteLength(f, w, n), (into) => self.backend.packWeightT(t, self.mode, name, { into }));
      }
    }, `${name}ᵀ`);
  }

  /** Columns [c0, c1) of parameter `index`'s `kind`, a [n, k] matrix of `eb`-byte elements, into
   *  dst [n, c1 - c0]. From its file in blocks of whole rows (ROW_BLOCK_BYTES, one read each),
   *  the columns copied out: a read per row cost 50,272 system calls a tile of OPT-125m's head,
   *  6.4 s of a 13.5 s two-step run. A page of a row's columns holds its others too, so the
   *  whole rows cost the disk no more pages than the columns alone did. */
  private readColumns(kind: StateKind, index: number, [n, k]: [number, number], c0: number, c1: number, eb: number, dst: Uint8Array): void {
    const rowBytes = k * eb, run = (c1 - c0) * eb;
    const copy = (src: Uint8Array, rows: number, at: number) => copyStrided(dst, src, {
      run, counts: [rows, 1], dstOffset: at * run, dstStrides: [run, 0], srcOffset: c0 * eb, srcStrides: [rowBytes, 0],
    });
    const r = this.states.residentTensor(kind, index);
    if (r) return copy(new Uint8Array(r.data.buffer, r.data.byteOffset, n * rowBytes), n, 0);
    const rows = Math.max(1, Math.floor(ROW_BLOCK_BYTES / rowBytes));
    for (let r0 = 0; r0 < n; r0 += rows) {
      const r1 = Math.min(n, r0 + rows);
      const block = this.rowBuffer((r1 - r0) * rowBytes);
      this.read(kind, index, r0 * rowBytes, block);
      copy(block, r1 - r0, r0);
    }
  }

  private rowBlock = new Uint8Array(0);

  private rowBuffer(bytes: number): Uint8Array {
    if (this.rowBlock.byteLength < bytes) this.rowBlock = new Uint8Array(bytes);
    return this.rowBlock.subarray(0, bytes);
  }

  /** dW [n, k] of parameter `index` in row tiles: zeros when `zero` (the step's first micro-batch)
   *  and the tile was not written since zeroGrad(), else read; written back after each. A tied
   *  embedding's gradient gets two passes (the head's, the embedding's), a head's one per chunk of
   *  logits rows: the later passes read what the earlier wrote. */
  grad(index: number, zero: boolean): TiledGrad {
    const [n, k] = this.states.layout.params[index]!.shape as [number, number];
    const rows = this.tileRows(n, k, 4, 1);
    const self = this;
    return new TiledGrad(n, k, function* () {
      for (let r0 = 0; r0 < n; r0 += rows) {
        const r1 = Math.min(n, r0 + rows);
        const bytes = self.buffer((r1 - r0) * k * 4);
        const key = `${index}:${r0}`;
        if (zero && !self.written.has(key)) bytes.fill(0);
        else self.read('grad', index, r0 * k * 4, bytes);
        yield { r0, r1, dw: new Tensor('f32', [r1 - r0, k], new Float32Array(bytes.buffer, bytes.byteOffset, (r1 - r0) * k)) };
        self.write('grad', index, r0 * k * 4, bytes);
        self.written.add(key);
      }
    });
  }

  /** Gradient tiles written since the step began (see grad()). */
  private readonly written = new Set<string>();

  /** Before a step's first micro-batch: the optimizer has changed W since the transposed copies
   *  were written. */
  zeroGrad(): void {
    this.written.clear();
    this.step++;
  }

  /** An embedding table [n, k] of parameter `index` (compute kind `kind`) read row by row: each
   *  token's row read and widened to f32, as Backend.embedding copies it from a whole table. */
  table(kind: StateKind, index: number): TableRows {
    const [n, k] = this.states.layout.params[index]!.shape as [number, number];
    const eb = kindBytes(kind);
    return {
      rows: n, cols: k,
      gather: (ids, out) => {
        const bytes = this.buffer(k * eb);
        for (let t = 0; t < ids.size; t++) {
          const id = ids.data[t]!;
          if (id < 0 || id >= n) throw new RangeError(`embedding: ids[${t}] = ${id} is outside [0, ${n})`);
          this.read(kind, index, id * k * eb, bytes);
          const row = out.data.subarray(t * k, (t + 1) * k);
          if (kind === 'param') row.set(toFloat32('bf16', new Uint16Array(bytes.buffer, bytes.byteOffset, k), false));
          else row.set(new Float32Array(bytes.buffer, bytes.byteOffset, k));
        }
        return out;
      },
    };
  }

  /** Σ g² of parameter `index`'s gradient exactly as native sumSquares sums a whole array: its
   *  partials over chunks of SUM_CHUNK elements, added in order. */
  sumSquares(index: number): number {
    const size = this.states.layout.params[index]!.size;
    let s = 0;
    for (let e0 = 0; e0 < size; e0 += SUM_CHUNK) {
      const n = Math.min(SUM_CHUNK, size - e0);
      const bytes = this.buffer(n * 4);
      this.read('grad', index, e0 * 4, bytes);
      s += this.backend.train.sumSquares(new Tensor('f32', [n], new Float32Array(bytes.buffer, bytes.byteOffset, n)));
    }
    return s;
  }

  private format(dtype: 'f32' | 'bf16') {
    return weightFormatFor(dtype, this.mode);
  }

  close(): void {
    for (const fd of this.fds.values()) fs.closeSync(fd);
    this.fds.clear();
  }
}
