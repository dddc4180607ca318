// A ParamSource whose model states live on RAM and disk (ZeRO-Infinity's offload engine): the
// layer code fetches and releases as it does from the in-RAM ParamStore, and this source reads
// each unit's parameters (a layer, or the globals) from disk before use, along a recorded trace
// and ahead of it (./prefetch.ts), writes gradients back as each unit's backward releases them,
// and runs the optimizer step as a stream of sub-groups (./optimizer.ts).
//
// Same math as ParamStore: the same parameter values are packed by the same kernels, gradients
// accumulate in f32 buffers over micro-batches (a unit's gradients are read back before a later
// micro-batch adds to them; on the first they start from zero without a read), and the global
// gradient norm sums each parameter's Σ g² in parameter order, as AdamW.gradNorm does.

import type { Backend, ComputeMode, PackedWeight } from '../../backend/index.js';
import type { NameTable } from '../../models/architecture.js';
import type { ModelConfig } from '../../models/config.js';
import type { Precision } from '../../optim/state.js';
import { toFloat32 } from '../../tensor/dtype.js';
import { BufferPool, type Lease } from '../../tensor/disk/buffer-pool.js';
import { Tensor } from '../../tensor/tensor.js';
import {
  type GlobalGrads, type GlobalParams, type LayerGrads, type LayerParams, type ParamLookup, type ParamSource, type TableRows, type TrainLinear,
  globalGrads, globalParams, layerGrads, layerParams,
} from '../params.js';
import type { Layout, StateKind } from './layout.js';
import { ActivationSpill } from './activations.js';
import { TileIo } from './tiles.js';
import type { TiledGrad } from '../../backend/tiled.js';
import { Prefetcher } from './prefetch.js';
import type { States } from './states.js';
import type { OffloadStepStats, Phase } from './stats.js';

type F32 = Tensor<'f32'>;

/** One unit's states of one kind in RAM: the lease holding its disk part (null when all of it
 *  is resident) and the read or write in flight. */
export interface Loaded {
  unit: number;
  lease: Lease | null;
  start: number;
  done: Promise<void>;
  /** For the prefetcher's bandwidth estimate. */
  bytes: number;
  readMs: number;
}

export interface OffloadOptions {
  /** Most units read ahead of use. */
  maxDepth: number;
  /** Activation checkpoints (layer inputs) on disk when true. */
  actOnDisk: boolean;
  /** Tokens of the largest micro-batch, for the activation buffers. */
  maxTokens: number;
  /** Bytes of a weight tile (./tiles.ts). */
  tileBytes: number;
  /** Called by close() once the files are closed (removes the state directory). */
  onClose?: () => void;
}

export class OffloadStore implements ParamSource, ParamLookup {
  /** The kind compute reads: the bf16 copy, or in fp32 precision the master itself. */
  readonly computeKind: StateKind;
  private readonly byName = new Map<string, number>();
  /** Units being computed: their parameter tensors and (in backward) gradient tensors. */
  private readonly held = new Map<number, { params: Loaded; tensors: Map<number, Tensor>; f32: Map<number, F32> }>();
  private readonly grads = new Map<number, { loaded: Loaded; tensors: Map<number, Tensor> }>();
  private readonly paramPools: [BufferPool, BufferPool];
  private readonly gradPools: [BufferPool, BufferPool];
  /** Gradient writes in flight, per unit (a later read of the unit waits for them). */
  private readonly writing = new Map<number, Promise<void>>();
  /** Units whose gradients are all zero (no micro-batch has added to them this step). */
  private readonly zero: boolean[];
  /** Each parameter's Σ g² at its last release: the step's, once the last micro-batch is done. */
  readonly sumSquares: Float64Array;
  readonly prefetch: Prefetcher;
  /** Set by the trainer before each micro-batch: whether it is the step's last (the optimizer
   *  follows it, so its pass reads nothing of the next ahead). */
  lastMicroBatch = true;
  private phase: Phase = 'forward';
  /** In a training pass (its backward follows), not an evaluation: a tiled weight's first pass
   *  writes its transposed copy (./tiles.ts). */
  private training = false;
  private readonly tiles: TileIo;
  private readonly acts: ActivationSpill | null;
  /** The optimizer step still updating in the background (./optimizer.ts): a unit's fetch waits
   *  until its parameters are updated; null when none is pending. */
  updated: (u: number) => Promise<void> | null = () => null;

