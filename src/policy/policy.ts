// The offloading policy: FlexGen's record, as a typed value apart from the executor. Placement
// shares are percents (0–100) of bytes; the disk gets what the device and RAM shares leave.
// In JSON the fields carry their unit in the name (`w_gpu_percent`), so a fraction can never be
// mistaken for a percent.

import { type NameStyle, checkKeys, nameStyle } from '../util/names.js';
import { RULES } from '../util/options.js';

export type ScheduleKind = 'zigzag' | 'row';
/** Element type of the KV cache when it is not compressed (compress_cache stores it 4-bit);
 *  'auto' follows the precision (cacheDtypeFor). */
export type PolicyCacheDType = 'auto' | 'f32' | 'f16';
/** How activations are computed: float32 (exact) or rounded to bf16 (faster). */
export type PolicyPrecision = 'fp32' | 'bf16';

export interface Policy {
  /** Sequences computed together in one kernel call. */
  gpuBatchSize: number;
  /** Batches that share one load of each layer's weights (zig-zag block). */
  numGpuBatches: number;
  /** Weights: percent on the device and in RAM; the disk holds the rest. */
  wGpuPercent: number;
  wCpuPercent: number;
  /** KV cache, likewise. */
  cacheGpuPercent: number;
  cacheCpuPercent: number;
  /** Activations (hidden states between layers), likewise. */
  actGpuPercent: number;
  actCpuPercent: number;
  /** Overlap loads and stores with compute. */
  overlap: boolean;
  /** Load attention and MLP weights separately (halves the weight staging memory). */
  sepLayer: boolean;
  /** Run decode attention where the cache lives instead of moving the cache to the device.
   *  On a CPU-only machine the device is RAM, so attention always runs there. */
  cpuCacheCompute: boolean;
  /** Layer weights packed 4-bit, group-wise (FlexGen's compress_weight). */
  compressWeight: boolean;
  /** KV cache stored 4-bit, grouped along the head dimension (compress_cache). */
  compressCache: boolean;
  /** Decode attention keeps this share of the cache's attention weights (1 = dense). */
  attnSparsity: number;
  schedule: ScheduleKind;
  /** KV cache element type: 'auto' (the default) is f32 at fp32 precision, which reproduces float64
   *  references, and f16 at bf16 precision, as the peers keep it (half the cache's bytes; decode
   *  attention reads the cache from RAM every step). */
  cacheDtype: PolicyCacheDType;
  /** Compute precision (fp32 by default, which reproduces float64 references). */
  precision: PolicyPrecision;
}

export const DEFAULT_POLICY: Policy = {
  gpuBatchSize: 8,
  numGpuBatches: 1,
  wGpuPercent: 0,
  wCpuPercent: 100,
  cacheGpuPercent: 0,
  cacheCpuPercent: 100,
  actGpuPercent: 0,
  actCpuPercent: 100,
  overlap: true,
  sepLayer: true,
  cpuCacheCompute: false,
  compressWeight: false,
  compressCache: false,
  attnSparsity: 1,
  schedule: 'zigzag',
  cacheDtype: 'auto',
  precision: 'fp32',
};

/** Each field as a policy file names it and as a flag sets it, so messages name what the user wrote. */
const FIELDS: [keyof Policy, string, string][] = [
  ['gpuBatchSize', 'gpu_batch_size', '--gpu-batch-size'],
  ['numGpuBatches', 'num_gpu_batches', '--num-gpu-batches'],
  ['wGpuPercent', 'w_gpu_percent', '--percent (1st number, WG)'],
  ['wCpuPercent', 'w_cpu_percent', '--percent (2nd number, WC)'],
  ['cacheGpuPercent', 'cache_gpu_percent', '--percent (3rd number, CG)'],
  ['cacheCpuPercent', 'cache_cpu_percent', '--percent (4th number, CC)'],
  ['actGpuPercent', 'act_gpu_percent', '--percent (5th number, HG)'],
  ['actCpuPercent', 'act_cpu_percent', '--percent (6th number, HC)'],
  ['overlap', 'overlap', '--overlap'],
  ['sepLayer', 'sep_layer', '--sep-layer'],
  ['cpuCacheCompute', 'cpu_cache_compute', '--cpu-cache-compute'],
  ['compressWeight', 'compress_weight', '--compress-weight'],
  ['compressCache', 'compress_cache', '--compress-cache'],
  ['attnSparsity', 'attn_sparsity', '--attn-sparsity'],
  ['schedule', 'schedule', '--schedule'],
  ['cacheDtype', 'cache_dtype', '--cache-dtype'],
  ['precision', 'precision', '--precision'],
];

/** How the user wrote the policy: API option names (`policy.gpuBatchSize`), JSON keys or flags. */
export type PolicyNames = NameStyle | 'json';

function nameOf(field: keyof Policy, names: PolicyNames): string {
  const f = FIELDS.find((x) => x[0] === field)!;
  return names === 'api' ? `policy.${field}` : names === 'json' ? f[1] : f[2];
}

/** Checks every field; a message names the field as the user wrote it (`names`) and the value,
 *  as JSON shows it (so the string "2" is not mistaken for the number 2), after `where` (the
 *  file, say) when there is one. */
