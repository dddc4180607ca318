// Offloaded training (src/train/offload) on an OPT shape with random weights, against the cost
// model's prediction (src/train/offload/cost.ts) from the hardware profile:
//   node --import tsx bench/train-offload.ts [--config opt-test] [--layers 8] [--seq 64] [--batch 2]
//        [--grad-accum 1] [--precision fp32] [--ram 64MiB] [--disk-dir DIR] [--steps 3] [--threads N]
//        [--profile FILE] [--json]
// One warm-up step (it records the prefetch trace), then --steps timed steps. A step's update runs
// under the next step's forward, so each timed step includes its predecessor's update (the
// steady state); the last one's, awaited after them, is reported apart (lastUpdateSeconds). Reports tokens/s,
// measured and predicted step seconds with what bounds the prediction, the roofline (the larger
// of the GEMMs at the profile's rate and the measured disk traffic at its rates) and the share of
// it reached, bytes read and written per state kind, the share of I/O hidden under compute per
// phase, and the process's peak RSS. Predictions are as good as the profile: pass a full one
// (`tierlm profile --out FILE`, measured on a quiet machine) with --profile.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { getThreads, setThreads } from '../src/backend/index.js';
import { defaultModelCache, dummyModel } from '../src/engine/bench.js';
import { diskReadRate, diskWriteRate, ensureProfile } from '../src/policy/profile.js';
import { parseSize } from '../src/tensor/tiers/size.js';
import { openTrainer } from '../src/train/index.js';
import { rng } from '../test/helpers/random.js';
import { cpuModel } from './timing.js';
import { peakRssBytes } from '../src/util/peak-rss.js';

const args = process.argv.slice(2);
const arg = (name: string, def: string) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1]! : def;
};
const config = arg('config', 'opt-test');
const layers = Number(arg('layers', '8'));
const seq = Number(arg('seq', '64'));
const batch = Number(arg('batch', '2'));
const accum = Number(arg('grad-accum', '1'));
const precision = arg('precision', 'fp32') as 'fp32' | 'bf16';
const ram = parseSize(arg('ram', '64MiB'), '--ram');
const steps = Number(arg('steps', '3'));
setThreads(Number(arg('threads', String(getThreads()))));
const diskDir = fs.mkdtempSync(path.join(arg('disk-dir', os.tmpdir()), 'tierlm-bench-train-offload-'));
const profile = await ensureProfile({ file: args.includes('--profile') ? arg('profile', '') : undefined, diskDir });

const dir = await dummyModel(config, layers, defaultModelCache());
const trainer = await openTrainer(dir, { precision, lr: 1e-4, offload: { ram, diskDir, maxTokens: batch * seq } });
console.error(`opened: ${trainer.parameterCount()} parameters, ${JSON.stringify(trainer.offloadPlacement())}`);
try {
  const r = rng(1);
  const vocab = trainer.config.vocabSize;
  const micro = () => Array.from({ length: accum }, () => Array.from({ length: batch }, () => ({ tokenIds: Array.from({ length: seq }, () => Math.floor(r() * vocab)) })));
  await trainer.step(micro());
  const times: number[] = [];
  const perStep: { seconds: number; waits: Record<string, number>; hidden: Record<string, number> }[] = [];
  let last = null;
  for (let i = 0; i < steps; i++) {
    last = await trainer.step(micro());
    times.push(last.seconds);
    const ph = Object.entries(last.offload!.phases);
    perStep.push({ seconds: last.seconds, waits: Object.fromEntries(ph.map(([k, v]) => [k, v.waitSeconds])), hidden: Object.fromEntries(ph.map(([k, v]) => [k, v.hidden])) });
  }
  // The last step's update runs in the background of what comes next: here, nothing.
  const t0 = performance.now();
  await trainer.sync();
  const lastUpdateSeconds = (performance.now() - t0) / 1000;
  const measured = [...times].sort((a, b) => a - b)[Math.floor(times.length / 2)]!;
  const predicted = trainer.predictStep(profile, batch * seq, accum, seq)!;
  // Roofline: the larger of the GEMMs at the profile's rate and the step's disk traffic (as
  // measured) at the profile's sequential rates.
  const sum = (x: Record<string, number>) => Object.values(x).reduce((a, b) => a + b, 0);
  const gemmSeconds = predicted.compute.gemm;
  // (reads and writes in flight together, as the cost model counts them)
  const diskSeconds = Math.max(sum(last!.offload!.read) / diskReadRate(profile), sum(last!.offload!.written) / diskWriteRate(profile));
  const roofline = Math.max(gemmSeconds, diskSeconds);
  const out = {
    machine: cpuModel(), threads: getThreads(), date: new Date().toISOString(), config, layers, seq, batch, gradAccum: accum, precision, ram,
    parameters: trainer.parameterCount(), stateBytes: trainer.parameterCount() * (precision === 'bf16' ? 18 : 16),
    tokensPerSecond: (batch * seq * accum) / measured, measuredSeconds: measured, predictedSeconds: predicted.seconds,
    predictedOverMeasured: predicted.seconds / measured, bound: predicted.bound,
    roofline: { seconds: roofline, gemmSeconds, diskSeconds, share: roofline / measured },
    times, perStep, lastUpdateSeconds,
    predicted: { compute: predicted.computeSeconds, computeParts: predicted.compute, passIo: predicted.passIoSeconds, optimizer: predicted.optimizerSeconds, optimizerHidden: predicted.optimizerHiddenSeconds, forward: predicted.forwardSeconds, bytes: predicted.bytes },
    read: last!.offload!.read, written: last!.offload!.written, phases: last!.offload!.phases, prefetchDepth: last!.offload!.prefetchDepth,
    peakRssBytes: peakRssBytes(),
  };
  if (args.includes('--json')) console.log(JSON.stringify(out));
  else console.log(out);
} finally {
  await trainer.close();
  fs.rmSync(diskDir, { recursive: true, force: true });
}
