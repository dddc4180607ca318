// Offloading benchmarks (issue: offloading engine), each beside its roofline: per phase, the larger
// of (bytes read from disk ÷ measured disk bandwidth) and (FLOPs ÷ measured GEMM rate).
//
//   node --import tsx bench/offload.ts --case a   OPT-6.7B shape, --ram 8GiB, prompt 64, gen 32
//   node --import tsx bench/offload.ts --case b   OPT-30B shape cut to 16 layers, --ram 6GiB
//   node --import tsx bench/offload.ts --case c   (b) with the row-by-row schedule
//   options: --gbs N --ngb N --percent WG WC CG CC HG HC --sep-layer true|false --disk-dir DIR --json
import fs from 'node:fs';
import path from 'node:path';
import { runBench, dummyModel } from '../src/engine/bench.js';
import { DEFAULT_POLICY, type Policy, applyPercent } from '../src/policy/policy.js';
import { cpuBackend, Tensor, getThreads } from '../src/index.js';
import { DirectFile } from '../src/tensor/disk/io.js';
import { BufferPool, sequentialPass } from '../src/tensor/disk/buffer-pool.js';
import { readConfig } from '../src/models/registry.js';
import { parseSize } from '../src/tensor/tiers/size.js';

const args = process.argv.slice(2);
const arg = (n: string, d?: string) => {
  const i = args.indexOf(n);
  return i >= 0 ? args[i + 1]! : d;
};
const json = args.includes('--json');
const kase = arg('--case', 'a')!;
const cases: Record<string, { config: string; layers?: number; ram: string; promptLen: number; genLen: number; schedule: 'zigzag' | 'row'; gbs: number; ngb: number }> = {
  a: { config: 'opt-6.7b', ram: '8GiB', promptLen: 64, genLen: 32, schedule: 'zigzag', gbs: 16, ngb: 4 },
  b: { config: 'opt-30b', layers: 16, ram: '6GiB', promptLen: 64, genLen: 32, schedule: 'zigzag', gbs: 16, ngb: 4 },
  c: { config: 'opt-30b', layers: 16, ram: '6GiB', promptLen: 64, genLen: 32, schedule: 'row', gbs: 16, ngb: 1 },
};
const spec = cases[kase];
if (!spec) throw new Error(`unknown case ${kase}`);
const gbs = Number(arg('--gbs', String(spec.gbs)));
const ngb = Number(arg('--ngb', String(spec.ngb)));
const diskDir = path.resolve(arg('--disk-dir', '.bench/disk')!);
const modelCache = path.resolve(arg('--model-cache', '.bench/models')!);
fs.mkdirSync(diskDir, { recursive: true });
const model = await dummyModel(spec.config, spec.layers, modelCache);
const { config } = readConfig(model);
const ram = parseSize(arg('--ram', spec.ram)!);

let policy: Policy = { ...DEFAULT_POLICY, gpuBatchSize: gbs, numGpuBatches: ngb, schedule: spec.schedule, overlap: spec.schedule === 'zigzag' };
const pct = args.indexOf('--percent');
if (pct >= 0) policy = applyPercent(policy, args.slice(pct + 1, pct + 7).map(Number));
else policy = applyPercent(policy, [0, Number(arg('--wc', '30')), 0, 100, 0, 100]);
if (arg('--sep-layer')) policy = { ...policy, sepLayer: arg('--sep-layer') === 'true' };

/**
 * GEMM rate (FLOP/s) of one layer's weights at M rows: every weight shape of the layer ([h, h] ×
 * 4, [ffn, h], [h, ffn]; f16, fp32 mode) timed on its own, FLOPs over summed time. (An earlier
 * version timed one [4h, h] weight at ≤ 1024 rows, which underestimated the wide layers.)
 */
function gemmRate(m: number): number {
  const b = cpuBackend();
  const h = config.hidden;
  const shapes: [number, number, number][] = [[h, h, 4], [config.ffn, h, 1], [h, config.ffn, 1]];
  let flops = 0;
  let seconds = 0;
  for (const [n, k, count] of shapes) {
    const w = b.packWeight(new Tensor('f16', [n, k], new Uint16Array(n * k).fill(0x2c00)), 'fp32');
    const x = Tensor.f32([m, k]);
    b.matmul(x, w);
    const t0 = performance.now();
    let reps = 0;
    while (performance.now() - t0 < 700 || reps < 2) {
      b.matmul(x, w);
      reps++;
    }
    seconds += (count * (performance.now() - t0)) / 1000 / reps;
    flops += count * 2 * m * n * k;
  }
  return flops / seconds;
}

