// The ParamSource of a data-parallel rank under ZeRO-3 (./layout.ts): this rank keeps only its
// slices of every group's parameter, gradient, master and moments; a group's whole parameters
// exist only between its fetch and its release.
//
// Order of collectives in a micro-batch with L layers (every rank runs the same, in the same
// order; a rank with no sequence in it runs skipMicroBatch, the same collectives without compute):
//   gather globals · gather 0 … L−1 (forward) · [L−1 is still there] · L−2 … 0 (backward)
//   reduce-scatter each layer's gradients when its backward ends, the globals' at the end
// Overlap: fetching group g starts the gather of the group expected next (g+1 forward, g−1
// backward) into the other of two buffers, so it runs on the communication thread while g
// computes; a reduce-scatter is waited for only when its buffer is needed again or at endStep.

import type { Backend, ComputeMode, PackedWeight } from '../../backend/index.js';
import type { Comm, Pending } from '../../dist/comm.js';
import { sumOverRanks } from '../../dist/comm.js';
import type { ModelConfig } from '../../models/config.js';
import type { GlobalSlot, LayerSlot, NameTable } from '../../models/architecture.js';
import { type ParamState, type Precision, allocParamState } from '../../optim/state.js';
import { fromFloat32, toFloat32 } from '../../tensor/dtype.js';
import { Tensor } from '../../tensor/tensor.js';
import {
  type GlobalGrads, type GlobalParams, type LayerGrads, type LayerParams, type ParamLookup, type ParamSource,
  globalGrads, globalParams, layerGrads, layerParams,
} from '../params.js';
import { type F32Source, f32Chunk } from '../training-state.js';
import { type Layout, ownedPart, partitionLayout } from './layout.js';
import { DiskSlices } from './offload.js';

type F32 = Tensor<'f32'>;
type ParamData = Float32Array | Uint16Array;

/** A buffer holding one group's gathered parameters (or a gather on its way). */
interface Slot {
  group: number;
  data: ParamData;
  pending: Pending | null;
  inUse: boolean;
  /** Views of the group's tensors (and widened copies of bf16 vectors), made on first use. */
  views: Map<string, Tensor>;
  /** Slices on disk: this rank's slice read for the gather, kept until it is done. */
  send: ParamData | null;
}

/** A reduce-scatter on its way: `full` is free again, and `recv` ready to add, once it is done. */
interface Reduction {
  group: number;
  full: Float32Array;
  recv: Float32Array;
  pending: Pending;
}

/** Bytes moved by this rank's collectives, for benchmarks. */
export interface TrafficCounters {
  gatheredBytes: number;
  reduceScatteredBytes: number;
}

export class PartitionedStore implements ParamSource {
  /** This rank's slice of each group, as a parameter state of shape [slice] (what AdamW updates);
   *  none when the slices are on RAM and disk (`disk`, ./offload.ts). */
  readonly states: ParamState[];
  readonly disk: DiskSlices | null;
  readonly traffic: TrafficCounters = { gatheredBytes: 0, reduceScatteredBytes: 0 };
  private readonly layerSlots: Slot[];
  private readonly globalSlot: Slot;
  private readonly gradBuffers = new Map<number, Float32Array[]>();
  private reductions: Reduction[] = [];
  /** Group expected to be fetched next (prefetched when a buffer is free). */
  private nextGroup = -1;

  /** init(entry name, from, to) gives elements [from, to) of a tensor's initial f32 values; or the
   *  slices are on RAM and disk, filled already. */
  constructor(
    readonly config: ModelConfig,
    readonly names: NameTable,
    readonly layout: Layout,
    private readonly comm: Comm,
    private readonly backend: Backend,
    readonly precision: Precision,
    init: ((name: string, from: number, to: number) => Float32Array) | DiskSlices,
    readonly mode: ComputeMode = 'fp32',
  ) {
    if (comm.size !== layout.ranks || comm.rank !== layout.rank) throw new RangeError('the layout is not for this communicator');
    this.disk = init instanceof DiskSlices ? init : null;
    this.states = init instanceof DiskSlices ? [] : layout.groups.map((g, i) => {
      const values = new Float32Array(g.slice);
      for (const e of g.entries) {
        const own = ownedPart(g, e, layout.rank);
        if (own) values.set(init(e.name, own.from, own.to), own.at);
      }
      return allocParamState(`group ${i}`, [g.slice], precision, values);
    });
    const layerSize = Math.max(0, ...layout.groups.slice(1).map((g) => g.slice * layout.ranks));
    this.layerSlots = [this.slot(layerSize), this.slot(layerSize)];
    this.globalSlot = this.slot(layout.groups[0]!.slice * layout.ranks);
  }

