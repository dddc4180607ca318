// Choosing a policy for a model, a workload and the user's limits: sizes from the checkpoint's
// headers (or a named shape's config), rates from the hardware profile, then the LP search.

import os from 'node:os';
import { type ComputeMode, cpuBackend, releaseFreedMemory, weightFormatFor } from '../backend/index.js';
import type { CacheDType } from '../backend/kernels.js';
import { type ModelConfig, positionsNote } from '../models/config.js';
import { openModel } from '../models/load.js';
import { readPreset } from '../models/registry.js';
import { type ModelSizes, sizesFromConfig } from '../models/weights.js';
import { type PartBytes, type Prediction, type Rates, type Workload, layerCosts, predict } from '../policy/cost-model.js';
import { DEFAULT_POLICY, type Policy, cacheDtypeFor, cacheDtypeOf, shares } from '../policy/policy.js';
import { type Limits, packedFileBytes } from '../policy/memory.js';
import { type HardwareProfile, attentionDecodeRate, attentionPrefillRate, diskReadRate, diskWriteRate, gemmRate } from '../policy/profile.js';
import { type Plan, searchPolicy } from '../policy/search.js';
import { UserError } from '../util/errors.js';
import { runInChild } from '../util/child.js';
import { tokenizerRamBytes } from '../formats/tokenizer.js';
import { cacheBytesPerElement } from './generate.js';
import { checkKeys } from '../util/names.js';

export interface PlanRequest {
  model?: string;
  config?: string;
  layers?: number;
  promptLen: number;
  genLen: number;
  /** Prompt tokens per batch and step when prompts go in chunks beside decode rows (a server);
   *  absent: each batch's prompts run at once. */
  prefillChunk?: number;
  precision?: ComputeMode;
  /** Absent: the precision's default (cacheDtypeFor). */
  cacheDtype?: CacheDType;
  limits: Limits;
  /** Whether a disk tier is available (a disk directory was given). */
  disk: boolean;
  profile: HardwareProfile;
  /** Only these block shapes (gpu batch size, number of gpu batches). */
  shapes?: [number, number][];
  /** Layer weights 4-bit (their bytes and GEMM rate). */
  compressWeight?: boolean;
  /** Decode attention's kept share (reads all keys, that share of the values). */
  attnSparsity?: number;
  /** RAM the caller holds beside the model while it runs (a job's request ids), in bytes. */
  heldBytes?: number;
  /** What heldBytes is, as a refusal names it (default: "RAM held beside the model (heldBytes)"). */
  heldWhat?: string;
}

export interface PlanResult extends Plan {
  config: ModelConfig;
  sizes: ModelSizes;
  /** RAM the plan assumed when no --ram was given. */
  assumedRam: number | null;
  searchMillis: number;
}

function modelSizes(r: PlanRequest, mode: ComputeMode): { config: ModelConfig; sizes: ModelSizes; dtype: 'f32' | 'f16' | 'bf16' } {
  if (r.model) {
    const m = openModel(r.model, cpuBackend(), mode, r.compressWeight);
    try {
      const first = m.loader.matrices(0)[0]!;
      const dtype = m.loader.tensorInfo(`${first.name}.weight`)?.dtype ?? 'f16';
      return { config: m.config, sizes: m.loader.sizes(), dtype };
    } finally {
      m.close();
    }
  }
  const { arch, config } = readPreset(r.config, r.layers || undefined);
  return { config, sizes: sizesFromConfig(config, arch.names(config, () => false), 'f16', cpuBackend(), mode, r.compressWeight), dtype: 'f16' };
}

export function ratesFrom(profile: HardwareProfile, dtype: 'f32' | 'f16' | 'bf16', mode: ComputeMode, cacheDtype: CacheDType, compressWeight = false): Rates {
  const format = compressWeight ? 'q4' : weightFormatFor(dtype, mode);
  return {
    gemm: (m) => gemmRate(profile, format, mode, m),
    // A q4 cache is read by the same kernel structure; its rate in bytes is taken as the f16 one's.
    attentionDecode: attentionDecodeRate(profile, cacheDtype === 'q4' ? 'f16' : cacheDtype),
    attentionPrefill: attentionPrefillRate(profile),
    diskRead: diskReadRate(profile),
    diskWrite: diskWriteRate(profile),
  };
}

