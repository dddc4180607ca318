// The optimizer step of an offloaded run, as ZeRO-Infinity streams it: the parameters are cut into
// sub-groups of consecutive parameters (up to `subGroupSize` elements each; a larger parameter is
// a sub-group of its own), and each sub-group's gradient, master weights and moments go disk →
// RAM → fused AdamW → disk, with sub-group i+1 being read and i−1 being written while i updates.
// Three sets of aligned buffers, allocated once and reused every step. A parameter larger than a
// sub-group is cut into pieces of it (the update is elementwise).
//
// The sub-groups follow the files' order (./layout.ts); the order of updates does not matter,
// each parameter's is independent. Same math as AdamW.update: the global norm is the sum, in parameter order, of each parameter's
// Σ g² (recorded when its gradients were last released), and each parameter gets the same fused
// kernel call with the same hyper-parameters.

import type { Backend } from '../../backend/index.js';
import type { AdamW, StepResult } from '../../optim/adamw.js';
import { alignUp, alignedBytes } from '../../tensor/disk/io.js';
import { Tensor } from '../../tensor/tensor.js';
import { type StateKind, kindBytes } from './layout.js';
import type { OffloadStore } from './store.js';

/** What the step reads: an offloaded run's store, or a rank's slices (src/train/partition/offload.ts). */
export type StepStates = Pick<OffloadStore, 'layout' | 'states' | 'precision' | 'sumSquares' | 'quiesce'>;

const READ: StateKind[] = ['grad', 'master', 'm', 'v'];
/** Pieces of a parameter start at multiples of this many elements: 4096-byte aligned in f32 and
 *  bf16 alike, so that each piece's disk range is one aligned transfer. */
const PIECE_ALIGN = 2048;

/** Elements [e0, e1) of parameter `index`: AdamW is elementwise, so a parameter larger than a
 *  sub-group is updated piece by piece with the same results. */
interface Piece {
  index: number;
  e0: number;
  e1: number;
}

export class StreamingAdamW {
  readonly groups: Piece[][] = [];
  private slots: Record<StateKind, Uint8Array>[] | null = null;
  readonly subGroupSize: number;

  constructor(private readonly store: StepStates, private readonly backend: Backend, subGroupSize: number) {
    this.subGroupSize = Math.max(PIECE_ALIGN, Math.floor(subGroupSize / PIECE_ALIGN) * PIECE_ALIGN);
    // n counts a group's elements as their f32 bytes padded to blocks take, so that a group's
    // buffer is about subGroupSize elements of each kind however small its parameters are.
    const S = this.subGroupSize;
    let cur: Piece[] = [], n = 0;
    for (const p of store.layout.order.map((i) => store.layout.params[i]!)) {
      let e0 = 0;
      do {
        let room = Math.max(0, Math.floor((S - n) / PIECE_ALIGN) * PIECE_ALIGN);
        if (room === 0) {
          this.groups.push(cur);
          cur = [];
          n = 0;
          room = S;
        }
        const e1 = Math.min(p.size, e0 + room);
        cur.push({ index: p.index, e0, e1 });
        n += alignUp((e1 - e0) * 4) / 4;
        e0 = e1;
      } while (e0 < p.size);
    }
    if (cur.length > 0) this.groups.push(cur);
  }

  /** The file range of a group's disk-resident `kind`, or null. */
  private range(kind: StateKind, group: Piece[]): { start: number; end: number } | null {
    const layout = this.store.layout;
    const kb = kindBytes(kind);
    let start = Infinity, end = -1;
    for (const { index, e0, e1 } of group) {
      const o = layout.offsets[kind][index]!;
      if (o < 0) continue;
      start = Math.min(start, o + e0 * kb);
      end = Math.max(end, o + alignUp(e1 * kb));
    }
    return end < 0 ? null : { start, end };
  }

  private rangeBytes(kind: StateKind, group: Piece[]): number {
    const r = this.range(kind, group);
    return r ? r.end - r.start : 0;
  }

