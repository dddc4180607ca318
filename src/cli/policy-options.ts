// Placement and schedule flags shared by `generate` and `bench`: tiers with capacities, FlexGen's
// policy fields, or a policy file.
import fs from 'node:fs';
import { type Command, InvalidArgumentError } from 'commander';
import { DEFAULT_POLICY, type Policy, applyPercent, policyFromJson, validatePolicy } from '../policy/policy.js';
import { parseSize } from '../tensor/tiers/size.js';
import { UserError } from '../util/errors.js';
import type { LoadOptions } from '../engine/model.js';
import { planPolicy, planPolicyInChild } from '../engine/plan.js';
import { ensureProfile } from '../policy/profile.js';

/** What the planner needs to know about the job. */
export interface Workload {
  source: { model?: string; config?: string; layers?: number };
  promptLen: number;
  genLen: number;
  /** Block shapes to consider (default: all, or those the flags fix). */
  shapes?: [number, number][];
}
import { float, int, oneOf } from './parse.js';

export interface PolicyFlags {
  ram?: number;
  deviceMem?: number;
  disk?: number;
  diskDir?: string;
  percent?: string[];
  gpuBatchSize?: number;
  numGpuBatches?: number;
  overlap?: boolean;
  sepLayer?: boolean;
  cpuCacheCompute?: boolean;
  schedule?: 'zigzag' | 'row';
  policy?: string;
  profile?: string;
  compressWeight?: boolean;
  compressCache?: boolean;
  attnSparsity?: number;
}

export const sizeOption = (name: string) => (v: string) => {
  try {
    return parseSize(v, name);
  } catch (e) {
    throw new InvalidArgumentError((e as Error).message);
  }
};

const bool = (name: string) => (v: string) => {
  if (v === 'true') return true;
  if (v === 'false') return false;
  throw new InvalidArgumentError(`${name} takes true or false, got "${v}"`);
};

export function addPolicyOptions(cmd: Command): Command {
  return cmd
    .option('--ram <size>', 'RAM limit, a hard limit on the run (for example 16GiB)', sizeOption('--ram'))
    .option('--device-mem <size>', 'compute-device memory (on a CPU-only machine it is part of RAM)', sizeOption('--device-mem'))
    .option('--disk-dir <dir>', 'directory of the disk tier')
    .option('--disk <size>', 'disk tier capacity', sizeOption('--disk'))
    .option('--percent <n...>', "six percents: weights, cache, activations on device and in RAM (WG WC CG CC HG HC); the disk gets the rest")
    .option('--gpu-batch-size <n>', 'sequences per batch', int('--gpu-batch-size', 1))
    .option('--num-gpu-batches <n>', 'batches sharing each weight load', int('--num-gpu-batches', 1))
    .option('--overlap <bool>', 'overlap I/O with compute (true|false)', bool('--overlap'))
    .option('--sep-layer <bool>', 'load attention and MLP weights separately (true|false)', bool('--sep-layer'))
    .option('--cpu-cache-compute', 'run decode attention where the cache lives (on a CPU-only machine it always does)')
    .option('--compress-weight', 'pack layer weights 4-bit, group-wise (fewer bytes on every tier)')
    .option('--compress-cache', 'store the KV cache 4-bit, grouped along the head dimension')
    .option('--attn-sparsity <f>', 'decode attention reads only the top share f of the cache (0 < f <= 1)', float('--attn-sparsity', 0, 1))
    .option('--schedule <kind>', 'zigzag (FlexGen) or row (Accelerate-style, for comparison)', oneOf('--schedule', ['zigzag', 'row'] as const))
    .option('--policy <file>', "'auto' (the default: planned from the hardware profile and the limits) or a policy JSON file (as `tierlm plan --json` writes it); flags override it")
    .option('--profile <file>', 'hardware profile for --policy auto (default: the saved one, measured quickly if missing)');
}

