// Micro-batches of a dataset's sequences: `batchSize` sequences each, ragged (no padding), in an
// order shuffled per epoch by a generator seeded with seed + epoch. The order of an epoch is a pure
// function of (sequences, seed, epoch), so the position (epoch, index of the next sequence in
// that epoch's order) is all a checkpoint needs: a resumed run sees exactly the same sequences.
// An epoch's last batch may be short; batches never span two epochs.

import { UserError } from '../util/errors.js';
import { type DataCounts, type Dataset, countSequences } from './dataset.js';
import type { Sequence } from './sequence.js';

export interface DataPosition {
  epoch: number;
  /** Index, in the epoch's order, of the next sequence to read. */
  index: number;
  /** The dataset's fingerprint, so a resume notices a changed data file (or tokenizer, or seqLen). */
  fingerprint: string;
}

export interface MicroBatch extends Omit<DataCounts, 'sequences'> {
  sequences: Sequence[];
  /** Where the batch starts. */
  epoch: number;
  index: number;
}

export interface BatchOptions {
  batchSize: number;
  seed: number;
  /** Default true; false keeps file order (evaluation). */
  shuffle?: boolean;
}

export class Batcher {
  private epoch = 0;
  private index = 0;
  private order: Uint32Array;

  constructor(
    readonly dataset: Dataset,
    private readonly o: BatchOptions,
    start?: DataPosition,
  ) {
    if (!Number.isSafeInteger(o.batchSize) || o.batchSize < 1) throw new RangeError(`batchSize must be a positive integer, got ${o.batchSize}`);
    if (!Number.isSafeInteger(o.seed)) throw new RangeError(`seed must be an integer, got ${o.seed}`);
    if (start) this.restore(start);
    this.order = this.orderOf(this.epoch);
  }

  get position(): DataPosition {
    return { epoch: this.epoch, index: this.index, fingerprint: this.dataset.fingerprint };
  }

  get batchesPerEpoch(): number {
    return Math.ceil(this.dataset.sequences.length / this.o.batchSize);
  }

  /** The next micro-batch; after the last of an epoch comes the first of the next. */
  next(): MicroBatch {
    const n = this.dataset.sequences.length;
    const end = Math.min(n, this.index + this.o.batchSize);
    const sequences = Array.from(this.order.subarray(this.index, end), (i) => this.dataset.sequences.at(i)!);
    const { tokens, targets } = countSequences(sequences);
    const batch = { sequences, epoch: this.epoch, index: this.index, tokens, targets };
    this.index = end;
    if (this.index === n) {
      this.epoch++;
      this.index = 0;
      this.order = this.orderOf(this.epoch);
    }
    return batch;
  }

  /** Indices of the dataset's sequences in the order epoch `epoch` reads them. */
  orderOf(epoch: number): Uint32Array {
    const n = this.dataset.sequences.length;
    return this.o.shuffle === false ? Uint32Array.from({ length: n }, (_, i) => i) : shuffled(n, this.o.seed + epoch);
  }

  private restore(p: DataPosition): void {
    const n = this.dataset.sequences.length;
    if (p.fingerprint !== this.dataset.fingerprint) {
      throw new UserError(`${this.dataset.file}: the data differs from the run being resumed (file, tokenizer or sequence length changed); its sequences would not continue where that run stopped`);
    }
    if (!Number.isSafeInteger(p.epoch) || p.epoch < 0 || !Number.isSafeInteger(p.index) || p.index < 0 || p.index > n) {
      throw new UserError(`data position ${JSON.stringify({ epoch: p.epoch, index: p.index })} is outside ${this.dataset.file}'s ${n} sequences`);
    }
    this.epoch = p.index === n ? p.epoch + 1 : p.epoch;
    this.index = p.index === n ? 0 : p.index;
  }
}

/** Every micro-batch of a dataset once, in file order (evaluation). */
export function evalBatches(dataset: Dataset, batchSize: number): MicroBatch[] {
  const b = new Batcher(dataset, { batchSize, seed: 0, shuffle: false });
  return Array.from({ length: b.batchesPerEpoch }, () => b.next());
}

/** A Fisher-Yates shuffle of 0..n-1 driven by mulberry32 seeded with `seed` (taken mod 2^32):
 *  written out here so that the order never depends on a library's version. */
export function shuffled(n: number, seed: number): Uint32Array {
  const out = Uint32Array.from({ length: n }, (_, i) => i);
  let state = seed >>> 0;
  const next = () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(next() * (i + 1));
    const tmp = out[i]!;
    out[i] = out[j]!;
    out[j] = tmp;
  }
  return out;
}
