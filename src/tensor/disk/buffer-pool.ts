// A small pool of reusable aligned buffers of one size class for the disk tier: a read lands in a
// leased buffer, is consumed, and the buffer goes back. Buffers are allocated lazily up to
// `count`, so after warm-up nothing is allocated per read; when all are leased, acquire() waits
// (first come, first served) until one is released.
import { type DirectFile, IO_ALIGNMENT, alignUp, alignedBytes } from './io.js';

export interface BufferPoolOptions {
  /** Size class in bytes; rounded up to a multiple of 4096. */
  bufferBytes: number;
  /** Maximum number of buffers. */
  count: number;
}

export interface Lease {
  /** The whole buffer (bufferBytes long, 4096-aligned), valid until released. */
  readonly data: Uint8Array;
  /** The bytes asked for. */
  readonly bytes: number;
  /** data.subarray(0, bytes rounded up to 4096): what a direct read of `bytes` should fill. */
  readonly view: Uint8Array;
}

interface LeaseImpl extends Lease {
  live: boolean;
  slot: number;
}

export class BufferPool {
  readonly bufferBytes: number;
  readonly count: number;
  private readonly buffers: Uint8Array[] = [];
  private readonly free: number[] = [];
  private readonly waiters: { bytes: number; resolve: (l: Lease) => void; reject: (e: Error) => void }[] = [];
  private leased = 0;
  private closed = false;

  constructor(options: BufferPoolOptions) {
    const { bufferBytes, count } = options;
    if (!Number.isInteger(bufferBytes) || bufferBytes <= 0) throw new RangeError(`BufferPool: bufferBytes must be a positive integer, got ${bufferBytes}`);
    if (!Number.isInteger(count) || count <= 0) throw new RangeError(`BufferPool: count must be a positive integer, got ${count}`);
    this.bufferBytes = alignUp(bufferBytes);
    this.count = count;
  }

  /** Bytes of buffers allocated so far (held until dispose()), for the RAM budget. */
  get heldBytes(): number {
    return this.buffers.length * this.bufferBytes;
  }

  /** Bytes the pool may hold once warm. */
  get maxBytes(): number {
    return this.count * this.bufferBytes;
  }

  get inUse(): number {
    return this.leased;
  }

  get waiting(): number {
    return this.waiters.length;
  }

  /** A buffer of at least `bytes` bytes; waits while all `count` buffers are leased. */
  acquire(bytes: number = this.bufferBytes): Promise<Lease> {
    this.checkBytes(bytes);
    const lease = this.tryAcquire(bytes);
    if (lease) return Promise.resolve(lease);
    return new Promise<Lease>((resolve, reject) => this.waiters.push({ bytes, resolve, reject }));
  }

  /** A buffer now, or undefined when all are leased (or others are already waiting). */
  tryAcquire(bytes: number = this.bufferBytes): Lease | undefined {
    this.checkBytes(bytes);
    if (this.waiters.length > 0) return undefined;
    return this.take(bytes);
  }

  release(lease: Lease): void {
    const l = lease as LeaseImpl;
    if (l.slot === undefined || this.buffers[l.slot] !== l.data) throw new Error('BufferPool.release: the lease does not belong to this pool');
    if (!l.live) throw new Error('BufferPool.release: the lease was already released');
    l.live = false;
    this.leased--;
    this.free.push(l.slot);
    const w = this.waiters.shift();
    if (w) w.resolve(this.take(w.bytes)!);
  }

  /** Drops every buffer (leases must all be released) and rejects waiters; the pool cannot be used afterwards. */
  dispose(): void {
    if (this.leased > 0) throw new Error(`BufferPool.dispose: ${this.leased} buffers are still leased`);
    this.closed = true;
    for (const w of this.waiters.splice(0)) w.reject(new Error('BufferPool disposed'));
    this.buffers.length = 0;
    this.free.length = 0;
  }

  private checkBytes(bytes: number): void {
    if (this.closed) throw new Error('BufferPool: the pool was disposed');
    if (!Number.isInteger(bytes) || bytes < 0) throw new RangeError(`BufferPool.acquire: bytes must be a non-negative integer, got ${bytes}`);
    if (bytes > this.bufferBytes) throw new RangeError(`BufferPool.acquire: ${bytes} bytes exceed the pool's size class of ${this.bufferBytes}`);
  }

  private take(bytes: number): Lease | undefined {
    let slot = this.free.pop();
    if (slot === undefined) {
      if (this.buffers.length >= this.count) return undefined;
      slot = this.buffers.length;
      this.buffers.push(alignedBytes(this.bufferBytes));
    }
    this.leased++;
    const data = this.buffers[slot];
    const lease: LeaseImpl = { data, bytes, view: data.subarray(0, Math.ceil(bytes / IO_ALIGNMENT) * IO_ALIGNMENT), live: true, slot };
    return lease;
  }
}

/**
 * Reads (or writes) the first `size` bytes of a file sequentially in `block`-byte requests, as
 * many in flight as the pool has buffers; returns the seconds taken (a write includes the final
 * fsync). The disk bandwidth measurements of `tierlm profile` and bench/disk.ts.
 */
export async function sequentialPass(file: DirectFile, pool: BufferPool, size: number, block: number, write: boolean): Promise<number> {
  const t0 = performance.now();
  const pending = new Set<Promise<void>>();
  for (let off = 0; off < size; off += block) {
    const lease = await pool.acquire(Math.min(block, size - off));
    const p: Promise<void> = (write ? file.write(lease.view, off) : file.read(lease.view, off)).finally(() => {
      pool.release(lease);
      pending.delete(p);
    });
    pending.add(p);
  }
  await Promise.all(pending);
  if (write) await file.sync();
  return Math.max(performance.now() - t0, 1e-3) / 1000;
}
