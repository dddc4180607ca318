// tierlm beside its peers on the shapes of issue #14, in one run on one machine: PyTorch eager bf16
// (bench/peers/torch_gen.py, Debian's python3-torch) and llama.cpp (node-llama-cpp, when
// --llama-cpp names a directory it is installed in). Prompt 64, 16 new tokens, random weights,
// everything in RAM; prefill, decode and total tokens/s (FlexGen's metric). Run by hand, never in CI:
//
//   node --import tsx bench/peers/index.ts [--cases opt32,llama16,llama1,llama16q4,llama1q4]
//       [--llama-cpp /tmp/llcpp] [--no-torch] [--torch-dtype bf16|fp32] [--threads 2] [--repeat N]
//       [--pairs N] [--json]
//
// --torch-dtype fp32: PyTorch in fp32 rather than bf16 (the peer); on a CPU without
// AVX512-BF16 PyTorch 1.13's bf16 matmuls take a scalar loop, and fp32 is what its users run there.
//
// --repeat N: tierlm and llama.cpp keep the best of N measured runs on the loaded model (by total
// time), against short bursts of other load on a shared machine.
//
// --pairs N [--peer llama.cpp|pytorch]: tierlm and one peer loaded side by side (llama.cpp in this
// process, needing --llama-cpp and a Llama case; PyTorch in one python process kept between runs),
// N runs of each in turn (which goes first alternates), and the medians of the N paired ratios
// tierlm / peer of decode and total tokens/s. This machine's memory rate moves by up to 2× within
// seconds, so runs minutes apart compare the moments more than the engines.
//
// Models are made once under .bench/ (safetensors for tierlm, GGUF for llama.cpp; never committed).
import fs from 'node:fs';
import path from 'node:path';
import os from 'node:os';
import { spawn, spawnSync } from 'node:child_process';
import readline from 'node:readline';
import { loadModel, getThreads } from '../../src/index.js';
import { initModel } from '../../src/models/init.js';
import type { GenerateStats } from '../../src/engine/generate.js';
import { writeLlamaGguf, type LlamaShape } from './gguf.js';
import { openLlamaCpp, runLlamaCpp, type PeerRow } from './llamacpp.js';

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
const torchDtype = opt('--torch-dtype', 'bf16');
if (torchDtype !== 'bf16' && torchDtype !== 'fp32') throw new Error(`--torch-dtype: bf16 or fp32, got ${torchDtype}`);

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

/** The case's model loaded (and warmed up); run() times one generation: seconds of prefill and decode. */
async function openTierlm(c: Case) {
  const model = await loadModel(modelDir(c.model), { precision: 'bf16', threads, policy: c.q4 ? { compressWeight: true } : {} });
  const requests = Array.from({ length: c.batch }, (_, i) => ({
    id: `r${i}`, promptTokenIds: Array.from({ length: PROMPT }, (_, j) => 3 + ((i * 7919 + j * 104729) % 30000)),
  }));
  for await (const _ of model.generate(requests.slice(0, 1), { maxNewTokens: 2, stopAtEos: false, batchSize: 1 })) void _;
  const run = async () => {
    const t: GenerateStats = { prefillSeconds: 0, decodeSeconds: 0, promptTokens: 0, generatedTokens: 0 };
    for await (const _ of model.generate(requests, { maxNewTokens: NEW, stopAtEos: false, batchSize: c.batch }, t)) void _;
    return { pre: t.prefillSeconds, dec: t.decodeSeconds };
  };
  return { run, close: () => model.close() };
}

const row = (engine: string, b: number, t: { pre: number; dec: number }): PeerRow =>
  ({ engine, batch: b, prefillTokS: (b * PROMPT) / t.pre, decodeTokS: (b * (NEW - 1)) / t.dec, totalTokS: (b * NEW) / (t.pre + t.dec) });

async function runTierlm(c: Case): Promise<PeerRow> {
  const session = await openTierlm(c);
  try {
    let best = await session.run();
    for (let r = 1; r < repeat; r++) {
      const t = await session.run();
      if (t.pre + t.dec < best.pre + best.dec) best = t;
    }
    return row('tierlm', c.batch, best);
  } finally {
    session.close();
  }
}

interface PeerSession { run(): Promise<{ pre: number; dec: number }>; close(): Promise<void> | void }

