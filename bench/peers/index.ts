// tierlm beside its peers on the shapes of issue #14, in one run on one machine: PyTorch eager bf16
// (bench/peers/torch_gen.py, Debian's python3-torch) and llama.cpp (node-llama-cpp, when
// --llama-cpp names a directory it is installed in). Prompt 64, 16 new tokens, random weights,
// everything in RAM; prefill, decode and total tokens/s (FlexGen's metric). Run by hand, never in CI:
//
//   node --import tsx bench/peers/index.ts [--cases opt32,llama16,llama1,llama16q4,llama1q4]
//       [--llama-cpp /tmp/llcpp] [--no-torch] [--threads 2] [--repeat N] [--json]
//
// --repeat N: tierlm and llama.cpp keep the best of N measured runs on the loaded model (by total
// time), against short bursts of other load on a shared machine.
//
// Models are made once under .bench/ (safetensors for tierlm, GGUF for llama.cpp; never committed).
import fs from 'node:fs';
import path from 'node:path';
import os from 'node:os';
import { spawnSync } from 'node:child_process';
import { loadModel, getThreads } from '../../src/index.js';
import { initModel } from '../../src/models/init.js';
import type { GenerateStats } from '../../src/engine/generate.js';
import { writeLlamaGguf, type LlamaShape } from './gguf.js';
import { runLlamaCpp, type PeerRow } from './llamacpp.js';

const args = process.argv.slice(2);
const opt = (name: string, dflt: string) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1]! : dflt;
};
const json = args.includes('--json');
const cases = opt('--cases', 'opt32,llama16,llama1,llama16q4,llama1q4').split(',');
const llamaCppDir = opt('--llama-cpp', '');
const threads = Number(opt('--threads', String(getThreads())));
const repeat = Number(opt('--repeat', '1'));
const [PROMPT, NEW] = [64, 16];

interface Case { name: string; label: string; model: 'opt' | 'llama'; batch: number; q4: boolean }
const CASES: Case[] = [
  { name: 'opt32', label: 'OPT-1.3B, 32, bf16', model: 'opt', batch: 32, q4: false },
  { name: 'llama16', label: 'Llama-7B-4L, 16, bf16', model: 'llama', batch: 16, q4: false },
  { name: 'llama1', label: 'Llama-7B-4L, 1, bf16', model: 'llama', batch: 1, q4: false },
  { name: 'llama16q4', label: 'Llama-7B-4L, 16, 4-bit', model: 'llama', batch: 16, q4: true },
  { name: 'llama1q4', label: 'Llama-7B-4L, 1, 4-bit', model: 'llama', batch: 1, q4: true },
];
const LLAMA: LlamaShape = { hidden: 4096, layers: 4, heads: 32, kvHeads: 32, ffn: 11008, vocab: 32000 };
const TORCH_SHAPE = {
  opt: ['--arch', 'opt', '--hidden', '2048', '--layers', '24', '--heads', '32', '--ffn', '8192', '--vocab', '50272'],
  llama: ['--arch', 'llama', '--hidden', '4096', '--layers', '4', '--heads', '32', '--ffn', '11008', '--vocab', '32000'],
};

function modelDir(m: 'opt' | 'llama'): string {
  const dir = path.resolve('.bench', m === 'opt' ? 'opt-1.3b-bf16' : 'llama-2-7b-4l-bf16');
  if (!fs.existsSync(path.join(dir, 'model.safetensors'))) {
    process.stderr.write(`making ${dir} with dummy weights...\n`);
    initModel(m === 'opt' ? { config: 'opt-1.3b', out: dir, dtype: 'bf16', seed: 1 } : { config: 'llama-2-7b', layers: 4, out: dir, dtype: 'bf16', seed: 1 });
  }
  return dir;
}

