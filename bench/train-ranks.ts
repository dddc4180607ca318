// Data-parallel training (ZeRO-3 over OpenMPI ranks) against one process on the same machine:
//   node --import tsx bench/train-ranks.ts [--config opt-125m] [--layers 4] [--seq 256] [--batch 4]
//        [--steps 4] [--ranks 2] [--precision fp32]
// Makes a model with random weights (OPT shape) and random token data, then trains it with
// `train()` (as `tierlm train` does) once in one process with --batch sequences per micro-batch,
// and once under `mpirun -np R` with --batch / R per rank (the same global batch). Prints tokens/s
// (median over the steps after the first) and, for the ranks, the bytes each rank's all-gathers
// received and its reduce-scatters sent per step. Needs OpenMPI and the MPI addon (README).
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { worldComm } from '../src/dist/comm.js';
import { defaultModelCache, dummyModel } from '../src/engine/bench.js';
import { train } from '../src/train/run.js';
import { cpuModel } from './timing.js';

const args = process.argv.slice(2);
const arg = (name: string, def: string) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1]! : def;
};
const self = fileURLToPath(import.meta.url);

interface Row { step: number; tokensPerSecond: number; gatheredBytes?: number; reduceScatteredBytes?: number }

if (args.includes('--worker')) {
  // One rank of a run: train, then rank 0 prints every step's numbers as one JSON line.
  const rows: Row[] = [];
  for await (const m of train({
    model: arg('model', ''), data: arg('data', ''), out: arg('out', ''), seqLen: Number(arg('seq', '256')), batchSize: Number(arg('batch', '4')),
    maxSteps: Number(arg('steps', '4')), precision: arg('precision', 'fp32') as 'fp32', lr: 1e-5, saveEvery: 0,
  })) {
    rows.push({ step: m.step, tokensPerSecond: m.tokensPerSecond, gatheredBytes: m.gatheredBytes, reduceScatteredBytes: m.reduceScatteredBytes });
  }
  const comm = worldComm();
  if (comm.rank === 0) process.stdout.write(`ROWS ${JSON.stringify(rows)}\n`);
  comm.finalize();
} else {
  const ranks = Number(arg('ranks', '2'));
  const batch = Number(arg('batch', '4'));
  const seq = Number(arg('seq', '256'));
  const steps = arg('steps', '4');
  if (batch % ranks !== 0) throw new Error(`--batch ${batch} must be a multiple of --ranks ${ranks}`);
  const model = await dummyModel(arg('config', 'opt-125m'), Number(arg('layers', '4')), defaultModelCache());
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'tierlm-bench-ranks-'));
  try {
    const data = path.join(work, 'data.jsonl');
    const vocab = (JSON.parse(fs.readFileSync(path.join(model, 'config.json'), 'utf8')) as { vocab_size: number }).vocab_size;
    let x = 12345;
    const lines = Array.from({ length: batch * Number(steps) }, () => JSON.stringify({
      token_ids: Array.from({ length: seq }, () => ((x = (x * 1103515245 + 12345) >>> 0) >>> 8) % vocab),
    }));
    fs.writeFileSync(data, lines.join('\n') + '\n');
    const worker = (out: string, perRank: number) => [process.execPath, '--import', 'tsx', self, '--worker', '--model', model, '--data', data,
      '--out', path.join(work, out), '--seq', String(seq), '--batch', String(perRank), '--steps', steps, '--precision', arg('precision', 'fp32')];
    const run = (cmd: string[]) => {
      const r = spawnSync(cmd[0]!, cmd.slice(1), { encoding: 'utf8', env: { ...process.env, OMPI_MCA_mpi_yield_when_idle: '1' } });
      const m = /^ROWS (.*)$/m.exec(r.stdout);
      if (r.status !== 0 || !m) throw new Error(`${cmd.join(' ')} failed: ${r.stderr}`);
      return JSON.parse(m[1]!) as Row[];
    };
    const median = (v: number[]) => v.sort((a, b) => a - b)[Math.floor(v.length / 2)]!;
    const report = (name: string, rows: Row[]) => {
      const later = rows.slice(1);
      const mib = (k: 'gatheredBytes' | 'reduceScatteredBytes') => later[0]?.[k] !== undefined ? `${(median(later.map((r) => r[k]!)) / 2 ** 20).toFixed(1)} MiB` : '-';
      console.log(`${name}: ${median(later.map((r) => r.tokensPerSecond)).toFixed(0)} tokens/s; per step and rank: all-gathered ${mib('gatheredBytes')}, reduce-scattered ${mib('reduceScatteredBytes')}`);
    };
    console.log(`${cpuModel()}, ${os.availableParallelism()} cores, ${new Date().toISOString()}; ${arg('config', 'opt-125m')} with ${arg('layers', '4')} layers, ` +
      `global batch ${batch} × ${seq} tokens, ${steps} steps, ${arg('precision', 'fp32')}`);
    report('1 process', run(worker('one', batch)));
    const mpirun = ['mpirun', '--oversubscribe', ...(process.getuid?.() === 0 ? ['--allow-run-as-root'] : []), '-np', String(ranks)];
    report(`${ranks} ranks`, run([...mpirun, ...worker('ranks', batch / ranks)]));
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
}
