// The KV cache of a generation block (numBatches batches of rows sequences) placed across RAM
// and disk by the policy's shares. A cache block is one layer × one batch:
// K and V of [rows, kvHeads, capacity, headDim]. Rows of all blocks, in (layer, batch, row)
// order, are cut by the shares, so only one block can be split between RAM and disk.
//
// On disk each row is a run of position records — K then V of one position, [kvHeads, headDim]
// each, padded to 4096 bytes — so appending a token writes one aligned record and a decode step
// reads each row's filled positions in one request. Blocks with disk rows are assembled in a
// staging block for compute and written back after it.

import { type CacheDType, cacheRowLength, cacheTensorDType } from '../backend/kernels.js';
import type { ModelConfig } from '../models/config.js';
import type { CacheBlock } from '../models/transformer.js';
import type { Shares } from '../policy/policy.js';
import { copyStrided } from '../tensor/copy.js';
import { Tensor } from '../tensor/tensor.js';
import type { BlockFile } from './block-file.js';
import { CacheBuffers, type CacheTensorDType } from './cache-buffers.js';
import { alignedBytes } from './block-file.js';
import { alignUp, blockRamRows } from './placement.js';
import { settleAll } from './transfers.js';

interface Block {
  /** Rows kept in RAM: the first ramRows of the block. */
  ramRows: number;
  /** Resident tensors: the whole block when it has no disk rows, else only its RAM rows. */
  k: Tensor<CacheTensorDType> | null;
  v: Tensor<CacheTensorDType> | null;
  /** Offset of the block's disk rows in the cache file. */
  fileOffset: number;
}

export interface CacheStats {
  ramBytes: number;
  diskBytes: number;
  bytesRead: number;
  bytesWritten: number;
}

export class CacheStore {
  readonly stats: CacheStats = { ramBytes: 0, diskBytes: 0, bytesRead: 0, bytesWritten: 0 };
  private readonly blocks: Block[] = [];
  private readonly elem: number;
  /** Elements of one (row, head, position) entry: headDim, or a q4 record's bytes. */
  private readonly rowLength: number;
  private readonly headBytes: number;
  /** Bytes of one position record on disk (K and V of one position, padded). */
  readonly recordBytes: number;
  /** Positions filled per row of each batch (shared by all layers). */
  readonly lengths: Int32Array[];

  constructor(
    private readonly config: ModelConfig,
    readonly numBatches: number,
    readonly rows: number,
    readonly capacity: number,
    readonly dtype: CacheDType,
    shares: Shares,
    private readonly file: BlockFile | null,
    buffers: CacheBuffers = new CacheBuffers(),
  ) {
    this.elem = dtype === 'f32' ? 4 : dtype === 'f16' ? 2 : 1;
    this.rowLength = cacheRowLength(dtype, config.headDim);
    this.headBytes = config.kvHeads * this.rowLength * this.elem;
    this.recordBytes = alignUp(2 * this.headBytes);
    this.lengths = Array.from({ length: numBatches }, () => new Int32Array(rows));
    let fileOffset = 0;
    const blockShape = (r: number) => [r, config.kvHeads, capacity, this.rowLength];
    const tensorDtype = cacheTensorDType(dtype);
    const ramRowsOf = blockRamRows(config.layers * numBatches, rows, shares);
    const size = (r: number) => blockShape(r).reduce((a, b) => a * b, 1);
    buffers.dropUnless(ramRowsOf.filter((r) => r > 0).flatMap((r) => [{ dtype: tensorDtype, size: size(r) }, { dtype: tensorDtype, size: size(r) }]));
    for (const ramRows of ramRowsOf) {
      const diskRows = rows - ramRows;
      if (diskRows > 0 && !file) throw new Error('cache rows placed on disk, but no disk tier was given');
      const k = ramRows > 0 ? buffers.take(tensorDtype, blockShape(ramRows)) : null;
      const v = ramRows > 0 ? buffers.take(tensorDtype, blockShape(ramRows)) : null;
      this.blocks.push({ ramRows, k, v, fileOffset });
      fileOffset += diskRows * capacity * this.recordBytes;
      this.stats.ramBytes += 2 * ramRows * capacity * this.headBytes;
      this.stats.diskBytes += diskRows * capacity * this.recordBytes;
    }
    file?.reserve(fileOffset);
  }

  /** Hands the RAM tensors of every block to `buffers`, for the next block, once this one is done. */
  keepBuffers(buffers: CacheBuffers): void {
    buffers.keep(this.blocks.flatMap((b) => (b.k && b.v ? [b.k, b.v] : [])),
      { rows: this.rows, batches: this.numBatches, capacity: this.capacity, cacheDtype: this.dtype });
  }

  private block(layer: number, batch: number): Block {
    return this.blocks[layer * this.numBatches + batch]!;
  }

  /** Whether any block has rows on disk. */
  needsStagingAny(): boolean {
    return this.blocks.some((b) => b.ramRows < this.rows);
  }

  newStaging(): CacheStaging {
    const shape = [this.rows, this.config.kvHeads, this.capacity, this.rowLength];
    const dt = cacheTensorDType(this.dtype);
    // A buffer a row: one for the block would pass a typed array's 4 GiB at long contexts.
    return { k: Tensor.zeros(dt, shape), v: Tensor.zeros(dt, shape), records: Array.from({ length: this.rows }, () => alignedBytes(this.capacity * this.recordBytes)) };
  }

