// `tierlm plan`: the policy tierlm would choose, with its predicted throughput and memory.
import type { Command } from 'commander';
import { type PlanResult, planPolicy } from '../engine/plan.js';
import { ensureProfile } from '../policy/profile.js';
import { blockShapes } from '../policy/search.js';
import { policyToJson } from '../policy/policy.js';
import { formatSize } from '../tensor/tiers/size.js';
import { UserError } from '../util/errors.js';
import { int, oneOf } from './parse.js';
import { sizeOption } from './policy-options.js';

interface PlanFlags {
  model?: string;
  config?: string;
  layers?: number;
  promptLen: number;
  genLen: number;
  ram?: number;
  deviceMem?: number;
  disk?: number;
  diskDir?: string;
  precision: 'fp32' | 'bf16';
  cacheDtype: 'f32' | 'f16';
  profile?: string;
  json?: boolean;
  compressWeight?: boolean;
  compressCache?: boolean;
  gpuBatchSize?: number;
  numGpuBatches?: number;
}

export function addPlanCommand(program: Command): void {
  program
    .command('plan')
    .description('choose the placement and batch shape for a workload and print the predicted throughput')
    .option('--model <dir>', 'model directory')
    .option('--config <name>', 'a named shape (see `tierlm init`)')
    .option('--layers <n>', 'with --config: keep only the first n layers', int('--layers', 1))
    .requiredOption('--prompt-len <n>', 'prompt tokens', int('--prompt-len', 1))
    .requiredOption('--gen-len <n>', 'new tokens', int('--gen-len', 1))
    .option('--ram <size>', 'RAM limit', sizeOption('--ram'))
    .option('--device-mem <size>', 'device memory (part of RAM on a CPU-only machine)', sizeOption('--device-mem'))
    .option('--disk <size>', 'disk tier capacity', sizeOption('--disk'))
    .option('--disk-dir <dir>', 'directory of the disk tier (without one, nothing is planned on disk)')
    .option('--precision <p>', 'fp32 or bf16', oneOf('--precision', ['fp32', 'bf16'] as const), 'fp32')
    .option('--cache-dtype <d>', 'KV cache element type', oneOf('--cache-dtype', ['f32', 'f16'] as const), 'f16')
    .option('--compress-weight', 'plan with 4-bit layer weights')
    .option('--compress-cache', 'plan with a 4-bit KV cache')
    .option('--gpu-batch-size <n>', 'fix the sequences per batch (the search still places the data)', int('--gpu-batch-size', 1))
    .option('--num-gpu-batches <n>', 'fix the batches per block', int('--num-gpu-batches', 1))
    .option('--profile <file>', 'hardware profile (default: the saved one, measured quickly if missing)')
    .option('--json', 'print the policy as `--policy FILE` reads it, with the predictions beside it')
    .action(async (o: PlanFlags) => {
      if ((o.model === undefined) === (o.config === undefined)) throw new UserError('give either --model DIR or --config NAME');
      const profile = await ensureProfile({ file: o.profile, diskDir: o.diskDir, log: (m) => process.stderr.write(m + '\n') });
      const plan = await planPolicy({
        model: o.model, config: o.config, layers: o.layers, promptLen: o.promptLen, genLen: o.genLen, precision: o.precision,
        cacheDtype: o.compressCache ? 'q4' : o.cacheDtype, compressWeight: o.compressWeight === true, limits: { ram: o.ram, device: o.deviceMem, disk: o.disk }, disk: o.diskDir !== undefined || o.disk !== undefined, profile,
        shapes: o.gpuBatchSize === undefined && o.numGpuBatches === undefined ? undefined : blockShapes(o.gpuBatchSize, o.numGpuBatches),
      });
      if (o.compressCache) plan.policy.compressCache = true;
      process.stdout.write(o.json ? JSON.stringify(planJson(plan)) + '\n' : report(plan));
    });
}

export function planJson(p: PlanResult): Record<string, unknown> {
  return {
    policy: policyToJson(p.policy),
    predicted: {
      prefill_tokens_per_second: p.prediction.prefillTokensPerSecond,
      decode_tokens_per_second: p.prediction.decodeTokensPerSecond,
      total_tokens_per_second: p.prediction.totalTokensPerSecond,
      prefill_seconds: p.prediction.prefillSeconds,
      decode_seconds: p.prediction.decodeSeconds,
      bound: p.prediction.bound,
      peak_bytes: { ram: p.memory.ram, device: p.memory.device, disk: p.memory.disk },
      search_ms: p.searchMillis,
    },
  };
}

function report(p: PlanResult): string {
  const pol = p.policy;
  const f = (x: number) => x.toFixed(2);
  const lines = [
    `policy   gpu batch ${pol.gpuBatchSize} × ${pol.numGpuBatches} batches (block of ${pol.gpuBatchSize * pol.numGpuBatches})`,
    `         --percent ${pol.wGpuPercent} ${pol.wCpuPercent} ${pol.cacheGpuPercent} ${pol.cacheCpuPercent} ${pol.actGpuPercent} ${pol.actCpuPercent}` +
      `  (weights ${f(100 - pol.wGpuPercent - pol.wCpuPercent)}% on disk, cache ${f(100 - pol.cacheGpuPercent - pol.cacheCpuPercent)}%, activations ${f(100 - pol.actGpuPercent - pol.actCpuPercent)}%)`,
    `predicted prefill ${f(p.prediction.prefillTokensPerSecond)} tok/s (${p.prediction.bound.prefill}-bound), ` +
      `decode ${f(p.prediction.decodeTokensPerSecond)} tok/s (${p.prediction.bound.decode}-bound), total ${f(p.prediction.totalTokensPerSecond)} tok/s`,
    `memory   RAM ${formatSize(p.memory.ram)}${p.assumedRam ? ` (no --ram given: planned for ${formatSize(p.assumedRam)})` : ''}, disk ${formatSize(p.memory.disk)}`,
  ];
  for (const i of p.memory.items.filter((x) => x.ram > 0 || x.disk > 0)) {
    lines.push(`         ${i.what.padEnd(32)} RAM ${formatSize(i.ram).padStart(10)}  disk ${formatSize(i.disk).padStart(10)}`);
  }
  lines.push(`searched in ${p.searchMillis.toFixed(0)} ms`, '');
  return lines.join('\n');
}
