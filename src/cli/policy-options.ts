// Flags shared by the commands that plan or run a model (generate, bench, plan): limits and the
// disk tier, the block shape, what changes memory or speed (precision, cache dtype, compression),
// FlexGen's policy fields, or a policy file. Each flag is defined once here, with one default.
import fs from 'node:fs';
import os from 'node:os';
import { type Command, InvalidArgumentError } from 'commander';
import { DEFAULT_POLICY, type Policy, type PolicyCacheDType, applyPercent, policyFromJson, validatePolicy } from '../policy/policy.js';
import { formatSize, parseSize } from '../tensor/tiers/size.js';
import { UserError } from '../util/errors.js';
import type { LoadOptions } from '../engine/model.js';
import { planPolicy, planPolicyInChild } from '../engine/plan.js';
import { ensureProfile, type HardwareProfile } from '../policy/profile.js';
import { blockShapes } from '../policy/search.js';
import { decimal, oneOf, rule } from './parse.js';
import { diskDir, inputFile } from './paths.js';
import { readConfig } from '../models/registry.js';
import { weightsFolder } from '../schedule/disk-tier.js';
import { reusablePackedBytes } from '../schedule/weight-store.js';
import { removeStale } from '../schedule/spill-files.js';
import { removeDeadConversions } from '../schedule/weights-dir.js';

