// Runs generation steps of a block — numGpuBatches batches of up to gpuBatchSize sequences —
// through the layers under a policy, with weights, KV cache and activations on their tiers. The
// block stays open (src/schedule/running-block.ts): sequences join and leave between steps.
//
// The zig-zag block schedule (FlexGen, Algorithm 1), over token i, unit j (a layer, or half a
// layer with sepLayer) and batch k:
//
//   for i in tokens:  for j in units:  for k in batches:
//     load_weight(i, j+1)          once per unit, while unit j computes all its batches
//     load_cache(j, k+1); load_activation(j, k+1)
//     store_cache(j, k-1); store_activation(j, k-1)
//     compute(i, j, k)
//     synchronize
//
// Invariants: when compute(i, j, k) starts, unit j's weights and batch k's cache block and
// activations are resident; at most two units' weights are staged at once (slot j % 2); a cache
// or activation staging slot is reused only after its store has finished (three slots rotate:
// loading k+1, computing k, storing k-1). Every load waits for exactly the stores it reads
// (batch k's activations from unit j-1; when the step reads the cache, batch k's cache block of
// the layer from step i-1, if that step computed batch k — else its stores finished long ago),
// by key through Transfers, for any number of batches: with one batch the load of (j+1, k)
// is started before compute(j, k) has produced what it reads, and waits for that store. Without
// overlap each load is awaited just before its compute and each store just after. Indices past an
// edge roll over to the next unit or token.
// Weight prefetches are background transfers: the disk serves the next batch's cache and
// activations (needed within one batch's compute) before the rest of the next unit's weights.
// A block with nothing to move (weights, cache and activations all in RAM) runs the same loop
// without transfers: each load would return at once and each store do nothing, but their
// promises and bookkeeping cost ~3 ms a step of OPT-1.3B at batch 16, after GEMMs that leave
// the JavaScript heap cold in cache.
//
// The row-by-row schedule (Hugging Face Accelerate, DeepSpeed ZeRO-Inference) runs one batch at a
// time and loads every unit's weights again for every batch and token; it is kept for
// comparison. Every schedule computes the same operations in the same order per sequence, so all
// produce identical tokens.

import { type Backend, releaseFreedMemory } from '../backend/index.js';
import type { Policy } from '../policy/policy.js';
import { shares } from '../policy/policy.js';
import { Tensor } from '../tensor/tensor.js';
import { type CacheBlock, type Step, type Transformer } from '../models/transformer.js';
import type { AttentionWeights, MlpWeights } from '../models/weights.js';
import { type ActStaging, ActStore } from './act-store.js';
import type { BlockFile } from './block-file.js';
import { CacheBuffers, type KeptCacheShape } from './cache-buffers.js';
import { type CacheStaging, CacheStore } from './cache-store.js';
import type { LayerPart, LayerSource } from './weight-store.js';
import { alignedBytes } from './block-file.js';
import { Transfers } from './transfers.js';
import { RunningBlock, type RunningShape } from './running-block.js';

type F32 = Tensor<'f32'>;

export interface RunnerFiles {
  cache: BlockFile | null;
  act: BlockFile | null;
}

export interface IoTimes {
  /** Seconds spent waiting for loads and stores (not hidden under compute). */
  waitSeconds: number;
  computeSeconds: number;
  /** Bytes moved between RAM and disk by the cache and activation stores. */
  cacheBytesRead: number;
  cacheBytesWritten: number;
  actBytesRead: number;
  actBytesWritten: number;
  /** Bytes of KV cache taken from the last block's buffers instead of new memory. */
  cacheBytesReused: number;
}

interface Unit {
  layer: number;
  part: LayerPart;
}

