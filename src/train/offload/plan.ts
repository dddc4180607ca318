// What an offloaded training run holds in RAM, item by item, and the placement it chooses from a
// RAM limit: the working buffers first (they do not depend on the placement), then what is left
// keeps states resident, in the order that saves the most traffic per byte — the compute copy of
// the parameters (read twice a step), the gradients (written, and read back when accumulating),
// then master weights, momentum and variance (read and written once a step), and the activation
// checkpoints. A limit the working buffers alone exceed is refused, naming what fills it.

import type { ModelConfig } from '../../models/config.js';
import { type MemoryItem, checkLimits } from '../../policy/memory.js';
import { Layout, PIECE_ALIGN, type Shares, type StateKind, kindBytes, roundSubGroup, stateBytesPerParam } from './layout.js';
import type { NameTable } from '../../models/architecture.js';
import type { Precision } from '../../optim/state.js';
import { alignUp } from '../../tensor/disk/io.js';
import { UserError } from '../../util/errors.js';
import { type NameStyle, nameStyle } from '../../util/names.js';
import { formatSize } from '../../tensor/tiers/size.js';
import { TENSOR_FILE_RAM_BYTES } from '../tensor-file.js';
import { layerActivationBytes } from './cost.js';
import { headChunkRows } from '../head-chunk.js';
import { tileBufferBytes } from './tiles.js';

export interface OffloadPlanInput {
  config: ModelConfig;
  names: NameTable;
  precision: Precision;
  /** Tokens of the largest micro-batch (batch size × sequence length). */
  maxTokens: number;
  ram: number;
  disk?: number;
  /** Given shares (the rest are planned). */
  shares?: Partial<Shares>;
  subGroupSize?: number;
  /** Bytes of a weight tile; weights larger are computed in tiles (default: planned from ram). */
  tileSize?: number;
  checkpointActivations: boolean;
  /** Data-parallel ranks (default 1): with more, plan one rank's share (src/train/partition/plan.ts). */
  ranks?: number;
  /** RAM the caller holds besides the trainer's buffers for as long as it trains (a run's
   *  tokenized data): counted against the limit like them. */
  heldBytes?: number;
  /** How a refusal names the options that would fit it: openTrainer's and train()'s ('api'), or
   *  `tierlm train`'s flags (default: as the process names options, src/util/names.ts). */
  optionNames?: NameStyle;
}

export interface OffloadPlan {
  shares: Shares;
  subGroupSize: number;
  /** Sets of optimizer sub-group buffers (sets − 2 sub-groups are read ahead). */
  optimizerSets: number;
  /** Most units read ahead (the prefetcher picks the depth within it from measurements). */
  maxDepth: number;
  /** Bytes of a weight tile, and the weights computed in tiles. */
  tileBytes: number;
  tiled: Set<string>;
  layout: Layout;
  items: MemoryItem[];
}

const ORDER: (StateKind | 'act')[] = ['param', 'master', 'grad', 'm', 'v', 'act'];
// (fp32 has no 'param': the master, which compute reads, comes first.)

/** The plan under the limits. Without a given tile size, weights over an eighth of the limit are
 *  tiled; when that does not fit, smaller tiles are tried (down to 64 KiB) before refusing — a
 *  larger limit tiled fewer weights, held them whole, and was refused where a smaller one ran. */
export function planOffload(o: OffloadPlanInput): OffloadPlan {
  return withSubGroups(o, defaultSubGroup(o), (subGroupSize) => {
    const p = { ...o, subGroupSize };
    const tried = planOrRefusals(p);
    // (the RAM limit a refusal names is searched with each limit's own default sub-groups)
    if (Array.isArray(tried)) throw refusal(o, tried);
    return tried;
  });
}

/** Plans with the default optimizer sub-groups and, where the caller set none and the RAM limit is
 *  short, with smaller ones (a quarter each time, down to 2048 elements): smaller sub-groups move
 *  the optimizer's states in more, shorter reads, which costs less than refusing a run that fits.
 *  A refusal at the smallest is the one reported (its shortfall is what the run truly lacks). */
