// Prefill and decode throughput on an OPT-1.3B-shape model with dummy weights (made once by
// `tierlm init` under .bench/), batch 1, 8 and 32, prompt 64, 16 new tokens, beside the rate the
// GEMMs alone would allow (the same matmuls on the same packed weights, timed alone), for decode
// steps and for the prefill step (issue #14 items 2 and 4).
//
//   npm run bench:generate [-- --json] [-- --precision bf16] [-- --batches 1,8,32]
//       [-- --model DIR] [-- --compress-weight]
import fs from 'node:fs';
import path from 'node:path';
import os from 'node:os';
import { loadModel, getThreads, Tensor, cpuBackend } from '../src/index.js';
import { initModel } from '../src/models/init.js';
import type { GenerateStats } from '../src/engine/generate.js';
import type { LanguageModel } from '../src/engine/model.js';
import type { PackedWeight } from '../src/backend/index.js';

const args = process.argv.slice(2);
const json = args.includes('--json');
const opt = (name: string, dflt: string) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1]! : dflt;
};
const config = opt('--config', 'opt-1.3b');
const precisions = opt('--precision', 'fp32,bf16').split(',') as ('fp32' | 'bf16')[];
const batches = opt('--batches', '1,8,32').split(',').map(Number);
const promptLen = Number(opt('--prompt-len', '64'));
const newTokens = Number(opt('--gen-len', '16'));

const compressWeight = args.includes('--compress-weight');
const given = args.includes('--model');
const dir = path.resolve(opt('--model', path.join('.bench', config)));
// Only the bench's own model is made here: a given one (sharded models have no model.safetensors)
// is the user's, never written over.
if (!given && !fs.existsSync(path.join(dir, 'model.safetensors'))) {
  process.stderr.write(`making ${dir} with dummy weights...\n`);
  initModel({ config, out: dir, dtype: 'f16', seed: 1 });
}

/** Seconds the GEMMs of one step take alone (the weights the model packed): every layer matrix
 *  over `rows` rows (b in decode, b × prompt in prefill), the LM head over the b last positions. */
async function gemmOnlyStep(model: LanguageModel, b: number, rows = b, reps = 3): Promise<number> {
  const t = model.transformer;
  const layers = await Promise.all(Array.from({ length: model.config.layers }, (_, j) => model.layers.load(j, 'all', null)));
  const backend = cpuBackend();
  const weights: PackedWeight[] = layers.flatMap((l) => [l.q!.w, l.k!.w, l.v!.w, l.o!.w, l.up!.w, l.down!.w, ...(l.gate ? [l.gate.w] : [])]).concat([t.globals.lmHead]);
  const inputs = new Map<string, Tensor<'f32'>>();
  const run = () => {
    for (const w of weights) {
      const m = w === t.globals.lmHead ? b : rows;
      let x = inputs.get(`${m} ${w.k}`);
      if (!x) inputs.set(`${m} ${w.k}`, (x = Tensor.f32([m, w.k])));
      backend.matmul(x, w);
    }
  };
  run();
  const start = performance.now();
  for (let i = 0; i < reps; i++) run();
  return (performance.now() - start) / 1000 / reps;
}

const rows: Record<string, unknown>[] = [];
for (const precision of precisions) {
  const model = await loadModel(dir, { precision, policy: { compressWeight } });
  for (const b of batches) {
    const requests = Array.from({ length: b }, (_, i) => ({
      id: `r${i}`,
      promptTokenIds: Array.from({ length: promptLen }, (_, j) => 3 + ((i * 7919 + j * 104729) % (model.config.vocabSize - 3))),
    }));
    // Warm-up (first touches of workspaces), then the measured run.
    for await (const _ of model.generate(requests.slice(0, 1), { maxNewTokens: 2, stopAtEos: false, batchSize: 1 })) void _;
    const stats: GenerateStats = { prefillSeconds: 0, decodeSeconds: 0, promptTokens: 0, generatedTokens: 0 };
    for await (const r of model.generate(requests, { maxNewTokens: newTokens, stopAtEos: false, batchSize: b }, stats)) {
      if ('error' in r) throw new Error(`${r.id}: ${r.error}`);
    }
    const decodeSteps = newTokens - 1;
    const gemmStep = await gemmOnlyStep(model, b);
    const gemmPrefill = await gemmOnlyStep(model, b, b * promptLen, 1);
    const decodeTps = (b * decodeSteps) / stats.decodeSeconds;
    const gemmTps = b / gemmStep;
    const row = {
      bench: 'generate', config: compressWeight ? `${path.basename(dir)} 4-bit` : path.basename(dir), precision, batch: b, promptLen, newTokens, threads: getThreads(),
      prefillTokS: +((b * promptLen) / stats.prefillSeconds).toFixed(1),
      decodeTokS: +decodeTps.toFixed(1),
      totalTokS: +((b * newTokens) / (stats.prefillSeconds + stats.decodeSeconds)).toFixed(1),
      gemmOnlyPrefillTokS: +((b * promptLen) / gemmPrefill).toFixed(1),
      prefillShareOfGemmRate: +(gemmPrefill / stats.prefillSeconds).toFixed(3),
      gemmOnlyDecodeTokS: +gemmTps.toFixed(1),
      decodeShareOfGemmRate: +(decodeTps / gemmTps).toFixed(3),
    };
    rows.push(row);
    if (json) console.log(JSON.stringify(row));
    else process.stderr.write(`${precision} batch ${b}: prefill ${row.prefillTokS} tok/s (GEMM-only ${row.gemmOnlyPrefillTokS}, ${(row.prefillShareOfGemmRate * 100).toFixed(0)}%), decode ${row.decodeTokS} tok/s (GEMM-only ${row.gemmOnlyDecodeTokS}, ${(row.decodeShareOfGemmRate * 100).toFixed(0)}%), total ${row.totalTokS} tok/s\n`);
  }
}
if (!json) {
  console.log(`\n${os.cpus()[0]?.model} · ${getThreads()} threads · ${rows[0]?.config} · prompt ${promptLen} · ${newTokens} new tokens`);
  console.log('| precision | batch | prefill tok/s | GEMM-only prefill tok/s | prefill / GEMM-only | decode tok/s | GEMM-only decode tok/s | decode / GEMM-only | total tok/s |');
  console.log('|---|---|---|---|---|---|---|---|---|');
  for (const r of rows) console.log(`| ${r.precision} | ${r.batch} | ${r.prefillTokS} | ${r.gemmOnlyPrefillTokS} | ${((r.prefillShareOfGemmRate as number) * 100).toFixed(0)}% | ${r.decodeTokS} | ${r.gemmOnlyDecodeTokS} | ${((r.decodeShareOfGemmRate as number) * 100).toFixed(0)}% | ${r.totalTokS} |`);
}