  /** This rank's store, initialised from every tensor's f32 values (`values` as ParamStore's; only
   *  tensors this rank owns a part of are read). */
  static fromValues(config: ModelConfig, names: NameTable, comm: Comm, backend: Backend, precision: Precision,
    values: (name: string, slot: LayerSlot | GlobalSlot, part: 'weight' | 'bias') => Float32Array, mode: ComputeMode = 'fp32'): PartitionedStore {
    const layout = partitionLayout(config, names, comm.size, comm.rank);
    const entries = new Map(layout.groups.flatMap((g) => g.entries.map((e) => [e.name, e] as const)));
    return new PartitionedStore(config, names, layout, comm, backend, precision, (name, from, to) => {
      const e = entries.get(name)!;
      return values(name, e.slot, e.part).subarray(from, to);
    }, mode);
  }

  /** Elements of the model's parameters (all ranks together). */
  get parameterCount(): number {
    return this.layout.groups.reduce((n, g) => n + g.total, 0);
  }

  private slot(size: number): Slot {
    const data = (n: number) => (this.precision === 'fp32' ? new Float32Array(n) : new Uint16Array(n));
    return { group: -1, data: data(size), pending: null, inUse: false, views: new Map(), send: this.disk ? data(size / this.layout.ranks) : null };
  }

  // ---- gathering --------------------------------------------------------------------------------

  private slotsFor(g: number): Slot[] {
    return g === 0 ? [this.globalSlot] : this.layerSlots;
  }

  /** Starts gathering group g into a free buffer (nothing when it is there or no buffer is free). */
  private startGather(g: number): Slot | null {
    const slots = this.slotsFor(g);
    const here = slots.find((s) => s.group === g);
    if (here) return here;
    const free = slots.find((s) => !s.inUse && s.pending === null) ?? slots.find((s) => !s.inUse);
    if (!free) return null;
    free.pending?.wait();
    const group = this.layout.groups[g]!;
    const n = group.slice * this.layout.ranks;
    const recv = free.data.subarray(0, n);
    free.group = g;
    free.views = new Map();
    const send = this.disk ? this.disk.paramSlice(g, free.send!) : (this.states[g]!.param.data as ParamData);
    free.pending = this.comm.allGather(send, recv);
    this.traffic.gatheredBytes += recv.byteLength;
    return free;
  }

  /** Group g's gathered parameters, held until release(g). */
  private acquire(g: number): Slot {
    const s = this.startGather(g);
    if (!s) throw new Error(`partition: no free buffer for group ${g} (a group was fetched twice without release)`);
    s.pending?.wait();
    s.pending = null;
    s.inUse = true;
    return s;
  }

  private release(g: number): void {
    const s = this.slotsFor(g).find((x) => x.group === g && x.inUse);
    if (s) s.inUse = false;
  }

  /** After fetching g: what the layer code asks for next, gathered meanwhile. */
  private prefetchAfter(g: number, backward: boolean): void {
    const L = this.config.layers;
    const layer = g - 1;
    this.nextGroup = g === 0 ? 1 : backward ? (layer > 0 ? g - 1 : -1) : layer + 1 < L ? g + 1 : g;
    if (this.nextGroup > 0) this.startGather(this.nextGroup);
  }