export function withSubGroups(o: OffloadPlanInput, defaultSize: number, plan: (subGroupSize: number) => OffloadPlan): OffloadPlan {
  // (planned as the optimizer runs it: a multiple of 2048 elements, ./optimizer.ts; a bad size
  // given is left for placeStates to refuse by name)
  const given = plannedSubGroup(o.subGroupSize);
  if (given !== undefined) return plan(given);
  for (let size = roundSubGroup(defaultSize); ; size = roundSubGroup(size / 4)) {
    try {
      return plan(size);
    } catch (e) {
      if (!(e instanceof LimitRefusal) || e.tier !== 'ram' || size === MIN_SUB_GROUP) throw e;
    }
  }
}

/** A sub-group size given, as the optimizer runs it (a bad one is left for placeStates to refuse by name). */
const plannedSubGroup = (given: number | undefined): number | undefined =>
  given !== undefined && Number.isSafeInteger(given) && given >= 1 ? roundSubGroup(given) : given;

/** Elements of the default sub-group: a set of its buffers is a 48th of the limit. */
const defaultSubGroup = (o: OffloadPlanInput): number => Math.floor(o.ram / 48 / stateBytesPerParam(o.precision));

/** The smallest sub-group the planners choose (one piece: ./optimizer.ts). */
const MIN_SUB_GROUP = PIECE_ALIGN;

/** A plan over a limit: which limit, by how much, and at which tile size (planOffload compares
 *  the refusals of its attempts). */
export class LimitRefusal extends UserError {
  constructor(message: string, readonly tier: 'ram' | 'disk', readonly short: number, readonly tileBytes: number) {
    super(message);
  }
}

/** The first plan that fits, the default tiles first, then smaller ones; or every attempt's refusal. */
function planOrRefusals(o: OffloadPlanInput): OffloadPlan | LimitRefusal[] {
  const tiles: (number | undefined)[] = [o.tileSize];
  if (o.tileSize === undefined) for (let tile = prevPow2(Math.floor(o.ram / 64)); tile >= MIN_TILE_BYTES; tile /= 2) tiles.push(tile);
  const refusals: LimitRefusal[] = [];
  for (const tileSize of tiles) {
    try {
      return planOffloadOnce({ ...o, tileSize });
    } catch (e) {
      if (!(e instanceof LimitRefusal)) throw e;
      refusals.push(e);
    }
  }
  return refusals;
}

/** The refusal that says what is short (the first attempt's alone named the RAM limit even where a
 *  smaller tile fit it and only the disk limit was short): a disk shortfall (the least among the
 *  attempts the RAM fits) comes with its tile and the RAM limit that would fit the disk too; a RAM
 *  shortfall (the least) only where no tile fits the RAM. */
function refusal(o: OffloadPlanInput, refusals: LimitRefusal[]): LimitRefusal {
  const least = (tier: 'ram' | 'disk') => refusals.filter((r) => r.tier === tier).sort((a, b) => a.short - b.short)[0];
  const disk = least('disk');
  if (!disk) return least('ram')!;
  const tiles = refusals.some((r) => r.tier === 'ram') ? `, with weights in tiles of ${formatSize(disk.tileBytes)} (with larger ones the RAM limit ${formatSize(o.ram)} is short)` : '';
  const ram = ramForDisk(o, disk.short);
  const raise = ram === null ? 'Raise the disk limit by that' : `Raise the disk limit by that, or the RAM limit to ${formatSize(ram)} (which keeps enough of the states in RAM)`;
  return new LimitRefusal(`${disk.message}${tiles}. ${raise}.`, 'disk', disk.short, disk.tileBytes);
}

/** The RAM limit with which the plan fits the disk limit too (more RAM keeps more of the states in
 *  RAM): searched, since the working buffers grow with the limit, to a 64th of it (in MiB). Null
 *  where much more RAM does not fit it (given shares keep the states on disk). */
function ramForDisk(o: OffloadPlanInput, short: number): number | null {
  if (ORDER.every((k) => o.shares?.[k] !== undefined)) return null;
  const fits = (mib: number) => !Array.isArray(planOrRefusals({ ...o, ram: mib * MiB }));
  // lo is refused (the limit itself, rounded down), hi fits.
  let lo = Math.floor(o.ram / MiB), hi = lo + Math.ceil(short / MiB);
  for (let i = 0; !fits(hi); i++) {
    if (i === 8) return null;
    [lo, hi] = [hi, lo + 2 * (hi - lo)];
  }
  while (hi - lo > Math.max(1, hi / 64)) {
    const mid = Math.floor((lo + hi) / 2);
    if (fits(mid)) hi = mid;
    else lo = mid;
  }
  return hi * MiB;
}

