// The offloading policy: FlexGen's record, as a typed value apart from the executor. Placement
// shares are percents (0–100) of bytes; the disk gets what the device and RAM shares leave.
// In JSON the fields carry their unit in the name (`w_gpu_percent`), so a fraction can never be
// mistaken for a percent.

export type ScheduleKind = 'zigzag' | 'row';

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
};

const JSON_FIELDS: [keyof Policy, string][] = [
  ['gpuBatchSize', 'gpu_batch_size'],
  ['numGpuBatches', 'num_gpu_batches'],
  ['wGpuPercent', 'w_gpu_percent'],
  ['wCpuPercent', 'w_cpu_percent'],
  ['cacheGpuPercent', 'cache_gpu_percent'],
  ['cacheCpuPercent', 'cache_cpu_percent'],
  ['actGpuPercent', 'act_gpu_percent'],
  ['actCpuPercent', 'act_cpu_percent'],
  ['overlap', 'overlap'],
  ['sepLayer', 'sep_layer'],
  ['cpuCacheCompute', 'cpu_cache_compute'],
  ['compressWeight', 'compress_weight'],
  ['compressCache', 'compress_cache'],
  ['attnSparsity', 'attn_sparsity'],
  ['schedule', 'schedule'],
];

export function validatePolicy(p: Policy, where = 'policy'): Policy {
  const bad = (msg: string): never => {
    throw new RangeError(`${where}: ${msg}`);
  };
  for (const f of ['gpuBatchSize', 'numGpuBatches'] as const) {
    if (!Number.isInteger(p[f]) || p[f] < 1) bad(`${f} must be a positive integer, got ${p[f]}`);
  }
  const pct = (f: keyof Policy) => {
    const v = p[f] as number;
    if (typeof v !== 'number' || !(v >= 0 && v <= 100)) bad(`${f} must be a percent in [0, 100], got ${v}`);
  };
  for (const [g, c, what] of [['wGpuPercent', 'wCpuPercent', 'weights'], ['cacheGpuPercent', 'cacheCpuPercent', 'cache'], ['actGpuPercent', 'actCpuPercent', 'activations']] as const) {
    pct(g);
    pct(c);
    if (p[g] + p[c] > 100 + 1e-9) bad(`${what}: device ${p[g]}% + RAM ${p[c]}% exceed 100%`);
  }
  for (const f of ['overlap', 'sepLayer', 'cpuCacheCompute', 'compressWeight', 'compressCache'] as const) if (typeof p[f] !== 'boolean') bad(`${f} must be true or false`);
  if (typeof p.attnSparsity !== 'number' || !(p.attnSparsity > 0 && p.attnSparsity <= 1)) bad(`attnSparsity must be in (0, 1], got ${p.attnSparsity}`);
  if (p.schedule !== 'zigzag' && p.schedule !== 'row') bad(`schedule must be "zigzag" or "row", got ${String(p.schedule)}`);
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
  return Object.fromEntries(JSON_FIELDS.map(([k, j]) => [j, p[k]]));
}

/** Reads a policy from JSON (unknown fields are refused, missing ones take the defaults). */
export function policyFromJson(json: unknown, where = 'policy'): Policy {
  if (typeof json !== 'object' || json === null || Array.isArray(json)) throw new RangeError(`${where}: expected a JSON object`);
  const known = new Map(JSON_FIELDS.map(([k, j]) => [j, k]));
  const p: Record<string, unknown> = { ...DEFAULT_POLICY };
  for (const [key, value] of Object.entries(json as Record<string, unknown>)) {
    const field = known.get(key);
    if (!field) {
      if (key === 'predicted' || key === 'prediction' || key.startsWith('_')) continue; // written beside the policy by `plan --json`
      throw new RangeError(`${where}: unknown field "${key}" (known: ${[...known.keys()].join(', ')})`);
    }
    p[field] = value;
  }
  return validatePolicy(p as unknown as Policy, where);
}

/** The six FlexGen numbers: w_gpu w_cpu cache_gpu cache_cpu act_gpu act_cpu. */
export function applyPercent(p: Policy, six: number[]): Policy {
  if (six.length !== 6 || six.some((v) => !Number.isFinite(v))) throw new RangeError(`--percent takes six numbers (WG WC CG CC HG HC), got ${six.join(' ')}`);
  const [wg, wc, cg, cc, hg, hc] = six as [number, number, number, number, number, number];
  return validatePolicy({ ...p, wGpuPercent: wg, wCpuPercent: wc, cacheGpuPercent: cg, cacheCpuPercent: cc, actGpuPercent: hg, actCpuPercent: hc }, '--percent');
}
