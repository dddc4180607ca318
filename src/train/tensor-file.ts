// Safetensors files of any size written and read through the native I/O pool (O_DIRECT where the
// filesystem allows it), for checkpoints: the model in its dtype and the optimizer state.
//
// The file is one byte stream cut into aligned chunks, two of them in flight: one being filled
// (or copied out) in JavaScript while the I/O threads write (or read) the other. Tensors are laid
// end to end as safetensors requires, so chunk boundaries fall anywhere inside them; producers
// fill a staging buffer element by element and it is copied into the stream. The last chunk is
// written whole and the file truncated to its exact length (O_DIRECT writes whole blocks).

import fs from 'node:fs';
import { type TensorEntry, dataPieces, safetensorsHeader } from '../formats/safetensors-writer.js';
import { SafetensorsFile, type TensorInfo } from '../formats/safetensors.js';
import { DirectFile, IO_ALIGNMENT, alignUp, alignedBytes } from '../tensor/disk/io.js';

const CHUNK_BYTES = 4 << 20;
const STAGING_BYTES = 2 << 20;
/** RAM a save or load holds at most (an offloaded run's plan counts it). */
export const TENSOR_FILE_RAM_BYTES = 2 * CHUNK_BYTES + 2 * STAGING_BYTES;

/** The two chunk buffers, kept between calls (one save writes two files, and a finished call's
 *  buffers would otherwise stay allocated until the collector finalizes them). */
let spare: Uint8Array[] | null = null;
function takeChunks(): Uint8Array[] {
  const b = spare ?? [alignedBytes(CHUNK_BYTES), alignedBytes(CHUNK_BYTES)];
  spare = null;
  return b;
}

export interface TensorProducer extends TensorEntry {
  /** Fills dst with the tensor's next dst.byteLength bytes, starting at element `elementOffset`. */
  fill(dst: Uint8Array, elementOffset: number): void;
}

/** Writes `entries` in order to `file` and fsyncs it; returns the file's length. */
export async function writeTensorFile(file: string, entries: TensorProducer[], metadata?: Record<string, string>): Promise<number> {
  const { head, dataBytes } = safetensorsHeader(entries, metadata);
  const out = new ChunkWriter(DirectFile.open(file, 'w'));
  try {
    await out.put(head);
    for (const piece of dataPieces(entries, (e, dst, offset) => e.fill(dst, offset), STAGING_BYTES)) await out.put(piece);
    await out.finish(head.byteLength + dataBytes);
  } finally {
    await out.close();
  }
  return head.byteLength + dataBytes;
}

/**
 * Reads a safetensors file (its header checked by SafetensorsFile first) and copies each
 * tensor's bytes into dest(info), which returns a buffer of exactly info.byteLength bytes, or
 * null to skip the tensor. Returns the header's tensors.
 */
export async function readTensorFile(file: string, dest: (info: TensorInfo) => Uint8Array | null): Promise<Map<string, TensorInfo>> {
  const st = SafetensorsFile.open(file);
  st.close();
  const targets = [...st.tensors.values()].sort((a, b) => a.offset - b.offset).map((info) => ({ info, dst: dest(info) }))
    .filter((t): t is { info: TensorInfo; dst: Uint8Array } => t.dst !== null);
  for (const t of targets) {
    if (t.dst.byteLength !== t.info.byteLength) throw new RangeError(`${file}: buffer for tensor '${t.info.name}' holds ${t.dst.byteLength} bytes, the tensor ${t.info.byteLength}`);
  }
  const f = DirectFile.open(file, 'r');
  const size = f.size();
  const alignedEnd = Math.floor(size / IO_ALIGNMENT) * IO_ALIGNMENT;
  const bufs = takeChunks();
  const reads: Settled[] = [];
  const read = (k: number): Settled => settle(f.read(bufs[k % 2]!.subarray(0, Math.min(CHUNK_BYTES, alignedEnd - k * CHUNK_BYTES)), k * CHUNK_BYTES));
  try {
    const chunks = Math.ceil(alignedEnd / CHUNK_BYTES);
    if (chunks > 0) reads[0] = read(0);
    for (let k = 0; k < chunks; k++) {
      if (k + 1 < chunks) reads[k + 1] = read(k + 1);
      await reads[k]!.wait();
      const len = Math.min(CHUNK_BYTES, alignedEnd - k * CHUNK_BYTES);
      copyOut(targets, bufs[k % 2]!.subarray(0, len), k * CHUNK_BYTES);
    }
    // The unaligned tail, which O_DIRECT cannot read, through the page cache.
    if (size > alignedEnd) copyOut(targets, readTail(file, alignedEnd, size - alignedEnd), alignedEnd);
  } finally {
    await Promise.all(reads.map((r) => r?.done));
    f.close();
    spare = bufs;
  }
  return st.tensors;
}

