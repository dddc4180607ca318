// The policy search: an outer enumeration of block shapes (gpu_batch_size, num_gpu_batches) and,
// for each, linear programs over the placement fractions under every tier's capacity (solved by
// HiGHS, compiled to WebAssembly); the best predicted throughput wins.
//
// For each shape, eight variants fix which of weights / cache / activations may use the disk at
// all: a tier that is used needs staging buffers in RAM (a constant), which keeps each program
// linear. On a CPU-only machine the device is RAM, so device fractions stay 0. Fractions from the
// solver become percents only when the Policy is built (FlexGen's search once returned fractions
// where percents were expected).

import highsModule, { type LegacyHighs } from 'highs';
import type { ModelConfig } from '../models/config.js';
import { formatSize } from '../tensor/tiers/size.js';
import { UserError } from '../util/errors.js';
import { nameStyle, optionName } from '../util/names.js';
import { type LayerCosts, type LinearTime, type PartBytes, type Placement, type Prediction, type Rates, type UnitCost, type Workload, layerCosts, predict } from './cost-model.js';
import { HELD_WHAT, type Limits, type MemoryItem, blockItems, weightItems } from './memory.js';
import { DEFAULT_POLICY, type Policy } from './policy.js';

export interface SearchInput {
  config: ModelConfig;
  /** Packed bytes of each layer's weights. */
  layerBytes: number[];
  /** The largest layer's attention and MLP bytes. */
  partBytes: PartBytes;
  /** Largest staging load, whole: one part of a layer (sepLayer) or one layer. */
  unitBytes: { sep: number; whole: number };
  /** Embeddings, LM head, norms: always in RAM. */
  globalBytes: number;
  /** The disk tier's packed-weights file (WeightSizes.fileBytes). */
  fileBytes?: number;
  /** Loading's read chunk and conversion's packed chunk (WeightSizes). */
  chunkBytes: number;
  packedChunkBytes: number;
  /** The loaded tokenizer. */
  tokenizerBytes: number;
  /** RAM the caller holds beside the model, and what it is (WeightSizes.heldBytes, heldWhat). */
  heldBytes?: number;
  heldWhat?: string;
  promptLen: number;
  genLen: number;
  /** Prompt tokens a batch runs per step beside its decode rows when prompts go in chunks (a
   *  server's continuous batching); absent: a batch's prompts run at once (gpu batch × prompt). */
  prefillChunk?: number;
  cacheElem: number;
  attnSparsity?: number;
  limits: Limits;
  rates: Rates;
  /** Block shapes to try (default: powers of two up to 64 × 32). */
  shapes?: [number, number][];
  /** Share of the RAM limit a plan may fill (the rest is headroom for what the accounting cannot see). */
  ramShare?: number;
}

export interface Plan {
  policy: Policy;
  prediction: Prediction;
  memory: { ram: number; disk: number; device: number; items: MemoryItem[] };
}

const GIB = 2 ** 30;

// The package's types describe a CommonJS module; at run time its ES module's default export is the loader.
// Not cached: a solver (its WebAssembly memory, tens of MB) lives only as long as one search, so
// a run that plans and then generates does not carry it beside the buffers its plan counts.
const loadHighs = ((highsModule as unknown as { default?: unknown }).default ?? highsModule) as unknown as () => Promise<LegacyHighs>;

const BATCH_SIZES = [1, 2, 4, 8, 12, 16, 24, 32, 48, 64];
const BATCH_COUNTS = [1, 2, 4, 8, 16, 32];

/** The block shapes searched: every pair, or only those with the batch size and/or count a user fixed. */
export function blockShapes(gbs?: number, ngb?: number): [number, number][] {
  return (gbs !== undefined ? [gbs] : BATCH_SIZES).flatMap((g) => (ngb !== undefined ? [ngb] : BATCH_COUNTS).map((n): [number, number] => [g, n]));
}

function num(x: number): string {
  // The LP reader wants plain numbers; 12 significant digits keep the programs exact enough.
  return Number.isFinite(x) ? x.toPrecision(12).replace(/\.?0+e/, 'e') : '0';
}

interface Variant {
  w: boolean;
  c: boolean;
  h: boolean;
}

