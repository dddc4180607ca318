// Where a decode step's time goes (issue #14 items 3 and 4), run by hand:
//
//   node --import tsx bench/peers/step.ts [--q4] [--steps 31] [--rounds 2] [--model .bench/llama-2-7b-4l-bf16]
//       [--batch 1] [--cache-dtype f32|f16] [--ab-idle-prefetch PAIRS] [--ab-attn-prefetch PAIRS [--attn-bytes N]]
//       [--ab-cache PAIRS] [--ab-one-pass PAIRS] [--vs-read-pass PAIRS] [--vs-gemm PAIRS] [--by-step]
//       [--split-by-step RUNS]
//
// --batch sequences (default one; prompt 64) on the bench model (bench/peers/index.ts makes it), in rounds of three
// measurements taken one after another, so that they see the same machine: the decode step time;
// the same steps with every Backend op timed from JavaScript (per op kind, each op's argument
// checks included); and the step's GEMVs alone (the model's packed weights in forward order, back
// to back). What the ops leave of the step is the engine's scheduling, sampling, promises and
// garbage collection.
//
// --ab-idle-prefetch PAIRS: instead, decode runs with the idle workers' prefetch of the next
// weight (gemmIdlePrefetch) off and on in turn, PAIRS of each, and the median of the paired
// ratios (a drifting machine makes separately timed runs incomparable). --ab-attn-prefetch PAIRS:
// the same for decode attention's in-stream prefetch (attnPrefetch; --attn-bytes, default its own).
// --ab-one-pass PAIRS: the same for a 15-16-row product in one row block (gemmOnePassRows) against
// blocks of at most 14 rows (AVX-512).
//
// --cache-dtype: the KV cache's element type (default: the model's policy). --ab-cache PAIRS: decode
// with an f32 and an f16 cache in turn, and the median of the paired ratios f16 / f32.
//
// --vs-gemm PAIRS: issue #14 item 4 — a decode run and the step's GEMMs alone (the same packed
// weights, `--batch` rows each) in turn; the median of the paired ratios decode rate / GEMM-only rate.
//
// --by-step: --vs-gemm and the --ab-* switches pair single decode steps rather
// than whole runs: PAIRS runs of --steps steps, each step paired with the GEMM-only pass run right
// after it (outside the step's time), or with its neighbour under the other setting (the setting
// flips between steps, in the order A B B A, so a drift within a pair cancels over two pairs). A
// pair is then ~0.3 s apart instead of seconds, so the VM's memory rate, which swings within
// seconds, moves both halves alike: quartiles of a step-level ratio are ±3-4%, the run-level
// ones ±5-10% (docs/benchmarks.md, issue #14).
//
// --split-by-step RUNS: where item 4's gap goes, step by step: RUNS runs of --steps steps, each step
// followed by the GEMM-only pass; per step, the products' time inside it (timed from JavaScript, as
// the rounds below do) over that pass's, and decode attention's and everything else's share of the
// step (quartiles over all steps).
//
// --vs-read-pass PAIRS: issue #14 item 3 — the RAM read pass (readMemoryPass over 1 GiB, what
// `tierlm profile` measures as memory.read_bytes_per_second) and a decode run in turn, PAIRS of
// each; a step's rate is the packed weight bytes it multiplies by (LM head included) over its time,
// reported as the median of the paired ratios step rate / read rate.
import path from 'node:path';
import { loadModel, getThreads, Tensor } from '../../src/index.js';
import { Backend, type PackedWeight } from '../../src/backend/backend.js';
import { GEMM_KERNEL_KINDS, gemmIdlePrefetch, gemmOnePassRows } from '../../src/backend/cpu/gemm.js';
import { attnPrefetch } from '../../src/backend/cpu/attention.js';
import { cpuBackend, readMemoryPass } from '../../src/backend/index.js';