export class BlockRunner {
  readonly io: IoTimes = { waitSeconds: 0, computeSeconds: 0, cacheBytesRead: 0, cacheBytesWritten: 0, actBytesRead: 0, actBytesWritten: 0, cacheBytesReused: 0 };
  private readonly weightSlots: (Uint8Array | null)[] = [null, null];
  private readonly units: Unit[] = [];
  /** Units loaded so far; unit loads alternate between the two weight slots. */
  private unitCounter = 0;
  private pendingWeights: Promise<Partial<AttentionWeights & MlpWeights>> | null = null;
  private readonly logitsOut: F32[] = [];
  /** The last block's KV cache buffers, for the next block of the same sizes. */
  private readonly cacheBuffers = new CacheBuffers();

  constructor(
    private readonly transformer: Transformer,
    private readonly weights: LayerSource,
    private readonly policy: Policy,
    private readonly files: RunnerFiles,
  ) {
    const part: LayerPart = policy.sepLayer ? 'attn' : 'all';
    const bytes = weights.slotBytes(part);
    if (weights.onDisk && bytes > 0) this.weightSlots = [alignedBytes(bytes), alignedBytes(bytes)];
    for (let layer = 0; layer < transformer.config.layers; layer++) {
      if (policy.sepLayer) this.units.push({ layer, part: 'attn' }, { layer, part: 'mlp' });
      else this.units.push({ layer, part: 'all' });
    }
  }

  get backend(): Backend {
    return this.transformer.backend;
  }

  /** Whether a step loads weights (some are on disk) rather than finding them all resident. */
  get weightsStream(): boolean {
    return this.weights.onDisk;
  }

  /** The cache shape of the last block, whose RAM buffers are kept (CacheBuffers.shape). */
  get keptCacheShape(): KeptCacheShape | null {
    return this.cacheBuffers.shape;
  }

  /** Lets go of the last block's cache buffers (the model closes). */
  releaseKeptCache(): void {
    this.cacheBuffers.clear();
  }

  /** Bytes of KV cache kept from the last block for the next. */
  get keptCacheBytes(): number {
    return this.cacheBuffers.bytes;
  }

  /** Bytes of the weight staging slots this runner holds. */
  get weightStagingBytes(): number {
    return this.weightSlots.reduce((n, s) => n + (s?.byteLength ?? 0), 0);
  }

  /** A running block for continuous batching: it stays open, and each call of its step() runs one
   *  step over the batches given, with rows joining and leaving between steps. */
  open(shape: RunningShape): RunningBlock {
    // The limits count live buffers only; memory freed earlier (loading, planning, the last
    // block) must not stay resident beside this block's.
    releaseFreedMemory();
    const c = this.transformer.config;
    const cache = new CacheStore(c, shape.batches, shape.rows, shape.capacity, shape.cacheDtype, shares(this.policy, 'cache'), this.files.cache, this.cacheBuffers);
    const acts = new ActStore(c.hidden, shape.batches, shape.maxTokens, shares(this.policy, 'activations'), this.files.act);
    const slots: Slots = {
      cache: [0, 1, 2].map(() => (cache.needsStagingAny() ? cache.newStaging() : null)),
      act: [0, 1, 2].map(() => (acts.needsStagingAny() ? acts.newStaging() : null)),
    };
    const still = !this.weights.onDisk && !cache.needsStagingAny() && !acts.needsStagingAny();
    return new RunningBlock(this, { cache, acts, slots, transfers: new Transfers(), computedAt: new Array(shape.batches).fill(-1), still }, this.policy.schedule === 'row');
  }

  /** Waits for every transfer of a block still in flight (a weight prefetch too, which is then
   *  dropped) and adds the block's transfer counts. After a failure it does not throw: the
   *  failure already reported is the one that happened first. @internal */
  async finish(state: BlockState, failed: boolean): Promise<void> {
    try {
      await state.transfers.settle();
      if (this.pendingWeights && !failed) await this.pendingWeights;
    } finally {
      this.pendingWeights = null;
      state.cache.keepBuffers(this.cacheBuffers);
      this.io.cacheBytesReused = this.cacheBuffers.reusedBytes;
      this.io.cacheBytesRead += state.cache.stats.bytesRead;
      this.io.cacheBytesWritten += state.cache.stats.bytesWritten;
      this.io.actBytesRead += state.acts.stats.bytesRead;
      this.io.actBytesWritten += state.acts.stats.bytesWritten;
    }
  }

