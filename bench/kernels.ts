// Kernel benchmark: GEMM at K = N = 4096 for M = 1, 16, 64, 512, each weight dtype and compute
// mode (q4 / q8: group-wise quantized weights; bf16 mode is their int8/VNNI fast path), on 1 and
// 2 threads, against OpenBLAS sgemm (numpy) where numpy is importable; quantization error stats.
//   npm run bench:kernels            a table
//   npm run bench:kernels -- --json  one JSON object per line
// Options: --quick (shorter timing), --threads 1,2, --m 1,16,64,512.
import * as attention from './attention.js';
import { spawnSync } from 'node:child_process';
import { cpuBackend, getThreads, isaInfo, setThreads } from '../src/backend/index.js';
import { gemmBf16Kernel } from '../src/backend/cpu/gemm.js';
import { type ComputeMode, type QuantFormat, isQuantFormat, quantCodeBytes, quantParamsLength } from '../src/backend/kernels.js';
import type { FloatDType } from '../src/tensor/dtype.js';
import { randomF32, randomFloat, rng } from '../test/helpers/random.js';
import { f16ToF32 } from '../src/tensor/dtype.js';

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
  const env: NodeJS.ProcessEnv = { ...process.env, OPENBLAS_NUM_THREADS: String(threads), OMP_NUM_THREADS: String(threads) };
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

const CASES: { dtype: FloatDType | QuantFormat; compute: ComputeMode }[] = [
  { dtype: 'f32', compute: 'fp32' },
  { dtype: 'f16', compute: 'fp32' },
  { dtype: 'bf16', compute: 'fp32' },
  { dtype: 'f32', compute: 'bf16' },
  { dtype: 'bf16', compute: 'bf16' },
  { dtype: 'q4', compute: 'fp32' },
  { dtype: 'q4', compute: 'bf16' },
  { dtype: 'q8', compute: 'fp32' },
  { dtype: 'q8', compute: 'bf16' },
];

