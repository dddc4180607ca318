// The key/value cache of a batch of sequences: per layer, K and V of shape [rows, kvHeads,
// capacity, headDim] (heads outermost, so decode attention reads each head's positions
// contiguously), and each row's current length.

import type { CacheDType } from '../backend/index.js';
import { Tensor } from '../tensor/tensor.js';
import type { ModelConfig } from './config.js';

export class KVCache {
  readonly k: Tensor[];
  readonly v: Tensor[];
  /** Positions filled per row. */
  readonly lengths: Int32Array;

  constructor(
    config: ModelConfig,
    readonly rows: number,
    readonly capacity: number,
    readonly dtype: CacheDType = 'f32',
  ) {
    const shape = [rows, config.kvHeads, capacity, config.headDim];
    this.k = Array.from({ length: config.layers }, () => Tensor.zeros(dtype, shape));
    this.v = Array.from({ length: config.layers }, () => Tensor.zeros(dtype, shape));
    this.lengths = new Int32Array(rows);
  }

  /** Layer j's block (all rows). */
  block(j: number): { k: Tensor; v: Tensor } {
    return { k: this.k[j]!, v: this.v[j]! };
  }

  get bytes(): number {
    return this.k.reduce((n, t) => n + t.byteLength * 2, 0);
  }

  /** Bytes a cache of these dimensions takes. */
  static bytesFor(config: ModelConfig, rows: number, capacity: number, dtype: CacheDType): number {
    return 2 * config.layers * rows * config.kvHeads * capacity * config.headDim * (dtype === 'f32' ? 4 : 2);
  }
}
