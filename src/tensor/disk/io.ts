// The disk tier's file access: O_DIRECT reads and writes that run on the addon's I/O threads
// (native/io) and settle a Promise when the whole range is done. Results never depend on the page
// cache: files are opened with O_DIRECT, and where a filesystem refuses it the file is opened
// buffered and every range read or written is dropped from the cache afterwards.
//
// Direct files need buffers whose address, length and file offset are multiples of 4096
// (IO_ALIGNMENT): allocate them with alignedBytes() or a BufferPool.
//
// Reading past the end of a file rejects with code 'EOF' (no zero fill): files of the disk tier
// are laid out in whole 4096-byte blocks, so a short read means a layout or offset bug.
import { nativeFn } from '../../backend/cpu/addon.js';

export const IO_ALIGNMENT = 4096;

export type OpenMode = 'r' | 'rw' | 'w';

export interface OpenOptions {
  /** Try O_DIRECT (default true). false opens buffered, still dropping what it reads and writes from the page cache. */
  direct?: boolean;
}

export interface TransferOptions {
  /**
   * Queue behind every urgent transfer (default false): for prefetches that have time to spare,
   * so that transfers needed sooner are not stuck behind them. The I/O threads take the next
   * chunk (4 MiB) of an urgent transfer before any background chunk.
   */
  background?: boolean;
}

export interface IoStats {
  /** Cumulative bytes transferred since the process started. */
  bytesRead: number;
  bytesWritten: number;
  /** Wall-clock seconds during which at least one read (write, sync) was in flight. */
  readSeconds: number;
  writeSeconds: number;
  /** Ranges submitted (a batch of n ranges counts n). */
  requests: number;
  /** read/write/readv/writev/sync calls. */
  calls: number;
  threads: number;
  chunkBytes: number;
}

/** An error from the operating system or an end of file, naming the file and operation. */
export interface IoError extends Error {
  code?: string;
  errno?: number;
  path?: string;
  /** The call that failed: 'pread', 'pwrite', 'fsync', 'sync_file_range' or 'posix_fadvise' (the last two on buffered files). */
  syscall?: string;
  offset?: number;
}

type Open = (path: string, mode: OpenMode, direct: boolean) => { fd: number; direct: boolean };
type FdFn<R> = (fd: number) => R;
type Transfer = (fd: number, buf: ArrayBufferView, offset: number, background: boolean) => Promise<void>;
type TransferV = (fd: number, bufs: ArrayBufferView[], offsets: number[], background: boolean) => Promise<void>;

interface Native {
  ioOpen: Open;
  ioClose: FdFn<void>;
  ioSize: FdFn<number>;
  ioTruncate: (fd: number, bytes: number) => void;
  ioAllocate: (fd: number, bytes: number) => boolean;
  ioSync: FdFn<Promise<void>>;
  ioRead: Transfer;
  ioWrite: Transfer;
  ioReadv: TransferV;
  ioWritev: TransferV;
  ioSetThreads: (n: number, chunkBytes?: number) => void;
  ioStats: () => IoStats;
  alignedBuffer: (bytes: number, alignment?: number) => ArrayBuffer;
}

let native: Native | undefined;
function n(): Native {
  if (native) return native;
  const names = [
    'ioOpen', 'ioClose', 'ioSize', 'ioTruncate', 'ioAllocate', 'ioSync', 'ioRead', 'ioWrite', 'ioReadv', 'ioWritev',
    'ioSetThreads', 'ioStats', 'alignedBuffer',
  ] as const;
  const out: Record<string, unknown> = {};
  for (const name of names) out[name] = nativeFn(name);
  native = out as unknown as Native;
  return native;
}

function isInt(x: unknown, max = Number.MAX_SAFE_INTEGER): x is number {
  return typeof x === 'number' && Number.isInteger(x) && x >= 0 && x <= max;
}

function checkView(v: unknown, what: string): asserts v is ArrayBufferView {
  if (!ArrayBuffer.isView(v) || v instanceof DataView) {
    throw new TypeError(`${what} must be a TypedArray (Uint8Array from alignedBytes() for direct files)`);
  }
}