/** What the cost model predicts for a given policy (not necessarily the planner's choice). */
export function predictPolicy(r: PlanRequest, policy: Policy): Prediction {
  const mode = policy.precision;
  const cacheDtype = cacheDtypeOf(policy);
  const { config, sizes, dtype } = modelSizes({ ...r, compressWeight: policy.compressWeight }, mode);
  const w: Workload = {
    promptLen: r.promptLen, genLen: r.genLen, gpuBatchSize: policy.gpuBatchSize, numGpuBatches: policy.numGpuBatches,
    cacheElem: cacheBytesPerElement(cacheDtype, config.headDim), overlap: policy.overlap, sepLayer: policy.sepLayer, attnSparsity: policy.attnSparsity,
  };
  const costs = layerCosts(config, partBytes(sizes.layers), w, ratesFrom(r.profile, dtype, mode, cacheDtype, policy.compressWeight));
  const s = (what: 'weights' | 'cache' | 'activations') => shares(policy, what).disk;
  return predict(config, costs, w, { wd: s('weights'), cd: s('cache'), hd: s('activations') });
}

/** The largest layer's attention and MLP weight bytes. */
function partBytes(layers: { part: 'attn' | 'mlp'; bytes: number }[][]): PartBytes {
  const sum = (l: { part: string; bytes: number }[], p: string) => l.filter((m) => m.part === p).reduce((n, m) => n + m.bytes, 0);
  return { attn: Math.max(...layers.map((l) => sum(l, 'attn'))), mlp: Math.max(...layers.map((l) => sum(l, 'mlp'))) };
}

const PLAN_RAM_SHARE = 0.95;

const PLAN_KEYS = ['model', 'config', 'layers', 'promptLen', 'genLen', 'prefillChunk', 'precision', 'cacheDtype', 'limits', 'disk', 'profile', 'shapes',
  'compressWeight', 'attnSparsity', 'heldBytes', 'heldWhat'] as const;

/** A PlanRequest checked by name and value (limits: { ramBytes } planned with no limit at all). */
function checkPlanRequest(r: unknown): asserts r is PlanRequest {
  if (typeof r !== 'object' || r === null || Array.isArray(r)) throw new TypeError('planPolicy(): the request must be an object');
  checkKeys(r, PLAN_KEYS, 'planPolicy()');
  const q = r as Record<string, unknown>;
  const count = (k: string, min: number, optional: boolean) => {
    const v = q[k];
    if (v === undefined && optional) return;
    if (!(typeof v === 'number' && Number.isSafeInteger(v) && v >= min)) throw new RangeError(`planPolicy(): ${k} must be an integer >= ${min}, got ${typeof v === 'string' ? JSON.stringify(v) : String(v)}`);
  };
  count('promptLen', 1, false);
  count('genLen', 1, false);
  count('layers', 1, true);
  count('prefillChunk', 1, true);
  count('heldBytes', 0, true);
  if (q.heldWhat !== undefined && typeof q.heldWhat !== 'string') throw new TypeError(`planPolicy(): heldWhat must be a string, got ${typeof q.heldWhat}`);
  if (typeof q.limits !== 'object' || q.limits === null) throw new TypeError('planPolicy(): limits must be an object ({ ram?, disk?, device? } in bytes)');
  checkKeys(q.limits, ['ram', 'disk', 'device'], 'planPolicy(): limits');
  for (const [k, v] of Object.entries(q.limits)) {
    if (v !== undefined && !(typeof v === 'number' && Number.isSafeInteger(v) && v > 0)) throw new RangeError(`planPolicy(): limits.${k} must be a number of bytes (an integer > 0), got ${JSON.stringify(v)}`);
  }
  if (typeof q.disk !== 'boolean') throw new TypeError(`planPolicy(): disk must be true or false, got ${JSON.stringify(q.disk)}`);
  if (typeof q.profile !== 'object' || q.profile === null) throw new TypeError('planPolicy(): profile must be a hardware profile (ensureProfile())');
}