  /**
   * The cache block of (layer, batch) ready for compute. A block wholly in RAM is returned as it
   * is; otherwise `staging` is filled with its RAM rows and, in decode, the filled positions of
   * the disk rows that are still running (`running`, ascending; every row when not given).
   */
  async load(layer: number, batch: number, staging: CacheStaging | null, decode: boolean, running?: Int32Array): Promise<CacheBlock> {
    const ram = this.inRam(layer, batch);
    if (ram) return ram;
    const b = this.block(layer, batch);
    if (!staging) throw new Error('a cache block on disk needs a staging block');
    if (b.ramRows > 0) {
      // by element, as the tensors' own arrays: byte views of a block over 4 GiB cannot be made
      staging.k.data.set(b.k!.data);
      staging.v.data.set(b.v!.data);
    }
    if (!decode) return staging; // prefill writes every position it uses
    const lens = this.lengths[batch]!;
    const diskRows = (running ?? Int32Array.from({ length: this.rows }, (_, r) => r)).filter((r) => r >= b.ramRows && lens[r]! > 0);
    const reads: Promise<void>[] = [];
    const rowRecords = this.capacity * this.recordBytes;
    for (const r of diskRows) {
      const d = r - b.ramRows;
      const dst = staging.records[d]!.subarray(0, lens[r]! * this.recordBytes);
      reads.push(this.file!.read(dst, b.fileOffset + d * rowRecords));
      this.stats.bytesRead += dst.byteLength;
    }
    await settleAll(reads);
    for (const r of diskRows) this.unpack(staging, r, r - b.ramRows, 0, lens[r]!);
    return staging;
  }

  /** The cache block of (layer, batch) when all its rows are in RAM (compute uses it where it
   *  is, and nothing needs storing after); else null. */
  inRam(layer: number, batch: number): CacheBlock | null {
    const b = this.block(layer, batch);
    return b.ramRows === this.rows ? { k: b.k!, v: b.v! } : null;
  }

  /**
   * After compute: keeps the block's new positions. RAM rows are copied back from staging, disk
   * rows write their records: positions [from, to) of each row (all filled ones after prefill,
   * the new one after a decode step).
   */
  async store(layer: number, batch: number, staging: CacheStaging | null, positions: { from: Int32Array; to: Int32Array }): Promise<void> {
    const b = this.block(layer, batch);
    if (b.ramRows === this.rows || !staging) return;
    if (b.ramRows > 0) {
      b.k!.data.set(staging.k.data.subarray(0, b.k!.size));
      b.v!.data.set(staging.v.data.subarray(0, b.v!.size));
    }
    const writes: Promise<void>[] = [];
    const rowRecords = this.capacity * this.recordBytes;
    for (let r = b.ramRows; r < this.rows; r++) {
      const from = positions.from[r]!;
      const to = positions.to[r]!;
      if (to <= from) continue;
      const d = r - b.ramRows;
      this.pack(staging, r, d, from, to);
      const src = staging.records[d]!.subarray(from * this.recordBytes, to * this.recordBytes);
      writes.push(this.file!.write(src, b.fileOffset + d * rowRecords + from * this.recordBytes));
      this.stats.bytesWritten += src.byteLength;
    }
    await settleAll(writes);
  }

  /** records of disk row d, positions [from, to) → staging row r ([kvHeads, capacity, headDim] layout). */
  private unpack(s: CacheStaging, r: number, d: number, from: number, to: number): void {
    this.transpose(s, r, d, from, to, false);
  }

  private pack(s: CacheStaging, r: number, d: number, from: number, to: number): void {
    this.transpose(s, r, d, from, to, true);
  }

  /** Re-lays positions [from, to) of row r between its disk records (row d of the records) and the staging tensors. */
  private transpose(s: CacheStaging, r: number, d: number, from: number, to: number, toRecords: boolean): void {
    if (to <= from) return;
    const { kvHeads } = this.config;
    const headRun = this.rowLength * this.elem;
    const recordsAt = from * this.recordBytes;
    // (head, position): in the tensors [.., heads, capacity, headDim], through a view of row r (a
    // byte view of the whole tensor fails past 4 GiB); in the records [position][K heads | V heads].
    const rowBytes = kvHeads * this.capacity * headRun;
    const tensorRuns = { offset: from * headRun, strides: [this.capacity * headRun, headRun] as const };
    for (const [tensor, half] of [[s.k, 0], [s.v, this.headBytes]] as const) {
      const row = new Uint8Array(tensor.data.buffer, tensor.data.byteOffset + r * rowBytes, rowBytes);
      const records = { offset: recordsAt + half, strides: [headRun, this.recordBytes] as const };
      const [dst, src] = toRecords ? [records, tensorRuns] : [tensorRuns, records];
      copyStrided(toRecords ? s.records[d]! : row, toRecords ? row : s.records[d]!, {
        run: headRun, counts: [kvHeads, to - from],
        dstOffset: dst.offset, dstStrides: dst.strides, srcOffset: src.offset, srcStrides: src.strides,
      });
    }
  }
}

export interface CacheStaging extends CacheBlock {
  /** Disk records of the block's rows, a buffer each: [capacity, recordBytes]. */
  records: Uint8Array[];
}