/** A zero-filled Uint8Array of `bytes` bytes outside the JavaScript heap, 4096-byte aligned. */
export function alignedBytes(bytes: number): Uint8Array {
  if (!isInt(bytes, 2 ** 46)) throw new RangeError(`alignedBytes: bytes must be a non-negative integer, got ${bytes}`);
  return new Uint8Array(n().alignedBuffer(bytes, IO_ALIGNMENT));
}

/** Rounds `bytes` up to a multiple of IO_ALIGNMENT. */
export function alignUp(bytes: number): number {
  return Math.ceil(bytes / IO_ALIGNMENT) * IO_ALIGNMENT;
}

export function ioStats(): IoStats {
  return n().ioStats();
}

/** Threads of the I/O pool (default 4) and, optionally, the chunk size large transfers are cut into (default 4 MiB). */
export function setIoThreads(threads: number, chunkBytes?: number): void {
  if (!isInt(threads) || threads < 1 || threads > 64) throw new RangeError(`setIoThreads: threads must be an integer in [1, 64], got ${threads}`);
  if (chunkBytes !== undefined && (!isInt(chunkBytes, 2 ** 30) || chunkBytes < 65536 || chunkBytes % IO_ALIGNMENT !== 0)) {
    throw new RangeError(`setIoThreads: chunkBytes must be a multiple of 4096 in [64 KiB, 1 GiB], got ${chunkBytes}`);
  }
  n().ioSetThreads(threads, chunkBytes);
}

/** A file of the disk tier, opened with O_DIRECT where the filesystem allows it. */
export class DirectFile {
  private fd: number;
  private closed = false;
  private inflight = 0;

  private constructor(
    readonly path: string,
    readonly mode: OpenMode,
    fd: number,
    /** true: O_DIRECT; false: buffered with the page cache dropped after every transfer. */
    readonly direct: boolean,
  ) {
    this.fd = fd;
  }

  /**
   * 'r' reads an existing file; 'rw' reads and writes, creating it if missing; 'w' creates or
   * truncates it (and can read it back). Throws an error naming the path when the OS refuses.
   */
  static open(path: string, mode: OpenMode, options: OpenOptions = {}): DirectFile {
    if (typeof path !== 'string' || path.length === 0) throw new TypeError('DirectFile.open: path must be a non-empty string');
    if (mode !== 'r' && mode !== 'rw' && mode !== 'w') throw new TypeError(`DirectFile.open: mode must be 'r', 'rw' or 'w', got ${String(mode)}`);
    const { fd, direct } = n().ioOpen(path, mode, options.direct ?? true);
    return new DirectFile(path, mode, fd, direct);
  }

  /** Fills all of `dst` from the file at byte `offset`. Rejects with code 'EOF' if the file ends first. */
  read(dst: ArrayBufferView, offset: number, options: TransferOptions = {}): Promise<void> {
    this.check('read', dst, offset, 'dst');
    return this.track(n().ioRead(this.fd, dst, offset, options.background === true));
  }

  /** Writes all of `src` at byte `offset`, growing the file as needed. */
  write(src: ArrayBufferView, offset: number, options: TransferOptions = {}): Promise<void> {
    this.checkWritable('write');
    this.check('write', src, offset, 'src');
    return this.track(n().ioWrite(this.fd, src, offset, options.background === true));
  }

  /** Reads several ranges (one per buffer) in one submission that settles once. */
  readv(dsts: ArrayBufferView[], offsets: number[], options: TransferOptions = {}): Promise<void> {
    this.checkBatch('readv', dsts, offsets);
    return this.track(n().ioReadv(this.fd, dsts, offsets, options.background === true));
  }

  /** Writes several ranges in one submission that settles once. */
  writev(srcs: ArrayBufferView[], offsets: number[], options: TransferOptions = {}): Promise<void> {
    this.checkWritable('writev');
    this.checkBatch('writev', srcs, offsets);
    return this.track(n().ioWritev(this.fd, srcs, offsets, options.background === true));
  }

