// The optimizer step of an offloaded run, as ZeRO-Infinity streams it: the parameters are cut into
// sub-groups of consecutive parameters (up to `subGroupSize` elements each; a larger parameter is
// a sub-group of its own), and each sub-group's gradient, master weights and moments go disk →
// RAM → fused AdamW → disk, with the next sub-groups being read and the last ones being written
// while one updates. `sets` sets of aligned buffers (three at least), allocated once and reused
// every step: up to sets − 2 sub-groups are read ahead. A parameter larger than a sub-group is
// cut into pieces of it (the update is elementwise).
//
// The step overlaps the next forward (start() returns at once; the update runs in the
// background): the sub-groups run in the order the forward uses the units — the globals
// (embeddings, fetched first) then layer 0, 1, … — and updated(u) settles once every sub-group
// holding a parameter of unit u is updated and written, which is what the store's fetch of u waits
// for. The global gradient norm (clipping) is known when the backward ends, before any update.
// Each parameter's update is independent, so the order does not change the results. Same math as
// AdamW.update: the global norm is the sum, in parameter order, of each parameter's Σ g²
// (recorded when its gradients were last released), and each parameter gets the same fused kernel
// call with the same hyper-parameters.

import type { Backend } from '../../backend/index.js';
import type { AdamW, StepResult } from '../../optim/adamw.js';
import type { AdamWHyper } from '../../backend/kernels-train.js';
import { alignUp, alignedBytes } from '../../tensor/disk/io.js';
import { Tensor } from '../../tensor/tensor.js';
import { PIECE_ALIGN, type StateKind, kindBytes, roundSubGroup } from './layout.js';
import type { OffloadStore } from './store.js';

/** What the step reads: an offloaded run's store, or a rank's slices (src/train/partition/offload.ts). */
export type StepStates = Pick<OffloadStore, 'layout' | 'states' | 'precision' | 'sumSquares'>;

