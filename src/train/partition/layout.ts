// How the model states are split over N data-parallel ranks (ZeRO stage 3, design.md §3).
//
// Parameters are grouped as the layer code fetches them: group 0 holds the global tensors
// (embeddings, final norm, projections, head), group 1 + j layer j's. A group's tensors are laid
// end to end in paramList's order as one flat vector, padded with zeros to a multiple of N, and
// rank r owns the r-th of its N equal slices: for those elements it alone keeps the parameter,
// gradient, fp32 master and Adam moments. Before use a group is all-gathered (each rank sends its
// slice, every rank receives the whole padded vector: a tensor is a view at its offset); its
// gradient is reduce-scattered, each rank receiving the sum over ranks of its own slice.

import type { ModelConfig } from '../../models/config.js';
import { type GlobalSlot, type LayerSlot, type NameTable, expectedShape } from '../../models/architecture.js';
import { paramList } from '../params.js';

export interface GroupEntry {
  name: string;
  shape: number[];
  slot: LayerSlot | GlobalSlot;
  part: 'weight' | 'bias';
  /** Element offset in the group's flat vector. */
  offset: number;
  size: number;
}

export interface Group {
  entries: GroupEntry[];
  /** Elements of the tensors. */
  total: number;
  /** Elements each rank owns (total padded to a multiple of ranks, divided by them). */
  slice: number;
}

export interface Layout {
  ranks: number;
  rank: number;
  /** [globals, layer 0, …, layer L−1]. */
  groups: Group[];
}

const LAYER = /\{L\}/;

export function partitionLayout(c: ModelConfig, names: NameTable, ranks: number, rank: number): Layout {
  if (!Number.isSafeInteger(ranks) || ranks < 1 || !Number.isSafeInteger(rank) || rank < 0 || rank >= ranks) {
    throw new RangeError(`rank ${rank} of ${ranks} ranks`);
  }
  const groups: Group[] = Array.from({ length: c.layers + 1 }, () => ({ entries: [], total: 0, slice: 0 }));
  const layerOf = layerIndex(names, c.layers);
  for (const { name, slot, part } of paramList(c, names)) {
    const shape = expectedShape(c, slot, part);
    const size = shape.reduce((a, b) => a * b, 1);
    const g = groups[(layerOf.get(name) ?? -1) + 1]!;
    g.entries.push({ name, shape, slot, part, offset: g.total, size });
    g.total += size;
  }
  for (const g of groups) g.slice = Math.ceil(g.total / ranks);
  return { ranks, rank, groups };
}

/** The layer of every per-layer tensor name. */
function layerIndex(names: NameTable, layers: number): Map<string, number> {
  const out = new Map<string, number>();
  for (const pattern of Object.values(names.layer)) {
    if (!pattern || !LAYER.test(pattern)) continue;
    for (let j = 0; j < layers; j++) {
      const base = pattern.replace(LAYER, String(j));
      out.set(`${base}.weight`, j);
      out.set(`${base}.bias`, j);
    }
  }
  return out;
}

/** The part of [offset, offset + size) that rank `rank` owns in a group, as positions in the
 *  tensor (from, to) and in the rank's slice (at); null when it owns none of it. */
export function ownedPart(g: Group, e: GroupEntry, rank: number): { from: number; to: number; at: number } | null {
  const lo = rank * g.slice, hi = lo + g.slice;
  const a = Math.max(lo, e.offset), b = Math.min(hi, e.offset + e.size);
  return a < b ? { from: a - e.offset, to: b - e.offset, at: a - lo } : null;
}