  /** Sets the file's size (ftruncate). */
  truncate(bytes: number): void {
    this.checkWritable('truncate');
    if (!isInt(bytes)) throw new RangeError(`truncate ${this.path}: bytes must be a non-negative integer, got ${bytes}`);
    n().ioTruncate(this.fd, bytes);
  }

  /** Reserves disk blocks for the first `bytes` bytes; false where the filesystem cannot (the file is only grown). */
  allocate(bytes: number): boolean {
    this.checkWritable('allocate');
    if (!isInt(bytes)) throw new RangeError(`allocate ${this.path}: bytes must be a non-negative integer, got ${bytes}`);
    return n().ioAllocate(this.fd, bytes);
  }

  /** The file's size in bytes. */
  size(): number {
    this.checkOpen('size');
    return n().ioSize(this.fd);
  }

  /** fsync on an I/O thread. */
  sync(): Promise<void> {
    this.checkOpen('sync');
    return this.track(n().ioSync(this.fd));
  }

  /** Closes the file. Throws while transfers on it are in flight; closing twice is a no-op. */
  close(): void {
    if (this.closed) return;
    if (this.inflight > 0) throw new Error(`close ${this.path}: ${this.inflight} transfers are still in flight`);
    n().ioClose(this.fd);
    this.closed = true;
    this.fd = -1;
  }

  get isOpen(): boolean {
    return !this.closed;
  }

  private readonly pending = new Set<Promise<void>>();

  private track(p: Promise<void>): Promise<void> {
    this.inflight++;
    const t: Promise<void> = p.finally(() => {
      this.inflight--;
      this.pending.delete(t);
    });
    this.pending.add(t);
    return t;
  }

  /** Resolves once every transfer started on the file has finished, failed ones included (their
   *  errors belong to whoever awaits them): after a failure, before close(). */
  async settled(): Promise<void> {
    while (this.pending.size > 0) await Promise.allSettled([...this.pending]);
  }

  private checkOpen(op: string): void {
    if (this.closed) throw new Error(`${op} ${this.path}: the file is closed`);
  }

  private checkWritable(op: string): void {
    this.checkOpen(op);
    if (this.mode === 'r') throw new Error(`${op} ${this.path}: the file was opened read-only ('r')`);
  }

  private check(op: string, view: unknown, offset: unknown, what: string): asserts view is ArrayBufferView {
    this.checkOpen(op);
    checkView(view, `${op} ${this.path}: ${what}`);
    if (!isInt(offset, 2 ** 52)) throw new RangeError(`${op} ${this.path}: offset must be a non-negative integer, got ${String(offset)}`);
    if (!this.direct) return;
    const hint = `(${this.path} is opened with O_DIRECT; use alignedBytes() or a BufferPool and 4096-byte multiples)`;
    if (view.byteLength % IO_ALIGNMENT !== 0) throw new RangeError(`${op} ${this.path}: length ${view.byteLength} is not a multiple of 4096 ${hint}`);
    if (offset % IO_ALIGNMENT !== 0) throw new RangeError(`${op} ${this.path}: file offset ${offset} is not a multiple of 4096 ${hint}`);
    if (view.byteOffset % IO_ALIGNMENT !== 0) throw new RangeError(`${op} ${this.path}: buffer view starts at byte ${view.byteOffset} of its ArrayBuffer, not a multiple of 4096 ${hint}`);
    // The buffer's own address is checked natively.
  }

  private checkBatch(op: string, views: unknown, offsets: unknown): void {
    this.checkOpen(op);
    if (!Array.isArray(views) || !Array.isArray(offsets)) throw new TypeError(`${op} ${this.path}: expected an array of buffers and an array of offsets`);
    if (views.length !== offsets.length) throw new RangeError(`${op} ${this.path}: ${views.length} buffers but ${offsets.length} offsets`);
    for (let i = 0; i < views.length; i++) this.check(`${op}[${i}]`, views[i], offsets[i], 'buffer');
  }
}