const VARIANTS: Variant[] = [false, true].flatMap((w) => [false, true].flatMap((c) => [false, true].map((h) => ({ w, c, h }))));

/** Most tokens one batch runs in a step: its prompts at once, or a chunk beside its decode rows. */
export function stepTokens(input: Pick<SearchInput, 'promptLen' | 'prefillChunk'>, gbs: number): number {
  return input.prefillChunk !== undefined ? input.prefillChunk + gbs : Math.max(gbs * input.promptLen, gbs);
}

/** Memory (RAM bytes) as constant + coefficients × disk fractions, for one shape and variant. */
function ramModel(input: SearchInput, gbs: number, ngb: number, sepLayer: boolean, v: Variant) {
  const c = input.config;
  const probe = (p: Partial<Policy>) => {
    const policy = { ...DEFAULT_POLICY, gpuBatchSize: gbs, numGpuBatches: ngb, sepLayer, ...p };
    return [
      ...weightItems({ layerBytes: input.layerBytes, fileBytes: input.fileBytes, slotBytes: sepLayer ? input.unitBytes.sep : input.unitBytes.whole, globalBytes: input.globalBytes,
        chunkBytes: input.chunkBytes, packedChunkBytes: input.packedChunkBytes,
        tokenizerBytes: input.tokenizerBytes, heldBytes: input.heldBytes, heldWhat: input.heldWhat }, policy, v.w),
      ...blockItems(c, policy, { rows: gbs, batches: ngb, maxTokens: stepTokens(input, gbs), capacity: input.promptLen + input.genLen, cacheBytesPerElement: input.cacheElem }),
    ];
  };
  const all = probe({});
  const byName = (items: MemoryItem[], what: string) => items.find((i) => i.what === what)!;
  const W = input.layerBytes.reduce((a, b) => a + b, 0);
  const C = byName(all, 'KV cache').ram;
  const A = byName(all, 'activations').ram;
  const disk = probe({ wCpuPercent: v.w ? 0 : 100, cacheCpuPercent: v.c ? 0 : 100, actCpuPercent: v.h ? 0 : 100 });
  const staging = (v.w ? byName(disk, 'weight staging (two slots)').ram : 0) + (v.c ? byName(disk, 'KV cache staging').ram : 0) +
    (v.h ? byName(disk, 'activation staging').ram : 0);
  // The whole cache on disk: in 4096-byte records a position, more than its bytes in RAM.
  const CD = byName(disk, 'KV cache').disk;
  // Staging buffers exist only for a tier in use: counted once, from the variant.
  const placed = ['layer weights (resident share)', 'KV cache', 'activations', 'weight staging (two slots)', 'KV cache staging', 'activation staging'];
  const fixed = all.filter((i) => !placed.includes(i.what)).reduce((n, i) => n + i.ram, 0) + staging;
  return { W, C, CD, A, fixed, items: (p: Policy) => probe(p) };
}

function lp(costs: LayerCosts, w: Workload, layers: number, ram: { W: number; C: number; A: number; fixed: number }, ramCap: number, v: Variant): string {
  // A tiny cost per byte-share on disk breaks ties towards RAM: when compute bounds a phase,
  // moving data to disk gains nothing and only adds traffic.
  const eps = 1e-6 * (layers * (costs.prefillCompute + (w.genLen - 1) * costs.decodeCompute) + 1e-9);
  // One time variable per unit and phase: tp0, tp1 (prefill), tg0, tg1 (decode).
  const phases: [string, UnitCost[], number][] = [['tp', costs.prefillUnits, layers], ['tg', costs.decodeUnits, layers * (w.genLen - 1)]];
  const vars = phases.flatMap(([name, units, weight]) => units.map((_, i) => ({ name: `${name}${i}`, weight })));
  const objective = vars.map((x) => `${num(x.weight)} ${x.name}`).join(' + ');
  const lines = ['Minimize', ` obj: ${objective} + ${num(eps)} wd + ${num(eps)} cd + ${num(eps)} hd`, 'Subject To'];
  const io = (t: LinearTime) => `${num(t.wd)} wd + ${num(t.cd)} cd + ${num(t.hd)} hd`;
  for (const [name, units] of phases) {
    units.forEach((u, i) => {
      const t = `${name}${i}`;
      if (w.overlap) lines.push(` ${t}io: ${t} - ${io(u.io)} >= 0`, ` ${t}comp: ${t} >= ${num(u.compute)}`);
      else lines.push(` ${t}io: ${t} - ${io(u.io)} >= ${num(u.compute)}`);
    });
  }
  // RAM: (1-wd)·W + (1-cd)·C + (1-hd)·A + fixed <= cap   (in GiB for conditioning)
  const rhs = (ramCap - ram.fixed - ram.W - ram.C - ram.A) / GIB;
  lines.push(` ram: - ${num(ram.W / GIB)} wd - ${num(ram.C / GIB)} cd - ${num(ram.A / GIB)} hd <= ${num(rhs)}`);
  lines.push('Bounds', ` 0 <= wd <= ${v.w ? 1 : 0}`, ` 0 <= cd <= ${v.c ? 1 : 0}`, ` 0 <= hd <= ${v.h ? 1 : 0}`, ...vars.map((x) => ` ${x.name} >= 0`), 'End');
  return lines.join('\n');
}