  private views(s: Slot): ParamLookup {
    const group = this.layout.groups[s.group]!;
    const entries = new Map(group.entries.map((e) => [e.name, e]));
    const view = (name: string): Tensor => {
      let t = s.views.get(name);
      if (!t) {
        const e = entries.get(name);
        if (!e) throw new Error(`partition: no parameter ${name} in group ${s.group}`);
        const data = s.data.subarray(e.offset, e.offset + e.size);
        t = data instanceof Float32Array ? new Tensor('f32', e.shape, data) : new Tensor('bf16', e.shape, data);
        s.views.set(name, t);
      }
      return t;
    };
    const vector = (name: string): F32 => {
      const p = view(name);
      if (p.dtype === 'f32') return p as F32;
      const key = `${name}:f32`;
      let w = s.views.get(key) as F32 | undefined;
      if (!w) s.views.set(key, (w = new Tensor('f32', p.shape, toFloat32('bf16', p.data as Uint16Array, false))));
      return w;
    };
    return {
      has: (name) => entries.has(name),
      param: view,
      linear: (base, backward) => {
        const p = view(`${base}.weight`);
        return {
          w: this.pack(s.group, `${base}.weight`, false, (into) => this.backend.packWeight(p, this.mode, base, { into })),
          wT: backward ? this.pack(s.group, `${base}.weight`, true, (into) => this.backend.packWeightT(p, this.mode, base, { into })) : null,
          b: entries.has(`${base}.bias`) ? vector(`${base}.bias`) : null,
        };
      },
      vector,
      grad: (name) => this.gradView(s.group, name),
    };
  }

  /** Packs into a buffer reused by the same weight of every layer (the layers are alike; one is
   *  computed at a time), so that a fetch leaves no garbage for the collector. */
  private pack(g: number, name: string, transposed: boolean, pack: (into: Uint8Array | undefined) => PackedWeight): PackedWeight {
    const key = `${g === 0 ? 'g' : 'l'}${this.layout.groups[g]!.entries.findIndex((e) => e.name === name)}${transposed ? 'T' : ''}`;
    const into = this.packs.get(key);
    const w = pack(into);
    if (!into) this.packs.set(key, w.data);
    return w;
  }

  private readonly packs = new Map<string, Uint8Array>();

  fetchLayer(j: number, backward: boolean): LayerParams {
    if (this.disk) this.disk.phase = backward ? 'backward' : 'forward';
    const s = this.acquire(j + 1);
    this.prefetchAfter(j + 1, backward);
    return layerParams(this.config, this.names, this.views(s), j, backward);
  }

  releaseLayer(j: number): void {
    this.release(j + 1);
  }

  fetchGlobals(backward: boolean): GlobalParams {
    if (this.disk) this.disk.phase = backward ? 'backward' : 'forward';
    const s = this.acquire(0);
    this.prefetchAfter(0, backward);
    return globalParams(this.names, this.views(s), backward);
  }

  releaseGlobals(): void {
    this.release(0);
  }

  // ---- gradients --------------------------------------------------------------------------------

  /** The full (zeroed) gradient buffer group g's backward adds into. */
  private readonly gradFull = new Map<number, Float32Array>();

  private gradBuffer(g: number): Float32Array {
    let full = this.gradFull.get(g);
    if (full) return full;
    const n = this.layout.groups[g]!.slice * this.layout.ranks;
    const key = g === 0 ? 0 : 1;
    const pool = this.gradBuffers.get(key) ?? [];
    this.gradBuffers.set(key, pool);
    // Two for layers: one being filled while the previous one's reduce-scatter runs. One for the
    // globals (the largest group, and its reduce-scatter is the micro-batch's last).
    const busy = (b: Float32Array) => [...this.gradFull.values()].includes(b) || this.reductions.some((r) => r.full === b);
    full = pool.find((b) => !busy(b));
    if (!full && pool.length >= (key === 0 ? 1 : 2)) {
      this.finishReductions(0);
      full = pool.find((b) => !busy(b));
    }
    if (!full) pool.push((full = new Float32Array(n)));
    full.fill(0);
    this.gradFull.set(g, full);
    return full;
  }

  private gradView(g: number, name: string): F32 {
    const e = this.layout.groups[g]!.entries.find((x) => x.name === name);
    if (!e) throw new Error(`partition: no parameter ${name} in group ${g}`);
    return new Tensor('f32', e.shape, this.gradBuffer(g).subarray(e.offset, e.offset + e.size));
  }

  /** Sends group g's gradients to their owners (summed over ranks). */
  private reduce(g: number): void {
    const full = this.gradFull.get(g);
    if (!full) return;
    this.gradFull.delete(g);
    const recv = new Float32Array(this.layout.groups[g]!.slice);
    this.reductions.push({ group: g, full, recv, pending: this.comm.reduceScatter(full, recv) });
    this.traffic.reduceScatteredBytes += full.byteLength;
    // Keep one in flight (overlapping the next layer's backward); add the older ones in.
    this.finishReductions(1);
  }

