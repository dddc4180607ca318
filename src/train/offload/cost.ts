// Predicted step time of an offloaded training run, in ZeRO-Infinity's terms (design.md §3), from
// the hardware profile (GEMM rates, disk rates) and the placement:
//   compute      8 · parameters · tokens FLOPs (forward 2, backward 4, recomputation 2)
//   forward and backward, overlapped with compute: the disk-resident compute copy of the parameters
//                read twice (the globals, held through a pass, once), the gradients written once per micro-batch (and read back by each
//                later micro-batch of the step), the activation checkpoints written and read once
//   optimizer    gradients, master weights and moments read once and master, moments and the bf16
//                copy written once; it cannot overlap the backward, whose gradients it needs
// Beside the GEMMs, compute counts what grows with the parameters at memory speed: packing each
// fetched weight for the GEMM (three packs per layer and micro-batch: forward, and backward's
// recompute and transpose) and AdamW's pass over 30 bytes per parameter; and what the 8 · P · T
// leaves out: causal attention (2 · q · s · (s+1) FLOPs per sequence and layer for scores and
// values, four times with recompute and backward) at the profile's attention rate, and the norms,
// activations and residuals, which stream the layer's per-token activations (the bytes
// ./plan.ts reserves for one layer's tape) three times (forward, recompute, backward) at the copy
// rate.
// A step takes max(compute, forward/backward I/O) + tile I/O + max(AdamW, optimizer I/O) − what
// of the optimizer hides under the next step's forward, and is bound by the largest part; a
// phase's I/O is its reads or its writes, whichever take longer (they overlap). A weight computed
// in tiles (./tiles.ts) is read tile by tile in the middle of its compute, which waits for it, so
// its traffic adds to the step (tileTraffic).
// The update of step t runs in the background of step t+1's first forward (./optimizer.ts): the
// forward of unit u waits only for u's sub-groups. The JavaScript thread runs the update's
// bookkeeping only between units (a unit's compute is one synchronous call), so under one unit's
// compute the disk moves at most what was in flight when it began: the sets − 2 sub-groups read
// ahead (and their writes). Hidden: Σ over units of min(that unit's forward compute, that transfer
// time), at most the update's own time.

import type { HardwareProfile } from '../../policy/profile.js';
import { attentionPrefillRate, diskReadRate, diskWriteRate, gemmRate, memcpyRate } from '../../policy/profile.js';
import type { ModelConfig } from '../../models/config.js';
import { headChunkRows } from '../head-chunk.js';
import { type Layout, type StateKind, kindBytes } from './layout.js';

export interface OffloadCostInput {
  layout: Layout;
  /** Tokens per micro-batch, and micro-batches per step. */
  tokens: number;
  gradAccum: number;
  /** Tokens per sequence (attention's length; default: tokens, one sequence per micro-batch). */
  seqLen?: number;
  /** Bytes of activation checkpoints on disk per micro-batch (0 when kept in RAM). */
  actDiskBytes: number;
  profile: HardwareProfile;
  /** The optimizer's sub-group size and buffer sets (./plan.ts); absent: no overlap counted. */
  optimizer?: { subGroupSize: number; sets: number };
  /** Parameters each step computes with and packs (default: the layout's). Under N ranks the
   *  layout holds one rank's slices, 1/N of them, while the rank computes with the whole model;
   *  the collectives' time is not modelled. */
  computeParams?: number;
}

export interface OffloadCost {
  seconds: number;
  /** GEMMs, attention, elementwise work and weight packing of the forward and backward. */
  computeSeconds: number;
  /** Parts of computeSeconds. */
  compute: { gemm: number; attention: number; elementwise: number; packing: number };
  /** Disk time of the forward and backward (hidden under compute when shorter). */
  passIoSeconds: number;
  /** Disk time of the weights computed in tiles (not hidden: the compute waits for each tile). */
  tileIoSeconds: number;
  /** The optimizer step: AdamW's pass or its disk traffic, whichever is longer (they overlap). */
  optimizerSeconds: number;
  /** The part of optimizerSeconds hidden under the next step's forward. */
  optimizerHiddenSeconds: number;
  /** The forward of one micro-batch (the window the previous update overlaps). */
  forwardSeconds: number;
  /** passRead and passWritten include tileRead and tileWritten. */
  bytes: { passRead: number; passWritten: number; optimizerRead: number; optimizerWritten: number; tileRead: number; tileWritten: number };
  /** What the step time is made of, largest first: 'compute', 'disk (forward/backward)', 'disk (weight tiles)', 'disk (optimizer)'. */
  bound: string;
}