const MiB = 2 ** 20;
const MIN_TILE_BYTES = 1 << 16;
const prevPow2 = (n: number): number => 2 ** Math.floor(Math.log2(Math.max(1, n)));

function planOffloadOnce(o: OffloadPlanInput): OffloadPlan {
  const c = o.config, t = o.maxTokens;
  const computeKind: StateKind = o.precision === 'bf16' ? 'param' : 'master';
  // Memory-centric tiling: a linear weight over four tiles (a tile is a 32nd of the limit by
  // default) is never fetched whole; --tile-size sets the tile, and tiles every weight larger.
  const tileBytes = o.tileSize ?? Math.max(MIN_TILE_BYTES, Math.floor(o.ram / 32));
  const tileOver = o.tileSize ?? 4 * tileBytes;
  const all = new Layout(c, o.names, o.precision, { param: 0, grad: 0, master: 0, m: 0, v: 0, act: 0 });
  const g = o.names.global;
  // The LM head and the embedding tile too (over vocab rows); learned positions stay whole.
  const whole = new Set([`${g.pos_embed}.weight`]);
  const tiled = new Set(all.params.filter((p) => p.shape.length === 2 && !whole.has(p.name) && p.size * kindBytes(computeKind) > tileOver).map((p) => p.name));
  const probe = new Layout(c, o.names, o.precision, { param: 0, grad: 0, master: 0, m: 0, v: 0, act: 0 }, tiled);
  const L = c.layers;
  const unitElems = probe.fetched.map((u) => u.reduce((n, i) => n + probe.params[i]!.size, 0));
  const unitBytes = (u: number, k: StateKind) => probe.fetched[u]!.reduce((n, i) => n + alignUp(probe.params[i]!.size * kindBytes(k)), 0);
  const layerMax = (k: StateKind) => Math.max(0, ...Array.from({ length: L }, (_, u) => unitBytes(u, k)));
  const perElem = stateBytesPerParam(o.precision);
  // Sub-groups: a set of buffers is a 48th of the limit (pieces of 2048 elements at least;
  // ./optimizer.ts); each kind's buffer may take a block of alignment more. Three sets at least;
  // more (up to an eighth of the limit, eight sets, and a quarter of what the other working
  // buffers leave) read further ahead: the update overlaps the next forward, which yields to it
  // only between units, so what it moves under one unit's compute is what its sets − 2
  // sub-groups read ahead hold (./cost.ts). They coexist with the forward's buffers (both are
  // items below).
  const subGroupSize = o.subGroupSize ?? roundSubGroup(defaultSubGroup(o));
  const setBytes = Math.max(2048, Math.min(subGroupSize, probe.params.reduce((n, p) => n + p.size, 0))) * perElem + probe.kinds.length * 4096;
  // Packed weights: each held unit's weights packed (and packed transposed) in f32 at most.
  const packs = 2 * 4 * (Math.max(0, ...unitElems.slice(0, L)) + unitElems[L]!);
  const fixed = (depth: number, sets: number): MemoryItem[] => [
    { what: 'parameter buffers (layer in use, read ahead, globals)', ram: (depth + 1) * layerMax(computeKind) + 2 * unitBytes(L, computeKind), disk: 0 },
    { what: 'gradient buffers', ram: 2 * layerMax('grad') + unitBytes(L, 'grad'), disk: 0 },
    { what: 'packed weights', ram: packs, disk: 0 },
    { what: `optimizer sub-group buffers (${sets} sets)`, ram: sets * setBytes, disk: 0 },
    // Without activation checkpointing every layer keeps its whole tape (half of perToken).
    { what: o.checkpointActivations ? 'activations and gradients of one layer, head, logits' : 'every layer\'s activations, gradients, head, logits',
      ram: stepActivationBytes(c, t, o.checkpointActivations), disk: 0 },
    // Chunk buffers, staging and the f32 chunk of a state read from disk.
    { what: 'checkpoint save and resume', ram: TENSOR_FILE_RAM_BYTES + TENSOR_FILE_RAM_BYTES / 4, disk: 0 },
    // The tile buffers (./tiles.ts: a tile of Wᵀ holds 32 of W's columns at least, n × 32, over the
    // tile size for a large n) and dy's columns.
    { what: 'weight tiles', ram: tiled.size > 0 ? tileBufferBytes(probe.params.filter((p) => tiled.has(p.name)).map((p) => p.shape), kindBytes(computeKind), tileBytes) +
      4 * t * Math.max(c.ffn, c.hidden) : 0, disk: 0 },
    { what: 'activation checkpoint staging', ram: o.checkpointActivations ? 2 * alignUp(4 * t * c.hidden) : 0, disk: 0 },
  ];
  let maxDepth = 1;
  const base = fixed(1, 3).reduce((n, i) => n + i.ram, 0);
  const optimizerSets = 3 + Math.max(0, Math.min(5, Math.floor(Math.min(o.ram / 8 - 3 * setBytes, (o.ram - base) / 4) / setBytes)));
  // Deeper prefetch while it takes at most a quarter of what is left.
  while (maxDepth < 4 && (maxDepth + 1) * layerMax(computeKind) <= (o.ram - base) / 4 + layerMax(computeKind)) maxDepth++;
  return placeStates(o, probe, fixed(maxDepth, optimizerSets), { subGroupSize, optimizerSets, maxDepth, tileBytes, tiled, actTotal: o.checkpointActivations ? (L + 1) * 4 * t * c.hidden : 0 });
}

