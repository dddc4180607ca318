// Filling an offloaded run's states without the model ever being whole in RAM (ZeRO's partitioned
// initialisation): parameter by parameter, in chunks of rows, from the model's safetensors (or a
// checkpoint's optimizer state on resume) into the RAM tensors or, through one aligned staging
// buffer per kind, sequentially into the kind files. The values are those ParamStore computes:
// each element widened to f32 for the master, and rounded to bf16 for the compute copy.

import { fromFloat32, toFloat32 } from '../../tensor/dtype.js';
import { DirectFile, IO_ALIGNMENT, alignedBytes } from '../../tensor/disk/io.js';
import { kindBytes, type StateKind } from './layout.js';
import type { States } from './states.js';

const CHUNK_BYTES = 4 << 20;

/** Reads rows [r0, r1) of a parameter's part into dst (f32): from a model file or a checkpoint. */
export type RowReader = (name: string, part: 'master' | 'm' | 'v', r0: number, r1: number, dst: Float32Array) => void;

/** Rows [r0, r1) of a float tensor widened to f32 (how a model file's weights become masters). */
export function widenRows(store: { info(n: string): { dtype: 'f32' | 'f16' | 'bf16' }; readRowsInto(n: string, a: number, b: number, d: Uint8Array): void },
  tensor: string, r0: number, r1: number, dst: Float32Array): void {
  const dtype = store.info(tensor).dtype;
  if (dtype === 'f32') {
    store.readRowsInto(tensor, r0, r1, new Uint8Array(dst.buffer, dst.byteOffset, dst.byteLength));
    return;
  }
  const raw = new Uint16Array(dst.length);
  store.readRowsInto(tensor, r0, r1, new Uint8Array(raw.buffer));
  dst.set(toFloat32(dtype, raw, false));
}

/** Fills master (and the bf16 copy) and, when `moments`, m and v from `read`; without it the
 *  moments stay zero (the files are created zero-filled). */
export async function fillStates(states: States, read: RowReader, moments: boolean): Promise<void> {
  const layout = states.layout;
  const parts: ('master' | 'm' | 'v')[] = moments ? ['master', 'm', 'v'] : ['master'];
  const writers = new Map<StateKind, SeqWriter>();
  const writer = (k: StateKind) => {
    let w = writers.get(k);
    if (!w) writers.set(k, (w = new SeqWriter(states.openExisting(k))));
    return w;
  };
  const chunk = new Float32Array(CHUNK_BYTES / 4);
  try {
    for (const p of layout.order.map((i) => layout.params[i]!)) {
      const rows = p.shape[0] ?? 1;
      const rowSize = p.size / Math.max(1, rows);
      const per = Math.max(1, Math.floor(chunk.length / Math.max(1, rowSize)));
      for (const part of parts) {
        const put = async (kind: StateKind, values: Float32Array | Uint16Array, at: number) => {
          const r = states.residentTensor(kind, p.index);
          if (r) r.data.set(values, at);
          else await writer(kind).put(layout.offsets[kind][p.index]! + at * kindBytes(kind), new Uint8Array(values.buffer, values.byteOffset, values.byteLength));
        };
        for (let r0 = 0; r0 < rows; r0 += per) {
          const r1 = Math.min(rows, r0 + per);
          const dst = rowSize * (r1 - r0) <= chunk.length ? chunk.subarray(0, rowSize * (r1 - r0)) : new Float32Array(rowSize * (r1 - r0));
          read(p.name, part, r0, r1, dst);
          await put(part, dst, r0 * rowSize);
          if (part === 'master' && layout.kinds.includes('param')) await put('param', fromFloat32('bf16', dst), r0 * rowSize);
        }
      }
    }
    for (const w of writers.values()) await w.finish();
  } finally {
    for (const w of writers.values()) w.close();
  }
}

/** Writes increasing file ranges through one aligned buffer: bytes between ranges (alignment
 *  padding) are zeros; a partly filled last block is carried into the next flush. */
class SeqWriter {
  private readonly buf = alignedBytes(CHUNK_BYTES);
  /** File offset of buf[0] (a multiple of 4096). */
  private base = 0;
  private used = 0;

  constructor(private readonly file: DirectFile) {}

  async put(offset: number, bytes: Uint8Array): Promise<void> {
    if (offset < this.base + this.used) throw new Error(`SeqWriter: offset ${offset} is behind ${this.base + this.used}`);
    if (offset - this.base >= CHUNK_BYTES) {
      await this.flush();
      if (offset - this.base >= CHUNK_BYTES) {
        this.base = Math.floor(offset / IO_ALIGNMENT) * IO_ALIGNMENT;
        this.used = 0;
        this.buf.fill(0);
      }
    }
    this.buf.fill(0, this.used, offset - this.base);
    this.used = offset - this.base;
    for (let done = 0; done < bytes.byteLength;) {
      const n = Math.min(CHUNK_BYTES - this.used, bytes.byteLength - done);
      this.buf.set(bytes.subarray(done, done + n), this.used);
      this.used += n;
      done += n;
      if (this.used === CHUNK_BYTES) await this.flush();
    }
  }

  /** Writes the filled blocks; keeps the partial last one at the buffer's start. */
  private async flush(): Promise<void> {
    const whole = Math.ceil(this.used / IO_ALIGNMENT) * IO_ALIGNMENT;
    this.buf.fill(0, this.used, whole);
    await this.file.write(this.buf.subarray(0, whole), this.base);
    const keep = Math.floor(this.used / IO_ALIGNMENT) * IO_ALIGNMENT;
    this.buf.copyWithin(0, keep, this.used);
    this.base += keep;
    this.used -= keep;
    this.buf.fill(0, this.used);
  }

  async finish(): Promise<void> {
    if (this.used > 0) await this.flush();
  }

  close(): void {
    this.file.close();
  }
}
