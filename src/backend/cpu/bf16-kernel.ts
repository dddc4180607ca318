// bf16 compute has two GEMM kernels: bf16 weights widened for fp32 FMAs (the native default) and
// AVX512_BF16's vdpbf16ps dot products. Which is faster depends on the CPU: on one Xeon vdpbf16ps
// ran at half the FMA rate (docs/benchmarks.md, Kernels), on the AMD EPYC (Zen 4) of 2026-11-29 at
// 1.9× it (385 vs 205 GFLOP/s on 2 threads). So a bf16 run measures both on one of the model's
// layer shapes and keeps the faster, for generation and training alike. The two kernels round
// differently, so the choice must not change between runs that are meant to agree: two models in
// one process (a run and its reference), a run and its rerun, a run with its state offloaded and
// the same run in RAM. A measurement alone can flip where the two rates are close, so the first
// measurement on a machine is kept in a small cache file that every later process reads, and the
// vdpbf16ps kernel is taken only when clearly faster (its rounding of activations to bf16 costs
// accuracy; a tie goes to the FMA kernel). A resumed training run passes the kernel its checkpoint
// saved and `tierlm profile` saves one; TIERLM_BF16_DOT=0|1 decides instead.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { cpuBackend, isaInfo } from '../index.js';
import { gemmBf16Dot } from './gemm.js';
import { fromFloat32 } from '../../tensor/dtype.js';
import { Tensor } from '../../tensor/tensor.js';
import { writeFileDurable } from '../../util/atomic.js';

export type Bf16Kernel = 'dot' | 'fma';

/** A layer's GEMM shape: rows × k inputs → n outputs. */
export interface GemmShape {
  rows: number;
  n: number;
  k: number;
}

/** How much faster vdpbf16ps must measure to be chosen: below it the rates are too close for one
 *  measurement to tell, and the FMA kernel, which keeps activations in f32, is the better default. */
export const DOT_MARGIN = 0.9;

let measured: Bf16Kernel | null = null;

/** Sets the bf16 GEMM kernel and returns it: `saved` (a checkpoint's) when given, else the
 *  environment's, else `profile` (the machine's saved profile's), else this machine's kept
 *  measurement (measured on `shape` and kept when there is none yet; once per process). */
export function selectBf16Kernel(shape: GemmShape, saved: Bf16Kernel | null = null, profile: Bf16Kernel | null = null): Bf16Kernel {
  const env = process.env.TIERLM_BF16_DOT;
  const forced = env === '0' || env === '1' ? (env === '1' ? 'dot' : 'fma') : null;
  const choice: Bf16Kernel = saved ?? forced ?? profile ?? (measured ??= keptBf16Kernel(shape, kernelCachePath()));
  gemmBf16Dot(choice === 'dot');
  return choice;
}

/** Where measured kernel choices are kept: TIERLM_KERNEL_CACHE, else ~/.cache/tierlm/kernels.json. */
export function kernelCachePath(): string {
  return path.resolve(process.env.TIERLM_KERNEL_CACHE || path.join(os.homedir(), '.cache', 'tierlm', 'kernels.json'));
}

/** The machine a kept choice belongs to: another CPU or instruction set measures anew. */
export function machineKey(): string {
  return `${os.cpus()[0]?.model.trim() || 'unknown'} | ${isaInfo().active}`;
}

/** The kernel `file` keeps for this machine; when it has none (or is unreadable), measures on
 *  `shape` and keeps the result there (atomically; a file that cannot be written only costs the
 *  next process a measurement). */
export function keptBf16Kernel(shape: GemmShape, file: string): Bf16Kernel {
  // { "<cpu model> | <isa>": { bf16, dot_ms, fma_ms, measured } }
  let kept: Record<string, Record<string, unknown>> = {};
  try {
    const j: unknown = JSON.parse(fs.readFileSync(file, 'utf8'));
    if (j && typeof j === 'object' && !Array.isArray(j)) kept = j as typeof kept;
  } catch {
    // None yet, or not ours to read: measure.
  }
  const key = machineKey();
  const k = kept[key]?.bf16;
  if (k === 'dot' || k === 'fma') return k;
  const t = timeKernels(shape);
  const choice = fasterBf16Kernel(t);
  kept[key] = { bf16: choice, ...(Number.isFinite(t.dot) ? { dot_ms: t.dot, fma_ms: t.fma } : {}), measured: new Date().toISOString() };
  try {
    fs.mkdirSync(path.dirname(file), { recursive: true });
    writeFileDurable(file, JSON.stringify(kept, null, 2) + '\n');
  } catch {
    // Read-only home: the choice still holds for this process.
  }
  return choice;
}

/** vdpbf16ps when its time is under DOT_MARGIN of the FMA kernel's, else the FMA kernel. */
export function fasterBf16Kernel(ms: { dot: number; fma: number }): Bf16Kernel {
  return ms.dot < DOT_MARGIN * ms.fma ? 'dot' : 'fma';
}

/** Best of several calls of each kernel, in ms (vdpbf16ps: Infinity where the CPU lacks it). */
function timeKernels(shape: GemmShape): { dot: number; fma: number } {
  if (isaInfo().active !== 'avx512bf16') return { dot: Infinity, fma: 0 };
  const b = cpuBackend();
  // Capped (at most 4 MiB of weights): the rates are the CPU's, and a run under a tight --ram
  // has no room for a whole large layer beside it.
  const [n, k] = [Math.min(shape.n, 2048), Math.min(shape.k, 1024)];
  const m = Math.max(1, Math.min(shape.rows, 256));
  const w = b.packWeight(new Tensor('bf16', [n, k], fromFloat32('bf16', Float32Array.from({ length: n * k }, (_, i) => ((i * 7919) % 2003) / 2003 - 0.5))), 'bf16');
  const x = new Tensor('f32', [m, k], Float32Array.from({ length: m * k }, (_, i) => ((i * 104729) % 1009) / 1009 - 0.5));
  const out = Tensor.zeros('f32', [m, n]);
  const time = (dot: boolean) => {
    gemmBf16Dot(dot);
    b.matmul(x, w, null, out);
    let best = Infinity;
    for (let i = 0; i < 3; i++) {
      const t = performance.now();
      b.matmul(x, w, null, out);
      best = Math.min(best, performance.now() - t);
    }
    return best;
  };
  // Interleaved, so that a burst of load on a shared machine hits both.
  const [fma1, dot1, fma2, dot2] = [time(false), time(true), time(false), time(true)];
  return { dot: Math.min(dot1, dot2), fma: Math.min(fma1, fma2) };
}