export async function planPolicy(r: PlanRequest): Promise<PlanResult> {
  checkPlanRequest(r);
  const mode = r.precision ?? DEFAULT_POLICY.precision;
  const cacheDtype = r.cacheDtype === 'q4' ? 'q4' : cacheDtypeFor(r.cacheDtype, mode);
  const { config, sizes, dtype } = modelSizes(r, mode);
  if (r.promptLen + r.genLen > config.maxPositions) {
    throw new UserError(`prompt ${r.promptLen} + ${r.genLen} new tokens exceed the model's ${config.maxPositions} positions${positionsNote(config)}`);
  }
  // Without a limit, plan for most of this machine's memory.
  const assumedRam = r.limits.ram === undefined ? Math.floor(os.totalmem() * 0.8) : null;
  // Plan within 95% of the limit: what the accounting cannot see (JavaScript garbage between
  // collections, allocator slack) must fit in the rest and the runtime allowance.
  const limits: Limits = { ...r.limits, ram: r.limits.ram ?? assumedRam! };
  if (!r.disk) limits.disk = 0;
  const layerBytes = sizes.layers.map((l) => l.reduce((n, m) => n + m.bytes, 0));
  // Staging slots hold whole tensors, each 4096-aligned.
  const aligned = (ms: { bytes: number }[]) => ms.reduce((n, m) => n + Math.ceil(m.bytes / 4096) * 4096, 0);
  const unitBytes = {
    sep: Math.max(...sizes.layers.flatMap((l) => ['attn', 'mlp'].map((p) => aligned(l.filter((m) => m.part === p))))),
    whole: Math.max(...sizes.layers.map(aligned)),
  };
  const t0 = performance.now();
  const plan = await searchPolicy({
    config, layerBytes, fileBytes: packedFileBytes(sizes.layers), partBytes: partBytes(sizes.layers), unitBytes, globalBytes: sizes.globalBytes,
    chunkBytes: sizes.chunkBytes, packedChunkBytes: sizes.packedChunkBytes,
    tokenizerBytes: r.model ? tokenizerRamBytes(r.model) : 0, heldBytes: r.heldBytes, heldWhat: r.heldWhat, promptLen: r.promptLen, genLen: r.genLen, prefillChunk: r.prefillChunk,
    cacheElem: cacheBytesPerElement(cacheDtype, config.headDim), attnSparsity: r.attnSparsity, limits, rates: ratesFrom(r.profile, dtype, mode, cacheDtype, r.compressWeight), shapes: r.shapes, ramShare: PLAN_RAM_SHARE,
  });
  // The policy carries everything that changes memory or speed, so running it runs this plan.
  plan.policy = {
    ...plan.policy, compressWeight: r.compressWeight === true, compressCache: cacheDtype === 'q4',
    cacheDtype: cacheDtype === 'q4' ? DEFAULT_POLICY.cacheDtype : cacheDtype, attnSparsity: r.attnSparsity ?? 1, precision: mode,
  };
  // The solver's compilation leaves freed memory in malloc's arenas (tens of MB): return it before
  // the caller loads a model beside it.
  releaseFreedMemory();
  return { ...plan, config, sizes, assumedRam, searchMillis: performance.now() - t0 };
}

/**
 * planPolicy in a child process, for a run under a RAM limit: the LP solver (HiGHS, WebAssembly)
 * takes about 100 MB while it searches and leaves 30-90 MB resident after it in this process
 * (compiled code, its memory until collected, compiler memory malloc keeps), which the run's plan
 * does not count and --ram cannot afford. The child's memory all goes back when it exits.
 */
export async function planPolicyInChild(r: PlanRequest): Promise<PlanResult> {
  return (await runInChild<PlanResult>(import.meta.url, 'plan-main', r, (line) => process.stderr.write(`${line}\n`))).value;
}
