// What a run holds in RAM and on disk, item by item, so that a user's limits are checked before
// anything is allocated and a limit that cannot be met is refused with the reason and the size.
//
// The same accounting serves the policy search (src/policy) and the engine's checks. On a
// CPU-only machine the compute device is RAM, so device shares count against the RAM limit.

import type { ModelConfig } from '../models/config.js';
import { type Policy, shares } from './policy.js';
import { formatSize } from '../tensor/tiers/size.js';
import { UserError } from '../util/errors.js';
import { optionName } from '../util/names.js';
import { alignUp, blockRamRows } from '../schedule/placement.js';

/** Memory of the Node.js runtime, the addon and the engine's own code, which a RAM limit does
 *  not cover: peak RSS stays within the limit plus this. Measured at about 55 MiB (peak RSS of a
 *  run on a tiny model); the rest is margin for JavaScript garbage between collections. */
export const RUNTIME_OVERHEAD_BYTES = 128 * 2 ** 20;

export interface MemoryItem {
  what: string;
  /** Bytes in RAM, the device's share included (on a CPU-only machine the device is RAM). */
  ram: number;
  disk: number;
  /** The part of `ram` placed on the compute device. */
  device?: number;
}

export interface WeightSizes {
  /** Packed bytes of every layer's GEMM weights, per layer. */
  layerBytes: number[];
  /** Bytes the disk tier's packed-weights files take (packedFileBytes; default the sum of layerBytes). */
  fileBytes?: number;
  /** Largest single staging load (one unit's non-resident weights). */
  slotBytes: number;
  /** Embeddings, LM head, norms and biases: always in RAM. */
  globalBytes: number;
  /** The raw chunk GEMM weights are read through while they are packed (ModelSizes.chunkBytes). */
  chunkBytes: number;
  /** The largest packed chunk of a layer weight (ModelSizes.packedChunkBytes): converting weights
   *  for the disk tier stages one chunk, plus the unaligned tail of the one before. */
  packedChunkBytes: number;
  /** The loaded tokenizer (tokenizerRamBytes). */
  tokenizerBytes: number;
  /** RAM the caller holds beside the model while it runs (a job's request ids). */
  heldBytes?: number;
  /** What heldBytes is, as a refusal names it (a job's request ids, a server's request bodies). */
  heldWhat?: string;
}

export interface BlockShape {
  /** Sequences per batch. */
  rows: number;
  batches: number;
  /** Most tokens one batch runs at once (its prompts' total at prefill). */
  maxTokens: number;
  capacity: number;
  cacheBytesPerElement: number;
}

/** heldBytes' name where the caller gives none. */
export const HELD_WHAT = 'RAM held beside the model (heldBytes)';

export function weightItems(w: WeightSizes, p: Policy, onDisk: boolean): MemoryItem[] {
  const s = shares(p, 'weights');
  const total = w.layerBytes.reduce((a, b) => a + b, 0);
  const resident = Math.round(total * (s.device + s.ram));
  return [
    { what: 'layer weights (resident share)', ram: resident, disk: 0, device: Math.round(total * s.device) },
    { what: 'layer weights (packed on disk)', ram: 0, disk: onDisk ? (w.fileBytes ?? total) : 0 },
    { what: 'weight staging (two slots)', ram: onDisk ? 2 * w.slotBytes : 0, disk: 0 },
    { what: 'embeddings, LM head, norms', ram: w.globalBytes, disk: 0 },
    // Loading's buffers are garbage once the model is loaded, but native memory is freed only when
    // the collector finalizes it, which can be after the run's own buffers exist: so they count.
    { what: 'tokenizer', ram: w.tokenizerBytes, disk: 0 },
    ...(w.heldBytes ? [{ what: w.heldWhat ?? HELD_WHAT, ram: w.heldBytes, disk: 0 }] : []),
    { what: onDisk ? 'weight loading (read chunk, conversion staging)' : 'weight loading (read chunk)', ram: w.chunkBytes + (onDisk ? conversionStagingBytes(w.packedChunkBytes) : 0), disk: 0 },
  ];
}

/** The packed-weights file of the disk tier (src/schedule/weight-store.ts): each matrix at a
 *  4096-byte boundary (O_DIRECT), and its manifest beside it. Counted unaligned, llama-tiny's took
 *  14% more than --disk. */
export function packedFileBytes(layers: readonly (readonly { bytes: number }[])[]): number {
  const matrices = layers.reduce((n, l) => n + l.length, 0);
  // (the manifest: ~120 bytes a matrix, its name and place; 256 allowed)
  return layers.reduce((n, l) => n + l.reduce((m, x) => m + alignUp(x.bytes), 0), 0) + alignUp(Math.max(1, 256 * matrices));
}

/** The disk tier's conversion staging: a packed chunk after the < 4096-byte tail of the previous
 *  one (O_DIRECT writes whole 4096-byte blocks), rounded to blocks. */
export function conversionStagingBytes(packedChunkBytes: number): number {
  return Math.ceil((packedChunkBytes + 4096) / 4096) * 4096;
}

