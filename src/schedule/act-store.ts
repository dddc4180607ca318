// Hidden states between layers, one [tokens, hidden] float32 buffer per batch, placed across RAM
// and disk by the policy's shares. Rows of all batches, in batch order, are cut by the shares, so
// only one batch can be split. A batch with disk rows is assembled in a staging buffer for
// compute and written back after it.

import type { Shares } from '../policy/policy.js';
import { Tensor } from '../tensor/tensor.js';
import { type BlockFile, alignedBytes } from './block-file.js';
import { alignUp, blockRamRows } from './placement.js';

interface Batch {
  ramRows: number;
  /** The whole buffer when no row is on disk, else the RAM rows. */
  ram: Float32Array | null;
  fileOffset: number;
}

export interface ActStaging {
  x: Float32Array; // [maxTokens, hidden]
  io: Uint8Array; // aligned bounce buffer for the disk rows
}

export class ActStore {
  readonly stats = { ramBytes: 0, diskBytes: 0, bytesRead: 0, bytesWritten: 0 };
  private readonly batches: Batch[] = [];
  /** Tokens each batch holds in the current step. */
  readonly tokens: number[];

  constructor(
    private readonly hidden: number,
    numBatches: number,
    private readonly maxTokens: number,
    shares: Shares,
    private readonly file: BlockFile | null,
  ) {
    this.tokens = new Array(numBatches).fill(0);
    let offset = 0;
    for (const ramRows of blockRamRows(numBatches, maxTokens, shares)) {
      if (ramRows < maxTokens && !file) throw new Error('activations placed on disk, but no disk tier was given');
      this.batches.push({ ramRows, ram: ramRows > 0 ? new Float32Array(ramRows * hidden) : null, fileOffset: offset });
      offset += alignUp((maxTokens - ramRows) * hidden * 4);
      this.stats.ramBytes += ramRows * hidden * 4;
      this.stats.diskBytes += (maxTokens - ramRows) * hidden * 4;
    }
    file?.reserve(offset);
  }

  needsStagingAny(): boolean {
    return this.batches.some((b) => b.ramRows < this.maxTokens);
  }

  newStaging(): ActStaging {
    return { x: new Float32Array(this.maxTokens * this.hidden), io: alignedBytes(alignUp(this.maxTokens * this.hidden * 4)) };
  }

  private view(data: Float32Array, t: number): Tensor<'f32'> {
    return new Tensor('f32', [t, this.hidden], data.subarray(0, t * this.hidden));
  }

  /** Batch k's hidden states [tokens, hidden]; `fresh` skips reading (the embedding overwrites them). */
  async load(k: number, staging: ActStaging | null, fresh: boolean): Promise<Tensor<'f32'>> {
    const ram = this.inRam(k);
    if (ram) return ram;
    const b = this.batches[k]!;
    const t = this.tokens[k]!;
    if (!staging) throw new Error('activations on disk need a staging buffer');
    if (!fresh) {
      const ramRows = Math.min(b.ramRows, t);
      if (ramRows > 0) staging.x.set(b.ram!.subarray(0, ramRows * this.hidden));
      const diskRows = t - ramRows;
      if (diskRows > 0) {
        const bytes = diskRows * this.hidden * 4;
        await this.file!.read(staging.io.subarray(0, alignUp(bytes)), b.fileOffset);
        this.stats.bytesRead += alignUp(bytes);
        staging.x.set(new Float32Array(staging.io.buffer, staging.io.byteOffset, diskRows * this.hidden), ramRows * this.hidden);
      }
    }
    return this.view(staging.x, t);
  }

  /** Batch k's hidden states [tokens, hidden] when they are all in RAM (used where they are,
   *  nothing to store after); else null. */
  inRam(k: number): Tensor<'f32'> | null {
    const b = this.batches[k]!;
    return b.ramRows === this.maxTokens ? this.view(b.ram!, this.tokens[k]!) : null;
  }

  async store(k: number, staging: ActStaging | null): Promise<void> {
    const b = this.batches[k]!;
    if (b.ramRows === this.maxTokens || !staging) return;
    const t = this.tokens[k]!;
    const ramRows = Math.min(b.ramRows, t);
    if (ramRows > 0) b.ram!.set(staging.x.subarray(0, ramRows * this.hidden));
    const diskRows = t - ramRows;
    if (diskRows > 0) {
      const bytes = diskRows * this.hidden * 4;
      new Uint8Array(staging.io.buffer, staging.io.byteOffset, bytes).set(new Uint8Array(staging.x.buffer, staging.x.byteOffset + ramRows * this.hidden * 4, bytes));
      await this.file!.write(staging.io.subarray(0, alignUp(bytes)), b.fileOffset);
      this.stats.bytesWritten += alignUp(bytes);
    }
  }
}
