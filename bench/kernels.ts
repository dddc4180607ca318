// Kernel benchmark: GEMM at K = N = 4096 for M = 1, 16, 64, 512, each weight dtype and compute
// mode, on 1 and 2 threads, against OpenBLAS sgemm (numpy) where numpy is importable.
//   npm run bench:kernels            a table
//   npm run bench:kernels -- --json  one JSON object per line
// Options: --quick (shorter timing), --threads 1,2, --m 1,16,64,512.
import { spawnSync } from 'node:child_process';
import { cpuBackend, getThreads, isaInfo, setThreads } from '../src/backend/index.js';
import { gemmBf16Dot } from '../src/backend/cpu/gemm.js';
import type { ComputeMode } from '../src/backend/kernels.js';
import type { FloatDType } from '../src/tensor/dtype.js';
import { randomF32, randomFloat } from './lib/random.js';

const args = process.argv.slice(2);
const json = args.includes('--json');
const quick = args.includes('--quick');
function listArg(name: string, def: number[]): number[] {
  const i = args.indexOf(name);
  return i >= 0 && args[i + 1] ? args[i + 1]!.split(',').map(Number) : def;
}
const THREADS = listArg('--threads', [1, 2]);
const MS = listArg('--m', [1, 16, 64, 512]);
const K = 4096;
const N = 4096;
const MIN_MS = quick ? 150 : 400;

type Row = Record<string, string | number>;
const rows: Row[] = [];
function emit(row: Row): void {
  rows.push(row);
  if (json) console.log(JSON.stringify(row));
}
function log(s: string): void {
  if (!json) console.log(s);
}

/** Best time (seconds) of fn over at least MIN_MS of repetitions, after one warm-up. */
async function timeBest(fn: () => unknown): Promise<number> {
  await fn();
  let best = Infinity;
  const t0 = performance.now();
  let reps = 0;
  while (performance.now() - t0 < MIN_MS || reps < 3) {
    const t = performance.now();
    await fn();
    best = Math.min(best, performance.now() - t);
    reps++;
  }
  return best / 1000;
}

// ---- OpenBLAS through numpy -------------------------------------------------------------------

const NUMPY_SCRIPT = `
import sys, time, json
import numpy as np
K, N, ms, min_s = int(sys.argv[1]), int(sys.argv[2]), [int(v) for v in sys.argv[3].split(',')], float(sys.argv[4])
w = np.random.rand(N, K).astype(np.float32)
for m in ms:
    x = np.random.rand(m, K).astype(np.float32)
    y = x @ w.T
    best = 1e9; t0 = time.perf_counter(); reps = 0
    while time.perf_counter() - t0 < min_s or reps < 3:
        t = time.perf_counter(); np.matmul(x, w.T, out=y); best = min(best, time.perf_counter() - t); reps += 1
    print(json.dumps({"M": m, "seconds": best}))
`;

function openblas(threads: number): Map<number, number> | string {
  const env = { ...process.env, OPENBLAS_NUM_THREADS: String(threads), OMP_NUM_THREADS: String(threads) };
  delete env.OPENBLAS_CORETYPE;
  delete env.OPENBLAS_L2_SIZE;
  const r = spawnSync('python3', ['-c', NUMPY_SCRIPT, String(K), String(N), MS.join(','), String(MIN_MS / 1000)], {
    env, encoding: 'utf8', timeout: 300_000,
  });
  if (r.error) return `python3 not runnable (${r.error.message})`;
  if (r.status !== 0) {
    const err = (r.stderr || '').trim().split('\n').pop() ?? '';
    return /numpy/i.test(r.stderr) ? `numpy is not importable (${err})` : `python3 failed: ${err}`;
  }
  const out = new Map<number, number>();
  for (const line of r.stdout.trim().split('\n')) {
    const o = JSON.parse(line) as { M: number; seconds: number };
    out.set(o.M, o.seconds);
  }
  return out;
}

// ---- GEMM -------------------------------------------------------------------------------------