const args = process.argv.slice(2);
const opt = (name: string, dflt: string) => (args.includes(name) ? args[args.indexOf(name) + 1]! : dflt);
const q4 = args.includes('--q4');
const steps = Number(opt('--steps', '31'));
const rounds = Number(opt('--rounds', '2'));
const batch = Number(opt('--batch', '1'));
const dir = path.resolve(opt('--model', '.bench/llama-2-7b-4l-bf16'));
const PROMPT = 64;
const cacheArg = opt('--cache-dtype', '');
if (cacheArg && cacheArg !== 'f32' && cacheArg !== 'f16') throw new Error(`--cache-dtype: f32 or f16, got ${cacheArg}`);
let cacheDtype = (cacheArg || undefined) as 'f32' | 'f16' | undefined;

const model = await loadModel(dir, { precision: 'bf16', threads: getThreads(), policy: q4 ? { compressWeight: true } : {} });
const requests = Array.from({ length: batch }, (_, i) => ({
  id: `r${i}`, promptTokenIds: Array.from({ length: PROMPT }, (_, j) => 3 + ((i * 7919 + j * 104729) % 30000)),
}));

// Per-op timing: the Backend methods a forward pass calls, wrapped while `counting`.
type Tally = Map<string, { ms: number; n: number }>;
let tally: Tally | null = null;
const proto = Backend.prototype as unknown as Record<string, (...a: unknown[]) => unknown>;
for (const name of ['matmul', 'rmsNorm', 'layerNorm', 'add', 'relu', 'gelu', 'siluMul', 'rope', 'cacheWrite', 'cacheWriteTokens', 'attentionCached', 'gatherRows', 'embedding']) {
  const f = proto[name]!;
  proto[name] = function (this: Backend, ...a: unknown[]) {
    if (!tally) return f.apply(this, a);
    const t0 = performance.now();
    const r = f.apply(this, a);
    const w = a[1] as PackedWeight;
    const key = name === 'matmul' ? `matmul ${w.n}x${w.k}` : name;
    const e = tally.get(key) ?? { ms: 0, n: 0 };
    e.ms += performance.now() - t0;
    e.n++;
    tally.set(key, e);
    return r;
  };
}

/** ms per decode step of `steps` decode steps (prefill excluded), and the op tally of those steps
 *  (counting starts with the first token, which prefill makes). */
async function generate(withTally: boolean): Promise<[number, Tally]> {
  const s = { prefillSeconds: 0, decodeSeconds: 0, promptTokens: 0, generatedTokens: 0 };
  const t: Tally = new Map();
  tally = null;
  const onToken = () => void (withTally && (tally = t));
  for await (const _ of model.generate(requests, { maxNewTokens: steps + 1, stopAtEos: false, batchSize: batch, onToken, ...(cacheDtype ? { cacheDtype } : {}) }, s)) void _;
  tally = null;
  return [(s.decodeSeconds / steps) * 1e3, t];
}

/** Decode step times (ms) of one run of `steps` steps; `between(i)` runs after step i, outside
 *  the steps' times (a step is timed from one token of the first request to its next). */
async function stepTimes(between: (i: number) => void): Promise<number[]> {
  const times: number[] = [];
  let last = 0;
  const onToken = (id: string) => {
    if (id !== requests[0]!.id) return;
    if (last > 0) times.push(performance.now() - last);
    between(times.length);
    last = performance.now();
  };
  const s = { prefillSeconds: 0, decodeSeconds: 0, promptTokens: 0, generatedTokens: 0 };
  for await (const _ of model.generate(requests, { maxNewTokens: steps + 1, stopAtEos: false, batchSize: batch, onToken, ...(cacheDtype ? { cacheDtype } : {}) }, s)) void _;
  return times;
}
const byStep = args.includes('--by-step');
const quartiles = (xs: number[]) => {
  const o = [...xs].sort((a, b) => a - b), at = (f: number) => o[Math.round(f * (o.length - 1))]!.toFixed(3);
  return `median ${at(0.5)}, quartiles ${at(0.25)}–${at(0.75)}`;
};