  constructor(
    readonly config: ModelConfig,
    readonly names: NameTable,
    private readonly backend: Backend,
    readonly precision: Precision,
    readonly mode: ComputeMode,
    readonly states: States,
    private readonly options: OffloadOptions,
  ) {
    const layout = states.layout;
    this.computeKind = precision === 'bf16' ? 'param' : 'master';
    layout.params.forEach((p) => this.byName.set(p.name, p.index));
    const L = config.layers;
    const maxLayer = (kind: StateKind) => Math.max(4096, ...layout.fetched.slice(0, L).map((u) => states.bufferBytes(kind, u)));
    const globals = (kind: StateKind) => Math.max(4096, states.bufferBytes(kind, layout.fetched[L]!));
    this.paramPools = [new BufferPool({ bufferBytes: maxLayer(this.computeKind), count: options.maxDepth + 1 }),
      new BufferPool({ bufferBytes: globals(this.computeKind), count: 2 })];
    this.gradPools = [new BufferPool({ bufferBytes: maxLayer('grad'), count: 2 }), new BufferPool({ bufferBytes: globals('grad'), count: 1 })];
    this.zero = Array.from({ length: L + 1 }, () => true);
    this.tiles = new TileIo(states, backend, mode, options.tileBytes, () => this.phase);
    this.sumSquares = new Float64Array(layout.params.length);
    this.prefetch = new Prefetcher(options.maxDepth, (u) => this.tryRead(u), (l) => l.lease && this.pool(l.unit, false).release(l.lease));
    this.acts = options.actOnDisk ? new ActivationSpill(states, config.hidden, options.maxTokens, L) : null;
    if (this.acts) {
      this.keepInput = (j, x) => this.acts!.keep(j, x);
      this.recallInput = (j, into) => states.io.wait('backward', this.acts!.recall(j, into));
    }
  }

  keepInput?: (j: number, x: F32) => Promise<void>;
  recallInput?: (j: number, into: F32) => Promise<F32>;

  get layout(): Layout {
    return this.states.layout;
  }

  private pool(u: number, grads: boolean): BufferPool {
    const pools = grads ? this.gradPools : this.paramPools;
    return pools[u === this.config.layers ? 1 : 0];
  }

  /** Unit u's compute tensors: the read started now, into a buffer of `lease`. */
  private begin(u: number, lease: Lease | null, background: boolean): Loaded {
    const indices = this.layout.fetched[u]!;
    const t0 = performance.now();
    const l: Loaded = { unit: u, lease, start: this.layout.range(this.computeKind, indices)?.start ?? 0, bytes: 0, readMs: 0, done: Promise.resolve() };
    if (lease) {
      l.bytes = this.states.bufferBytes(this.computeKind, indices);
      const phase = this.phase;
      // A read ahead of the unit's update waits for it: the file holds the old values until then.
      // The forward needs it next then (it waits for the same update): urgent.
      const after = this.updated(u);
      const read = () => this.states.read(this.computeKind, indices, lease.data, phase, background && !after);
      l.done = (after ? after.then(read) : read()).then(() => {
        l.readMs = performance.now() - t0;
      });
      l.done.catch(() => {});  // awaited by prepare() or drop(); see IoCounter.track
    }
    return l;
  }

  private async read(u: number): Promise<Loaded> {
    const bytes = this.states.bufferBytes(this.computeKind, this.layout.fetched[u]!);
    return this.begin(u, bytes > 0 ? await this.pool(u, false).acquire(bytes) : null, false);
  }

  /** A read ahead of use: only when a buffer is free now. */
  private tryRead(u: number): Loaded | null {
    const bytes = this.states.bufferBytes(this.computeKind, this.layout.fetched[u]!);
    if (bytes === 0) return this.begin(u, null, true);
    const lease = this.pool(u, false).tryAcquire(bytes);
    return lease ? this.begin(u, lease, true) : null;
  }

  private async prepare(u: number, backward: boolean): Promise<void> {
    this.phase = backward ? 'backward' : 'forward';
    const pending = this.updated(u);
    if (pending) {
      // Let the update's transfers that landed during the last unit's compute go on (a resolved
      // await alone would not run their callbacks), then wait for unit u's part of it.
      await new Promise((resolve) => setImmediate(resolve));
      await this.states.io.wait('optimizer', pending);
    }
    const loaded = this.prefetch.take(u, backward) ?? await this.read(u);
    try {
      await this.states.io.wait(this.phase, loaded.done);
    } catch (e) {
      if (loaded.lease) this.pool(u, false).release(loaded.lease);
      throw e;
    }
    this.prefetch.sample(loaded);
    this.held.set(u, { params: loaded, tensors: new Map(), f32: new Map() });
    if (backward) await this.prepareGrads(u);
    this.prefetch.ahead();
  }

