// Strided byte copies in native code: re-laying blocks between a storage layout and a compute
// layout (the disk tier's KV cache records ↔ the attention kernels' [heads, positions, headDim])
// without a JavaScript call per run.
import { nativeFn } from '../backend/cpu/addon.js';

export interface StridedRuns {
  /** Bytes per contiguous run. */
  run: number;
  /** Runs along the two axes: run (i, j) for i < counts[0], j < counts[1]. */
  counts: readonly [number, number];
  /** Byte offset of run (0, 0) and bytes between runs along each axis, in dst and src. */
  dstOffset: number;
  dstStrides: readonly [number, number];
  srcOffset: number;
  srcStrides: readonly [number, number];
}

type Native = (dst: Uint8Array, dstOffset: number, src: Uint8Array, srcOffset: number, run: number, n0: number, n1: number,
  ds0: number, ds1: number, ss0: number, ss1: number) => void;
let native: Native | undefined;

/** Copies every run (i, j) from src to dst (which must not overlap). Throws a RangeError if either range falls outside its array. */
export function copyStrided(dst: Uint8Array, src: Uint8Array, r: StridedRuns): void {
  const nums = [r.run, ...r.counts, r.dstOffset, ...r.dstStrides, r.srcOffset, ...r.srcStrides];
  if (!nums.every((x) => Number.isSafeInteger(x) && x >= 0)) {
    throw new RangeError(`copyStrided: run, counts, offsets and strides must be non-negative integers, got ${JSON.stringify(r)}`);
  }
  native ??= nativeFn<Native>('copyStrided');
  native(dst, r.dstOffset, src, r.srcOffset, r.run, r.counts[0], r.counts[1], r.dstStrides[0], r.dstStrides[1], r.srcStrides[0], r.srcStrides[1]);
}