export function predictOffloadStep(o: OffloadCostInput): OffloadCost {
  const { layout, tokens, gradAccum: k, profile } = o;
  const params = o.computeParams ?? layout.params.reduce((n, p) => n + p.size, 0);
  const updated = layout.params.reduce((n, p) => n + p.size, 0);
  const computeKind = layout.computeKind;
  // Bytes as the transfers move them: each parameter's range padded to the 4096-byte blocks.
  const disk = (kind: StateKind) => layout.fileBytes[kind];
  const L = layout.units.length - 1;
  // What the passes fetch with the units (the tiled weights move in tiles instead).
  const unitDisk = (kind: StateKind, u: number) => {
    const r = layout.range(kind, layout.fetched[u]!);
    return r ? r.end - r.start : 0;
  };
  const fetched = (kind: StateKind) => layout.units.reduce((n, _, u) => n + unitDisk(kind, u), 0);
  const globals = unitDisk(computeKind, L);
  const tiles = tileTraffic(layout, computeKind, tokens, k);
  const format = computeKind === 'param' ? 'bf16' : 'f32';
  const mem = memcpyRate(profile);
  const packSeconds = (k * 3 * params * (kindBytes(computeKind) + 4)) / mem;
  const gemmSeconds = (8 * params * tokens * k) / gemmRate(profile, format, 'fp32', tokens);
  const c = layout.config, s = Math.min(o.seqLen ?? tokens, tokens);
  const attentionSeconds = (k * c.layers * 4 * (tokens / s) * 2 * c.heads * c.headDim * s * (s + 1)) / attentionPrefillRate(profile);
  const elementwiseSeconds = (k * c.layers * 3 * tokens * layerActivationBytes(c)) / mem;
  const computeSeconds = gemmSeconds + attentionSeconds + elementwiseSeconds + packSeconds;
  const adamSeconds = (updated * 30) / mem;
  // The globals (embeddings, head) are fetched once per pass and held through it; layers twice.
  const unitsRead = k * (2 * (fetched(computeKind) - globals) + globals) + (k - 1) * fetched('grad') + k * o.actDiskBytes;
  const unitsWritten = k * fetched('grad') + k * o.actDiskBytes;
  const passRead = unitsRead + tiles.read, passWritten = unitsWritten + tiles.written;
  const optimizerRead = disk('grad') + disk('master') + disk('m') + disk('v');
  const optimizerWritten = disk('master') + disk('m') + disk('v') + (computeKind === 'param' ? disk('param') : 0);
  const r = diskReadRate(profile), w = diskWriteRate(profile);
  // Reads and writes are in flight together (read-ahead beside write-back; the optimizer reads
  // sub-group i+1 while it writes i−1), and the disk serves both directions at once: the
  // OPT-1.3B run moved 21 GB in and 18 GB out in 14 s, where one after the other at the
  // profile's rates takes 24 s (docs/benchmarks.md). So each phase takes its slower direction.
  const passIoSeconds = Math.max(unitsRead / r, unitsWritten / w);
  const tileIoSeconds = tiles.read / r + tiles.written / w;
  const optimizerSeconds = Math.max(adamSeconds, optimizerRead / r, optimizerWritten / w);
  // Forward: a quarter of the GEMMs and attention (forward, recompute, backward twice), a third of
  // the elementwise work and packing, of one micro-batch.
  const forwardSeconds = (gemmSeconds / 4 + attentionSeconds / 4 + (elementwiseSeconds + packSeconds) / 3) / k;
  let optimizerHiddenSeconds = 0;
  if (o.optimizer && params > 0) {
    const group = Math.min(params, o.optimizer.subGroupSize);
    const ahead = Math.max(1, o.optimizer.sets - 2) * group / params;
    const inFlight = Math.max(ahead * optimizerRead / r, ahead * optimizerWritten / w);
    const units = layout.units.length;
    optimizerHiddenSeconds = Math.min(optimizerSeconds, units * Math.min(forwardSeconds / units, inFlight));
  }
  const exposed = optimizerSeconds - optimizerHiddenSeconds;
  const parts: [string, number][] = [['compute', computeSeconds], ['disk (forward/backward)', passIoSeconds], ['disk (weight tiles)', tileIoSeconds], ['disk (optimizer)', exposed]];
  const bound = parts.sort((a, b) => b[1] - a[1]).map(([n]) => n)[0]!;
  return {
    seconds: Math.max(computeSeconds, passIoSeconds) + tileIoSeconds + exposed, computeSeconds, passIoSeconds, tileIoSeconds, optimizerSeconds, optimizerHiddenSeconds, forwardSeconds,
    compute: { gemm: gemmSeconds, attention: attentionSeconds, elementwise: elementwiseSeconds, packing: packSeconds },
    bytes: { passRead, passWritten, optimizerRead, optimizerWritten, tileRead: tiles.read, tileWritten: tiles.written }, bound,
  };
}