/** Whether the flags leave the placement to the planner (--policy auto, or no placement given). */
export function wantsAutoPolicy(o: PolicyFlags): boolean {
  return o.policy === 'auto' || (o.policy === undefined && o.percent === undefined);
}

/** The policy the flags describe: defaults (or a planned policy), then --policy FILE, then individual flags. */
export function policyFromFlags(o: PolicyFlags, batchSizeFlag?: number, planned?: Policy): Policy {
  let p: Policy = { ...(planned ?? DEFAULT_POLICY) };
  if (o.policy && o.policy !== 'auto') {
    let json: unknown;
    try {
      json = JSON.parse(fs.readFileSync(o.policy, 'utf8'));
    } catch (e) {
      throw new UserError(`${o.policy}: cannot read the policy (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
    }
    const policyJson = (json as { policy?: unknown }).policy ?? json;
    p = policyFromJson(policyJson, o.policy);
  }
  if (o.percent) p = applyPercent(p, o.percent.map(Number));
  if (batchSizeFlag !== undefined) p.gpuBatchSize = batchSizeFlag;
  if (o.gpuBatchSize !== undefined) p.gpuBatchSize = o.gpuBatchSize;
  if (o.numGpuBatches !== undefined) p.numGpuBatches = o.numGpuBatches;
  if (o.overlap !== undefined) p.overlap = o.overlap;
  if (o.sepLayer !== undefined) p.sepLayer = o.sepLayer;
  if (o.cpuCacheCompute) p.cpuCacheCompute = true;
  if (o.compressWeight) p.compressWeight = true;
  if (o.compressCache) p.compressCache = true;
  if (o.attnSparsity !== undefined) p.attnSparsity = o.attnSparsity;
  if (o.schedule) p.schedule = o.schedule;
  return validatePolicy(p);
}

/** Everything `loadModel` needs from the shared flags. With --policy auto the placement and the
 *  block shape are planned for the workload (a shape given by flags is kept). */
export async function loadOptions(o: PolicyFlags & { precision?: 'fp32' | 'bf16'; threads?: number; cacheDtype?: 'f32' | 'f16' }, work: Workload,
  batchSizeFlag?: number): Promise<LoadOptions> {
  let planned: Policy | undefined;
  if (wantsAutoPolicy(o)) {
    const profile = await ensureProfile({ file: o.profile, diskDir: o.diskDir, log: (m) => process.stderr.write(`tierlm: ${m}\n`) });
    const gbs = o.gpuBatchSize ?? batchSizeFlag;
    const shapes = work.shapes ?? (gbs !== undefined || o.numGpuBatches !== undefined
      ? (gbs !== undefined ? [gbs] : [1, 2, 4, 8, 16, 32, 64]).flatMap((b) => (o.numGpuBatches !== undefined ? [o.numGpuBatches] : [1, 2, 4, 8, 16]).map((n) => [b, n] as [number, number]))
      : undefined);
    // Under a RAM limit the solver runs in a child process, so that none of its memory stays here.
    const plan = await (o.ram !== undefined ? planPolicyInChild : planPolicy)({
      ...work.source, promptLen: work.promptLen, genLen: work.genLen, precision: o.precision, cacheDtype: o.compressCache ? 'q4' : o.cacheDtype,
      compressWeight: o.compressWeight === true, attnSparsity: o.attnSparsity,
      limits: { ram: o.ram, device: o.deviceMem, disk: o.disk }, disk: o.diskDir !== undefined, profile, shapes,
    });
    planned = { ...plan.policy, compressCache: o.compressCache === true, attnSparsity: o.attnSparsity ?? 1 };
  }
  return {
    precision: o.precision,
    threads: o.threads,
    policy: policyFromFlags(o, batchSizeFlag, planned),
    diskDir: o.diskDir,
    diskBytes: o.disk,
    ramBytes: o.ram,
    deviceBytes: o.deviceMem,
  };
}