/** torch_gen.py --serve: the model made once, a run per request. */
async function openTorch(c: Case): Promise<PeerSession> {
  const child = spawn('/usr/bin/python3', [path.join(import.meta.dirname, 'torch_gen.py'), ...TORCH_SHAPE[c.model], '--batch', String(c.batch), '--prompt', String(PROMPT),
    '--new', String(NEW), '--threads', String(threads), '--dtype', torchDtype, '--serve'], { stdio: ['pipe', 'pipe', 'inherit'] });
  const lines = readline.createInterface({ input: child.stdout! })[Symbol.asyncIterator]();
  const next = async () => {
    const l = await lines.next();
    if (l.done) throw new Error('pytorch exited');
    return JSON.parse(l.value) as { pre: number; dec: number };
  };
  await next(); // ready
  return {
    run: () => {
      child.stdin!.write('run\n');
      return next();
    },
    close: () => void child.stdin!.end(),
  };
}

async function openPeer(c: Case, name: string): Promise<PeerSession> {
  if (name === 'pytorch') return openTorch(c);
  if (name !== 'llama.cpp') throw new Error(`--peer: llama.cpp or pytorch, got ${name}`);
  if (!llamaCppDir || c.model !== 'llama') throw new Error(`--peer llama.cpp needs --llama-cpp DIR and a Llama case (${c.name} is not one, or no DIR)`);
  const s = await openLlamaCpp(llamaCppDir, ggufFile(c.q4), threads);
  await s.run(1, PROMPT, 2);
  return { run: () => s.run(c.batch, PROMPT, NEW), close: () => s.close() };
}

/** --pairs: tierlm and a peer in turn on one case; the medians of the paired ratios. */
async function runPairs(c: Case, pairs: number, peerName: string): Promise<void> {
  const ours = await openTierlm(c);
  const peer = await openPeer(c, peerName);
  // (a pause between runs, so the other engine's threads have stopped spinning)
  const pause = () => new Promise((r) => setTimeout(r, 200));
  const got: { ours: PeerRow; peer: PeerRow }[] = [];
  for (let i = 0; i < pairs; i++) {
    let a: PeerRow, b: PeerRow;
    if (i % 2 === 0) {
      a = row('tierlm', c.batch, await ours.run());
      await pause();
      b = row(peerName, c.batch, await peer.run());
    } else {
      b = row(peerName, c.batch, await peer.run());
      await pause();
      a = row('tierlm', c.batch, await ours.run());
    }
    await pause();
    got.push({ ours: a, peer: b });
  }
  ours.close();
  await peer.close();
  const med = (xs: number[]) => [...xs].sort((x, y) => x - y)[xs.length >> 1]!;
  const out = {
    case: c.name, peer: peerName === 'pytorch' ? `pytorch ${torchDtype}` : peerName, pairs, at: new Date().toISOString(),
    tierlmDecode: med(got.map((g) => g.ours.decodeTokS)), peerDecode: med(got.map((g) => g.peer.decodeTokS)),
    decodeRatio: med(got.map((g) => g.ours.decodeTokS / g.peer.decodeTokS)), totalRatio: med(got.map((g) => g.ours.totalTokS / g.peer.totalTokS)),
    decodeRatios: got.map((g) => +(g.ours.decodeTokS / g.peer.decodeTokS).toFixed(3)),
  };
  if (json) console.log(JSON.stringify(out));
  else console.log(`${c.label} vs ${out.peer}, ${pairs} pairs (${out.at}): decode tierlm ${out.tierlmDecode.toFixed(1)}, ${out.peer} ${out.peerDecode.toFixed(1)} tok/s (medians); ` +
    `median paired ratio decode ${out.decodeRatio.toFixed(3)}, total ${out.totalRatio.toFixed(3)} (decode pairs: ${out.decodeRatios.join(' ')})`);
}

function runTorch(c: Case): PeerRow | null {
  const r = spawnSync('/usr/bin/python3', [path.join(import.meta.dirname, 'torch_gen.py'), ...TORCH_SHAPE[c.model], '--batch', String(c.batch), '--prompt', String(PROMPT), '--new', String(NEW), '--threads', String(threads), '--dtype', torchDtype], { encoding: 'utf8' });
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
const pairs = Number(opt('--pairs', '0'));
if (pairs > 0) {
  for (const name of cases) {
    const c = CASES.find((x) => x.name === name);
    if (!c) throw new Error(`unknown case ${name} (known: ${CASES.map((x) => x.name).join(', ')})`);
    await runPairs(c, pairs, opt('--peer', 'llama.cpp'));
  }
  process.exit(0);
}
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
  console.log(`| shape, batch | tierlm | PyTorch eager ${torchDtype} | llama.cpp |`);
  console.log('|---|---|---|---|');
  for (const c of CASES.filter((x) => cases.includes(x.name))) {
    const by = (e: string) => rows.find((r) => r.case === c.name && r.engine === e);
    console.log(`| ${c.label} | ${f(by('tierlm'))} | ${f(by('pytorch'))} | ${f(by('llama.cpp'))} |`);
  }
}