  /** Bytes of RAM the three buffer sets take. */
  get bufferBytes(): number {
    return 3 * this.store.layout.kinds.reduce((n, k) => n + Math.max(0, ...this.groups.map((g) => this.rangeBytes(k, g))), 0);
  }

  private buffers(): Record<StateKind, Uint8Array>[] {
    this.slots ??= [0, 1, 2].map(() => Object.fromEntries(this.store.layout.kinds.map((k) =>
      [k, alignedBytes(Math.max(0, ...this.groups.map((g) => this.rangeBytes(k, g))))])) as Record<StateKind, Uint8Array>);
    return this.slots;
  }

  /** A piece's `kind` as a tensor: a view of its RAM tensor, or of the group's buffer. */
  private tensor(kind: StateKind, piece: Piece, buf: Uint8Array, start: number): Tensor {
    const { index, e0, e1 } = piece;
    const r = this.store.states.residentTensor(kind, index);
    const dtype = kind === 'param' ? 'bf16' : 'f32';
    if (r) return new Tensor(dtype, [e1 - e0], (r.data as Float32Array | Uint16Array).subarray(e0, e1));
    const at = buf.byteOffset + this.store.layout.offsets[kind][index]! + e0 * kindBytes(kind) - start;
    return new Tensor(dtype, [e1 - e0], kind === 'param' ? new Uint16Array(buf.buffer, at, e1 - e0) : new Float32Array(buf.buffer, at, e1 - e0));
  }

  private transfer(dir: 'read' | 'write', kind: StateKind, group: Piece[], buf: Uint8Array): Promise<void> {
    const r = this.range(kind, group);
    if (!r) return Promise.resolve();
    return this.store.states.transfer(dir, kind, r.start, buf.subarray(0, r.end - r.start), 'optimizer');
  }

  async step(adamw: AdamW, lr: number): Promise<StepResult> {
    const store = this.store, io = store.states.io;
    await store.quiesce();
    let s = 0;
    for (const x of store.sumSquares) s += x;
    const { hyper, ...result } = adamw.begin(lr, Math.sqrt(s));
    const slots = this.buffers();
    const written = store.layout.kinds.filter((k) => k !== 'grad');
    const reads: Promise<void>[] = [];
    const writes: Promise<void>[] = [];
    const all = (ps: Promise<void>[]) => {
      const p = Promise.all(ps).then(() => {});
      p.catch(() => {});  // awaited below (IoCounter.track)
      return p;
    };
    const read = (g: number) => all(READ.map((k) => this.transfer('read', k, this.groups[g]!, slots[g % 3]![k])));
    try {
      if (this.groups.length > 0) reads[0] = read(0);
      for (let g = 0; g < this.groups.length; g++) {
        if (g + 1 < this.groups.length) {
          // Sub-group g+1 takes the buffers of g−2: its write must be done.
          if (g >= 2) await io.wait('optimizer', writes[g - 2]!);
          reads[g + 1] = read(g + 1);
        }
        await io.wait('optimizer', reads[g]!);
        const buf = slots[g % 3]!;
        const group = this.groups[g]!;
        const start = Object.fromEntries(store.layout.kinds.map((k) => [k, this.range(k, group)?.start ?? 0])) as Record<StateKind, number>;
        const t = (k: StateKind, piece: Piece) => this.tensor(k, piece, buf[k], start[k]);
        for (const piece of group) {
          const copy = store.precision === 'bf16' ? (t('param', piece) as Tensor<'bf16'>) : null;
          this.backend.train.adamw(t('grad', piece) as Tensor<'f32'>, t('master', piece) as Tensor<'f32'>, t('m', piece) as Tensor<'f32'>,
            t('v', piece) as Tensor<'f32'>, copy, hyper);
        }
        writes[g] = all(written.map((k) => this.transfer('write', k, group, buf[k])));
      }
    } finally {
      // Every transfer settles before its buffers can be reused (or an error is reported).
      await Promise.allSettled([...reads, ...writes]);
    }
    await io.wait('optimizer', all(writes));
    return result;
  }
}