const READ: StateKind[] = ['grad', 'master', 'm', 'v'];

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
  /** Sub-group indices in the order they are updated: those holding globals first, then the
   *  rest in file order (layer 0 first). */
  readonly runOrder: number[];
  /** Per unit, the sub-groups holding one of its parameters. */
  private readonly unitGroups: number[][];
  /** The update in flight (started by start(), not yet settled), or null. */
  private pending: { groups: Promise<void>[]; all: Promise<void> } | null = null;

  constructor(private readonly store: StepStates, private readonly backend: Backend, subGroupSize: number, readonly sets = 3) {
    if (!Number.isInteger(sets) || sets < 3) throw new RangeError(`optimizer buffer sets must be an integer >= 3, got ${sets}`);
    this.subGroupSize = roundSubGroup(subGroupSize);
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
    const layout = store.layout, L = layout.units.length - 1;
    this.unitGroups = layout.units.map(() => []);
    this.groups.forEach((g, i) => {
      for (const u of new Set(g.map((p) => layout.params[p.index]!.unit))) this.unitGroups[u]!.push(i);
    });
    const first = new Set(this.unitGroups[L]);
    this.runOrder = [...first, ...this.groups.map((_, i) => i).filter((i) => !first.has(i))];
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

  /** Bytes of RAM the buffer sets take. */
  get bufferBytes(): number {
    return this.sets * this.store.layout.kinds.reduce((n, k) => n + Math.max(0, ...this.groups.map((g) => this.rangeBytes(k, g))), 0);
  }

  private buffers(): Record<StateKind, Uint8Array>[] {
    this.slots ??= Array.from({ length: this.sets }, () => Object.fromEntries(this.store.layout.kinds.map((k) =>
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
    // Background: the forward it overlaps reads each unit's parameters once they are updated,
    // and that read (urgent) should not queue behind the sub-groups read ahead.
    return this.store.states.transfer(dir, kind, r.start, buf.subarray(0, r.end - r.start), 'optimizer', true);
  }

  /** Starts the step: the norm and hyper-parameters now (the returned result), the update in the
   *  background. The caller waits for what the gradients of the backward wrote (store.quiesce())
   *  first. A failure of the update rejects updated() and settle(). */
  start(adamw: AdamW, lr: number): StepResult {
    if (this.pending) throw new Error('the previous optimizer step has not settled');
    let s = 0;
    for (const x of this.store.sumSquares) s += x;
    const { hyper, ...result } = adamw.begin(lr, Math.sqrt(s));
    const done = this.groups.map(() => deferred());
    const all = this.run(hyper, done).then(
      () => {},
      (e: unknown) => {
        for (const d of done) d.reject(e);
        throw e;
      });
    all.catch(() => {});  // reported by settle() or the updated() a fetch waits on
    const pending = { groups: done.map((d) => d.promise), all };
    // Done: nothing to wait for any more. Failed: stays pending until settle() reports it.
    all.then(() => {
      if (this.pending === pending) this.pending = null;
    }, () => {});
    this.pending = pending;
    return result;
  }

  /** Settles once unit u's parameters are updated and written (at once when no update is pending). */
  updated(u: number): Promise<void> | null {
    const p = this.pending;
    if (!p) return null;
    const w = Promise.all(this.unitGroups[u]!.map((g) => p.groups[g]!)).then(() => {});
    w.catch(() => {});
    return w;
  }

  get busy(): boolean {
    return this.pending !== null;
  }

  /** Waits for the pending update (rethrowing its error); afterwards every state is current. */
  async settle(): Promise<void> {
    const p = this.pending;
    if (!p) return;
    try {
      await p.all;
    } finally {
      if (this.pending === p) this.pending = null;
    }
  }

  private async run(hyper: AdamWHyper, done: Deferred[]): Promise<void> {
    const store = this.store;
    const slots = this.buffers();
    const K = this.sets, order = this.runOrder, n = order.length;
    const written = store.layout.kinds.filter((k) => k !== 'grad');
    const reads: Promise<void>[] = [];
    const writes: Promise<void>[] = [];
    const all = (ps: Promise<void>[]) => {
      const p = Promise.all(ps).then(() => {});
      p.catch(() => {});  // awaited below (IoCounter.track)
      return p;
    };
    // Position i of the run order uses buffer set i % K.
    const read = (i: number) => all(READ.map((k) => this.transfer('read', k, this.groups[order[i]!]!, slots[i % K]![k])));
    try {
      let issued = 0;
      for (let i = 0; i < n; i++) {
        // Read ahead up to K − 2 sub-groups; set j % K was last used by position j − K.
        for (; issued < n && issued <= i + K - 2; issued++) {
          if (issued >= K) await writes[issued - K];
          reads[issued] = read(issued);
        }
        await reads[i];
        const buf = slots[i % K]!;
        const g = order[i]!;
        const group = this.groups[g]!;
        const start = Object.fromEntries(store.layout.kinds.map((k) => [k, this.range(k, group)?.start ?? 0])) as Record<StateKind, number>;
        const t = (k: StateKind, piece: Piece) => this.tensor(k, piece, buf[k], start[k]);
        for (const piece of group) {
          const copy = store.precision === 'bf16' ? (t('param', piece) as Tensor<'bf16'>) : null;
          this.backend.train.adamw(t('grad', piece) as Tensor<'f32'>, t('master', piece) as Tensor<'f32'>, t('m', piece) as Tensor<'f32'>,
            t('v', piece) as Tensor<'f32'>, copy, hyper);
        }
        writes[i] = all(written.map((k) => this.transfer('write', k, group, buf[k])));
        writes[i]!.then(() => done[g]!.resolve(), () => {});
      }
    } finally {
      // Every transfer settles before its buffers can be reused (or an error is reported).
      await Promise.allSettled([...reads, ...writes]);
    }
    await all(writes);
  }
}

interface Deferred {
  promise: Promise<void>;
  resolve: () => void;
  reject: (e: unknown) => void;
}

function deferred(): Deferred {
  let resolve!: () => void, reject!: (e: unknown) => void;
  const promise = new Promise<void>((a, b) => {
    resolve = a;
    reject = b;
  });
  promise.catch(() => {});
  return { promise, resolve, reject };
}