export function blockItems(c: ModelConfig, p: Policy, b: BlockShape): MemoryItem[] {
  // Bytes of one head's keys (or values) at one position: whole bytes (a q4 record's bytes spread
  // over d elements came back as 43.99999… for d = 72, and left 1e-10 B "on disk" that a
  // --disk 0B limit refused).
  const headBytes = Math.round(c.headDim * b.cacheBytesPerElement);
  // One layer's keys and values of one sequence, in RAM.
  const layerRowBytes = 2 * c.kvHeads * b.capacity * headBytes;
  const cacheTotal = c.layers * layerRowBytes * b.rows * b.batches;
  const cs = shares(p, 'cache');
  // The store places whole (layer, row) cache rows (schedule/placement.ts, splitRows); a row on
  // disk takes one record a position, its keys and values rounded up to 4096 bytes for O_DIRECT
  // (schedule/cache-store.ts): 16× the bytes for 256 bytes a position. Counted unpadded, a
  // --disk 1MiB run of a tiny Qwen2 wrote 8 MiB.
  const record = Math.ceil((2 * c.kvHeads * headBytes) / 4096) * 4096;
  const layerRows = c.layers * b.rows * b.batches;
  const ramLayerRows = Math.min(layerRows, Math.round(layerRows * (cs.device + cs.ram)));
  const cacheRam = ramLayerRows * layerRowBytes;
  const cacheDisk = (layerRows - ramLayerRows) * b.capacity * record;
  const cacheStaging = cs.disk > 0 ? 3 * (b.rows * (layerRowBytes + b.capacity * record)) : 0;
  const actTotal = b.batches * b.maxTokens * c.hidden * 4;
  const as = shares(p, 'activations');
  // On disk, each batch's rows past the RAM share, each batch's range 4096-aligned (act-store.ts):
  // counted unaligned, 8 one-token batches reserved 16× a --disk that was said to hold them.
  const actDisk = blockRamRows(b.batches, b.maxTokens, as).reduce((n, r) => n + alignUp((b.maxTokens - r) * c.hidden * 4), 0);
  const actStaging = as.disk > 0 ? 3 * 2 * b.maxTokens * c.hidden * 4 : 0;
  const t = b.maxTokens;
  const q = c.heads * c.headDim;
  const kv = c.kvHeads * c.headDim;
  const workspace = 4 * t * (c.embedDim + 4 * c.hidden + 2 * q + 2 * kv + (c.gatedMlp ? 2 : 1) * c.ffn) + 4 * b.rows * 3 * c.hidden;
  // The GEMM packs its whole input once per call into a per-thread scratch that keeps its largest
  // size: t rows of the widest input (fc2's ffn). Unaccounted, it put a 64 × 64-token prefill of
  // OPT-30B 470 MB over --ram 6GiB.
  const gemmPacking = 4 * t * Math.max(c.ffn, c.hidden, q, c.embedDim);
  const logits = 4 * c.vocabSize * b.rows * (b.batches + 1);
  return [
    { what: 'KV cache', ram: cacheRam, disk: cacheDisk, device: Math.round(cacheTotal * cs.device) },
    { what: 'KV cache staging', ram: cacheStaging, disk: 0 },
    { what: 'activations', ram: Math.round(actTotal * (as.device + as.ram)), disk: actDisk, device: Math.round(actTotal * as.device) },
    { what: 'activation staging', ram: actStaging, disk: 0 },
    { what: 'compute workspace', ram: workspace, disk: 0 },
    { what: 'GEMM input packing', ram: gemmPacking, disk: 0 },
    { what: 'logits', ram: logits, disk: 0 },
  ];
}

export interface Limits {
  ram?: number;
  disk?: number;
  device?: number;
}

/** Throws a UserError naming the tier that is too small, by how much, and what fills it. */
export function checkLimits(items: MemoryItem[], limits: Limits, context: string): void {
  const ram = items.reduce((n, i) => n + i.ram, 0);
  const disk = items.reduce((n, i) => n + i.disk, 0);
  const breakdown = (key: 'ram' | 'disk') => items.filter((i) => i[key] > 0).sort((a, b) => b[key] - a[key])
    .map((i) => `${i.what} ${formatSize(i[key])}`).join(', ');
  if (limits.ram !== undefined && ram > limits.ram) {
    throw new UserError(`RAM limit ${formatSize(limits.ram)} is too small by ${formatSize(ram - limits.ram)} for ${context}: ` +
      `needs ${formatSize(ram)} (${breakdown('ram')}; the runtime's own ${formatSize(RUNTIME_OVERHEAD_BYTES)} is outside the limit). ` +
      `Put more of the weights or cache on disk (${optionName('percents')}), or use a smaller batch.`);
  }
  const device = items.reduce((n, i) => n + (i.device ?? 0), 0);
  if (limits.device !== undefined && device > limits.device) {
    throw new UserError(`device memory limit ${formatSize(limits.device)} is too small by ${formatSize(device - limits.device)} for ${context}: ` +
      `the policy's device shares need ${formatSize(device)}. Lower ${optionName('devicePercents')}.`);
  }
  if (limits.disk !== undefined && disk > limits.disk) {
    throw new UserError(`disk limit ${formatSize(limits.disk)} is too small by ${formatSize(disk - limits.disk)} for ${context}: needs ${formatSize(disk)} (${breakdown('disk')})`);
  }
}