/** A step's activations and gradients (one layer's, or with activation checkpointing off every
 *  layer's whole tape: half of a layer's per token), and the products' outputs: the largest
 *  layer product over the micro-batch, and the LM head's chunk of logits (../head-chunk.ts). */
export function stepActivationBytes(c: ModelConfig, t: number, checkpointActivations: boolean): number {
  const perToken = layerActivationBytes(c) + 4 * 4 * c.embedDim;
  const products = 4 * t * Math.max(c.ffn, c.hidden, c.heads * c.headDim, c.embedDim) + 4 * headChunkRows(t, c.vocabSize) * c.vocabSize;
  return perToken * t * (checkpointActivations ? 1 : (c.layers + 1) / 2) + products;
}

/** Given the working buffers (`items`), keeps states in RAM in ORDER while the limit allows, and
 *  checks the limits. `probe`'s tensors (all on disk) are those the layout places. */
export function placeStates(o: OffloadPlanInput, probe: Layout, items: MemoryItem[],
  p: { subGroupSize: number; optimizerSets: number; maxDepth: number; tileBytes: number; tiled: Set<string>; actTotal: number; actInRam?: boolean }): OffloadPlan {
  const c = o.config, t = o.maxTokens, { subGroupSize, optimizerSets, maxDepth, tileBytes, tiled } = p;
  if (o.heldBytes) items = [{ what: 'training data (tokenized) and tokenizer', ram: o.heldBytes, disk: 0 }, ...items];
  let left = o.ram - items.reduce((n, i) => n + i.ram, 0);
  const shares = { param: 0, grad: 0, master: 0, m: 0, v: 0, act: 0 } as Shares;
  const totals: Record<string, number> = Object.fromEntries(probe.kinds.map((k) => [k, probe.params.reduce((n, q) => n + q.size * kindBytes(k), 0)]));
  totals.act = p.actTotal;
  // Checkpoints that must stay in RAM come before any state.
  if (p.actInRam) left -= p.actTotal;
  for (const k of o.precision === 'bf16' ? ORDER : ORDER.filter((x) => x !== 'param')) {
    const given = o.shares?.[k];
    const total = totals[k] ?? 0;
    let s = given ?? (total === 0 ? 1 : Math.max(0, Math.min(1, left / total)));
    // Activation checkpoints are kept all in RAM or all on disk (always in RAM under ranks).
    if (k === 'act') s = p.actInRam || s >= 1 ? 1 : 0;
    shares[k] = s;
    if (k !== 'act' || !p.actInRam) left -= s * total;
  }
  // fp32: the master is what compute reads.
  if (o.precision === 'fp32') shares.param = 0;
  const layout = new Layout(c, probe.params, o.precision, shares, tiled);
  for (const k of probe.kinds) {
    const b = layout.bytes(k);
    // What the layout placed (it keeps whole tensors: under ranks a slice is one, so a share of 0.93
    // can place nothing), not the share asked for.
    items.push({ what: `${KIND_NAMES[k]} (${Math.round((100 * b.ram) / Math.max(1, b.ram + b.disk))}% in RAM)`, ram: b.ram, disk: b.disk });
  }
  items.push({ what: `activation checkpoints (${Math.round(100 * shares.act)}% in RAM)`, ram: shares.act >= 1 ? totals.act! : 0, disk: shares.act >= 1 ? 0 : totals.act! });
  // A tiled weight read from disk also gets a transposed copy there, for its input gradient (./tiles.ts).
  const transposed = layout.params.reduce((n, q) => n + (layout.hasTransposedCopy(q.index) ? alignUp(q.size * kindBytes(layout.computeKind)) : 0), 0);
  if (transposed > 0) items.push({ what: 'transposed copies of the tiled weights', ram: 0, disk: transposed });
  try {
    checkLimits(items, { ram: o.ram, disk: o.disk }, `training ${c.layers} layers with ${t} tokens per micro-batch`);
  } catch (e) {
    // checkLimits' advice is generation's; training's levers are these.
    if (e instanceof UserError) {
      const ram = items.reduce((n, i) => n + i.ram, 0), disk = items.reduce((n, i) => n + i.disk, 0);
      const statesInRam = layout.kinds.some((k) => layout.bytes(k).ram > 0);
      throw new LimitRefusal(e.message.replace(/ Put more of .*$/, ` ${levers(o, tileBytes, statesInRam)}.`), ram > o.ram ? 'ram' : 'disk',
        ram > o.ram ? ram - o.ram : disk - (o.disk ?? 0), tileBytes);
    }
    throw e;
  }
  if (!Number.isSafeInteger(subGroupSize) || subGroupSize < 1) {
    throw new UserError(`${(o.optionNames ?? nameStyle()) === 'api' ? 'offload.subGroupSize' : '--sub-group-size'} must be a positive integer, got ${subGroupSize}`);
  }
  return { shares, subGroupSize, optimizerSets, maxDepth, tileBytes, tiled, layout, items };
}

