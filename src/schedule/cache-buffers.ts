// The RAM buffers of a finished block's KV cache, kept for the next block. A block's cache is
// hundreds of MB (OPT-1.3B, batch 32, 80 positions: 500 MB in f16) and fresh memory costs a page
// fault per 4 KiB on first touch: 130 thousand faults and 0.4–2 s of system time per OPT-1.3B
// batch-32 generation on the AMD EPYC of docs/benchmarks.md, most of it inside prefill's clock.
// A batch job runs block after block of one shape, so the next block takes the same buffers
// (zeroed again, a memset) instead. Kept buffers are the last block's cache, which the limits
// already allowed; a block of other sizes drops them before it allocates its own.

import type { CacheDType } from '../backend/kernels.js';
import { Tensor } from '../tensor/tensor.js';

export type CacheTensorDType = 'f32' | 'f16' | 'u8';

/** The block whose buffers are kept: a block of these rows, type and capacity takes them all
 *  (any number of batches: one buffer pair per layer and batch). */
export interface KeptCacheShape {
  rows: number;
  batches: number;
  capacity: number;
  cacheDtype: CacheDType;
}

export class CacheBuffers {
  private spare: Tensor<CacheTensorDType>[] = [];
  private keptShape: KeptCacheShape | null = null;
  /** Bytes handed out from kept buffers so far. */
  reusedBytes = 0;

  /** A zero-filled tensor of `shape`: a kept buffer of the same type and size, else a new one. */
  take(dtype: CacheTensorDType, shape: readonly number[]): Tensor<CacheTensorDType> {
    const size = shape.reduce((a, b) => a * b, 1);
    const i = this.spare.findIndex((t) => t.dtype === dtype && t.size === size);
    if (i < 0) return Tensor.zeros(dtype, shape);
    const t = this.spare.splice(i, 1)[0]!;
    // Zeroed as a fresh block's are. (Attention reads only filled positions, so this is a
    // safeguard, at ~1% of the faults it replaces: a memset at memory speed.)
    t.data.fill(0); // (by element: a byte view of a block over 4 GiB is past a typed array's length)
    this.reusedBytes += t.byteLength;
    return t.reshape(shape);
  }

  /** Keeps `tensors` (a finished block of `shape`'s) for the next block, in place of any kept
   *  before. */
  keep(tensors: Tensor<CacheTensorDType>[], shape: KeptCacheShape): void {
    this.spare = tensors;
    this.keptShape = tensors.length > 0 ? shape : null;
  }

  /** The shape of the block whose buffers are kept, until a block takes from them. */
  get shape(): KeptCacheShape | null {
    return this.keptShape;
  }

  /** Lets go of what is kept that `sizes` will not take, before a block allocates: the limits
   *  count this block's buffers, not the last one's too. */
  dropUnless(sizes: { dtype: CacheTensorDType; size: number }[]): void {
    this.keptShape = null;
    const left = [...sizes];
    this.spare = this.spare.filter((t) => {
      const j = left.findIndex((s) => s.dtype === t.dtype && s.size === t.size);
      if (j < 0) return false;
      left.splice(j, 1);
      return true;
    });
  }

  /** Bytes kept. */
  get bytes(): number {
    return this.spare.reduce((n, t) => n + t.byteLength, 0);
  }

  clear(): void {
    this.spare = [];
    this.keptShape = null;
  }
}