async function runTierlm(c: Case): Promise<PeerRow> {
  const model = await loadModel(modelDir(c.model), { precision: 'bf16', threads, policy: c.q4 ? { compressWeight: true } : {} });
  try {
    const requests = Array.from({ length: c.batch }, (_, i) => ({
      id: `r${i}`, promptTokenIds: Array.from({ length: PROMPT }, (_, j) => 3 + ((i * 7919 + j * 104729) % 30000)),
    }));
    for await (const _ of model.generate(requests.slice(0, 1), { maxNewTokens: 2, stopAtEos: false, batchSize: 1 })) void _;
    let s: GenerateStats | null = null;
    for (let r = 0; r < repeat; r++) {
      const t: GenerateStats = { prefillSeconds: 0, decodeSeconds: 0, promptTokens: 0, generatedTokens: 0 };
      for await (const _ of model.generate(requests, { maxNewTokens: NEW, stopAtEos: false, batchSize: c.batch }, t)) void _;
      if (!s || t.prefillSeconds + t.decodeSeconds < s.prefillSeconds + s.decodeSeconds) s = t;
    }
    const b = c.batch;
    s = s!;
    return { engine: 'tierlm', batch: b, prefillTokS: (b * PROMPT) / s.prefillSeconds, decodeTokS: (b * (NEW - 1)) / s.decodeSeconds, totalTokS: (b * NEW) / (s.prefillSeconds + s.decodeSeconds) };
  } finally {
    model.close();
  }
}

function runTorch(c: Case): PeerRow | null {
  const r = spawnSync('/usr/bin/python3', [path.join(import.meta.dirname, 'torch_gen.py'), ...TORCH_SHAPE[c.model], '--batch', String(c.batch), '--prompt', String(PROMPT), '--new', String(NEW), '--threads', String(threads)], { encoding: 'utf8' });
  if (r.status !== 0) {
    process.stderr.write(`pytorch failed: ${r.stderr.slice(-500)}\n`);
    return null;
  }
  return JSON.parse(r.stdout.trim().split('\n').pop()!) as PeerRow;
}

function ggufFile(q4: boolean): string {
  const file = path.resolve('.bench', `llama-2-7b-4l-${q4 ? 'q4_0' : 'bf16'}.gguf`);
  if (!fs.existsSync(file)) {
    process.stderr.write(`making ${file} with random weights...\n`);
    writeLlamaGguf(file, LLAMA, q4 ? 'q4_0' : 'bf16');
  }
  return file;
}

const rows: (PeerRow & { case: string })[] = [];
const note = (r: PeerRow | null, c: Case) => {
  if (!r) return;
  const row = { ...r, case: c.name };
  rows.push(row);
  const f = (x: number | null | undefined) => (x == null ? '–' : x.toFixed(1));
  if (json) console.log(JSON.stringify(row));
  else process.stderr.write(`${c.label} · ${r.engine}: total ${f(r.totalTokS)} (prefill ${f(r.prefillTokS)}, decode ${f(r.decodeTokS)}) tok/s\n`);
};
for (const name of cases) {
  const c = CASES.find((x) => x.name === name);
  if (!c) throw new Error(`unknown case ${name} (known: ${CASES.map((x) => x.name).join(', ')})`);
  note(await runTierlm(c), c);
  if (!c.q4 && !args.includes('--no-torch')) note(runTorch(c), c);
  if (c.model === 'llama' && llamaCppDir) note(await runLlamaCpp(llamaCppDir, ggufFile(c.q4), c.batch, PROMPT, NEW, threads, repeat), c);
}

if (!json) {
  const f = (r: PeerRow | undefined) => (r ? `${r.totalTokS.toFixed(1)} (prefill ${r.prefillTokS.toFixed(0)}, decode ${r.decodeTokS.toFixed(1)})` : '–');
  console.log(`\n${os.cpus()[0]?.model} · ${threads} threads · prompt ${PROMPT} · ${NEW} new tokens · ${new Date().toISOString()}`);
  console.log('| shape, batch | tierlm | PyTorch eager bf16 | llama.cpp |');
  console.log('|---|---|---|---|');
  for (const c of CASES.filter((x) => cases.includes(x.name))) {
    const by = (e: string) => rows.find((r) => r.case === c.name && r.engine === e);
    console.log(`| ${c.label} | ${f(by('tierlm'))} | ${f(by('pytorch'))} | ${f(by('llama.cpp'))} |`);
  }
}