  async prepareLayer(j: number, backward: boolean): Promise<void> {
    await this.prepare(j, backward);
  }

  async prepareGlobals(backward: boolean): Promise<void> {
    this.training = backward;
    this.prefetch.beginPass(backward ? 'train' : 'eval', backward && this.lastMicroBatch);
    await this.prepare(this.config.layers, backward);
  }

  /** Unit u's gradient buffers: zeros on the step's first micro-batch, else read back. */
  private async prepareGrads(u: number): Promise<void> {
    const indices = this.layout.fetched[u]!;
    const bytes = this.states.bufferBytes('grad', indices);
    const start = this.layout.range('grad', indices)?.start ?? 0;
    const lease = bytes > 0 ? await this.pool(u, true).acquire(bytes) : null;
    const loaded: Loaded = { unit: u, lease, start, bytes, readMs: 0, done: Promise.resolve() };
    // The RAM-resident gradients start from zero here, not in zeroGrad(): until the unit's fetch in
    // this step's forward the previous step's update may still be reading them.
    if (this.zero[u]) for (const i of this.layout.units[u]!) this.states.residentTensor('grad', i)?.data.fill(0);
    if (lease && this.zero[u]) lease.data.fill(0, 0, bytes);
    else if (lease) {
      try {
        await this.writing.get(u);
        await this.states.io.wait('backward', this.states.read('grad', indices, lease.data, 'backward'));
      } catch (e) {
        this.pool(u, true).release(lease);
        throw e;
      }
    }
    this.grads.set(u, { loaded, tensors: new Map() });
  }

  // ---- ParamLookup --------------------------------------------------------------------------

  private index(name: string): number {
    const i = this.byName.get(name);
    if (i === undefined) throw new Error(`no parameter ${name}`);
    return i;
  }

  private unitOf(i: number): number {
    return this.layout.params[i]!.unit;
  }

  has(name: string): boolean {
    return this.byName.has(name);
  }

  param(name: string): Tensor {
    const i = this.index(name);
    if (this.layout.isTiled(i)) throw new Error(`${name} is computed in tiles: it has no whole tensor`);
    const h = this.held.get(this.unitOf(i));
    if (!h) throw new Error(`${name}: its unit was not prepared (prepareLayer/prepareGlobals) before the fetch`);
    let t = h.tensors.get(i);
    if (!t) h.tensors.set(i, (t = this.states.tensor(this.computeKind, i, h.params.lease?.data ?? null, h.params.start)));
    return t;
  }

  vector(name: string): F32 {
    const p = this.param(name);
    if (p.dtype === 'f32') return p as F32;
    const i = this.index(name);
    const h = this.held.get(this.unitOf(i))!;
    let v = h.f32.get(i);
    if (!v) h.f32.set(i, (v = new Tensor('f32', p.shape, toFloat32('bf16', p.data as Uint16Array, false))));
    return v;
  }

  linear(base: string, backward: boolean): TrainLinear {
    const name = `${base}.weight`;
    const i = this.index(name);
    if (this.layout.isTiled(i)) {
      return {
        w: this.tiles.weight(this.computeKind, i, base, this.training), wT: backward ? this.tiles.weightT(this.computeKind, i, base) : null,
        b: this.has(`${base}.bias`) ? this.vector(`${base}.bias`) : null,
      };
    }
    const p = this.param(name);
    const w = this.pack(name, false, (into) => this.backend.packWeight(p, this.mode, base, { into }));
    return {
      w, wT: backward ? this.pack(name, true, (into) => this.backend.packWeightT(p, this.mode, base, { into })) : null,
      b: this.has(`${base}.bias`) ? this.vector(`${base}.bias`) : null,
    };
  }

  /** Packs into a buffer reused by the same weight of every layer (the layers are alike), so that
   *  fetching a layer leaves no garbage for the collector. */
  private pack(name: string, transposed: boolean, pack: (into: Uint8Array | undefined) => PackedWeight): PackedWeight {
    const i = this.index(name);
    const u = this.unitOf(i);
    const key = `${u === this.config.layers ? 'g' : 'l'}${i - this.layout.units[u]![0]!}${transposed ? 'T' : ''}`;
    const into = this.packs.get(key);
    const w = pack(into);
    if (!into) this.packs.set(key, w.data);
    return w;
  }

  private readonly packs = new Map<string, Uint8Array>();

