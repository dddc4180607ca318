// `tierlm plan`: the policy tierlm would choose, with its predicted throughput and memory.
import type { Command } from 'commander';
import { type PlanResult, planPolicy } from '../engine/plan.js';
import { policyToJson } from '../policy/policy.js';
import { formatSize } from '../tensor/tiers/size.js';
import { int } from './parse.js';
import { type LimitFlags, addPlanningOptions, checkPlanningPaths, planFields, profileFor } from './policy-options.js';
import { checkModelSource } from './paths.js';

interface PlanFlags extends LimitFlags {
  model?: string;
  config?: string;
  layers?: number;
  promptLen: number;
  genLen: number;
  json?: boolean;
}

export function addPlanCommand(program: Command): void {
  const cmd = program
    .command('plan')
    .description('choose the placement and batch shape for a workload and print the predicted throughput')
    .option('--model <dir>', 'model directory')
    .option('--config <name>', 'a named shape (see `tierlm init`)')
    .option('--layers <n>', 'with --config: keep only the first n layers', int('--layers', 1))
    .requiredOption('--prompt-len <n>', 'prompt tokens', int('--prompt-len', 1))
    .requiredOption('--gen-len <n>', 'new tokens', int('--gen-len', 1))
    .option('--json', 'print the policy as `--policy FILE` reads it, with the predictions beside it');
  addPlanningOptions(cmd).action(async (o: PlanFlags) => {
    checkModelSource(o);
    checkPlanningPaths(o);
    const plan = await planPolicy({
      model: o.model, config: o.config, layers: o.layers, promptLen: o.promptLen, genLen: o.genLen, profile: await profileFor(o), ...planFields(o),
    });
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