/** What would fit a refused plan, named as the caller passes it: an API caller has no flags
 *  (openTrainer's offload options, and train()'s where they differ), the CLI has nothing else.
 *  The RAM limit itself first (it was never named); fewer states in RAM only where some are. */
function levers(o: OffloadPlanInput, tileBytes: number, statesInRam: boolean): string {
  const api = (o.optionNames ?? nameStyle()) === 'api';
  const held = (o.heldBytes ?? 0) > o.ram / 4;
  // (no tiles under ranks, which plan with tiling off: a tile size would change nothing there)
  if (api) {
    return `Raise the RAM limit (offload.ram), ${statesInRam ? 'keep fewer states in RAM (offload.shares, or train()\'s ramPercent), ' : ''}` +
      `${tileBytes === 0 ? '' : 'compute weights in smaller tiles (offload.tileSize), '}` +
      'or use smaller micro-batches (offload.maxTokens, or train()\'s batchSize and seqLen) or optimizer sub-groups (offload.subGroupSize)' +
      (held ? ', or hold less RAM while training (offload.heldBytes: train() counts its tokenized data and the tokenizer)' : '');
  }
  return `Raise --ram, ${statesInRam ? 'keep fewer states in RAM (--ram-percent), ' : ''}${tileBytes === 0 ? '' : 'compute weights in smaller tiles (--tile-size), '}` +
    `or use a smaller --batch-size, --seq-len or --sub-group-size${held ? ', or train on less data per run (the tokenized --data and the tokenizer stay in RAM)' : ''}`;
}

const KIND_NAMES: Record<StateKind, string> = {
  param: 'bf16 parameters', grad: 'gradients', master: 'fp32 master weights', m: 'Adam momentum', v: 'Adam variance',
};