export function validatePolicy(p: Policy, where = 'policy', names: PolicyNames = nameStyle()): Policy {
  const bad = (msg: string): never => {
    throw new RangeError(where ? `${where}: ${msg}` : msg);
  };
  const n = (f: keyof Policy) => nameOf(f, names);
  const show = (v: unknown) => JSON.stringify(v) ?? String(v);
  for (const f of ['gpuBatchSize', 'numGpuBatches'] as const) {
    if (typeof p[f] !== 'number' || !RULES[f].ok(p[f])) bad(`${n(f)} must be a positive integer, got ${show(p[f])}`);
  }
  const pct = (f: keyof Policy) => {
    const v = p[f] as number;
    if (typeof v !== 'number' || !(v >= 0 && v <= 100)) bad(`${n(f)} must be a percent in [0, 100], got ${show(v)}`);
  };
  for (const [g, c, what] of [['wGpuPercent', 'wCpuPercent', 'weights'], ['cacheGpuPercent', 'cacheCpuPercent', 'cache'], ['actGpuPercent', 'actCpuPercent', 'activations']] as const) {
    pct(g);
    pct(c);
    if (p[g] + p[c] > 100 + 1e-9) bad(`${what}: device ${p[g]}% + RAM ${p[c]}% exceed 100% (${n(g)} + ${n(c)})`);
  }
  for (const f of ['overlap', 'sepLayer', 'cpuCacheCompute', 'compressWeight', 'compressCache'] as const) {
    if (typeof p[f] !== 'boolean') bad(`${n(f)} must be true or false, got ${show(p[f])}`);
  }
  if (typeof p.attnSparsity !== 'number' || !RULES.attnSparsity.ok(p.attnSparsity)) bad(`${n('attnSparsity')} must be ${RULES.attnSparsity.want}, got ${show(p.attnSparsity)}`);
  if (p.schedule !== 'zigzag' && p.schedule !== 'row') bad(`${n('schedule')} must be "zigzag" or "row", got ${show(p.schedule)}`);
  if (p.cacheDtype !== 'auto' && p.cacheDtype !== 'f32' && p.cacheDtype !== 'f16') bad(`${n('cacheDtype')} must be "auto", "f32" or "f16", got ${show(p.cacheDtype)}`);
  // compress_cache stores the cache 4-bit: an f32 or f16 cache beside it was overridden silently.
  if (p.compressCache && p.cacheDtype !== 'auto') {
    bad(`${n('cacheDtype')} ${show(p.cacheDtype)} contradicts ${n('compressCache')} (a 4-bit cache): give one of them (${n('cacheDtype')} "auto" goes with it)`);
  }
  if (p.precision !== 'fp32' && p.precision !== 'bf16') bad(`${n('precision')} must be "fp32" or "bf16", got ${show(p.precision)}`);
  return p;
}

/** Share of bytes (0–1) on each tier for one kind of tensor. */
export interface Shares {
  device: number;
  ram: number;
  disk: number;
}

export function shares(p: Policy, what: 'weights' | 'cache' | 'activations'): Shares {
  const [g, c] = what === 'weights' ? [p.wGpuPercent, p.wCpuPercent] : what === 'cache' ? [p.cacheGpuPercent, p.cacheCpuPercent] : [p.actGpuPercent, p.actCpuPercent];
  return { device: g / 100, ram: c / 100, disk: Math.max(0, 1 - (g + c) / 100) };
}

export function policyToJson(p: Policy): Record<string, unknown> {
  return Object.fromEntries(FIELDS.map(([k, j]) => [j, p[k]]));
}

/** An uncompressed cache's element type: `cacheDtype` unless it is 'auto' (or not given), then f16
 *  at bf16 precision (its keys and values come from bf16 products; f16 keeps 3 more bits of them
 *  than bf16 would) and f32 at fp32. */
export function cacheDtypeFor(cacheDtype: PolicyCacheDType | undefined, precision: PolicyPrecision): 'f32' | 'f16' {
  return cacheDtype === undefined || cacheDtype === 'auto' ? (precision === 'bf16' ? 'f16' : 'f32') : cacheDtype;
}

/** The KV cache's element type as the kernels store it (q4 when compressed). */
export function cacheDtypeOf(p: Policy): 'f32' | 'f16' | 'q4' {
  return p.compressCache ? 'q4' : cacheDtypeFor(p.cacheDtype, p.precision);
}

/** A partial policy from the API: unknown keys are refused by name (a TypeError). */
export function policyFromOptions(partial: Partial<Policy> | undefined): Policy {
  checkKeys(partial, FIELDS.map((f) => f[0]), 'policy');
  return validatePolicy({ ...DEFAULT_POLICY, ...partial }, 'policy', 'api');
}

/** Reads a policy from JSON (unknown fields are refused, missing ones take the defaults). */
export function policyFromJson(json: unknown, where = 'policy'): Policy {
  if (typeof json !== 'object' || json === null || Array.isArray(json)) throw new RangeError(`${where}: expected a JSON object`);
  const known = new Map(FIELDS.map(([k, j]) => [j, k]));
  const p: Record<string, unknown> = { ...DEFAULT_POLICY };
  for (const [key, value] of Object.entries(json as Record<string, unknown>)) {
    const field = known.get(key);
    if (!field) {
      if (key === 'predicted' || key === 'prediction' || key.startsWith('_')) continue; // written beside the policy by `plan --json`
      throw new RangeError(`${where}: unknown field "${key}" (known: ${[...known.keys()].join(', ')})`);
    }
    p[field] = value;
  }
  return validatePolicy(p as unknown as Policy, where, 'json');
}

/** The six FlexGen numbers: w_gpu w_cpu cache_gpu cache_cpu act_gpu act_cpu. */
export function applyPercent(p: Policy, six: number[]): Policy {
  if (six.length !== 6 || six.some((v) => !Number.isFinite(v))) throw new RangeError(`--percent takes six numbers (WG WC CG CC HG HC), got ${six.join(' ')}`);
  const [wg, wc, cg, cc, hg, hc] = six as [number, number, number, number, number, number];
  return validatePolicy({ ...p, wGpuPercent: wg, wCpuPercent: wc, cacheGpuPercent: cg, cacheCpuPercent: cc, actGpuPercent: hg, actCpuPercent: hc }, '', 'flags');
}
