// `tierlm plan`: the policy tierlm would choose, with its predicted throughput and memory.
import type { Command } from 'commander';
import { type PlanResult, planPolicy } from '../engine/plan.js';
import { policyToJson } from '../policy/policy.js';
import { formatSize } from '../tensor/tiers/size.js';
import { int } from './parse.js';
import { type LimitFlags, addPlanningOptions, checkPlanningPaths, planFields, profileFor, sizeOption } from './policy-options.js';
import { checkModelSource } from './paths.js';
import { trainPlan, trainPlanJson, trainPlanReport } from './plan-train.js';
import { UserError } from '../util/errors.js';

interface PlanFlags extends LimitFlags {
  model?: string;
  config?: string;
  layers?: number;
  promptLen?: number;
  genLen?: number;
  json?: boolean;
  train?: boolean;
  seqLen?: number;
  tileSize?: number;
  subGroupSize?: number;
  batchSize?: number;
  ranks?: number;
}

export function addPlanCommand(program: Command): void {
  const cmd = program
    .command('plan')
    .description('choose the placement and batch shape for a workload and print the predicted throughput')
    .option('--model <dir>', 'model directory')
    .option('--config <name>', 'a named shape (see `tierlm init`)')
    .option('--layers <n>', 'with --config: n layers of the shape (fewer than its own cut it, more grow it)', int('--layers', 1))
    .option('--prompt-len <n>', 'prompt tokens (generation; required without --train)', int('--prompt-len', 1))
    .option('--gen-len <n>', 'new tokens (generation; required without --train)', int('--gen-len', 1))
    .option('--train', 'plan a training run under --ram instead: micro-batch, gradient accumulation, placement, sub-groups, prefetch depth')
    .option('--seq-len <n>', 'with --train: tokens per sequence (default 512, or the model\'s positions if fewer)', int('--seq-len', 2))
    .option('--batch-size <n>', 'with --train: sequences per optimizer step (default 4)', int('--batch-size', 1))
    .option('--ranks <n>', 'with --train: plan one rank of mpirun -np N (its share of the states; --ram and --batch-size per rank)', int('--ranks', 1))
    .option('--tile-size <size>', 'with --train: weight tile, with a unit, as `tierlm train --tile-size` (default: planned from --ram)', sizeOption('--tile-size'))
    .option('--sub-group-size <n>', 'with --train: parameters per optimizer sub-group, as `tierlm train --sub-group-size` (default: planned from --ram)', int('--sub-group-size', 1))
    .option('--json', 'print the policy as `--policy FILE` reads it, with the predictions beside it');
  addPlanningOptions(cmd).action(async (o: PlanFlags) => {
    checkModelSource(o);
    checkPlanningPaths(o, true);
    if (o.train) {
      const r = trainPlan(o, await profileFor(o));
      process.stdout.write(o.json ? JSON.stringify(trainPlanJson(r)) + '\n' : trainPlanReport(r));
      return;
    }
    if (o.seqLen !== undefined || o.batchSize !== undefined || o.ranks !== undefined || o.tileSize !== undefined || o.subGroupSize !== undefined) {
      throw new UserError('--seq-len, --batch-size, --ranks, --tile-size and --sub-group-size plan training: add --train');
    }
    if (o.promptLen === undefined || o.genLen === undefined) throw new UserError('plan needs --prompt-len and --gen-len (or --train)');
    const promptLen = o.promptLen, genLen = o.genLen;
    const plan = await planPolicy({
      model: o.model, config: o.config, layers: o.layers, promptLen, genLen, profile: await profileFor(o), ...planFields(o),
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
