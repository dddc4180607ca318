// Flags shared by the commands that plan or run a model (generate, bench, plan): limits and the
// disk tier, the block shape, what changes memory or speed (precision, cache dtype, compression),
// FlexGen's policy fields, or a policy file. Each flag is defined once here, with one default.
import fs from 'node:fs';
import os from 'node:os';
import { type Command, InvalidArgumentError } from 'commander';
import { DEFAULT_POLICY, type Policy, type PolicyCacheDType, applyPercent, policyFromJson, validatePolicy } from '../policy/policy.js';
import { parseSize } from '../tensor/tiers/size.js';
import { UserError } from '../util/errors.js';
import type { LoadOptions } from '../engine/model.js';
import { planPolicy, planPolicyInChild } from '../engine/plan.js';
import { ensureProfile, type HardwareProfile } from '../policy/profile.js';
import { blockShapes } from '../policy/search.js';
import { oneOf, rule } from './parse.js';
import { diskDir, inputFile } from './paths.js';
import { readConfig } from '../models/registry.js';

/** What the planner needs to know about the job. */
export interface Workload {
  source: { model?: string; config?: string; layers?: number };
  promptLen: number;
  genLen: number;
  /** Prompt tokens per batch and step (a server's chunked prefill); absent: prompts at once. */
  prefillChunk?: number;
  /** RAM the command holds beside the model (a job's request ids: jobIdBytes). */
  heldBytes?: number;
}

export interface LimitFlags {
  ram?: number;
  deviceMem?: number;
  disk?: number;
  diskDir?: string;
  gpuBatchSize?: number;
  numGpuBatches?: number;
  precision?: 'fp32' | 'bf16';
  cacheDtype?: PolicyCacheDType;
  compressWeight?: boolean;
  compressCache?: boolean;
  attnSparsity?: number;
  profile?: string;
}

export interface PolicyFlags extends LimitFlags {
  percent?: string[];
  overlap?: boolean;
  sepLayer?: boolean;
  cpuCacheCompute?: boolean;
  schedule?: 'zigzag' | 'row';
  policy?: string;
  threads?: number;
}

/** A size flag's value, at least one byte: 0B (or 0.5B) is no limit a run can keep, and it failed
 *  later as the API's option, or as an internal error in the planner's process. */
export const sizeOption = (name: string) => (v: string) => {
  let bytes: number;
  try {
    bytes = parseSize(v, name);
  } catch (e) {
    throw new InvalidArgumentError((e as Error).message);
  }
  if (bytes < 1) throw new InvalidArgumentError(`${name}: "${v}" is less than one byte (leave ${name} out for no limit)`);
  return bytes;
};

const bool = (name: string) => (v: string) => {
  if (v === 'true') return true;
  if (v === 'false') return false;
  throw new InvalidArgumentError(`${name} takes true or false, got "${v}"`);
};

/** Limits, disk tier, block shape, what changes memory or speed, and the hardware profile: what
 *  `plan` takes, and `generate` and `bench` with it. */
export function addPlanningOptions(cmd: Command): Command {
  return cmd
    .option('--ram <size>', 'RAM limit, a hard limit on the run; a size needs a unit (16GiB, 512MiB)', sizeOption('--ram'))
    .option('--device-mem <size>', 'compute-device memory, with a unit (on a CPU-only machine it is part of RAM)', sizeOption('--device-mem'))
    .option('--disk-dir <dir>', 'directory of the disk tier (must exist and be writable)')
    .option('--disk <size>', 'disk tier capacity, with a unit', sizeOption('--disk'))
    .option('--gpu-batch-size <n>', 'sequences per batch (fixes the block shape; the planner places the data)', rule('gpuBatchSize'))
    .option('--num-gpu-batches <n>', 'batches sharing each weight load', rule('numGpuBatches'))
    .option('--precision <p>', 'fp32 (default: exact, reproduces float64 references) or bf16 (faster, small drift)', oneOf('--precision', ['fp32', 'bf16'] as const))
    .option('--cache-dtype <d>', 'KV cache element type: auto (default: f16 with --precision bf16, else f32), f32 or f16', oneOf('--cache-dtype', ['auto', 'f32', 'f16'] as const))
    .option('--compress-weight', 'pack layer weights, LM head and embedding 4-bit, group-wise (fewer bytes on every tier)')
    .option('--compress-cache', 'store the KV cache 4-bit, grouped along the head dimension')
    .option('--attn-sparsity <f>', 'decode attention reads only the top share f of the cache (0 < f <= 1)', rule('attnSparsity'))
    .option('--profile <file>', 'hardware profile written by `tierlm profile --out FILE` (must exist; default: the saved one, measured quickly if missing)');
}

export function addPolicyOptions(cmd: Command): Command {
  return addPlanningOptions(cmd)
    .option('--percent <n...>', 'six percents: weights, cache, activations on device and in RAM (WG WC CG CC HG HC); the disk gets the rest')
    .option('--overlap <bool>', 'overlap I/O with compute (true|false)', bool('--overlap'))
    .option('--sep-layer <bool>', 'load attention and MLP weights separately (true|false)', bool('--sep-layer'))
    .option('--cpu-cache-compute', 'run decode attention where the cache lives (on a CPU-only machine it always does)')
    .option('--schedule <kind>', 'zigzag (FlexGen) or row (Accelerate-style, for comparison)', oneOf('--schedule', ['zigzag', 'row'] as const))
    .option('--policy <file>', "'auto' (the default: planned from the hardware profile and the limits) or a policy JSON file (as `tierlm plan --json` or `tierlm bench --json` writes it); flags override it")
    .option('--threads <n>', 'compute threads (default: every core)', rule('threads'));
}

