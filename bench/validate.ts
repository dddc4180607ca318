// Validation of the cost model and the planner (policy issue): for several policies across model
// shapes and RAM limits, predicted versus measured throughput; and --policy auto versus the best
// of a hand grid of policies.
//
//   node --import tsx bench/validate.ts [--grid] [--json] [--repeats N (default 2: the best of N runs counts)]
// Models are dummy-weight shapes cut to a few layers (made once under .bench/models), so the
// whole run takes minutes on 2 cores. Uses the saved hardware profile (`tierlm profile`).
import fs from 'node:fs';
import path from 'node:path';
import { runBench, dummyModel } from '../src/engine/bench.js';
import { planPolicy, predictPolicy } from '../src/engine/plan.js';
import { ensureProfile } from '../src/policy/profile.js';
import { DEFAULT_POLICY, type Policy } from '../src/policy/policy.js';
import { UserError } from '../src/util/errors.js';

const args = process.argv.slice(2);
const json = args.includes('--json');
const grid = args.includes('--grid');
const GiB = 2 ** 30;
const modelCache = path.resolve('.bench/models');
const diskDir = path.resolve('.bench/disk-validate');
fs.mkdirSync(diskDir, { recursive: true });
const profile = await ensureProfile({ diskDir });
const REPEATS = Number(args[args.indexOf('--repeats') + 1] ?? 2) || 2;
const promptLen = 32;
const genLen = 8;

const shapes: { config: string; layers: number; rams: number[] }[] = [
  { config: 'opt-1.3b', layers: 8, rams: [0.5 * GiB, 2 * GiB] },
  { config: 'opt-6.7b', layers: 4, rams: [1.5 * GiB, 3 * GiB] },
  { config: 'llama-2-7b', layers: 4, rams: [2 * GiB, 4 * GiB] },
];
const only = args.indexOf('--only') >= 0 ? args[args.indexOf('--only') + 1] : undefined;

const hand = (gbs: number, ngb: number, wc: number, cc: number): Policy => ({ ...DEFAULT_POLICY, gpuBatchSize: gbs, numGpuBatches: ngb, wCpuPercent: wc, cacheCpuPercent: cc });

const rows: Record<string, unknown>[] = [];
async function measure(config: string, layers: number, ram: number, given: Policy, label: string) {
  // These runs were measured with an f16 cache; the policy carries it, so prediction and run agree.
  const policy: Policy = { ...given, cacheDtype: 'f16' };
  const model = await dummyModel(config, layers, modelCache);
  const req = { model, promptLen, genLen, limits: { ram }, disk: true, profile };
  const predicted = predictPolicy(req, policy);
  try {
    // The better of two runs: this machine shares its host, and a run that catches a busy moment
    // (measured: the same in-RAM policy at 24.2 and 19.6 tok/s minutes apart) says nothing about the model.
    const runs = [];
    for (let i = 0; i < REPEATS; i++) runs.push(await runBench({ model, promptLen, genLen, policy, diskDir, ramBytes: ram }));
    const r = runs.reduce((a, b) => (b.totalTokensPerSecond > a.totalTokensPerSecond ? b : a));
    const row = {
      bench: 'validate', config, layers, ramGiB: ram / GiB, label, gbs: policy.gpuBatchSize, ngb: policy.numGpuBatches,
      wCpu: policy.wCpuPercent, cacheCpu: policy.cacheCpuPercent, predictedTokS: +predicted.totalTokensPerSecond.toFixed(3),
      measuredTokS: +r.totalTokensPerSecond.toFixed(3), error: +(predicted.totalTokensPerSecond / r.totalTokensPerSecond - 1).toFixed(3),
      peakRssGiB: +(r.peakRssBytes / GiB).toFixed(2),
    };
    rows.push(row);
    console.log(json ? JSON.stringify(row) : row);
    return r.totalTokensPerSecond;
  } catch (e) {
    if (e instanceof UserError) {
      console.error(`${config}/${layers} ${ram / GiB} GiB ${label}: skipped (${e.message.slice(0, 120)})`);
      return 0;
    }
    throw e;
  }
}

for (const s of shapes.filter((x) => !only || x.config === only)) {
  for (const ram of s.rams) {
    const model = await dummyModel(s.config, s.layers, modelCache);
    // With --grid, auto searches the grid's shapes (so both search the same space).
    const gridShapes = [4, 8, 16].flatMap((g) => [1, 2, 4].map((n): [number, number] => [g, n]));
    const auto = (await planPolicy({ model, promptLen, genLen, limits: { ram }, disk: true, profile, shapes: grid ? gridShapes : [[8, 1], [8, 2], [16, 1], [16, 2], [4, 4]] })).policy;
    // Hand policies: less in RAM under the low limit.
    const low = ram === s.rams[0];
    const policies: [string, Policy][] = [['auto', auto], ['hand 8×2', hand(8, 2, low ? 0 : 50, low ? 0 : 100)], ['hand 4×1', hand(4, 1, low ? 5 : 20, low ? 50 : 100)]];
    if (grid) for (const gbs of [4, 8, 16]) for (const ngb of [1, 2, 4]) for (const wc of [0, 30, 60, 100]) policies.push([`grid ${gbs}×${ngb} w${wc}`, hand(gbs, ngb, wc, 100)]);
    let best = 0;
    let bestLabel = '';
    let autoTps = 0;
    for (const [label, p] of policies) {
      const tps = await measure(s.config, s.layers, ram, p, label);
      if (label === 'auto') autoTps = tps;
      else if (tps > best) [best, bestLabel] = [tps, label];
    }
    if (grid) console.log(JSON.stringify({ bench: 'auto-vs-grid', config: s.config, ramGiB: ram / GiB, auto: autoTps, bestHand: best, bestHandLabel: bestLabel, ratio: autoTps / best }));
  }
}
if (!json) {
  console.log('| model | RAM | policy | gbs×ngb | weights in RAM | predicted tok/s | measured tok/s | error |');
  console.log('|---|---|---|---|---|---|---|---|');
  for (const r of rows) console.log(`| ${r.config}/${r.layers} layers | ${r.ramGiB} GiB | ${r.label} | ${r.gbs}×${r.ngb} | ${r.wCpu}% | ${r.predictedTokS} | ${r.measuredTokS} | ${((r.error as number) * 100).toFixed(0)}% |`);
}
