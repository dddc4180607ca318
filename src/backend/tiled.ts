// Weights and weight gradients computed in tiles (ZeRO-Infinity's memory-centric tiling): the
// backend multiplies and accumulates tile by tile; who makes the tiles (reading them from wherever
// they live) is the caller's business.

import type { Tensor } from '../tensor/tensor.js';
import type { PackedWeight } from './backend.js';

/**
 * A weight W[n,k] too large to hold at once, packed row tile by row tile on demand (ZeRO-Infinity's
 * memory-centric tiling): parts() yields each tile's packed weight in row order, and the tile's
 * buffers may be reused once the next is asked for. Rows are independent, so y = x·Wᵀ computed
 * tile by tile is exactly the whole product. Tiles but the last hold a multiple of packedRowBlock rows.
 */
export class TiledWeight {
  constructor(
    readonly backend: string,
    readonly n: number,
    readonly k: number,
    readonly parts: () => Iterable<PackedWeight>,
    readonly name = 'weight',
  ) {}
}

/** A weight gradient dW[n,k] accumulated row tile by row tile: tiles() yields each tile's
 *  [r1 − r0, k] buffer in row order, to be added into before the next is asked for. */
export class TiledGrad {
  constructor(
    readonly n: number,
    readonly k: number,
    readonly tiles: () => Iterable<{ r0: number; r1: number; dw: Tensor<'f32'> }>,
  ) {}
}

