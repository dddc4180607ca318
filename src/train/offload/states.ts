// The model states of an offloaded run: the RAM-resident ones as tensors, the rest in one file per
// state kind in the disk tier (./layout.ts says which is where), moved through the native I/O pool
// (O_DIRECT where the filesystem allows it) into aligned buffers the callers reuse. Counts what
// moves, per kind and per phase, and how long the compute waited for it.

import fs from 'node:fs';
import path from 'node:path';
import { Tensor } from '../../tensor/tensor.js';
import { DirectFile } from '../../tensor/disk/io.js';
import { type Layout, type StateKind, kindBytes } from './layout.js';
import { IoCounter } from './stats.js';

type Data = Float32Array | Uint16Array;

export class States {
  /** Per kind, per parameter: the RAM tensor, or null when on disk. */
  private readonly resident: Record<StateKind, (Tensor | null)[]>;
  private readonly files = new Map<StateKind, DirectFile>();
  readonly io = new IoCounter();

  /** Creates the kind files (zero-filled: sparse) under `dir`, which the caller made and removes. */
  constructor(readonly layout: Layout, readonly dir: string) {
    this.resident = {} as Record<StateKind, (Tensor | null)[]>;
    for (const k of layout.kinds) {
      this.resident[k] = layout.params.map((p) => (layout.onDisk(k, p.index) ? null : Tensor.zeros(k === 'param' ? 'bf16' : 'f32', p.shape)));
      if (layout.fileBytes[k] > 0) {
        const f = DirectFile.open(this.path(k), 'w');
        f.truncate(layout.fileBytes[k]);
        this.files.set(k, f);
      }
    }
  }

  path(kind: StateKind): string {
    return path.join(this.dir, `${kind}.bin`);
  }

  residentTensor(kind: StateKind, index: number): Tensor | null {
    return this.resident[kind]?.[index] ?? null;
  }

  /** Bytes of RAM the disk parts of `indices` need in one buffer. */
  bufferBytes(kind: StateKind, indices: readonly number[]): number {
    const r = this.layout.range(kind, indices);
    return r ? r.end - r.start : 0;
  }

  /** Parameter `index`'s `kind` as a tensor: its RAM tensor, or a view of `buf`, which holds the
   *  disk range of a group of parameters starting at file offset `start`. */
  tensor(kind: StateKind, index: number, buf: Uint8Array | null, start: number): Tensor {
    const r = this.residentTensor(kind, index);
    if (r) return r;
    const p = this.layout.params[index]!;
    const at = buf!.byteOffset + this.layout.offsets[kind][index]! - start;
    const data: Data = kind === 'param' ? new Uint16Array(buf!.buffer, at, p.size) : new Float32Array(buf!.buffer, at, p.size);
    return new Tensor(kind === 'param' ? 'bf16' : 'f32', p.shape, data);
  }

  /** Reads the disk part of `indices` into buf (from its start). Resolves at once when none. */
  read(kind: StateKind, indices: readonly number[], buf: Uint8Array, phase: string, background = false): Promise<void> {
    const r = this.layout.range(kind, indices);
    if (!r) return Promise.resolve();
    return this.io.track(phase, kind, 'read', r.end - r.start, this.files.get(kind)!.read(buf.subarray(0, r.end - r.start), r.start, { background }));
  }

  write(kind: StateKind, indices: readonly number[], buf: Uint8Array, phase: string): Promise<void> {
    const r = this.layout.range(kind, indices);
    if (!r) return Promise.resolve();
    return this.io.track(phase, kind, 'write', r.end - r.start, this.files.get(kind)!.write(buf.subarray(0, r.end - r.start), r.start));
  }

  /** Moves buf to or from byte `at` of the kind's file (`background`: behind every urgent transfer). */
  transfer(dir: 'read' | 'write', kind: StateKind, at: number, buf: Uint8Array, phase: string, background = false): Promise<void> {
    const f = this.files.get(kind)!;
    const o = { background };
    return this.io.track(phase, kind, dir, buf.byteLength, dir === 'read' ? f.read(buf, at, o) : f.write(buf, at, o));
  }

  /** Synchronous buffered reader of one parameter's f32 `kind` (master, m, v), for checkpoint
   *  writers that pull chunk by chunk: copyTo(dst, elementOffset). */
  reader(kind: 'master' | 'm' | 'v', index: number): Float32Array | { length: number; copyTo(dst: Float32Array, offset: number): void } {
    const r = this.residentTensor(kind, index);
    if (r) return r.data as Float32Array;
    const p = this.layout.params[index]!;
    const base = this.layout.offsets[kind][index]!;
    const file = this.path(kind);
    return {
      length: p.size,
      copyTo: (dst, offset) => {
        const fd = fs.openSync(file, 'r');
        try {
          const bytes = new Uint8Array(dst.buffer, dst.byteOffset, dst.byteLength);
          let done = 0;
          while (done < bytes.byteLength) {
            const n = fs.readSync(fd, bytes, done, bytes.byteLength - done, base + offset * kindBytes(kind) + done);
            if (n === 0) throw new Error(`${file}: ends before parameter ${p.name}'s ${kind}`);
            done += n;
          }
        } finally {
          fs.closeSync(fd);
        }
      },
    };
  }

  /** A second handle on a kind's file, for sequential filling (./init.ts). */
  openExisting(kind: StateKind): DirectFile {
    return DirectFile.open(this.path(kind), 'rw');
  }

  /** Another file of the run in the state directory (activation checkpoints), `bytes` long. */
  openScratch(name: string, bytes: number): DirectFile {
    const f = DirectFile.open(path.join(this.dir, name), 'w');
    f.truncate(bytes);
    return f;
  }

  /** Closes the files once their transfers have settled (a failed step may leave some in flight). */
  async close(): Promise<void> {
    for (const f of this.files.values()) {
      await f.settled();
      f.close();
    }
    this.files.clear();
  }
}
