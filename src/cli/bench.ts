// `tierlm bench`: FlexGen's benchmark protocol on a model directory or a named shape with dummy weights.
import type { Command } from 'commander';
import { type BenchResult, benchJson, defaultModelCache, dummyModel, runBench } from '../engine/bench.js';
import { formatSize } from '../tensor/tiers/size.js';
import { int } from './parse.js';
import { type PolicyFlags, addPolicyOptions, checkPlanningPaths, loadOptions } from './policy-options.js';
import { checkModelSource, existingDir } from './paths.js';

interface BenchFlags extends PolicyFlags {
  model?: string;
  config?: string;
  layers?: number;
  promptLen: number;
  genLen: number;
  modelCache?: string;
  json?: boolean;
}

export function addBenchCommand(program: Command): void {
  const cmd = program
    .command('bench')
    .description('measure prefill, decode and total generation throughput under a policy (FlexGen protocol)')
    .option('--model <dir>', 'model directory')
    .option('--config <name>', 'a named shape with dummy weights (see `tierlm init`)')
    .option('--layers <n>', 'with --config: n layers of the shape (fewer than its own cut it, more grow it)', int('--layers', 1))
    .option('--prompt-len <n>', 'prompt tokens', int('--prompt-len', 1), 512)
    .option('--gen-len <n>', 'new tokens', int('--gen-len', 1), 32)
    .option('--model-cache <dir>', 'where dummy-weight models are kept (must exist when given; default ~/.cache/tierlm/models)')
    .option('--json', 'print one JSON line (snake_case; its policy is read back by --policy FILE)');
  addPolicyOptions(cmd).action(async (o: BenchFlags) => {
    checkModelSource(o);
    if (o.modelCache !== undefined) existingDir('--model-cache', o.modelCache);
    checkPlanningPaths(o);
    const model = o.model ?? await dummyModel(o.config!, o.layers, o.modelCache ?? defaultModelCache());
    const opts = await loadOptions(o, { source: { model }, promptLen: o.promptLen, genLen: o.genLen });
    const r = await runBench({ ...opts, model, promptLen: o.promptLen, genLen: o.genLen, modelCache: o.modelCache });
    process.stdout.write(o.json ? JSON.stringify(benchJson(r)) + '\n' : report(r));
  });
}

function report(r: BenchResult): string {
  const f = (x: number) => x.toFixed(2);
  const b = r.bytes;
  return [
    `model ${r.model}: batch ${r.batch} (${r.policy.gpuBatchSize} × ${r.policy.numGpuBatches}), prompt ${r.promptLen}, ${r.genLen} new tokens, ${r.threads} threads`,
    `prefill  ${f(r.prefillTokensPerSecond)} tok/s (${f(r.prefillSeconds)} s)`,
    `decode   ${f(r.decodeTokensPerSecond)} tok/s (${f(r.decodeSeconds)} s)`,
    `total    ${f(r.totalTokensPerSecond)} tok/s`,
    `peak RSS ${formatSize(r.peakRssBytes)}`,
    `weights  ${formatSize(r.placement.weightsRam)} resident, ${formatSize(r.placement.weightsDisk)} on disk`,
    `disk I/O read ${formatSize(b.diskRead)} (weights ${formatSize(b.weightsRead)}, cache ${formatSize(b.cacheRead)}, activations ${formatSize(b.actRead)}), ` +
      `written ${formatSize(b.diskWritten)} (cache ${formatSize(b.cacheWritten)}, activations ${formatSize(b.actWritten)})`,
    `time     compute ${f(r.computeSeconds)} s, disk busy ${f(r.ioSeconds)} s, waiting for I/O ${f(r.ioWaitSeconds)} s` +
      (r.ioHiddenShare === null ? '' : `, ${(100 * r.ioHiddenShare).toFixed(0)}% of I/O hidden under compute`),
    '',
  ].join('\n');
}