const CASES: { dtype: FloatDType; compute: ComputeMode; dot?: boolean }[] = [
  { dtype: 'f32', compute: 'fp32' },
  { dtype: 'f16', compute: 'fp32' },
  { dtype: 'bf16', compute: 'fp32' },
  { dtype: 'f32', compute: 'bf16' },
  { dtype: 'bf16', compute: 'bf16' },
];

async function benchGemm(): Promise<void> {
  const cpu = cpuBackend();
  const isa = isaInfo();
  const hasDot = isa.active === 'avx512bf16';
  const cases = hasDot ? [...CASES, { dtype: 'bf16' as FloatDType, compute: 'bf16' as ComputeMode, dot: true }] : CASES;
  const startDot = gemmBf16Dot();
  log(`GEMM y[M,${N}] = x[M,${K}] · W[${N},${K}]ᵀ   isa ${isa.active}, ${isa.hardwareThreads} hardware threads`);
  for (const threads of THREADS) {
    setThreads(threads);
    const blas = openblas(threads);
    if (typeof blas === 'string') log(`OpenBLAS comparison skipped: ${blas}`);
    log(`\nthreads ${threads}`);
    log('dtype compute       M   GFLOP/s   GB/s(W)   vs OpenBLAS');
    for (const c of cases) {
      gemmBf16Dot(c.dot ?? false);
      const w = cpu.packWeight(randomFloat(c.dtype, [N, K], 1), c.compute);
      for (const m of MS) {
        const x = randomF32([m, K], 2);
        const y = cpu.matmul(x, w);
        const s = await timeBest(() => cpu.matmul(x, w, null, y));
        const gflops = (2 * m * K * N) / s / 1e9;
        const row: Row = { op: 'gemm', dtype: c.dtype, compute: c.dot ? 'bf16-dot' : c.compute, M: m, K, N, threads, gflops: +gflops.toFixed(1) };
        if (m === 1) row.gbps = +(w.data.byteLength / s / 1e9).toFixed(1);
        let vs = '';
        if (typeof blas !== 'string' && blas.has(m)) {
          const bg = (2 * m * K * N) / blas.get(m)! / 1e9;
          row.openblas_gflops = +bg.toFixed(1);
          row.ratio = +(gflops / bg).toFixed(2);
          vs = `${bg.toFixed(1).padStart(7)} (${row.ratio}x)`;
        }
        emit(row);
        log(`${c.dtype.padEnd(5)} ${String(row.compute).padEnd(9)} ${String(m).padStart(4)} ${gflops.toFixed(1).padStart(9)} ${row.gbps !== undefined ? String(row.gbps).padStart(9) : ''.padStart(9)}   ${vs}`);
      }
    }
    if (typeof blas !== 'string') {
      for (const m of MS) {
        const bg = (2 * m * K * N) / blas.get(m)! / 1e9;
        const row: Row = { op: 'gemm', dtype: 'f32', compute: 'openblas', M: m, K, N, threads, gflops: +bg.toFixed(1) };
        if (m === 1) row.gbps = +((N * K * 4) / blas.get(m)! / 1e9).toFixed(1);
        emit(row);
      }
    }
  }
  gemmBf16Dot(startDot);
}

// ---- decode attention -------------------------------------------------------------------------

/**
 * Decode-attention lines go here: `{"op":"attention_decode",...,"gbps"}` (KV-cache bytes read per
 * second). Skipped while the CPU backend lacks attentionDecode.
 */
async function benchAttentionDecode(): Promise<void> {
  const cpu = cpuBackend();
  try {
    // Probe: the placeholder kernel throws "does not implement".
    cpu.kernels.attentionDecode(new Float32Array(0), new Float32Array(0), new Float32Array(0), 'f32', 0, 1, 1, 1, 1, new Int32Array(0), 1, new Float32Array(0));
  } catch (e) {
    if (/does not implement/.test((e as Error).message)) {
      log('\nattention_decode: not implemented in the cpu backend yet, skipped');
      return;
    }
  }
  log('\nattention_decode: kernel present; benchmark lines to be added here');
}

const threads0 = getThreads();
await benchGemm();
await benchAttentionDecode();
setThreads(threads0);
