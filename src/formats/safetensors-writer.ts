// Streams a safetensors file: the header is laid out first from every tensor's dtype and shape,
// then each tensor's bytes are written in chunks as a producer makes them, so a file of any size
// is written with a few MB of memory.

import fs from 'node:fs';
import { type FloatDType, DTYPE_BYTES } from '../tensor/dtype.js';
import { writeFully } from '../util/write-fully.js';

export interface TensorEntry {
  name: string;
  dtype: FloatDType;
  shape: number[];
  /** A tensor copied as it is stored, of a dtype the engine does not compute with: written under
   *  this dtype name, with this many bytes an element (its fill's offsets are then in bytes). */
  stored?: { dtype: string; elementBytes: number };
}

/** Bytes an element of `e` takes in the file. */
const elementBytes = (e: TensorEntry): number => e.stored?.elementBytes ?? DTYPE_BYTES[e.dtype];

const ST_DTYPE: Record<FloatDType, string> = { f32: 'F32', f16: 'F16', bf16: 'BF16' };
const CHUNK_BYTES = 8 << 20;

/** The bytes before the data (length and JSON header) of a file holding `entries` in order,
 *  and the length of the data. */
export function safetensorsHeader(entries: TensorEntry[], metadata: Record<string, string> = { format: 'pt' }): { head: Buffer; dataBytes: number } {
  const header: Record<string, unknown> = { __metadata__: metadata };
  let offset = 0;
  for (const e of entries) {
    const bytes = e.shape.reduce((a, b) => a * b, 1) * elementBytes(e);
    header[e.name] = { dtype: e.stored?.dtype ?? ST_DTYPE[e.dtype], shape: e.shape, data_offsets: [offset, offset + bytes] };
    offset += bytes;
  }
  let json = JSON.stringify(header);
  // Pad so the data starts 8-byte aligned, as the reference writer does.
  json += ' '.repeat((8 - ((8 + Buffer.byteLength(json)) % 8)) % 8);
  const head = Buffer.alloc(8 + Buffer.byteLength(json));
  head.writeBigUInt64LE(BigInt(Buffer.byteLength(json)), 0);
  head.write(json, 8, 'utf8');
  return { head, dataBytes: offset };
}

/** Writes `entries` to `file`; fill(entry, dst, elementOffset) fills dst with the next bytes. */
export function writeSafetensors(file: string, entries: TensorEntry[], fill: (entry: TensorEntry, dst: Uint8Array, elementOffset: number) => void,
  metadata: Record<string, string> = { format: 'pt' }): number {
  const { head, dataBytes } = safetensorsHeader(entries, metadata);
  const fd = fs.openSync(file, 'w');
  try {
    writeFully(fd, head, file);
    for (const piece of dataPieces(entries, fill)) writeFully(fd, piece, file);
  } finally {
    fs.closeSync(fd);
  }
  return head.byteLength + dataBytes;
}

/** The data of `entries` in order, as pieces of at most `chunkBytes` bytes filled by `fill`
 *  (each piece is only valid until the next is asked for: one buffer is reused). */
export function* dataPieces<E extends TensorEntry>(entries: E[], fill: (entry: E, dst: Uint8Array, elementOffset: number) => void,
  chunkBytes = CHUNK_BYTES): Generator<Uint8Array> {
  const chunk = new Uint8Array(chunkBytes);
  for (const e of entries) {
    const elem = elementBytes(e);
    const total = e.shape.reduce((a, b) => a * b, 1);
    const perChunk = Math.floor(chunkBytes / elem);
    for (let done = 0; done < total; done += perChunk) {
      const dst = chunk.subarray(0, Math.min(perChunk, total - done) * elem);
      fill(e, dst, done);
      yield dst;
    }
  }
}