async function benchGemm(): Promise<void> {
  const cpu = cpuBackend();
  const isa = isaInfo();
  const hasDot = isa.active === 'avx512bf16';
  // bf16 mode's other kernels where the CPU has them: vdpbf16ps, and AMX tiles
  const cases: { dtype: FloatDType | QuantFormat; compute: ComputeMode; kernel?: 'dot' | 'amx' }[] = [...CASES,
    ...(hasDot ? [{ dtype: 'bf16' as FloatDType, compute: 'bf16' as ComputeMode, kernel: 'dot' as const }] : []),
    ...(hasDot && isa.amx ? [{ dtype: 'bf16' as FloatDType, compute: 'bf16' as ComputeMode, kernel: 'amx' as const }] : [])];
  const rate = new Map<string, number>();  // `${dtype}/${compute}/${threads}/${m}` -> GFLOP/s
  const startKernel = gemmBf16Kernel();
  log(`GEMM y[M,${N}] = x[M,${K}] · W[${N},${K}]ᵀ   isa ${isa.active}, ${isa.hardwareThreads} hardware threads`);
  for (const threads of THREADS) {
    setThreads(threads);
    const blas = openblas(threads);
    if (typeof blas === 'string') log(`OpenBLAS comparison skipped: ${blas}`);
    log(`\nthreads ${threads}`);
    log('dtype compute       M   GFLOP/s   GB/s(W)   vs OpenBLAS');
    for (const c of cases) {
      gemmBf16Kernel(c.kernel ?? 'fma');
      const w = isQuantFormat(c.dtype)
        ? cpu.packWeight(randomF32([N, K], 1), c.compute, 'w', { quantize: c.dtype })
        : cpu.packWeight(randomFloat(c.dtype, [N, K], 1), c.compute);
      for (const m of MS) {
        const x = randomF32([m, K], 2);
        const y = cpu.matmul(x, w);
        const s = await timeBest(() => cpu.matmul(x, w, null, y));
        const gflops = (2 * m * K * N) / s / 1e9;
        const row: Row = { op: 'gemm', dtype: c.dtype, compute: c.kernel ? `bf16-${c.kernel}` : c.compute, M: m, K, N, threads, gflops: +gflops.toFixed(1) };
        rate.set(`${c.dtype}/${row.compute}/${threads}/${m}`, gflops);
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
    // q4 against the best bf16-weight rate of this run, per M.
    for (const m of MS) {
      const bf16 = Math.max(...['fp32', 'bf16', 'bf16-dot', 'bf16-amx'].map((cm) => rate.get(`bf16/${cm}/${threads}/${m}`) ?? 0));
      for (const cm of ['fp32', 'bf16']) {
        const q4 = rate.get(`q4/${cm}/${threads}/${m}`);
        if (!q4 || !bf16) continue;
        emit({ op: 'gemm_q4_vs_bf16', compute: cm, M: m, threads, q4_gflops: +q4.toFixed(1), bf16_best_gflops: +bf16.toFixed(1), ratio: +(q4 / bf16).toFixed(2) });
        log(`q4 ${cm.padEnd(4)} M=${String(m).padEnd(4)} ${(q4 / bf16).toFixed(2)}x the best bf16-weight rate (${bf16.toFixed(1)} GFLOP/s)`);
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
  gemmBf16Kernel(startKernel);
}

// ---- decode attention -------------------------------------------------------------------------

/**
 * Decode-attention lines go here: `{"op":"attention_decode",...,"gbps"}` (KV-cache bytes read per
 * second). Skipped while the CPU backend lacks attentionDecode.
 */
async function benchAttentionDecode(): Promise<void> {
  // Decode attention in GB/s of K+V cache read (bench/attention.ts has the full grid).
  const records = attention.benchAttentionDecode({ batches: [1, 8, 32], lens: [512, 2048], threads: THREADS, minSeconds: quick ? 0.1 : 0.3 });
  if (json) {
    for (const r of records) console.log(JSON.stringify(r));
    return;
  }
  log('\nattention_decode (GB/s of K+V cache read, d = 128)');
  log('dtype  b   heads kv  len   threads  GB/s');
  for (const r of records) {
    log(`${r.dtype.padEnd(6)} ${String(r.b).padEnd(3)} ${String(r.heads).padEnd(5)} ${String(r.kvHeads).padEnd(3)} ${String(r.len).padEnd(5)} ${String(r.threads).padEnd(8)} ${r.gbps.toFixed(1)}`);
  }
}

// ---- quantization error ------------------------------------------------------------------------

/** Reconstruction error of q4 / q8 (group 64) on a 4096×4096 N(0, 0.02) matrix. */
function quantError(): void {
  const cpu = cpuBackend();
  const n = 4096, k = 4096, g = 64, len = n * k;
  const r = rng(3);
  const x = new Float32Array(len);
  for (let i = 0; i < len; i += 2) {
    const u = 1 - r(), v = r();
    const rad = 0.02 * Math.sqrt(-2 * Math.log(u));
    x[i] = rad * Math.cos(2 * Math.PI * v);
    if (i + 1 < len) x[i + 1] = rad * Math.sin(2 * Math.PI * v);
  }
  log('\nquantization error, 4096x4096 N(0, 0.02), group 64');
  for (const bits of [4, 8] as const) {
    const codes = new Uint8Array(quantCodeBytes(bits, n, k));
    const params = new Uint16Array(quantParamsLength(n, k, g));
    const y = new Float32Array(len);
    const t0 = performance.now();
    cpu.kernels.quantize(x, n, k, bits, g, codes, params);
    const qms = performance.now() - t0;
    cpu.kernels.dequantize(codes, params, n, k, bits, g, y);
    let maxOverStep = 0, sumAbs = 0, sumErr = 0, sumSq = 0, sumSqErr = 0, sumRel = 0;
    for (let i = 0; i < len; i++) {
      const step = f16ToF32(params[Math.floor(i / g) * 2]!);  // k % g == 0: group index i / g
      const e = Math.abs(x[i]! - y[i]!);
      if (step > 0) maxOverStep = Math.max(maxOverStep, e / step);
      sumAbs += Math.abs(x[i]!);
      sumErr += e;
      sumSq += x[i]! * x[i]!;
      sumSqErr += e * e;
      if (x[i] !== 0) sumRel += e / Math.abs(x[i]!);
    }
    const row: Row = {
      op: 'quant_error', bits, group: g, n, k, max_abs_err_over_step: +maxOverStep.toFixed(4),
      mean_abs_err_over_mean_abs: +(sumErr / sumAbs).toExponential(3), rms_err_over_rms: +Math.sqrt(sumSqErr / sumSq).toExponential(3),
      mean_rel_err: +(sumRel / len).toExponential(3), quantize_ms: +qms.toFixed(0),
    };
    emit(row);
    log(`${bits}-bit: max |err|/step ${row.max_abs_err_over_step}, mean |err|/mean |x| ${row.mean_abs_err_over_mean_abs}, ` +
      `rms err/rms ${row.rms_err_over_rms}, mean |err|/|x| ${row.mean_rel_err}`);
  }
}

const threads0 = getThreads();
quantError();
await benchGemm();
await benchAttentionDecode();
setThreads(threads0);