  /** One token step over every unit for the given batches (see the schedule at the top).
   *  @internal also run by RunningBlock, a step at a time. */
  async zigzag(i: number, batches: number[], steps: Step[], state: BlockState, logits: (F32 | null)[], lastToken: boolean): Promise<void> {
    if (state.still) return this.computeInPlace(batches, steps, state, logits);
    const { cache, acts, slots, transfers } = state;
    const units = this.units;
    const overlap = this.policy.overlap && this.policy.schedule === 'zigzag';
    const storeOf: Promise<void>[] = [Promise.resolve(), Promise.resolve(), Promise.resolve()];
    // A load starts once its staging slot is free (the slot's last store has finished) and the
    // stores it reads from have finished: batch k's activations from the unit before, and when
    // the step reads the cache, this layer's cache block of batch k from the batch's step before
    // (the token before; in a running block, whichever step last computed the batch: stores of
    // steps before the last one have all finished when a step ends).
    const startLoad = (u: number, k: number, s: number) => {
      const unit = units[u]!;
      const attn = unit.part !== 'mlp';
      const reads = readsCache(steps[k]!);
      const ready = Promise.all([
        storeOf[s],
        u > 0 ? transfers.after(i, actKey(u - 1, k)) : undefined,
        attn && reads && state.computedAt[k] === i - 1 ? transfers.after(i - 1, cacheKey(unit.layer, k)) : undefined,
      ]);
      return transfers.track(ready.then(() => Promise.all([
        attn ? cache.load(unit.layer, k, slots.cache[s]!, reads, steps[k]!.rows) : Promise.resolve(null),
        acts.load(k, slots.act[s]!, u === 0),
      ])));
    };
    let slot = 0;
    let loaded: ReturnType<typeof startLoad> | null = null;
    for (let u = 0; u < units.length; u++) {
      const unit = units[u]!;
      const w = await this.timed(this.pendingWeights ?? transfers.track(this.loadWeights(unit)));
      this.pendingWeights = null;
      if (overlap) {
        // Prefetch the next unit's weights (the next token's first unit after the last one).
        // In the background: the next batch's cache and activations are needed sooner.
        const nextUnit = u + 1 < units.length ? units[u + 1]! : lastToken ? null : units[0]!;
        if (nextUnit) this.pendingWeights = transfers.track(this.loadWeights(nextUnit, true));
      }
      for (let bi = 0; bi < batches.length; bi++) {
        const k = batches[bi]!;
        loaded ??= startLoad(u, k, slot);
        const [blk, x] = await this.timed(loaded);
        loaded = null;
        const nextSlot = (slot + 1) % 3;
        if (overlap) {
          const [nu, nbi] = bi + 1 < batches.length ? [u, bi + 1] : [u + 1, 0];
          if (nu < units.length) loaded = startLoad(nu, batches[nbi]!, nextSlot);
        }
        const t0 = performance.now();
        this.compute(u, unit, k, w, blk, x, steps[k]!, logits);
        this.io.computeSeconds += (performance.now() - t0) / 1000;
        const positions = storedPositions(steps[k]!, cache.rows);
        const cacheStore = unit.part !== 'mlp' ? cache.store(unit.layer, k, slots.cache[slot]!, positions) : Promise.resolve();
        if (unit.part !== 'mlp') transfers.stored(i, cacheKey(unit.layer, k), cacheStore);
        const actStore = acts.store(k, slots.act[slot]!);
        transfers.stored(i, actKey(u, k), actStore);
        const store = Promise.all([cacheStore, actStore]).then(() => undefined);
        storeOf[slot] = store;
        if (!overlap) await this.timed(store);
        slot = nextSlot;
      }
    }
    await this.timed(Promise.all(storeOf));
  }

