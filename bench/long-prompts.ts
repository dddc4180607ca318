// Prefill (or decode) tokens/s on long prompts, everything in RAM, random weights: where attention
// is a large share of a step. A model is made once under .bench/ (never committed). To compare two
// builds, run the script from each checkout in turn.
//
//   node --import tsx bench/long-prompts.ts [--config llama-3.2-1b] [--layers 4] [--shapes 1x2048,4x512]
//       [--new 1] [--reps 2] [--threads 2]
//
// --new 1 times the prefill (one token generated); --new N > 1 times the N-1 decode steps after it.
import fs from 'node:fs';
import path from 'node:path';
import { loadModel, getThreads } from '../src/index.js';
import { initModel } from '../src/models/init.js';
import type { GenerateStats } from '../src/engine/generate.js';

const args = process.argv.slice(2);
const opt = (name: string, dflt: string) => (args.includes(name) ? args[args.indexOf(name) + 1]! : dflt);
const config = opt('--config', 'llama-3.2-1b');
const layers = Number(opt('--layers', '4'));
const shapes = opt('--shapes', '1x2048,4x512').split(',').map((s) => s.split('x').map(Number) as [number, number]);
const newTokens = Number(opt('--new', '1'));
const reps = Number(opt('--reps', '2'));
const threads = Number(opt('--threads', String(getThreads())));

const dir = path.resolve('.bench', `${config}-${layers}l-bf16`);
if (!fs.existsSync(path.join(dir, 'model.safetensors'))) {
  process.stderr.write(`making ${dir} with dummy weights...\n`);
  initModel({ config, layers, out: dir, dtype: 'bf16', seed: 1 });
}
const model = await loadModel(dir, { threads });
for (const [batch, len] of shapes) {
  const requests = Array.from({ length: batch }, (_, i) => ({
    id: `r${i}`, promptTokenIds: Array.from({ length: len }, (_, j) => 3 + ((i * 7919 + j * 104729) % 30000)),
  }));
  const times: number[] = [];
  for (let r = 0; r < reps; r++) {
    const t: GenerateStats = { prefillSeconds: 0, decodeSeconds: 0, promptTokens: 0, generatedTokens: 0 };
    for await (const _ of model.generate(requests, { maxNewTokens: newTokens, stopAtEos: false, batchSize: batch }, t)) void _;
    times.push(newTokens > 1 ? t.decodeSeconds : t.prefillSeconds);
  }
  const s = Math.min(...times);
  const tokens = newTokens > 1 ? batch * (newTokens - 1) : batch * len;
  console.log(`${config} ${layers} layers, ${batch} x ${len}: ${newTokens > 1 ? 'decode' : 'prefill'} ${s.toFixed(2)} s, ${(tokens / s).toFixed(1)} tok/s (best of ${reps})`);
}
await model.close();