  table(name: string): TableRows | null {
    const i = this.index(name);
    return this.layout.isTiled(i) ? this.tiles.table(this.computeKind, i) : null;
  }

  linearGrad(name: string): F32 | TiledGrad {
    const i = this.index(name);
    if (!this.layout.isTiled(i)) return this.grad(name);
    if (!this.grads.has(this.unitOf(i))) throw new Error(`${name}: its gradients were not prepared (a backward prepare) before use`);
    return this.tiles.grad(i, this.zero[this.unitOf(i)]!);
  }

  grad(name: string): F32 {
    const i = this.index(name);
    const g = this.grads.get(this.unitOf(i));
    if (!g) throw new Error(`${name}: its gradients were not prepared (a backward prepare) before use`);
    let t = g.tensors.get(i);
    if (!t) g.tensors.set(i, (t = this.states.tensor('grad', i, g.loaded.lease?.data ?? null, g.loaded.start)));
    return t as F32;
  }

  // ---- ParamSource --------------------------------------------------------------------------

  fetchLayer(j: number, backward: boolean): LayerParams {
    return layerParams(this.config, this.names, this, j, backward);
  }

  releaseLayer(j: number): void {
    this.release(j);
  }

  fetchGlobals(backward: boolean): GlobalParams {
    return globalParams(this.names, this, backward);
  }

  releaseGlobals(): void {
    this.release(this.config.layers);
    this.prefetch.endPass();
  }

  layerGrads(j: number): LayerGrads {
    return layerGrads(this.config, this.names, this, j);
  }

  releaseLayerGrads(j: number): void {
    this.releaseGrads(j);
  }

  globalGrads(): GlobalGrads {
    return globalGrads(this.names, this);
  }

  releaseGlobalGrads(): void {
    this.releaseGrads(this.config.layers);
  }

  private release(u: number): void {
    const h = this.held.get(u);
    if (!h) return;
    this.held.delete(u);
    if (h.params.lease) this.pool(u, false).release(h.params.lease);
  }

  /** Records Σ g² of each of the unit's parameters, then writes the disk part back; the buffer
   *  returns to its pool when the write is done. */
  private releaseGrads(u: number): void {
    const g = this.grads.get(u);
    if (!g) return;
    this.grads.delete(u);
    for (const i of this.layout.units[u]!) {
      if (this.layout.isTiled(i)) {
        this.sumSquares[i] = this.tiles.sumSquares(i);
        continue;
      }
      const t = g.tensors.get(i) ?? this.states.tensor('grad', i, g.loaded.lease?.data ?? null, g.loaded.start);
      this.sumSquares[i] = this.backend.train.sumSquares(t as F32);
    }
    this.zero[u] = false;
    const lease = g.loaded.lease;
    if (!lease) return;
    const pool = this.pool(u, true);
    const w = this.states.write('grad', this.layout.fetched[u]!, lease.data, 'backward').finally(() => pool.release(lease));
    w.catch(() => {});  // awaited by a later read of the unit's gradients, or quiesce()
    this.writing.set(u, w);
  }

  // ---- the step -----------------------------------------------------------------------------

  /** Before a step's first micro-batch: every gradient is zero again (each unit's when its
   *  backward first prepares it; the pending update took the norm already). */
  zeroGrad(): void {
    this.zero.fill(true);
    this.tiles.zeroGrad();
    this.sumSquares.fill(0);
  }

  /** Waits for every gradient write and drops what was read ahead (the parameters are about to
   *  change): before the optimizer step. */
  async quiesce(): Promise<void> {
    await this.prefetch.drop();
    const writes = [...this.writing.values()];
    this.writing.clear();
    await Promise.all(writes);
  }

  stats(): OffloadStepStats {
    return this.states.io.take({ prefetchDepth: this.prefetch.depth, traces: this.prefetch.traces });
  }

  /** Waits for what is in flight, then releases the buffers and closes the files. */
  async close(): Promise<void> {
    // After a failed step (an I/O error) units may still be held and transfers may have failed:
    // their error was reported where it happened, so close only waits and lets go.
    await this.quiesce().catch(() => {});
    for (const u of [...this.held.keys()]) this.release(u);
    for (const [u, g] of [...this.grads]) {
      this.grads.delete(u);
      if (g.loaded.lease) this.pool(u, true).release(g.loaded.lease);
    }
    for (const p of [...this.paramPools, ...this.gradPools]) p.dispose();
    await this.acts?.close();
    this.tiles.close();
    await this.states.close();
    this.options.onClose?.();
  }
}
