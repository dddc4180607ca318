// The whole job on a fresh machine, with nothing to download: a dummy-weight model several times
// larger than the RAM limit the demo sets, a quick hardware profile if none is saved, a plan,
// and a batch generated under the limit, reported with where the time went.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { initModel } from '../models/init.js';
import { presetNames } from '../models/presets.js';
import { RUNTIME_OVERHEAD_BYTES } from '../policy/memory.js';
import { ensureProfile } from '../policy/profile.js';
import { formatSize } from '../tensor/tiers/size.js';
import { UserError } from '../util/errors.js';
import { nameStyle } from '../util/names.js';
import { statOrNull } from '../util/stat.js';
import { type BenchResult, runBench } from './bench.js';
import { type PlanResult, planPolicyInChild } from './plan.js';

export interface DemoOptions {
  /** Where the demo keeps its model, disk tier and profile (default ~/.cache/tierlm/demo). */
  dir?: string;
  ramBytes?: number;
  promptLen?: number;
  genLen?: number;
  /** Model shape (default opt-demo-1b, about 1.2 GB); tests use a smaller one. */
  config?: string;
  log: (line: string) => void;
}

export interface DemoResult {
  modelBytes: number;
  ramBytes: number;
  plan: PlanResult;
  run: BenchResult;
}

export const DEMO_CONFIG = 'opt-demo-1b';

export async function runDemo(o: DemoOptions): Promise<DemoResult> {
  const root = o.dir ?? path.join(os.homedir(), '.cache', 'tierlm', 'demo');
  const config = o.config ?? DEMO_CONFIG;
  checkDemoOptions(o.dir, config);
  const model = path.join(root, config);
  const disk = path.join(root, 'disk');
  fs.mkdirSync(disk, { recursive: true });
  const ram = o.ramBytes ?? 320 * 2 ** 20;
  const promptLen = o.promptLen ?? 32;
  const genLen = o.genLen ?? 16;
  if (!fs.existsSync(path.join(model, 'generation_config.json'))) {
    o.log(`making a ${config} model with random weights in ${model} ...`);
    initModel({ config, out: model, dtype: 'f16', seed: 7 });
  }
  const modelBytes = fs.statSync(path.join(model, 'model.safetensors')).size;
  o.log(`model ${formatSize(modelBytes)} of weights, RAM limit ${formatSize(ram)} (${(modelBytes / ram).toFixed(1)}× smaller)`);
  const profile = await ensureProfile({ diskDir: disk, log: o.log });
  const plan = await planPolicyInChild({ model, promptLen, genLen, limits: { ram }, disk: true, profile });
  const p = plan.policy;
  o.log(`plan: ${p.gpuBatchSize} sequences × ${p.numGpuBatches} batches; weights ${p.wCpuPercent}% in RAM, cache ${p.cacheCpuPercent}%, ` +
    `activations ${p.actCpuPercent}% (the rest on disk); predicted ${plan.prediction.totalTokensPerSecond.toFixed(2)} tok/s ` +
    `(prefill ${plan.prediction.bound.prefill}-bound, decode ${plan.prediction.bound.decode}-bound), planned in ${plan.searchMillis.toFixed(0)} ms ` +
    '(in a separate process: the solver\'s memory is not part of this run)');
  o.log(`generating ${p.gpuBatchSize * p.numGpuBatches} sequences: ${promptLen}-token prompts, ${genLen} new tokens each ...`);
  const run = await runBench({ model, promptLen, genLen, policy: p, diskDir: disk, ramBytes: ram });
  return { modelBytes, ramBytes: ram, plan, run };
}

/** The shape and a given directory, checked before anything is printed or made: a --config of
 *  no shape was refused only after "making a nosuch model" and after DIR/disk was made, and a
 *  --dir that is a file gave the raw ENOTDIR of a mkdir. A given directory is made only in a
 *  directory that exists (as `tierlm init --out`); the default, under ~/.cache, with its parents. */
function checkDemoOptions(dir: string | undefined, config: string): void {
  const flags = nameStyle() === 'flags';
  if (!presetNames().includes(config)) {
    throw new UserError(`${flags ? '--config' : 'config'} ${config}: unknown shape (known: ${presetNames().join(', ')})`);
  }
  if (dir === undefined) return;
  const name = flags ? '--dir' : 'dir';
  const s = statOrNull(dir);
  if (s && !s.isDirectory()) throw new UserError(`${name} ${dir}: is a file, not a directory`);
  const parent = path.dirname(path.resolve(dir));
  if (!s && !statOrNull(parent)?.isDirectory()) throw new UserError(`${name} ${dir}: its parent ${parent} does not exist`);
}

export function demoReport(d: DemoResult): string {
  const r = d.run;
  const f = (x: number) => x.toFixed(2);
  const b = r.bytes;
  return [
    '',
    `throughput  ${f(r.totalTokensPerSecond)} generated tok/s (predicted ${f(d.plan.prediction.totalTokensPerSecond)}); ` +
      `prefill ${f(r.prefillTokensPerSecond)} tok/s, decode ${f(r.decodeTokensPerSecond)} tok/s`,
    `memory      peak RSS ${formatSize(r.peakRssBytes)} for a ${formatSize(d.ramBytes)} limit (+ ${formatSize(RUNTIME_OVERHEAD_BYTES)} runtime allowance); ` +
      `weights ${formatSize(r.placement.weightsRam)} in RAM, ${formatSize(r.placement.weightsDisk)} on disk`,
    `time        prefill ${f(r.prefillSeconds)} s + decode ${f(r.decodeSeconds)} s: compute ${f(r.computeSeconds)} s, ` +
      `waiting for the disk ${f(r.ioWaitSeconds)} s; the disk was busy ${f(r.ioSeconds)} s` +
      (r.ioHiddenShare === null ? '' : ` (${(100 * r.ioHiddenShare).toFixed(0)}% of it hidden under compute)`),
    `disk I/O    read ${formatSize(b.diskRead)} (weights ${formatSize(b.weightsRead)}, KV cache ${formatSize(b.cacheRead)}), ` +
      `written ${formatSize(b.diskWritten)}`,
    '',
  ].join('\n');
}