// The options the refusals name, as the caller gave them: the CLI's flags, or planPolicy()'s own
// (the only API that plans: it said "raise ramBytes", an option of loadModel's, not planPolicy's).
const ramOption = () => (nameStyle() === 'flags' ? optionName('ramBytes') : 'limits.ram');
const diskOption = () => (nameStyle() === 'flags' ? optionName('diskDir') : 'disk: true');
const addDisk = () => (nameStyle() === 'flags' ? `add ${diskOption()}` : `pass ${diskOption()}`);

/** The best policy for a workload under the limits, with its predicted throughput and memory. */
export async function searchPolicy(input: SearchInput): Promise<Plan> {
  const highs = await loadHighs();
  const c = input.config;
  const share = input.ramShare ?? 1;
  const ramLimit = input.limits.ram ?? Infinity;
  const ramCap = ramLimit * share;
  let best: Plan | null = null;
  let smallestRam = Infinity;
  let smallestShape = '';
  // The least RAM any placement needs with a disk tier, had one been given (for the advice).
  let smallestWithDisk = Infinity;
  const shapes = (input.shapes ?? blockShapes()).flatMap(([gbs, ngb]) => [true, false].map((sep) => [gbs, ngb, sep] as const));
  for (const [gbs, ngb, sepLayer] of shapes) {
    const w: Workload = { promptLen: input.promptLen, genLen: input.genLen, gpuBatchSize: gbs, numGpuBatches: ngb, cacheElem: input.cacheElem, overlap: true, sepLayer, attnSparsity: input.attnSparsity };
    const costs = layerCosts(c, input.partBytes, w, input.rates);
    for (const v of VARIANTS) {
      if (input.limits.disk === 0 && (v.w || v.c || v.h)) {
        if (v.w && v.c && v.h) {
          const r = ramModel(input, gbs, ngb, sepLayer, v);
          smallestWithDisk = Math.min(smallestWithDisk, r.fixed);
        }
        continue;
      }
      // Without weights on disk there is no staging, and units only matter for I/O: plan those once.
      if (!sepLayer && !v.w) continue;
      const ram = ramModel(input, gbs, ngb, sepLayer, v);
      const minRam = ram.fixed + (v.w ? 0 : ram.W) + (v.c ? 0 : ram.C) + (v.h ? 0 : ram.A);
      if (minRam < smallestRam) [smallestRam, smallestShape] = [minRam, `${gbs} × ${ngb}`];
      if (minRam > ramCap) continue;
      // The disk holds the whole packed model once any weight is on it.
      const diskNeed = (v.w ? ram.W : 0) + (v.c ? ram.CD : 0) + (v.h ? ram.A : 0);
      if (input.limits.disk !== undefined && diskNeed > input.limits.disk) continue;
      let x: Placement = { wd: 0, cd: 0, hd: 0 };
      if (v.w || v.c || v.h) {
        const cap = Number.isFinite(ramCap) ? ramCap : 1e18;
        const sol = highs.solve(lp(costs, w, c.layers, ram, cap, v), { output_flag: false });
        if (sol.Status !== 'Optimal') continue;
        const col = (n: string) => Math.min(1, Math.max(0, (sol.Columns as Record<string, { Primal: number }>)[n]?.Primal ?? 0));
        x = { wd: col('wd'), cd: col('cd'), hd: col('hd') };
      } else if (ram.fixed + ram.W + ram.C + ram.A > ramCap) {
        continue;
      }
      const policy = toPolicy(gbs, ngb, sepLayer, x);
      const prediction = predict(c, costs, w, { wd: 1 - policy.wCpuPercent / 100, cd: 1 - policy.cacheCpuPercent / 100, hd: 1 - policy.actCpuPercent / 100 });
      const items = ram.items(policy);
      const used = { ram: items.reduce((n, i) => n + i.ram, 0), disk: items.reduce((n, i) => n + i.disk, 0), device: 0 };
      if (used.ram > ramCap) continue; // rounding to percents crossed the limit
      if (!best || prediction.totalTokensPerSecond > best.prediction.totalTokensPerSecond * (1 + 1e-9)) {
        best = { policy, prediction, memory: { ...used, items } };
      }
    }
  }
  if (!best) {
    const W = input.layerBytes.reduce((a, b) => a + b, 0);
    if (input.limits.disk === 0) {
      const raise = `raise ${ramOption()} by about ${formatSize(smallestRam / share - ramLimit)}`;
      // A disk tier is advice only when the rest, with everything it can hold on it, fits.
      if (smallestWithDisk <= ramCap) {
        throw new UserError(`the model does not fit in the RAM limit ${formatSize(ramLimit)} and no disk tier was given: ` +
          `${addDisk()} (with at least ${formatSize(W)} free for its packed weights), or ${raise}`);
      }
      throw new UserError(`the model does not fit in the RAM limit ${formatSize(ramLimit)}: ${raise} (a disk tier alone would not do: ` +
        `with the weights, cache and activations on it, the embeddings, LM head, staging buffers and workspace still need ${formatSize(smallestWithDisk)}; ` +
        `with ${diskOption()}, raise it by about ${formatSize(smallestWithDisk / share - ramLimit)})`);
    }
    if (smallestRam > ramCap) {
      // (it said "one sequence per batch" for a shape the user fixed, and named a need below the
      // limit: the plan's reserve was not in it)
      const shape = input.shapes ? `in the smallest block allowed (${smallestShape}: gpu batch size × batches)` : 'and one sequence per batch';
      const reserve = share < 1 ? ` with the ${Math.round((1 - share) * 100)}% of the limit the plan keeps in reserve (${formatSize(smallestRam)} without)` : '';
      throw new UserError(`RAM limit ${formatSize(ramLimit)} is too small by ${formatSize(smallestRam / share - ramLimit)}: even with the weights, cache and activations on disk ${shape}, ` +
        `the embeddings, LM head, staging buffers and workspace${input.heldBytes ? `, and ${input.heldWhat ?? HELD_WHAT} (${formatSize(input.heldBytes)})` : ''} need ${formatSize(smallestRam / share)}${reserve}`);
    }
    throw new UserError(`disk limit ${formatSize(input.limits.disk ?? 0)} is too small by ${formatSize(W - (input.limits.disk ?? 0))}: ` +
      `the model does not fit in RAM, and its packed weights (${formatSize(W)}) must fit on the disk tier`);
  }
  return best;
}

/** Fractions on disk → a Policy in percents (rounded down to 0.01% of RAM so limits hold). */
function toPolicy(gbs: number, ngb: number, sepLayer: boolean, x: Placement): Policy {
  const pct = (diskFraction: number) => Math.floor((1 - diskFraction) * 10000 + 1e-6) / 100;
  return {
    ...DEFAULT_POLICY,
    gpuBatchSize: gbs,
    numGpuBatches: ngb,
    sepLayer,
    wGpuPercent: 0,
    wCpuPercent: pct(x.wd),
    cacheGpuPercent: 0,
    cacheCpuPercent: pct(x.cd),
    actGpuPercent: 0,
    actCpuPercent: pct(x.hd),
  };
}