// The GEMVs alone: every layer matrix in forward order, then the head, one row each.
const layers = await Promise.all(Array.from({ length: model.config.layers }, (_, j) => model.layers.load(j, 'all', null)));
// (Everything is in RAM here, so every weight is one PackedWeight, never split between tiers.)
const weights = layers.flatMap((l) => [l.q!.w, l.k!.w, l.v!.w, l.o!.w, ...(l.gate ? [l.gate.w] : []), l.up!.w, l.down!.w])
  .concat([model.transformer.globals.lmHead]) as PackedWeight[];
const io = weights.map((w) => [Tensor.f32([batch, w.k]), Tensor.f32([batch, w.n])] as const);
const alone = new Map<string, number>();
const gemvStep = () => {
  const t0 = performance.now();
  for (let r = 0; r < steps; r++) weights.forEach((w, i) => {
    const t = performance.now();
    model.transformer.backend.matmul(io[i]![0], w, null, io[i]![1]);
    const key = `matmul ${w.n}x${w.k}`;
    alone.set(key, (alone.get(key) ?? 0) + performance.now() - t);
  });
  return (performance.now() - t0) / steps;
};

await generate(false);
const med = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;
const gemmPairs = Number(opt('--vs-gemm', '0'));
/** One GEMM-only pass: every product of a decode step, the step's rows each, back to back. */
const gemmPass = (byShape?: Map<string, number>) => {
  const t0 = performance.now();
  for (let j = 0; j < weights.length; j++) {
    const t = performance.now();
    model.transformer.backend.matmul(io[j]![0], weights[j]!, null, io[j]![1]);
    if (byShape) {
      const key = `matmul ${weights[j]!.n}x${weights[j]!.k}`;
      byShape.set(key, (byShape.get(key) ?? 0) + performance.now() - t);
    }
  }
  return performance.now() - t0;
};
const splitRuns = Number(opt('--split-by-step', '0'));
if (splitRuns > 0) {
  gemmPass();
  const products: number[] = [], attention: number[] = [], rest: number[] = [];
  // Per product shape: its time in the step over its time in the pass after it.
  const byShape = new Map<string, number[]>();
  for (let r = 0; r < splitRuns; r++) {
    const t: Tally = new Map();
    const sum = (pick: (k: string) => boolean) => [...t].filter(([k]) => pick(k)).reduce((a, [, v]) => a + v.ms, 0);
    let [mm0, at0] = [0, 0];
    let shapes0 = new Map<string, number>();
    const split: { mm: number; at: number; gemm: number }[] = [];
    const times = await stepTimes((i) => {
      tally = null;
      const [mm, at] = [sum((k) => k.startsWith('matmul')), sum((k) => k === 'attentionCached')];
      const shapes = new Map([...t].filter(([k]) => k.startsWith('matmul')).map(([k, v]) => [k, v.ms]));
      if (i > 0) {
        const pass = new Map<string, number>();
        split.push({ mm: mm - mm0, at: at - at0, gemm: gemmPass(pass) });
        for (const [k, ms] of pass) byShape.set(k, [...(byShape.get(k) ?? []), ((shapes.get(k) ?? 0) - (shapes0.get(k) ?? 0)) / ms]);
      }
      [mm0, at0, shapes0] = [mm, at, shapes];
      tally = t;
    });
    tally = null;
    times.forEach((step, i) => {
      const x = split[i];
      if (!x) return;
      products.push(x.mm / x.gemm);
      attention.push(x.at / step);
      rest.push((step - x.mm - x.at) / step);
    });
  }
  console.log(`decode step split, batch ${batch}, ${products.length} steps in ${splitRuns} runs (${new Date().toISOString()}): ` +
    `products in the step / the GEMM-only pass after it ${quartiles(products)}; decode attention's share of the step ` +
    `${quartiles(attention)}; everything else's ${quartiles(rest)}`);
  for (const [k, r] of byShape) console.log(`  ${k.padEnd(20)} in the step / in the pass: ${quartiles(r)}`);
  model.close();
  process.exit(0);
}
if (gemmPairs > 0 && byStep) {
  gemmPass();
  const pairs: [number, number][] = [];
  for (let r = 0; r < gemmPairs; r++) {
    const gemm: number[] = [];
    const times = await stepTimes((i) => void (i > 0 && (gemm[i - 1] = gemmPass())));
    times.forEach((t, i) => gemm[i] !== undefined && pairs.push([t, gemm[i]!]));
  }
  console.log(`decode vs GEMM-only by step, batch ${batch}, cache ${cacheDtype ?? 'default'}, ${pairs.length} steps in ${gemmPairs} runs (${new Date().toISOString()}): ` +
    `median step ${med(pairs.map((p) => p[0])).toFixed(2)} ms, GEMMs alone ${med(pairs.map((p) => p[1])).toFixed(2)} ms; ` +
    `decode / GEMM-only rate ${quartiles(pairs.map((p) => p[1] / p[0]))}`);
  model.close();
  process.exit(0);
}
if (gemmPairs > 0) {
  gemvStep();
  const runs: [number, number][] = [];
  for (let i = 0; i < gemmPairs; i++) runs.push([(await generate(false))[0], gemvStep()]);
  console.log(`decode vs GEMM-only, batch ${batch}, cache ${cacheDtype ?? 'default'}, ${gemmPairs} pairs (${new Date().toISOString()}): ` +
    `median step ${med(runs.map((p) => p[0])).toFixed(2)} ms, GEMMs alone ${med(runs.map((p) => p[1])).toFixed(2)} ms; ` +
    `median decode / GEMM-only rate ${med(runs.map((p) => p[1] / p[0])).toFixed(3)} (pairs: ${runs.map((p) => (p[1] / p[0]).toFixed(3)).join(' ')})`);
  model.close();
  process.exit(0);
}
const readPairs = Number(opt('--vs-read-pass', '0'));
if (readPairs > 0) {
  const big = cpuBackend().kernels.packedBuffer(2 ** 30).fill(1);  // (as the weights are allocated)
  const weightBytes = weights.reduce((n, w) => n + w.data.byteLength, 0);
  const pairs: [number, number][] = [];
  for (let i = 0; i < readPairs; i++) {
    const t0 = performance.now();
    readMemoryPass(big);
    const read = big.byteLength / ((performance.now() - t0) / 1e3);
    const step = weightBytes / ((await generate(false))[0] / 1e3);
    pairs.push([read, step]);
  }
  const gb = (x: number) => (x / 1e9).toFixed(1);
  console.log(`decode step vs RAM read pass, ${readPairs} pairs (${new Date().toISOString()}): ${(weightBytes / 1e6).toFixed(0)} MB of weights per step; ` +
    `read pass median ${gb(med(pairs.map((p) => p[0])))} GB/s (${gb(Math.min(...pairs.map((p) => p[0])))}–${gb(Math.max(...pairs.map((p) => p[0])))}), ` +
    `step median ${gb(med(pairs.map((p) => p[1])))} GB/s; median step / read ${med(pairs.map((p) => p[1] / p[0])).toFixed(3)} ` +
    `(pairs: ${pairs.map((p) => (p[1] / p[0]).toFixed(2)).join(' ')})`);
  model.close();
  process.exit(0);
}
// Paired A/B of one setting: decode with `off` applied and with `on` applied, in turn.
async function abSwitch(label: string, off: () => void, on: () => void, pairs: number): Promise<never> {
  if (byStep) {
    const ratios: number[] = [];
    for (let r = 0; r < pairs; r++) {
      // Steps 0, 3, 4, 7, 8, ... off; 1, 2, 5, 6, ... on: pairs (0,1), (2,3), ... each hold one of each.
      const isOn = (i: number) => (i % 4 === 1 || i % 4 === 2);
      off();
      const times = await stepTimes((i) => (isOn(i) ? on() : off()));
      for (let i = 0; i + 1 < times.length; i += 2) ratios.push(isOn(i) ? times[i]! / times[i + 1]! : times[i + 1]! / times[i]!);
    }
    console.log(`${label}, by step: ${ratios.length} pairs of adjacent steps in ${pairs} runs (${new Date().toISOString()}): time on/off ${quartiles(ratios)}`);
    model.close();
    process.exit(0);
  }
  const runs: [number, number][] = [];
  for (let i = 0; i < pairs; i++) {
    off();
    const a = (await generate(false))[0];
    on();
    runs.push([a, (await generate(false))[0]]);
  }
  console.log(`${label}, ${pairs} pairs (${new Date().toISOString()}): ` +
    `median step off ${med(runs.map((p) => p[0])).toFixed(2)} ms, on ${med(runs.map((p) => p[1])).toFixed(2)} ms, ` +
    `median on/off ${med(runs.map((p) => p[1] / p[0])).toFixed(3)} (pairs: ${runs.map((p) => (p[1] / p[0]).toFixed(3)).join(' ')})`);
  model.close();
  process.exit(0);
}
const cachePairs = Number(opt('--ab-cache', '0'));
if (cachePairs > 0) {
  await abSwitch(`KV cache f32 (off) vs f16 (on), batch ${batch}`, () => void (cacheDtype = 'f32'), () => void (cacheDtype = 'f16'), cachePairs);
}
// (the native settings: 0 is off)
const abPairs = Number(opt('--ab-idle-prefetch', '0'));
if (abPairs > 0) {
  const on = gemmIdlePrefetch();
  await abSwitch(`idle prefetch of ${on / 2 ** 20} MiB`, () => gemmIdlePrefetch(0), () => gemmIdlePrefetch(on), abPairs);
}
const abOnePass = Number(opt('--ab-one-pass', '0'));
if (abOnePass > 0) {
  await abSwitch(`one row block for 15-16-row products`, () => gemmOnePassRows([]), () => gemmOnePassRows(GEMM_KERNEL_KINDS), abOnePass);
}
const abAttn = Number(opt('--ab-attn-prefetch', '0'));
if (abAttn > 0) {
  const bytes = Number(opt('--attn-bytes', String(attnPrefetch())));
  await abSwitch(`attention in-stream prefetch of ${bytes} B`, () => attnPrefetch(0), () => attnPrefetch(bytes), abAttn);
}
gemvStep();
alone.clear();
for (let r = 0; r < rounds; r++) {
  const plain = (await generate(false))[0];
  const [timed, whole] = await generate(true);
  const gemv = gemvStep();
  const perStep = [...whole].map(([k, v]) => [k, v.ms / steps, v.n / steps] as const).sort((a, b) => b[1] - a[1]);
  const ops = perStep.reduce((a, x) => a + x[1], 0);
  const gemvInStep = perStep.filter((x) => x[0].startsWith('matmul')).reduce((a, x) => a + x[1], 0);
  console.log(`round ${r + 1} (${new Date().toISOString()}): decode step ${plain.toFixed(2)} ms (${((batch * 1e3) / plain).toFixed(1)} tok/s); ` +
    `with ops timed ${timed.toFixed(2)} ms; GEMVs alone ${gemv.toFixed(2)} ms (${((batch * 1e3) / gemv).toFixed(1)} tok/s)`);
  for (const [k, ms, n] of perStep) console.log(`  ${k.padEnd(20)} ${ms.toFixed(3).padStart(7)} ms/step ${n.toFixed(0).padStart(4)} calls ${((ms / n) * 1e3).toFixed(1).padStart(8)} µs/call` +
    (alone.has(k) ? ` (alone ${(alone.get(k)! / steps).toFixed(3)} ms/step)` : ''));
  alone.clear();
  console.log(`  GEMVs in the step ${gemvInStep.toFixed(2)} ms (alone ${gemv.toFixed(2)}); other ops ${(ops - gemvInStep).toFixed(2)} ms; between ops ${(timed - ops).toFixed(2)} ms`);
}
console.log(`${path.basename(dir)}, ${q4 ? '4-bit' : 'bf16'}, batch ${batch}, ${getThreads()} threads, ${steps} decode steps after a 64-token prompt`);
model.close();