/** Bytes a step of `k` micro-batches of `tokens` moves for the weights computed in tiles
 *  (./tiles.ts), from their files (what is in RAM moves nothing). Per micro-batch, with W the
 *  compute copy's bytes and G the gradient's:
 *  - a layer's linear: W read by the forward and by the backward's recompute, and Wᵀ read from the
 *    transposed copy (written once a step, by the step's first pass over W); another global linear
 *    (project_in/out): W once and Wᵀ once;
 *  - the LM head: W and Wᵀ once per chunk of logits rows (../head-chunk.ts), and one pass over dG
 *    per chunk;
 *  - the token embedding: its rows gathered, one per token, and one pass over dG;
 *  - a pass over dG reads G (but the step's first on an untouched gradient, which starts at zero)
 *    and writes it; the gradient's Σ g² reads G once more at the unit's release. */
export function tileTraffic(layout: Layout, computeKind: StateKind, tokens: number, k: number): { read: number; written: number } {
  const c = layout.config;
  const chunks = Math.ceil(tokens / headChunkRows(tokens, c.vocabSize));
  let read = 0, written = 0;
  for (const p of layout.params) {
    if (!layout.isTiled(p.index)) continue;
    const w = layout.onDisk(computeKind, p.index) ? p.size * kindBytes(computeKind) : 0;
    const g = layout.onDisk('grad', p.index) ? p.size * 4 : 0;
    const head = p.use === 'head' || p.use === 'tied', embed = p.use === 'embed' || p.use === 'tied';
    // Passes over W (forward) and Wᵀ a micro-batch, and over dW.
    const wPasses = p.use === 'layer' ? 2 : head ? chunks : embed ? 0 : 1;
    const tPasses = head ? chunks : embed ? 0 : 1;
    const gPasses = (head ? chunks : embed ? 0 : 1) + (embed ? 1 : 0);
    read += k * (wPasses + tPasses) * w;
    if (tPasses > 0) written += w;
    if (embed && w > 0) read += k * tokens * p.shape[1]! * kindBytes(computeKind);
    read += (k * gPasses - 1) * g + k * g;
    written += k * gPasses * g;
  }
  return { read, written };
}

/** Bytes of one layer's activations and their gradients per token (f32): what its norms,
 *  activation function, residuals and softmax stream (./plan.ts reserves the same per layer). */
export function layerActivationBytes(c: ModelConfig): number {
  const q = c.heads * c.headDim, kv = c.kvHeads * c.headDim, ffn = (c.gatedMlp ? 3 : 2) * c.ffn;
  return 4 * 2 * (8 * c.hidden + 2 * q + 2 * kv + ffn + c.heads);
}