  /** Waits for all but the newest `keep` reduce-scatters and adds them into the owned gradients. */
  private finishReductions(keep: number): void {
    while (this.reductions.length > keep) {
      const r = this.reductions.shift()!;
      r.pending.wait();
      if (this.disk) {
        this.disk.addGrad(r.group, r.recv);
        continue;
      }
      const grad = this.states[r.group]!.grad.data as Float32Array;
      for (let i = 0; i < grad.length; i++) grad[i]! += r.recv[i]!;
    }
  }

  layerGrads(j: number): LayerGrads {
    this.gradBuffer(j + 1);
    const s = this.slotsFor(j + 1).find((x) => x.group === j + 1)!;
    return layerGrads(this.config, this.names, this.views(s), j);
  }

  releaseLayerGrads(j: number): void {
    this.reduce(j + 1);
  }

  globalGrads(): GlobalGrads {
    this.gradBuffer(0);
    return globalGrads(this.names, this.views(this.globalSlot));
  }

  releaseGlobalGrads(): void {
    this.reduce(0);
  }

  // ---- steps ------------------------------------------------------------------------------------

  beginStep(): void {
    this.disk?.zeroGrad();
  }

  /** Every reduce-scatter added in, every gather finished, gathered copies dropped: the optimizer
   *  is about to change the slices they came from. */
  endStep(): void {
    this.finishReductions(0);
    for (const s of [...this.layerSlots, this.globalSlot]) {
      s.pending?.wait();
      s.pending = null;
      s.group = -1;
      s.inUse = false;
      s.views = new Map();
    }
    this.nextGroup = -1;
  }

  /** A micro-batch of which this rank has no sequence: the collectives of lossAndGrad in the same
   *  order (./store.ts's header), contributing zero gradients. */
  skipMicroBatch(): void {
    const L = this.config.layers;
    this.acquire(0);
    this.prefetchAfter(0, true);
    this.gradBuffer(0);
    for (let j = 0; j < L; j++) {
      this.acquire(j + 1);
      this.prefetchAfter(j + 1, false);
      this.release(j + 1);
    }
    for (let j = L - 1; j >= 0; j--) {
      this.acquire(j + 1);
      this.prefetchAfter(j + 1, true);
      this.gradBuffer(j + 1);
      this.reduce(j + 1);
      this.release(j + 1);
    }
    this.reduce(0);
    this.release(0);
  }

  /** Sums numbers over the ranks. */
  sum(values: number[]): number[] {
    return sumOverRanks(this.comm, values);
  }

  /** Every tensor's whole fp32 master (gathered from all ranks, group by group), to `use` one
   *  group at a time (with the slices on disk, in a buffer the next group reuses). */
  gatherMasters(use: (name: string, shape: number[], values: Float32Array) => void): void {
    // Slices on disk: one buffer for every group (`use` must copy what it keeps).
    const one = this.disk ? new Float32Array(Math.max(...this.layout.groups.map((g) => g.slice)) * this.layout.ranks) : null;
    this.layout.groups.forEach((g, i) => {
      const full = one ? one.subarray(0, g.slice * this.layout.ranks) : new Float32Array(g.slice * this.layout.ranks);
      this.comm.allGather(this.disk ? f32Chunk(this.disk.source('master', i), 0, g.slice) : this.states[i]!.master.data, full).wait();
      for (const e of g.entries) use(e.name, e.shape, full.subarray(e.offset, e.offset + e.size));
    });
  }

  /** Group i's master or moment slice, for checkpoints. */
  slice(i: number, kind: 'master' | 'm' | 'v'): F32Source {
    return this.disk ? this.disk.source(kind, i) : this.states[i]![kind].data;
  }

  /** Removes the slices' files (on RAM and disk). */
  async close(): Promise<void> {
    await this.disk?.close();
  }

  /** bf16 precision: each slice's bf16 parameter rounded again from its master (after a resume
   *  read the masters), as AdamW writes it. */
  syncParams(): void {
    for (const s of this.states) if (s.param.dtype === 'bf16') s.param.data.set(fromFloat32('bf16', s.master.data));
  }
}