/** Copies the part of `chunk` (file bytes from `start`) that falls inside each target. */
function copyOut(targets: { info: TensorInfo; dst: Uint8Array }[], chunk: Uint8Array, start: number): void {
  const end = start + chunk.byteLength;
  for (const { info, dst } of targets) {
    const a = Math.max(start, info.offset);
    const b = Math.min(end, info.offset + info.byteLength);
    if (a < b) dst.set(chunk.subarray(a - start, b - start), a - info.offset);
  }
}

function readTail(file: string, offset: number, length: number): Uint8Array {
  const buf = new Uint8Array(length);
  const fd = fs.openSync(file, 'r');
  try {
    if (fs.readSync(fd, buf, 0, length, offset) !== length) throw new Error(`${file}: file shrank while being read`);
  } finally {
    fs.closeSync(fd);
  }
  return buf;
}

/** A transfer whose failure is kept, never left unhandled, until someone waits for it. */
interface Settled {
  done: Promise<void>;
  wait(): Promise<void>;
}

function settle(p: Promise<void>): Settled {
  let error: unknown = null;
  const done = p.catch((e) => {
    error = e;
  });
  return {
    done,
    wait: async () => {
      await done;
      if (error) throw error;
    },
  };
}

/** The writing half: fills aligned chunks in turn and writes each as it fills. */
class ChunkWriter {
  private readonly bufs = takeChunks();
  private readonly writes: (Settled | null)[] = [null, null];
  private cur = 0;
  private used = 0;
  private offset = 0;

  constructor(private readonly f: DirectFile) {}

  async put(src: Uint8Array): Promise<void> {
    for (let done = 0; done < src.byteLength;) {
      const n = Math.min(CHUNK_BYTES - this.used, src.byteLength - done);
      this.bufs[this.cur]!.set(src.subarray(done, done + n), this.used);
      this.used += n;
      done += n;
      if (this.used === CHUNK_BYTES) await this.flush();
    }
  }

  /** Writes what is left, sets the exact length and fsyncs. */
  async finish(length: number): Promise<void> {
    if (this.used > 0) await this.flush();
    for (const w of this.writes) await w?.wait();
    this.f.truncate(length);
    await this.f.sync();
  }

  /** Waits for every write (failed or not) so the file can be closed. */
  async close(): Promise<void> {
    await Promise.all(this.writes.map((w) => w?.done));
    this.f.close();
    spare = this.bufs;
  }

  private async flush(): Promise<void> {
    const buf = this.bufs[this.cur]!;
    const len = alignUp(this.used);
    buf.fill(0, this.used, len);
    this.writes[this.cur] = settle(this.f.write(buf.subarray(0, len), this.offset));
    this.offset += this.used;
    this.used = 0;
    this.cur ^= 1;
    // The other buffer is reused only once its write is done.
    const prev = this.writes[this.cur];
    this.writes[this.cur] = null;
    await prev?.wait();
  }
}