  /** The zig-zag order over a block with nothing to move: every unit's weights, each batch's
   *  cache and activations are used where they are. */
  private computeInPlace(batches: number[], steps: Step[], state: BlockState, logits: (F32 | null)[]): void {
    const t0 = performance.now();
    for (let u = 0; u < this.units.length; u++) {
      const unit = this.units[u]!;
      const w = this.weights.resident(unit.layer, unit.part)!;
      for (const k of batches) {
        const blk = unit.part !== 'mlp' ? state.cache.inRam(unit.layer, k) : null;
        this.compute(u, unit, k, w, blk, state.acts.inRam(k)!, steps[k]!, logits);
      }
    }
    this.io.computeSeconds += (performance.now() - t0) / 1000;
  }

  private compute(u: number, unit: Unit, k: number, w: Partial<AttentionWeights & MlpWeights>, blk: CacheBlock | null,
    x: F32, step: Step, logits: (F32 | null)[]): void {
    const t = this.transformer;
    const rows = step.seqStarts.length - 1;
    if (u === 0) t.embed(step, x);
    if (unit.part !== 'mlp') t.attentionBlock(w as AttentionWeights, x, blk!, step);
    if (unit.part !== 'attn') t.mlpBlock(w as MlpWeights, x);
    if (u === this.units.length - 1) {
      // One logits buffer per batch, reused every step: a fresh one per step (13 MB at 64 rows of a
      // 50k vocabulary) left hundreds of MB of garbage that pushed a 6 GiB run 0.3 GiB over its limit.
      // Scored prompt tokens go through it first, a batch's rows at a time (the logits the plan
      // counts for the batch), before the rows that sample.
      const need = step.score ? Math.max(rows, this.policy.gpuBatchSize) : rows;
      let out = this.logitsOut[k];
      if (!out || out.shape[0]! < need) out = this.logitsOut[k] = Tensor.zeros('f32', [need, t.config.vocabSize]);
      if (step.score) t.scoreTokens(x, step, out, need);
      const view = out.rows(0, rows);
      t.head(t.lastTokens(x, step), view);
      // A new view each step: sinks may cache what they derive from a logits object by identity.
      logits[k] = view;
    }
  }

  private loadWeights(unit: Unit, background = false): Promise<Partial<AttentionWeights & MlpWeights>> {
    const slot = this.unitCounter++ % 2;
    return this.weights.load(unit.layer, unit.part, this.weightSlots[slot] ?? null, background);
  }

  private async timed<T>(p: Promise<T>): Promise<T> {
    const t0 = performance.now();
    const v = await p;
    this.io.waitSeconds += (performance.now() - t0) / 1000;
    return v;
  }
}

/** @internal */
export interface Slots {
  cache: (CacheStaging | null)[];
  act: (ActStaging | null)[];
}

/** @internal */
export interface BlockState {
  cache: CacheStore;
  acts: ActStore;
  slots: Slots;
  transfers: Transfers;
  /** The last step that computed each batch (-1: none yet). */
  computedAt: number[];
  /** Nothing moves: weights, cache and activations are all in RAM (no transfers, no staging). */
  still: boolean;
}

/** Whether a step attends to positions stored by earlier steps (a sequence past position 0). */
export function readsCache(step: Step): boolean {
  for (let s = 0; s + 1 < step.seqStarts.length; s++) if (step.positions[step.seqStarts[s]!]! > 0) return true;
  return false;
}

/** Which cache positions a step fills in each row of the block: each sequence's tokens, from its
 *  first position on (rows not in the step write nothing). */
function storedPositions(step: Step, rows: number): { from: Int32Array; to: Int32Array } {
  const from = new Int32Array(rows);
  const to = new Int32Array(rows);
  const n = step.seqStarts.length - 1;
  for (let s = 0; s < n; s++) {
    const row = step.rows[s]!;
    from[row] = step.positions[step.seqStarts[s]!]!;
    to[row] = from[row]! + step.seqStarts[s + 1]! - step.seqStarts[s]!;
  }
  return { from, to };
}

const actKey = (unit: number, batch: number) => `act ${unit} ${batch}`;
const cacheKey = (layer: number, batch: number) => `cache ${layer} ${batch}`;