/** Path flags checked before any work (a model loads or a profile is measured). */
export function checkPlanningPaths(o: PolicyFlags): void {
  if (o.diskDir !== undefined) diskDir(o.diskDir);
  if (o.profile !== undefined) inputFile('--profile', o.profile, ' (measure one with `tierlm profile --out FILE`, or leave --profile out to use the saved one)');
  if (o.policy !== undefined && o.policy !== 'auto') inputFile('--policy', o.policy);
  if (o.threads !== undefined && o.threads > os.availableParallelism()) {
    process.stderr.write(`tierlm: warning: --threads ${o.threads} is more than this machine's ${os.availableParallelism()} cores; compute slows down when threads outnumber cores\n`);
  }
}

/** The saved hardware profile (or the --profile file), measured once when there is none saved. */
export function profileFor(o: LimitFlags): Promise<HardwareProfile> {
  return ensureProfile({ file: o.profile, diskDir: o.diskDir, log: (m) => process.stderr.write(`tierlm: ${m}\n`) });
}

/** The planner's request fields the flags give. */
export function planFields(o: LimitFlags) {
  return {
    precision: o.precision, cacheDtype: o.compressCache ? 'q4' as const : o.cacheDtype === 'auto' ? undefined : o.cacheDtype,
    compressWeight: o.compressWeight === true, attnSparsity: o.attnSparsity,
    limits: { ram: o.ram, device: o.deviceMem, disk: o.disk }, disk: o.diskDir !== undefined,
    shapes: o.gpuBatchSize === undefined && o.numGpuBatches === undefined ? undefined : blockShapes(o.gpuBatchSize, o.numGpuBatches),
  };
}

/** Whether the flags leave the placement to the planner (--policy auto, or no placement given). */
export function wantsAutoPolicy(o: PolicyFlags): boolean {
  return o.policy === 'auto' || (o.policy === undefined && o.percent === undefined);
}

function readPolicyFile(file: string): Policy {
  let json: unknown;
  try {
    json = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    throw new UserError(`--policy ${file}: cannot read the policy (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  // `plan --json` and `bench --json` write the policy beside other fields; a bare policy works too.
  return policyFromJson((json as { policy?: unknown }).policy ?? json, file);
}

/** The policy the flags describe: defaults (or a planned policy), then --policy FILE, then individual flags. */
export function policyFromFlags(o: PolicyFlags, planned?: Policy): Policy {
  let p: Policy = o.policy && o.policy !== 'auto' ? readPolicyFile(o.policy) : { ...(planned ?? DEFAULT_POLICY) };
  if (o.percent) p = applyPercent(p, o.percent.map(Number));
  if (o.gpuBatchSize !== undefined) p.gpuBatchSize = o.gpuBatchSize;
  if (o.numGpuBatches !== undefined) p.numGpuBatches = o.numGpuBatches;
  if (o.overlap !== undefined) p.overlap = o.overlap;
  if (o.sepLayer !== undefined) p.sepLayer = o.sepLayer;
  if (o.cpuCacheCompute) p.cpuCacheCompute = true;
  if (o.compressWeight) p.compressWeight = true;
  if (o.compressCache) p.compressCache = true;
  if (o.cacheDtype !== undefined) p.cacheDtype = o.cacheDtype;
  if (o.precision !== undefined) p.precision = o.precision;
  if (o.attnSparsity !== undefined) p.attnSparsity = o.attnSparsity;
  if (o.schedule) p.schedule = o.schedule;
  return validatePolicy(p, '', 'flags');
}

/** Everything `loadModel` needs from the shared flags. With --policy auto the placement and the
 *  block shape are planned for the workload (a shape given by flags is kept). */
export async function loadOptions(o: PolicyFlags, work: Workload): Promise<LoadOptions> {
  let planned: Policy | undefined;
  if (wantsAutoPolicy(o)) {
    // Under a RAM limit the solver runs in a child process, so that none of its memory stays here.
    const plan = await (o.ram !== undefined ? planPolicyInChild : planPolicy)({
      ...work.source, promptLen: work.promptLen, genLen: work.genLen, prefillChunk: work.prefillChunk, heldBytes: work.heldBytes, profile: await profileFor(o), ...planFields(o),
    });
    planned = plan.policy;
  }
  const policy = policyFromFlags(o, planned);
  return {
    threads: o.threads,
    policy,
    diskDir: o.diskDir,
    diskBytes: o.disk,
    ramBytes: o.ram,
    deviceBytes: o.deviceMem,
    heldBytes: work.heldBytes,
  };
}

/** Keeps the planned prompt and generation lengths within the model's positions. */
export function fitWorkload(dir: string, work: Workload): Workload {
  const { config } = readConfig(dir);
  const max = config.maxPositions;
  const genLen = Math.min(work.genLen, max - 1);
  return { ...work, genLen, promptLen: Math.min(work.promptLen, max - genLen) };
}