/** O_DIRECT read bandwidth of the packed weights file (bytes/s), 16 MiB blocks, 4 in flight: the
 *  best of two passes over its first 4 GiB (one pass over 2 GiB caught slow moments of this
 *  shared disk: 1.07–1.32 GB/s while the runs themselves read at up to 1.9 GB/s). */
async function diskBandwidth(file: string): Promise<number> {
  const f = DirectFile.open(file, 'r');
  const block = 16 << 20;
  const pool = new BufferPool({ bufferBytes: block, count: 4 });
  const total = Math.min(f.size() - (f.size() % block), 2 ** 32);
  try {
    let best = Infinity;
    for (let pass = 0; pass < 2; pass++) best = Math.min(best, await sequentialPass(f, pool, total, block, false));
    return total / best;
  } finally {
    pool.dispose();
    f.close();
  }
}

const r = await runBench({ model, promptLen: spec.promptLen, genLen: spec.genLen, policy: { ...policy, cacheDtype: 'f16' }, diskDir, ramBytes: ram });
const weightsFile = fs.readdirSync(diskDir).filter((d) => d.startsWith('weights-')).map((d) => path.join(diskDir, d, 'weights.bin')).find((f) => fs.existsSync(f));
const bw = weightsFile ? await diskBandwidth(weightsFile) : NaN;
const batch = r.batch;
const layerParams = config.layers * (4 * config.hidden * config.hidden + 2 * config.hidden * config.ffn);
const headParams = config.vocabSize * config.embedDim;
const flopsPrefill = 2 * batch * spec.promptLen * layerParams + 2 * batch * headParams;
const flopsDecode = 2 * batch * (spec.genLen - 1) * (layerParams + headParams);
const ratePrefill = gemmRate(gbs * spec.promptLen);
const rateDecode = gemmRate(gbs);
// Disk bytes per phase: the prefill step reads the disk-resident weights once; decode reads them
// once per step (zig-zag) plus the cache; the row schedule reads them once per batch and step.
const perStepWeights = r.placement.weightsDisk * (spec.schedule === 'row' ? ngb : 1);
const diskPrefill = perStepWeights;
const diskDecode = Math.max(0, r.bytes.diskRead - diskPrefill);
const rooflinePrefill = Math.max(diskPrefill / bw, flopsPrefill / ratePrefill);
const rooflineDecode = Math.max(diskDecode / bw, flopsDecode / rateDecode);
const rooflineTotal = (batch * spec.genLen) / (rooflinePrefill + rooflineDecode);
const row = {
  bench: 'offload', case: kase, config: spec.config, layers: spec.layers ?? config.layers, ram: spec.ram, schedule: spec.schedule,
  gbs, ngb, sepLayer: policy.sepLayer, percent: [policy.wGpuPercent, policy.wCpuPercent, policy.cacheGpuPercent, policy.cacheCpuPercent, policy.actGpuPercent, policy.actCpuPercent],
  promptLen: spec.promptLen, genLen: spec.genLen, threads: getThreads(),
  prefillTokS: r.prefillTokensPerSecond, decodeTokS: r.decodeTokensPerSecond, totalTokS: r.totalTokensPerSecond,
  peakRssGiB: r.peakRssBytes / 2 ** 30, weightsRamGiB: r.placement.weightsRam / 2 ** 30, weightsDiskGiB: r.placement.weightsDisk / 2 ** 30,
  diskReadGiB: r.bytes.diskRead / 2 ** 30, diskWrittenGiB: r.bytes.diskWritten / 2 ** 30,
  diskGBs: bw / 1e9, decodeDiskReadGBs: diskDecode / r.decodeSeconds / 1e9, gemmPrefillGflops: ratePrefill / 1e9, gemmDecodeGflops: rateDecode / 1e9,
  rooflinePrefillS: rooflinePrefill, rooflineDecodeS: rooflineDecode, measuredPrefillS: r.prefillSeconds, measuredDecodeS: r.decodeSeconds,
  rooflineTotalTokS: rooflineTotal, shareOfRoofline: r.totalTokensPerSecond / rooflineTotal, ioHiddenShare: r.ioHiddenShare,
  bound: { prefill: diskPrefill / bw > flopsPrefill / ratePrefill ? 'disk' : 'compute', decode: diskDecode / bw > flopsDecode / rateDecode ? 'disk' : 'compute' },
};
console.log(json ? JSON.stringify(row) : row);