/** What the planner needs to know about the job. */
export interface Workload {
  source: { model?: string; config?: string; layers?: number };
  promptLen: number;
  genLen: number;
  /** Prompt tokens per batch and step (a server's chunked prefill); absent: prompts at once. */
  prefillChunk?: number;
  /** RAM the command holds beside the model (a job's request ids: jobIdBytes), and what it is. */
  heldBytes?: number;
  heldWhat?: string;
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

/** What leaving out a size flag defined outside this file means, for its error (each flag may say its own). */
const OMITTED: Record<string, string> = {
  '--body-limit': 'for the default, 4 MiB',
  '--tile-size': 'to plan it from --ram',
};

/** What leaving out --disk gives (checkPlanningPaths; train's flags too). */
export const DISK_OMITTED = 'to take the free space in --disk-dir';

/** A size flag's value, at least one byte: 0B (or 0.5B) is no limit a run can keep, and it failed
 *  later as the API's option, or as an internal error in the planner's process. `omitted` says
 *  what leaving the flag out gives ("for no limit" unless the flag has another default). */
export const sizeOption = (name: string, omitted = OMITTED[name] ?? 'for no limit') => (v: string) => {
  let bytes: number;
  try {
    bytes = parseSize(v, name);
  } catch (e) {
    throw new InvalidArgumentError((e as Error).message);
  }
  if (bytes < 1) throw new InvalidArgumentError(`${name}: "${v}" is less than one byte (leave ${name} out ${omitted})`);
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
    .option('--disk <size>', 'disk tier capacity, with a unit (default: the free space in --disk-dir)', sizeOption('--disk', DISK_OMITTED))
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

/** Path flags checked before any work (a model loads or a profile is measured). With --disk-dir
 *  and no --disk, the disk limit becomes the directory's free space (diskLimitFromFreeSpace): a
 *  plan without it put more on disk than the file system held, and the run died of ENOSPC midway.
 *  `tierlm plan` says so on stderr (`sayDiskLimit`); a run's own output stays as it was. `model`
 *  and `train` are the command's own flags where it has them. */
export function checkPlanningPaths(o: PolicyFlags & { model?: string; train?: boolean; ranks?: number }, sayDiskLimit = false): void {
  if (o.diskDir !== undefined) diskDir(o.diskDir, o.ram);
  if (o.profile !== undefined) inputFile('--profile', o.profile, ' (measure one with `tierlm profile --out FILE`, or leave --profile out to use the saved one)');
  if (o.policy !== undefined && o.policy !== 'auto') inputFile('--policy', o.policy);
  if (o.threads !== undefined && o.threads > os.availableParallelism()) {
    process.stderr.write(`tierlm: warning: --threads ${o.threads} is more than this machine's ${os.availableParallelism()} cores; compute slows down when threads outnumber cores\n`);
  }
  if (o.diskDir !== undefined && o.disk === undefined) {
    // What killed runs left there is removed first: their spill files hold their whole blocks'
    // reservations, and the free space measured beside them refused every rerun.
    removeStale(o.diskDir);
    removeDeadConversions(o.diskDir);
    // (a training plan's states are new files; only generation reuses packed weights)
    const reused = o.model !== undefined && !o.train ? reusedWeights(o.diskDir, o.model, weightsMode(o)) : null;
    // (`plan --train --ranks N` plans one of N ranks on this machine, as `train` under mpirun does)
    const limit = diskLimitFromFreeSpace(o.diskDir, freeBytes(o.diskDir), reused, o.train ? (o.ranks ?? 1) : 1);
    if (sayDiskLimit) process.stderr.write(`tierlm: ${limit.note}\n`);
    else diskLimitNote = limit.note;
    o.disk = limit.bytes;
  }
}

/** Where the disk limit of this process's run came from when no --disk was given (a run does not
 *  say it up front, as `tierlm plan` does): a refusal of it says so (withDiskLimitNote). */
let diskLimitNote: string | null = null;

/** A refusal naming the disk limit, told where that limit came from when the user gave none (it
 *  read "disk limit 2.0 MiB is too small", or "disk limit 1 B" on a full disk, of a --disk never
 *  given). */
export function withDiskLimitNote(message: string): string {
  return diskLimitNote !== null && /^disk limit .* is too small/.test(message) ? `${message} (${diskLimitNote})` : message;
}

/** Bytes of `dir`'s file system that an unprivileged writer may still use (statfs: bavail × bsize). */
export function freeBytes(dir: string): number {
  const s = fs.statfsSync(dir);
  return Math.min(Number.MAX_SAFE_INTEGER, s.bavail * s.bsize);
}

/** Packed weights already in a disk directory that a run reuses instead of converting again. */
export interface ReusedWeights {
  dir: string;
  bytes: number;
}

/** The disk limit of a run given --disk-dir `dir` but no --disk: its `free` bytes, plus the packed
 *  weights there the run reuses (their bytes are counted as the run's, but are written already),
 *  shared by `ranks` runs of one job on this machine (mpirun: each writes under the same `dir`).
 *  At least one byte: the planner takes no limit of 0, and a run can keep none. */
export function diskLimitFromFreeSpace(dir: string, free: number, reused: ReusedWeights | null, ranks = 1): { bytes: number; note: string } {
  const share = Math.floor(free / ranks);
  const bytes = Math.max(1, Math.min(Number.MAX_SAFE_INTEGER, share + (reused?.bytes ?? 0)));
  const of = ranks > 1 ? `, ${formatSize(share)} for each of ${ranks} ranks on this machine` : '';
  const plus = reused ? `, plus the ${formatSize(reused.bytes)} of packed weights in ${reused.dir} that this run reuses` : '';
  return { bytes, note: `no --disk given: the disk limit is the free space in ${dir}, ${formatSize(free)}${of}${plus} (--disk SIZE sets another)` };
}

/** The packed-weights folder's mode for the policy the flags describe (as src/engine/model.ts names it). */
function weightsMode(o: PolicyFlags): string {
  try {
    const p = policyFromFlags(o);
    return p.precision + (p.compressWeight ? '-q4' : '');
  } catch {
    return ''; // a bad policy is refused when it is read; nothing is reused
  }
}

/**
 * The packed weights of `model` in `mode` in the disk directory that a run reuses
 * (reusablePackedBytes), else null (the run converts, and needs the space). The folder is the one
 * DiskTier.weightsDir uses (weightsFolder).
 */
export function reusedWeights(dir: string, model: string, mode: string): ReusedWeights | null {
  try {
    const folder = weightsFolder(dir, model, mode);
    const bytes = reusablePackedBytes(folder);
    return bytes === null ? null : { dir: folder, bytes };
  } catch {
    return null; // a model directory that cannot be resolved: refused when it is read
  }
}

/** The saved hardware profile (or the --profile file), measured once when there is none saved. */
export function profileFor(o: LimitFlags): Promise<HardwareProfile> {
  return ensureProfile({ file: o.profile, diskDir: o.diskDir, log: (m) => process.stderr.write(`tierlm: ${m}\n`) });
}

/** The planner's request fields the flags give. */
export function planFields(o: LimitFlags) {
  // (as validatePolicy refuses it for a run: a 4-bit cache has no other dtype)
  if (o.compressCache && o.cacheDtype !== undefined && o.cacheDtype !== 'auto') {
    throw new UserError(`--cache-dtype ${o.cacheDtype} contradicts --compress-cache (a 4-bit cache): give one of them`);
  }
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
  if (o.percent) {
    // Checked here, where the typed items are: past this point "0x64" or "" is only NaN.
    const bad = o.percent.find((x) => !Number.isFinite(decimal(x)));
    if (bad !== undefined) throw new UserError(`--percent takes six numbers (WG WC CG CC HG HC), got "${bad}" in ${o.percent.map((x) => JSON.stringify(x)).join(' ')}`);
    p = applyPercent(p, o.percent.map(decimal));
  }
  if (o.gpuBatchSize !== undefined) p.gpuBatchSize = o.gpuBatchSize;
  if (o.numGpuBatches !== undefined) p.numGpuBatches = o.numGpuBatches;
  if (o.overlap !== undefined) p.overlap = o.overlap;
  if (o.sepLayer !== undefined) p.sepLayer = o.sepLayer;
  if (o.cpuCacheCompute) p.cpuCacheCompute = true;
  if (o.compressWeight) p.compressWeight = true;
  // --compress-cache replaces a policy file's cache dtype (`plan --json` writes one), and
  // --cache-dtype alone its compress_cache, which the user did not type (it was refused naming
  // --compress-cache); both typed are theirs, and validatePolicy refuses the pair.
  if (o.compressCache) [p.compressCache, p.cacheDtype] = [true, 'auto'];
  else if (o.cacheDtype !== undefined) p.compressCache = false;
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
      ...work.source, promptLen: work.promptLen, genLen: work.genLen, prefillChunk: work.prefillChunk, heldBytes: work.heldBytes, heldWhat: work.heldWhat, profile: await profileFor(o), ...planFields(o),
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
    heldWhat: work.heldWhat,
  };
}

/** Keeps the planned prompt and generation lengths within the model's positions. */
export function fitWorkload(dir: string, work: Workload): Workload {
  const { config } = readConfig(dir);
  const max = config.maxPositions;
  const genLen = Math.min(work.genLen, max - 1);
  return { ...work, genLen, promptLen: Math.min(work.promptLen, max - genLen) };
}
